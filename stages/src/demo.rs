//! The demo: the whole recovery story on a generated trading database, in a
//! fresh directory, with nothing to set up. It simulates trading while
//! `replicate` captures it, has an incident (an accidental deletion of
//! positions and orders), and then runs the recovery guide's checklist for
//! real: identify the last good instant, verify the backups, dry run,
//! validate, apply, reconcile with the (simulated) exchange, and report RTO,
//! RPO, events replayed, validation and reconciliation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use genesis_core::capture::{self, CaptureOptions, ReplicateOptions, ReplicateSummary};
use genesis_core::plan::Target;
use genesis_core::progress::Progress;
use genesis_core::repo::Repository;
use genesis_core::time::format_rfc3339;
use genesis_core::{Error, Result};
use rusqlite::Connection;
use serde::Serialize;

use crate::restore::{restore, RestoreOptions, RestoreResult};

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The directory to work in (`.genesis/` is created inside).
    pub dir: PathBuf,
    /// How long trading runs while replication captures it.
    pub trade_for: Duration,
    /// Commits per second of the simulated trading.
    pub rate: f64,
    /// Replication interval.
    pub interval: Duration,
    /// Workload seed.
    pub seed: u64,
}

/// One step of the checklist as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct DemoStep {
    pub step: String,
    pub seconds: f64,
    pub detail: String,
}

/// Counts of the rows the incident destroyed.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub positions: i64,
    pub orders: i64,
    pub events: i64,
}

/// What the demo did and measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub success: bool,
    pub dir: PathBuf,
    pub database: PathBuf,
    pub repository: PathBuf,
    pub steps: Vec<DemoStep>,
    pub replication: ReplicateSummary,
    pub before_incident: Counts,
    pub after_incident: Counts,
    pub after_recovery: Counts,
    /// The instant chosen as the last good one (just before the incident).
    pub target_timestamp: String,
    pub incident_timestamp: String,
    /// Wall time of the recovery (verification, dry run, apply, validation).
    pub rto_seconds: f64,
    /// Seconds of committed history lost (target minus the state reached).
    pub rpo_seconds: f64,
    pub events_replayed: u64,
    pub dry_run: RestoreResult,
    pub restore: RestoreResult,
    pub validation_passed: bool,
    pub reconciliation: serde_json::Value,
    pub exchange_orders_file: PathBuf,
    pub planted_discrepancies: usize,
    pub found_discrepancies: usize,
}

fn counts(db: &Path) -> Result<Counts> {
    let c = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open", db, e))?;
    let q = |sql: &str| -> Result<i64> {
        c.query_row(sql, [], |r| r.get(0))
            .map_err(|e| Error::sqlite("count rows", db, e))
    };
    Ok(Counts {
        positions: q("SELECT count(*) FROM positions")?,
        orders: q("SELECT count(*) FROM orders")?,
        events: q("SELECT count(*) FROM events")?,
    })
}

fn trading_err(e: genesis_trading::Error) -> Error {
    Error::Failed(e.to_string())
}

/// Runs the demo; `say` receives one line per step as it happens.
///
/// # Errors
/// Any failure of a step, naming it.
pub fn demo(
    opts: &DemoOptions,
    progress: Arc<dyn Progress>,
    mut say: impl FnMut(&str),
) -> Result<DemoReport> {
    let home = opts.dir.join(".genesis");
    let db = home.join("data/genesis.db");
    let repo_dir = home.join("backups");
    let staging = home.join("recovery");
    for d in [home.join("data"), staging.clone()] {
        std::fs::create_dir_all(&d).map_err(|e| Error::io("create directory", &d, e))?;
    }
    let mut steps = Vec::new();
    let mut step = |name: &str, t: Instant, detail: String, say: &mut dyn FnMut(&str)| {
        say(&format!("[{}] {name}: {detail}", steps.len() + 1));
        steps.push(DemoStep {
            step: name.to_string(),
            seconds: t.elapsed().as_secs_f64(),
            detail,
        });
    };

    // 1. A trading database with some history.
    let t = Instant::now();
    let seed_opts = genesis_trading::simulate::SimulateOptions {
        rate: 0.0,
        duration: None,
        max_commits: Some(3000),
        seed: opts.seed,
        checkpoint_every: 500,
    };
    let r = genesis_trading::simulate::simulate(&db, &seed_opts, &AtomicBool::new(false))
        .map_err(trading_err)?;
    step(
        "trading history",
        t,
        format!(
            "{} commits of simulated trading in {}",
            r.commits,
            db.display()
        ),
        &mut say,
    );

    // 2. Continuous capture while trading goes on.
    let t = Instant::now();
    let repo = Repository::open_local(&repo_dir, true)?;
    let stop_capture = Arc::new(AtomicBool::new(false));
    let capturer = {
        let (stop, db, repo) = (stop_capture.clone(), db.clone(), repo.clone());
        let ropts = ReplicateOptions {
            interval: opts.interval,
            run_for: None,
            metrics_addr: None,
            compaction: Vec::new(),
        };
        std::thread::spawn(move || {
            capture::replicate(CaptureOptions::new(&db), repo, &ropts, &stop, |_| {})
        })
    };
    let mut app = Connection::open(&db).map_err(|e| Error::sqlite("open", &db, e))?;
    app.busy_timeout(Duration::from_secs(30))
        .map_err(|e| Error::sqlite("configure", &db, e))?;
    let mut sim =
        genesis_trading::simulate::Simulator::open(&app, opts.seed + 1).map_err(trading_err)?;
    // Let the capturer take its first snapshot before trading resumes.
    std::thread::sleep(opts.interval.min(Duration::from_millis(500)));
    let started = Instant::now();
    let mut commits = 0u64;
    while started.elapsed() < opts.trade_for {
        let due = started + Duration::from_secs_f64(commits as f64 / opts.rate.max(1.0));
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        sim.commit_one(&mut app).map_err(trading_err)?;
        commits += 1;
    }
    let before = counts(&db)?;
    step(
        "trading under replication",
        t,
        format!(
            "{commits} commits at {:.0}/s while `backup replicate` shipped every {:?}",
            opts.rate, opts.interval
        ),
        &mut say,
    );

    // 3. The incident: someone deletes positions and orders by mistake.
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let incident_at: DateTime<Utc> = Utc::now();
    app.execute_batch("BEGIN IMMEDIATE; DELETE FROM orders; DELETE FROM positions; COMMIT;")
        .map_err(|e| Error::sqlite("the incident", &db, e))?;
    // Trading goes on for a moment, then the application is stopped.
    for _ in 0..20 {
        if sim.commit_one(&mut app).is_err() {
            break;
        }
    }
    std::thread::sleep(opts.interval + Duration::from_millis(300));
    drop(app);
    stop_capture.store(true, Ordering::SeqCst);
    let replication = capturer
        .join()
        .map_err(|_| Error::Failed("the capturer thread panicked".into()))??;
    let after = counts(&db)?;
    step(
        "incident",
        t,
        format!(
            "at {} every order and position was deleted ({} -> {} positions, {} -> {} orders); application stopped",
            format_rfc3339(incident_at),
            before.positions,
            after.positions,
            before.orders,
            after.orders
        ),
        &mut say,
    );

    // Recovery, timed as a whole (RTO).
    let recovery = Instant::now();
    // 4. Identify the target: the last instant before the deletion (from the application's log).
    let t = Instant::now();
    let target_at = incident_at - chrono::Duration::milliseconds(1);
    let catalog = repo.catalog()?;
    let point = catalog.point_at_or_before(target_at)?;
    step(
        "identify target",
        t,
        format!(
            "target {} (last restore point before it: txid {} at {}; events replay the rest)",
            format_rfc3339(target_at),
            point.txid,
            format_rfc3339(point.time)
        ),
        &mut say,
    );

    // 5. Verify backup availability and integrity.
    let t = Instant::now();
    let verify = genesis_core::verify::verify_repository(&repo, None)?;
    if !verify.ok {
        return Err(Error::Failed(format!(
            "backup verification found {} problem(s): {:?}",
            verify.problems.len(),
            verify.problems
        )));
    }
    step(
        "verify backups",
        t,
        format!("{} objects verified, no problem", verify.checked),
        &mut say,
    );

    // 6. Dry run with validation.
    let t = Instant::now();
    let mut ropts = RestoreOptions::new(&repo_dir, &db, Target::Time { at: target_at });
    ropts.staging_dir = staging.clone();
    ropts.dry_run = true;
    let dry = restore(&ropts, progress.clone())?;
    let staged = counts(&dry.recovered_db_path)?;
    if !dry.success || staged.positions != before.positions || staged.orders != before.orders {
        return Err(Error::Failed(format!(
            "the dry run did not bring the rows back: {} positions and {} orders (expected {} and {})",
            staged.positions, staged.orders, before.positions, before.orders
        )));
    }
    step(
        "dry run",
        t,
        format!(
            "staged {} at txid {} + {} events: {} positions, {} orders, validation {}",
            dry.recovered_db_path.display(),
            dry.restored_txid,
            dry.events_replayed,
            staged.positions,
            staged.orders,
            if dry.validation.as_ref().is_some_and(|v| v.is_consistent) {
                "passed"
            } else {
                "FAILED"
            }
        ),
        &mut say,
    );
    let _ = std::fs::remove_file(&dry.recovered_db_path);

    // 7. Apply (pre-recovery backup, atomic rename).
    let t = Instant::now();
    ropts.dry_run = false;
    let applied = restore(&ropts, progress)?;
    if !applied.applied {
        return Err(Error::Failed(format!(
            "the restore was not applied: {:?}",
            applied.not_applied_reason
        )));
    }
    step(
        "apply",
        t,
        format!(
            "live database replaced; pre-recovery backup at {}",
            applied
                .pre_recovery_backup
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        &mut say,
    );

    // 8. Validate the recovered live database.
    let t = Instant::now();
    let validation = crate::validate::validate_database(
        &db,
        &crate::validate::ValidateOptions {
            target_time: Some(target_at),
            ..Default::default()
        },
    )?;
    let recovered = counts(&db)?;
    step(
        "validate",
        t,
        format!(
            "{} ({} errors, {} warnings); {} positions, {} orders, {} events",
            if validation.is_consistent {
                "consistent"
            } else {
                "INCONSISTENT"
            },
            validation.errors.len(),
            validation.warnings.len(),
            recovered.positions,
            recovered.orders,
            recovered.events
        ),
        &mut say,
    );
    let rto = recovery.elapsed().as_secs_f64();

    // 9. Reconcile with the exchange (its open orders, with a few discrepancies planted).
    let t = Instant::now();
    let conn = Connection::open(&db).map_err(|e| Error::sqlite("open", &db, e))?;
    let clean = genesis_trading::simulate::exchange_open_orders_binance(&conn, None)
        .map_err(trading_err)?;
    let exchange = genesis_trading::simulate::exchange_open_orders_binance(&conn, Some(opts.seed))
        .map_err(trading_err)?;
    let file = opts.dir.join("exchange-open-orders.json");
    let text = serde_json::to_vec_pretty(&exchange).map_err(|e| Error::Failed(e.to_string()))?;
    std::fs::write(&file, text).map_err(|e| Error::io("write", &file, e))?;
    let orders = genesis_trading::reconcile::parse_exchange_orders(
        &std::fs::read(&file).map_err(|e| Error::io("read", &file, e))?,
        &file.display().to_string(),
    )
    .map_err(trading_err)?;
    let rec = genesis_trading::reconcile::reconcile(&conn, &orders, &Default::default())
        .map_err(trading_err)?;
    let planted = planted_count(&clean, &exchange);
    let found = rec.missing_in_db.len()
        + rec.missing_on_exchange.len()
        + rec.status_mismatches.len()
        + rec.quantity_mismatches.len();
    step(
        "reconcile",
        t,
        format!(
            "{} open orders in the database, {} on the exchange; {} discrepancies found ({} planted), accuracy {:.4}; proposed: {}",
            rec.db_order_count,
            rec.exchange_order_count,
            found,
            planted,
            rec.accuracy,
            if rec.actions.is_empty() { "nothing".to_string() } else { rec.actions.join("; ") }
        ),
        &mut say,
    );
    let reconciliation = serde_json::to_value(&rec).map_err(|e| Error::Failed(e.to_string()))?;
    let success = validation.is_consistent
        && recovered.positions == before.positions
        && recovered.orders == before.orders
        && found >= planted.min(1);
    Ok(DemoReport {
        success,
        dir: opts.dir.clone(),
        database: db,
        repository: repo_dir,
        steps,
        replication,
        before_incident: before,
        after_incident: after,
        after_recovery: recovered,
        target_timestamp: format_rfc3339(target_at),
        incident_timestamp: format_rfc3339(incident_at),
        rto_seconds: rto,
        rpo_seconds: applied.rpo_gap_seconds,
        events_replayed: applied.events_replayed,
        dry_run: dry,
        restore: applied,
        validation_passed: validation.is_consistent,
        reconciliation,
        exchange_orders_file: file,
        planted_discrepancies: planted,
        found_discrepancies: found,
    })
}

/// How many orders differ between the clean and the planted exchange views.
fn planted_count(clean: &serde_json::Value, planted: &serde_json::Value) -> usize {
    let key = |o: &serde_json::Value| {
        (
            o["clientOrderId"].as_str().unwrap_or_default().to_string(),
            o.to_string(),
        )
    };
    let a: std::collections::BTreeSet<_> = clean
        .as_array()
        .map(|v| v.iter().map(key).collect())
        .unwrap_or_default();
    let b: std::collections::BTreeSet<_> = planted
        .as_array()
        .map(|v| v.iter().map(key).collect())
        .unwrap_or_default();
    let ids = |s: &std::collections::BTreeSet<(String, String)>,
               other: &std::collections::BTreeSet<(String, String)>| {
        s.difference(other)
            .map(|(id, _)| id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    ids(&a, &b).union(&ids(&b, &a)).count()
}
