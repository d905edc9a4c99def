//! The capture commands as library functions: `backup full`, `backup sync`
//! and the `replicate` loop (the CLI only parses flags and installs signal
//! handlers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{capture_lock_path, snapshot_request_path, CaptureOptions, Capturer, StepReport};
use crate::error::{Error, Result};
use crate::lock::LockFile;
use crate::repo::{ObjectKind, Repository};

/// Result of `backup full`.
#[derive(Debug, Clone, Serialize)]
pub struct FullBackupResult {
    pub backup_id: String,
    pub generation: String,
    pub txid: u64,
    pub checksum: String,
    pub size_bytes: u64,
    /// True when a running `replicate` took the snapshot on our request.
    pub taken_by_running_capturer: bool,
    pub step: Option<StepReport>,
}

/// Takes a snapshot at an exact txid. When a capturer already runs on the
/// database, asks it for the snapshot (a request file it checks every step)
/// and waits up to `wait` for it.
///
/// # Errors
/// Capture errors; `Error::Locked` when the running capturer did not answer in time.
pub fn backup_full(
    opts: CaptureOptions,
    repo: Repository,
    wait: Duration,
) -> Result<FullBackupResult> {
    if let Some(holder) = LockFile::holder(&capture_lock_path(&opts.db)) {
        let asked_at = chrono::Utc::now();
        let req = snapshot_request_path(&opts.db);
        std::fs::write(&req, format!("requested at {asked_at}\n"))
            .map_err(|e| Error::io("write", &req, e))?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let catalog = repo.catalog()?;
            if let Some(m) = catalog
                .manifests()
                .filter(|m| m.kind == ObjectKind::Snapshot && m.created_at >= asked_at)
                .max_by_key(|m| m.created_at)
            {
                return Ok(FullBackupResult {
                    backup_id: m.id.clone(),
                    generation: m.generation.clone(),
                    txid: m.txid_max,
                    checksum: m.db_checksum_after.clone().unwrap_or_default(),
                    size_bytes: m.compressed_size,
                    taken_by_running_capturer: true,
                    step: None,
                });
            }
        }
        let _ = std::fs::remove_file(&req);
        return Err(Error::Locked(format!(
            "a capturer (pid {}, {}) runs on {} but did not take the requested snapshot within {}s; \
             check that it is healthy, or stop it and run `backup full` again",
            holder.pid,
            holder.purpose,
            opts.db.display(),
            wait.as_secs()
        )));
    }
    let mut cap = Capturer::open(opts, repo.clone())?;
    let opened_snapshot = cap.opened().snapshot.clone();
    let step = cap.step(opened_snapshot.is_none())?;
    let id = step
        .snapshot
        .clone()
        .or(opened_snapshot)
        .ok_or_else(|| Error::Failed("no snapshot was written".into()))?;
    let generation = cap.generation().to_string();
    let (txid, checksum) = (cap.last_txid(), cap.checksum());
    cap.save_state()?;
    drop(cap);
    let size = repo
        .catalog()?
        .find(&id)
        .map(|m| m.compressed_size)
        .unwrap_or(0);
    Ok(FullBackupResult {
        backup_id: id,
        generation,
        txid,
        checksum,
        size_bytes: size,
        taken_by_running_capturer: false,
        step: Some(step),
    })
}

/// One capture step and exit (for cron and tests).
///
/// # Errors
/// Capture errors.
pub fn backup_sync(opts: CaptureOptions, repo: Repository) -> Result<StepReport> {
    let cap = Capturer::open(opts, repo)?;
    let mut report = cap.opened().clone();
    let step = cap.finish()?;
    report.absorb(step);
    Ok(report)
}

/// How `replicate` loops.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    pub interval: Duration,
    /// Stop after this long (None: until `stop`).
    pub run_for: Option<Duration>,
}

/// Totals of a `replicate` run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicateSummary {
    pub steps: u64,
    pub txns: u64,
    pub pages: u64,
    pub segments: u64,
    pub events: u64,
    pub snapshots: Vec<String>,
    pub generations_started: Vec<String>,
    pub checkpoints: u64,
    pub last_txid: u64,
    pub generation: String,
    pub seconds: f64,
    /// Steps that failed and were retried.
    pub failed_steps: u64,
}

/// Consecutive failed steps after which `replicate` gives up.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// Captures continuously: a step every interval until `run_for` elapses or
/// `stop` is set, then ships what is left, saves the state and returns.
/// `on_step` sees each step's report (for logs and benchmarks).
///
/// # Errors
/// Capture errors (the loop stops at the first).
pub fn replicate(
    opts: CaptureOptions,
    repo: Repository,
    ropts: &ReplicateOptions,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&StepReport),
) -> Result<ReplicateSummary> {
    let started = Instant::now();
    let mut cap = Capturer::open(opts, repo)?;
    let mut sum = ReplicateSummary::default();
    let mut failures = 0u32;
    add(&mut sum, cap.opened());
    on_step(cap.opened());
    loop {
        let t0 = Instant::now();
        if stop.load(Ordering::SeqCst) || ropts.run_for.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // A failed step advanced nothing (the position moves only past what
        // is durable), so it is retried at the next interval; only a run of
        // failures stops the capturer.
        match cap.step(false) {
            Ok(r) => {
                failures = 0;
                add(&mut sum, &r);
                on_step(&r);
            }
            Err(e) => {
                failures += 1;
                sum.failed_steps += 1;
                if failures >= MAX_CONSECUTIVE_FAILURES {
                    return Err(e);
                }
                tracing::warn!("capture step failed ({failures} in a row, retrying): {e}");
            }
        }
        let next = t0 + ropts.interval;
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            if ropts.run_for.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            std::thread::sleep(
                Duration::from_millis(10).min(next.saturating_duration_since(Instant::now())),
            );
        }
    }
    sum.generation = cap.generation().to_string();
    let last = cap.finish()?;
    add(&mut sum, &last);
    on_step(&last);
    sum.seconds = started.elapsed().as_secs_f64();
    Ok(sum)
}

fn add(sum: &mut ReplicateSummary, r: &StepReport) {
    sum.steps += 1;
    sum.txns += r.txns;
    sum.pages += r.pages;
    sum.segments += r.segments.len() as u64;
    sum.events += r.events;
    sum.snapshots.extend(r.snapshot.iter().cloned());
    sum.generations_started
        .extend(r.new_generation.iter().cloned());
    sum.checkpoints += u64::from(r.checkpointed);
    if let Some(t) = r.txid_max {
        sum.last_txid = t;
    }
}
