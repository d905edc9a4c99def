//! `genesis._native`: the Rust engine for the `genesis` Python package.
//!
//! Two calls carry every command: [`cli_main`] runs the command line exactly
//! as the `genesis-recovery` binary does (`python -m genesis.recovery`), and
//! [`run_json`] runs one command and returns its `--json` document and exit
//! code instead of printing them (the `genesis.backup` and
//! `genesis.recovery` classes). Both are the binary's own parser and
//! dispatch (`genesis_recovery::cli`); [`backups_for_timestamp`] is the
//! restore planner's answer for one instant. Every call releases the GIL
//! while the engine works, and an engine error becomes the typed exception
//! of `genesis.errors` for its kind and exit code, with the CLI's message.

use std::path::PathBuf;

use chrono::Utc;
use genesis_core::plan::Target;
use genesis_core::repo::Repository;
use genesis_core::retention::BackupEntry;
use genesis_recovery::cli::args::Global;
use genesis_recovery::cli::Ctx;
use pyo3::prelude::*;
use pyo3::types::PyModule;

/// The engine allocates like the binary does (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exception `genesis.errors.from_engine` makes for an engine error:
/// its kind and exit code from the CLI's one map (`classify`), its message
/// the CLI's `error:` line.
fn to_py_err(py: Python<'_>, err: &anyhow::Error) -> PyErr {
    let (kind, code) = genesis_recovery::cli::classify(err);
    let message = genesis_recovery::cli::describe_error(err);
    let made = py
        .import("genesis.errors")
        .and_then(|m| m.getattr("from_engine"))
        .and_then(|f| f.call1((kind, code, message.as_str(), py.None())));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// Runs the command line `argv` (program name first) like the binary:
/// prints its output, returns its exit code.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(move || genesis_recovery::cli::run(argv))
}

/// Runs the command line `argv` (program name first) with `--json` and
/// returns `(document, exit_code)`: the JSON text the command printed (or
/// `None`) and the exit code it ended with. Raises the typed exception of
/// the error when the command fails.
#[pyfunction]
fn run_json(py: Python<'_>, argv: Vec<String>) -> PyResult<(Option<String>, i32)> {
    let captured = py.detach(move || genesis_recovery::cli::run_captured(argv));
    match captured.outcome {
        Ok(code) => Ok((captured.document, code)),
        Err(e) => Err(to_py_err(py, &e)),
    }
}

/// The backups a restore to `timestamp` reads: the JSON text of
/// `{"full_backup": row, "incremental_backups": [row, ...]}` with the rows of
/// `list-backups`, as the restore planner chooses them. The repository is
/// found as the CLI finds it (`--repo`, else the settings file `config`,
/// else `.genesis/backups`).
#[pyfunction]
#[pyo3(signature = (timestamp, repository=None, config=None))]
fn backups_for_timestamp(
    py: Python<'_>,
    timestamp: String,
    repository: Option<PathBuf>,
    config: Option<PathBuf>,
) -> PyResult<String> {
    let planned = py.detach(move || -> anyhow::Result<String> {
        let flags = Global {
            db: None,
            repo: repository,
            config,
            json: true,
            quiet: true,
            verbose: 0,
        };
        let ctx = Ctx::new(&flags)?;
        let target = Target::at_time(&timestamp)?;
        let catalog = Repository::open_local(&ctx.repo, false)?.catalog()?;
        let plan = genesis_stages::resolve_plan(&catalog, &target, false, Utc::now())?;
        let incremental: Vec<BackupEntry> =
            plan.segments.iter().map(|m| BackupEntry::of(m)).collect();
        Ok(serde_json::json!({
            "full_backup": BackupEntry::of(&plan.snapshot),
            "incremental_backups": incremental,
        })
        .to_string())
    });
    planned.map_err(|e| to_py_err(py, &e))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(run_json, m)?)?;
    m.add_function(wrap_pyfunction!(backups_for_timestamp, m)?)?;
    Ok(())
}
