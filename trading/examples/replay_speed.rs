//! Replay throughput: archived events in memory -> committed tables.
//!
//! `cargo run --release -p genesis-trading --example replay_speed` (the same as
//! `cargo bench --bench replay` without the binary crate) generates 1,000,000 valid events with the
//! simulator's model (`GENESIS_BENCH_EVENTS` overrides the count), replays them
//! into a fresh file database in WAL mode, and prints events/s.

use std::time::Instant;

use genesis_trading::{replay, schema, simulate, ReplayOptions};
use rusqlite::Connection;

fn main() {
    let n: usize = std::env::var("GENESIS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let events = simulate::random_events(1, n);
    eprintln!("generated {n} events in {:.2?}", t.elapsed());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut best = f64::MAX;
    for round in 0..3 {
        let path = dir.path().join(format!("replay-{round}.db"));
        let mut conn = Connection::open(&path).expect("open db");
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("wal");
        schema::ensure_schema(&conn).expect("schema");
        let t = Instant::now();
        let report = replay(&mut conn, &events, &ReplayOptions::default()).expect("replay");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.applied, n as u64);
        best = best.min(secs);
        println!(
            "replay round {round}: {n} events in {secs:.3} s = {:.0} events/s",
            n as f64 / secs
        );
    }
    println!("best: {:.0} events/s", n as f64 / best);
}
