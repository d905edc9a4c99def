//! What a user would pick instead of our restore, timed on the same files:
//! `cp` of the final database (the baseline every ratio refers to), `cp`
//! with an fsync, `zstd -d` of the snapshot, SQLite's backup API, the naive
//! method (the base file, then every saved WAL file checkpointed into it,
//! one by one), and Litestream when a `litestream` binary is on the PATH.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rusqlite::Connection;

use genesis_core::{Error, Result};

use super::fingerprint::{fingerprint, Fingerprint};
use super::tools::{file_len, fsync, have, remove_db, run, sync_all, warm};

pub(crate) const LITESTREAM: &str = "litestream restore";

/// One baseline's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Baseline {
    pub name: String,
    /// None when the tool is missing (see `skipped`).
    pub seconds: Option<f64>,
    pub ratio_to_cp: Option<f64>,
    /// Whether the result equals the source's final state, where checked.
    pub equals_source: Option<bool>,
    pub note: String,
    /// Why it did not run.
    pub skipped: Option<String>,
}

impl Baseline {
    fn ran(name: &str, seconds: f64, note: String) -> Baseline {
        Baseline {
            name: name.to_string(),
            seconds: Some(seconds),
            ratio_to_cp: None,
            equals_source: None,
            note,
            skipped: None,
        }
    }
    /// A line that did not run, and why.
    fn not_run(name: &str, why: String) -> Baseline {
        Baseline {
            name: name.to_string(),
            seconds: None,
            ratio_to_cp: None,
            equals_source: None,
            note: String::new(),
            skipped: Some(why),
        }
    }
    /// An external tool that failed: a line saying so, not a failed benchmark.
    fn failed(name: &str, e: &Error) -> Baseline {
        Baseline::not_run(name, format!("it failed: {e}"))
    }
    fn skipped(name: &str, tool: &str) -> Baseline {
        Baseline::not_run(
            name,
            format!(
                "the `{tool}` command-line tool is missing (scripts/setup.sh --bench installs it)"
            ),
        )
    }
}

/// The files the baselines work on.
pub struct Inputs<'a> {
    /// The source's final state, checkpointed into the file.
    pub live: &'a Path,
    pub live_fingerprint: &'a Fingerprint,
    /// The database file as the snapshot saw it, and `zstd -3` of it.
    pub base: &'a Path,
    pub base_zst: Option<&'a Path>,
    /// The WAL files in order.
    pub wals: &'a [PathBuf],
    /// The Litestream replica of the same workload (or why it could not be
    /// made), when `litestream` is on the PATH.
    pub litestream: Option<&'a Result<super::litestream::Replica>>,
    /// Where outputs go (removed after each).
    pub out: &'a Path,
}

/// Times `f` after warming `inputs` into the page cache and a `sync`.
///
/// # Errors
/// `f`'s error.
pub fn timed(inputs: &[&Path], f: impl FnOnce() -> Result<()>) -> Result<f64> {
    for p in inputs {
        warm(p);
    }
    sync_all();
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `zstd -T0 -3` of `base` into `to` (preparation, untimed); None without zstd.
///
/// # Errors
/// A failing `zstd`.
pub fn compress_base(base: &Path, to: &Path) -> Result<Option<PathBuf>> {
    if !have("zstd") {
        return Ok(None);
    }
    run(Command::new("zstd")
        .args(["-T0", "-3", "-q", "-f"])
        .arg(base)
        .arg("-o")
        .arg(to))?;
    Ok(Some(to.to_path_buf()))
}

/// The naive method on `to`: copy `base`, then each WAL file next to it as
/// `<to>-wal`, opened and checkpointed (TRUNCATE) by SQLite, one by one.
///
/// # Errors
/// I/O and SQLite failures.
pub fn naive(base: &Path, wals: &[PathBuf], to: &Path) -> Result<()> {
    let wal = genesis_core::lock::sibling(to, "-wal");
    let shm = genesis_core::lock::sibling(to, "-shm");
    fs::copy(base, to).map_err(|e| Error::io("copy the base", to, e))?;
    for w in wals {
        let _ = fs::remove_file(&shm);
        fs::copy(w, &wal).map_err(|e| Error::io("copy a WAL file", &wal, e))?;
        let conn = Connection::open(to).map_err(|e| Error::sqlite("open", to, e))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| Error::sqlite("checkpoint a WAL file", to, e))?;
    }
    Ok(())
}

/// SQLite's online backup API from `from` into a new `to`.
///
/// # Errors
/// SQLite failures.
pub fn backup_api(from: &Path, to: &Path) -> Result<()> {
    let src = Connection::open(from).map_err(|e| Error::sqlite("open", from, e))?;
    let mut dst = Connection::open(to).map_err(|e| Error::sqlite("open", to, e))?;
    let b = rusqlite::backup::Backup::new(&src, &mut dst)
        .map_err(|e| Error::sqlite("start a backup into", to, e))?;
    b.run_to_completion(1024, std::time::Duration::ZERO, None)
        .map_err(|e| Error::sqlite("run the backup API into", to, e))
}

/// Runs every baseline; the first (`cp`) is the one ratios refer to.
///
/// # Errors
/// A baseline that fails (a missing tool is a skipped line, not an error).
pub fn run_all(i: &Inputs<'_>) -> Result<Vec<Baseline>> {
    let mut out = Vec::new();
    let to = i.out.join("baseline.db");
    let size = format!("{} bytes", file_len(i.live));
    let cp = |to: &Path| run(Command::new("cp").arg(i.live).arg(to));
    if have("cp") {
        remove_db(&to);
        out.push(Baseline::ran("cp", timed(&[i.live], || cp(&to))?, size));
        remove_db(&to);
        let s = timed(&[i.live], || {
            cp(&to)?;
            fsync(&to)
        })?;
        out.push(Baseline::ran("cp + fsync", s, String::new()));
    } else {
        out.push(Baseline::skipped("cp", "cp"));
    }
    remove_db(&to);
    match i.base_zst {
        Some(zst) => {
            let s = timed(&[zst], || {
                run(Command::new("zstd")
                    .args(["-d", "-q", "-f"])
                    .arg(zst)
                    .arg("-o")
                    .arg(&to))
            })?;
            let note = format!("the snapshot only, {} bytes compressed", file_len(zst));
            out.push(Baseline::ran("zstd -d", s, note));
        }
        None => out.push(Baseline::skipped("zstd -d", "zstd")),
    }
    remove_db(&to);
    let s = timed(&[i.live], || backup_api(i.live, &to))?;
    let mut b = Baseline::ran("SQLite backup API", s, String::new());
    b.equals_source = Some(fingerprint(&to)? == *i.live_fingerprint);
    out.push(b);
    remove_db(&to);
    let mut warm_inputs: Vec<&Path> = vec![i.base];
    warm_inputs.extend(i.wals.iter().map(PathBuf::as_path));
    let s = timed(&warm_inputs, || naive(i.base, i.wals, &to))?;
    let mut b = Baseline::ran("naive WAL-by-WAL", s, format!("{} WAL files", i.wals.len()));
    b.equals_source = Some(fingerprint(&to)? == *i.live_fingerprint);
    out.push(b);
    remove_db(&to);
    out.push(match i.litestream {
        Some(Ok(r)) => match timed(&[r.replica_dir()], || r.restore(&to)) {
            Ok(s) => {
                let mut b = Baseline::ran(LITESTREAM, s, r.note());
                // What Litestream restored must read as the same database.
                b.equals_source =
                    Some(fingerprint(&to).is_ok_and(|f| f == *r.source_fingerprint()));
                b
            }
            Err(e) => Baseline::failed(LITESTREAM, &e),
        },
        Some(Err(e)) => Baseline::failed(LITESTREAM, e),
        None => Baseline::skipped(LITESTREAM, "litestream"),
    });
    remove_db(&to);
    let cp_s = out.first().and_then(|b| b.seconds);
    for b in &mut out {
        b.ratio_to_cp = match (b.seconds, cp_s) {
            (Some(s), Some(cp)) if cp > 0.0 => Some(s / cp),
            _ => None,
        };
    }
    Ok(out)
}
