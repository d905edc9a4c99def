//! Helpers shared by the benchmark mains (each bench includes this module).

#![allow(dead_code)]

pub mod restore_extra;

use std::fs;
use std::path::Path;

use genesis_trading::ReplayOptions;
use rusqlite::Connection;

/// The binary's allocator, so that the benches measure what it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The binary's allocator setting for its batch commands
/// (`genesis_recovery::keep_freed_memory`): freed memory is kept for reuse.
/// `GENESIS_BENCH_PURGE=1` keeps mimalloc's default instead, to compare.
pub fn keep_freed_memory() {
    if std::env::var("GENESIS_BENCH_PURGE").as_deref() == Ok("1") {
        return;
    }
    genesis_recovery::keep_freed_memory();
}

/// `GENESIS_BENCH_LOG=debug` (any tracing filter) prints the library's
/// timings to stderr, with the time since the start of each line's span.
pub fn log_from_env() {
    if let Ok(filter) = std::env::var("GENESIS_BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .try_init();
    }
}

/// A numeric environment knob with its default.
pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A file's length, 0 when missing.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The writer knows its events follow each other: no `max(sequence_number)`
/// scan of the events table (it has no index on it) before every transaction.
pub fn fast() -> ReplayOptions {
    ReplayOptions {
        check_sequence: false,
        ..ReplayOptions::default()
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`, which must complete.
pub fn checkpoint_truncate(conn: &Connection) {
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert!(
        busy == 0 && log <= 0 && done <= 0,
        "checkpoint(TRUNCATE) did not complete: busy {busy}, log {log}, checkpointed {done}"
    );
}

/// The `p` quantile (nearest rank) of `v`; NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}
