//! Replay of archived events onto a database: each event row is inserted into
//! `events` and its effect (see [`crate::effects`]) applied, in sequence order, in
//! one transaction that is rolled back entirely on any error.
//!
//! Speed comes from folding instead of executing: the effects are parsed in
//! parallel (rayon), partitioned by the row they touch and folded in memory into
//! the final value of each row, so each projection row is written once, while the
//! event rows are inserted on the calling thread. The result equals applying the
//! events one by one (row for row, rowids included): new rows are inserted in the
//! order their first event created them; an update of a row the fold did not
//! create must find it in the database; an insert of a key that exists fails.
//! When several events cannot apply, the one with the lowest sequence number is
//! reported.
//!
//! Events handled by an [`EventExtension`] split the stream: the fold is flushed,
//! the extension's statements run, and folding resumes, so plugins see exactly
//! the state a one-by-one replay would show them.
//!
//! [`ReplayOptions::staging`] is for a database that is thrown away if anything
//! fails (a restore's staged copy): the replay then runs under an exclusive
//! lock with no rollback journal and no syncs, puts the journal mode back (WAL
//! stays WAL) and fsyncs the file once; the event rows go in by multi-row
//! prepared statements. Every byte of the file is written by SQLite through
//! its public API (docs/decisions.md: no page writer, no test controls).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::effects::{self, OpAt, OpKind, RowOp, SqlVal, Table};
use crate::error::{Error, Result};
use crate::event::{max_sequence, Event};
use crate::stmt::StaticStmt;

/// A statement an extension asks to run: SQL with positional parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlStatement {
    pub sql: String,
    /// JSON values bound in order: null, bool (as 0/1), number, string; arrays
    /// and objects are bound as their JSON text.
    #[serde(default)]
    pub params: Vec<serde_json::Value>,
}

/// A handler for event types DOMAIN.md does not define (a plugin).
pub trait EventExtension {
    /// Whether this extension handles the event type.
    fn handles(&self, event_type: &str) -> bool;
    /// The statements that apply the event, run in the replay's transaction.
    ///
    /// # Errors
    /// A message; the replay fails naming the event.
    fn effects(&mut self, ev: &Event) -> Result<Vec<SqlStatement>, String>;
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Require the first event to follow the database's highest sequence number
    /// and each next one to follow it by one (default true).
    pub check_sequence: bool,
    /// The database's highest sequence number when the caller has just read
    /// it (default `None`: the replay reads it, a full scan of `events`,
    /// which has no index on `sequence_number`).
    pub after_sequence: Option<i64>,
    /// Insert the event rows into `events` (default true; validation's rebuild
    /// only needs the projections).
    pub record_events: bool,
    /// Enlarge the page cache for the replay and restore it afterwards (default true).
    pub tune_pragmas: bool,
    /// The database is a disposable private copy (a restore's staged file):
    /// replay it holding an exclusive lock, without a rollback journal
    /// (`journal_mode=OFF`) and without syncs, with event rows inserted by
    /// multi-row statements; then put its journal mode back (a WAL database
    /// ends in WAL mode) and fsync the file once (default false). On error the
    /// database is left in an undefined state: the caller must discard it.
    /// When the journal mode cannot be switched off (another connection uses
    /// the database), the replay runs in the ordinary, safe mode.
    pub staging: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            check_sequence: true,
            after_sequence: None,
            record_events: true,
            tune_pragmas: true,
            staging: false,
        }
    }
}

/// An event type with no effect and no extension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownType {
    pub count: u64,
    pub first_sequence: i64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Events replayed (rows inserted), unknown types included.
    pub applied: u64,
    /// Unknown event types: count and first sequence number.
    pub unknown: BTreeMap<String, UnknownType>,
    /// Events whose effect an extension supplied.
    pub handled_by_extension: u64,
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    pub last_created_at: Option<String>,
}

/// Replays events onto the database; see the module documentation.
///
/// # Errors
/// [`Error::Event`] naming the event whose sequence number does not follow, whose
/// row cannot be inserted or whose effect cannot apply; [`Error::Sqlite`]. The
/// database is unchanged on error.
pub fn replay(
    conn: &mut Connection,
    events: &[Event],
    opts: &ReplayOptions,
) -> Result<ReplayReport> {
    replay_with_extensions(conn, events, opts, &mut [])
}

/// Like [`replay`], with extensions for event types DOMAIN.md does not define.
/// Extensions are asked only about such types; the first that handles a type wins.
///
/// # Errors
/// As [`replay`], plus [`Error::Extension`] when an extension fails or its
/// statements do.
pub fn replay_with_extensions(
    conn: &mut Connection,
    events: &[Event],
    opts: &ReplayOptions,
    extensions: &mut [Box<dyn EventExtension + Send>],
) -> Result<ReplayReport> {
    let _span = tracing::info_span!("replay", events = events.len()).entered();
    if opts.check_sequence {
        let base = match opts.after_sequence {
            Some(base) => base,
            None => max_sequence(conn)?,
        };
        check_sequence(base, events)?;
    }
    let mut report = ReplayReport {
        applied: events.len() as u64,
        first_sequence: events.first().map(|e| e.sequence_number),
        last_sequence: events.last().map(|e| e.sequence_number),
        last_created_at: events.last().map(|e| e.created_at.clone()),
        ..ReplayReport::default()
    };
    // Which extension handles each unknown type, decided once per type.
    let mut handler: HashMap<&str, Option<usize>> = HashMap::new();
    let mut split: Vec<(usize, usize)> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        if effects::is_known(&ev.event_type) {
            continue;
        }
        let h = *handler
            .entry(ev.event_type.as_str())
            .or_insert_with(|| extensions.iter().position(|x| x.handles(&ev.event_type)));
        match h {
            Some(x) => {
                report.handled_by_extension += 1;
                split.push((i, x));
            }
            None => {
                let u = report
                    .unknown
                    .entry(ev.event_type.clone())
                    .or_insert(UnknownType {
                        count: 0,
                        first_sequence: ev.sequence_number,
                    });
                u.count += 1;
            }
        }
    }

    let staging = if opts.staging && !events.is_empty() {
        Staging::enter(conn)?
    } else {
        None
    };
    let saved_cache = if opts.tune_pragmas || staging.is_some() {
        let old: i64 = conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .map_err(Error::sqlite("reading cache_size"))?;
        conn.pragma_update(None, "cache_size", -1_048_576i64)
            .map_err(Error::sqlite("setting cache_size"))?;
        Some(old)
    } else {
        None
    };
    conn.set_prepared_statement_cache_capacity(256);
    // Multi-row inserts pay for a statement journal unless there is no journal.
    let rows = match (opts.record_events, staging.is_some()) {
        (false, _) => EventRows::Skip,
        (true, false) => EventRows::OneByOne,
        (true, true) => EventRows::Batched,
    };
    let result = (|| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::sqlite("beginning the replay transaction"))?;
        let mut start = 0;
        for &(i, x) in &split {
            replay_segment(&tx, &events[start..i], rows)?;
            let ev = &events[i];
            if opts.record_events {
                insert_event_rows(&tx, std::slice::from_ref(ev))?;
            }
            run_extension(&tx, ev, extensions[x].as_mut())?;
            start = i + 1;
        }
        replay_segment(&tx, &events[start..], rows)?;
        let t = std::time::Instant::now();
        tx.commit()
            .map_err(Error::sqlite("committing the replay"))?;
        tracing::debug!("commit done in {:?}", t.elapsed());
        Ok(())
    })();
    if let Some(old) = saved_cache {
        // Restoring the cache size cannot change the data; a failure is only logged.
        if let Err(e) = conn.pragma_update(None, "cache_size", old) {
            tracing::warn!("cannot restore cache_size: {e}");
        }
    }
    if let Some(st) = staging {
        match &result {
            Ok(()) => {
                let t = std::time::Instant::now();
                st.leave(conn)?;
                tracing::debug!(
                    "staging left (journal mode back, fsync) in {:?}",
                    t.elapsed()
                );
            }
            Err(e) => {
                tracing::warn!("staging replay failed ({e}); the database was written without a journal and must be discarded");
                if let Err(e) = st.leave(conn) {
                    tracing::warn!("after the failed staging replay: {e}");
                }
            }
        }
    }
    result.map(|()| report)
}

/// The settings a staging replay changes, to put back afterwards.
struct Staging {
    journal_mode: String,
    locking_mode: String,
    synchronous: i64,
    temp_store: i64,
    /// The database file, to fsync (none in memory).
    path: Option<std::path::PathBuf>,
}

impl Staging {
    /// Takes the exclusive lock and switches the journal and syncs off; `None`
    /// (settings unchanged) when SQLite keeps the journal.
    fn enter(conn: &Connection) -> Result<Option<Staging>> {
        let text = |sql: &str| -> Result<String> {
            conn.query_row(sql, [], |r| r.get::<_, String>(0))
                .map_err(Error::sqlite(format!("staging replay: {sql}")))
        };
        let int = |sql: &str| -> Result<i64> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(Error::sqlite(format!("staging replay: {sql}")))
        };
        let st = Staging {
            journal_mode: text("PRAGMA journal_mode")?,
            locking_mode: text("PRAGMA locking_mode")?,
            synchronous: int("PRAGMA synchronous")?,
            temp_store: int("PRAGMA temp_store")?,
            path: conn
                .path()
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
        };
        text("PRAGMA locking_mode=EXCLUSIVE")?;
        let mode = text("PRAGMA journal_mode=OFF")?;
        if !mode.eq_ignore_ascii_case("off") {
            tracing::warn!(
                "staging replay: the journal mode stays {mode} (is another connection using the database?); replaying in the safe mode"
            );
            text(&format!("PRAGMA locking_mode={}", st.locking_mode))?;
            return Ok(None);
        }
        conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY;")
            .map_err(Error::sqlite(
                "staging replay: setting synchronous and temp_store",
            ))?;
        Ok(Some(st))
    }

    /// Puts the journal mode, locking mode and sync level back and fsyncs the file.
    fn leave(self, conn: &Connection) -> Result<()> {
        let fail =
            |action: String| move |source: rusqlite::Error| Error::Staging { action, source };
        let lock = format!("PRAGMA locking_mode={}", self.locking_mode);
        conn.query_row(&lock, [], |_| Ok(()))
            .map_err(fail(lock.clone()))?;
        let journal = format!("PRAGMA journal_mode={}", self.journal_mode);
        let mode: String = conn
            .query_row(&journal, [], |r| r.get(0))
            .map_err(fail(journal.clone()))?;
        if !mode.eq_ignore_ascii_case(&self.journal_mode) {
            return Err(Error::JournalMode {
                statement: journal,
                mode,
            });
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous={}; PRAGMA temp_store={};",
            self.synchronous, self.temp_store
        ))
        .map_err(fail("restoring synchronous and temp_store".into()))?;
        if let Some(path) = self.path {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|source| Error::Io {
                    action: "fsync the replayed database",
                    path,
                    source,
                })?;
        }
        Ok(())
    }
}

/// How the event rows are inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventRows {
    Skip,
    OneByOne,
    /// Multi-row statements: only without a journal (no statement journal).
    Batched,
}

fn check_sequence(base: i64, events: &[Event]) -> Result<()> {
    for (expected, ev) in (base + 1..).zip(events) {
        if ev.sequence_number != expected {
            let reason = if ev.sequence_number <= base {
                format!("sequence number {} does not follow the database's highest sequence number {base}", ev.sequence_number)
            } else if ev.sequence_number < expected {
                format!(
                    "duplicate or out-of-order sequence number {} (expected {expected})",
                    ev.sequence_number
                )
            } else {
                format!(
                    "gap in sequence numbers: expected {expected}, found {}",
                    ev.sequence_number
                )
            };
            return Err(Error::event(ev, reason));
        }
    }
    Ok(())
}

fn run_extension(
    tx: &Transaction<'_>,
    ev: &Event,
    ext: &mut (dyn EventExtension + Send),
) -> Result<()> {
    let fail = |message: String| Error::Extension {
        sequence: ev.sequence_number,
        event_id: ev.event_id.clone(),
        event_type: ev.event_type.clone(),
        message,
    };
    let stmts = ext.effects(ev).map_err(fail)?;
    for (n, s) in stmts.iter().enumerate() {
        let params: Vec<rusqlite::types::Value> = s.params.iter().map(json_to_sql).collect();
        tx.execute(&s.sql, rusqlite::params_from_iter(params.iter()))
            .map_err(|e| fail(format!("statement {n} ({}): {e}", s.sql)))?;
    }
    Ok(())
}

fn json_to_sql(v: &serde_json::Value) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

const INSERT_EVENT: &str = "INSERT INTO events (event_id, event_type, aggregate_id, event_data, sequence_number, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

fn insert_event_rows(tx: &Transaction<'_>, events: &[Event]) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(INSERT_EVENT)
        .map_err(Error::sqlite("preparing the event insert"))?;
    for ev in events {
        stmt.execute(rusqlite::params![
            ev.event_id,
            ev.event_type,
            ev.aggregate_id,
            ev.event_data,
            ev.sequence_number,
            ev.created_at
        ])
        .map_err(|e| Error::event(ev, format!("cannot insert the event row: {e}")))?;
    }
    Ok(())
}

/// Event rows per multi-row INSERT (six parameters each).
const ROWS_PER_INSERT: usize = 64;

fn multi_row_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (event_id, event_type, aggregate_id, event_data, sequence_number, created_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
    sql
}

/// Inserts the event rows [`ROWS_PER_INSERT`] at a time, in order (the rowids
/// are those of one-by-one inserts). A failing statement may leave some of its
/// rows (there is no statement journal without a journal): the error names the
/// first event of the chunk whose row cannot be inserted.
fn insert_event_rows_batched(tx: &Transaction<'_>, events: &[Event]) -> Result<()> {
    let mut chunks = events.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let sql = multi_row_insert_sql(ROWS_PER_INSERT);
        let mut stmt =
            StaticStmt::prepare(tx, &sql).map_err(Error::sqlite("preparing the event insert"))?;
        for chunk in &mut chunks {
            let before = tx.last_insert_rowid();
            for (i, ev) in chunk.iter().enumerate() {
                let p = i * 6;
                stmt.bind_text(p + 1, &ev.event_id)
                    .and_then(|()| stmt.bind_text(p + 2, &ev.event_type))
                    .and_then(|()| stmt.bind_text(p + 3, &ev.aggregate_id))
                    .and_then(|()| stmt.bind_text(p + 4, &ev.event_data))
                    .and_then(|()| stmt.bind_int(p + 5, ev.sequence_number))
                    .and_then(|()| stmt.bind_text(p + 6, &ev.created_at))
                    .map_err(|e| Error::event(ev, format!("cannot bind the event row: {e}")))?;
            }
            if let Err(e) = stmt.execute() {
                return Err(chunk_error(tx, chunk, before, &e));
            }
        }
    }
    insert_event_rows(tx, chunks.remainder())
}

/// The error of a failed multi-row insert: names the first event of the chunk
/// whose event_id was already there before the chunk (rowid at most `before`)
/// or repeats one earlier in the chunk; else the chunk's first event.
fn chunk_error(tx: &Transaction<'_>, chunk: &[Event], before: i64, e: &rusqlite::Error) -> Error {
    let existing = |id: &str| -> Option<i64> {
        tx.prepare_cached("SELECT rowid FROM events WHERE event_id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)))
            .ok()
    };
    for (i, ev) in chunk.iter().enumerate() {
        let repeated = chunk[..i].iter().any(|x| x.event_id == ev.event_id);
        if repeated || existing(&ev.event_id).is_some_and(|r| r <= before) {
            return Error::event(ev, format!("cannot insert the event row: {e}"));
        }
    }
    Error::event(
        &chunk[0],
        format!(
            "cannot insert the event rows from this one to #{}: {e}",
            chunk[chunk.len() - 1].sequence_number
        ),
    )
}

/// A small fast hasher for the fold's maps (keys are short ids).
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(crate) type FxSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

fn partition_of(table: Table, key: &str, parts: usize) -> usize {
    let mut h = FxHasher::default();
    h.write_u8(table as u8);
    h.write(key.as_bytes());
    // Mix the high bits down so that the modulus sees them.
    let x = h.finish();
    ((x ^ (x >> 29)) % parts as u64) as usize
}

/// How the fold knows a row.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Inserted by the event at this index.
    Created(usize),
    /// Updated first by the event at this index: it must exist in the database.
    MustExist(usize),
    /// Upserted: whether it exists does not matter.
    Upsert,
}

#[derive(Debug)]
struct RowState<'a> {
    table: Table,
    key: Cow<'a, str>,
    first: usize,
    mode: Mode,
    /// An insert after a [`Mode::MustExist`] update: an error either way.
    late_insert: Option<usize>,
    cols: Vec<Option<SqlVal<'a>>>,
}

impl<'a> RowState<'a> {
    fn assign(&mut self, set: &[(u8, SqlVal<'a>)]) {
        for (c, v) in set {
            self.cols[usize::from(*c)] = Some(v.clone());
        }
    }
    fn mask(&self) -> u32 {
        self.cols
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .fold(0, |m, (i, _)| m | (1 << i))
    }
}

/// The folded effects of a segment.
struct Folded<'a> {
    rows: Vec<RowState<'a>>,
    appends: Vec<(usize, RowOp<'a>)>,
    /// Errors found while folding: (event index, error).
    errors: Vec<(usize, Error)>,
}

/// Events per parsing task.
const PARSE_CHUNK: usize = 16_384;

/// One parsing task's output: the assignments of its operations (which the
/// operations index into), its operations per partition, and its errors.
struct Parsed<'a> {
    vals: Vec<(u8, SqlVal<'a>)>,
    per_part: Vec<Vec<(usize, OpAt<'a>)>>,
    errors: Vec<(usize, Error)>,
}

/// A parsing task's operations of one partition, with the task's buffer of
/// assignments.
type PartOps<'p, 'a> = (&'p [(u8, SqlVal<'a>)], &'p [(usize, OpAt<'a>)]);

fn fold(events: &[Event]) -> Folded<'_> {
    let parts = rayon::current_num_threads().clamp(1, 8);
    // Parse in parallel; each task sorts its operations by partition. The
    // assignments stay in the task's buffer, where the folds read them: no
    // operation costs an allocation.
    let parsed: Vec<Parsed<'_>> = events
        .par_chunks(PARSE_CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            // About one operation per event, spread evenly.
            let room = chunk.len() / parts + chunk.len() / 8;
            let mut out = Parsed {
                vals: Vec::with_capacity(chunk.len() * 6),
                per_part: (0..parts).map(|_| Vec::with_capacity(room)).collect(),
                errors: Vec::new(),
            };
            for (i, ev) in (c * PARSE_CHUNK..).zip(chunk) {
                match effects::effect_into(ev, &mut out.vals) {
                    Err(e) => out.errors.push((i, e)),
                    Ok(None) => {}
                    Ok(Some((first, second))) => {
                        for op in std::iter::once(first).chain(second) {
                            let p = if op.kind == OpKind::Append {
                                0
                            } else {
                                partition_of(op.table, &op.key, parts)
                            };
                            out.per_part[p].push((i, op));
                        }
                    }
                }
            }
            out
        })
        .collect();
    let mut by_part: Vec<Vec<PartOps<'_, '_>>> = (0..parts).map(|_| Vec::new()).collect();
    for chunk in &parsed {
        for (p, ops) in chunk.per_part.iter().enumerate() {
            by_part[p].push((&chunk.vals, ops));
        }
    }
    let folded: Vec<Folded<'_>> = by_part
        .into_par_iter()
        .map(|chunks| {
            fold_part(
                events,
                chunks
                    .into_iter()
                    .flat_map(|(vals, ops)| ops.iter().map(move |(i, op)| (*i, op, vals))),
            )
        })
        .collect();
    let mut out = Folded {
        rows: Vec::new(),
        appends: Vec::new(),
        errors: Vec::new(),
    };
    for chunk in parsed {
        out.errors.extend(chunk.errors);
    }
    for f in folded {
        out.rows.extend(f.rows);
        out.appends.extend(f.appends);
        out.errors.extend(f.errors);
    }
    out.rows.sort_unstable_by_key(|r| r.first);
    out
}

/// Folds one partition's operations, given in event order, each with the
/// buffer holding its assignments.
fn fold_part<'a, 'p>(
    events: &'a [Event],
    ops: impl Iterator<Item = (usize, &'p OpAt<'a>, &'p [(u8, SqlVal<'a>)])>,
) -> Folded<'a>
where
    'a: 'p,
{
    let mut map: FxMap<(Table, Cow<'a, str>), RowState<'a>> = FxMap::default();
    let mut appends = Vec::new();
    let mut errors = Vec::new();
    for (i, op, vals) in ops {
        let set = &vals[op.vals.clone()];
        if op.kind == OpKind::Append {
            appends.push((
                i,
                RowOp {
                    table: op.table,
                    kind: op.kind,
                    key: op.key.clone(),
                    set: set.to_vec(),
                },
            ));
            continue;
        }
        let table = op.table;
        let entry = map.entry((table, op.key.clone()));
        let st = match entry {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mode = match op.kind {
                    OpKind::Insert => Mode::Created(i),
                    OpKind::Update => Mode::MustExist(i),
                    _ => Mode::Upsert,
                };
                let st = v.insert(RowState {
                    table,
                    key: op.key.clone(),
                    first: i,
                    mode,
                    late_insert: None,
                    cols: vec![None; table.columns().len()],
                });
                st.assign(set);
                continue;
            }
        };
        match (op.kind, st.mode) {
            (OpKind::Insert, Mode::Created(j)) => errors.push((
                i,
                Error::event(
                    &events[i],
                    format!(
                        "{} {} already exists (created by event #{})",
                        table.row_noun(),
                        op.key,
                        events[j].sequence_number
                    ),
                ),
            )),
            (OpKind::Insert, Mode::MustExist(_)) => {
                st.late_insert.get_or_insert(i);
            }
            _ => st.assign(set),
        }
    }
    Folded {
        rows: map.into_values().collect(),
        appends,
        errors,
    }
}

fn replay_segment(tx: &Transaction<'_>, events: &[Event], rows: EventRows) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (rows_result, folded) = fold_beside(events, || match rows {
        EventRows::Skip => Ok(()),
        EventRows::OneByOne => insert_event_rows(tx, events),
        EventRows::Batched => insert_event_rows_batched(tx, events),
    })?;
    write_folded(tx, events, rows_result, folded)
}

/// Folds `events` on another thread while `work` runs on this one.
fn fold_beside<'e, R>(events: &'e [Event], work: impl FnOnce() -> R) -> Result<(R, Folded<'e>)> {
    let t0 = std::time::Instant::now();
    let (done, folded) = std::thread::scope(|s| {
        let folder = s.spawn(|| {
            let f = fold(events);
            tracing::debug!("fold done in {:?}", t0.elapsed());
            f
        });
        let done = work();
        tracing::debug!("event rows done in {:?}", t0.elapsed());
        (done, folder.join())
    });
    match folded {
        Ok(f) => Ok((done, f)),
        Err(payload) => Err(Error::internal("the replay fold", payload.as_ref())),
    }
}

/// Writes the folded projection rows and appends; the error of the event
/// with the lowest index among `rows_result`'s and the fold's, if any.
fn write_folded(
    tx: &Transaction<'_>,
    events: &[Event],
    rows_result: Result<()>,
    folded: Folded<'_>,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut first_error: Option<(usize, Error)> = None;
    let mut note = |i: usize, e: Error| {
        if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
            first_error = Some((i, e));
        }
    };
    if let Err(e) = rows_result {
        let i = e
            .sequence()
            .and_then(|s| events.iter().position(|ev| ev.sequence_number == s))
            .unwrap_or(0);
        note(i, e);
    }
    for (i, e) in folded.errors {
        note(i, e);
    }
    write_rows(tx, events, &folded.rows, &mut note)?;
    tracing::debug!(
        "{} projection rows done in {:?}",
        folded.rows.len(),
        t0.elapsed()
    );
    let mut appends = folded.appends;
    write_appends(tx, events, &mut appends, &mut note)?;
    match first_error {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A prepared statement per (table, operation, columns), bound without copies.
type StmtCache<'r> = FxMap<(Table, OpKind, u32), StaticStmt<'r>>;

fn cached_stmt<'s, 'r>(
    cache: &'s mut StmtCache<'r>,
    tx: &'r Transaction<'_>,
    table: Table,
    kind: OpKind,
    mask: u32,
) -> Result<&'s mut StaticStmt<'r>> {
    match cache.entry((table, kind, mask)) {
        std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) => {
            let sql = effects::sql::statement(table, kind, mask);
            let stmt =
                StaticStmt::prepare(tx, &sql).map_err(Error::sqlite(format!("preparing {sql}")))?;
            Ok(v.insert(stmt))
        }
    }
}

fn write_rows<'r>(
    tx: &'r Transaction<'_>,
    events: &[Event],
    rows: &'r [RowState<'_>],
    note: &mut impl FnMut(usize, Error),
) -> Result<()> {
    const NULL: SqlVal<'static> = SqlVal::Null;
    let mut cache = StmtCache::default();
    for row in rows {
        let (kind, mask) = match row.mode {
            Mode::Created(_) => (OpKind::Insert, (1u32 << row.cols.len()) - 1),
            Mode::MustExist(_) => (OpKind::Update, row.mask()),
            Mode::Upsert => (OpKind::Upsert, row.mask()),
        };
        let stmt = cached_stmt(&mut cache, tx, row.table, kind, mask)?;
        let bind = |stmt: &mut StaticStmt<'r>| -> rusqlite::Result<()> {
            stmt.bind_text(1, row.key.as_ref())?;
            if kind == OpKind::Insert {
                for (p, v) in (2..).zip(&row.cols) {
                    stmt.bind_val(p, v.as_ref().unwrap_or(&NULL))?;
                }
            } else {
                for (p, v) in (2..).zip(row.cols.iter().flatten()) {
                    stmt.bind_val(p, v)?;
                }
            }
            Ok(())
        };
        let outcome = bind(stmt).and_then(|()| {
            if kind == OpKind::Update && mask == 0 {
                stmt.exists().map(u64::from)
            } else {
                stmt.execute_changes()
            }
        });
        let noun = row.table.row_noun();
        match (outcome, row.mode) {
            (Err(e), Mode::Created(i)) => {
                let exists = tx
                    .prepare_cached(&effects::sql::statement(row.table, OpKind::Update, 0))
                    .and_then(|mut s| s.exists([&row.key]))
                    .unwrap_or(false);
                let reason = if exists {
                    format!("{noun} {} already exists", row.key)
                } else {
                    format!("cannot write {noun} {}: {e}", row.key)
                };
                note(i, Error::event(&events[i], reason));
            }
            (Err(e), _) => note(
                row.first,
                Error::event(
                    &events[row.first],
                    format!("cannot write {noun} {}: {e}", row.key),
                ),
            ),
            (Ok(0), Mode::MustExist(i)) => note(
                i,
                Error::event(&events[i], format!("no {noun} {} to update", row.key)),
            ),
            (Ok(_), Mode::MustExist(_)) => {
                if let Some(j) = row.late_insert {
                    note(
                        j,
                        Error::event(&events[j], format!("{noun} {} already exists", row.key)),
                    );
                }
            }
            (Ok(_), _) => {}
        }
    }
    Ok(())
}

/// Appends (tier history) in event order.
fn write_appends<'r>(
    tx: &'r Transaction<'_>,
    events: &[Event],
    appends: &'r mut [(usize, RowOp<'_>)],
    note: &mut impl FnMut(usize, Error),
) -> Result<()> {
    for (_, op) in appends.iter_mut() {
        op.set.sort_by_key(|(c, _)| *c);
    }
    let appends: &'r [(usize, RowOp<'_>)] = appends;
    let mut cache = StmtCache::default();
    for (i, op) in appends {
        let mask = op.set.iter().fold(0u32, |m, (c, _)| m | (1 << c));
        let stmt = cached_stmt(&mut cache, tx, op.table, OpKind::Append, mask)?;
        let bound = (1..)
            .zip(&op.set)
            .try_for_each(|(p, (_, v))| stmt.bind_val(p, v));
        if let Err(e) = bound.and_then(|()| stmt.execute()) {
            note(
                *i,
                Error::event(
                    &events[*i],
                    format!("cannot write {}: {e}", op.table.row_noun()),
                ),
            );
        }
    }
    Ok(())
}

/// Every table's rows in rowid order, as text (tests compare databases).
#[cfg(test)]
pub(crate) fn dump(c: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "events",
        "positions",
        "orders",
        "balances",
        "system_state",
        "tier_history",
        "risk_limits",
        "checkpoints",
        "sqlite_sequence",
    ] {
        let mut stmt = c
            .prepare(&format!("SELECT rowid, * FROM {t} ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(|v| v.join("|"))
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        out.push(format!("{t}: {}", rows.join("\n")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, ty: &str, id: &str, data: &str) -> Event {
        Event {
            event_id: format!("evt-{seq}"),
            event_type: ty.into(),
            aggregate_id: id.into(),
            event_data: data.into(),
            sequence_number: seq,
            created_at: format!("2025-01-15T14:30:{:02}.000000", seq % 60),
        }
    }

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&c).unwrap();
        c
    }

    #[test]
    fn applies_in_order_and_counts_unknown_types() {
        let mut c = db();
        let evs = vec![
            ev(
                1,
                "ORDER_CREATED",
                "o1",
                r#"{"client_order_id":"c1","quantity":1.0,"price":10}"#,
            ),
            ev(2, "MARGIN_CALL", "x", "whatever"),
            ev(
                3,
                "ORDER_PARTIALLY_FILLED",
                "o1",
                r#"{"filled_quantity":0.5,"executed_price":10}"#,
            ),
            ev(4, "MARGIN_CALL", "x", "{}"),
            ev(5, "ORDER_FILLED", "o1", r#"{"filled_quantity":1.0}"#),
        ];
        let r = replay(&mut c, &evs, &ReplayOptions::default()).unwrap();
        assert_eq!(r.applied, 5);
        assert_eq!(
            r.unknown["MARGIN_CALL"],
            UnknownType {
                count: 2,
                first_sequence: 2
            }
        );
        let (status, f, p, at): (String, f64, f64, String) = c
            .query_row(
                "SELECT status, filled_quantity, executed_price, filled_at FROM orders",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            (status.as_str(), f, p, at.as_str()),
            ("filled", 1.0, 10.0, "2025-01-15T14:30:05.000000")
        );
        let n: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn errors_name_the_first_failing_event_and_leave_the_db_unchanged() {
        let mut c = db();
        replay(
            &mut c,
            &[ev(1, "ORDER_CREATED", "o1", "{}")],
            &ReplayOptions::default(),
        )
        .unwrap();
        let evs = vec![
            ev(
                2,
                "BALANCE_UPDATED",
                "b",
                r#"{"asset":"USDT","free_balance":1}"#,
            ),
            ev(3, "ORDER_FILLED", "o9", "{}"),
            ev(4, "ORDER_CREATED", "o1", "{}"),
        ];
        let err = replay(&mut c, &evs, &ReplayOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("event #3 (evt-3, ORDER_FILLED)") && msg.contains("no order o9"),
            "{msg}"
        );
        let err = replay(
            &mut c,
            &[evs[0].clone(), evs[2].clone().with_seq(3)],
            &ReplayOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("order o1 already exists"), "{err}");
        let n: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        let b: i64 = c
            .query_row("SELECT count(*) FROM balances", [], |r| r.get(0))
            .unwrap();
        assert_eq!((n, b), (1, 0));
        let err = replay(
            &mut c,
            &[ev(5, "CHECKPOINT", "k", "{}")],
            &ReplayOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("does not follow") || err.to_string().contains("gap"),
            "{err}"
        );
    }

    #[test]
    fn a_known_base_sequence_is_used_instead_of_reading_it() {
        let mut c = db();
        let evs = [
            ev(1, "CHECKPOINT", "k1", "{}"),
            ev(2, "CHECKPOINT", "k2", "{}"),
        ];
        replay(&mut c, &evs[..1], &ReplayOptions::default()).unwrap();
        // The caller says the database ends at 0: event #2 leaves a gap.
        let wrong = ReplayOptions {
            after_sequence: Some(0),
            ..ReplayOptions::default()
        };
        let err = replay(&mut c, &evs[1..], &wrong).unwrap_err().to_string();
        assert!(
            err.contains("gap in sequence numbers: expected 1, found 2"),
            "{err}"
        );
        let right = ReplayOptions {
            after_sequence: Some(1),
            ..ReplayOptions::default()
        };
        assert_eq!(replay(&mut c, &evs[1..], &right).unwrap().applied, 1);
    }

    fn file_db(dir: &std::path::Path, name: &str) -> (Connection, std::path::PathBuf) {
        let path = dir.join(name);
        let c = Connection::open(&path).unwrap();
        let _: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        crate::schema::ensure_schema(&c).unwrap();
        (c, path)
    }

    fn staging() -> ReplayOptions {
        ReplayOptions {
            staging: true,
            ..ReplayOptions::default()
        }
    }

    #[test]
    fn staging_mode_gives_the_same_rows_and_ends_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let events = crate::simulate::random_events(11, 3001);
        let (mut safe, _) = file_db(dir.path(), "safe.db");
        let (mut fast, path) = file_db(dir.path(), "staged.db");
        // Two replays: the second onto a database that already has events.
        for part in [&events[..1000], &events[1000..]] {
            replay(&mut safe, part, &ReplayOptions::default()).unwrap();
            let r = replay(&mut fast, part, &staging()).unwrap();
            assert_eq!(r.applied, part.len() as u64);
            let mode: String = fast
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let lock: String = fast
                .query_row("PRAGMA locking_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), lock.as_str()), ("wal", "normal"));
        }
        assert_eq!(dump(&safe), dump(&fast));
        for c in [&safe, &fast] {
            let check: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok");
        }
        drop(fast);
        let header = std::fs::read(&path).unwrap();
        assert_eq!(header[18..20], [2, 2], "a WAL database stays in WAL mode");
    }

    #[test]
    fn staging_mode_errors_name_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = file_db(dir.path(), "staged.db");
        let events = crate::simulate::random_events(5, 400);
        replay(&mut c, &events[..100], &staging()).unwrap();
        // A duplicate inside a multi-row statement (of the rows after 100).
        let mut dup = events[100..].to_vec();
        dup[150].event_id = dup[140].event_id.clone();
        let err = replay(&mut c, &dup, &staging()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("event #{} (", dup[150].sequence_number))
                && err.contains("UNIQUE"),
            "{err}"
        );
        // A duplicate of an event already in the database.
        let (mut c, _) = file_db(dir.path(), "staged2.db");
        replay(&mut c, &events[..100], &staging()).unwrap();
        let mut dup = events[100..].to_vec();
        dup[70].event_id = events[3].event_id.clone();
        let err = replay(&mut c, &dup, &staging()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("event #{} (", dup[70].sequence_number))
                && err.contains("UNIQUE"),
            "{err}"
        );
    }

    impl Event {
        fn with_seq(mut self, s: i64) -> Event {
            self.sequence_number = s;
            self
        }
    }

    struct Margin;
    impl EventExtension for Margin {
        fn handles(&self, t: &str) -> bool {
            t == "MARGIN_CALL"
        }
        fn effects(&mut self, ev: &Event) -> Result<Vec<SqlStatement>, String> {
            Ok(vec![SqlStatement {
                sql: "UPDATE orders SET status = 'cancelled' WHERE order_id = ?1".into(),
                params: vec![serde_json::Value::String(ev.aggregate_id.clone())],
            }])
        }
    }

    #[test]
    fn extensions_run_in_order_with_the_other_events() {
        let mut c = db();
        let evs = vec![
            ev(1, "ORDER_CREATED", "o1", "{}"),
            ev(2, "MARGIN_CALL", "o1", "{}"),
            ev(
                3,
                "ORDER_PARTIALLY_FILLED",
                "o1",
                r#"{"filled_quantity":0.5}"#,
            ),
            ev(4, "ORDER_CREATED", "o2", "{}"),
            ev(5, "MARGIN_CALL", "o2", "{}"),
        ];
        let mut exts: Vec<Box<dyn EventExtension + Send>> = vec![Box::new(Margin)];
        let r = replay_with_extensions(&mut c, &evs, &ReplayOptions::default(), &mut exts).unwrap();
        assert_eq!(r.handled_by_extension, 2);
        assert!(r.unknown.is_empty());
        let s: Vec<String> = c
            .prepare("SELECT status FROM orders ORDER BY order_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(s, vec!["partially_filled", "cancelled"]);
    }
}
