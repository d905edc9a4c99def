//! The `genesis-recovery` binary: parses flags and dispatches to the
//! libraries. No recovery logic lives here.

mod cli;

/// mimalloc instead of the system allocator: the replay's parallel parse and
/// fold allocate and free millions of small values across threads; in perf
/// profiles of a 1M-event replay glibc's malloc and free took about a fifth
/// of the samples.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the system after
/// 10 ms (mimalloc's default). A restore frees the decompressed archive and
/// allocates the events, the fold and the pages within a second; returned
/// memory comes back as fresh pages the kernel must fault in and zero, which
/// took about a tenth of a 1M-event replay (ratios in benches/README.md).
/// Not for the long-running `backup replicate`, which should give back
/// what a snapshot took.
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores the value; -1 means "never purge".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

fn main() {
    let args = match cli::args::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version are not failures; a usage error with --json
            // still prints its one document.
            let is_error = e.use_stderr();
            if is_error && std::env::args().any(|a| a == "--json") {
                let doc = cli::failure_document("usage", &e.to_string(), cli::EXIT_USAGE);
                println!("{doc}");
            }
            e.exit();
        }
    };
    if !matches!(
        args.command,
        cli::args::Command::Backup(cli::args::BackupCommand::Replicate(_))
    ) {
        keep_freed_memory();
    }
    cli::logging::init(&args.global);
    let json = args.global.json;
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::describe_error(&err));
            if json {
                cli::print_failure(&err);
            }
            cli::exit_code(&err)
        }
    };
    std::process::exit(code);
}
