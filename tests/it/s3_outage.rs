//! An outage of the object store while the application commits at up to
//! 500/s: `replicate` keeps capturing into its local spool (the capture
//! position advances, the WAL stays small, the application is not held
//! while the store is down),
//! uploads resume when the store is back, the spool drains, and every
//! commit made meanwhile is restorable from the bucket. A 5 s outage by
//! default, 30 s with `GENESIS_SOAK=1`.

use std::time::{Duration, Instant};

use crate::capture_metrics::{scrape, value};
use crate::common::{
    kv_hash, read_record, rebuild_at, signal, soak, wait_for_capture_lock, Env, Store,
};
use crate::s3_server::{server, Outage};

/// The writer's commit times, in order.
fn commit_times(path: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .expect("record")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn spool_files(env: &Env) -> usize {
    let dir = genesis_core::repo::spool::spool_dir(&env.db());
    ["snapshots", "segments", "events", "manifests"]
        .iter()
        .map(|d| {
            std::fs::read_dir(dir.join(d))
                .map(|rd| rd.filter_map(|e| e.ok()).count())
                .unwrap_or(0)
        })
        .sum()
}

/// A database with `commits` of the hostile writer's commits (recorded in
/// `record`), and `backup replicate ARGS` capturing it into the S3 server
/// through `proxy`, serving its metrics; returns it and the metrics address.
pub(crate) fn replicate_through(
    env: &Env,
    proxy: &Outage,
    record: &std::path::Path,
    commits: u64,
    args: &[&str],
) -> (std::process::Child, String) {
    let mut w = env.hostile_writer(record, commits, 21, 0, 0);
    assert!(w.wait().expect("writer").success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let maddr = format!("127.0.0.1:{port}");
    let rep = env
        .cmd()
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .args(["backup", "replicate", "--metrics-addr", &maddr])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("replicate");
    (rep, maddr)
}

#[test]
fn an_outage_of_the_store_loses_nothing_and_holds_nothing() {
    let outage_for = Duration::from_secs(if soak() { 30 } else { 5 });
    let interval = Duration::from_secs(1);
    let s3 = server();
    let proxy = Outage::start(s3.addr);
    let env = Env::on(Store::S3);
    let record = env.path().join("record.txt");
    let (mut rep, maddr) = replicate_through(
        &env,
        &proxy,
        &record,
        1,
        &["--interval", "1s", "--checkpoint-frames", "200"],
    );
    wait_for_capture_lock(&env);
    // 500 commits/s at most: a 10 ms pause every 5 commits, for the
    // outage and 3 s around it.
    let commits = 500 * (outage_for.as_secs() + 3);
    let mut writer = env.hostile_writer(&record, commits, 22, 5, 10);
    std::thread::sleep(Duration::from_millis(1500));
    let metric = |name: &str| value(&scrape(&maddr).unwrap_or_default(), name).unwrap_or(-1.0);
    proxy.set_down(true);
    let down_at = Instant::now();
    let down_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let txid_at_down = metric("genesis_capture_txid");
    let (mut max_backlog, mut max_wal) = (0.0f64, 0u64);
    let wal = env.db().with_file_name("genesis.db-wal");
    while down_at.elapsed() < outage_for {
        max_backlog = max_backlog.max(metric("genesis_capture_upload_backlog_objects"));
        max_wal = max_wal.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let txid_at_up = metric("genesis_capture_txid");
    let at_up = scrape(&maddr).unwrap_or_default();
    let upload_errors = value(&at_up, "genesis_capture_upload_errors_total").unwrap_or(-1.0);
    eprintln!("store back after {:?}", down_at.elapsed());
    proxy.set_down(false);
    assert!(
        writer.wait().expect("writer").success(),
        "the writer failed"
    );
    // The spool drains once the store is back.
    let t0 = Instant::now();
    while metric("genesis_capture_upload_backlog_objects") != 0.0
        || metric("genesis_capture_txid") < txid_at_up
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the spool never drained: {}",
            scrape(&maddr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("spool drained {:?} after the store came back", t0.elapsed());
    std::thread::sleep(interval * 2);
    signal(&rep, "TERM");
    let status = rep.wait().expect("replicate");
    let log = rep
        .stderr
        .take()
        .map(|s| std::io::read_to_string(s).unwrap_or_default())
        .unwrap_or_default();
    assert!(status.success(), "replicate failed: {log}");

    // The premise: uploads failed while the store was down, and objects
    // waited in the spool.
    assert!(
        upload_errors > 0.0,
        "no upload failed during the outage: {at_up}\n{log}"
    );
    assert!(
        max_backlog >= 2.0,
        "nothing waited in the spool: {max_backlog}"
    );
    // The capture went on during the outage: its position advanced, and
    // the WAL was checkpointed (not held for the outage's length).
    assert!(
        txid_at_up > txid_at_down + 2.0,
        "the capture stood still during the outage (txid {txid_at_down} -> {txid_at_up})"
    );
    let frame = 4096 + 24;
    assert!(
        max_wal < 3 * 1000 * frame,
        "the WAL grew to {max_wal} bytes during the outage"
    );
    // The application is not held up as long as one interval, during the
    // outage or after it (its TRUNCATE checkpoints included: the capturer
    // stands aside for them, docs/decisions.md).
    let times = commit_times(&record);
    let up_epoch = down_epoch + outage_for.as_secs_f64();
    let (worst, worst_at) = times
        .windows(2)
        .filter(|p| p[1] >= down_epoch && p[0] <= up_epoch)
        .map(|p| (p[1] - p[0], p[0]))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    let since_down = worst_at - down_epoch;
    let during = times
        .iter()
        .filter(|t| **t >= down_epoch && **t <= up_epoch)
        .count();
    assert!(
        worst >= interval.as_secs_f64() || during >= 50,
        "the writer made only {during} commits while the store was down"
    );
    eprintln!("longest wait between two commits around the outage: {worst:.3} s");
    assert!(
        worst < interval.as_secs_f64(),
        "the application waited {worst:.3} s between two commits, from {since_down:.3} s after the \
         store went down (for {outage_for:?}); replicate's log:\n{log}"
    );
    assert_eq!(spool_files(&env), 0, "the spool was not emptied");

    // Every commit is in the bucket, in one generation, txids contiguous,
    // and the states rebuild to what the writer recorded.
    let rec = read_record(&record);
    let repo = env.open_repo();
    let catalog = repo.catalog().expect("catalog");
    assert!(catalog.bad.is_empty(), "{:?}", catalog.bad);
    assert_eq!(
        catalog.generations.len(),
        1,
        "continuity was lost; replicate's log:\n{log}"
    );
    let points = catalog.restore_points();
    for p in points.windows(2) {
        assert_eq!(
            p[1].txid,
            p[0].txid + 1,
            "a txid is missing after {}",
            p[0].txid
        );
    }
    let step = (points.len() / 12).max(1);
    let mut offset = None;
    for p in points.iter().step_by(step).chain(points.last()) {
        let out = env.path().join("r.db");
        rebuild_at(&env.repo(), p.txid, &out);
        let (n, hash) = kv_hash(&out);
        assert_eq!(
            rec.get(&n),
            Some(&hash),
            "txid {}: a state never committed",
            p.txid
        );
        let o = n as i64 - p.txid as i64;
        assert_eq!(
            *offset.get_or_insert(o),
            o,
            "txid {}: commits skipped",
            p.txid
        );
        std::fs::remove_file(&out).ok();
    }
    let last = points.last().expect("a point");
    assert_eq!(
        last.txid as i64 + offset.unwrap_or(0),
        (commits + 1) as i64,
        "the writer's last commit is not in the bucket"
    );
}
