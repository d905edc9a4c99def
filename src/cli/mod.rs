//! Dispatch: resolves the global settings into a [`Ctx`] and calls the
//! command's module. One place maps errors to exit codes.

pub mod args;
mod capture;
mod demo;
mod inspect;
pub mod logging;
mod output;
mod progress;
mod restore;
mod trading;

use std::path::PathBuf;

use genesis_core::settings::Settings;

use args::{Cli, Command};

/// Exit codes (DESIGN.md §6).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;

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
    fn new(g: &args::Global) -> anyhow::Result<Ctx> {
        let settings = Settings::load(g.config.as_deref())?;
        Ok(Ctx {
            db: g
                .db
                .clone()
                .or_else(|| settings.database.clone())
                .unwrap_or_else(|| PathBuf::from(".genesis/data/genesis.db")),
            repo: g
                .repo
                .clone()
                .or_else(|| settings.repository.clone())
                .unwrap_or_else(|| PathBuf::from(".genesis/backups")),
            staging: settings
                .staging_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".genesis/recovery")),
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
    }
}

/// The exit code of an error: 2 for usage and configuration errors, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(e) = err.downcast_ref::<genesis_core::Error>() {
        return e.exit_code();
    }
    if let Some(e) = err.downcast_ref::<genesis_trading::Error>() {
        return if e.is_bad_input() { 2 } else { EXIT_FAILED };
    }
    if err.downcast_ref::<clap::Error>().is_some() {
        return 2;
    }
    EXIT_FAILED
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
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
