//! The rows of the `events` table, and reading them in sequence order.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One row of the `events` table, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    /// A JSON object, as text, byte for byte.
    pub event_data: String,
    pub sequence_number: i64,
    /// UTC, ISO 8601, as written.
    pub created_at: String,
}

impl Event {
    /// The event's time.
    ///
    /// # Errors
    /// [`Error::Timestamp`] naming the event when `created_at` is not a timestamp.
    pub fn time(&self) -> Result<DateTime<Utc>> {
        crate::time::parse(&self.created_at, || {
            format!(
                "created_at of event #{} ({})",
                self.sequence_number, self.event_id
            )
        })
    }
}

/// Reads the events with `sequence_number > after_seq` in sequence order; when
/// `until` is given, stops before the first event whose `created_at` is after it
/// (compared as times), so the result is always a prefix of the stream.
///
/// # Errors
/// [`Error::Sqlite`] when the table cannot be read (or has NULLs where the schema
/// forbids them); [`Error::Timestamp`] naming the event when `until` is given and an
/// event's `created_at` cannot be read.
pub fn read_events(
    conn: &Connection,
    after_seq: i64,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Event>> {
    // `events` has no index on sequence_number: read in rowid order (the
    // order events are appended in, so nearly sorted already) and sort here,
    // instead of having SQLite sort every row through a temporary b-tree.
    let mut stmt = conn
        .prepare(
            "SELECT event_id, event_type, aggregate_id, event_data, sequence_number, created_at \
             FROM events WHERE sequence_number > ?1",
        )
        .map_err(Error::sqlite("reading events"))?;
    let rows = stmt
        .query_map([after_seq], |r| {
            Ok(Event {
                event_id: r.get(0)?,
                event_type: r.get(1)?,
                aggregate_id: r.get(2)?,
                event_data: r.get(3)?,
                sequence_number: r.get(4)?,
                created_at: r.get(5)?,
            })
        })
        .map_err(Error::sqlite("reading events"))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(Error::sqlite("reading events"))?);
    }
    out.sort_by(|a, b| (a.sequence_number, &a.event_id).cmp(&(b.sequence_number, &b.event_id)));
    if let Some(until) = until {
        for (i, ev) in out.iter().enumerate() {
            if ev.time()? > until {
                out.truncate(i);
                break;
            }
        }
    }
    Ok(out)
}

/// The highest `sequence_number` in `events` (0 when empty).
///
/// # Errors
/// [`Error::Sqlite`].
pub fn max_sequence(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT coalesce(max(sequence_number), 0) FROM events",
        [],
        |r| r.get(0),
    )
    .map_err(Error::sqlite("reading the highest sequence number"))
}
