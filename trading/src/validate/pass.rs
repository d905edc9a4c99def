//! The one pass over the events, on the thread that folds them: the fold for
//! rules 9 and 10, as the events stream by ([`super::stream`]; rules 2 and 3
//! and the event warnings are [`super::checks`], on the reading thread);
//! nothing grows with the history but the state and capped lists of findings.
//!
//! Rule 10 and the cost of the canonical hash: the hash of a state is BLAKE3
//! over every row of it, and BLAKE3 is not incremental under row updates (a
//! changed row shifts every byte after it into other 1 KiB chunks), so each
//! checkpoint hashed costs the whole state. Hashing every checkpoint is
//! O(checkpoints x state); the pass therefore hashes, by default, the newest
//! `blake3:` checkpoint and those after [`super::ValidateOptions::checkpoints_after`]
//! (the range a restore replayed), and all of them with
//! [`super::ValidateOptions::all_checkpoints`]. The newest one is only known at the
//! end: from each checkpoint not hashed at once, the fold keeps the first prior
//! version of every row it changes, and rolls back to it at the end. The metrics
//! name what was not checked.

use serde_json::{json, Map, Value};

use super::checks::Held;
use super::fold::{State, Vals};
use super::ValidateOptions;
use crate::error::Result;
use crate::event::Event;

/// A checkpoint with a `blake3:` hash.
struct Checkpoint {
    id: String,
    sequence: i64,
    hash: String,
}

pub(super) struct Pass<'o> {
    opts: &'o ValidateOptions,
    cap: usize,
    fold: Option<State>,
    pub(super) replay_failed: Option<String>,
    pub(super) checkpoint_errors: Held,
    /// The newest `blake3:` checkpoint's sequence number, when known before
    /// the pass ([`newest_checkpoint`]): no prior versions of rows are kept
    /// before it, and it is hashed at the end (beside rule 9) from those kept
    /// after it, or when reached where every row's rendering is kept.
    newest: Option<i64>,
    /// The last `blake3:` checkpoint the pass reached.
    last_seen: Option<i64>,
    /// Without `newest`: the newest checkpoint not hashed when it was reached
    /// (the fold keeps the rows as they were there).
    pending: Option<Checkpoint>,
    /// The pending checkpoint is the newest, known before the pass: hashed
    /// at the end even if the fold fails after it.
    pending_is_newest: bool,
    checked: u64,
    unchecked: Unchecked,
    /// The pass's metrics, once finished.
    pub(super) metrics: Map<String, Value>,
}

/// The checkpoints not rehashed: how many, the first and the last.
#[derive(Default)]
struct Unchecked {
    count: u64,
    first: Option<i64>,
    last: Option<i64>,
}

impl Unchecked {
    fn push(&mut self, sequence: i64) {
        self.count += 1;
        self.first.get_or_insert(sequence);
        self.last = Some(sequence);
    }
}

/// Events read back from the end to find the newest checkpoint before the
/// pass; beyond them the pass finds it itself (keeping prior row versions).
const NEWEST_SCAN: i64 = 100_000;

/// The sequence number of the newest `blake3:` checkpoint, read backwards
/// from the last event in rowid order, among the last [`NEWEST_SCAN`] events;
/// `None` when there is none there. Right only when the table is in sequence
/// order by rowid, which the pass checks (a pass in sorted order passes
/// `None`), and when read in the pass's transaction.
///
/// # Errors
/// [`crate::Error::Sqlite`] when `events` cannot be read.
pub(super) fn newest_checkpoint(conn: &rusqlite::Connection) -> Result<Option<i64>> {
    let sql = "SELECT sequence_number, event_data FROM events \
               WHERE rowid > (SELECT max(rowid) FROM events) - ?1 AND event_type = 'CHECKPOINT' \
               ORDER BY rowid DESC";
    let fail = crate::Error::sqlite("finding the newest checkpoint");
    let mut stmt = conn.prepare(sql).map_err(fail)?;
    let mut rows = stmt
        .query([NEWEST_SCAN])
        .map_err(crate::Error::sqlite("finding the newest checkpoint"))?;
    while let Some(r) = rows
        .next()
        .map_err(crate::Error::sqlite("finding the newest checkpoint"))?
    {
        let (Ok(seq), Ok(data)) = (r.get::<_, i64>(0), r.get_ref(1)) else {
            continue;
        };
        let data = data.as_str().unwrap_or_default();
        if recorded_hash(data).is_some() {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// A CHECKPOINT's recorded `blake3:` state hash.
fn recorded_hash(event_data: &str) -> Option<String> {
    serde_json::from_str::<Value>(event_data)
        .ok()
        .and_then(|d| {
            d.get("state_hash")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|h| h.starts_with("blake3:"))
}

impl<'o> Pass<'o> {
    /// A pass; `newest` is [`newest_checkpoint`]'s answer (or `None`).
    pub(super) fn new(opts: &'o ValidateOptions, newest: Option<i64>) -> Result<Pass<'o>> {
        Ok(Pass {
            opts,
            cap: opts.max_findings_per_rule.max(1),
            fold: if opts.check_replay || opts.check_checkpoints {
                // Many hashes: every checkpoint, or those a restore replayed.
                Some(State::new(
                    opts.all_checkpoints || opts.checkpoints_after.is_some(),
                )?)
            } else {
                None
            },
            replay_failed: None,
            checkpoint_errors: Held::default(),
            newest,
            last_seen: None,
            pending: None,
            pending_is_newest: false,
            checked: 0,
            unchecked: Unchecked::default(),
            metrics: Map::new(),
        })
    }

    /// Folds a batch of events, in order.
    pub(super) fn events(&mut self, batch: &[Event]) -> Result<()> {
        // The effects' assignments, one buffer for the batch (they borrow
        // from its events).
        let mut vals = Vals::with_capacity(32);
        for (i, ev) in batch.iter().enumerate() {
            if let Some(ahead) = batch.get(i + super::stream::PREFETCH_AHEAD) {
                super::stream::prefetch_event(ahead);
            }
            self.fold_event(ev, &mut vals)?;
        }
        Ok(())
    }

    fn fold_event<'e>(&mut self, ev: &'e Event, vals: &mut Vals<'e>) -> Result<()> {
        let Some(state) = &mut self.fold else {
            return Ok(());
        };
        if let Err(e) = state.apply(ev, vals) {
            if matches!(e, crate::Error::Sqlite { .. }) {
                return Err(e);
            }
            self.replay_failed = Some(format!("replaying the events from the first fails: {e}"));
            // The newest checkpoint, deferred, is hashed as it was (what
            // hashing it when reached gave); an older pending one is not.
            let deferred = match self.pending.take() {
                Some(ck) if self.pending_is_newest => {
                    state.roll_back();
                    Some((state.hash()?, ck))
                }
                Some(ck) => {
                    self.unchecked.push(ck.sequence);
                    None
                }
                None => None,
            };
            self.fold = None;
            if let Some((actual, ck)) = deferred {
                self.verdict(&ck, &actual);
            }
            return Ok(());
        }
        if ev.event_type != "CHECKPOINT" || !self.opts.check_checkpoints {
            return Ok(());
        }
        let Some(hash) = recorded_hash(&ev.event_data) else {
            return Ok(());
        };
        let ck = Checkpoint {
            id: ev.aggregate_id.clone(),
            sequence: ev.sequence_number,
            hash,
        };
        self.last_seen = Some(ev.sequence_number);
        if let Some(old) = self.pending.take() {
            self.unchecked.push(old.sequence);
        }
        let now = self.opts.all_checkpoints
            || self.newest == Some(ev.sequence_number)
            || self
                .opts
                .checkpoints_after
                .is_some_and(|after| ev.sequence_number > after);
        if now && self.newest == Some(ev.sequence_number) && !state.keeps_lines() {
            // The only hash of this pass: deferred to its end, where it runs
            // beside rule 9's reading of the tables ([`State::finish`]).
            state.start_undo();
            self.pending = Some(ck);
            self.pending_is_newest = true;
        } else if now {
            state.stop_undo();
            let actual = state.hash()?;
            self.verdict(&ck, &actual);
        } else if self.newest.is_some() {
            self.unchecked.push(ck.sequence);
        } else {
            state.start_undo();
            self.pending = Some(ck);
        }
        Ok(())
    }

    fn verdict(&mut self, ck: &Checkpoint, actual: &str) {
        self.checked += 1;
        if actual != ck.hash {
            let m = format!(
                "checkpoint {} (event #{}): state_hash {} differs from the replayed state's {actual}",
                ck.id, ck.sequence, ck.hash
            );
            self.checkpoint_errors.push(self.cap, m);
        }
    }

    /// Ends the pass: compares the final state with the tables (rule 9),
    /// hashes the pending checkpoint (beside the comparison, see
    /// [`State::finish`]), and writes the metrics.
    pub(super) fn finish(
        mut self,
        conn: &rusqlite::Connection,
        metrics: &mut Map<String, Value>,
    ) -> Result<(Self, Vec<String>)> {
        let mut diffs = Vec::new();
        if let Some(mut state) = self.fold.take() {
            let pending = self.pending.take();
            let (found, actual) = state.finish(conn, self.opts.check_replay, pending.is_some())?;
            diffs = found;
            if let (Some(ck), Some(actual)) = (pending, actual) {
                self.verdict(&ck, &actual);
            }
            if self.opts.check_checkpoints && self.newest.is_some() && self.last_seen != self.newest
            {
                // Read in one transaction with the pass, so not expected;
                // said rather than passed over if it happens.
                let m = format!(
                    "the newest checkpoint was found at event #{} before the pass but the pass's newest is #{}; validate again",
                    self.newest.unwrap_or_default(),
                    self.last_seen.unwrap_or_default()
                );
                self.checkpoint_errors.push(self.cap, m);
            }
            // The state is a few hundred thousand allocations of the fold's
            // thread: freed beside the rest of the validation, not before it.
            std::thread::spawn(move || drop(state));
        }
        if self.opts.check_checkpoints {
            let mut ck = Map::new();
            ck.insert("checked".into(), json!(self.checked));
            ck.insert("not_checked".into(), json!(self.unchecked.count));
            if let (Some(first), Some(last)) = (self.unchecked.first, self.unchecked.last) {
                ck.insert("not_checked_first_sequence".into(), json!(first));
                ck.insert("not_checked_last_sequence".into(), json!(last));
                ck.insert(
                    "note".into(),
                    json!("checkpoints older than the newest and outside the replayed range are not rehashed by default; validate --full checks every one"),
                );
            }
            metrics.insert("checkpoint_hashes".into(), Value::Object(ck));
        }
        Ok((self, diffs))
    }
}
