//! Dispatch: resolves the global settings into a [`Ctx`] and calls the
//! command's module. One place maps errors to exit codes.

pub mod args;
mod bench;
pub mod bounds;
mod capture;
mod demo;
mod entry;
mod inspect;
pub mod logging;
mod output;
mod progress;
mod restore;
mod trading;

use std::path::PathBuf;

use genesis_core::settings::Settings;

use args::{Cli, Command};
pub use entry::{run, run_captured, Captured};

/// Exit codes (DESIGN.md §6, and 5 for a restore with data loss).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_VALIDATION: i32 = 3;
pub const EXIT_RECONCILE: i32 = 4;
/// A restore built a database, but history before the target is missing
/// from it (a gap in the backups the event archive could not bridge).
pub const EXIT_DATA_LOSS: i32 = 5;

/// What every command needs: resolved paths and output flags.
pub struct Ctx {
    pub db: PathBuf,
    pub repo: PathBuf,
    pub staging: PathBuf,
    pub settings: Settings,
    pub json: bool,
    pub quiet: bool,
}

impl Ctx {
    /// The paths and settings of the global flags `g` (flags, then the
    /// settings file, then the defaults).
    ///
    /// # Errors
    /// An unreadable or invalid settings file.
    pub fn new(g: &args::Global) -> anyhow::Result<Ctx> {
        let settings = Settings::load(g.config.as_deref())?;
        genesis_core::repo::s3::configure(settings.s3.clone());
        let repo = g
            .repo
            .clone()
            .or_else(|| settings.repository.clone())
            .unwrap_or_else(|| PathBuf::from(".genesis/backups"));
        // A URL that is not a repository is refused here, before any
        // command can take it for a local folder name.
        genesis_core::repo::RepoLocation::from_path(&repo)?;
        Ok(Ctx {
            db: g
                .db
                .clone()
                .or_else(|| settings.database.clone())
                .unwrap_or_else(|| PathBuf::from(".genesis/data/genesis.db")),
            repo,
            staging: settings
                .staging_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(genesis_stages::wal_apply::DEFAULT_STAGING_DIR)),
            settings,
            json: g.json,
            quiet: g.quiet,
        })
    }
}

/// Runs the command; returns the exit code.
///
/// # Errors
/// Whatever the command fails with; [`exit_code`] maps it.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    bounds::check(&cli)?;
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Simulate(a) => capture::simulate(&ctx, a),
        Command::Backup(b) => capture::backup(&ctx, b),
        Command::ListBackups(a) => inspect::list_backups(&ctx, a),
        Command::VerifyBackups(a) => inspect::verify_backups(&ctx, a),
        Command::Restore(a) => restore::restore(&ctx, *a),
        Command::Validate(a) => trading::validate(&ctx, a),
        Command::RecoverPositions(a) => trading::recover_positions(&ctx, a),
        Command::ReconcileOrders(a) => trading::reconcile_orders(&ctx, a),
        Command::Drill(a) => restore::drill(&ctx, a),
        Command::Run(a) => restore::run(&ctx, a),
        Command::Pipelines(c) => restore::pipelines(&ctx, c),
        Command::Demo(a) => demo::demo(&ctx, a),
        Command::Bench(c) => bench::bench(&ctx, c),
    }
}

/// The kind of an error (the `error.kind` of a `--json` failure document)
/// and its exit code: the one place where errors become exit codes.
pub fn classify(err: &anyhow::Error) -> (&'static str, i32) {
    use genesis_core::Error as E;
    if let Some(e) = err.downcast_ref::<genesis_core::Error>() {
        // Every kind listed: a new kind must be given its code here.
        return match e {
            E::Usage(_) => ("usage", EXIT_USAGE),
            E::Config(_) => ("config", EXIT_USAGE),
            E::Io { .. } => ("io", EXIT_FAILED),
            E::Sqlite { .. } => ("sqlite", EXIT_FAILED),
            E::Corrupt { .. } => ("corrupt", EXIT_FAILED),
            E::Locked(_) => ("locked", EXIT_FAILED),
            E::Cancelled(_) => ("cancelled", EXIT_FAILED),
            E::Plugin { .. } => ("plugin", EXIT_FAILED),
            E::Failed(_) => ("failed", EXIT_FAILED),
        };
    }
    // Trading errors: typed kinds; input errors are usage errors.
    if let Some(e) = err.downcast_ref::<genesis_trading::Error>() {
        use genesis_trading::Error as T;
        // Every kind listed: a new kind must be given its code here.
        let kind = match e {
            T::Sqlite { .. } => "sqlite",
            T::Event { .. } => "event",
            T::Extension { .. } => "plugin",
            T::EventSource(_) => "event_source",
            T::Staging { .. } | T::JournalMode { .. } => "staging",
            T::Schema(_) => "schema",
            T::Timestamp { .. } => "timestamp",
            T::ExchangeFile { .. } => "exchange_file",
            T::Io { .. } => "io",
            T::Internal { .. } => "internal",
        };
        return (
            kind,
            if e.is_bad_input() {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            },
        );
    }
    if err.downcast_ref::<clap::Error>().is_some() {
        return ("usage", EXIT_USAGE);
    }
    if err.downcast_ref::<std::io::Error>().is_some() {
        return ("io", EXIT_FAILED);
    }
    ("failed", EXIT_FAILED)
}

/// The exit code of an error (see [`classify`]).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    classify(err).1
}

/// The one JSON document a failed command prints with `--json`.
pub fn failure_document(kind: &str, message: &str, code: i32) -> serde_json::Value {
    serde_json::json!({
        "success": false,
        "error": { "kind": kind, "message": message },
        "exit_code": code,
    })
}

/// Prints the failure document of `err` on stdout, unless the command has
/// already printed its own document.
pub fn print_failure(err: &anyhow::Error) {
    if output::document_printed() {
        return;
    }
    let (kind, code) = classify(err);
    let doc = failure_document(kind, &describe_error(err), code);
    let _ = output::write_stdout(&doc.to_string());
}

/// The folder of the path an out-of-space (or over-quota) I/O error names.
fn full_filesystem(err: &anyhow::Error) -> Option<std::path::PathBuf> {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<genesis_core::Error>() {
            Some(genesis_core::Error::Io { path, source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                Some(
                    path.parent()
                        .map_or_else(|| path.clone(), std::path::Path::to_path_buf),
                )
            }
            _ => None,
        })
}

/// The error text shown to the user: the error and its causes.
pub fn describe_error(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    if let Some(genesis_core::Error::Corrupt { .. }) = err.downcast_ref::<genesis_core::Error>() {
        out.push_str(
            "\n  nothing was applied. Run `genesis-recovery verify-backups` to see which restore points \
             this breaks, then restore to a point it does not need (an earlier --timestamp or --txid, \
             or a later full backup with --backup-id)",
        );
    }
    if let Some(dir) = full_filesystem(err) {
        out.push_str(&format!(
            "\n  the filesystem holding {} is full: free space there (or give a directory with room, \
             e.g. `--staging-dir` for a restore) and run the command again",
            dir.display()
        ));
    }
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_error_kind_has_its_exit_code() {
        use genesis_core::Error as E;
        let cases: Vec<(E, &str, i32)> = vec![
            (E::Usage("u".into()), "usage", EXIT_USAGE),
            (E::Config(Vec::new()), "config", EXIT_USAGE),
            (
                E::io("read", "/x", std::io::Error::other("boom")),
                "io",
                EXIT_FAILED,
            ),
            (E::corrupt("obj", "bad"), "corrupt", EXIT_FAILED),
            (E::Locked("l".into()), "locked", EXIT_FAILED),
            (E::Cancelled("c".into()), "cancelled", EXIT_FAILED),
            (
                E::Plugin {
                    library: "/p.so".into(),
                    detail: "d".into(),
                },
                "plugin",
                EXIT_FAILED,
            ),
            (E::Failed("f".into()), "failed", EXIT_FAILED),
        ];
        for (e, kind, code) in cases {
            let err = anyhow::Error::from(e);
            assert_eq!(classify(&err), (kind, code), "{err}");
            let doc = failure_document(kind, &describe_error(&err), code);
            assert_eq!(doc["success"], false);
            assert_eq!(doc["exit_code"], code);
        }
        let other = anyhow::anyhow!("something else");
        assert_eq!(classify(&other), ("failed", EXIT_FAILED));
    }
}
