//! Replay throughput: archived events in memory -> committed tables.
//!
//! `cargo bench --bench replay` generates 1,000,000 valid events with the
//! simulator's model (`GENESIS_BENCH_EVENTS` overrides the count), replays them
//! into a fresh file database in WAL mode, three rounds, and prints events/s
//! per round, the median and the best. Each round first measures a baseline in
//! the same run: SQLite storing only the event rows the ordinary way (one
//! prepared INSERT per row in one transaction, no projections), and prints
//! the ratio of the two speeds. The mode is the restore's: `staging`
//! (the staged copy: no journal, no syncs, one fsync at the end, back to WAL);
//! `GENESIS_BENCH_MODE=safe` measures the ordinary transactional replay.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use genesis_trading::{replay, schema, simulate, ReplayOptions};
use rusqlite::Connection;

fn main() {
    let n: usize = std::env::var("GENESIS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let staging = match std::env::var("GENESIS_BENCH_MODE").as_deref() {
        Ok("safe") => false,
        Ok("staging") | Err(_) => true,
        Ok(other) => panic!("GENESIS_BENCH_MODE={other}: expected staging or safe"),
    };
    let mode = if staging {
        "staging (journal_mode=OFF, synchronous=OFF, exclusive lock; back to WAL + one fsync)"
    } else {
        "safe (WAL, one transaction)"
    };
    let opts = ReplayOptions {
        staging,
        ..ReplayOptions::default()
    };
    let t = Instant::now();
    let events = simulate::random_events(1, n);
    eprintln!("generated {n} events in {:.2?}", t.elapsed());
    println!("mode: {mode}");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut secs = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..3 {
        let base = baseline(&dir.path().join(format!("baseline-{round}.db")), &events);
        let path = dir.path().join(format!("replay-{round}.db"));
        let mut conn = fresh_db(&path);
        let t = Instant::now();
        let report = replay(&mut conn, &events, &opts).expect("replay");
        let s = t.elapsed().as_secs_f64();
        assert_eq!(report.applied, n as u64);
        drop(conn);
        let mut header = [0u8; 100];
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut header))
            .expect("read the database header");
        assert_eq!(header[18..20], [2, 2], "the database must end in WAL mode");
        std::fs::remove_file(&path).expect("remove db");
        secs.push(s);
        ratios.push(base / s);
        println!(
            "replay round {round}: {n} events in {s:.3} s = {:.0} events/s; baseline {base:.3} s = {:.0} rows/s; ratio {:.2}x",
            n as f64 / s,
            n as f64 / base,
            base / s
        );
    }
    secs.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} events/s, best: {:.0} events/s ({mode}); median speed vs the baseline: {:.2}x",
        n as f64 / secs[secs.len() / 2],
        n as f64 / secs[0],
        ratios[ratios.len() / 2]
    );
}

fn fresh_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    schema::ensure_schema(&conn).expect("schema");
    conn
}

/// The baseline: SQLite storing only the event rows, the ordinary way (one
/// prepared INSERT per row, one transaction, WAL, synchronous=FULL), with no
/// projections at all. Returns seconds.
fn baseline(path: &Path, events: &[genesis_trading::Event]) -> f64 {
    let mut conn = fresh_db(path);
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    let t = Instant::now();
    let tx = conn.transaction().expect("begin");
    {
        let mut stmt = tx
            .prepare("INSERT INTO events (event_id, event_type, aggregate_id, event_data, sequence_number, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .expect("prepare");
        for ev in events {
            stmt.execute(rusqlite::params![
                ev.event_id,
                ev.event_type,
                ev.aggregate_id,
                ev.event_data,
                ev.sequence_number,
                ev.created_at
            ])
            .expect("insert");
        }
    }
    tx.commit().expect("commit");
    let s = t.elapsed().as_secs_f64();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    s
}
