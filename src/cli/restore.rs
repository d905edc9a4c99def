//! `restore`, `drill`, `run` and `pipelines check`.

use std::path::PathBuf;

use chrono::Utc;
use genesis_core::pipeline::{compile_file, CancelToken};
use genesis_core::plan::Target;
use genesis_core::plugin_host::LibraryLoader;
use genesis_core::Error;
use genesis_stages::{DrillOptions, RestoreOptions};

use super::args::{DrillArgs, PipelinesCommand, RestoreArgs, RunArgs};
use super::output::{print, write_document, write_stdout};
use super::{progress, Ctx, EXIT_FAILED, EXIT_OK};

use super::EXIT_DATA_LOSS;
pub use super::{EXIT_RECONCILE, EXIT_VALIDATION};

/// Parses `key=value` overrides.
pub fn overrides(set: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    set.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| Error::Usage(format!("--set {s:?}: write it as key=value")).into())
        })
        .collect()
}

/// The typed target flag given, by name and value, if any.
fn typed_target(a: &RestoreArgs) -> Option<(&'static str, String)> {
    if let Some(t) = &a.timestamp {
        return Some(("--timestamp", format!(" {t}")));
    }
    if let Some(d) = &a.ago {
        return Some(("--ago", format!(" {d}")));
    }
    if let Some(id) = &a.backup_id {
        return Some(("--backup-id", format!(" {id}")));
    }
    if let Some(t) = a.txid {
        return Some(("--txid", format!(" {t}")));
    }
    a.latest.then(|| ("--latest", String::new()))
}

/// The one target of a restore: a typed flag or `--set target=...`, never
/// both (a pipeline parameter silently beating a typed flag would restore
/// the wrong point).
fn target(a: &RestoreArgs, overrides: &[(String, String)]) -> anyhow::Result<Target> {
    let set = overrides.iter().rev().find(|(k, _)| k == "target");
    if let (Some((flag, value)), Some((_, t))) = (typed_target(a), set) {
        return Err(Error::Usage(format!(
            "{flag}{value} and --set target={t} both name what to restore to: give one of them"
        ))
        .into());
    }
    if let Some((_, t)) = set {
        return Ok(Target::parse(t)?);
    }
    if let Some(t) = &a.timestamp {
        return Ok(Target::at_time(t)?);
    }
    if let Some(d) = &a.ago {
        return Ok(Target::ago(d, Utc::now())?);
    }
    if let Some(id) = &a.backup_id {
        return Ok(Target::backup(id)?);
    }
    if let Some(t) = a.txid {
        return Ok(Target::Txid { txid: t });
    }
    if a.latest {
        return Ok(Target::Latest);
    }
    Err(Error::Usage(
        "say what to restore to: --timestamp T, --ago DUR, --backup-id ID, --txid N or --latest"
            .into(),
    )
    .into())
}

/// Reads remote repositories through `dir`, when given (`--cache-dir`).
fn use_cache(dir: Option<&std::path::Path>) {
    if let Some(d) = dir {
        genesis_core::repo::cache::configure(d);
    }
}

pub fn restore(ctx: &Ctx, a: RestoreArgs) -> anyhow::Result<i32> {
    use_cache(a.cache_dir.as_deref());
    let overrides = overrides(&a.set)?;
    let mut opts = RestoreOptions::new(&ctx.repo, &ctx.db, target(&a, &overrides)?);
    opts.staging_dir = a.staging_dir.clone().unwrap_or_else(|| ctx.staging.clone());
    opts.dry_run = a.dry_run;
    opts.validate = !a.no_validate;
    opts.integrity_check = a.integrity_check;
    opts.output = a.output.clone();
    opts.strict = a.strict;
    opts.pipeline = a.pipeline.clone();
    // The target is decided above; the pipeline gets it from `opts.target`.
    opts.overrides = overrides
        .into_iter()
        .filter(|(k, _)| k != "target")
        .collect();
    if a.reconcile || a.exchange_orders.is_some() {
        opts.reconcile = Some(a.exchange_orders.clone().ok_or_else(|| {
            Error::Usage("--reconcile needs --exchange-orders FILE (the exchange's open orders, Binance or CCXT JSON)".into())
        })?);
    }
    let r = genesis_stages::restore(&opts, progress::for_terminal(ctx.quiet || ctx.json))?;
    let validation_failed = r.validation.as_ref().is_some_and(|v| !v.is_consistent);
    print(ctx, &r, || {
        let mut s = String::new();
        if let Some(f) = &r.fallback {
            s.push_str(&format!(
                "WARNING: {}: restored from txid {} instead of {}; {} events replayed from there; {}\n",
                f.gap,
                f.point_used.txid,
                f.requested,
                f.events_replayed,
                if r.data_loss {
                    "the event archive does not reach the target: history is missing (exit code 5)"
                } else {
                    "the event archive bridged the gap: the trading tables are exact"
                }
            ));
        }
        for m in &r.unplaced_manifests {
            s.push_str(&format!(
                "WARNING: {} {}: which restore points it breaks cannot be told; run verify-backups\n",
                m.id, m.problem
            ));
        }
        s.push_str(&format!(
            "{} to txid {} ({}), generation {}\n",
            if r.dry_run {
                "Dry run restored"
            } else if r.applied {
                "Restored"
            } else {
                "Built"
            },
            r.restored_txid,
            r.restore_point_timestamp,
            r.generation
        ));
        s.push_str(&format!(
            "  full backup used: {}, incrementals: {}, events replayed: {}\n",
            r.full_backup_used, r.incremental_count, r.events_replayed
        ));
        s.push_str(&format!(
            "  recovery time: {:.3}s, RPO gap: {:.3}s\n",
            r.recovery_time_seconds, r.rpo_gap_seconds
        ));
        s.push_str(&format!(
            "  tables not rebuilt from events are as of {} (the restore point)\n",
            r.non_event_tables_at
        ));
        if let Some(v) = &r.validation {
            s.push_str(&format!(
                "  validation: {} ({} errors, {} warnings)\n",
                if v.is_consistent { "passed" } else { "FAILED" },
                v.errors.len(),
                v.warnings.len()
            ));
            for e in v.errors.iter().take(20) {
                s.push_str(&format!("    error {}: {}\n", e.code, e.message));
            }
        }
        if let Some(ok) = r.reconciled {
            s.push_str(&format!(
                "  reconciliation: {}\n",
                if ok { "reconciled" } else { "DISCREPANCIES" }
            ));
        }
        if let Some(p) = &r.pre_recovery_backup {
            s.push_str(&format!("  pre-recovery backup: {}\n", p.display()));
        }
        if let Some(why) = &r.not_applied_reason {
            s.push_str(&format!("  not applied: {why}\n"));
        }
        s.push_str(&format!("  database: {}", r.recovered_db_path.display()));
        s
    })?;
    Ok(if validation_failed {
        EXIT_VALIDATION
    } else if r.reconciled == Some(false) {
        EXIT_RECONCILE
    } else if r.success && r.data_loss {
        EXIT_DATA_LOSS
    } else if r.success {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

pub fn drill(ctx: &Ctx, a: DrillArgs) -> anyhow::Result<i32> {
    use_cache(a.cache_dir.as_deref());
    let tmp;
    let scratch: PathBuf = match &a.scratch_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let mut opts = DrillOptions::new(&ctx.repo, &scratch);
    opts.pipeline = a.pipeline.clone();
    opts.metrics_file = a.metrics_file.clone();
    opts.exchange_orders = a.exchange_orders.clone();
    let history = a
        .history
        .clone()
        .unwrap_or_else(|| genesis_stages::drill_history::default_path(&ctx.repo));
    opts.history = Some(history.clone());
    let r = genesis_stages::drill(&opts, progress::for_terminal(ctx.quiet || ctx.json));
    if a.scratch_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let r = r?;
    if let Some(path) = &a.report {
        let records = genesis_stages::drill_history::read(&history)?;
        std::fs::write(
            path,
            genesis_stages::drill_history::render(&records, &history),
        )
        .map_err(|e| Error::io("write the drill report", path, e))?;
    }
    print(ctx, &r, || {
        format!(
            "drill {}: restored txid {} ({}), RTO {:.3}s, RPO {:.3}s, validation {}{}{}",
            if r.success { "passed" } else { "FAILED" },
            r.restored_txid,
            r.restore_point_timestamp,
            r.rto_seconds,
            r.rpo_seconds,
            if r.validation_pass {
                "passed"
            } else {
                "failed"
            },
            a.metrics_file
                .as_ref()
                .map(|p| format!("; metrics written to {}", p.display()))
                .unwrap_or_default(),
            a.report
                .as_ref()
                .map(|p| format!("; history {}, report {}", history.display(), p.display()))
                .unwrap_or_else(|| format!("; history {}", history.display()))
        )
    })?;
    Ok(if r.success {
        EXIT_OK
    } else if !r.validation_pass {
        EXIT_VALIDATION
    } else {
        EXIT_FAILED
    })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!(
        "genesis-drill-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<i32> {
    use_cache(a.cache_dir.as_deref());
    let loader = LibraryLoader::new();
    let mut ov = vec![
        ("repository".to_string(), ctx.repo.display().to_string()),
        ("database".to_string(), ctx.db.display().to_string()),
        ("staging_dir".to_string(), ctx.staging.display().to_string()),
    ];
    // Only pass the defaults the pipeline declares; --set always wins.
    let text = std::fs::read_to_string(&a.file).map_err(|e| Error::io("read", &a.file, e))?;
    ov.retain(|(k, _)| text.contains(&format!("{k} =")) || text.contains(&format!("{k}=")));
    ov.extend(overrides(&a.set)?);
    let compiled = compile_file(&a.file, &genesis_stages::registry(), &loader, &ov)?;
    let outcome = compiled.run(
        progress::for_terminal(ctx.quiet || ctx.json),
        CancelToken::default(),
    );
    match outcome {
        Ok(o) => {
            let staged: Vec<_> = o
                .outputs
                .iter()
                .filter_map(|a| match a {
                    genesis_core::pipeline::Artifact::StagedDatabase(s) => Some(s.as_ref().clone()),
                    _ => None,
                })
                .collect();
            let failed_validation = staged
                .iter()
                .any(|s| s.validation.as_ref().is_some_and(|v| !v.is_consistent));
            let unreconciled = staged.iter().any(|s| s.reconciled == Some(false));
            let doc = serde_json::json!({ "success": true, "stages": o.stages, "seconds": o.seconds, "outputs": staged, "items": o.outputs.len() });
            print(ctx, &doc, || {
                let mut s = format!("pipeline ran in {:.3}s\n", o.seconds);
                for st in &o.stages {
                    s.push_str(&format!(
                        "  {:<16} {:<14} {:>8.3}s {:>6} in {:>6} out\n",
                        st.id, st.stage_type, st.seconds, st.items_in, st.items_out
                    ));
                }
                for d in &staged {
                    s.push_str(&format!(
                        "  database {} at txid {}\n",
                        d.path.display(),
                        d.txid
                    ));
                }
                s.trim_end().to_string()
            })?;
            Ok(if failed_validation {
                EXIT_VALIDATION
            } else if unreconciled {
                EXIT_RECONCILE
            } else {
                EXIT_OK
            })
        }
        Err(f) => {
            let (stage, stages) = (f.stage.clone(), f.stages.clone());
            let err: anyhow::Error = Error::from(f).into();
            if ctx.json {
                let (kind, code) = super::classify(&err);
                let mut doc = super::failure_document(kind, &super::describe_error(&err), code);
                doc["stage"] = serde_json::json!(stage);
                doc["stages"] = serde_json::json!(stages);
                write_document(&serde_json::to_string_pretty(&doc)?)?;
            }
            Err(err)
        }
    }
}

pub fn pipelines(ctx: &Ctx, cmd: PipelinesCommand) -> anyhow::Result<i32> {
    let PipelinesCommand::Check { files, set } = cmd;
    let loader = LibraryLoader::new();
    let ov = overrides(&set)?;
    let mut all_issues = Vec::new();
    let mut summaries = Vec::new();
    for f in &files {
        match compile_file(f, &genesis_stages::registry(), &loader, &ov) {
            Ok(c) => summaries.push(c.summary()),
            Err(Error::Config(issues)) => all_issues.extend(issues),
            Err(e) => return Err(e.into()),
        }
    }
    if ctx.json {
        let doc = serde_json::json!({ "ok": all_issues.is_empty(), "success": all_issues.is_empty(), "pipelines": summaries, "errors": all_issues });
        write_document(&serde_json::to_string_pretty(&doc)?)?;
    } else {
        for s in &summaries {
            write_stdout(&format!(
                "ok: {} ({}): {}",
                s.file.display(),
                s.name,
                s.stages
                    .iter()
                    .map(|st| st.id.clone())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ))?;
        }
        if !all_issues.is_empty() {
            eprintln!("{} configuration error(s):", all_issues.len());
            for i in &all_issues {
                eprintln!("  {i}");
            }
        }
    }
    Ok(if all_issues.is_empty() { EXIT_OK } else { 2 })
}
