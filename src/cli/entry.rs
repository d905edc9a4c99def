//! The two ways in: [`run`], the binary's `main` (and `python -m
//! genesis.recovery`), printing like a command line; and [`run_captured`],
//! the Python API's, which keeps the `--json` document instead of printing
//! it and leaves the allocator's defaults alone (its host, a trading
//! application, runs for days: memory a restore freed goes back to the
//! system). Both parse with the same flags and dispatch with [`super::dispatch`].

use std::ffi::OsString;

use clap::Parser;

use super::args::{BackupCommand, Cli, Command};
use super::{output, EXIT_USAGE};

/// Parses `args` (the first is the program name), runs the command and
/// returns its exit code, printing its output and any error exactly as the
/// binary does. Never exits the process: help and usage errors are printed
/// and their code returned.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    output::reset();
    let cli = match Cli::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => {
            // Help and version are not failures; a usage error with --json
            // still prints its one document.
            if e.use_stderr() && args.iter().any(|a| a == "--json") {
                let doc = super::failure_document("usage", &e.to_string(), EXIT_USAGE);
                let _ = output::write_stdout(&doc.to_string());
            }
            let _ = e.print();
            return e.exit_code();
        }
    };
    let json = cli.global.json;
    // A command line ends when its command does, so it keeps freed memory
    // for reuse (not `backup replicate`, which runs for days).
    if !matches!(cli.command, Command::Backup(BackupCommand::Replicate(_))) {
        crate::keep_freed_memory();
    }
    match start(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", super::describe_error(&err));
            if json {
                super::print_failure(&err);
            }
            super::exit_code(&err)
        }
    }
}

/// What [`run_captured`] returns: the JSON document the command printed (if
/// any) and its exit code, or the error it failed with (map it with
/// [`super::classify`] and [`super::describe_error`]).
pub struct Captured {
    pub document: Option<String>,
    pub outcome: anyhow::Result<i32>,
}

/// Runs `args` (the program name first; `--json` is added when missing) on
/// the calling thread and keeps what the command writes on stdout instead of
/// printing it. Logs still go to stderr.
pub fn run_captured<I, T>(args: I) -> Captured
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if !args.iter().any(|a| a == "--json") {
        args.push("--json".into());
    }
    output::reset();
    output::capture(true);
    let outcome = Cli::try_parse_from(&args)
        .map_err(anyhow::Error::from)
        .and_then(start);
    let document = output::capture(false);
    Captured { document, outcome }
}

/// What both do after parsing: logging, dispatch.
fn start(cli: Cli) -> anyhow::Result<i32> {
    super::logging::init(&cli.global);
    super::dispatch(cli)
}
