//! The `validate` stage, and [`validate_database`] for the CLI's `validate`
//! command: SQLite's own checks on any database
//! ([`genesis_core::sqlite_checks`]: `quick_check`, or `integrity_check` when
//! asked, and `foreign_key_check`), plus, when the database has the trading
//! schema, the StateReconstructor rules of DOMAIN.md (with the restore target
//! as the bound of rule 3), merged into one [`ValidationReport`].
//!
//! Settings (config key, else pipeline parameter): `enabled` (default true;
//! `false` records nothing, for `--no-validate`), `integrity_check` (default
//! false), `all_checkpoints` (default false: rule 10 rehashes the newest
//! `blake3:` checkpoint and those the restore replayed; `true` rehashes every
//! one); `full = true` in the config means both. Config only:
//! `handled_event_types = ["..."]` (types a plugin handles, not warned about)
//! and `max_open_order_age = "24h"`.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;

use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, Emit, Finding, Stage, StageContext,
    StageFactory, ValidationReport,
};
use genesis_core::sqlite_checks::{self, SqliteCheckOptions};
use genesis_core::{Error, Result};

use crate::settings;

/// How to validate a database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidateOptions {
    /// `integrity_check` instead of `quick_check`.
    pub integrity_check: bool,
    /// The restore target: events created after it are an error (rule 3).
    pub target_time: Option<DateTime<Utc>>,
    /// Event types a plugin handles (not warned about as unknown).
    pub handled_event_types: BTreeSet<String>,
    /// Open orders older than this are warned about (default: trading's, 24 h).
    pub max_open_order_age: Option<std::time::Duration>,
    /// Rule 10 for every `blake3:` checkpoint (`validate --full`); by default
    /// the newest and those after [`ValidateOptions::checkpoints_after`].
    pub all_checkpoints: bool,
    /// The highest sequence number the database had before event replay: every
    /// checkpoint replayed after it is rehashed.
    pub checkpoints_after: Option<i64>,
}

/// Validates the database at `path` (opened read-only): SQLite's checks and,
/// with the trading schema, the trading rules.
///
/// # Errors
/// `Error::Usage` when the file does not exist; `Error::Sqlite` when it is not
/// a database SQLite can read. Findings are in the report, not errors.
pub fn validate_database(path: &Path, opts: &ValidateOptions) -> Result<ValidationReport> {
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "no database file at {}",
            path.display()
        )));
    }
    let open = || {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sqlite("open (read-only)", path, e))
    };
    let conn = open()?;
    // SQLite's own checks read every page; the trading rules read the
    // tables and replay the events: they run side by side on two connections.
    let (sqlite_report, trading) = std::thread::scope(|scope| {
        let checks = scope.spawn(|| -> Result<ValidationReport> {
            let c = open()?;
            sqlite_checks::check_connection(
                &c,
                path,
                SqliteCheckOptions {
                    integrity_check: opts.integrity_check,
                },
            )
        });
        let trading = (|| -> Result<(bool, Option<ValidationReport>)> {
            let has_schema = genesis_trading::schema::has_trading_schema(&conn)
                .map_err(|e| Error::Failed(format!("{}: {e}", path.display())))?;
            Ok((
                has_schema,
                if has_schema {
                    trading_report(&conn, path, opts)?
                } else {
                    None
                },
            ))
        })();
        let checks = checks
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the SQLite checks panicked".into())));
        (checks, trading)
    });
    let mut report = sqlite_report?;
    let (has_schema, trading) = trading?;
    report
        .metrics
        .insert("trading_schema".into(), has_schema.into());
    if let Some(trading) = trading {
        report.merge(trading);
    }
    report.is_consistent = report.errors.is_empty();
    Ok(report)
}

/// The trading rules of DOMAIN.md (rules 2-10, warnings, metrics) as a core report.
fn trading_report(
    conn: &Connection,
    path: &Path,
    opts: &ValidateOptions,
) -> Result<Option<ValidationReport>> {
    let mut topts = genesis_trading::validate::ValidateOptions {
        target: opts.target_time,
        handled_event_types: opts.handled_event_types.clone(),
        all_checkpoints: opts.all_checkpoints,
        checkpoints_after: opts.checkpoints_after,
        ..Default::default()
    };
    if let Some(age) = opts.max_open_order_age {
        topts.max_open_order_age =
            chrono::TimeDelta::from_std(age).unwrap_or(topts.max_open_order_age);
    }
    let t = genesis_trading::validate::validate_state(conn, &topts).map_err(|e| {
        Error::Failed(format!(
            "validating the trading state of {}: {e}",
            path.display()
        ))
    })?;
    let finding = |f: genesis_trading::validate::Finding| Finding {
        code: f.code,
        message: f.message,
    };
    Ok(Some(ValidationReport {
        is_consistent: t.is_consistent,
        errors: t.errors.into_iter().map(finding).collect(),
        warnings: t.warnings.into_iter().map(finding).collect(),
        metrics: t.metrics,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateConfig {
    enabled: Option<bool>,
    integrity_check: Option<bool>,
    all_checkpoints: Option<bool>,
    full: Option<bool>,
    /// Event types plugins handle, e.g. `["FUNDING_PAYMENT"]`.
    #[serde(default)]
    handled_event_types: BTreeSet<String>,
    /// `24h`, `30m`, ...
    max_open_order_age: Option<String>,
}

/// The `validate` stage type.
pub struct ValidateFactory;

impl StageFactory for ValidateFactory {
    fn type_name(&self) -> &str {
        "validate"
    }
    fn description(&self) -> &str {
        "SQLite quick_check/integrity_check and foreign_key_check, plus the trading StateReconstructor rules"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn build(
        &self,
        config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let config: ValidateConfig = decode_config(config)?;
        let mut problems = Vec::new();
        let enabled = settings::flag(config.enabled, ctx.params, "validate", true)
            .map_err(|e| problems.push(("enabled".to_string(), e.to_string())))
            .unwrap_or(true);
        let integrity = settings::flag(
            config.integrity_check.or(config.full),
            ctx.params,
            "integrity_check",
            false,
        )
        .map_err(|e| problems.push(("integrity_check".to_string(), e.to_string())))
        .unwrap_or(false);
        let all_checkpoints = settings::flag(
            config.all_checkpoints.or(config.full),
            ctx.params,
            "all_checkpoints",
            false,
        )
        .map_err(|e| problems.push(("all_checkpoints".to_string(), e.to_string())))
        .unwrap_or(false);
        let max_open_order_age = match &config.max_open_order_age {
            None => None,
            Some(text) => match genesis_core::time::parse_duration(text) {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(("max_open_order_age".to_string(), e.to_string()));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Box::new(Validate {
            enabled,
            integrity,
            all_checkpoints,
            handled_event_types: config.handled_event_types,
            max_open_order_age,
        }))
    }
}

/// The restored database's highest sequence number before event replay, when
/// the replay applied events (its report's `after_sequence`).
fn replayed_after(staged: &genesis_core::pipeline::StagedDatabase) -> Option<i64> {
    if staged.events_replayed == 0 {
        return None;
    }
    staged
        .replay
        .as_ref()
        .and_then(|r| r.get("after_sequence"))
        .and_then(serde_json::Value::as_i64)
}

struct Validate {
    enabled: bool,
    integrity: bool,
    all_checkpoints: bool,
    handled_event_types: BTreeSet<String>,
    max_open_order_age: Option<std::time::Duration>,
}

impl Stage for Validate {
    fn process(&mut self, input: Artifact, _ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::StagedDatabase(mut staged) if self.enabled => {
                let report = validate_database(
                    &staged.path,
                    &ValidateOptions {
                        integrity_check: self.integrity,
                        target_time: staged.target_time,
                        handled_event_types: self.handled_event_types.clone(),
                        max_open_order_age: self.max_open_order_age,
                        all_checkpoints: self.all_checkpoints,
                        checkpoints_after: replayed_after(&staged),
                    },
                )?;
                tracing::info!(
                    consistent = report.is_consistent,
                    errors = report.errors.len(),
                    warnings = report.warnings.len(),
                    "validation"
                );
                match &mut staged.validation {
                    // Findings of an earlier (plugin) check are kept.
                    Some(existing) => existing.merge(report),
                    None => staged.validation = Some(report),
                }
                out.emit(Artifact::StagedDatabase(staged))
            }
            other => out.emit(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replayed_range_is_the_sequence_before_the_replay() {
        let mut staged = genesis_core::pipeline::StagedDatabase::default();
        assert_eq!(replayed_after(&staged), None, "nothing replayed");
        staged.replay = Some(serde_json::json!({"after_sequence": 4200, "applied": 7}));
        assert_eq!(replayed_after(&staged), None, "no event replayed");
        staged.events_replayed = 7;
        assert_eq!(replayed_after(&staged), Some(4200));
        staged.replay = Some(serde_json::json!({"skipped": "not a time"}));
        assert_eq!(replayed_after(&staged), None);
    }
}
