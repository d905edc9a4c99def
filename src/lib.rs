//! The `genesis-recovery` command line as a library: the binary
//! (src/main.rs) and the Python binding (python/) run the same flag parser,
//! dispatch and exit-code map ([`cli::run`], [`cli::run_captured`]). No
//! recovery logic lives here: the commands call the libraries.

pub mod cli;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the system after
/// 10 ms (mimalloc's default). A restore frees the decompressed archive and
/// allocates the events, the fold and the pages within a second; returned
/// memory comes back as fresh pages the kernel must fault in and zero, which
/// took about a tenth of a 1M-event replay (ratios in benches/README.md).
/// Not for the long-running `backup replicate`, which should give back
/// what a snapshot took. Only has an effect where mimalloc is the global
/// allocator (the binary and the Python extension).
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores the value; -1 means "never purge".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
