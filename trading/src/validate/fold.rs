//! The projections (positions, orders, balances) folded in memory from the
//! events, for rules 9 and 10: no SQLite database is written.
//!
//! Each event's effect ([`crate::effects::effect_into`]) is applied to the
//! tables of [`super::rows`] in sequence order, with the values converted as
//! SQLite converts them when it stores them in DOMAIN.md's tables (REAL and
//! TEXT affinity, [`super::render`]), so the folded rows equal what replaying
//! into a fresh database gives. Memory is bounded by the state (rows, and the
//! keys that must stay unique), never by the history; an event costs a hash
//! probe per row it writes and no allocation (its assignments go to a buffer
//! the caller reuses), whatever the size of the state.
//!
//! Rule 10's canonical hash renders each row as SQLite's `quote()` does, and
//! each row's rendering is kept until the row changes, so hashing the state at
//! a checkpoint costs the state's bytes, not its rendering again.
//! [`State::start_undo`] records the first prior version of every row changed
//! afterwards, so the state at an earlier checkpoint can be hashed once the
//! pass knows it was the newest.

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::hash::{hash_rows, render_changed};
use super::raw::Query;
use super::render::{quote_cell, quote_text, render, Sqlite};
use super::rows::{Cell, Rows, TextSet};
use crate::effects::{self, OpKind, SqlVal, Table};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::replay::{FxMap, FxSet};

/// The hashed tables, in hashing order.
pub(super) const HASHED: [Table; 3] = [Table::Positions, Table::Orders, Table::Balances];

fn slot(table: Table) -> Option<usize> {
    HASHED.iter().position(|t| *t == table)
}

/// Columns of DOMAIN.md's hashed tables declared REAL (the others are TEXT).
fn is_real(table: Table, col: &str) -> bool {
    match table {
        Table::Positions => matches!(
            col,
            "entry_price"
                | "quantity"
                | "unrealized_pnl"
                | "realized_pnl"
                | "current_price"
                | "exit_price"
        ),
        Table::Orders => matches!(
            col,
            "quantity" | "price" | "filled_quantity" | "executed_price"
        ),
        Table::Balances => col.ends_with("_balance"),
        _ => false,
    }
}

/// A value read from the database, as a cell (to render it).
fn cell_of(v: ValueRef<'_>) -> Cell {
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Real(f),
        ValueRef::Text(t) => Cell::text(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => Cell::Blob(b.into()),
    }
}

/// Whether a stored value is the folded one (exactly; renderings are
/// compared only when this says no).
fn same(have: ValueRef<'_>, want: &Cell) -> bool {
    match (have, want) {
        (ValueRef::Null, Cell::Null) => true,
        (ValueRef::Integer(a), Cell::Int(b)) => a == *b,
        (ValueRef::Real(a), Cell::Real(b)) => a == *b,
        (ValueRef::Blob(a), Cell::Blob(b)) => a == &**b,
        (ValueRef::Text(a), want) => want.as_text().is_some_and(|b| a == b.as_bytes()),
        _ => false,
    }
}

/// Per hashed table: the first prior version of each row changed since
/// [`State::start_undo`], by row id (`None`: the row did not exist).
pub(super) type Undo = [FxMap<u32, Option<Box<[Cell]>>>; 3];

/// The folded projections.
pub(super) struct State {
    tables: [Rows; 3],
    /// Keys that must stay unique outside the hashed rows.
    checkpoint_ids: FxSet<Box<str>>,
    client_order_ids: TextSet,
    undo: Option<Undo>,
    sqlite: Sqlite,
    /// Per hashed table, bit `c` set when column `c` is declared REAL.
    real_cols: [u64; 3],
    /// The converted values of the operation being applied.
    scratch: Vec<(usize, Cell)>,
    /// Keep each row's rendering until it changes (for many hashes).
    keep_lines: bool,
}

/// The assignments of the effects being folded (see [`State::apply`]).
pub(super) type Vals<'e> = Vec<(u8, SqlVal<'e>)>;

impl State {
    /// The folded state of no event; `keep_lines` when it will be hashed
    /// more than once (each row's rendering is then kept until it changes;
    /// otherwise the rows are rendered straight into the hash).
    pub(super) fn new(keep_lines: bool) -> Result<State> {
        Ok(State {
            keep_lines,
            tables: HASHED.map(|t| Rows::new(t.columns().len())),
            checkpoint_ids: FxSet::default(),
            client_order_ids: TextSet::default(),
            undo: None,
            sqlite: Sqlite::open()?,
            real_cols: HASHED.map(|t| {
                t.columns()
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| is_real(t, c))
                    .fold(0, |m, (i, _)| m | 1 << i)
            }),
            scratch: Vec::new(),
        })
    }

    /// Applies one event's effect, as a replay would; `vals` is a buffer
    /// reused from event to event (its contents are replaced).
    ///
    /// # Errors
    /// [`Error::Event`] naming the event when its data cannot be read or its
    /// effect cannot apply (the row exists, does not exist, a unique key is
    /// taken); [`Error::Sqlite`] when a conversion cannot be evaluated.
    pub(super) fn apply<'e>(&mut self, ev: &'e Event, vals: &mut Vals<'e>) -> Result<()> {
        vals.clear();
        let Some((first, second)) = effects::effect_into(ev, vals)? else {
            return Ok(());
        };
        let State {
            tables,
            checkpoint_ids,
            client_order_ids,
            undo,
            sqlite,
            real_cols,
            scratch,
            ..
        } = self;
        for op in std::iter::once(first).chain(second) {
            let noun = op.table.row_noun();
            if op.table == Table::Checkpoints && op.kind == OpKind::Insert {
                if !checkpoint_ids.insert(op.key.as_ref().into()) {
                    return Err(Error::event(
                        ev,
                        format!("{noun} {} already exists", op.key),
                    ));
                }
                continue;
            }
            let Some(t) = slot(op.table) else { continue };
            let rows = &mut tables[t];
            let key: &str = op.key.as_ref();
            let found = rows.find(key);
            match (op.kind, found) {
                (OpKind::Insert, Some(_)) => {
                    return Err(Error::event(
                        ev,
                        format!("{noun} {} already exists", op.key),
                    ))
                }
                (OpKind::Update, None) => {
                    return Err(Error::event(ev, format!("no {noun} {} to update", op.key)))
                }
                _ => {}
            }
            scratch.clear();
            for (c, v) in &vals[op.vals.clone()] {
                let c = usize::from(*c);
                let real = u32::try_from(c)
                    .ok()
                    .and_then(|c| real_cols[t].checked_shr(c))
                    .is_some_and(|m| m & 1 == 1);
                scratch.push((c, sqlite.stored(v, real)?));
            }
            if op.table == Table::Orders && op.kind == OpKind::Insert {
                let client = op
                    .table
                    .columns()
                    .iter()
                    .position(|c| *c == "client_order_id");
                if let Some(id) = scratch
                    .iter()
                    .find(|(c, _)| Some(*c) == client)
                    .and_then(|(_, v)| v.as_text())
                {
                    if !client_order_ids.insert(id) {
                        return Err(Error::event(
                            ev,
                            format!("cannot write {noun} {}: UNIQUE constraint failed: orders.client_order_id", op.key),
                        ));
                    }
                }
            }
            let id = match found {
                Some(id) => id,
                None => rows
                    .insert(key)
                    .map_err(|e| Error::event(ev, format!("cannot write {noun} {key}: {e}")))?,
            };
            if let Some(undo) = undo {
                undo[t]
                    .entry(id)
                    .or_insert_with(|| found.map(|id| rows.row(id).into()));
            }
            let row = rows.row_mut(id);
            for (c, v) in scratch.drain(..) {
                if let Some(cell) = row.get_mut(c) {
                    *cell = v;
                }
            }
        }
        Ok(())
    }

    /// From now on, remember the first prior version of each changed row.
    pub(super) fn start_undo(&mut self) {
        match &mut self.undo {
            Some(undo) => undo.iter_mut().for_each(FxMap::clear),
            None => self.undo = Some(Undo::default()),
        }
    }

    /// Whether each row's rendering is kept (many hashes).
    pub(super) fn keeps_lines(&self) -> bool {
        self.keep_lines
    }

    /// Stops remembering prior versions.
    pub(super) fn stop_undo(&mut self) {
        self.undo = None;
    }

    /// Puts back the rows as they were at [`State::start_undo`].
    pub(super) fn roll_back(&mut self) {
        for (t, undo) in self.undo.take().unwrap_or_default().into_iter().enumerate() {
            let rows = &mut self.tables[t];
            for (id, before) in undo {
                match before {
                    Some(cells) => rows.row_mut(id).clone_from_slice(&cells),
                    None => rows.remove(id),
                }
            }
        }
    }

    /// Brings every table's key order up to date (after the last change,
    /// before hashing).
    fn sort(&mut self) {
        self.tables.iter_mut().for_each(Rows::sort);
    }

    /// The canonical state hash (DOMAIN.md rule 10) of the folded state.
    ///
    /// # Errors
    /// [`Error::Internal`] if a rendering thread panics.
    pub(super) fn hash(&mut self) -> Result<String> {
        self.sort();
        if !self.keep_lines {
            return hash_rows(&self.tables, None);
        }
        // The lines are gathered into large updates: BLAKE3 hashes many
        // chunks at once only when given them at once.
        const BUF: usize = 1 << 16;
        fn put(buf: &mut Vec<u8>, hasher: &mut blake3::Hasher, bytes: &[u8]) {
            buf.extend_from_slice(bytes);
            if buf.len() >= BUF {
                hasher.update(buf);
                buf.clear();
            }
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf: Vec<u8> = Vec::with_capacity(BUF + 4096);
        for (table, rows) in HASHED.iter().zip(self.tables.iter_mut()) {
            put(&mut buf, &mut hasher, table.name().as_bytes());
            put(&mut buf, &mut hasher, b"\n");
            render_changed(rows)?;
            for &id in rows.sorted_ids() {
                match &rows.meta[id as usize].line {
                    Some(line) => put(&mut buf, &mut hasher, line.as_bytes()),
                    None => put(
                        &mut buf,
                        &mut hasher,
                        render(rows.key(id), rows.row(id)).as_bytes(),
                    ),
                };
                put(&mut buf, &mut hasher, b"\n");
            }
        }
        hasher.update(&buf);
        Ok(format!("blake3:{}", hasher.finalize().to_hex()))
    }

    /// Ends the fold: rule 9's differences with the tables (when `compare`)
    /// and, when `hash_pending`, the hash of the state as it was at
    /// [`State::start_undo`]. Without kept renderings, the hash is computed
    /// from the rows with their prior versions laid over them (rows inserted
    /// since left out), on other threads while this one reads the tables, so
    /// neither waits for the other; with them, the rows are rolled back after
    /// the comparison and hashed.
    ///
    /// # Errors
    /// As [`State::compare`] and [`State::hash`].
    pub(super) fn finish(
        &mut self,
        conn: &Connection,
        compare: bool,
        hash_pending: bool,
    ) -> Result<(Vec<String>, Option<String>)> {
        if !hash_pending || self.keep_lines {
            let diffs = if compare {
                self.compare(conn)?
            } else {
                Vec::new()
            };
            let hash = if hash_pending {
                self.roll_back();
                Some(self.hash()?)
            } else {
                None
            };
            return Ok((diffs, hash));
        }
        self.sort();
        let this: &State = self;
        let (tables, undo) = (&this.tables, this.undo.as_ref());
        std::thread::scope(|s| {
            let hashing = s.spawn(move || hash_rows(tables, undo));
            let diffs = if compare {
                this.compare(conn)
            } else {
                Ok(Vec::new())
            };
            let hash = hashing
                .join()
                .map_err(|p| Error::internal("hashing the folded state", p.as_ref()))?;
            Ok((diffs?, Some(hash?)))
        })
    }

    /// Rule 9: the differences between the database's tables and the folded
    /// rows, one message per row and column, in key order per table.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when a table cannot be read.
    pub(super) fn compare(&self, conn: &Connection) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (t, table) in HASHED.iter().enumerate() {
            let noun = table.row_noun();
            let cols = table.columns();
            let names: Vec<String> = std::iter::once(table.key_column())
                .chain(cols.iter().copied())
                .map(|c| format!("\"{c}\""))
                .collect();
            let sql = format!("SELECT {} FROM {}", names.join(", "), table.name());
            let action = format!("reading {} for the replay comparison", table.name());
            let fail = |source| Error::Sqlite {
                action: action.clone(),
                source,
            };
            let mut r = Query::prepare(conn, &sql).map_err(fail)?;
            let mut found: Vec<(String, String)> = Vec::new();
            let folded = &self.tables[t];
            let mut seen = vec![false; folded.ids() as usize];
            // The table's rowid order is usually the order the events
            // inserted its rows in, which is the folded ids' order: the row
            // after the last one found is tried before the hash table.
            let mut next = 0u32;
            while r.step().map_err(fail)? {
                let key = r.value_ref(0).map_err(fail)?;
                let id = match key {
                    ValueRef::Text(k) => std::str::from_utf8(k)
                        .ok()
                        .and_then(|k| folded.live_key_at(next, k).or_else(|| folded.find(k))),
                    _ => None,
                };
                let mut qk = String::new();
                let Some(id) = id else {
                    quote_cell(&cell_of(key), &mut qk);
                    let m = format!("{noun} {qk} is in the database but no event creates it");
                    found.push((qk, m));
                    continue;
                };
                next = id.saturating_add(1);
                seen[id as usize] = true;
                for (i, want) in folded.row(id).iter().enumerate() {
                    let have = r.value_ref(i + 1).map_err(fail)?;
                    if same(have, want) {
                        continue;
                    }
                    let (mut a, mut b) = (String::new(), String::new());
                    quote_cell(&cell_of(have), &mut a);
                    quote_cell(want, &mut b);
                    if a != b {
                        if qk.is_empty() {
                            quote_cell(&cell_of(key), &mut qk);
                        }
                        let m = format!("{noun} {qk}: {} is {a} in the database but {b} after replaying the events", cols[i]);
                        found.push((qk.clone(), m));
                    }
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(found.into_iter().map(|(_, m)| m));
            let unseen: Vec<u32> = (0..folded.ids())
                .filter(|id| folded.meta[*id as usize].live && !seen[*id as usize])
                .collect();
            let mut missing: Vec<&str> = unseen.iter().map(|id| folded.key(*id)).collect();
            missing.sort_unstable();
            for key in missing {
                let mut qk = String::new();
                quote_text(key, &mut qk);
                out.push(format!(
                    "{noun} {qk} is missing from the database but replaying the events creates it"
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, ty: &str, id: &str, data: &str) -> Event {
        Event {
            event_id: format!("e{seq}"),
            event_type: ty.into(),
            aggregate_id: id.into(),
            event_data: data.into(),
            sequence_number: seq,
            created_at: "2025-01-15T14:30:00.000001".into(),
        }
    }

    #[test]
    fn roll_back_restores_the_hash_and_refusals_name_the_row() {
        let created = ev(
            1,
            "ORDER_CREATED",
            "o1",
            r#"{"client_order_id": "c1", "quantity": 2, "price": "3.5"}"#,
        );
        let later = [
            ev(2, "ORDER_FILLED", "o1", r#"{"filled_quantity": 2}"#),
            ev(3, "ORDER_CREATED", "o2", r#"{"client_order_id": "c2"}"#),
            ev(
                4,
                "BALANCE_UPDATED",
                "b",
                r#"{"asset": "USDT", "free_balance": 1}"#,
            ),
        ];
        let mut hashes = Vec::new();
        for keep_lines in [false, true] {
            let mut s = State::new(keep_lines).unwrap();
            let mut vals = Vals::new();
            s.apply(&created, &mut vals).unwrap();
            let before = s.hash().unwrap();
            s.start_undo();
            for e in &later {
                s.apply(e, &mut vals).unwrap();
            }
            let after = s.hash().unwrap();
            assert_ne!(after, before);
            s.roll_back();
            assert_eq!(s.hash().unwrap(), before);
            hashes.push((before, after));
            let dup = ev(5, "ORDER_CREATED", "o3", r#"{"client_order_id": "c1"}"#);
            let err = s.apply(&dup, &mut vals).unwrap_err().to_string();
            assert!(
                err.contains("UNIQUE constraint failed: orders.client_order_id"),
                "{err}"
            );
            let missing = ev(6, "ORDER_FILLED", "o9", "{}");
            let err = s.apply(&missing, &mut vals).unwrap_err().to_string();
            assert!(err.contains("no order o9 to update"), "{err}");
            let err = s.apply(&created, &mut vals).unwrap_err().to_string();
            assert!(err.contains("order o1 already exists"), "{err}");
        }
        // Rendered straight into the hash or kept: the same hashes.
        assert_eq!(hashes[0], hashes[1]);
    }

    #[test]
    fn the_hash_as_of_the_undo_equals_the_rolled_back_hash() {
        let conn = Connection::open_in_memory().unwrap();
        let events = [
            ev(
                1,
                "ORDER_CREATED",
                "o1",
                r#"{"client_order_id": "c1", "quantity": 2}"#,
            ),
            ev(
                2,
                "POSITION_OPENED",
                "p1",
                r#"{"symbol": "BTC/USDT", "quantity": 1}"#,
            ),
            ev(3, "ORDER_FILLED", "o1", r#"{"filled_quantity": 2}"#),
            ev(4, "ORDER_CREATED", "o0", r#"{"client_order_id": "c0"}"#),
            ev(5, "POSITION_UPDATED", "p1", r#"{"current_price": 7.25}"#),
            ev(
                6,
                "BALANCE_UPDATED",
                "b",
                r#"{"asset": "USDT", "free_balance": 1}"#,
            ),
        ];
        for at in 0..=events.len() {
            let (mut rolled, mut laid) = (State::new(false).unwrap(), State::new(false).unwrap());
            let mut vals = Vals::new();
            for s in [&mut rolled, &mut laid] {
                for (i, e) in events.iter().enumerate() {
                    if i == at {
                        s.start_undo();
                    }
                    s.apply(e, &mut vals).unwrap();
                }
                if at == events.len() {
                    s.start_undo();
                }
            }
            let final_hash = laid.hash().unwrap();
            let (diffs, before) = laid.finish(&conn, false, true).unwrap();
            assert!(diffs.is_empty());
            rolled.roll_back();
            assert_eq!(before, Some(rolled.hash().unwrap()), "undo from event {at}");
            // Laid over, not rolled back: the state is still the final one.
            assert_eq!(laid.hash().unwrap(), final_hash);
        }
    }
}
