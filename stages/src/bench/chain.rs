//! The benchmark's backup chain, made by the real capture code: a snapshot,
//! then `history` capture steps as `backup sync` / `replicate` take them,
//! each after one second's worth of commits at `rate` (the simulator's
//! workload, one event and its effect per transaction), taken as fast as the
//! machine allows. Then the chain is compacted as the defaults would.
//!
//! Beside it, what the naive baseline needs: the database file as the
//! snapshot saw it, and every WAL file the writer produced, saved at each
//! checkpoint the capturer made (the writer itself never checkpoints).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::progress::Progress;
use genesis_core::repo::Repository;
use genesis_core::{Error, Result};
use genesis_trading::simulate::Simulator;
use genesis_trading::Event;

use super::generate::open_writer;

/// What [`build_chain`] made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Chain {
    /// Capture steps taken after the snapshot (one per second of history).
    pub steps: u64,
    pub commits: u64,
    pub segments: u64,
    pub snapshot_txid: u64,
    pub last_txid: u64,
    /// The restore point halfway through the history.
    pub middle_txid: u64,
    pub snapshot_seconds: f64,
    pub capture_seconds: f64,
    /// Median and slowest capture step.
    pub step_median_ms: f64,
    pub step_max_ms: f64,
    pub repository_bytes: u64,
    /// Compaction of the chain as the default levels would (issue 14).
    pub compaction_seconds: f64,
    /// Compacted objects written, per level.
    pub compacted_objects: std::collections::BTreeMap<String, u64>,
    /// WAL files saved for the naive baseline.
    pub wal_files: usize,
    #[serde(skip)]
    pub wals: Vec<PathBuf>,
    /// The database file as the snapshot saw it.
    #[serde(skip)]
    pub base: PathBuf,
    /// The history's events, when asked to record them (the Litestream
    /// baseline replays the same workload).
    #[serde(skip)]
    pub events: Vec<Event>,
}

/// Compacts the chain as the default levels would compact `steps` seconds
/// of 1 s syncs: the steps ran as fast as the machine allows, so the spans
/// are scaled by the measured time per step
/// ([`genesis_core::compact::scaled_defaults`]), and every window counts as
/// complete (the history is over).
///
/// # Errors
/// The compaction's errors.
pub fn compact_as_defaults(
    repo: &Path,
    per_step: std::time::Duration,
) -> Result<genesis_core::compact::CompactReport> {
    let r = genesis_core::repo::Repository::open_local(repo, false)?;
    let levels = genesis_core::compact::scaled_defaults(per_step);
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let report = genesis_core::compact::compact_repository(&r, &levels, later)?;
    tracing::info!(
        ?levels,
        created = report.created.len(),
        "compacted the chain as the defaults would"
    );
    Ok(report)
}

/// Commits in step `i` of a history at `rate` commits per second.
fn commits_in_step(i: u64, rate: f64) -> u64 {
    let at = |s: u64| (s as f64 * rate).round() as u64;
    at(i + 1) - at(i)
}

fn save_wal(wal: &Path, dir: &Path, wals: &mut Vec<PathBuf>) -> Result<()> {
    if super::tools::file_len(wal) == 0 {
        return Ok(());
    }
    let to = dir.join(format!("{:05}.wal", wals.len()));
    fs::copy(wal, &to).map_err(|e| Error::io("save a WAL file for the naive baseline", &to, e))?;
    wals.push(to);
    Ok(())
}

/// Captures `live` (a generated database, WAL empty) into `repo`, then
/// `history_seconds` steps at `rate` commits per second; see the module
/// documentation. `dir` receives `base.db` and `wals/`.
///
/// # Errors
/// Capture and SQLite failures; a capture step that starts a new
/// generation (the chain would not be one chain).
pub fn build_chain(
    live: &Path,
    repo: &Path,
    dir: &Path,
    history_seconds: u64,
    rate: f64,
    record_events: bool,
    progress: &dyn Progress,
) -> Result<Chain> {
    let base = dir.join("base.db");
    fs::copy(live, &base).map_err(|e| Error::io("copy the base database", &base, e))?;
    let wal_dir = dir.join("wals");
    fs::create_dir_all(&wal_dir).map_err(|e| Error::io("create", &wal_dir, e))?;

    let t = Instant::now();
    progress.start("snapshot", None);
    let mut cap = Capturer::open(
        CaptureOptions::new(live),
        Repository::open_local(repo, true)?,
    )?;
    progress.finish("snapshot");
    if cap.opened().snapshot.is_none() {
        return Err(Error::Failed(format!(
            "{}: the capturer took no snapshot of the new database",
            repo.display()
        )));
    }
    let snapshot_txid = cap.last_txid();
    let snapshot_seconds = t.elapsed().as_secs_f64();

    let mut conn = open_writer(live)?;
    let mut sim = Simulator::open(&conn, 7).map_err(|e| Error::Failed(e.to_string()))?;
    let wal = genesis_core::lock::sibling(live, "-wal");
    let mut wals = Vec::new();
    let mut events = Vec::new();
    let (mut commits, mut segments) = (0u64, 0u64);
    let mut step_ms = Vec::with_capacity(history_seconds as usize);
    let t = Instant::now();
    progress.start("capture steps", Some(history_seconds));
    for i in 0..history_seconds {
        for _ in 0..commits_in_step(i, rate) {
            let ev = sim
                .commit_one(&mut conn)
                .map_err(|e| Error::Failed(format!("{}: {e}", live.display())))?;
            if record_events {
                events.push(ev);
            }
            commits += 1;
        }
        let st = Instant::now();
        let r = cap.step(false)?;
        step_ms.push(st.elapsed().as_secs_f64() * 1000.0);
        if let Some(why) = r.new_generation {
            return Err(Error::Failed(format!(
                "capture step {i} started a new generation ({why}): the benchmark's chain broke"
            )));
        }
        segments += r.segments.len() as u64;
        if r.checkpointed {
            save_wal(&wal, &wal_dir, &mut wals)?;
        }
        progress.advance(1);
    }
    let stepped_to = cap.last_txid();
    let last = cap.finish()?;
    progress.finish("capture steps");
    segments += last.segments.len() as u64;
    save_wal(&wal, &wal_dir, &mut wals)?;
    let last_txid = last.txid_max.unwrap_or(0).max(stepped_to);
    // The live file whole, for the baselines that copy it.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| Error::sqlite("checkpoint the benchmark database", live, e))?;
    drop(conn);
    let capture_seconds = t.elapsed().as_secs_f64();
    let per_step = t.elapsed() / u32::try_from(history_seconds.max(1)).unwrap_or(u32::MAX);
    let tc = Instant::now();
    let compacted = compact_as_defaults(repo, per_step)?;
    let compaction_seconds = tc.elapsed().as_secs_f64();

    step_ms.sort_by(f64::total_cmp);
    Ok(Chain {
        steps: history_seconds,
        commits,
        segments,
        snapshot_txid,
        last_txid,
        middle_txid: snapshot_txid + (last_txid - snapshot_txid) / 2,
        snapshot_seconds,
        capture_seconds,
        compaction_seconds,
        compacted_objects: compacted.per_level,
        step_median_ms: step_ms.get(step_ms.len() / 2).copied().unwrap_or(0.0),
        step_max_ms: step_ms.last().copied().unwrap_or(0.0),
        repository_bytes: super::tools::dir_size(repo),
        wal_files: wals.len(),
        wals,
        base,
        events,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn steps_add_up_to_the_rate_times_the_history() {
        let total: u64 = (0..120).map(|i| super::commits_in_step(i, 2.5)).sum();
        assert_eq!(total, 300);
        assert_eq!(super::commits_in_step(0, 0.0), 0);
    }
}
