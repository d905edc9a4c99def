//! Replay throughput against SQLite's own floor, in the same run.
//!
//! `cargo bench --bench replay` generates 1,000,000 valid events with the
//! simulator's model (`GENESIS_BENCH_EVENTS` overrides the count) and, three
//! rounds, each into a fresh file database in WAL mode:
//! - **the floor**: SQLite inserting the same event rows in the same order
//!   through one prepared statement, its text bound without copies as the
//!   replay binds its own, with the staging pragmas a restore's
//!   replay uses (exclusive lock, `journal_mode=OFF`, `synchronous=OFF`,
//!   `temp_store=MEMORY`, the same page cache; back to WAL and one fsync),
//!   and no projections: what any replay through SQLite must at least pay;
//! - **from the archive**, as a restore runs it: the events stored as
//!   zstd-compressed event objects are decompressed, then decoded, selected
//!   and replayed (the fold, the projections and the event rows, all through
//!   SQLite), the decoding streamed beside the replay as event-replay runs it;
//! - **in memory**: the replay alone, of events already decoded.
//!
//! It prints events/s for each and the ratio of each speed to the floor's
//! (the target: from the archive >= 0.9x). The mode is the restore's:
//! `staging`; `GENESIS_BENCH_MODE=safe` replays in the ordinary
//! transactional mode instead (the floor keeps the staging pragmas).
//! `GENESIS_BENCH_LOG=debug` prints where the time goes.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use genesis_core::pipeline::EncodedEvents;
use genesis_core::repo::formats::{self, EventRow};
use genesis_stages::event_stream::{event_row, replay_archive};
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
    let mut rounds: Vec<(f64, f64, f64)> = Vec::new();
    let mut cpus: Vec<(f64, f64, f64)> = Vec::new();
    let rounds_n = common::env_num("GENESIS_BENCH_ROUNDS", 3.0).max(1.0) as usize;
    for round in 0..rounds_n {
        let (floor_s, floor_cpu) = floor(&dir.path().join(format!("floor-{round}.db")), &events);
        let path = dir.path().join(format!("archive-{round}.db"));
        let (archive_s, (archive_cpu, archive_others), parts) =
            replay_from_archive(&path, &archive, &opts, n);
        assert_wal(&path);
        remove_db(&path);
        let path = dir.path().join(format!("replay-{round}.db"));
        let mut conn = fresh_db(&path);
        let t = Instant::now();
        let (cpu, all) = (thread_cpu(), process_cpu());
        let report = replay(&mut conn, &events, &opts).expect("replay");
        let memory_s = t.elapsed().as_secs_f64();
        let memory_cpu = thread_cpu() - cpu;
        let memory_others = process_cpu() - all - memory_cpu;
        assert_eq!(report.applied, n as u64);
        drop(conn);
        assert_wal(&path);
        remove_db(&path);
        let rate = |s: f64| n as f64 / s;
        println!(
            "round {round}: floor {floor_s:.3} s = {:.0} events/s; from the archive {archive_s:.3} s = {:.0} events/s ({parts}), {:.2}x the floor; in memory {memory_s:.3} s = {:.0} events/s, {:.2}x the floor",
            rate(floor_s),
            rate(archive_s),
            floor_s / archive_s,
            rate(memory_s),
            floor_s / memory_s,
        );
        println!(
            "round {round}: CPU of SQLite's thread: floor {floor_cpu:.3} s; from the archive {archive_cpu:.3} s, {:.2}x the floor; in memory {memory_cpu:.3} s, {:.2}x the floor",
            floor_cpu / archive_cpu,
            floor_cpu / memory_cpu,
        );
        println!(
            "round {round}: CPU of the other threads (decoders, fold): from the archive {archive_others:.3} s, in memory {memory_others:.3} s",
        );
        rounds.push((floor_s, archive_s, memory_s));
        cpus.push((floor_cpu, archive_cpu, memory_cpu));
    }
    let median_of = |v: &[(f64, f64, f64)], f: &dyn Fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = v.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let median = |f: &dyn Fn(&(f64, f64, f64)) -> f64| median_of(&rounds, f);
    let (floor_m, archive_m, memory_m) = (median(&|r| r.0), median(&|r| r.1), median(&|r| r.2));
    let ratio_m = median(&|r| r.0 / r.1);
    let best =
        |f: &dyn Fn(&(f64, f64, f64)) -> f64| rounds.iter().map(f).fold(f64::INFINITY, f64::min);
    let (floor_b, archive_b, memory_b) = (best(&|r| r.0), best(&|r| r.1), best(&|r| r.2));
    println!(
        "best of {rounds_n} (the least disturbed by other load): floor {:.0} events/s; from the archive {:.0} events/s = {:.2}x the floor (target >= 0.9x); in memory {:.0} events/s = {:.2}x the floor",
        n as f64 / floor_b,
        n as f64 / archive_b,
        floor_b / archive_b,
        n as f64 / memory_b,
        floor_b / memory_b,
    );
    println!(
        "median of {rounds_n}: floor {:.0} events/s; from the archive {:.0} events/s = {ratio_m:.2}x the floor (target >= 0.9x); in memory {:.0} events/s = {:.2}x the floor ({mode})",
        n as f64 / floor_m,
        n as f64 / archive_m,
        n as f64 / memory_m,
        median(&|r| r.0 / r.2),
    );
    println!(
        "median of {rounds_n}, CPU of SQLite's thread: from the archive {:.2}x the floor's, in memory {:.2}x",
        median_of(&cpus, &|r| r.0 / r.1),
        median_of(&cpus, &|r| r.0 / r.2),
    );
}

fn assert_wal(path: &Path) {
    let mut header = [0u8; 100];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .expect("read the database header");
    assert_eq!(header[18..20], [2, 2], "the database must end in WAL mode");
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn fresh_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    schema::ensure_schema(&conn).expect("schema");
    conn
}

/// The floor: SQLite inserting only the event rows, in order, through one
/// prepared statement (text bound without copies), under the staging pragmas of a restore's replay
/// (`ReplayOptions::staging`), then back to WAL and one fsync. Returns seconds.
fn floor(path: &Path, events: &[genesis_trading::Event]) -> (f64, f64) {
    let mut conn = fresh_db(path);
    let t = Instant::now();
    let cpu = thread_cpu();
    let pragma = |conn: &Connection, sql: &str| {
        conn.query_row(sql, [], |_| Ok(())).expect(sql);
    };
    pragma(&conn, "PRAGMA locking_mode=EXCLUSIVE");
    pragma(&conn, "PRAGMA journal_mode=OFF");
    conn.execute_batch(
        "PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-1048576;",
    )
    .expect("staging pragmas");
    let tx = conn.transaction().expect("begin");
    insert_without_copies(&tx, events);
    tx.commit().expect("commit");
    pragma(&conn, "PRAGMA locking_mode=NORMAL");
    pragma(&conn, "PRAGMA journal_mode=WAL");
    conn.execute_batch("PRAGMA synchronous=FULL;")
        .expect("synchronous");
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("fsync");
    let s = t.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu;
    drop(conn);
    remove_db(path);
    (s, cpu)
}

/// The floor's inserts: one prepared single-row statement, its text bound
/// without a copy (`SQLITE_STATIC`), as the replay binds its own: rusqlite's
/// `execute` binds text with `SQLITE_TRANSIENT`, a malloc and a copy of each
/// of the five strings of every row, which would slow the floor and so
/// flatter the replay.
fn insert_without_copies(conn: &Connection, events: &[genesis_trading::Event]) {
    use rusqlite::ffi;
    use std::os::raw::c_int;
    const SQL: &str = "INSERT INTO events (event_id, event_type, aggregate_id, event_data, sequence_number, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    // SAFETY: the handle is `conn`'s, used on this thread while it is
    // borrowed; every text bound outlives the step that reads it (it is
    // rebound before the next step, and the statement is finalized here).
    unsafe {
        let db = conn.handle();
        let mut stmt = std::ptr::null_mut();
        let rc = ffi::sqlite3_prepare_v3(
            db,
            SQL.as_ptr().cast(),
            SQL.len() as c_int,
            ffi::SQLITE_PREPARE_PERSISTENT as std::os::raw::c_uint,
            &mut stmt,
            std::ptr::null_mut(),
        );
        assert_eq!(rc, ffi::SQLITE_OK, "prepare the floor's insert");
        let text = |i: c_int, t: &str| {
            let rc = ffi::sqlite3_bind_text64(
                stmt,
                i,
                t.as_ptr().cast(),
                t.len() as u64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            );
            assert_eq!(rc, ffi::SQLITE_OK, "bind");
        };
        for ev in events {
            text(1, &ev.event_id);
            text(2, &ev.event_type);
            text(3, &ev.aggregate_id);
            text(4, &ev.event_data);
            let rc = ffi::sqlite3_bind_int64(stmt, 5, ev.sequence_number);
            assert_eq!(rc, ffi::SQLITE_OK, "bind");
            text(6, &ev.created_at);
            let rc = ffi::sqlite3_step(stmt);
            assert_eq!(rc, ffi::SQLITE_DONE, "insert event #{}", ev.sequence_number);
            ffi::sqlite3_reset(stmt);
        }
        ffi::sqlite3_finalize(stmt);
    }
}

/// The calling thread's CPU time in seconds: SQLite's work runs on the
/// thread that calls it, so this is the critical path's own cost, which the
/// other load on a shared machine disturbs far less than the wall time.
fn thread_cpu() -> f64 {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The whole process's CPU time in seconds (every thread's, the decoders'
/// and the fold's included).
fn process_cpu() -> f64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Events per archived object in the bench (capture writes one per step).
const EVENTS_PER_OBJECT: usize = 16_384;

/// The events as the archive stores them: encoded event objects, zstd
/// compressed, with their raw sizes.
fn archive_objects(events: &[genesis_trading::Event]) -> Vec<(Vec<u8>, u64)> {
    events
        .par_chunks(EVENTS_PER_OBJECT)
        .map(|chunk| {
            let rows: Vec<EventRow> = chunk.iter().map(event_row).collect();
            let raw = formats::encode_events(&rows);
            let compressed = formats::compress(&raw).expect("compress");
            (compressed, raw.len() as u64)
        })
        .collect()
}

/// What a restore's stages do with archived events, timed end to end:
/// decompress the objects (the decompress stage), then decode them, select
/// the events to replay and replay them onto a fresh database, the decoding
/// and selecting streamed beside the replay
/// (`genesis_stages::event_stream::replay_archive`, what event-replay runs).
/// Returns the seconds and a breakdown.
fn replay_from_archive(
    path: &Path,
    archive: &[(Vec<u8>, u64)],
    opts: &ReplayOptions,
    n: usize,
) -> (f64, (f64, f64), String) {
    let mut conn = fresh_db(path);
    let t = Instant::now();
    let (cpu, all) = (thread_cpu(), process_cpu());
    let objects: Vec<EncodedEvents> = archive
        .par_iter()
        .enumerate()
        .map(|(i, (compressed, raw_len))| {
            let raw = formats::decompress("bench", compressed, *raw_len)?;
            Ok(EncodedEvents {
                id: format!("events-{i}"),
                frames: Arc::new(vec![raw]),
            })
        })
        .collect::<genesis_core::Result<_>>()
        .expect("decompress");
    let decompressed = t.elapsed().as_secs_f64();
    let until = chrono::Utc::now();
    let opts = ReplayOptions {
        after_sequence: Some(0),
        ..opts.clone()
    };
    let replayed = replay_archive(&mut conn, &objects, 0, until, &opts, &mut [])
        .expect("replay from the archive");
    assert_eq!(replayed.report.applied, n as u64);
    assert!(replayed.archive_gap.is_none());
    let total = t.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu;
    let others = process_cpu() - all - cpu;
    drop(replayed);
    (
        total,
        (cpu, others),
        format!(
            "decompress {decompressed:.3} s, then decode + select + replay streamed {:.3} s",
            total - decompressed
        ),
    )
}
