//! Reading the `events` table once, in sequence order, without holding it.
//!
//! `events` has no index on `sequence_number`, and ordering by it would have
//! SQLite sort every row. Rows are appended in sequence order (one event per
//! transaction, DOMAIN.md), so the table is read in rowid order and the order
//! checked as it goes; only when it is not sorted does the caller read it again
//! through SQLite's sorter ([`Order::Sorted`]), which spills to temporary files
//! rather than memory.

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::event::Event;

/// How to read the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Rowid order, stopping at the first event out of sequence order.
    Rowid,
    /// `ORDER BY sequence_number, event_id`.
    Sorted,
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Streamed {
    Done,
    /// [`Order::Rowid`] found an event before its predecessor in sequence order.
    OutOfOrder,
}

const COLUMNS: &str =
    "SELECT event_id, event_type, aggregate_id, event_data, sequence_number, created_at FROM events";

fn text_into(row: &rusqlite::Row<'_>, i: usize, out: &mut String) -> rusqlite::Result<()> {
    let v = row.get_ref(i)?;
    match v {
        ValueRef::Text(t) => {
            out.clear();
            out.push_str(&String::from_utf8_lossy(t));
            Ok(())
        }
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            [
                "event_id",
                "event_type",
                "aggregate_id",
                "event_data",
                "sequence_number",
                "created_at",
            ][i]
                .to_string(),
            other.data_type(),
        )),
    }
}

/// Calls `f` on every event in sequence order (ties by event id); one
/// [`Event`] is reused, so memory does not grow with the table.
///
/// # Errors
/// [`Error::Sqlite`] when `events` cannot be read or holds a value of the
/// wrong type; whatever `f` returns.
pub(super) fn each_event(
    conn: &Connection,
    order: Order,
    mut f: impl FnMut(&Event) -> Result<()>,
) -> Result<Streamed> {
    let sql = match order {
        Order::Rowid => COLUMNS.to_string(),
        Order::Sorted => format!("{COLUMNS} ORDER BY sequence_number, event_id"),
    };
    let mut stmt = conn
        .prepare(&sql)
        .map_err(Error::sqlite("reading events"))?;
    let mut rows = stmt.query([]).map_err(Error::sqlite("reading events"))?;
    let mut ev = Event {
        event_id: String::new(),
        event_type: String::new(),
        aggregate_id: String::new(),
        event_data: String::new(),
        sequence_number: 0,
        created_at: String::new(),
    };
    let mut prev: Option<(i64, String)> = None;
    while let Some(row) = rows.next().map_err(Error::sqlite("reading events"))? {
        (|| -> rusqlite::Result<()> {
            text_into(row, 0, &mut ev.event_id)?;
            text_into(row, 1, &mut ev.event_type)?;
            text_into(row, 2, &mut ev.aggregate_id)?;
            text_into(row, 3, &mut ev.event_data)?;
            ev.sequence_number = row.get(4)?;
            text_into(row, 5, &mut ev.created_at)
        })()
        .map_err(Error::sqlite("reading events"))?;
        if order == Order::Rowid {
            match &mut prev {
                Some((s, id))
                    if (*s, id.as_str()) >= (ev.sequence_number, ev.event_id.as_str()) =>
                {
                    return Ok(Streamed::OutOfOrder);
                }
                Some((s, id)) => {
                    *s = ev.sequence_number;
                    id.clear();
                    id.push_str(&ev.event_id);
                }
                None => prev = Some((ev.sequence_number, ev.event_id.clone())),
            }
        }
        f(&ev)?;
    }
    Ok(Streamed::Done)
}
