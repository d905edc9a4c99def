//! Validation against SQLite's own `quick_check`, in the same run, as the
//! history grows.
//!
//! `cargo bench --bench validate` builds one trading database by replaying
//! the simulator's valid event stream, with a CHECKPOINT event every 500
//! events (as `simulate` writes by default), and measures it at
//! `GENESIS_BENCH_EVENTS_LIST` events (default `100000,300000,1000000,3000000`;
//! 3M events are about 0.9 GiB). At each size:
//! - `PRAGMA quick_check` on the file (warm page cache), the baseline;
//! - `genesis_stages::validate_database` with the defaults a restore uses
//!   (quick_check and foreign_key_check beside the trading rules; rule 10 on
//!   the newest checkpoint), and its time per event;
//! - the peak RSS the validation added (`/proc/self/clear_refs` then `VmHWM`).
//!
//! Targets (issue #13): validate <= 3x quick_check; time per event constant
//! within 1.3x from 100k to 3M events; peak RSS flat in the number of events.
//! The older checkpoints carry a placeholder `blake3:` hash (hashing every one
//! while building is the quadratic cost this bench must not pay); the newest at
//! each size is the real hash, so the default validation is clean.

mod common;

use std::path::Path;
use std::time::Instant;

use genesis_trading::{replay, schema, simulate, state_hash, Event, ReplayOptions};
use rusqlite::Connection;

const CHECKPOINT_EVERY: i64 = 500;

fn main() {
    common::keep_freed_memory();
    common::log_from_env();
    let sizes: Vec<usize> = std::env::var("GENESIS_BENCH_EVENTS_LIST")
        .unwrap_or_else(|_| "100000,300000,1000000,3000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("GENESIS_BENCH_EVENTS_LIST: numbers")
        })
        .collect();
    let max = sizes.iter().copied().max().unwrap_or(0);
    let t = Instant::now();
    let source = simulate::random_events(2, max);
    eprintln!("generated {max} events in {:.1?}", t.elapsed());
    let dir = tempfile::tempdir().expect("temp dir");
    // GENESIS_BENCH_KEEP=PATH builds the database there and keeps it (to
    // profile `genesis-recovery --db PATH validate` afterwards).
    let path = std::env::var("GENESIS_BENCH_KEEP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("validate.db"));
    let mut conn = Connection::open(&path).expect("open");
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    schema::ensure_schema(&conn).expect("schema");
    let mut b = Builder { seq: 0, used: 0 };
    println!("== validate vs PRAGMA quick_check on the same file, 2 CPUs");
    println!(
        "{:>9} {:>9} {:>12} {:>11} {:>7} {:>12} {:>13}",
        "events", "db MiB", "quick_check", "validate", "ratio", "us/event", "peak RSS MiB"
    );
    let mut per_event = Vec::new();
    for &n in &sizes {
        let t = Instant::now();
        b.grow(&mut conn, &source, n);
        common::checkpoint_truncate(&conn);
        eprintln!("built {} events in {:.1?}", b.seq, t.elapsed());
        let mib = common::file_len(&path) as f64 / (1 << 20) as f64;
        let qc = quick_check(&path);
        let rss0 = reset_peak_rss();
        let t = Instant::now();
        let report =
            genesis_stages::validate_database(&path, &Default::default()).expect("validate");
        let v = t.elapsed().as_secs_f64();
        let peak = peak_rss().saturating_sub(rss0) as f64 / 1024.0;
        assert!(report.is_consistent, "{:#?}", report.errors);
        let us = v * 1e6 / b.seq as f64;
        per_event.push(us);
        println!(
            "{:>9} {mib:>9.0} {qc:>10.3} s {v:>9.3} s {:>6.2}x {us:>12.2} {peak:>13.0}",
            b.seq,
            v / qc
        );
    }
    if let (Some(lo), Some(hi)) = (
        per_event.iter().copied().reduce(f64::min),
        per_event.iter().copied().reduce(f64::max),
    ) {
        println!(
            "time per event: max/min {:.2}x over the sizes (target <= 1.3x)",
            hi / lo
        );
    }
}

/// Appends the source events, renumbered, with a CHECKPOINT every
/// [`CHECKPOINT_EVERY`] sequence numbers.
struct Builder {
    /// The database's highest sequence number.
    seq: i64,
    /// Source events used so far.
    used: usize,
}

impl Builder {
    /// Grows the database to `n` source events; the checkpoints among the
    /// last 600 (one or two) carry the real state hash.
    fn grow(&mut self, conn: &mut Connection, source: &[Event], n: usize) {
        let real_at = n.saturating_sub(600).max(self.used);
        let opts = ReplayOptions {
            staging: true,
            after_sequence: Some(self.seq),
            ..ReplayOptions::default()
        };
        let mut batch = Vec::new();
        let flush = |conn: &mut Connection, batch: &mut Vec<Event>, seq: i64| {
            let opts = ReplayOptions {
                after_sequence: Some(seq - batch.len() as i64),
                ..opts.clone()
            };
            replay(conn, batch, &opts).expect("replay");
            batch.clear();
        };
        let mut real_done = false;
        while self.used < n {
            let ev = &source[self.used];
            if (self.seq + 1) % CHECKPOINT_EVERY == 0 {
                let hash = if self.used >= real_at {
                    flush(conn, &mut batch, self.seq);
                    real_done = true;
                    state_hash(conn).expect("state hash")
                } else {
                    format!("blake3:{}", "0".repeat(64))
                };
                self.seq += 1;
                batch.push(Event {
                    event_id: format!("ckpt-{:010}", self.seq),
                    event_type: "CHECKPOINT".into(),
                    aggregate_id: format!("ckpt-{:010}", self.seq),
                    event_data: serde_json::json!({ "state_hash": hash }).to_string(),
                    sequence_number: self.seq,
                    created_at: ev.created_at.clone(),
                });
            }
            self.seq += 1;
            let mut ev = ev.clone();
            ev.sequence_number = self.seq;
            batch.push(ev);
            self.used += 1;
            if batch.len() >= 100_000 {
                flush(conn, &mut batch, self.seq);
            }
        }
        flush(conn, &mut batch, self.seq);
        assert!(real_done, "no checkpoint near the end of {n} events");
    }
}

/// `PRAGMA quick_check` on a fresh connection, warm page cache: seconds.
fn quick_check(path: &Path) -> f64 {
    let c = Connection::open(path).expect("open");
    let run = || {
        let t = Instant::now();
        let r: String = c
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .expect("quick_check");
        assert_eq!(r, "ok");
        t.elapsed().as_secs_f64()
    };
    run();
    run()
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets the peak RSS (Linux: `5` to `/proc/self/clear_refs`); the RSS now, KiB.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:")
}

/// The peak RSS since the reset, KiB.
fn peak_rss() -> u64 {
    status_kib("VmHWM:")
}
