//! Capture benchmark (issue: capture performance), one run on one machine:
//!
//! 1. `replicate` keeping up with `simulate`: commits per second achieved by
//!    the writer, and the lag between a commit and its segment being durable
//!    (p50/p99), at the target rate (default 2,000 commits/s) and at the
//!    writer's highest rate, with a 1 s interval.
//! 2. `backup full` of a large database (default 1 GiB) against the `zstd`
//!    CLI (`zstd -T0 -3`) compressing the same file, as a ratio.
//!
//! Run: `cargo bench --bench capture` (env: GENESIS_BENCH_DB_MB=1024,
//! GENESIS_BENCH_SECONDS=10, GENESIS_BENCH_RATE=2000). Needs the `zstd` CLI
//! (`scripts/setup.sh` installs it).

mod common;
use common::{env_num, percentile};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genesis_core::capture::{self, CaptureOptions, ReplicateOptions};
use genesis_core::repo::Repository;

/// Runs the writer at `rate` (0 = as fast as it can) for `secs` while
/// replicate runs with a 1 s interval; returns (commits/s, p50 lag, p99 lag).
fn lag_run(dir: &Path, rate: f64, secs: f64) -> (f64, f64, f64, u64) {
    let db = dir.join("lag.db");
    let repo_dir = dir.join("lag-repo");
    let _ = std::fs::remove_dir_all(&repo_dir);
    let _ = std::fs::remove_file(&db);
    let mut conn = rusqlite::Connection::open(&db).expect("open");
    genesis_trading::schema::ensure_schema(&conn).expect("schema");
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("wal");
    let mut sim = genesis_trading::simulate::Simulator::open(&conn, 42).expect("simulator");
    sim.commit_one(&mut conn).expect("first commit");
    let repo = Repository::open_local(&repo_dir, true).expect("repo");
    let stop = Arc::new(AtomicBool::new(false));
    let durable: Arc<Mutex<Vec<(u64, u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let base_txid: Arc<Mutex<Option<u64>>> = Arc::new(Mutex::new(None));
    let cap = {
        let (stop, durable, base_txid) = (stop.clone(), durable.clone(), base_txid.clone());
        let db = db.clone();
        std::thread::spawn(move || {
            let mut opts = CaptureOptions::new(&db);
            opts.checkpoint_frames = 4000;
            capture::replicate(
                opts,
                repo,
                &ReplicateOptions {
                    interval: Duration::from_secs(1),
                    run_for: None,
                    metrics_addr: None,
                    compaction: Vec::new(),
                },
                &stop,
                |r| {
                    let now = Instant::now();
                    if r.snapshot.is_some() && r.new_generation.is_some() {
                        // The opening snapshot: its txid is the base.
                        *base_txid.lock().expect("lock") = Some(0);
                    }
                    if let (Some(a), Some(b)) = (r.txid_min, r.txid_max) {
                        durable.lock().expect("lock").push((a, b, now));
                    }
                },
            )
            .expect("replicate")
        })
    };
    // Wait for the capturer's opening snapshot.
    while base_txid.lock().expect("lock").is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let mut commit_times = Vec::new();
    let deadline = started + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(commit_times.len() as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sim.commit_one(&mut conn).expect("commit");
        commit_times.push(Instant::now());
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let _ = cap.join();
    // txid of the first commit after the snapshot is snapshot txid + 1 = 2 in a new repo.
    let segs = durable.lock().expect("lock").clone();
    let mut lags = Vec::new();
    for (i, t) in commit_times.iter().enumerate() {
        let txid = 2 + i as u64;
        if let Some((_, _, at)) = segs.iter().find(|(a, b, _)| *a <= txid && txid <= *b) {
            lags.push(at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
        }
    }
    let n = commit_times.len() as u64;
    let captured = lags.len() as u64;
    assert_eq!(captured, n, "every commit must be captured");
    let p50 = percentile(&mut lags, 0.50);
    let p99 = percentile(&mut lags, 0.99);
    (n as f64 / elapsed, p50, p99, n)
}

fn build_large_db(path: &Path, mb: u64) {
    let _ = std::fs::remove_file(path);
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; CREATE TABLE fills(id INTEGER PRIMARY KEY, symbol TEXT, side TEXT, price REAL, qty REAL, note TEXT);")
        .expect("schema");
    let symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut id: i64 = 0;
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < mb * 1024 * 1024 {
        conn.execute_batch("BEGIN").expect("begin");
        {
            let mut st = conn
                .prepare_cached("INSERT INTO fills VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .expect("prepare");
            for _ in 0..50_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                id += 1;
                let note = format!(
                    "order {} filled at venue {} latency {}us ref {:x}",
                    id,
                    x % 7,
                    x % 997,
                    x
                );
                st.execute(rusqlite::params![
                    id,
                    symbols[(x % 5) as usize],
                    if x.is_multiple_of(2) { "buy" } else { "sell" },
                    20000.0 + (x % 100_000) as f64 / 100.0,
                    (x % 1000) as f64 / 1000.0,
                    note
                ])
                .expect("insert");
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("genesis-bench-capture-")
        .tempdir()
        .expect("tempdir");
    let secs = env_num("GENESIS_BENCH_SECONDS", 10.0);
    let rate = env_num("GENESIS_BENCH_RATE", 2000.0);
    println!("== replicate keeping up with simulate (interval 1s, {secs}s per run)");
    let (cps, p50, p99, n) = lag_run(dir.path(), rate, secs);
    println!("target rate {rate:>6.0}/s: {cps:>8.0} commits/s ({n} commits), lag p50 {p50:>7.1} ms, p99 {p99:>7.1} ms (target p99 <= 1250 ms)");
    let (cps, p50, p99, n) = lag_run(dir.path(), 0.0, secs);
    println!("highest rate      : {cps:>8.0} commits/s ({n} commits), lag p50 {p50:>7.1} ms, p99 {p99:>7.1} ms");

    let mb = env_num("GENESIS_BENCH_DB_MB", 1024.0) as u64;
    println!("== backup full of a {mb} MiB database vs zstd -T0 -3");
    let db = dir.path().join("large.db");
    let t = Instant::now();
    build_large_db(&db, mb);
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "built {} MiB in {:.1}s",
        size / (1 << 20),
        t.elapsed().as_secs_f64()
    );
    // Warm the page cache equally for both.
    let _ = std::fs::read(&db);
    let zout = dir.path().join("large.db.zst");
    let t = Instant::now();
    let st = std::process::Command::new("zstd")
        .args(["-T0", "-3", "-q", "-f"])
        .arg(&db)
        .arg("-o")
        .arg(&zout)
        .status();
    let zstd_s = t.elapsed().as_secs_f64();
    let zstd_ok = st.map(|s| s.success()).unwrap_or(false);
    let zsize = std::fs::metadata(&zout).map(|m| m.len()).unwrap_or(0);
    let repo = Repository::open_local(&dir.path().join("large-repo"), true).expect("repo");
    let t = Instant::now();
    let r = capture::backup_full(CaptureOptions::new(&db), repo, Duration::from_secs(10))
        .expect("backup full");
    let ours_s = t.elapsed().as_secs_f64();
    if zstd_ok {
        println!(
            "zstd -T0 -3: {zstd_s:.2}s ({} MiB); backup full: {ours_s:.2}s ({} MiB); ratio {:.2}x (target <= 1.5x)",
            zsize >> 20,
            r.size_bytes >> 20,
            ours_s / zstd_s
        );
    } else {
        println!("backup full: {ours_s:.2}s ({} MiB); the zstd CLI is missing (run scripts/setup.sh) so no ratio", r.size_bytes >> 20);
    }
}
