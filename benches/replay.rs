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
//! Each round also measures the whole path from the archive, as a restore
//! runs it: the events stored as zstd-compressed event objects are
//! decompressed and decoded, selected, then replayed.
//! `GENESIS_BENCH_LOG=debug` prints where the time goes.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use genesis_core::repo::formats::{self, EventRow};
use genesis_stages::event_replay::select_events;
use rayon::prelude::*;

use genesis_trading::{replay, schema, simulate, ReplayOptions};
use rusqlite::Connection;

fn main() {
    common::keep_freed_memory();
    common::log_from_env();
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
    let archive = archive_objects(&events);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut secs = Vec::new();
    let mut ratios = Vec::new();
    let mut from_archive = Vec::new();
    for round in 0..3 {
        let path = dir.path().join(format!("archive-{round}.db"));
        let (total, parts) = replay_from_archive(&path, &archive, &opts, n);
        std::fs::remove_file(&path).expect("remove db");
        from_archive.push(total);
        println!(
            "from the archive, round {round}: {n} events in {total:.3} s = {:.0} events/s ({parts})",
            n as f64 / total
        );
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
    from_archive.sort_by(f64::total_cmp);
    println!(
        "from the archive (decompress, decode, select, replay): median {:.0} events/s, best {:.0} events/s",
        n as f64 / from_archive[from_archive.len() / 2],
        n as f64 / from_archive[0]
    );
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

/// Events per archived object in the bench (capture writes one per step).
const EVENTS_PER_OBJECT: usize = 16_384;

/// The events as the archive stores them: encoded event objects, zstd
/// compressed, with their raw sizes.
fn archive_objects(events: &[genesis_trading::Event]) -> Vec<(Vec<u8>, u64)> {
    events
        .par_chunks(EVENTS_PER_OBJECT)
        .map(|chunk| {
            let rows: Vec<EventRow> = chunk
                .iter()
                .map(|ev| EventRow {
                    sequence_number: ev.sequence_number,
                    event_id: ev.event_id.clone().into_bytes(),
                    event_type: ev.event_type.clone().into_bytes(),
                    aggregate_id: ev.aggregate_id.clone().into_bytes(),
                    event_data: ev.event_data.clone().into_bytes(),
                    created_at: ev.created_at.clone().into_bytes(),
                })
                .collect();
            let raw = formats::encode_events(&rows);
            let compressed = formats::compress(&raw).expect("compress");
            (compressed, raw.len() as u64)
        })
        .collect()
}

/// What a restore's stages do with archived events, timed end to end:
/// decompress and decode the objects (wal-apply), select the events to replay
/// (event-replay), replay them onto a fresh database. Returns the seconds and
/// a breakdown.
fn replay_from_archive(
    path: &Path,
    archive: &[(Vec<u8>, u64)],
    opts: &ReplayOptions,
    n: usize,
) -> (f64, String) {
    let mut conn = fresh_db(path);
    let t = Instant::now();
    let objects: Vec<Arc<Vec<EventRow>>> = archive
        .par_iter()
        .map(|(compressed, raw_len)| {
            let raw = formats::decompress("bench", compressed, *raw_len)?;
            formats::decode_events("bench", &raw).map(Arc::new)
        })
        .collect::<genesis_core::Result<_>>()
        .expect("decode");
    let decoded = t.elapsed().as_secs_f64();
    let until = chrono::Utc::now();
    let events = select_events(objects, 0, until).expect("select");
    assert_eq!(events.len(), n);
    let selected = t.elapsed().as_secs_f64();
    replay(&mut conn, &events, opts).expect("replay");
    let total = t.elapsed().as_secs_f64();
    (
        total,
        format!(
            "decode {decoded:.3} s, select {:.3} s, replay {:.3} s",
            selected - decoded,
            total - selected
        ),
    )
}
