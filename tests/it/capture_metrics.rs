//! `backup replicate --metrics-addr` serves the capturer's Prometheus
//! metrics, and they follow what the capturer does.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::{wait_for_capture_lock, Env};
use crate::kv_oracle::Logged;

pub(crate) fn scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

pub(crate) fn value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn replicate_serves_prometheus_metrics_that_follow_the_capture() {
    let env = Env::new();
    let app = rusqlite::Connection::open(env.db()).expect("open");
    app.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); \
         INSERT INTO t(v) VALUES (randomblob(100));",
    )
    .expect("setup");
    // A free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let rep = Logged::spawn(
        &env,
        &[
            "backup",
            "replicate",
            "--interval",
            "100ms",
            "--metrics-addr",
            &addr,
        ],
    );
    wait_for_capture_lock(&env);
    // Its opening snapshot (txid 1) first, then 20 commits: txids 2..=21.
    let t0 = Instant::now();
    while !value(
        &scrape(&addr).unwrap_or_default(),
        "genesis_capture_bytes_shipped_total",
    )
    .is_some_and(|b| b > 0.0)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no snapshot shipped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..20 {
        app.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .expect("commit");
    }
    let t0 = Instant::now();
    let body = loop {
        let body = scrape(&addr).unwrap_or_default();
        if value(&body, "genesis_capture_txid").is_some_and(|t| t >= 21.0) {
            break body;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the metrics never showed txid 21: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    rep.signal("TERM");
    let (st, _, log) = rep.finish();
    assert!(st.success(), "replicate exited {st:?}: {log}");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("# TYPE genesis_capture_steps_total counter"));
    assert_eq!(value(&body, "genesis_capture_generations_total"), Some(1.0));
    assert_eq!(
        value(&body, "genesis_capture_consecutive_failures"),
        Some(0.0)
    );
    assert_eq!(
        value(&body, "genesis_capture_check_failures_total"),
        Some(0.0)
    );
    assert!(value(&body, "genesis_capture_bytes_shipped_total").is_some_and(|b| b > 0.0));
    assert!(value(&body, "genesis_capture_wal_bytes").is_some_and(|b| b > 0.0));
    assert!(value(&body, "genesis_capture_lag_seconds").is_some_and(|l| l < 30.0));
}

#[test]
fn a_metrics_address_that_cannot_be_bound_is_a_usage_error() {
    let env = Env::new();
    let app = rusqlite::Connection::open(env.db()).expect("open");
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
        .expect("setup");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let o = env.run(&[
        "backup",
        "replicate",
        "--for",
        "1s",
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--metrics-addr"), "{err}");
}
