//! The archived events streamed into the replay: event-replay's input from
//! the archive (decode, select, apply) as one pipeline instead of three steps.
//!
//! SQLite inserts the event rows on one thread, which is the replay's
//! critical path; decoding the event objects and selecting their rows
//! (UTF-8, each `created_at` read as a time) is work for the other CPUs. So
//! decoder threads take the objects in order, each into its own slot, and
//! the replay takes each object's events as soon as its slot is filled
//! (`genesis_trading::replay::replay_stream`), while the next ones decode.
//!
//! This needs the objects in sequence order and disjoint, which is how
//! capture writes them; the sequence numbers of every object are read first
//! without decoding ([`formats::event_sequences`], a few milliseconds for a
//! million events). Otherwise (objects out of order or overlapping, as a
//! resumed capture can leave them, or an object that does not parse) every
//! object is decoded first and [`select_events`] sorts the rows, as before.
//! Both give the same events and the same errors: the rows above the
//! database's highest sequence number, up to the first whose `created_at`
//! is after the target (an error in a row before that fails the replay),
//! and of those the run without a hole in the sequence numbers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use rusqlite::Connection;

use genesis_core::pipeline::EncodedEvents;
use genesis_core::repo::formats::{self, EventSequences};
use genesis_core::{Error, Result};
use genesis_trading::replay::{replay_stream, replay_with_extensions};
use genesis_trading::{Event, EventExtension, ReplayOptions, ReplayReport};

use crate::event_replay::{contiguous_prefix, select_event, select_events};

/// The archived row of an event, as capture stores it (for tests and benches
/// that build archives).
pub fn event_row(ev: &Event) -> formats::EventRow {
    formats::EventRow {
        sequence_number: ev.sequence_number,
        event_id: ev.event_id.clone().into_bytes(),
        event_type: ev.event_type.clone().into_bytes(),
        aggregate_id: ev.aggregate_id.clone().into_bytes(),
        event_data: ev.event_data.clone().into_bytes(),
        created_at: ev.created_at.clone().into_bytes(),
    }
}

/// What a replay from the archive did.
pub struct ArchiveReplay {
    pub report: ReplayReport,
    /// Where the archive has a hole, if the replay stopped at one:
    /// (expected, found) sequence numbers.
    pub archive_gap: Option<(i64, i64)>,
    /// The decoded events, to be freed away from the critical path (a
    /// million events are five million strings).
    pub events: Box<dyn Send>,
}

/// Why a replay from the archive failed.
#[derive(Debug)]
pub enum ArchiveReplayError {
    /// An archived event could not be read (before anything was written on
    /// the slow path; possibly after, when streaming).
    Archive(Error),
    /// The replay failed.
    Replay(genesis_trading::Error),
}

/// Replays the archived events above `after` with `created_at` at or before
/// `until` onto `conn` (see the module documentation); `opts.after_sequence`
/// should be `Some(after)`.
///
/// # Errors
/// [`ArchiveReplayError::Archive`] naming an event of the replayed prefix
/// that is not UTF-8 text or whose `created_at` is not a time, or an object
/// that does not decode; [`ArchiveReplayError::Replay`] with the replay's
/// error. In the staging mode the database must be discarded after either.
pub fn replay_archive(
    conn: &mut Connection,
    objects: &[EncodedEvents],
    after: i64,
    until: DateTime<Utc>,
    opts: &ReplayOptions,
    extensions: &mut [Box<dyn EventExtension + Send>],
) -> std::result::Result<ArchiveReplay, ArchiveReplayError> {
    let t0 = std::time::Instant::now();
    let bounds: Option<Vec<EventSequences>> = objects
        .par_iter()
        .map(|o| formats::event_sequences(&o.id, o.content()).ok())
        .collect();
    let streamable = bounds.filter(|b| in_order_and_disjoint(b));
    tracing::debug!(
        streamed = streamable.is_some(),
        "event objects' sequence numbers read in {:?}",
        t0.elapsed()
    );
    match streamable {
        Some(bounds) => stream(conn, objects, &bounds, after, until, opts, extensions),
        None => decode_first(conn, objects, after, until, opts, extensions),
    }
}

/// Whether the non-empty objects, in the given order, hold increasing
/// sequence numbers, each above the one before it.
fn in_order_and_disjoint(bounds: &[EventSequences]) -> bool {
    let mut last: Option<i64> = None;
    for b in bounds {
        if !b.increasing {
            return false;
        }
        if let (Some(first), Some(prev)) = (b.first, last) {
            if first <= prev {
                return false;
            }
        }
        last = b.last.or(last);
    }
    true
}

/// The slow path: every object decoded, then the rows sorted and selected.
fn decode_first(
    conn: &mut Connection,
    objects: &[EncodedEvents],
    after: i64,
    until: DateTime<Utc>,
    opts: &ReplayOptions,
    extensions: &mut [Box<dyn EventExtension + Send>],
) -> std::result::Result<ArchiveReplay, ArchiveReplayError> {
    let decoded = objects
        .par_iter()
        .map(|o| formats::decode_events(&o.id, o.content()).map(Arc::new))
        .collect::<Result<Vec<_>>>()
        .map_err(ArchiveReplayError::Archive)?;
    let mut events = select_events(decoded, after, until).map_err(ArchiveReplayError::Archive)?;
    let archive_gap = contiguous_prefix(&mut events, after);
    let report = replay_with_extensions(conn, &events, opts, extensions)
        .map_err(ArchiveReplayError::Replay)?;
    Ok(ArchiveReplay {
        report,
        archive_gap,
        events: Box::new(events),
    })
}

/// How an object's selected rows end.
#[derive(Debug)]
enum End {
    /// A row after the target: the rows before it are the last replayed.
    Cut,
    /// A row that cannot be read: the replay fails.
    Failed(Error),
}

/// One object's events above `after`, up to its end, if it has one.
#[derive(Debug, Default)]
struct Decoded {
    events: Vec<Event>,
    end: Option<End>,
}

fn decode_one(o: &EncodedEvents, b: &EventSequences, after: i64, until: DateTime<Utc>) -> Decoded {
    let mut out = Decoded::default();
    if b.last.is_none_or(|last| last <= after) {
        return out;
    }
    let mut rows = match formats::decode_events(&o.id, o.content()) {
        Ok(rows) => rows,
        Err(e) => {
            out.end = Some(End::Failed(e));
            return out;
        }
    };
    out.events.reserve(rows.len());
    for row in rows.iter_mut().filter(|r| r.sequence_number > after) {
        match select_event(row, until) {
            Ok(Some(ev)) => out.events.push(ev),
            Ok(None) => {
                out.end = Some(End::Cut);
                break;
            }
            Err(e) => {
                out.end = Some(End::Failed(e));
                break;
            }
        }
    }
    out
}

/// The objects' slots, filled by the decoders, and a signal for each filling.
struct Slots {
    slots: Vec<OnceLock<Decoded>>,
    filled: Mutex<()>,
    signal: Condvar,
}

impl Slots {
    fn fill(&self, i: usize, d: Decoded) {
        // Each slot is taken by one decoder only: it is empty here.
        let _ = self.slots[i].set(d);
        drop(self.filled.lock().unwrap_or_else(PoisonError::into_inner));
        self.signal.notify_all();
    }

    fn wait(&self, i: usize) -> &Decoded {
        let mut guard = self.filled.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(d) = self.slots[i].get() {
                return d;
            }
            guard = self
                .signal
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The fast path: decoders fill the slots in order while the replay takes them.
fn stream(
    conn: &mut Connection,
    objects: &[EncodedEvents],
    bounds: &[EventSequences],
    after: i64,
    until: DateTime<Utc>,
    opts: &ReplayOptions,
    extensions: &mut [Box<dyn EventExtension + Send>],
) -> std::result::Result<ArchiveReplay, ArchiveReplayError> {
    let slots = Slots {
        slots: objects.iter().map(|_| OnceLock::new()).collect(),
        filled: Mutex::new(()),
        signal: Condvar::new(),
    };
    let next = AtomicUsize::new(0);
    // The first object with an end: no object after it is needed.
    let last_needed = AtomicUsize::new(usize::MAX);
    let stop = AtomicBool::new(false);
    // SQLite's thread keeps a CPU to itself where there are few.
    let decoders = rayon::current_num_threads().saturating_sub(1).clamp(1, 4);
    let outcome = std::thread::scope(|s| {
        for _ in 0..decoders {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= objects.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                if i > last_needed.load(Ordering::Relaxed) {
                    slots.fill(i, Decoded::default());
                    continue;
                }
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    decode_one(&objects[i], &bounds[i], after, until)
                }))
                .unwrap_or_else(|payload| Decoded {
                    events: Vec::new(),
                    end: Some(End::Failed(Error::Failed(format!(
                        "event object {}: {}",
                        objects[i].id,
                        genesis_trading::Error::internal("its decoder", payload.as_ref())
                    )))),
                });
                if decoded.end.is_some() {
                    last_needed.fetch_min(i, Ordering::Relaxed);
                }
                slots.fill(i, decoded);
            });
        }
        let mut source = Selected {
            slots: &slots,
            next: 0,
            expected: after + 1,
            gap: None,
            failed: None,
            done: false,
            waited: std::time::Duration::ZERO,
        };
        let replayed = replay_stream(conn, &mut source, opts, extensions);
        // The decoders stop at their next object.
        stop.store(true, Ordering::Relaxed);
        tracing::debug!("the replay waited {:?} for decoded objects", source.waited);
        (replayed, source.gap, source.failed.take())
    });
    let (replayed, archive_gap, failed) = outcome;
    let mut slots = slots.slots;
    if let Some(i) = failed {
        if let Some(Decoded {
            end: Some(End::Failed(e)),
            ..
        }) = slots.get_mut(i).and_then(OnceLock::take)
        {
            return Err(ArchiveReplayError::Archive(e));
        }
    }
    let report = replayed.map_err(ArchiveReplayError::Replay)?;
    Ok(ArchiveReplay {
        report,
        archive_gap,
        events: Box::new(slots),
    })
}

/// The selected events, object by object, as the replay's source: cut at
/// the first row after the target and at the first hole in the sequence
/// numbers (after which the objects are still read for a failure).
struct Selected<'s> {
    slots: &'s Slots,
    next: usize,
    /// The sequence number the next event must have.
    expected: i64,
    gap: Option<(i64, i64)>,
    /// The object whose failure ended the stream, if one did.
    failed: Option<usize>,
    done: bool,
    /// How long the replay waited for decoded objects.
    waited: std::time::Duration,
}

impl<'s> Iterator for Selected<'s> {
    type Item = std::result::Result<&'s [Event], String>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.next < self.slots.slots.len() {
            let t = std::time::Instant::now();
            let d = self.slots.wait(self.next);
            self.waited += t.elapsed();
            self.next += 1;
            if let Some(End::Failed(e)) = &d.end {
                self.done = true;
                self.failed = Some(self.next - 1);
                return Some(Err(e.to_string()));
            }
            self.done = matches!(d.end, Some(End::Cut));
            if self.gap.is_some() {
                continue;
            }
            // Increasing, so contiguous when the last is where the first says.
            let evs = &d.events[..];
            let run = match (evs.first(), evs.last()) {
                (Some(first), Some(last))
                    if first.sequence_number == self.expected
                        && last.sequence_number - first.sequence_number == evs.len() as i64 - 1 =>
                {
                    evs.len()
                }
                _ => (self.expected..)
                    .zip(evs)
                    .take_while(|(want, ev)| ev.sequence_number == *want)
                    .count(),
            };
            if let Some(ev) = evs.get(run) {
                let expected = self.expected + run as i64;
                tracing::warn!(
                    expected,
                    found = ev.sequence_number,
                    "the event archive has a gap: replay stops before it"
                );
                self.gap = Some((expected, ev.sequence_number));
            }
            self.expected += run as i64;
            if run > 0 {
                return Some(Ok(&evs[..run]));
            }
        }
        self.done = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genesis_core::repo::formats::EventRow;

    fn encode(events: &[Event], sizes: &[usize]) -> Vec<EncodedEvents> {
        let mut out = Vec::new();
        let mut at = 0;
        for (i, &size) in sizes.iter().cycle().enumerate() {
            if at >= events.len() {
                break;
            }
            let end = (at + size).min(events.len());
            let rows: Vec<EventRow> = events[at..end].iter().map(event_row).collect();
            out.push(EncodedEvents {
                id: format!("events-{i}"),
                frames: Arc::new(vec![formats::encode_events(&rows)]),
            });
            at = end;
        }
        out
    }

    fn dump(c: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for t in ["events", "orders", "positions", "balances", "system_state"] {
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
                })
                .unwrap();
            for row in rows {
                out.push(format!("{t}: {}", row.unwrap().join("|")));
            }
        }
        out
    }

    type Case<'a> = (
        &'a str,
        Vec<usize>,
        i64,
        DateTime<Utc>,
        Option<usize>,
        Option<usize>,
    );

    type Outcome = std::result::Result<(ReplayReport, Option<(i64, i64)>, Vec<String>), String>;

    /// Replays `objects` onto a copy of the database `base` made of the
    /// first `after` events, by the streamed path or the decode-first one.
    fn run(
        dir: &std::path::Path,
        name: &str,
        events: &[Event],
        objects: &[EncodedEvents],
        after: i64,
        until: DateTime<Utc>,
        streamed: bool,
    ) -> Outcome {
        let path = dir.join(name);
        let mut conn = Connection::open(&path).unwrap();
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        genesis_trading::schema::ensure_schema(&conn).unwrap();
        let first = &events[..after as usize];
        genesis_trading::replay(&mut conn, first, &ReplayOptions::default()).unwrap();
        let opts = ReplayOptions {
            staging: true,
            after_sequence: Some(after),
            ..ReplayOptions::default()
        };
        let result = if streamed {
            let bounds: Vec<EventSequences> = objects
                .iter()
                .map(|o| formats::event_sequences(&o.id, o.content()).unwrap())
                .collect();
            assert!(in_order_and_disjoint(&bounds), "the premise: streamed");
            stream(&mut conn, objects, &bounds, after, until, &opts, &mut [])
        } else {
            decode_first(&mut conn, objects, after, until, &opts, &mut [])
        };
        match result {
            Ok(r) => {
                let check: String = conn
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(check, "ok", "{name}");
                Ok((r.report, r.archive_gap, dump(&conn)))
            }
            Err(ArchiveReplayError::Archive(e)) => Err(format!("archive: {e}")),
            Err(ArchiveReplayError::Replay(e)) => Err(format!("replay: {e}")),
        }
    }

    /// The streamed path gives what decoding everything first gives: the
    /// same rows, report, gap and errors, whatever the objects' sizes, the
    /// database's last event, the target, a lost object or a bad row.
    #[test]
    fn streaming_equals_decoding_first() {
        let dir = tempfile::tempdir().unwrap();
        let events = genesis_trading::random_events(23, 3000);
        let time_of = |i: usize| events[i].time().unwrap();
        let end = time_of(2999) + chrono::Duration::seconds(1);
        // What, object sizes, the database's last event, the target, the
        // object lost and the event made bad.
        let cases: Vec<Case<'_>> = vec![
            ("all", vec![1000], 0, end, None, None),
            ("uneven", vec![1, 257, 640], 0, end, None, None),
            ("after the database", vec![300], 1234, end, None, None),
            ("to a time", vec![500, 77], 100, time_of(2100), None, None),
            ("a lost object", vec![400], 0, end, Some(3), None),
            ("a bad row", vec![700], 0, end, None, Some(1700)),
            (
                "a bad row after the target",
                vec![700],
                0,
                time_of(1500),
                None,
                Some(1700),
            ),
            (
                "a bad row after a lost object",
                vec![300],
                0,
                end,
                Some(1),
                Some(1700),
            ),
        ];
        for (k, (what, sizes, after, until, lost, bad_row)) in cases.into_iter().enumerate() {
            let mut objects = encode(&events, &sizes);
            if let Some(i) = bad_row {
                // Event data that is not UTF-8, in whichever object holds it.
                let (mut seen, mut o) = (0, 0);
                while seen + sizes[o % sizes.len()] <= i {
                    seen += sizes[o % sizes.len()];
                    o += 1;
                }
                let mut rows = formats::decode_events("x", objects[o].content()).unwrap();
                rows[i - seen].event_data = vec![0xff, b'{'];
                objects[o].frames = Arc::new(vec![formats::encode_events(&rows)]);
            }
            if let Some(i) = lost {
                objects.remove(i);
            }
            let a = run(
                dir.path(),
                &format!("s{k}.db"),
                &events,
                &objects,
                after,
                until,
                true,
            );
            let b = run(
                dir.path(),
                &format!("d{k}.db"),
                &events,
                &objects,
                after,
                until,
                false,
            );
            assert_eq!(a, b, "{what}");
            match (what, &a) {
                ("a lost object", Ok((_, gap, _))) => assert_eq!(*gap, Some((1201, 1601))),
                ("a bad row" | "a bad row after a lost object", Err(e)) => {
                    assert!(e.contains("archived event #1701 has a event_data"), "{e}")
                }
                ("a bad row" | "a bad row after a lost object" | "a lost object", _) => {
                    panic!("{what}: {a:?}")
                }
                (_, Ok((r, None, _))) => assert!(r.applied > 0, "{what}"),
                _ => panic!("{what}: {a:?}"),
            }
        }
    }
}
