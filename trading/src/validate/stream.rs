//! Reading the `events` table once, in sequence order, without holding it.
//!
//! `events` has no index on `sequence_number`, and ordering by it would have
//! SQLite sort every row. Rows are appended in sequence order (one event per
//! transaction, DOMAIN.md), so the table is read in rowid order and the order
//! checked as it goes; only when it is not sorted does the caller read it again
//! through SQLite's sorter ([`Order::Sorted`]), which spills to temporary files
//! rather than memory.

use rusqlite::Connection;

use super::raw::Query;

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

/// The columns of [`COLUMNS`], for errors.
const NAMES: [&str; 6] = crate::schema::EVENT_COLUMNS;

fn text_into(row: &Query<'_>, i: usize, out: &mut String) -> rusqlite::Result<()> {
    let t = row.text(i, NAMES[i])?;
    out.clear();
    match std::str::from_utf8(t) {
        Ok(t) => out.push_str(t),
        Err(_) => out.push_str(&String::from_utf8_lossy(t)),
    }
    Ok(())
}

/// Events per batch handed from the reading thread to the folding one.
const BATCH: usize = 1024;

/// Calls `check` on every event in sequence order (ties by event id) on this
/// thread as it reads it, and `f` on them, a batch at a time, on another
/// thread while this one reads the next rows from SQLite.
/// Batches of events are recycled, so memory does not grow with the table.
///
/// # Errors
/// [`Error::Sqlite`] when `events` cannot be read or holds a value of the
/// wrong type; the first error `f` returns (the reading then stops);
/// [`Error::Internal`] if `f` panics.
pub(super) fn each_event(
    conn: &Connection,
    order: Order,
    check: impl FnMut(&Event),
    f: impl FnMut(&[Event]) -> Result<()> + Send,
) -> Result<Streamed> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<Event>>(4);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<Event>>();
    std::thread::scope(|s| {
        let worker = s.spawn(move || -> Result<()> {
            let mut f = f;
            for batch in full_rx {
                f(&batch)?;
                // The reader may be gone already; the batch is then freed.
                let _ = empty_tx.send(batch);
            }
            Ok(())
        });
        let read = read_rows(conn, order, check, &full_tx, &empty_rx);
        drop(full_tx);
        let worked = worker
            .join()
            .map_err(|p| Error::internal("the validation fold", p.as_ref()))?;
        worked?;
        read
    })
}

fn empty_event() -> Event {
    Event {
        event_id: String::new(),
        event_type: String::new(),
        aggregate_id: String::new(),
        event_data: String::new(),
        sequence_number: 0,
        created_at: String::new(),
    }
}

/// The error of a row that cannot be read, built only when one cannot (not
/// per row: [`Error::sqlite`] allocates its action's text when called).
fn read_error(source: rusqlite::Error) -> Error {
    Error::sqlite("reading events")(source)
}

/// Reads the rows into batches and sends them; stops early (`Ok`) when the
/// receiver is gone (it failed, and says why).
fn read_rows(
    conn: &Connection,
    order: Order,
    mut check: impl FnMut(&Event),
    full: &std::sync::mpsc::SyncSender<Vec<Event>>,
    empty: &std::sync::mpsc::Receiver<Vec<Event>>,
) -> Result<Streamed> {
    let sql = match order {
        Order::Rowid => COLUMNS.to_string(),
        Order::Sorted => format!("{COLUMNS} ORDER BY sequence_number, event_id"),
    };
    let mut row = Query::prepare(conn, &sql).map_err(read_error)?;
    // The last event of the batches sent, for the order check.
    let mut prev: Option<(i64, String)> = None;
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut n = 0;
    let send = |batch: &mut Vec<Event>, n: &mut usize, prev: &mut Option<(i64, String)>| -> bool {
        batch.truncate(*n);
        *n = 0;
        if let Some(last) = batch.last() {
            let (s, id) = prev.get_or_insert_with(|| (0, String::new()));
            *s = last.sequence_number;
            id.clear();
            id.push_str(&last.event_id);
        }
        let next = empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        full.send(std::mem::replace(batch, next)).is_ok()
    };
    while row.step().map_err(read_error)? {
        if n == batch.len() {
            batch.push(empty_event());
        }
        let ev = &mut batch[n];
        (|| -> rusqlite::Result<()> {
            text_into(&row, 0, &mut ev.event_id)?;
            text_into(&row, 1, &mut ev.event_type)?;
            text_into(&row, 2, &mut ev.aggregate_id)?;
            text_into(&row, 3, &mut ev.event_data)?;
            ev.sequence_number = row.int(4, NAMES[4])?;
            text_into(&row, 5, &mut ev.created_at)
        })()
        .map_err(read_error)?;
        if order == Order::Rowid {
            let before = match n.checked_sub(1) {
                Some(p) => Some((batch[p].sequence_number, batch[p].event_id.as_str())),
                None => prev.as_ref().map(|(s, id)| (*s, id.as_str())),
            };
            let ev = &batch[n];
            if before.is_some_and(|b| b >= (ev.sequence_number, ev.event_id.as_str())) {
                return Ok(Streamed::OutOfOrder);
            }
        }
        check(&batch[n]);
        n += 1;
        if n == BATCH && !send(&mut batch, &mut n, &mut prev) {
            return Ok(Streamed::Done);
        }
    }
    if n > 0 {
        send(&mut batch, &mut n, &mut prev);
    }
    Ok(Streamed::Done)
}

/// Events ahead of the one being folded whose texts are prefetched.
pub(super) const PREFETCH_AHEAD: usize = 3;

/// Asks the CPU to bring the texts the fold reads of an event into its
/// cache. The reading thread wrote them on the other CPU, each in an
/// allocation of its own, so without this the fold waits on a cache miss at
/// the first byte of each (most of the JSON reader's time at 1M events,
/// `benches/README.md`).
#[inline(always)]
pub(super) fn prefetch_event(ev: &Event) {
    prefetch(ev.event_type.as_ptr());
    prefetch(ev.aggregate_id.as_ptr());
    prefetch(ev.event_data.as_ptr());
    // Most event data spans two cache lines.
    prefetch(ev.event_data.as_ptr().wrapping_add(64));
    prefetch(ev.created_at.as_ptr());
}

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, whatever the
    // address (so `wrapping_add` past an end is fine), reads nothing the
    // program sees, and SSE is part of every x86_64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
