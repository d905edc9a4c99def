//! The recovery drill: restores the latest restore point into a scratch
//! directory (never the live database), which proves the chain and the
//! database checksum, validates the result, and measures the recovery
//! objectives: RTO, the wall time of the whole drill, and RPO, how far the
//! latest restore point lies behind now. Its metrics are rendered in the
//! Prometheus text format and written atomically for node_exporter's
//! textfile collector ([`write_textfile`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use genesis_core::pipeline::{ParamValue, StageReport, ValidationReport};
use genesis_core::plan::Target;
use genesis_core::progress::Progress;
use genesis_core::time::format_rfc3339;
use genesis_core::{Error, Result};

use crate::restore::{clean_staging_dir, run_to_staged, settle};
use crate::wal_apply::remove_staged;

/// The built-in drill pipeline's text.
pub const DRILL_PIPELINE: &str = include_str!("../../pipelines/drill.toml");

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The backup repository directory.
    pub repo: PathBuf,
    /// The scratch directory the database is built in (created if missing).
    pub scratch_dir: PathBuf,
    /// A pipeline file instead of the built-in `drill` pipeline.
    pub pipeline: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub overrides: Vec<(String, String)>,
    /// The exchange's open orders to reconcile with.
    pub exchange_orders: Option<PathBuf>,
    /// `integrity_check` instead of `quick_check` (the built-in drill's default).
    pub integrity_check: bool,
    /// Keep the restored database in the scratch directory (removed otherwise).
    pub keep: bool,
    /// Write the metrics here (Prometheus text format, atomically).
    pub metrics_file: Option<PathBuf>,
    /// Append the result to this JSON-lines history ([`crate::drill_history`]).
    pub history: Option<PathBuf>,
}

impl DrillOptions {
    /// Defaults for a repository and a scratch directory.
    pub fn new(repo: impl Into<PathBuf>, scratch_dir: impl Into<PathBuf>) -> Self {
        DrillOptions {
            repo: repo.into(),
            scratch_dir: scratch_dir.into(),
            pipeline: None,
            overrides: Vec::new(),
            exchange_orders: None,
            integrity_check: true,
            keep: false,
            metrics_file: None,
            history: None,
        }
    }
}

/// What a drill measured.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The restore succeeded and validation passed.
    pub success: bool,
    /// When the drill ran.
    pub timestamp: String,
    /// Wall time of the whole drill.
    pub rto_seconds: f64,
    /// Now minus the latest restore point's commit time.
    pub rpo_seconds: f64,
    pub validation_pass: bool,
    /// Matched orders ÷ orders in either side, when reconciliation ran.
    pub reconciliation_accuracy: Option<f64>,
    pub restored_txid: u64,
    pub generation: String,
    pub checksum: String,
    pub restore_point_timestamp: String,
    /// The restored database, when kept.
    pub restored_db_path: Option<PathBuf>,
    pub stages: Vec<StageReport>,
    pub validation: Option<ValidationReport>,
    pub reconciliation: Option<serde_json::Value>,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl DrillReport {
    /// The metrics in the Prometheus text exposition format.
    pub fn prometheus_text(&self) -> String {
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        gauge(
            "genesis_recovery_drill_rto_seconds",
            "Wall time of the last recovery drill (restore, proof, validation).",
            &[(String::new(), self.rto_seconds)],
        );
        gauge(
            "genesis_recovery_drill_rpo_seconds",
            "Age of the latest restore point when the last drill ran.",
            &[(String::new(), self.rpo_seconds)],
        );
        gauge(
            "genesis_recovery_drill_validation_pass",
            "1 when the last drill's restored database passed validation.",
            &[(String::new(), f64::from(u8::from(self.validation_pass)))],
        );
        if let Some(a) = self.reconciliation_accuracy {
            gauge(
                "genesis_recovery_drill_reconciliation_accuracy",
                "Share of orders matching the exchange in the last drill (0..1).",
                &[(String::new(), a)],
            );
        }
        let stages: Vec<(String, f64)> = self
            .stages
            .iter()
            .map(|r| (format!("{{stage=\"{}\"}}", escape_label(&r.id)), r.seconds))
            .collect();
        gauge(
            "genesis_recovery_drill_stage_seconds",
            "Seconds each pipeline stage took in the last drill.",
            &stages,
        );
        if self.success {
            let now = Utc::now().timestamp_micros() as f64 / 1e6;
            gauge(
                "genesis_recovery_drill_last_success_timestamp_seconds",
                "Unix time of the last successful drill.",
                &[(String::new(), now)],
            );
        }
        s
    }
}

/// Writes `text` to `path` atomically (a temporary file beside it, fsynced,
/// renamed), as node_exporter's textfile collector requires.
///
/// # Errors
/// I/O failures naming the path.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    let tmp = genesis_core::lock::sibling(path, &format!(".{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("write metrics file", path, e));
    }
    Ok(())
}

/// Runs a drill; see the module documentation.
///
/// # Errors
/// The restore's errors (a damaged chain, an empty repository, a bad
/// pipeline); failing to write the metrics file. A validation failure is
/// not an error: the report says `validation_pass = false`.
pub fn drill(opts: &DrillOptions, progress: Arc<dyn Progress>) -> Result<DrillReport> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.scratch_dir)
        .map_err(|e| Error::io("create the scratch directory", &opts.scratch_dir, e))?;
    clean_staging_dir(&opts.scratch_dir)?;
    let params = vec![
        ("repository".to_string(), opts.repo.display().to_string()),
        (
            "staging_dir".to_string(),
            opts.scratch_dir.display().to_string(),
        ),
        (
            "integrity_check".to_string(),
            opts.integrity_check.to_string(),
        ),
        (
            "exchange_orders".to_string(),
            opts.exchange_orders
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    ];
    // A drill restores the latest point, unless `--set target=` says otherwise.
    let typed = if opts.overrides.iter().any(|(k, _)| k == "target") {
        Vec::new()
    } else {
        vec![("target".to_string(), ParamValue::Target(Target::Latest))]
    };
    let run = run_to_staged(
        opts.pipeline.as_deref(),
        "drill",
        DRILL_PIPELINE,
        params,
        typed,
        &opts.overrides,
        progress,
    )?;
    let staged = run.staged;
    settle(&staged.path)?;
    let validation_pass = staged.validation.as_ref().is_none_or(|v| v.is_consistent);
    let rpo_seconds = staged.point_time.map_or(0.0, |t| {
        ((Utc::now() - t).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0)
    });
    let reconciliation_accuracy = staged
        .reconciliation
        .as_ref()
        .and_then(|r| r.get("accuracy"))
        .and_then(serde_json::Value::as_f64);
    let restored_db_path = if opts.keep {
        Some(staged.path.clone())
    } else {
        remove_staged(&staged.path)?;
        None
    };
    let report = DrillReport {
        success: validation_pass,
        timestamp: format_rfc3339(Utc::now()),
        rto_seconds: started.elapsed().as_secs_f64(),
        rpo_seconds,
        validation_pass,
        reconciliation_accuracy,
        restored_txid: staged.txid,
        generation: staged.generation.clone(),
        checksum: staged.checksum.clone(),
        restore_point_timestamp: staged.point_time.map(format_rfc3339).unwrap_or_default(),
        restored_db_path,
        stages: run.stages,
        validation: staged.validation,
        reconciliation: staged.reconciliation,
    };
    if let Some(path) = &opts.metrics_file {
        write_textfile(path, &report.prometheus_text())?;
    }
    if let Some(path) = &opts.history {
        crate::drill_history::append(path, &(&report).into())?;
    }
    Ok(report)
}
