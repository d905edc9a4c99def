//! Side by side with Litestream, in real time (issue 14), one run on one
//! machine, on the same data:
//!
//! A trading database of `GENESIS_BENCH_DB_MB` MiB is generated
//! (`genesis_stages::bench::generate`). Then, once under `genesis-recovery
//! backup replicate` (its defaults: 1 s interval, compaction on) and once
//! under `litestream replicate` (a file replica, its defaults), each on its
//! own copy of that database: the capturer starts, its opening snapshot is
//! awaited, and `genesis-recovery simulate --rate GENESIS_BENCH_RATE
//! --duration GENESIS_BENCH_SECONDS` runs with the same seed, so that the
//! workloads are the same (halfway through, the bench takes a consistent
//! copy with `VACUUM INTO`: the reference of the restore to the middle).
//! Three seconds after the last commit the capturer gets SIGTERM.
//!
//! Reported: the commits each run achieved; the capturer's CPU (user + sys
//! from `wait4` of the child); the repository's bytes against the
//! replica's; `restore --latest` (ours with `--no-validate` and validated,
//! `litestream restore`) and the restore to the middle copy's last event's
//! instant, each result compared with its source by fingerprint; the floor
//! (`zstd -d` of our snapshot + `cp` + fsync of the database); and the
//! ratios ours / Litestream's. No time is asserted.
//!
//! Run: `cargo bench --bench realtime` (env: GENESIS_BENCH_DB_MB=1024,
//! GENESIS_BENCH_RATE=1000, GENESIS_BENCH_SECONDS=300,
//! GENESIS_BENCH_CHECKPOINT_EVERY=500 (simulate's default),
//! GENESIS_BENCH_ROUNDS=3 (each restore the best of),
//! GENESIS_BENCH_DIR (the temporary directory), GENESIS_BENCH_LITESTREAM
//! (the binary; else the one behind pyenv's shim, else `litestream`)).
//! Without `litestream` (`scripts/setup.sh --bench` installs it) ours runs
//! alone.

mod common;
#[path = "realtime/procs.rs"]
mod procs;
#[path = "realtime/restores.rs"]
mod restores;
#[path = "realtime/workload.rs"]
mod workload;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use genesis_core::progress::NoProgress;
use genesis_stages::bench::{generate, litestream, tools};
use restores::{Point, Restored};
use workload::{capture_run, CaptureRun, Capturer, Workload};

/// The generator's seed, and simulate's.
const GENERATE_SEED: u64 = 42;
const SIMULATE_SEED: u64 = 1;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Free bytes the run needs: the base, then for one capturer at a time its
/// copy, the middle copy, a restored and a staged database (each the base
/// plus what the workload adds), and the repository or replica with
/// Litestream's local files (measured: ~9 KiB per commit for Litestream's
/// replica; 24 KiB counted), with a 256 MiB margin.
fn needed_bytes(db: u64, commits: u64) -> u64 {
    let grown = db + commits * 2048;
    db + grown * 4 + db / 2 + commits * 24 * 1024 + (256 << 20)
}

/// The capture and restore measurements of one capturer.
struct Side {
    run: CaptureRun,
    latest: Restored,
    latest_validated: Option<Restored>,
    middle: Restored,
}

fn describe(name: &str, r: &CaptureRun, w: &Workload) {
    println!(
        "{name}: opening snapshot written in {:.1} s (CPU so far {}); simulate: {} commits in {:.1} s \
         = {:.0}/s of {:.0} asked; middle copy (VACUUM INTO) in {:.2} s, last event at {}; \
         capturer ran {:.1} s{}",
        r.ready_seconds,
        r.cpu_before_workload
            .map_or("unknown".into(), |c| format!("{c:.2} s")),
        r.commits,
        r.simulate_seconds,
        r.commits as f64 / r.simulate_seconds.max(1e-9),
        w.rate,
        r.middle_copy_seconds,
        r.middle_at,
        r.usage.wall,
        if r.usage.killed {
            " (did not stop on SIGTERM: killed)"
        } else {
            ""
        },
    );
}

fn ours(bin: &Path, base: &Path, dir: &Path, w: &Workload) -> Result<(Side, Option<(f64, f64)>)> {
    let run = capture_run(Capturer::Ours, bin, base, dir, w)?;
    describe("ours", &run, w);
    let at = run.middle_at.clone();
    let latest = restores::ours(bin, &run, Point::Latest, false, w.rounds)?;
    let latest_validated = Some(restores::ours(bin, &run, Point::Latest, true, w.rounds)?);
    let middle = restores::ours(bin, &run, Point::At(&at), false, w.rounds)?;
    let floor = restores::floor(&run, w.rounds)?;
    Ok((
        Side {
            run,
            latest,
            latest_validated,
            middle,
        },
        floor,
    ))
}

fn theirs(exe: &Path, bin: &Path, base: &Path, dir: &Path, w: &Workload) -> Result<Side> {
    let run = capture_run(Capturer::Litestream(exe), bin, base, dir, w)?;
    describe("litestream", &run, w);
    let at = run.middle_at.clone();
    let latest = restores::litestream(exe, &run, Point::Latest, w.rounds)?;
    let middle = restores::litestream(exe, &run, Point::At(&at), w.rounds)?;
    Ok(Side {
        run,
        latest,
        latest_validated: None,
        middle,
    })
}

fn row(name: &str, ours: f64, theirs: Option<f64>, unit: &str) {
    match theirs {
        Some(t) => println!(
            "{name:<40} {ours:>12.2} {t:>12.2} {unit:<4} {:>8.3}x",
            ours / t
        ),
        None => println!("{name:<40} {ours:>12.2} {:>12} {unit:<4}", "-"),
    }
}

fn restore_line(name: &str, r: &Restored) {
    println!("  {name:<38} {:>8.2} s  {}", r.seconds, r.detail);
}

/// Prints the comparison; returns how many restores that must equal their
/// source do not.
fn report(ours: &Side, floor: Option<(f64, f64)>, theirs: Option<&Side>) -> usize {
    let t = |f: fn(&Side) -> f64| theirs.map(f);
    println!(
        "\n{:<40} {:>12} {:>12} {:<4} {:>9}",
        "", "ours", "Litestream", "", "ours/them"
    );
    row(
        "commits achieved",
        ours.run.commits as f64,
        t(|s| s.run.commits as f64),
        "",
    );
    row(
        "capture CPU, user+sys (wait4)",
        ours.run.usage.cpu(),
        t(|s| s.run.usage.cpu()),
        "s",
    );
    row(
        "  of which before the workload (/proc)",
        ours.run.cpu_before_workload.unwrap_or(f64::NAN),
        t(|s| s.run.cpu_before_workload.unwrap_or(f64::NAN)),
        "s",
    );
    let per_k = |s: &Side| {
        (s.run.usage.cpu() - s.run.cpu_before_workload.unwrap_or(f64::NAN)) * 1e6
            / s.run.commits.max(1) as f64
    };
    row("  after it, per 1000 commits", per_k(ours), t(per_k), "ms");
    row(
        "repository / file replica",
        mib(ours.run.store_bytes),
        t(|s| mib(s.run.store_bytes)),
        "MiB",
    );
    if let Some(s) = theirs {
        println!(
            "{:<40} {:>12} {:>12.2} MiB",
            "  Litestream's local files (not counted)",
            "-",
            mib(s.run.local_bytes)
        );
    }
    row(
        "restore --latest, no validation",
        ours.latest.seconds,
        t(|s| s.latest.seconds),
        "s",
    );
    if let Some(v) = &ours.latest_validated {
        row(
            "restore --latest, validated",
            v.seconds,
            t(|s| s.latest.seconds),
            "s",
        );
    }
    row(
        "restore to the middle, no validation",
        ours.middle.seconds,
        t(|s| s.middle.seconds),
        "s",
    );
    println!("\nours:");
    restore_line("latest, no validation", &ours.latest);
    if let Some(v) = &ours.latest_validated {
        restore_line("latest, validated", v);
    }
    restore_line("middle, no validation", &ours.middle);
    if let Some(s) = theirs {
        println!("litestream:");
        restore_line("latest", &s.latest);
        restore_line("middle", &s.middle);
    }
    let floor = floor.map(|(z, c)| {
        println!(
            "floor: zstd -d of our snapshot {z:.2} s + cp and fsync of the database {c:.2} s = {:.2} s; \
             ours latest (no validation) {:.2}x the floor",
            z + c,
            ours.latest.seconds / (z + c)
        );
        z + c
    });
    if floor.is_none() {
        println!("floor: skipped (the `zstd` or `cp` command-line tool is missing)");
    }
    if let Some(s) = theirs {
        let quarter = 0.25 * s.latest.seconds;
        let target = floor.map_or(quarter, |f| quarter.max(f));
        println!(
            "target: restore --latest <= 0.25x Litestream's ({quarter:.2} s), or the floor where that \
             is slower ({}): <= {target:.2} s; ours {:.2} s = {:.3}x Litestream's: {}",
            floor.map_or("unknown".into(), |f| format!("{f:.2} s")),
            ours.latest.seconds,
            ours.latest.seconds / s.latest.seconds,
            if ours.latest.seconds <= target {
                "met"
            } else {
                "not met"
            }
        );
    }
    let all = [
        Some(&ours.latest),
        ours.latest_validated.as_ref(),
        Some(&ours.middle),
    ];
    let wrong = all.iter().flatten().filter(|r| !r.equals).count()
        + theirs.map_or(0, |s| usize::from(!s.latest.equals));
    wrong
}

fn main() {
    common::keep_freed_memory();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(e) = bench() {
        eprintln!("realtime bench: {e:#}");
        std::process::exit(1);
    }
}

fn bench() -> Result<()> {
    let mb = common::env_num("GENESIS_BENCH_DB_MB", 1024.0).max(1.0) as u64;
    let w = Workload {
        rate: common::env_num("GENESIS_BENCH_RATE", 1000.0).max(1.0),
        seconds: common::env_num("GENESIS_BENCH_SECONDS", 300.0).max(2.0) as u64,
        seed: SIMULATE_SEED,
        checkpoint_every: common::env_num("GENESIS_BENCH_CHECKPOINT_EVERY", 500.0) as u64,
        rounds: common::env_num("GENESIS_BENCH_ROUNDS", 3.0).max(1.0) as usize,
    };
    let parent =
        std::env::var_os("GENESIS_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let commits = (w.rate * w.seconds as f64) as u64;
    let needed = needed_bytes(mb << 20, commits);
    let free = tools::free_bytes(&parent)?;
    if free < needed {
        bail!(
            "{}: the bench needs {:.1} GiB free there and {:.1} GiB are: free some space, set \
             GENESIS_BENCH_DIR to a larger filesystem, or lower GENESIS_BENCH_DB_MB, \
             GENESIS_BENCH_RATE or GENESIS_BENCH_SECONDS",
            parent.display(),
            needed as f64 / f64::from(1 << 30),
            free as f64 / f64::from(1 << 30)
        );
    }
    let exe = litestream::available().then(procs::litestream_bin);
    println!(
        "== side by side with Litestream, in real time: a {mb} MiB trading database, simulate \
         --rate {} for {} s under each capturer, restores best of {}, {} CPUs; {:.1} GiB free, \
         {:.1} GiB needed",
        w.rate,
        w.seconds,
        w.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        free as f64 / f64::from(1 << 30),
        needed as f64 / f64::from(1 << 30)
    );
    match &exe {
        Some(e) => println!("litestream: {}", e.display()),
        None => println!(
            "litestream is not on the PATH (scripts/setup.sh --bench installs it): ours runs alone"
        ),
    }
    let dir = tempfile::Builder::new()
        .prefix("genesis-bench-realtime-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a directory in {}", parent.display()))?;
    let bin = Path::new(env!("CARGO_BIN_EXE_genesis-recovery"));
    let base = dir.path().join("base.db");
    let t = Instant::now();
    let g = generate::generate(&base, mb << 20, GENERATE_SEED, &NoProgress)?;
    println!(
        "base: {} events, {:.0} MiB, generated in {:.1} s",
        g.events,
        mib(g.bytes),
        t.elapsed().as_secs_f64()
    );
    let ours_dir = dir.path().join("ours");
    let (ours, floor) = ours(bin, &base, &ours_dir, &w)?;
    // One capturer's files at a time on the disk.
    std::fs::remove_dir_all(&ours_dir).with_context(|| format!("remove {}", ours_dir.display()))?;
    let theirs = match &exe {
        Some(exe) => {
            let d = dir.path().join("litestream");
            let side = theirs(exe, bin, &base, &d, &w)?;
            std::fs::remove_dir_all(&d).with_context(|| format!("remove {}", d.display()))?;
            Some(side)
        }
        None => None,
    };
    let wrong = report(&ours, floor, theirs.as_ref());
    if wrong > 0 {
        bail!("{wrong} restore(s) that must equal their source do not (see above)");
    }
    Ok(())
}
