//! One segment of a replay (the events between two extension events): the
//! chunks are taken as they arrive, each sent to the fold's thread and its
//! event rows inserted on this one; at the segment's end the folded rows are
//! written.

use std::collections::HashMap;

use rusqlite::Transaction;

use crate::effects;
use crate::error::{Error, Result};
use crate::event::Event;

use super::chunks::Chunks;
use super::fold::Fold;
use super::rows::{EventInserter, EventRows};
use super::write::write_folded;
use super::{check_sequence, EventExtension, ReplayReport, UnknownType};

/// Events per chunk when a replay is given a slice.
pub(super) const CHUNK: usize = 16_384;

/// What the replay has taken so far, over every segment.
pub(super) struct Progress<'e> {
    pub(super) report: ReplayReport,
    /// The sequence number the next event must follow, when checked.
    after: Option<i64>,
    /// Which extension handles each unknown type, decided once per type.
    handler: HashMap<&'e str, Option<usize>>,
}

impl<'e> Progress<'e> {
    pub(super) fn new(after: Option<i64>) -> Self {
        Progress {
            report: ReplayReport::default(),
            after,
            handler: HashMap::new(),
        }
    }

    /// Takes `chunk` up to its first event that an extension handles,
    /// included: counts it in the report and checks its sequence numbers.
    /// Returns the number of events taken and the extension, if one ends it.
    fn take(
        &mut self,
        chunk: &'e [Event],
        extensions: &[Box<dyn EventExtension + Send>],
    ) -> Result<(usize, Option<usize>)> {
        let mut taken = chunk.len();
        let mut ext = None;
        for (i, ev) in chunk.iter().enumerate() {
            if effects::is_known(&ev.event_type) {
                continue;
            }
            let h = *self
                .handler
                .entry(ev.event_type.as_str())
                .or_insert_with(|| extensions.iter().position(|x| x.handles(&ev.event_type)));
            match h {
                Some(x) => {
                    self.report.handled_by_extension += 1;
                    (taken, ext) = (i + 1, Some(x));
                    break;
                }
                None => {
                    let u =
                        self.report
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
        let part = &chunk[..taken];
        if let Some(after) = self.after {
            check_sequence(after, part)?;
        }
        if let (Some(first), Some(last)) = (part.first(), part.last()) {
            let r = &mut self.report;
            r.applied += part.len() as u64;
            r.first_sequence.get_or_insert(first.sequence_number);
            r.last_sequence = Some(last.sequence_number);
            r.last_created_at = Some(last.created_at.clone());
            if self.after.is_some() {
                self.after = Some(last.sequence_number);
            }
        }
        Ok((taken, ext))
    }
}

/// Replays chunks until the stream ends or an extension's event (returned
/// with its extension, its row not inserted, the rest of its chunk left in
/// `pending`); `no_journal`: the projection rows may go in by multi-row
/// statements. Of the errors of the events taken, the one with the lowest
/// index is returned; a chunk that cannot be read or a sequence number that
/// does not follow ends the replay at once.
pub(super) fn replay_segment<'e>(
    tx: &Transaction<'_>,
    chunks: &mut impl Iterator<Item = std::result::Result<&'e [Event], String>>,
    pending: &mut Option<&'e [Event]>,
    progress: &mut Progress<'e>,
    extensions: &[Box<dyn EventExtension + Send>],
    rows: EventRows,
    no_journal: bool,
) -> Result<Option<(&'e Event, usize)>> {
    let t0 = std::time::Instant::now();
    let mut split = None;
    let (taken, joined) = std::thread::scope(|s| {
        let (send, recv) = std::sync::mpsc::channel::<&'e [Event]>();
        let folder = s.spawn(move || {
            let mut fold = Fold::new();
            let mut events = Chunks::default();
            for chunk in recv {
                let offset = events.push(chunk);
                fold.add(offset, chunk, &events);
            }
            tracing::debug!("fold done in {:?}", t0.elapsed());
            (fold.finish(), events)
        });
        let mut inserter = EventInserter::new(tx, rows);
        // Err: the replay ends now; Ok(Err): an event row failed (the fold's
        // errors of earlier events may still come first).
        let taken = (|| -> Result<Result<()>> {
            loop {
                let chunk = match pending.take() {
                    Some(c) => c,
                    None => match chunks.next() {
                        None => return Ok(Ok(())),
                        Some(Err(m)) => return Err(Error::EventSource(m)),
                        Some(Ok(c)) => c,
                    },
                };
                let (n, ext) = progress.take(chunk, extensions)?;
                let (part, rest) = chunk.split_at(n);
                let part = match ext {
                    Some(x) => {
                        let (ev, before) = part.split_last().ok_or_else(|| Error::Internal {
                            what: "the replay's extension split",
                            message: "an empty part".into(),
                        })?;
                        split = Some((ev, x));
                        *pending = (!rest.is_empty()).then_some(rest);
                        before
                    }
                    None => part,
                };
                if !part.is_empty() {
                    // The fold's thread is gone only if it panicked: the
                    // join below reports it.
                    let _ = send.send(part);
                    if let Err(e) = inserter.insert(part) {
                        return Ok(Err(e));
                    }
                }
                if split.is_some() {
                    return Ok(Ok(()));
                }
            }
        })();
        drop(send);
        tracing::debug!("event rows done in {:?}", t0.elapsed());
        (taken, folder.join())
    });
    let (folded, events) =
        joined.map_err(|payload| Error::internal("the replay fold", payload.as_ref()))?;
    let rows_result = taken?;
    write_folded(tx, &events, rows_result, folded, no_journal)?;
    Ok(split)
}
