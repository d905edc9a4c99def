//! The `genesis-recovery` binary: parses flags and dispatches to the
//! libraries. No recovery logic lives here.

mod cli;

/// mimalloc instead of the system allocator: the replay's parallel parse and
/// fold allocate and free millions of small values across threads, where
/// glibc's malloc spent a fifth of the fold's time (`benches/README.md`).
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
