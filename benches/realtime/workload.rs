//! One capture run of the realtime bench: a copy of the base database,
//! the capturer started on it and its opening snapshot awaited, then
//! `genesis-recovery simulate` at the asked rate for the asked time (a
//! consistent copy of the database taken halfway, `VACUUM INTO`, as the
//! reference of the restore to the middle), a few seconds for the capturer
//! to ship the last commits, and the capturer stopped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use genesis_stages::bench::fingerprint::{fingerprint, Fingerprint};
use genesis_stages::bench::tools::dir_size;

use crate::procs::{Running, Usage};

/// The workload both capturers see.
#[derive(Debug, Clone)]
pub struct Workload {
    pub rate: f64,
    pub seconds: u64,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Each restore is the best of this many.
    pub rounds: usize,
}

/// Which capturer.
pub enum Capturer<'a> {
    /// `genesis-recovery backup replicate` with its defaults.
    Ours,
    /// `litestream replicate DB file://REPLICA` with its defaults.
    Litestream(&'a Path),
}

/// What one capture run left and measured.
pub struct CaptureRun {
    pub dir: PathBuf,
    pub live: PathBuf,
    /// Our repository, or Litestream's file replica.
    pub store: PathBuf,
    pub commits: u64,
    pub simulate_seconds: f64,
    pub ready_seconds: f64,
    /// CPU when the opening snapshot was written (from /proc).
    pub cpu_before_workload: Option<f64>,
    pub usage: Usage,
    pub store_bytes: u64,
    /// Litestream's local files beside the database (`.<db>-litestream`).
    pub local_bytes: u64,
    /// The final database, and the copy taken halfway with its last event's time.
    pub source: Fingerprint,
    pub middle: Fingerprint,
    pub middle_at: String,
    pub middle_copy_seconds: f64,
}

/// `VACUUM INTO` of `live` (one read transaction: a consistent copy while
/// the writer goes on); returns the seconds it took.
fn consistent_copy(live: &Path, to: &Path) -> Result<f64> {
    let t = Instant::now();
    let conn = Connection::open(live).with_context(|| format!("open {}", live.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let target = to.to_str().context("a temporary path that is not UTF-8")?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("VACUUM INTO {}", to.display()))?;
    Ok(t.elapsed().as_secs_f64())
}

fn last_event_time(db: &Path) -> Result<String> {
    let conn = Connection::open(db).with_context(|| format!("open {}", db.display()))?;
    conn.query_row(
        "SELECT created_at FROM events ORDER BY sequence_number DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .with_context(|| format!("the last event of {}", db.display()))
}

/// Runs `simulate` on `live`, taking the middle copy halfway; returns
/// (commits, seconds, copy seconds).
fn simulate(bin: &Path, live: &Path, w: &Workload, middle: &Path) -> Result<(u64, f64, f64)> {
    let sim = Command::new(bin)
        .arg("--db")
        .arg(live)
        .args(["-q", "--json", "simulate"])
        .args(["--rate", &w.rate.to_string()])
        .args(["--duration", &format!("{}s", w.seconds)])
        .args(["--seed", &w.seed.to_string()])
        .args(["--checkpoint-every", &w.checkpoint_every.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start genesis-recovery simulate")?;
    std::thread::sleep(Duration::from_secs_f64(w.seconds as f64 / 2.0));
    let copied = consistent_copy(live, middle);
    let out = sim.wait_with_output().context("wait for simulate")?;
    if !out.status.success() {
        bail!(
            "simulate failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let copy_seconds = copied?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("simulate printed no JSON report")?;
    Ok((
        v["commits"].as_u64().unwrap_or(0),
        v["elapsed_seconds"].as_f64().unwrap_or(0.0),
        copy_seconds,
    ))
}

/// Runs the workload under `capturer` on a copy of `base` in `dir` (new).
///
/// # Errors
/// Any process failing or exiting early, I/O and SQLite failures.
pub fn capture_run(
    capturer: Capturer<'_>,
    bin: &Path,
    base: &Path,
    dir: &Path,
    w: &Workload,
) -> Result<CaptureRun> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let live = dir.join("live.db");
    fs::copy(base, &live).with_context(|| format!("copy the base to {}", live.display()))?;
    let (mut cmd, store, snapshot_written): (_, _, fn(&str) -> bool) = match capturer {
        Capturer::Ours => {
            let repo = dir.join("repo");
            let mut c = Command::new(bin);
            c.arg("--db").arg(&live).arg("--repo").arg(&repo);
            c.args(["-q", "backup", "replicate"]);
            // The snapshot's manifest is written after the snapshot.
            (c, repo, |n| n.starts_with("full_") && n.ends_with(".json"))
        }
        Capturer::Litestream(exe) => {
            let replica = dir.join("replica");
            let mut c = Command::new(exe);
            c.arg("replicate")
                .arg(&live)
                .arg(format!("file://{}", replica.display()));
            (c, replica, |n| n.ends_with(".ltx"))
        }
    };
    // No settings file of the working directory is read.
    cmd.current_dir(dir);
    let mut running = Running::start("the capturer", &mut cmd, &dir.join("capture.log"))?;
    let ready_seconds = running.wait_ready(&store, snapshot_written, Duration::from_secs(1800))?;
    let cpu_before_workload = running.cpu_so_far();
    let middle = dir.join("middle.db");
    let (commits, simulate_seconds, middle_copy_seconds) = match simulate(bin, &live, w, &middle) {
        Ok(v) => v,
        Err(e) => {
            let _ = running.stop();
            return Err(e);
        }
    };
    // Both sync every second: time to ship the last commits.
    std::thread::sleep(Duration::from_secs(3));
    let usage = running.stop()?;
    let local = dir.join(".live.db-litestream");
    Ok(CaptureRun {
        store_bytes: dir_size(&store),
        local_bytes: dir_size(&local),
        source: fingerprint(&live)?,
        middle: fingerprint(&middle)?,
        middle_at: last_event_time(&middle)?,
        dir: dir.to_path_buf(),
        live,
        store,
        commits,
        simulate_seconds,
        ready_seconds,
        cpu_before_workload,
        usage,
        middle_copy_seconds,
    })
}
