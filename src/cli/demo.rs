//! `demo`: the main job on an embedded default (a generated trading database).

use std::path::PathBuf;
use std::time::Duration;

use genesis_core::time::parse_duration;
use genesis_stages::demo::{demo as run_demo, DemoOptions};

use super::args::DemoArgs;
use super::output::{print, write_stdout};
use super::{progress, Ctx, EXIT_FAILED, EXIT_OK};

pub fn demo(ctx: &Ctx, a: DemoArgs) -> anyhow::Result<i32> {
    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => {
            let d = std::env::temp_dir().join(format!(
                "genesis-demo-{}-{}",
                std::process::id(),
                chrono::Utc::now().format("%Y%m%dT%H%M%S")
            ));
            (d, true)
        }
    };
    std::fs::create_dir_all(&dir)?;
    let opts = DemoOptions {
        dir: dir.clone(),
        trade_for: parse_duration(&a.trade_for)?,
        rate: a.rate,
        interval: Duration::from_secs(1),
        seed: 7,
    };
    let json = ctx.json;
    let quiet = ctx.quiet;
    if !json && !quiet {
        write_stdout(&format!("genesis-recovery demo in {}", dir.display()))?;
    }
    let report = run_demo(&opts, progress::for_terminal(true), |line| {
        if json {
            eprintln!("{line}");
        } else if !quiet {
            let _ = write_stdout(line);
        }
    });
    let cleanup = |dir: &PathBuf| {
        if temporary && !a.keep {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "the demo's directory is kept for inspection: {}",
                dir.display()
            );
            return Err(e.into());
        }
    };
    print(ctx, &report, || {
        let rec = &report.reconciliation;
        format!(
            "\nRecovery report\n  RTO: {:.2}s (target < 15 minutes)\n  RPO: {:.3}s (target < 5 minutes)\n  events replayed: {}\n  validation: {}\n  rows restored: {} positions, {} orders (before the incident: {}, {})\n  reconciliation: {} discrepancies ({} planted), accuracy {:.4}\n  result: {}{}",
            report.rto_seconds,
            report.rpo_seconds,
            report.events_replayed,
            if report.validation_passed { "passed" } else { "FAILED" },
            report.after_recovery.positions,
            report.after_recovery.orders,
            report.before_incident.positions,
            report.before_incident.orders,
            report.found_discrepancies,
            report.planted_discrepancies,
            rec["accuracy"].as_f64().unwrap_or(0.0),
            if report.success { "recovered" } else { "FAILED" },
            if temporary && !a.keep { String::new() } else { format!("\n  files kept in {}", dir.display()) }
        )
    })?;
    let ok = report.success;
    cleanup(&dir);
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}
