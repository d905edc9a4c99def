//! The `genesis-recovery` binary: the command line of the library
//! (`genesis_recovery::cli::run`), which parses flags and dispatches to the
//! engine's libraries. No recovery logic lives here.

/// mimalloc instead of the system allocator: the replay's parallel parse and
/// fold allocate and free millions of small values across threads; in perf
/// profiles of a 1M-event replay glibc's malloc and free took about a fifth
/// of the samples.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(genesis_recovery::cli::run(std::env::args_os()));
}
