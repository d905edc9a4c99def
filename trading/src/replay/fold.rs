//! The replay's fold: each event's effect parsed (in parallel, given CPUs to
//! spare beside SQLite's) and folded in memory into the final value of each
//! row it touches, so that each projection row is written once. The fold is
//! incremental: chunks of events are added in sequence order as they arrive
//! (while SQLite inserts their event rows on another thread), and
//! [`Fold::finish`] gives the rows in the order their first event touched them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use crate::effects::{self, OpAt, OpKind, RowOp, SqlVal, Table};
use crate::error::Error;
use crate::event::Event;

use super::chunks::Chunks;

/// A small fast hasher for the fold's maps (keys are short ids).
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(crate) type FxSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

fn partition_of(table: Table, key: &str, parts: usize) -> usize {
    let mut h = FxHasher::default();
    h.write_u8(table as u8);
    h.write(key.as_bytes());
    // Mix the high bits down so that the modulus sees them.
    let x = h.finish();
    ((x ^ (x >> 29)) % parts as u64) as usize
}

/// How the fold knows a row.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    /// Inserted by the event at this index.
    Created(usize),
    /// Updated first by the event at this index: it must exist in the database.
    MustExist(usize),
    /// Upserted: whether it exists does not matter.
    Upsert,
}

#[derive(Debug)]
pub(super) struct RowState<'a> {
    pub(super) table: Table,
    pub(super) key: Cow<'a, str>,
    pub(super) first: usize,
    pub(super) mode: Mode,
    /// An insert after a [`Mode::MustExist`] update: an error either way.
    pub(super) late_insert: Option<usize>,
    pub(super) cols: Vec<Option<SqlVal<'a>>>,
}

impl<'a> RowState<'a> {
    fn assign(&mut self, set: &[(u8, SqlVal<'a>)]) {
        for (c, v) in set {
            self.cols[usize::from(*c)] = Some(v.clone());
        }
    }
    pub(super) fn mask(&self) -> u32 {
        self.cols
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .fold(0, |m, (i, _)| m | (1 << i))
    }
}

/// The folded effects of a segment.
pub(super) struct Folded<'a> {
    pub(super) rows: Vec<RowState<'a>>,
    pub(super) appends: Vec<(usize, RowOp<'a>)>,
    /// Errors found while folding: (event index, error).
    pub(super) errors: Vec<(usize, Error)>,
}

/// Events per parsing task.
const PARSE_CHUNK: usize = 4_096;

/// One parsing task's output: the assignments of its operations (which the
/// operations index into), its operations per partition, and its errors.
struct Parsed<'a> {
    vals: Vec<(u8, SqlVal<'a>)>,
    per_part: Vec<Vec<(usize, OpAt<'a>)>>,
    errors: Vec<(usize, Error)>,
}

/// One partition's rows, by key, and its appends and errors so far.
#[derive(Default)]
struct Part<'a> {
    map: FxMap<(Table, Cow<'a, str>), RowState<'a>>,
    appends: Vec<(usize, RowOp<'a>)>,
    errors: Vec<(usize, Error)>,
}

/// The fold of the events added so far (see the module documentation).
pub(super) struct Fold<'a> {
    parts: Vec<Part<'a>>,
    /// Errors found while parsing: (event index, error).
    errors: Vec<(usize, Error)>,
}

impl<'a> Fold<'a> {
    /// A fold for this machine: on two CPUs or fewer, one is SQLite's and
    /// the other the decoder's and this fold's, so the fold runs on its own
    /// thread alone (a parallel fold would take SQLite's CPU half the time);
    /// with more, in parallel partitions.
    pub(super) fn new() -> Self {
        let threads = rayon::current_num_threads();
        Fold::with_parts(if threads <= 2 { 1 } else { threads.min(8) })
    }

    /// A fold in `parts` partitions (at least one), folded in parallel when
    /// more than one.
    pub(super) fn with_parts(parts: usize) -> Self {
        let parts = parts.max(1);
        Fold {
            parts: (0..parts).map(|_| Part::default()).collect(),
            errors: Vec::new(),
        }
    }

    /// Folds `chunk`, the events from index `offset` on (`events` holds every
    /// event added so far, this chunk included, for the errors' names).
    pub(super) fn add(&mut self, offset: usize, chunk: &'a [Event], events: &Chunks<'a>) {
        let parts = self.parts.len();
        if parts == 1 {
            // One CPU beside SQLite's: parse and fold on this thread only.
            let parsed = parse(offset, chunk, 1);
            let ops = parsed.per_part[0]
                .iter()
                .map(|(i, op)| (*i, op, &parsed.vals[..]));
            fold_part(&mut self.parts[0], events, ops);
            self.errors.extend(parsed.errors);
            return;
        }
        // Parse in parallel; each task sorts its operations by partition. The
        // assignments stay in the task's buffer, where the folds read them: no
        // operation costs an allocation.
        let parsed: Vec<Parsed<'a>> = chunk
            .par_chunks(PARSE_CHUNK)
            .enumerate()
            .map(|(c, sub)| parse(offset + c * PARSE_CHUNK, sub, parts))
            .collect();
        self.parts.par_iter_mut().enumerate().for_each(|(p, part)| {
            let ops = parsed.iter().flat_map(|t| {
                t.per_part[p]
                    .iter()
                    .map(move |(i, op)| (*i, op, &t.vals[..]))
            });
            fold_part(part, events, ops);
        });
        for t in parsed {
            self.errors.extend(t.errors);
        }
    }

    /// The rows in the order of the event that first touched each, the
    /// appends and the errors.
    pub(super) fn finish(self) -> Folded<'a> {
        let mut out = Folded {
            rows: Vec::new(),
            appends: Vec::new(),
            errors: self.errors,
        };
        for part in self.parts {
            out.rows.extend(part.map.into_values());
            out.appends.extend(part.appends);
            out.errors.extend(part.errors);
        }
        out.rows.sort_unstable_by_key(|r| r.first);
        out
    }
}

/// Parses the effects of `sub`, the events from index `offset` on, into
/// operations sorted by partition (of `parts`).
fn parse<'a>(offset: usize, sub: &'a [Event], parts: usize) -> Parsed<'a> {
    // About one operation per event, spread evenly.
    let room = sub.len() / parts + sub.len() / 8;
    let mut out = Parsed {
        vals: Vec::with_capacity(sub.len() * 6),
        per_part: (0..parts).map(|_| Vec::with_capacity(room)).collect(),
        errors: Vec::new(),
    };
    for (i, ev) in (offset..).zip(sub) {
        match effects::effect_into(ev, &mut out.vals) {
            Err(e) => out.errors.push((i, e)),
            Ok(None) => {}
            Ok(Some((first, second))) => {
                for op in std::iter::once(first).chain(second) {
                    let p = if op.kind == OpKind::Append || parts == 1 {
                        0
                    } else {
                        partition_of(op.table, &op.key, parts)
                    };
                    out.per_part[p].push((i, op));
                }
            }
        }
    }
    out
}

/// Folds one partition's operations, given in event order, each with the
/// buffer holding its assignments.
fn fold_part<'a, 'p>(
    part: &mut Part<'a>,
    events: &Chunks<'a>,
    ops: impl Iterator<Item = (usize, &'p OpAt<'a>, &'p [(u8, SqlVal<'a>)])>,
) where
    'a: 'p,
{
    for (i, op, vals) in ops {
        let set = &vals[op.vals.clone()];
        if op.kind == OpKind::Append {
            part.appends.push((
                i,
                RowOp {
                    table: op.table,
                    kind: op.kind,
                    key: op.key.clone(),
                    set: set.to_vec(),
                },
            ));
            continue;
        }
        let table = op.table;
        let entry = part.map.entry((table, op.key.clone()));
        let st = match entry {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mode = match op.kind {
                    OpKind::Insert => Mode::Created(i),
                    OpKind::Update => Mode::MustExist(i),
                    _ => Mode::Upsert,
                };
                let st = v.insert(RowState {
                    table,
                    key: op.key.clone(),
                    first: i,
                    mode,
                    late_insert: None,
                    cols: vec![None; table.columns().len()],
                });
                st.assign(set);
                continue;
            }
        };
        match (op.kind, st.mode) {
            (OpKind::Insert, Mode::Created(j)) => part.errors.push((
                i,
                Error::event(
                    &events[i],
                    format!(
                        "{} {} already exists (created by event #{})",
                        table.row_noun(),
                        op.key,
                        events[j].sequence_number
                    ),
                ),
            )),
            (OpKind::Insert, Mode::MustExist(_)) => {
                st.late_insert.get_or_insert(i);
            }
            _ => st.assign(set),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a fold gives, as text (rows in order, appends, errors).
    fn folded(parts: usize, events: &[Event], chunk: usize) -> Vec<String> {
        let mut fold = Fold::with_parts(parts);
        let mut chunks = Chunks::default();
        for c in events.chunks(chunk) {
            let offset = chunks.push(c);
            fold.add(offset, c, &chunks);
        }
        let out = fold.finish();
        let mut errors: Vec<String> = out.errors.iter().map(|e| format!("{e:?}")).collect();
        errors.sort();
        out.rows
            .iter()
            .map(|r| format!("{r:?}"))
            .chain(out.appends.iter().map(|a| format!("{a:?}")))
            .chain(errors)
            .collect()
    }

    /// The fold on one thread gives what the parallel fold gives: the same
    /// rows in the same order with the same values, the same appends and
    /// errors (a duplicate creation and data that does not parse among them).
    #[test]
    fn one_part_folds_as_many_parts() {
        let mut events = crate::simulate::random_events(7, 20_000);
        let dup = events
            .iter()
            .position(|e| e.event_type == "ORDER_CREATED")
            .unwrap();
        let late = events.len() - 10;
        events[late].event_type = "ORDER_CREATED".into();
        events[late].aggregate_id = events[dup].aggregate_id.clone();
        events[late].event_data = events[dup].event_data.clone();
        events[late - 1].event_type = "BALANCE_UPDATED".into();
        events[late - 1].event_data = "{\"asset\": 3".into();
        let one = folded(1, &events, 5_000);
        assert!(
            one.iter().any(|l| l.contains("already exists")),
            "premise: a duplicate"
        );
        assert!(
            one.iter().any(|l| l.contains("not a JSON object")),
            "premise: bad data"
        );
        assert!(one.len() > 1_000, "premise: many rows");
        for parts in [2, 3, 8] {
            assert_eq!(one, folded(parts, &events, 5_000), "{parts} parts");
        }
        assert_eq!(one, folded(1, &events, 20_000), "one chunk");
    }
}
