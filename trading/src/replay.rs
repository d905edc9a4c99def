//! Replay of archived events onto a database: each event row is inserted into
//! `events` and its effect (see [`crate::effects`]) applied, in sequence order, in
//! one transaction that is rolled back entirely on any error.
//!
//! Speed comes from folding instead of executing: the effects are parsed in
//! parallel (rayon), partitioned by the row they touch and folded in memory into
//! the final value of each row, so each projection row is written once, while the
//! event rows are inserted on the calling thread. On two CPUs or fewer the fold
//! runs on its one thread, unpartitioned: the other CPU is SQLite's. The result equals applying the
//! events one by one (row for row, rowids included): new rows are inserted in the
//! order their first event created them; an update of a row the fold did not
//! create must find it in the database; an insert of a key that exists fails.
//! When several events cannot apply, the one with the lowest sequence number is
//! reported.
//!
//! The events arrive in chunks ([`replay_stream`]: from a decoder running
//! ahead; [`replay`]: a slice cut into chunks): each chunk goes to the fold's
//! thread and its event rows are inserted at once, so that the parsing and
//! folding (and the caller's decoding) run beside SQLite's inserts instead of
//! before them.
//!
//! Events handled by an [`EventExtension`] split the stream: the fold is flushed,
//! the extension's statements run, and folding resumes, so plugins see exactly
//! the state a one-by-one replay would show them.
//!
//! [`ReplayOptions::staging`] is for a database that is thrown away if anything
//! fails (a restore's staged copy): the replay then runs under an exclusive
//! lock with no rollback journal and no syncs, puts the journal mode back (WAL
//! stays WAL) and fsyncs the file once; the event rows, and the projection
//! rows the replay creates, go in by multi-row prepared statements. Every
//! byte of the file is written by SQLite through its public API
//! (docs/decisions.md: no page writer, no test controls).

mod chunks;
mod fold;
mod rows;
mod segment;
mod write;

use std::collections::BTreeMap;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{max_sequence, Event};

pub(crate) use fold::{FxMap, FxSet};
use rows::{insert_event_rows, EventRows};

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
    // Checked before anything is written, so that the database is unchanged
    // on a sequence error even in the staging mode.
    if opts.check_sequence {
        let base = match opts.after_sequence {
            Some(base) => base,
            None => max_sequence(conn)?,
        };
        check_sequence(base, events)?;
    }
    let chunks = events.chunks(segment::CHUNK).map(Ok);
    replay_chunks(conn, chunks, None, opts, extensions)
}

/// Like [`replay_with_extensions`], for events that arrive a chunk at a time
/// (a decoder running ahead of the replay): each chunk's event rows are
/// inserted and its effects folded as soon as it arrives. The chunks, in
/// sequence order, must live until the replay returns (the fold refers to
/// them); an empty chunk is skipped.
///
/// # Errors
/// As [`replay_with_extensions`] (a sequence number that does not follow is
/// found when its chunk arrives), plus [`Error::EventSource`] with the
/// message of a chunk that could not be read. In the staging mode the
/// database must be discarded after any error.
pub fn replay_stream<'e>(
    conn: &mut Connection,
    chunks: impl Iterator<Item = std::result::Result<&'e [Event], String>>,
    opts: &ReplayOptions,
    extensions: &mut [Box<dyn EventExtension + Send>],
) -> Result<ReplayReport> {
    let _span = tracing::info_span!("replay_stream").entered();
    let base = if opts.check_sequence {
        Some(match opts.after_sequence {
            Some(base) => base,
            None => max_sequence(conn)?,
        })
    } else {
        None
    };
    replay_chunks(conn, chunks, base, opts, extensions)
}

/// The replay of chunks; `base`: check that sequence numbers follow it.
fn replay_chunks<'e>(
    conn: &mut Connection,
    chunks: impl Iterator<Item = std::result::Result<&'e [Event], String>>,
    base: Option<i64>,
    opts: &ReplayOptions,
    extensions: &mut [Box<dyn EventExtension + Send>],
) -> Result<ReplayReport> {
    let mut chunks = chunks
        .filter(|c| c.as_ref().map_or(true, |c| !c.is_empty()))
        .peekable();
    let nothing = match chunks.peek() {
        None => true,
        Some(Ok(_)) => false,
        Some(Err(m)) => return Err(Error::EventSource(m.clone())),
    };
    let staging = if opts.staging && !nothing {
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
    let mut progress = segment::Progress::new(base);
    let no_journal = staging.is_some();
    let result = (|| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::sqlite("beginning the replay transaction"))?;
        let mut pending = None;
        loop {
            let split = segment::replay_segment(
                &tx,
                &mut chunks,
                &mut pending,
                &mut progress,
                extensions,
                rows,
                no_journal,
            )?;
            let Some((ev, x)) = split else { break };
            if opts.record_events {
                insert_event_rows(&tx, std::slice::from_ref(ev))?;
            }
            run_extension(&tx, ev, extensions[x].as_mut())?;
        }
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
    result.map(|()| progress.report)
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

    /// Order creations o1..=n, the i-th with client id c{client(i)}.
    fn creations(from: i64, n: i64, client: impl Fn(i64) -> i64) -> Vec<Event> {
        (from..from + n)
            .map(|i| {
                ev(
                    i,
                    "ORDER_CREATED",
                    &format!("o{i}"),
                    &format!(
                        r#"{{"client_order_id":"c{}","quantity":1.0,"price":10}}"#,
                        client(i)
                    ),
                )
            })
            .collect()
    }

    /// The error of each mode's replay of `events` after `first`.
    fn errors_in_both_modes(first: &[Event], events: &[Event]) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        for opts in [ReplayOptions::default(), staging()] {
            let (mut c, _) = file_db(dir.path(), &format!("{}.db", opts.staging));
            replay(&mut c, first, &opts).unwrap();
            out.push(replay(&mut c, events, &opts).unwrap_err().to_string());
        }
        (out.remove(0), out.remove(0))
    }

    /// Created projection rows go in 32 at a time without a journal; a
    /// failing statement's rows are written again one by one, so the error
    /// is the one the row-by-row write gives.
    #[test]
    fn a_failing_multi_row_projection_insert_names_the_same_event() {
        // A client id repeated inside a batch (event 50 repeats event 40's).
        let events = creations(1, 100, |i| if i == 50 { 40 } else { i });
        let (safe, staged) = errors_in_both_modes(&[], &events);
        assert!(
            safe.contains("event #50 (") && safe.contains("client_order_id"),
            "{safe}"
        );
        assert_eq!(safe, staged);
        // An order that exists before the replay, in the middle of a batch.
        let first = creations(1, 10, |i| i);
        let mut events = creations(11, 90, |i| i);
        events[40] = creations(51, 1, |_| 1000)[0].clone();
        events[40].aggregate_id = "o7".into();
        let (safe, staged) = errors_in_both_modes(&first, &events);
        assert!(
            safe.contains("event #51 (") && safe.contains("order o7 already exists"),
            "{safe}"
        );
        assert_eq!(safe, staged);
    }

    /// The same replay taken in chunks of any size gives the same rows.
    #[test]
    fn a_stream_in_uneven_chunks_equals_the_replay_of_the_slice() {
        let dir = tempfile::tempdir().unwrap();
        let events = crate::simulate::random_events(17, 5000);
        let (mut whole, _) = file_db(dir.path(), "whole.db");
        replay(&mut whole, &events, &staging()).unwrap();
        for (k, sizes) in [[1usize, 700, 33], [4096, 1, 16_384], [64, 65, 63]]
            .iter()
            .enumerate()
        {
            let mut chunks = Vec::new();
            let mut at = 0;
            for (i, &size) in sizes.iter().cycle().enumerate() {
                if at >= events.len() {
                    break;
                }
                let end = (at + size).min(events.len());
                chunks.push(&events[at..end]);
                // An empty chunk now and then is skipped.
                if i % 5 == 0 {
                    chunks.push(&events[end..end]);
                }
                at = end;
            }
            let (mut c, _) = file_db(dir.path(), &format!("stream-{k}.db"));
            let r = replay_stream(&mut c, chunks.into_iter().map(Ok), &staging(), &mut []).unwrap();
            assert_eq!(r.applied, 5000);
            assert_eq!(r.last_sequence, Some(5000));
            assert_eq!(dump(&whole), dump(&c), "chunk sizes {sizes:?}");
            let check: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok");
        }
    }

    #[test]
    fn a_stream_fails_on_a_chunk_that_cannot_be_read_or_does_not_follow() {
        let dir = tempfile::tempdir().unwrap();
        let events = crate::simulate::random_events(3, 300);
        let (mut c, _) = file_db(dir.path(), "a.db");
        let chunks = vec![Ok(&events[..100]), Err("object 2 is damaged".to_string())];
        let err = replay_stream(
            &mut c,
            chunks.into_iter(),
            &ReplayOptions::default(),
            &mut [],
        )
        .unwrap_err();
        assert!(matches!(err, Error::EventSource(_)), "{err}");
        assert!(err.to_string().contains("object 2 is damaged"), "{err}");
        let n: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "the safe mode rolls the whole replay back");
        let chunks = vec![Ok(&events[..100]), Ok(&events[101..])];
        let err = replay_stream(
            &mut c,
            chunks.into_iter(),
            &ReplayOptions::default(),
            &mut [],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("gap in sequence numbers: expected 101, found 102"),
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
