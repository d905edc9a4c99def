//! Generating a large trading database for the RTO benchmark, through
//! SQLite only: the simulator's valid event stream (DOMAIN.md's schema and
//! effects) replayed in big transactions by prepared statements, with the
//! settings a bulk load wants (no rollback journal while loading, no syncs,
//! a large page cache). The database ends in WAL mode, ready to be captured.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

use genesis_core::progress::Progress;
use genesis_core::{Error, Result};
use genesis_trading::{replay, schema, simulate, ReplayOptions};

/// Most events per transaction while loading, and the first batch (which
/// measures the bytes per event the next batches are sized by).
const BATCH: usize = 50_000;
const FIRST_BATCH: usize = 5_000;

/// What [`generate`] built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub events: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Bytes per second of database written.
    pub bytes_per_second: f64,
}

fn sql<'a>(what: &str, path: &'a Path) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::sqlite(what, path, e)
}

/// Opens a writer on `path` in WAL mode with the application's settings for
/// a benchmark workload: synchronous off and no automatic checkpoints (the
/// capturer checkpoints), the schema created when missing.
///
/// # Errors
/// SQLite failures naming the path.
pub fn open_writer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql("open the benchmark database", path))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sql("switch the benchmark database to WAL", path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Failed(format!(
            "{}: SQLite kept journal mode {mode} instead of WAL",
            path.display()
        )));
    }
    conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA wal_autocheckpoint=0;")
        .map_err(sql("set the writer's pragmas", path))?;
    schema::ensure_schema(&conn).map_err(|e| Error::Failed(e.to_string()))?;
    Ok(conn)
}

/// The database's size in bytes as SQLite sees it (pages × page size).
///
/// # Errors
/// SQLite failures.
pub fn db_bytes(conn: &Connection, path: &Path) -> Result<u64> {
    conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
    .map_err(sql("read the database size", path))
}

/// Fills a new database at `path` with the event stream of `seed` until it
/// holds at least `target_bytes`, then leaves it in WAL mode with an empty WAL.
///
/// # Errors
/// SQLite failures naming the path; an existing file at `path`.
pub fn generate(
    path: &Path,
    target_bytes: u64,
    seed: u64,
    progress: &dyn Progress,
) -> Result<Generated> {
    if path.exists() {
        return Err(Error::Usage(format!(
            "{} exists: the benchmark generates a new database, give it an empty --dir",
            path.display()
        )));
    }
    let started = Instant::now();
    let mut conn = open_writer(path)?;
    // A bulk load: 1 GiB of page cache (the replay's own setting, so that
    // the cache is not cut back, and emptied, between batches), temp data
    // in memory; each batch is replayed in staging mode (exclusive,
    // journal off, one sync).
    conn.execute_batch("PRAGMA cache_size=-1048576; PRAGMA temp_store=MEMORY;")
        .map_err(sql("set the generator's pragmas", path))?;
    let opts = ReplayOptions {
        check_sequence: false,
        staging: true,
        ..ReplayOptions::default()
    };
    progress.start("generate", Some(target_bytes));
    let mut stream = simulate::synthetic_events(seed);
    let mut events = 0u64;
    let mut bytes = 0;
    let mut next = FIRST_BATCH;
    while bytes < target_bytes {
        let batch: Vec<_> = stream.by_ref().take(next).collect();
        replay(&mut conn, &batch, &opts)
            .map_err(|e| Error::Failed(format!("{}: generating: {e}", path.display())))?;
        events += batch.len() as u64;
        let now = db_bytes(&conn, path)?;
        progress.advance(
            now.saturating_sub(bytes)
                .min(target_bytes.saturating_sub(bytes)),
        );
        bytes = now;
        // Size the next batch to what is left, at the bytes per event so far.
        let per_event = bytes as f64 / events.max(1) as f64;
        let left = target_bytes.saturating_sub(bytes) as f64 / per_event.max(1.0);
        next = (left.ceil() as usize).clamp(100, BATCH);
    }
    progress.finish("generate");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sql("checkpoint the generated database", path))?;
    drop(conn);
    let seconds = started.elapsed().as_secs_f64();
    Ok(Generated {
        events,
        bytes,
        seconds,
        bytes_per_second: bytes as f64 / seconds.max(1e-9),
    })
}
