//! The capture commands as library functions: `backup full`, `backup sync`
//! and the `replicate` loop (the CLI only parses flags and installs signal
//! handlers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{capture_lock_path, snapshot_request_path, CaptureOptions, Capturer, StepReport};
use crate::error::{Error, Result};
use crate::lock::sibling;
use crate::lock::LockFile;
use crate::repo::Repository;

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
/// database, asks it for the snapshot (a request file it checks every step,
/// answered in a file beside it) and waits up to `wait` for the answer. An
/// unchanged database is no error: the answer is the existing snapshot of
/// the current txid.
///
/// # Errors
/// Capture errors; `Error::Locked` when the running capturer did not answer in time.
pub fn backup_full(
    opts: CaptureOptions,
    repo: Repository,
    wait: Duration,
) -> Result<FullBackupResult> {
    if let Some(holder) = LockFile::holder(&capture_lock_path(&opts.db)) {
        let token = SnapshotRequest::ask(&opts.db)?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let Some(answer) = SnapshotRequest::answer_for(&opts.db, &token) else {
                continue;
            };
            let id = answer.map_err(|e| {
                Error::Failed(format!(
                    "the running capturer (pid {}) could not take the snapshot: {e}",
                    holder.pid
                ))
            })?;
            let m = repo.catalog()?.find(&id).cloned().ok_or_else(|| {
                Error::Failed(format!(
                    "the running capturer answered with {id}, which the repository does not hold"
                ))
            })?;
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
        SnapshotRequest::withdraw(&opts.db, &token);
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
        .or(step.snapshot_existing.clone())
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

/// A `backup full` asking the running capturer for a snapshot: the request
/// file holds a token; the capturer removes it before it tries, and answers
/// (the snapshot id, or why it failed) in a file beside it, so that a failed
/// attempt leaves nothing behind that a later capturer would trip on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SnapshotRequest {
    token: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

fn answer_path(db: &std::path::Path) -> std::path::PathBuf {
    sibling(db, "-genesis-snapshot-answer")
}

impl SnapshotRequest {
    fn ask(db: &std::path::Path) -> Result<String> {
        let token = format!(
            "{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let req = snapshot_request_path(db);
        std::fs::write(&req, &token).map_err(|e| Error::io("write", &req, e))?;
        Ok(token)
    }

    fn withdraw(db: &std::path::Path, token: &str) {
        let req = snapshot_request_path(db);
        if std::fs::read_to_string(&req).is_ok_and(|t| t.trim() == token) {
            let _ = std::fs::remove_file(&req);
        }
    }

    fn answer_for(
        db: &std::path::Path,
        token: &str,
    ) -> Option<std::result::Result<String, String>> {
        let text = std::fs::read(answer_path(db)).ok()?;
        let a: SnapshotRequest = serde_json::from_slice(&text).ok()?;
        if a.token != token {
            return None;
        }
        let _ = std::fs::remove_file(answer_path(db));
        Some(match (a.id, a.error) {
            (Some(id), _) => Ok(id),
            (None, e) => Err(e.unwrap_or_else(|| "no snapshot id in the answer".into())),
        })
    }

    /// Takes a pending request (removing its file), if any.
    pub(super) fn take(db: &std::path::Path) -> Option<SnapshotRequest> {
        let req = snapshot_request_path(db);
        let token = std::fs::read_to_string(&req).ok()?;
        let _ = std::fs::remove_file(&req);
        Some(SnapshotRequest {
            token: token.trim().to_string(),
            id: None,
            error: None,
        })
    }

    /// Answers the request with the outcome of the snapshot.
    pub(super) fn answer(&self, db: &std::path::Path, taken: &Result<StepReport>) {
        let mut a = self.clone();
        match taken {
            Ok(r) => a.id = r.snapshot.clone().or(r.snapshot_existing.clone()),
            Err(e) => a.error = Some(e.to_string()),
        }
        if a.id.is_none() && a.error.is_none() {
            a.error = Some(
                "the database changed under the snapshot; a new generation began, ask again".into(),
            );
        }
        let path = answer_path(db);
        let tmp = sibling(db, "-genesis-snapshot-answer.tmp");
        let written = serde_json::to_vec(&a)
            .map_err(std::io::Error::other)
            .and_then(|j| std::fs::write(&tmp, j))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(
                "cannot answer the snapshot request in {}: {e}",
                path.display()
            );
        }
    }
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
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_addr: Option<String>,
    /// Compaction level spans (empty: no compaction while capturing).
    pub compaction: Vec<Duration>,
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

/// Consecutive failed steps after which `replicate` gives up, unless they
/// are outages of the repository's storage (waited out with backoff).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// How often the replicate loop looks for a waiting checkpointer, and the
/// least time between two steps it causes.
const EARLY_STEP_GAP: Duration = Duration::from_millis(5);

/// The longest wait between two tries while the repository's storage is out.
pub const MAX_OUTAGE_BACKOFF: Duration = Duration::from_secs(30);

/// Whether an error is an outage of the storage (a full disk, an I/O error,
/// a read-only or unreachable mount): waited out, not fatal. The capture
/// position only advances past what is durable and the read transaction
/// stays held, so nothing committed meanwhile is lost.
pub fn is_storage_outage(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => {
            matches!(
                source.raw_os_error(),
                Some(
                    libc::ENOSPC
                        | libc::EDQUOT
                        | libc::EIO
                        | libc::EROFS
                        | libc::ENOENT
                        | libc::ENOTCONN
                )
            ) || matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::QuotaExceeded
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::NotConnected
            )
        }
        _ => false,
    }
}

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
    let listener = ropts
        .metrics_addr
        .as_deref()
        .map(super::metrics::bind)
        .transpose()?;
    let compact_repo = repo.clone();
    let spool = repo.backend().spool_stats();
    let mut cap = Capturer::open(opts, repo)?;
    let metrics = cap.metrics();
    if let Some(spool) = spool {
        metrics.attach_spool(spool);
    }
    let compaction = (!ropts.compaction.is_empty()).then(|| {
        crate::compact::worker::Background::spawn(
            compact_repo,
            ropts.compaction.clone(),
            metrics.clone(),
            ropts.interval.max(Duration::from_millis(200)),
        )
    });
    if let Some(l) = listener {
        let bound = super::metrics::start(l, metrics.clone())?;
        tracing::info!("serving capture metrics at http://{bound}/metrics");
    }
    let mut sum = ReplicateSummary::default();
    let mut failures = 0u32;
    let mut outage_since: Option<Instant> = None;
    add(&mut sum, cap.opened());
    on_step(cap.opened());
    let mut wait = ropts.interval;
    loop {
        let t0 = Instant::now();
        if stop.load(Ordering::SeqCst) || ropts.run_for.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // A failed step advanced nothing (the position moves only past what
        // is durable), so it is retried; a storage outage is waited out with
        // backoff, any other failure stops the capturer after a run of them.
        match cap.step(false) {
            Ok(r) => {
                if let Some(since) = outage_since.take() {
                    tracing::warn!(
                        "the repository is writable again after {:.0}s; capture continues in the same generation",
                        since.elapsed().as_secs_f64()
                    );
                }
                failures = 0;
                metrics.step_ok();
                if let Some(c) = &compaction {
                    c.shipped(&r.segments);
                }
                add(&mut sum, &r);
                on_step(&r);
                wait = ropts.interval;
            }
            Err(e) => {
                failures += 1;
                sum.failed_steps += 1;
                metrics.step_failed();
                if is_storage_outage(&e) {
                    outage_since.get_or_insert_with(Instant::now);
                    wait = (wait * 2).clamp(ropts.interval, MAX_OUTAGE_BACKOFF.max(ropts.interval));
                    tracing::error!(
                        "capture step failed ({failures} in a row): {e}; the repository's storage is out: \
                         nothing is lost while the capturer holds the WAL, retrying in {:.1}s",
                        wait.as_secs_f64()
                    );
                } else {
                    if failures >= MAX_CONSECUTIVE_FAILURES {
                        return Err(Error::Failed(format!(
                            "capture stopped after {failures} failed steps in a row; the last: {e}. \
                             Fix the cause and start `backup replicate` again (it resumes the \
                             generation when it can prove continuity, else starts a new one with a snapshot)"
                        )));
                    }
                    wait = ropts.interval;
                    tracing::warn!("capture step failed ({failures} in a row, retrying): {e}");
                }
            }
        }
        let next = t0 + wait;
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            if ropts.run_for.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            // A checkpointer at work may be waiting for our read transaction
            // (a RESTART or TRUNCATE waits for every reader): step now rather
            // than at the interval. A step with nothing new costs a few reads.
            if failures == 0 && t0.elapsed() >= EARLY_STEP_GAP && cap.checkpointer_active() {
                metrics.early_step();
                break;
            }
            std::thread::sleep(EARLY_STEP_GAP.min(next.saturating_duration_since(Instant::now())));
        }
    }
    sum.generation = cap.generation().to_string();
    sum.last_txid = sum.last_txid.max(cap.last_txid());
    if let Some(c) = compaction {
        c.finish();
    }
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
