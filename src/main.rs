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

fn main() {
    let args = cli::args::Cli::parse();
    cli::logging::init(&args.global);
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::describe_error(&err));
            cli::exit_code(&err)
        }
    };
    std::process::exit(code);
}
