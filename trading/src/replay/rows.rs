//! Inserting the event rows: one by one (with a journal), or by multi-row
//! prepared statements (without one), through statements prepared once per
//! segment and bound without copies.

use rusqlite::Transaction;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::stmt::StaticStmt;

/// How the event rows are inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventRows {
    Skip,
    OneByOne,
    /// Multi-row statements: only without a journal (no statement journal).
    Batched,
}

const INSERT_EVENT: &str = "INSERT INTO events (event_id, event_type, aggregate_id, event_data, sequence_number, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

pub(super) fn insert_event_rows(tx: &Transaction<'_>, events: &[Event]) -> Result<()> {
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

/// Inserts event rows chunk after chunk, in order, as [`EventRows`] says;
/// the multi-row statement is prepared on first use and kept.
pub(super) struct EventInserter<'r> {
    tx: &'r Transaction<'r>,
    rows: EventRows,
    multi: Option<StaticStmt<'r>>,
}

impl<'r> EventInserter<'r> {
    pub(super) fn new(tx: &'r Transaction<'r>, rows: EventRows) -> Self {
        EventInserter {
            tx,
            rows,
            multi: None,
        }
    }

    /// Inserts the rows of `events`.
    ///
    /// # Errors
    /// [`Error::Event`] naming the event whose row cannot be inserted.
    pub(super) fn insert(&mut self, events: &'r [Event]) -> Result<()> {
        match self.rows {
            EventRows::Skip => Ok(()),
            EventRows::OneByOne => insert_event_rows(self.tx, events),
            EventRows::Batched => self.insert_batched(events),
        }
    }

    /// Inserts the event rows [`ROWS_PER_INSERT`] at a time, in order (the
    /// rowids are those of one-by-one inserts). A failing statement may leave
    /// some of its rows (there is no statement journal without a journal):
    /// the error names the first event of the chunk whose row cannot be
    /// inserted.
    fn insert_batched(&mut self, events: &'r [Event]) -> Result<()> {
        let tx = self.tx;
        let mut chunks = events.chunks_exact(ROWS_PER_INSERT);
        if chunks.len() > 0 {
            if self.multi.is_none() {
                let sql = multi_row_insert_sql(ROWS_PER_INSERT);
                self.multi = Some(
                    StaticStmt::prepare(tx, &sql)
                        .map_err(Error::sqlite("preparing the event insert"))?,
                );
            }
            let Some(stmt) = self.multi.as_mut() else {
                return Err(Error::Internal {
                    what: "the event insert",
                    message: "no prepared statement".into(),
                });
            };
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
