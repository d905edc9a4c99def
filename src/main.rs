//! The `genesis-recovery` binary: parses flags and dispatches to the
//! libraries. No recovery logic lives here.

mod cli;

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
