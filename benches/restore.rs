//! Restore benchmark (DESIGN.md §8), one run on one machine, on the same data:
//!
//! A trading database (the schema of DOMAIN.md, filled by replaying the
//! simulator's valid event stream in big transactions) of
//! `GENESIS_BENCH_DB_MB` MiB is captured with a snapshot, then changed in
//! `GENESIS_BENCH_SEGMENTS` batches (each `GENESIS_BENCH_TXNS` commits, all
//! together `GENESIS_BENCH_CHANGE_PCT` % more events), each batch shipped as a
//! segment. The writer runs with autocheckpoint off, so each batch is one WAL
//! file: it is copied aside (the naive method's input), then checkpointed
//! (TRUNCATE). Then, timed, one after the other:
//!
//! - `cp` of the final database file (the baseline every ratio refers to),
//!   and `cp` followed by an fsync of the copy;
//! - `zstd -d` of a `zstd -T0 -3` of the base database;
//! - SQLite's backup API: `sqlite3 new.db ".restore final.db"`;
//! - the naive method: copy the base database, then for each saved WAL file
//!   copy it next to the database as `<db>-wal` and run
//!   `sqlite3 db "PRAGMA wal_checkpoint(TRUNCATE)"`;
//! - ours: `genesis_stages::restore` to the latest point into `output`,
//!   without validation, then with it.
//!
//! Our result and the naive one are compared with the source's final state.
//!
//! With `GENESIS_BENCH_COMPACT=1` (the default when there are 60 segments or
//! more) the chain is then compacted as the default levels would compact it,
//! each capture step standing for one second (the spans scaled to the
//! bench's measured time per step), and ours prints the objects it read per
//! level. Ours also runs once as the real binary in a child process, for its
//! peak RSS. A long chain, an hour of 1 s syncs: `GENESIS_BENCH_SEGMENTS=3600
//! GENESIS_BENCH_TXNS=1`.
//!
//! Run: `cargo bench --bench restore` (env: GENESIS_BENCH_DB_MB=1024,
//! GENESIS_BENCH_SEGMENTS=30, GENESIS_BENCH_TXNS=50,
//! GENESIS_BENCH_CHANGE_PCT=10, GENESIS_BENCH_ROUNDS=3 (best of)). The
//! baselines need the `cp`, `zstd` and `sqlite3` command-line tools
//! (`scripts/setup.sh --bench` installs them); a missing tool skips its line.

mod common;
use common::restore_extra::child_peak_rss;
use common::{checkpoint_truncate, env_num, fast, file_len};
#[path = "../tests/it/s3_server.rs"]
mod s3_server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::plan::Target;
use genesis_core::progress::NoProgress;
use genesis_core::repo::Repository;
use genesis_stages::{restore, RestoreOptions};
use genesis_trading::{replay, simulate, Event};
use rusqlite::Connection;

use genesis_stages::bench::fingerprint::{fingerprint, same_bytes, Fingerprint};
use genesis_stages::bench::tools::{dir_size, have, remove_db, warm};

/// Runs a command; panics with its stderr when it fails.
fn run(cmd: &mut Command) {
    genesis_stages::bench::tools::run(cmd).expect("run");
}

fn fsync(path: &Path) {
    genesis_stages::bench::tools::fsync(path).expect("fsync");
}

fn open_writer(path: &Path) -> Connection {
    genesis_stages::bench::generate::open_writer(path).expect("open the writer")
}

fn fingerprint_of(path: &Path) -> genesis_stages::bench::fingerprint::Fingerprint {
    fingerprint(path).expect("fingerprint")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Bytes per event of the simulator's stream once replayed (a small probe).
fn bytes_per_event(dir: &Path) -> f64 {
    let path = dir.join("probe.db");
    let n = 50_000;
    let events = simulate::random_events(7, n);
    let mut conn = open_writer(&path);
    replay(&mut conn, &events, &fast()).expect("probe replay");
    checkpoint_truncate(&conn);
    drop(conn);
    let b = file_len(&path) as f64 / n as f64;
    let _ = fs::remove_file(&path);
    b
}

/// Replays `events` in `txns` transactions of (nearly) equal size.
fn replay_in(conn: &mut Connection, events: &[Event], txns: usize) {
    let per = events.len().div_ceil(txns.max(1)).max(1);
    for chunk in events.chunks(per) {
        replay(conn, chunk, &fast()).expect("replay");
    }
}

/// The generated data set.
struct Data {
    /// The source's final state (WAL checkpointed into it).
    live: PathBuf,
    /// The database file as the snapshot saw it.
    base: PathBuf,
    /// `zstd -T0 -3` of `base` (None without the zstd CLI).
    base_zst: Option<PathBuf>,
    /// Each WAL file the writer produced, in order.
    wals: Vec<PathBuf>,
    repo: PathBuf,
    /// Mean time per capture step of the chain (writes included).
    per_step: std::time::Duration,
}

fn build(dir: &Path, mb: u64, segments: usize, txns: usize, change_pct: f64) -> Data {
    let t = Instant::now();
    let bpe = bytes_per_event(dir);
    let base_events = ((mb << 20) as f64 / bpe).ceil() as usize;
    let change_events = ((base_events as f64 * change_pct / 100.0) as usize).max(segments);
    let total = (base_events as f64 * 1.15) as usize + change_events;
    let events = simulate::random_events(42, total);
    println!(
        "generated {total} events in {:.1}s ({bpe:.0} bytes per event replayed)",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let live = dir.join("live.db");
    let mut conn = open_writer(&live);
    let mut next = 0;
    while file_len(&live) < mb << 20 && next + change_events < events.len() {
        let end = (next + 100_000).min(events.len() - change_events);
        replay(&mut conn, &events[next..end], &fast()).expect("replay");
        checkpoint_truncate(&conn);
        next = end;
    }
    println!(
        "built the base: {next} events, {:.0} MiB in {:.1}s",
        mib(file_len(&live)),
        t.elapsed().as_secs_f64()
    );
    let base = dir.join("base.db");
    fs::copy(&live, &base).expect("copy the base");
    let base_zst = if have("zstd") {
        let zst = dir.join("base.db.zst");
        run(Command::new("zstd")
            .args(["-T0", "-3", "-q", "-f"])
            .arg(&base)
            .arg("-o")
            .arg(&zst));
        Some(zst)
    } else {
        None
    };

    let t = Instant::now();
    let repo = dir.join("repo");
    let mut opts = CaptureOptions::new(&live);
    opts.snapshot_interval = None;
    // Checkpoint (PASSIVE) after every step, so that the writer can truncate the WAL.
    opts.checkpoint_frames = 1;
    let mut cap =
        Capturer::open(opts, Repository::open_local(&repo, true).expect("repo")).expect("capture");
    assert!(
        cap.opened().snapshot.is_some(),
        "the capturer took no snapshot"
    );
    let snap_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let wal_dir = dir.join("wals");
    fs::create_dir_all(&wal_dir).expect("mkdir");
    let wal = genesis_core::lock::sibling(&live, "-wal");
    let per = change_events / segments;
    let mut wals = Vec::new();
    let mut shipped = 0;
    let first = next;
    let mut step_s = Vec::new();
    for s in 0..segments {
        let end = if s + 1 == segments {
            first + change_events
        } else {
            next + per
        };
        replay_in(&mut conn, &events[next..end], txns);
        next = end;
        let saved = wal_dir.join(format!("{s:03}.wal"));
        fs::copy(&wal, &saved).expect("save the WAL");
        wals.push(saved);
        let st = Instant::now();
        let r = cap.step(false).expect("capture step");
        step_s.push(st.elapsed().as_secs_f64());
        assert!(
            r.new_generation.is_none(),
            "the capturer started a new generation"
        );
        shipped += r.segments.len();
        checkpoint_truncate(&conn);
    }
    let r = cap.finish().expect("finish");
    shipped += r.segments.len();
    drop(conn);
    let wal_bytes: u64 = wals.iter().map(|w| file_len(w)).sum();
    println!(
        "captured: snapshot in {snap_s:.1}s, then {segments} batches x {txns} commits ({change_events} events) \
         in {:.1}s: {shipped} segments; repository {:.0} MiB; saved WAL files {:.0} MiB; final database {:.0} MiB",
        t.elapsed().as_secs_f64(),
        mib(dir_size(&repo)),
        mib(wal_bytes),
        mib(file_len(&live)),
    );
    step_s.sort_by(|a, b| a.total_cmp(b));
    println!(
        "capture steps: median {:.0} ms, max {:.0} ms",
        step_s[step_s.len() / 2] * 1000.0,
        step_s[step_s.len() - 1] * 1000.0
    );
    Data {
        live,
        base,
        base_zst,
        wals,
        repo,
        per_step: t.elapsed() / segments as u32,
    }
}

/// Times `f` `rounds` times (each after `prepare` and a `sync`, so that no
/// method pays for the previous one's dirty pages), returns the best.
fn best_of(rounds: usize, mut prepare: impl FnMut(), mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        prepare();
        let _ = Command::new("sync").status();
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn line(name: &str, secs: f64, cp: Option<f64>, extra: &str) {
    match cp {
        Some(cp) => println!("{name:<34} {secs:>8.2} s  {:>6.2}x cp  {extra}", secs / cp),
        None => println!("{name:<34} {secs:>8.2} s            {extra}"),
    }
}

fn skipped(name: &str, tool: &str) {
    println!("{name:<34} skipped: the `{tool}` command-line tool is missing (scripts/setup.sh --bench installs it)");
}

fn main() {
    common::keep_freed_memory();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb = env_num("GENESIS_BENCH_DB_MB", 1024.0) as u64;
    let segments = (env_num("GENESIS_BENCH_SEGMENTS", 30.0) as usize).max(1);
    let txns = (env_num("GENESIS_BENCH_TXNS", 50.0) as usize).max(1);
    let change_pct = env_num("GENESIS_BENCH_CHANGE_PCT", 10.0);
    let rounds = (env_num("GENESIS_BENCH_ROUNDS", 3.0) as usize).max(1);
    let dir = tempfile::Builder::new()
        .prefix("genesis-bench-restore-")
        .tempdir()
        .expect("tempdir");
    println!(
        "== restore of a {mb} MiB trading database: snapshot + {segments} segments, \
         {} CPUs, best of {rounds}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let data = build(dir.path(), mb, segments, txns, change_pct);
    let source = fingerprint_of(&data.live);
    println!(
        "source: {} events (last sequence {}), {} orders, {} positions",
        source.events, source.last_seq, source.orders.0, source.positions.0
    );
    let out = dir.path().join("out");
    fs::create_dir_all(&out).expect("mkdir");
    if env_num(
        "GENESIS_BENCH_COMPACT",
        if segments >= 60 { 1.0 } else { 0.0 },
    ) > 0.0
    {
        let levels = genesis_core::compact::scaled_defaults(data.per_step);
        let repo = Repository::open_local(&data.repo, false).expect("repo");
        let t = Instant::now();
        // Every window is complete: compacted as the defaults would once
        // the chain's hour has passed.
        let later = chrono::Utc::now() + chrono::Duration::days(1);
        let r = genesis_core::compact::compact_repository(&repo, &levels, later).expect("compact");
        println!(
            "compacted (levels {levels:?}: 30s, 5m, 1h at {:.1} ms per step): {} objects into {} {:?} in {:.1}s, {:.0} MiB; repository now {:.0} MiB",
            data.per_step.as_secs_f64() * 1000.0,
            r.inputs,
            r.created.len(),
            r.per_level,
            t.elapsed().as_secs_f64(),
            mib(r.bytes_written),
            mib(dir_size(&data.repo)),
        );
    }

    // cp: the baseline every ratio refers to.
    let cp = if have("cp") {
        let to = out.join("cp.db");
        let s = best_of(
            rounds,
            || {
                remove_db(&to);
                warm(&data.live);
            },
            || run(Command::new("cp").arg(&data.live).arg(&to)),
        );
        line("cp", s, None, "(baseline)");
        let f = best_of(
            rounds,
            || {
                remove_db(&to);
                warm(&data.live);
            },
            || {
                run(Command::new("cp").arg(&data.live).arg(&to));
                fsync(&to);
            },
        );
        line("cp + fsync", f, Some(s), "");
        remove_db(&to);
        Some(s)
    } else {
        skipped("cp", "cp");
        None
    };

    // zstd -d of the base snapshot.
    match &data.base_zst {
        Some(zst) => {
            let to = out.join("zstd.db");
            let s = best_of(
                rounds,
                || {
                    remove_db(&to);
                    warm(zst);
                },
                || {
                    run(Command::new("zstd")
                        .args(["-d", "-q", "-f"])
                        .arg(zst)
                        .arg("-o")
                        .arg(&to))
                },
            );
            line(
                "zstd -d (base snapshot only)",
                s,
                cp,
                &format!("({:.0} MiB compressed)", mib(file_len(zst))),
            );
            remove_db(&to);
        }
        None => skipped("zstd -d (base snapshot only)", "zstd"),
    }

    let sqlite = have("sqlite3");
    // SQLite's backup API.
    if sqlite {
        let to = out.join("backup.db");
        let s = best_of(
            rounds,
            || {
                remove_db(&to);
                warm(&data.live);
            },
            || {
                run(Command::new("sqlite3")
                    .arg(&to)
                    .arg(format!(".restore '{}'", data.live.display())))
            },
        );
        line("sqlite3 .restore (backup API)", s, cp, "");
        remove_db(&to);
    } else {
        skipped("sqlite3 .restore (backup API)", "sqlite3");
    }

    // The naive method: the base, then each WAL file checkpointed in turn.
    if sqlite {
        let to = out.join("naive.db");
        let wal = genesis_core::lock::sibling(&to, "-wal");
        let shm = genesis_core::lock::sibling(&to, "-shm");
        let s = best_of(
            rounds,
            || {
                remove_db(&to);
                warm(&data.base);
                for w in &data.wals {
                    warm(w);
                }
            },
            || {
                run(Command::new("cp").arg(&data.base).arg(&to));
                for w in &data.wals {
                    let _ = fs::remove_file(&shm);
                    run(Command::new("cp").arg(w).arg(&wal));
                    run(Command::new("sqlite3")
                        .arg(&to)
                        .arg("PRAGMA wal_checkpoint(TRUNCATE);"));
                }
            },
        );
        let ok = fingerprint_of(&to) == source;
        line(
            "naive (cp base + checkpoint WALs)",
            s,
            cp,
            &format!(
                "({} WAL files; equals the source: {})",
                data.wals.len(),
                if ok { "yes" } else { "NO" }
            ),
        );
        remove_db(&to);
    } else {
        skipped("naive (cp base + checkpoint WALs)", "sqlite3");
    }

    // Ours, without then with validation.
    let mut ours_local = None;
    for validate in [false, true] {
        let to = out.join(format!("ours-{validate}.db"));
        let staging = dir.path().join("staging");
        let mut last = None;
        let s = best_of(
            rounds,
            || {
                remove_db(&to);
                warm(&data.repo);
            },
            || {
                let mut opts =
                    RestoreOptions::new(&data.repo, dir.path().join("live.db"), Target::Latest);
                opts.staging_dir = staging.clone();
                opts.output = Some(to.clone());
                opts.validate = validate;
                last = Some(restore(&opts, Arc::new(NoProgress)).expect("restore"));
            },
        );
        if !validate {
            ours_local = Some(s);
        }
        let r = last.expect("a restore ran");
        let fp = fingerprint_of(&to);
        let identical = same_bytes(&to, &data.live);
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|st| format!("{} {:.2}", st.id, st.seconds))
            .collect();
        line(
            if validate {
                "ours (restore, validation on)"
            } else {
                "ours (restore --no-validate)"
            },
            s,
            cp,
            &format!(
                "(success {}, txid {}, objects read {:?}; equals the source: {}; byte-identical: {})",
                r.success,
                r.restored_txid,
                r.objects_read,
                if fp == source { "yes" } else { "NO" },
                if identical { "yes" } else { "no" },
            ),
        );
        println!("    stages (s): {}", stages.join(", "));
        if fp != source {
            println!("    restored {fp:?}\n    source   {source:?}");
        }
        remove_db(&to);
    }

    // The real binary in a child process: wall time and peak RSS.
    let to = out.join("child.db");
    remove_db(&to);
    warm(&data.repo);
    let bin = Path::new(env!("CARGO_BIN_EXE_genesis-recovery"));
    let db = dir.path().join("live.db");
    let (s, rss) = child_peak_rss(
        bin,
        &[
            "--db",
            &db.display().to_string(),
            "--repo",
            &data.repo.display().to_string(),
            "restore",
            "--latest",
            "--no-validate",
            "--output",
            &to.display().to_string(),
        ],
    );
    line(
        "genesis-recovery restore (child)",
        s,
        cp,
        &format!(
            "(peak RSS {rss:.0} MiB; database {:.0} MiB)",
            mib(file_len(&data.live))
        ),
    );
    remove_db(&to);
    if std::env::var("GENESIS_BENCH_S3").is_ok_and(|v| v == "0") {
        return;
    }
    s3_restore(&data, dir.path(), rounds, cp, ours_local, &source);
}

/// The same restore from an S3 repository: moto's server on loopback (a
/// request-counting proxy in front), the same chain copied into a prefix.
fn s3_restore(
    data: &Data,
    dir: &Path,
    rounds: usize,
    cp: Option<f64>,
    local: Option<f64>,
    source: &Fingerprint,
) {
    let server = s3_server::server();
    let proxy = s3_server::Outage::start(server.addr);
    genesis_core::repo::s3::configure(genesis_core::repo::s3::S3Settings {
        endpoint: Some(proxy.endpoint()),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
    });
    let url = server.new_repo_url("bench-restore");
    let from = Repository::open_local(&data.repo, false).expect("local repo");
    let to = Repository::open_path(Path::new(&url), true).expect("s3 repo");
    let t = Instant::now();
    let mut bytes = 0u64;
    for d in ["snapshots", "segments", "events", "manifests"] {
        for key in from.backend().list(d).expect("list") {
            let b = from.backend().get(&key).expect("read");
            bytes += b.len() as u64;
            to.backend().put(&key, &b).expect("upload");
        }
    }
    println!(
        "upload of the chain to {url}: {:.0} MiB in {:.2}s",
        mib(bytes),
        t.elapsed().as_secs_f64()
    );
    let out = dir.join("ours-s3.db");
    let staging = dir.join("staging-s3");
    let mut last = None;
    let before = proxy.counts();
    let s = best_of(
        rounds,
        || remove_db(&out),
        || {
            let mut opts = RestoreOptions::new(&url, dir.join("live.db"), Target::Latest);
            opts.staging_dir = staging.clone();
            opts.output = Some(out.clone());
            opts.validate = false;
            last = Some(restore(&opts, Arc::new(NoProgress)).expect("restore from s3"));
        },
    );
    let after = proxy.counts();
    let r = last.expect("a restore ran");
    let fp = fingerprint_of(&out);
    line(
        "ours from S3 on loopback (--no-validate)",
        s,
        cp,
        &format!(
            "(success {}, txid {}; equals the source: {}; {:.2}x the local restore; per restore: \
             {} GET, {} HEAD, {} PUT)",
            r.success,
            r.restored_txid,
            if fp == *source { "yes" } else { "NO" },
            local.map_or(f64::NAN, |l| s / l),
            (after[1] - before[1]) / rounds as u64,
            (after[2] - before[2]) / rounds as u64,
            (after[0] - before[0]) / rounds as u64,
        ),
    );
    remove_db(&out);
}
