//! Capture into an S3 repository (moto's server on loopback, behind a
//! request-counting proxy), one run on one machine:
//!
//! 1. `backup replicate --interval 1s` while a writer commits at
//!    `GENESIS_BENCH_RATE` commits/s (default 1,000) for
//!    `GENESIS_BENCH_SECONDS` (default 20): the lag from each commit to the
//!    segment holding it being listed in the bucket (p50/p99; the store is
//!    polled every 50 ms, directly, not through the proxy), and the PUT, GET
//!    and HEAD requests the capturer sent, scaled to an hour;
//! 2. the same capturer on the now idle database for as long: requests per
//!    hour (Litestream #1171 reports 480 PUT/h idle).
//!
//! Run: `cargo bench --bench s3_capture` (needs `moto_server`:
//! `scripts/setup.sh` installs it).

mod common;
#[path = "../tests/it/s3_server.rs"]
mod s3_server;
use common::{env_num, percentile};

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genesis_core::repo::Repository;

/// (txid_max, when first seen) of every segment manifest in the bucket.
fn segments_seen(repo: &Repository, seen: &mut BTreeMap<String, (u64, Instant)>) {
    let Ok(keys) = repo.backend().list("manifests") else {
        return;
    };
    let now = Instant::now();
    for k in keys {
        if seen.contains_key(&k) || !k.starts_with("manifests/incr_") {
            continue;
        }
        let last = k
            .trim_end_matches(".json")
            .rsplit('_')
            .next()
            .and_then(|t| t.parse().ok());
        if let Some(t) = last {
            seen.insert(k, (t, now));
        }
    }
}

fn per_hour(n: u64, secs: f64) -> f64 {
    n as f64 * 3600.0 / secs
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rate = env_num("GENESIS_BENCH_RATE", 1000.0);
    let secs = env_num("GENESIS_BENCH_SECONDS", 20.0);
    let server = s3_server::server();
    let proxy = s3_server::Outage::start(server.addr);
    let url = server.new_repo_url("bench-capture");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let mut conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, v BLOB); \
         INSERT INTO t(v) VALUES (randomblob(200));",
    )
    .expect("schema");
    let mut rep = Command::new(env!("CARGO_BIN_EXE_genesis-recovery"));
    for (k, v) in server.env() {
        rep.env(k, v);
    }
    let mut rep = rep
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .arg("--db")
        .arg(&db)
        .arg("--repo")
        .arg(&url)
        .args(["--quiet", "backup", "replicate", "--interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("replicate");
    let repo = Repository::open_path(std::path::Path::new(&url), false).expect("repo");
    // The opening snapshot: its txid is that of the one commit so far.
    let t0 = Instant::now();
    let snapshot_txid = loop {
        let keys = repo.backend().list("manifests").unwrap_or_default();
        if let Some(t) = keys.iter().find_map(|k| {
            k.strip_prefix("manifests/full_")?
                .trim_end_matches(".json")
                .rsplit('_')
                .next()?
                .parse::<u64>()
                .ok()
        }) {
            break t;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no snapshot");
        std::thread::sleep(Duration::from_millis(50));
    };
    let before = proxy.counts();
    let started = Instant::now();
    let mut commits: Vec<Instant> = Vec::new();
    let mut seen = BTreeMap::new();
    let mut next_poll = started;
    while started.elapsed().as_secs_f64() < secs {
        let due = started + Duration::from_secs_f64(commits.len() as f64 / rate);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let tx = conn.transaction().expect("begin");
        tx.execute("INSERT INTO t(v) VALUES (randomblob(200))", [])
            .expect("insert");
        tx.commit().expect("commit");
        commits.push(Instant::now());
        if Instant::now() >= next_poll {
            segments_seen(&repo, &mut seen);
            next_poll = Instant::now() + Duration::from_millis(50);
        }
    }
    let busy_secs = started.elapsed().as_secs_f64();
    // Until the last commit is in the bucket.
    let last_txid = snapshot_txid + commits.len() as u64;
    let t1 = Instant::now();
    while seen.values().map(|v| v.0).max().unwrap_or(0) < last_txid {
        assert!(
            t1.elapsed() < Duration::from_secs(120),
            "the capture never caught up"
        );
        segments_seen(&repo, &mut seen);
        std::thread::sleep(Duration::from_millis(50));
    }
    let busy = proxy.counts();
    let mut by_txid: Vec<(u64, Instant)> = seen.values().copied().collect();
    by_txid.sort();
    let mut lags: Vec<f64> = commits
        .iter()
        .enumerate()
        .filter_map(|(i, at)| {
            let txid = snapshot_txid + 1 + i as u64;
            let k = by_txid.partition_point(|(t, _)| *t < txid);
            by_txid
                .get(k)
                .map(|(_, when)| when.saturating_duration_since(*at).as_secs_f64())
        })
        .collect();
    let achieved = commits.len() as f64 / busy_secs;
    let (p50, p99) = (percentile(&mut lags, 0.5), percentile(&mut lags, 0.99));
    println!("== capture into {url} (moto on loopback), interval 1 s");
    println!(
        "busy: {achieved:.0} commits/s for {busy_secs:.1}s; commit -> in the bucket p50 {p50:.3}s p99 {p99:.3}s"
    );
    let d = |a: [u64; 4], b: [u64; 4], i: usize| a[i] - b[i];
    println!(
        "busy requests per hour: PUT {:.0}, GET {:.0} (LIST included), HEAD {:.0}",
        per_hour(d(busy, before, 0), busy_secs),
        per_hour(d(busy, before, 1), busy_secs),
        per_hour(d(busy, before, 2), busy_secs)
    );
    drop(conn);
    let idle_from = proxy.counts();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let idle = proxy.counts();
    println!(
        "idle requests per hour: PUT {:.0}, GET {:.0} (LIST included), HEAD {:.0} (Litestream #1171: 480 PUT/h)",
        per_hour(d(idle, idle_from, 0), secs),
        per_hour(d(idle, idle_from, 1), secs),
        per_hour(d(idle, idle_from, 2), secs)
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(rep.id().to_string())
        .status();
    let _ = rep.wait();
}
