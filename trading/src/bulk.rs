//! Bulk insertion of event rows into a disposable staged database.
//!
//! Inserting a row into `events` costs SQLite a random insert into the
//! `event_id` index (UUIDs): on a large replay most of the time goes to cache
//! misses in that b-tree, not to the rows. A staged database
//! ([`crate::ReplayOptions::staging`]) is private and discarded on any error,
//! so there the rows and the index entries are written apart, each in the
//! order of its own b-tree:
//!
//! 1. the rows are appended to the table's b-tree in rowid order, with the
//!    rowids one-by-one inserts would have given them (the highest rowid + 1,
//!    + 2, ...);
//! 2. meanwhile another thread sorts the index entries `(event_id, rowid)`,
//!    which are then inserted in key order, so that consecutive inserts land
//!    on the same few pages.
//!
//! SQLite has no public interface for writing one b-tree of a table without
//! the others. This uses its *imposter tables* (`SQLITE_TESTCTRL_IMPOSTER`,
//! the mechanism behind SQLite's RBU extension and the shell's `.imposter`): a
//! table declared only in the connection's in-memory schema, over the root
//! page of an existing b-tree. Nothing is written to `sqlite_schema`; the
//! imposters go when the connection's schema is reloaded, which the guard
//! returned by [`Imposters::create`] does when dropped. An imposter is never
//! dropped with `DROP TABLE`, which would free the real b-tree.
//!
//! The b-trees end with the same content SQLite's own inserts give them
//! (tests compare every row with the ordinary replay's and run
//! `integrity_check`, which checks each index entry against its row).
//! Uniqueness of `event_id` is enforced as SQLite would: the imposter of the
//! index has `event_id` alone as its primary key, so an id already in the
//! database fails the insert, and duplicates within the replay are adjacent in
//! the sorted entries.
//!
//! The fast path is taken only when `events` is exactly DOMAIN.md's table:
//! those six columns with those types, a rowid table whose only index is the
//! one of its primary key, no trigger, no foreign key. Otherwise the caller
//! inserts the rows the ordinary way.

use std::collections::HashSet;
use std::ffi::{c_int, CStr};

use rayon::slice::ParallelSliceMut;
use rusqlite::{ffi, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::stmt::insert_chunks;

/// The names of the two imposter tables; a database that has a table of
/// either name does not take the fast path.
const TABLE_IMPOSTER: &str = "genesis_bulk_events";
const INDEX_IMPOSTER: &str = "genesis_bulk_events_key";

/// Rows per multi-row insert (seven parameters each).
const ROWS_PER_INSERT: usize = 64;
/// Index entries per multi-row insert (two parameters each).
const KEYS_PER_INSERT: usize = 128;

/// The b-trees of an `events` table that can take the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventTrees {
    table_root: c_int,
    index_root: c_int,
}

impl EventTrees {
    /// The root page numbers.
    pub(crate) fn roots(self) -> crate::pages::Roots {
        crate::pages::Roots {
            table: u32::try_from(self.table_root).unwrap_or(0),
            index: u32::try_from(self.index_root).unwrap_or(0),
        }
    }
}

/// DOMAIN.md's `events` columns: name, declared type, part of the primary key.
const EXPECTED_COLUMNS: [(&str, &str, i64); 6] = [
    ("event_id", "TEXT", 1),
    ("event_type", "TEXT", 0),
    ("aggregate_id", "TEXT", 0),
    ("event_data", "TEXT", 0),
    ("sequence_number", "INTEGER", 0),
    ("created_at", "TEXT", 0),
];

/// The `events` b-trees when the table is exactly DOMAIN.md's (see the module
/// documentation), else `None`.
///
/// # Errors
/// [`Error::Sqlite`] when the schema cannot be read.
pub(crate) fn event_trees(conn: &Connection) -> Result<Option<EventTrees>> {
    inspect(conn).map_err(Error::sqlite("reading the events table's schema"))
}

fn inspect(conn: &Connection) -> rusqlite::Result<Option<EventTrees>> {
    let table: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT type, wr, strict FROM pragma_table_list WHERE schema = 'main' AND name = 'events'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if table != Some(("table".to_string(), 0, 0)) {
        return Ok(None);
    }
    let mut stmt = conn
        .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo('events') ORDER BY cid")?;
    let columns = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let same_columns = columns.len() == EXPECTED_COLUMNS.len()
        && columns
            .iter()
            .zip(EXPECTED_COLUMNS)
            .all(|((name, ty, pk, hidden), (n, t, p))| {
                name == n && ty.eq_ignore_ascii_case(t) && *pk == p && *hidden == 0
            });
    if !same_columns {
        return Ok(None);
    }
    let mut stmt =
        conn.prepare("SELECT name, \"unique\", origin, partial FROM pragma_index_list('events')")?;
    let indexes = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let [(index, 1, origin, 0)] = indexes.as_slice() else {
        return Ok(None);
    };
    if origin != "pk" {
        return Ok(None);
    }
    let mut stmt = conn.prepare(
        "SELECT cid, name, \"desc\", coll, key FROM pragma_index_xinfo(?1) ORDER BY seqno",
    )?;
    let parts = stmt
        .query_map([index], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let key_is_event_id = matches!(
        parts.as_slice(),
        [(0, Some(name), 0, Some(coll), 1), (-1, None, 0, _, 0)]
            if name == "event_id" && coll.eq_ignore_ascii_case("BINARY")
    );
    let others: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'events' COLLATE NOCASE)
              + (SELECT count(*) FROM pragma_foreign_key_list('events'))
              + (SELECT count(*) FROM sqlite_schema WHERE name IN (?1, ?2) COLLATE NOCASE)",
        [TABLE_IMPOSTER, INDEX_IMPOSTER],
        |r| r.get(0),
    )?;
    if !key_is_event_id || others != 0 {
        return Ok(None);
    }
    let root = |ty: &str, name: &str| -> rusqlite::Result<Option<c_int>> {
        let page: i64 = conn.query_row(
            "SELECT rootpage FROM sqlite_schema WHERE type = ?1 AND name = ?2",
            [ty, name],
            |r| r.get(0),
        )?;
        Ok(c_int::try_from(page).ok().filter(|p| *p > 1))
    };
    Ok(match (root("table", "events")?, root("index", index)?) {
        (Some(table_root), Some(index_root)) => Some(EventTrees {
            table_root,
            index_root,
        }),
        _ => None,
    })
}

/// The imposter tables over the `events` b-trees, for as long as the guard
/// lives; dropping it reloads the connection's schema, which removes them.
pub(crate) struct Imposters<'c> {
    conn: &'c Connection,
}

impl<'c> Imposters<'c> {
    /// Declares the two imposters.
    ///
    /// # Errors
    /// [`Error::Staging`] when SQLite does not create them as imposters (a
    /// build of SQLite without test controls).
    pub(crate) fn create(conn: &'c Connection, trees: EventTrees) -> Result<Imposters<'c>> {
        let guard = Imposters { conn };
        imposter(
            conn,
            trees.table_root,
            &format!(
                "CREATE TABLE {TABLE_IMPOSTER}(event_id TEXT, event_type TEXT, aggregate_id TEXT, event_data TEXT, sequence_number INTEGER, created_at TEXT)"
            ),
        )?;
        imposter(
            conn,
            trees.index_root,
            &format!(
                "CREATE TABLE {INDEX_IMPOSTER}(k TEXT, r INTEGER, PRIMARY KEY (k)) WITHOUT ROWID"
            ),
        )?;
        let written: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN (?1, ?2)",
                [TABLE_IMPOSTER, INDEX_IMPOSTER],
                |r| r.get(0),
            )
            .map_err(Error::sqlite("checking the imposter tables"))?;
        if written != 0 {
            return Err(Error::Staging(
                "SQLite created real tables instead of imposters (built without test controls?); the staged database must be discarded".into(),
            ));
        }
        Ok(guard)
    }
}

impl Drop for Imposters<'_> {
    fn drop(&mut self) {
        set_imposter_mode(self.conn, 0, 1);
    }
}

const MAIN: &CStr = c"main";

fn set_imposter_mode(conn: &Connection, on: c_int, root: c_int) {
    // SAFETY: `conn` is open and used by this thread only; the arguments are
    // those SQLITE_TESTCTRL_IMPOSTER takes (db, schema name, on/off, root
    // page), and SQLite copies nothing it does not own. Off with a root page
    // reloads the schema, which drops every imposter.
    unsafe {
        ffi::sqlite3_test_control(
            ffi::SQLITE_TESTCTRL_IMPOSTER,
            conn.handle(),
            MAIN.as_ptr(),
            on,
            root,
        );
    }
}

fn imposter(conn: &Connection, root: c_int, sql: &str) -> Result<()> {
    set_imposter_mode(conn, 1, root);
    let created = conn.execute_batch(sql);
    set_imposter_mode(conn, 0, 0);
    created.map_err(Error::sqlite(format!("declaring an imposter table: {sql}")))
}

/// Inserts the rows of `events` (in sequence order, following the table's
/// highest rowid) and their index entries through the imposters.
///
/// # Errors
/// [`Error::Event`] naming the first event whose id is already in the
/// database or repeats an earlier one; [`Error::Sqlite`]. The database is then
/// in an undefined state and must be discarded (it always is: this runs only
/// on staged copies).
pub(crate) fn insert_events(conn: &Connection, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let base = max_rowid(conn)?;
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    if base.checked_add(n).is_none() {
        return Err(Error::Staging(format!(
            "events has rowid {base}: SQLite would choose random rowids for new rows, which a bulk insert cannot reproduce"
        )));
    }
    let (rows, keys) = std::thread::scope(|s| {
        let sorter = s.spawn(|| sorted_keys(events, base));
        (insert_rows(conn, events, base), sorter.join())
    });
    rows?;
    let Ok(keys) = keys else {
        return Err(Error::Staging(
            "internal error: sorting the event ids panicked".into(),
        ));
    };
    insert_sorted_keys(conn, events, base, &keys)
}

/// Inserts only the index entries of `events`, whose rows are already in the
/// table with rowids from `base + 1` (see [`crate::pages`]).
///
/// # Errors
/// As [`insert_events`].
pub(crate) fn insert_index(conn: &Connection, events: &[Event], base: i64) -> Result<()> {
    insert_sorted_keys(conn, events, base, &sorted_keys(events, base))
}

/// The highest rowid of `events`, 0 when empty.
///
/// # Errors
/// [`Error::Sqlite`].
pub(crate) fn max_rowid(conn: &Connection) -> Result<i64> {
    conn.query_row("SELECT coalesce(max(rowid), 0) FROM events", [], |r| {
        r.get(0)
    })
    .map_err(Error::sqlite("reading the highest rowid of events"))
}

/// The index entries `(event_id, rowid)` of `events`, rowids from `base + 1`,
/// in key order.
fn sorted_keys(events: &[Event], base: i64) -> Vec<(&str, i64)> {
    let mut keys: Vec<(&str, i64)> = events
        .iter()
        .zip(base + 1..)
        .map(|(ev, rowid)| (ev.event_id.as_str(), rowid))
        .collect();
    keys.par_sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    keys
}

fn insert_sorted_keys(
    conn: &Connection,
    events: &[Event],
    base: i64,
    keys: &[(&str, i64)],
) -> Result<()> {
    if keys.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(first_duplicate(conn, events, base));
    }
    insert_keys(conn, keys).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ffi::ErrorCode::ConstraintViolation => {
            first_duplicate(conn, events, base)
        }
        e => Error::Sqlite {
            action: "inserting the event_id index entries".into(),
            source: e,
        },
    })
}

/// Inserts the rows of `events` with rowids from `base + 1`, without their
/// index entries.
///
/// # Errors
/// [`Error::Event`] naming the events of the failing statement.
pub(crate) fn insert_rows(conn: &Connection, events: &[Event], base: i64) -> Result<()> {
    let sql = |rows: usize| {
        let values = vec!["(?,?,?,?,?,?,?)"; rows].join(",");
        format!("INSERT INTO {TABLE_IMPOSTER}(rowid, event_id, event_type, aggregate_id, event_data, sequence_number, created_at) VALUES {values}")
    };
    let mut rowid = base;
    insert_chunks(conn, events, ROWS_PER_INSERT, sql, |stmt, i, ev| {
        rowid += 1;
        let p = i * 7;
        stmt.bind_int(p + 1, rowid)?;
        stmt.bind_text(p + 2, &ev.event_id)?;
        stmt.bind_text(p + 3, &ev.event_type)?;
        stmt.bind_text(p + 4, &ev.aggregate_id)?;
        stmt.bind_text(p + 5, &ev.event_data)?;
        stmt.bind_int(p + 6, ev.sequence_number)?;
        stmt.bind_text(p + 7, &ev.created_at)
    })
    .map_err(|(i, e)| {
        let last = (i / ROWS_PER_INSERT + 1) * ROWS_PER_INSERT;
        Error::event(
            &events[i],
            format!(
                "cannot insert the event rows from this one to #{}: {e}",
                events[last.min(events.len()) - 1].sequence_number
            ),
        )
    })
}

fn insert_keys(conn: &Connection, keys: &[(&str, i64)]) -> rusqlite::Result<()> {
    let sql = |rows: usize| {
        let values = vec!["(?,?)"; rows].join(",");
        format!("INSERT INTO {INDEX_IMPOSTER}(k, r) VALUES {values}")
    };
    insert_chunks(conn, keys, KEYS_PER_INSERT, sql, |stmt, i, (k, r)| {
        stmt.bind_text(2 * i + 1, k)?;
        stmt.bind_int(2 * i + 2, *r)
    })
    .map_err(|(_, e)| e)
}

/// The error for the first event, in sequence order, whose id repeats an
/// earlier event's of the replay or one already in the database (rowid at
/// most `base`).
fn first_duplicate(conn: &Connection, events: &[Event], base: i64) -> Error {
    let reason = "cannot insert the event row: UNIQUE constraint failed: events.event_id";
    let existing = |id: &str| -> bool {
        conn.query_row(
            &format!("SELECT 1 FROM {INDEX_IMPOSTER} WHERE k = ?1 AND r <= ?2"),
            rusqlite::params![id, base],
            |_| Ok(()),
        )
        .is_ok()
    };
    let mut seen = HashSet::with_capacity(events.len());
    for ev in events {
        if !seen.insert(ev.event_id.as_str()) || existing(&ev.event_id) {
            return Error::event(ev, reason);
        }
    }
    Error::Staging(
        "a bulk insert of event rows failed on a uniqueness constraint no event explains".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{replay, ReplayOptions};

    fn staged(dir: &std::path::Path, extra: &str) -> Connection {
        let conn = Connection::open(dir.join("staged.db")).unwrap();
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        crate::schema::ensure_schema(&conn).unwrap();
        conn.execute_batch(extra).unwrap();
        conn
    }

    fn staging() -> ReplayOptions {
        ReplayOptions {
            staging: true,
            ..ReplayOptions::default()
        }
    }

    fn integrity(conn: &Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn only_domains_events_table_takes_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        let conn = staged(dir.path(), "");
        assert!(event_trees(&conn).unwrap().is_some());
        let cases = [
            "CREATE INDEX events_seq ON events(sequence_number)",
            "CREATE TRIGGER events_t AFTER INSERT ON events BEGIN SELECT 1; END",
            "CREATE TABLE genesis_bulk_events(x)",
            "ALTER TABLE events ADD COLUMN note TEXT",
        ];
        for extra in cases {
            let dir = tempfile::tempdir().unwrap();
            let conn = staged(dir.path(), extra);
            assert_eq!(event_trees(&conn).unwrap(), None, "{extra}");
        }
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, event_data TEXT NOT NULL, sequence_number INTEGER NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID",
        )
        .unwrap();
        assert_eq!(event_trees(&conn).unwrap(), None, "WITHOUT ROWID");
        let conn = Connection::open(dir.path().join("y.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (event_id TEXT PRIMARY KEY COLLATE NOCASE, event_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, event_data TEXT NOT NULL, sequence_number INTEGER NOT NULL, created_at TEXT NOT NULL)",
        )
        .unwrap();
        assert_eq!(event_trees(&conn).unwrap(), None, "NOCASE key");
    }

    #[test]
    fn bulk_rows_are_indexed_and_the_imposters_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "");
        let events = crate::simulate::random_events(3, 5000);
        replay(&mut conn, &events[..1234], &staging()).unwrap();
        replay(&mut conn, &events[1234..], &staging()).unwrap();
        assert_eq!(integrity(&conn), "ok");
        // Every row is reachable through the index, under its own rowid.
        for (rowid, ev) in (1..).zip(events.iter().step_by(97)) {
            let found: i64 = conn
                .query_row(
                    "SELECT rowid FROM events WHERE event_id = ?1",
                    [&ev.event_id],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(found, ev.sequence_number, "{rowid}");
        }
        // The uniqueness the index enforces holds for the bulk rows.
        let dup = conn.execute(
            "INSERT INTO events VALUES (?1, 'X', 'a', '{}', 5001, '2025-01-15T00:00:00')",
            [&events[4000].event_id],
        );
        assert!(dup.unwrap_err().to_string().contains("UNIQUE"));
        // No imposter is left in the schema or the connection.
        for name in [TABLE_IMPOSTER, INDEX_IMPOSTER] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0);
            assert!(conn.prepare(&format!("SELECT * FROM {name}")).is_err());
        }
    }

    #[test]
    fn a_table_that_does_not_qualify_is_replayed_the_ordinary_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(
            dir.path(),
            "CREATE INDEX events_seq ON events(sequence_number)",
        );
        let events = crate::simulate::random_events(4, 3000);
        replay(&mut conn, &events, &staging()).unwrap();
        assert_eq!(integrity(&conn), "ok");
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM events INDEXED BY events_seq WHERE sequence_number > 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3000);
    }

    #[test]
    fn a_duplicate_within_the_replay_names_the_later_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "");
        let mut events = crate::simulate::random_events(6, 500);
        events[321].event_id = events[17].event_id.clone();
        let err = replay(&mut conn, &events, &staging())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("event #{} (", events[321].sequence_number))
                && err.contains("UNIQUE constraint failed: events.event_id"),
            "{err}"
        );
    }
}
