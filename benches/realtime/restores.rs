//! The timed restores of the realtime bench, each the best of
//! `GENESIS_BENCH_ROUNDS`, each round after its input was read into the
//! page cache and a `sync` (`baselines::timed`), each result
//! compared with the source by fingerprint: ours (`genesis-recovery
//! restore`, a child process), Litestream's (`litestream restore`), and the
//! floor (`zstd -d` of our snapshot, then `cp` + fsync of the database).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use genesis_stages::bench::baselines::timed;
use genesis_stages::bench::fingerprint::{fingerprint, Fingerprint};
use genesis_stages::bench::tools::{fsync, have, remove_db, run};

use crate::common::restore_extra::child_json;
use crate::workload::CaptureRun;

/// One timed restore.
pub struct Restored {
    pub seconds: f64,
    pub equals: bool,
    pub detail: String,
}

/// Where a restore goes to.
#[derive(Clone, Copy)]
pub enum Point<'a> {
    Latest,
    /// The instant of the middle copy's last event (UTC, no offset).
    At(&'a str),
}

fn compare(out: &Path, expected: &Fingerprint, point: Point<'_>) -> (bool, String) {
    let what = match point {
        Point::Latest => "the source's final state",
        Point::At(_) => "the middle copy",
    };
    match fingerprint(out) {
        Ok(f) if f == *expected => (true, format!("equals {what}")),
        Ok(f) => (
            false,
            format!(
                "DIFFERS from {what}: {} events (last sequence {}) against {} ({}), orders {:?} against {:?}",
                f.events, f.last_seq, expected.events, expected.last_seq, f.orders, expected.orders
            ),
        ),
        Err(e) => (false, format!("UNREADABLE: {e}")),
    }
}

/// The best of `rounds` of `f`, each into a removed `out` (see the module
/// documentation).
fn best_of(
    rounds: usize,
    input: &Path,
    out: &Path,
    mut f: impl FnMut() -> genesis_core::Result<()>,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        remove_db(out);
        best = best.min(timed(&[input], &mut f)?);
    }
    Ok(best)
}

fn output(cr: &CaptureRun) -> Result<PathBuf> {
    let dir = cr.dir.join("out");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let out = dir.join("restored.db");
    remove_db(&out);
    Ok(out)
}

fn expected<'a>(cr: &'a CaptureRun, point: Point<'_>) -> &'a Fingerprint {
    match point {
        Point::Latest => &cr.source,
        Point::At(_) => &cr.middle,
    }
}

/// `genesis-recovery restore` of `point` into a scratch file.
///
/// # Errors
/// The restore fails or prints no JSON document.
pub fn ours(
    bin: &Path,
    cr: &CaptureRun,
    point: Point<'_>,
    validate: bool,
    rounds: usize,
) -> Result<Restored> {
    let out = output(cr)?;
    let staging = cr.dir.join("staging");
    let (live, repo) = (
        cr.live.display().to_string(),
        cr.store.display().to_string(),
    );
    let (o, s) = (out.display().to_string(), staging.display().to_string());
    let mut args = vec!["--db", &live, "--repo", &repo, "restore"];
    match point {
        Point::Latest => args.push("--latest"),
        Point::At(t) => args.extend(["--timestamp", t]),
    }
    if !validate {
        args.push("--no-validate");
    }
    args.extend(["--output", &o, "--staging-dir", &s]);
    let mut doc = None;
    let seconds = best_of(rounds, &cr.store, &out, || {
        doc = Some(child_json(bin, &args).map_err(genesis_core::Error::Failed)?);
        Ok(())
    })?;
    let v = doc.unwrap_or_default();
    let (equals, how) = compare(&out, expected(cr, point), point);
    remove_db(&out);
    Ok(Restored {
        seconds,
        equals,
        detail: format!(
            "txid {}, objects read {}, peak RSS {:.0} MiB; {how}",
            v["restored_txid"],
            v["objects_read"],
            v["peak_rss_bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20)
        ),
    })
}

/// `litestream restore` of `point` from the file replica into a scratch file.
///
/// # Errors
/// `litestream restore` fails.
pub fn litestream(
    exe: &Path,
    cr: &CaptureRun,
    point: Point<'_>,
    rounds: usize,
) -> Result<Restored> {
    let out = output(cr)?;
    let mut cmd = Command::new(exe);
    cmd.arg("restore").arg("-o").arg(&out);
    if let Point::At(t) = point {
        cmd.arg("-timestamp").arg(format!("{t}Z"));
    }
    cmd.arg(format!("file://{}", cr.store.display()));
    let seconds = best_of(rounds, &cr.store, &out, || run(&mut cmd))?;
    let want = expected(cr, point);
    let (equals, mut how) = compare(&out, want, point);
    if let (false, Point::At(_), Ok(f)) = (equals, point, fingerprint(&out)) {
        how = format!(
            "{} events behind the instant (its restore points are its syncs); {how}",
            want.events - f.events
        );
    }
    remove_db(&out);
    Ok(Restored {
        seconds,
        equals,
        detail: how,
    })
}

/// The floor: `zstd -d` of our newest snapshot, plus `cp` and fsync of the
/// final database (checkpointed first); None without `zstd` or `cp`.
///
/// # Errors
/// A failing tool, or no snapshot in the repository.
pub fn floor(cr: &CaptureRun, rounds: usize) -> Result<Option<(f64, f64)>> {
    if !have("zstd") || !have("cp") {
        return Ok(None);
    }
    let snapshots = cr.store.join("snapshots");
    let snapshot = fs::read_dir(&snapshots)
        .with_context(|| format!("list {}", snapshots.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .max()
        .with_context(|| format!("no snapshot in {}", snapshots.display()))?;
    let conn = rusqlite::Connection::open(&cr.live)?;
    crate::common::checkpoint_truncate(&conn);
    drop(conn);
    let out = output(cr)?;
    let zstd = best_of(rounds, &snapshot, &out, || {
        run(Command::new("zstd")
            .args(["-d", "-q", "-f"])
            .arg(&snapshot)
            .arg("-o")
            .arg(&out))
    })?;
    let cp = best_of(rounds, &cr.live, &out, || {
        run(Command::new("cp").arg(&cr.live).arg(&out))?;
        fsync(&out)
    })?;
    remove_db(&out);
    Ok(Some((zstd, cp)))
}
