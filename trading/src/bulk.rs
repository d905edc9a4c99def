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

use rayon::prelude::*;
use rusqlite::{ffi, Connection, OptionalExtension};

use crate::effects::SqlVal;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::pages::{Entry, Stored};
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
    let found = inspect(conn, "events", &EXPECTED_COLUMNS, &["event_id"])
        .map_err(Error::sqlite("reading the events table's schema"))?;
    Ok(found.map(|(table_root, roots)| EventTrees {
        table_root,
        index_root: roots[0],
    }))
}

/// The root pages of `table` and of its unique indexes, one per column of
/// `unique` (in that order), when the table is a rowid table with exactly
/// the `columns` (name, declared type, part of the primary key), whose only
/// indexes are those (single-column, BINARY, not partial), with no trigger and
/// no foreign key, and no table is named like an imposter; else `None`.
fn inspect(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str, i64)],
    unique: &[&str],
) -> rusqlite::Result<Option<(c_int, Vec<c_int>)>> {
    let kind: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT type, wr, strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if kind != Some(("table".to_string(), 0, 0)) {
        return Ok(None);
    }
    let mut stmt =
        conn.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?;
    let found = stmt
        .query_map([table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let same_columns = found.len() == columns.len()
        && found
            .iter()
            .zip(columns)
            .all(|((name, ty, pk, hidden), (n, t, p))| {
                name == n && ty.eq_ignore_ascii_case(t) && pk == p && *hidden == 0
            });
    if !same_columns {
        return Ok(None);
    }
    let mut stmt = conn.prepare("SELECT name, \"unique\", partial FROM pragma_index_list(?1)")?;
    let indexes = stmt
        .query_map([table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if indexes.len() != unique.len() {
        return Ok(None);
    }
    let mut roots = vec![0; unique.len()];
    let mut parts = conn.prepare(
        "SELECT cid, name, \"desc\", coll, key FROM pragma_index_xinfo(?1) ORDER BY seqno",
    )?;
    for (index, is_unique, partial) in &indexes {
        if *is_unique != 1 || *partial != 0 {
            return Ok(None);
        }
        let parts = parts
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
        let column = match parts.as_slice() {
            [(c, Some(name), 0, Some(coll), 1), (-1, None, 0, _, 0)]
                if *c >= 0 && coll.eq_ignore_ascii_case("BINARY") =>
            {
                name
            }
            _ => return Ok(None),
        };
        let Some(slot) = unique.iter().position(|u| u == column) else {
            return Ok(None);
        };
        match root(conn, "index", index)? {
            Some(r) if roots[slot] == 0 => roots[slot] = r,
            _ => return Ok(None),
        }
    }
    let others: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE)
              + (SELECT count(*) FROM pragma_foreign_key_list(?1))
              + (SELECT count(*) FROM sqlite_schema WHERE name LIKE 'genesis\\_bulk\\_%' ESCAPE '\\')",
        [table],
        |r| r.get(0),
    )?;
    if others != 0 {
        return Ok(None);
    }
    Ok(root(conn, "table", table)?.map(|t| (t, roots)))
}

/// The root page of a table or index, when it is a b-tree page past the first.
fn root(conn: &Connection, ty: &str, name: &str) -> rusqlite::Result<Option<c_int>> {
    let page: i64 = conn.query_row(
        "SELECT rootpage FROM sqlite_schema WHERE type = ?1 AND name = ?2",
        [ty, name],
        |r| r.get(0),
    )?;
    Ok(c_int::try_from(page).ok().filter(|p| *p > 1))
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
        Imposters::declare(
            conn,
            &[
                (
                    trees.table_root,
                    format!("CREATE TABLE {TABLE_IMPOSTER}(event_id TEXT, event_type TEXT, aggregate_id TEXT, event_data TEXT, sequence_number INTEGER, created_at TEXT)"),
                ),
                (trees.index_root, key_imposter(INDEX_IMPOSTER)),
            ],
        )
    }

    /// Declares the imposters of `orders` (see [`insert_orders`]).
    ///
    /// # Errors
    /// As [`Imposters::create`].
    pub(crate) fn create_orders(conn: &'c Connection, trees: OrderTrees) -> Result<Imposters<'c>> {
        let columns: Vec<String> = ORDER_TABLE_COLUMNS
            .iter()
            .map(|(name, ty, _)| format!("{name} {ty}"))
            .collect();
        Imposters::declare(
            conn,
            &[
                (
                    trees.table,
                    format!("CREATE TABLE {ORDERS_IMPOSTER}({})", columns.join(", ")),
                ),
                (trees.order_id, key_imposter(ORDER_ID_IMPOSTER)),
                (trees.client_order_id, key_imposter(CLIENT_ID_IMPOSTER)),
            ],
        )
    }

    fn declare(conn: &'c Connection, tables: &[(c_int, String)]) -> Result<Imposters<'c>> {
        let guard = Imposters { conn };
        for (root, sql) in tables {
            imposter(conn, *root, sql)?;
        }
        let written: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'genesis\\_bulk\\_%' ESCAPE '\\'",
                [],
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

/// The imposter of a unique single-column index of a rowid table: the key
/// alone is the primary key, so SQLite enforces its uniqueness.
fn key_imposter(name: &str) -> String {
    format!("CREATE TABLE {name}(k TEXT, r INTEGER, PRIMARY KEY (k)) WITHOUT ROWID")
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
    insert_key_entries(conn, INDEX_IMPOSTER, keys).map_err(|e| match e {
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

/// Inserts index entries `(key, rowid)` through an index imposter.
fn insert_key_entries(
    conn: &Connection,
    imposter: &str,
    keys: &[(&str, i64)],
) -> rusqlite::Result<()> {
    let sql = |rows: usize| {
        let values = vec!["(?,?)"; rows].join(",");
        format!("INSERT INTO {imposter}(k, r) VALUES {values}")
    };
    insert_chunks(conn, keys, KEYS_PER_INSERT, sql, |stmt, i, (k, r)| {
        stmt.bind_text(2 * i + 1, k)?;
        stmt.bind_int(2 * i + 2, *r)
    })
    .map_err(|(_, e)| e)
}

/// Whether the index imposter holds `key` for a row already in the table
/// before the bulk insert (rowid at most `base`).
fn indexed_before(conn: &Connection, imposter: &str, key: &str, base: i64) -> bool {
    conn.query_row(
        &format!("SELECT 1 FROM {imposter} WHERE k = ?1 AND r <= ?2"),
        rusqlite::params![key, base],
        |_| Ok(()),
    )
    .is_ok()
}

/// The error for the first event, in sequence order, whose id repeats an
/// earlier event's of the replay or one already in the database (rowid at
/// most `base`).
fn first_duplicate(conn: &Connection, events: &[Event], base: i64) -> Error {
    let reason = "cannot insert the event row: UNIQUE constraint failed: events.event_id";
    let existing = |id: &str| indexed_before(conn, INDEX_IMPOSTER, id, base);
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

// ---- New orders -------------------------------------------------------

/// DOMAIN.md's `orders` columns: name, declared type, part of the primary key.
const ORDER_TABLE_COLUMNS: [(&str, &str, i64); 14] = [
    ("order_id", "TEXT", 1),
    ("client_order_id", "TEXT", 0),
    ("symbol", "TEXT", 0),
    ("side", "TEXT", 0),
    ("order_type", "TEXT", 0),
    ("quantity", "REAL", 0),
    ("price", "REAL", 0),
    ("status", "TEXT", 0),
    ("created_at", "TEXT", 0),
    ("filled_quantity", "REAL", 0),
    ("executed_price", "REAL", 0),
    ("filled_at", "TEXT", 0),
    ("cancelled_at", "TEXT", 0),
    ("position_id", "TEXT", 0),
];

const ORDERS_IMPOSTER: &str = "genesis_bulk_orders";
const ORDER_ID_IMPOSTER: &str = "genesis_bulk_orders_id";
const CLIENT_ID_IMPOSTER: &str = "genesis_bulk_orders_client";

/// Rows per multi-row insert of orders (fifteen parameters each).
const ORDERS_PER_INSERT: usize = 32;

/// The b-trees of an `orders` table that can take the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrderTrees {
    table: c_int,
    order_id: c_int,
    client_order_id: c_int,
}

/// The `orders` b-trees when the table is exactly DOMAIN.md's (as
/// [`event_trees`] for `events`), else `None`.
///
/// # Errors
/// [`Error::Sqlite`] when the schema cannot be read.
pub(crate) fn order_trees(conn: &Connection) -> Result<Option<OrderTrees>> {
    let found = inspect(
        conn,
        "orders",
        &ORDER_TABLE_COLUMNS,
        &["order_id", "client_order_id"],
    )
    .map_err(Error::sqlite("reading the orders table's schema"))?;
    Ok(found.map(|(table, roots)| OrderTrees {
        table,
        order_id: roots[0],
        client_order_id: roots[1],
    }))
}

/// A new row of `orders`: its key, its other columns in table order (`None`
/// is NULL), and the index of the event that created it.
pub(crate) struct NewOrder<'r> {
    pub key: &'r str,
    pub cols: &'r [Option<SqlVal<'r>>],
    pub first: usize,
}

/// Inserts new orders (given in the order their events created them) as
/// [`insert_events`] inserts events: the rows appended with the rowids
/// one-by-one inserts would give, then the entries of each of the two unique
/// indexes in key order. `Ok(false)`, with nothing written, when an order's
/// `client_order_id` is not text (NULL cannot be a key of the imposter, and
/// the order of other types is SQLite's to decide).
///
/// # Errors
/// [`Error::Event`] naming the event of the first order whose id or client
/// order id is already taken; [`Error::Sqlite`]. The database must then be
/// discarded (this runs only on staged copies).
pub(crate) fn insert_orders<'o>(
    conn: &Connection,
    trees: OrderTrees,
    events: &[Event],
    orders: &'o [NewOrder<'o>],
) -> Result<bool> {
    if orders.is_empty() || orders.iter().any(|o| client_id(o).is_none()) {
        return Ok(false);
    }
    let base: i64 = conn
        .query_row("SELECT coalesce(max(rowid), 0) FROM orders", [], |r| {
            r.get(0)
        })
        .map_err(Error::sqlite("reading the highest rowid of orders"))?;
    if base.checked_add(orders.len() as i64).is_none() {
        return Ok(false);
    }
    let _imposters = Imposters::create_orders(conn, trees)?;
    let sort = |key: fn(&'o NewOrder<'o>) -> &'o str| -> Vec<(&'o str, i64)> {
        let mut keys: Vec<(&str, i64)> = orders
            .iter()
            .zip(base + 1..)
            .map(|(o, rowid)| (key(o), rowid))
            .collect();
        keys.par_sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        keys
    };
    let (rows, keys) = std::thread::scope(|s| {
        let sorter = s.spawn(|| (sort(|o| o.key), sort(|o| client_id(o).unwrap_or_default())));
        (insert_order_rows(conn, events, orders, base), sorter.join())
    });
    rows?;
    let Ok((ids, clients)) = keys else {
        return Err(Error::Staging(
            "internal error: sorting the order ids panicked".into(),
        ));
    };
    let taken = |keys: &[(&str, i64)], imposter: &str| -> rusqlite::Result<bool> {
        if keys.windows(2).any(|w| w[0].0 == w[1].0) {
            return Ok(true);
        }
        match insert_key_entries(conn, imposter, keys) {
            Ok(()) => Ok(false),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ffi::ErrorCode::ConstraintViolation =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    };
    let clash = taken(&ids, ORDER_ID_IMPOSTER)
        .and_then(|a| Ok(a || taken(&clients, CLIENT_ID_IMPOSTER)?))
        .map_err(Error::sqlite("inserting the orders index entries"))?;
    if clash {
        return Err(first_taken_order(conn, events, orders, base));
    }
    #[cfg(test)]
    tests::ORDER_PATHS.with(|p| p.borrow_mut().push("apart"));
    Ok(true)
}

/// Appends new orders (given in the order their events created them)
/// straight into the file of a staged database (see
/// [`crate::pages::append_table`]): the rows with the rowids one-by-one
/// inserts would give, and both unique indexes rebuilt from their entries
/// and the new ones. For large replays, when the indexes hold no more
/// entries than the replay adds. The connection must hold no lock.
/// `Ok(false)` when nothing was written, for the caller to insert the orders
/// through SQLite: an index larger than that, a NULL or non-text
/// `client_order_id` (old or new), a value whose storage under the column's
/// affinity is not plain (a number for a text column, text for a real one),
/// a taken id (SQLite's path then names the event), anything
/// [`crate::pages::append_table`] declines.
///
/// # Errors
/// [`Error::Sqlite`] when the table cannot be read; [`Error::Io`] when the
/// file cannot be written (the database must then be discarded).
pub(crate) fn append_orders(
    conn: &Connection,
    path: &std::path::Path,
    page_size: usize,
    trees: OrderTrees,
    orders: &[NewOrder<'_>],
) -> Result<bool> {
    let declined = |reason: &str| {
        tracing::debug!("new orders through SQLite: {reason}");
        Ok(false)
    };
    if orders.is_empty() {
        return Ok(false);
    }
    let (count, with_client, base): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), count(client_order_id), coalesce(max(rowid), 0) FROM orders",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(Error::sqlite("counting the orders"))?;
    if count > orders.len() as i64 {
        return declined("the orders indexes hold more entries than the replay adds");
    }
    if with_client != count {
        return declined("an order has a NULL client_order_id");
    }
    if base.checked_add(orders.len() as i64).is_none() {
        return declined("the highest rowid of orders");
    }
    let t = std::time::Instant::now();
    // The rows' records, under their columns' affinities. On this thread:
    // the pool is still writing the events' pages.
    let records: Option<Vec<Vec<u8>>> = orders
        .iter()
        .map(|o| {
            let mut values = Vec::with_capacity(ORDER_TABLE_COLUMNS.len());
            values.push(Stored::Text(o.key.as_bytes()));
            for ((_, ty, _), v) in ORDER_TABLE_COLUMNS[1..].iter().zip(o.cols) {
                values.push(stored(ty, v.as_ref())?);
            }
            Some(crate::pages::record(&values))
        })
        .collect();
    let Some(records) = records else {
        return declined("a value that its column's affinity would convert");
    };
    let Some(clients) = orders.iter().map(client_id).collect::<Option<Vec<&str>>>() else {
        return declined("a new order's client_order_id is not text");
    };
    let mut indexes = Vec::with_capacity(2);
    for (root, column, keys) in [
        (
            trees.order_id,
            "order_id",
            orders.iter().map(|o| o.key).collect(),
        ),
        (trees.client_order_id, "client_order_id", clients),
    ] {
        let old = match crate::pages::index_entries(conn, "orders", column)? {
            Ok(old) => old,
            Err(reason) => return declined(&reason),
        };
        let mut new: Vec<Entry<'_>> = keys
            .into_iter()
            .zip(base + 1..)
            .map(|(k, rowid)| Entry {
                key: std::borrow::Cow::Borrowed(k.as_bytes()),
                rowid,
            })
            .collect();
        new.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let Some(entries) = merge_unique(old, new) else {
            return declined("a taken order id or client order id");
        };
        indexes.push((u32::try_from(root).unwrap_or(0), entries));
    }
    tracing::debug!("order records and index entries in {:?}", t.elapsed());
    let append = crate::pages::TableAppend {
        table: u32::try_from(trees.table).unwrap_or(0),
        base,
        records,
        indexes,
    };
    match crate::pages::append_table(path, page_size, &append)? {
        Ok(()) => {
            #[cfg(test)]
            tests::ORDER_PATHS.with(|p| p.borrow_mut().push("appended"));
            Ok(true)
        }
        Err(reason) => declined(&reason),
    }
}

/// How SQLite stores a value in a column of declared type `ty` (TEXT or
/// REAL), when that is plain: NULL, text in a text column, a number in a
/// real one; `None` for a conversion (a number to text, text to a number).
/// Under REAL affinity an integer, or a real without fraction that an i64
/// holds, is stored as an integer when it fits six bytes ("small floating
/// point values with no fractional component ... are written to disk as
/// integers", SQLite's datatype documentation), else as a real.
fn stored<'a>(ty: &str, v: Option<&'a SqlVal<'a>>) -> Option<Stored<'a>> {
    let real_int = |i: i64| {
        let u = if i < 0 { !i as u64 } else { i as u64 };
        if u <= 0x7fff_ffff_ffff {
            Stored::Int(i)
        } else {
            Stored::Real(i as f64)
        }
    };
    match (ty, v) {
        (_, None | Some(SqlVal::Null)) => Some(Stored::Null),
        ("TEXT", Some(SqlVal::Text(t))) => Some(Stored::Text(t.as_bytes())),
        ("REAL", Some(SqlVal::Int(i))) => Some(real_int(*i)),
        ("REAL", Some(SqlVal::Real(f))) if f.is_finite() => {
            let i = *f as i64;
            Some(if i as f64 == *f && i > i64::MIN && i < i64::MAX {
                real_int(i)
            } else {
                Stored::Real(*f)
            })
        }
        _ => None,
    }
}

/// Two lists of entries in key order merged, `None` when a key repeats.
fn merge_unique<'a>(old: Vec<Entry<'a>>, new: Vec<Entry<'a>>) -> Option<Vec<Entry<'a>>> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut old = old.into_iter().peekable();
    for e in new {
        while let Some(o) = old.next_if(|o| o.key < e.key) {
            out.push(o);
        }
        if old.peek().is_some_and(|o| o.key == e.key) {
            return None;
        }
        out.push(e);
    }
    out.extend(old);
    out.windows(2).all(|w| w[0].key < w[1].key).then_some(out)
}

/// An order's `client_order_id` when it is text.
fn client_id<'o>(o: &'o NewOrder<'o>) -> Option<&'o str> {
    match o.cols.first() {
        Some(Some(SqlVal::Text(t))) => Some(t.as_ref()),
        _ => None,
    }
}

fn insert_order_rows(
    conn: &Connection,
    events: &[Event],
    orders: &[NewOrder<'_>],
    base: i64,
) -> Result<()> {
    let n = ORDER_TABLE_COLUMNS.len() + 1;
    let sql = |rows: usize| {
        let marks = format!("({})", vec!["?"; n].join(","));
        let names: Vec<&str> = ORDER_TABLE_COLUMNS.iter().map(|c| c.0).collect();
        format!(
            "INSERT INTO {ORDERS_IMPOSTER}(rowid, {}) VALUES {}",
            names.join(", "),
            vec![marks.as_str(); rows].join(",")
        )
    };
    let null = SqlVal::Null;
    let mut rowid = base;
    insert_chunks(conn, orders, ORDERS_PER_INSERT, sql, |stmt, i, o| {
        rowid += 1;
        let p = i * n;
        stmt.bind_int(p + 1, rowid)?;
        stmt.bind_text(p + 2, o.key)?;
        for (j, v) in o.cols.iter().enumerate() {
            stmt.bind_val(p + 3 + j, v.as_ref().unwrap_or(&null))?;
        }
        Ok(())
    })
    .map_err(|(i, e)| {
        let o = &orders[i];
        Error::event(
            &events[o.first],
            format!("cannot write order {}: {e}", o.key),
        )
    })
}

/// The error for the first new order, in the order of the events that
/// created them, whose id or client order id repeats an earlier one or one
/// already in the database (rowid at most `base`), worded as the ordinary
/// path words it.
fn first_taken_order<'o>(
    conn: &Connection,
    events: &[Event],
    orders: &'o [NewOrder<'o>],
    base: i64,
) -> Error {
    let existing = |imposter: &str, k: &str| indexed_before(conn, imposter, k, base);
    let mut ids = HashSet::with_capacity(orders.len());
    let mut clients = HashSet::with_capacity(orders.len());
    for o in orders {
        if !ids.insert(o.key) || existing(ORDER_ID_IMPOSTER, o.key) {
            return Error::event(&events[o.first], format!("order {} already exists", o.key));
        }
        let c = client_id(o).unwrap_or_default();
        if !clients.insert(c) || existing(CLIENT_ID_IMPOSTER, c) {
            return Error::event(
                &events[o.first],
                format!(
                    "cannot write order {}: UNIQUE constraint failed: orders.client_order_id",
                    o.key
                ),
            );
        }
    }
    Error::Staging(
        "a bulk insert of orders failed on a uniqueness constraint no order explains".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{dump, replay, ReplayOptions};

    thread_local! {
        /// How the new orders of each replay on this thread were written
        /// ("apart": through SQLite, rows and index entries apart;
        /// "appended": straight into the file).
        pub(super) static ORDER_PATHS: std::cell::RefCell<Vec<&'static str>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

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

    fn direct() -> ReplayOptions {
        ReplayOptions {
            staging: true,
            direct_pages_from: 1,
            ..ReplayOptions::default()
        }
    }

    /// The events with the `field` of the `n`-th ORDER_CREATED's data set to
    /// `value`.
    fn with_order_field(
        mut events: Vec<Event>,
        n: usize,
        field: &str,
        value: serde_json::Value,
    ) -> (Vec<Event>, usize) {
        let i = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.event_type == "ORDER_CREATED")
            .nth(n)
            .map(|(i, _)| i)
            .unwrap();
        let mut data: serde_json::Value = serde_json::from_str(&events[i].event_data).unwrap();
        data[field] = value;
        events[i].event_data = data.to_string();
        (events, i)
    }

    fn client_id_of(ev: &Event) -> serde_json::Value {
        let data: serde_json::Value = serde_json::from_str(&ev.event_data).unwrap();
        data["client_order_id"].clone()
    }

    #[test]
    fn only_domains_orders_table_takes_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        let conn = staged(dir.path(), "");
        assert!(order_trees(&conn).unwrap().is_some());
        for extra in [
            "CREATE INDEX orders_symbol ON orders(symbol)",
            "CREATE TRIGGER orders_t AFTER INSERT ON orders BEGIN SELECT 1; END",
            "ALTER TABLE orders ADD COLUMN note TEXT",
            "CREATE TABLE genesis_bulk_orders(x)",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let conn = staged(dir.path(), extra);
            assert_eq!(order_trees(&conn).unwrap(), None, "{extra}");
        }
    }

    fn paths() -> Vec<&'static str> {
        ORDER_PATHS.with(|p| p.take())
    }

    #[test]
    fn new_orders_appended_or_written_apart_equal_sqlites_own() {
        let events = crate::simulate::random_events(21, 6000);
        let mut expected = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&expected).unwrap();
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        // Into an empty table; fewer new orders than old ones (the indexes
        // are not rebuilt); more.
        let parts = [0..1500, 1500..1700, 1700..6000];
        for (decline, want) in [
            (false, ["appended", "apart", "appended"]),
            (true, ["apart", "apart", "apart"]),
        ] {
            crate::pages::tests::DECLINE.with(|d| d.set(decline));
            paths();
            let dir = tempfile::tempdir().unwrap();
            let mut conn = staged(dir.path(), "");
            for part in parts.clone() {
                replay(&mut conn, &events[part], &direct()).unwrap();
            }
            crate::pages::tests::DECLINE.with(|d| d.set(false));
            assert_eq!(paths(), want);
            assert_eq!(integrity(&conn), "ok");
            assert_eq!(dump(&conn), dump(&expected));
            // Both unique indexes hold for the new rows.
            let (_, i) = with_order_field(events.clone(), 3, "client_order_id", 0.into());
            let taken = client_id_of(&events[i]);
            let dup = conn.execute(
                "INSERT INTO orders (order_id, client_order_id) VALUES ('fresh', ?1)",
                [taken.as_str().unwrap()],
            );
            assert!(dup.unwrap_err().to_string().contains("UNIQUE"));
            let dup = conn.execute(
                "INSERT INTO orders (order_id, client_order_id) VALUES (?1, 'fresh')",
                [&events[i].aggregate_id],
            );
            assert!(dup.unwrap_err().to_string().contains("UNIQUE"));
            // Lookups go through the indexes.
            let found: i64 = conn
                .query_row(
                    "SELECT count(*) FROM orders WHERE client_order_id = ?1 AND order_id = ?2",
                    rusqlite::params![taken.as_str().unwrap(), events[i].aggregate_id],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(found, 1);
        }
    }

    #[test]
    fn values_are_stored_as_sqlite_stores_them_under_the_columns_affinity() {
        // Every numeric form in the REAL columns, text in the TEXT ones,
        // written directly and by SQLite, read back the same.
        let numbers = [
            "0",
            "1",
            "-1",
            "0.0",
            "-0.0",
            "2.5",
            "250000.0",
            "140737488355327",
            "140737488355328",
            "-140737488355328",
            "9007199254740993",
            "1e300",
            "-9223372036854775808",
            "9223372036854775807",
            "12345678901234567890",
        ];
        let events: Vec<Event> = numbers
            .iter()
            .enumerate()
            .map(|(k, n)| Event {
                event_id: format!("e{k}"),
                event_type: "ORDER_CREATED".into(),
                aggregate_id: format!("o{k}"),
                event_data: format!(
                    r#"{{"client_order_id":"c{k}","symbol":"BTC/USDT","side":"buy","order_type":"limit","quantity":{n},"price":{n}}}"#
                ),
                sequence_number: k as i64 + 1,
                created_at: "2025-01-15T00:00:00".into(),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "");
        paths();
        replay(&mut conn, &events, &direct()).unwrap();
        assert_eq!(paths(), ["appended"]);
        assert_eq!(integrity(&conn), "ok");
        let mut expected = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&expected).unwrap();
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        let typed = |c: &Connection| -> Vec<String> {
            c.prepare("SELECT typeof(quantity), quote(quantity), typeof(price), quote(price), typeof(symbol) FROM orders ORDER BY rowid")
                .unwrap()
                .query_map([], |r| {
                    Ok(format!(
                        "{} {} {} {} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?
                    ))
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(typed(&conn), typed(&expected));
        assert_eq!(dump(&conn), dump(&expected));
        // A conversion (text into a REAL column, a number into a TEXT one) is
        // left to SQLite.
        for (field, value) in [("quantity", r#""1.5""#), ("symbol", "7")] {
            let mut evs = events.clone();
            for e in &mut evs {
                let mut d: serde_json::Value = serde_json::from_str(&e.event_data).unwrap();
                d[field] = serde_json::from_str(value).unwrap();
                e.event_data = d.to_string();
            }
            let dir = tempfile::tempdir().unwrap();
            let mut conn = staged(dir.path(), "");
            replay(&mut conn, &evs, &direct()).unwrap();
            assert_eq!(paths(), ["apart"], "{field}");
            let mut expected = Connection::open_in_memory().unwrap();
            crate::schema::ensure_schema(&expected).unwrap();
            replay(&mut expected, &evs, &ReplayOptions::default()).unwrap();
            assert_eq!(typed(&conn), typed(&expected), "{field}");
        }
    }

    #[test]
    fn a_taken_client_order_id_names_the_event_as_the_ordinary_path_does() {
        let events = crate::simulate::random_events(22, 3000);
        let first = events
            .iter()
            .find(|e| e.event_type == "ORDER_CREATED")
            .unwrap();
        let (events, i) =
            with_order_field(events.clone(), 40, "client_order_id", client_id_of(first));
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "");
        let fast = replay(&mut conn, &events, &direct())
            .unwrap_err()
            .to_string();
        let mut plain = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&plain).unwrap();
        let slow = replay(&mut plain, &events, &ReplayOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(fast, slow);
        assert!(
            fast.starts_with(&format!("event #{} (", events[i].sequence_number))
                && fast.contains("UNIQUE constraint failed: orders.client_order_id"),
            "{fast}"
        );
        // An order id already in the database.
        let events = crate::simulate::random_events(23, 3000);
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "");
        replay(&mut conn, &events[..1000], &direct()).unwrap();
        let mut rest = events[1000..].to_vec();
        let j = rest
            .iter()
            .position(|e| e.event_type == "ORDER_CREATED")
            .unwrap();
        let old = events[..1000]
            .iter()
            .find(|e| e.event_type == "ORDER_CREATED")
            .unwrap();
        rest[j].aggregate_id = old.aggregate_id.clone();
        let err = replay(&mut conn, &rest, &direct()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("event #{} (", rest[j].sequence_number))
                && err.contains(&format!("order {} already exists", old.aggregate_id)),
            "{err}"
        );
    }

    #[test]
    fn an_order_without_client_id_sends_the_orders_the_ordinary_way() {
        let (events, _) = with_order_field(
            crate::simulate::random_events(24, 3000),
            5,
            "client_order_id",
            serde_json::Value::Null,
        );
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "");
        paths();
        replay(&mut conn, &events, &direct()).unwrap();
        assert_eq!(paths(), Vec::<&str>::new());
        assert_eq!(integrity(&conn), "ok");
        let mut expected = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&expected).unwrap();
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        assert_eq!(dump(&conn), dump(&expected));
    }
}
