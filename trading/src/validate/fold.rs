//! The projections (positions, orders, balances) folded in memory from the
//! events, for rules 9 and 10: no SQLite database is written.
//!
//! Each event's effect ([`crate::effects::effect_of`]) is applied to ordered maps
//! in sequence order, with the values converted as SQLite converts them when it
//! stores them in DOMAIN.md's tables (REAL and TEXT affinity), so the folded rows
//! equal what replaying into a fresh database gives. Memory is bounded by the
//! state (rows, and the keys that must stay unique), never by the history.
//!
//! Rule 10's canonical hash renders each row as SQLite's `quote()` does; reals
//! are rendered by SQLite itself (an in-memory connection evaluating
//! `quote(?1)`, nothing stored), and each row's rendering is kept until the row
//! changes, so hashing the state at a checkpoint costs the state's bytes, not
//! its rendering again. [`State::start_undo`] records the first prior version
//! of every row changed afterwards, so the state at an earlier checkpoint can
//! be hashed once the pass knows it was the newest.

use std::collections::{HashMap, HashSet};

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use crate::effects::{self, OpKind, SqlVal, Table};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::replay::FxMap;

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

/// Whether SQLite's numeric affinity converts this text (a decimal literal,
/// optionally surrounded by spaces).
fn looks_numeric(t: &str) -> bool {
    let s = t.trim_matches(|c: char| c.is_ascii_whitespace()).as_bytes();
    let mut i = usize::from(matches!(s.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let mut n = digits(&mut i);
    if s.get(i) == Some(&b'.') {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return false;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == s.len()
}

/// SQLite, used only to evaluate expressions (rendering and conversions).
pub(super) struct Sqlite {
    conn: Connection,
    reals: HashMap<u64, Box<str>>,
}

/// Distinct reals whose rendering is kept.
const REAL_CACHE: usize = 1 << 20;

impl Sqlite {
    pub(super) fn open() -> Result<Sqlite> {
        Ok(Sqlite {
            conn: Connection::open_in_memory()
                .map_err(Error::sqlite("opening an in-memory SQLite for rendering"))?,
            reals: HashMap::new(),
        })
    }

    fn eval(&self, sql: &str, v: &Value) -> Result<Value> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([v], |r| r.get::<_, Value>(0)))
            .map_err(Error::sqlite(format!("evaluating {sql}")))
    }

    /// `v` as `quote()` renders it.
    pub(super) fn quote(&mut self, v: &Value, out: &mut String) -> Result<()> {
        match v {
            Value::Null => out.push_str("NULL"),
            Value::Integer(i) => out.push_str(&i.to_string()),
            Value::Text(t) => {
                out.push('\'');
                out.push_str(&t.replace('\'', "''"));
                out.push('\'');
            }
            Value::Real(r) => {
                if let Some(s) = self.reals.get(&r.to_bits()) {
                    out.push_str(s);
                    return Ok(());
                }
                let s = match self.eval("SELECT quote(?1)", v)? {
                    Value::Text(s) => s.into_boxed_str(),
                    other => format!("{other:?}").into_boxed_str(),
                };
                out.push_str(&s);
                if self.reals.len() >= REAL_CACHE {
                    self.reals.clear();
                }
                self.reals.insert(r.to_bits(), s);
            }
            Value::Blob(_) => {
                if let Value::Text(s) = self.eval("SELECT quote(?1)", v)? {
                    out.push_str(&s);
                }
            }
        }
        Ok(())
    }

    /// The value SQLite stores for `v` in a column of this affinity.
    fn stored(&self, v: &SqlVal<'_>, real: bool) -> Result<Value> {
        Ok(match (v, real) {
            (SqlVal::Null, _) => Value::Null,
            (SqlVal::Int(i), true) => Value::Real(*i as f64),
            (SqlVal::Real(f), true) => Value::Real(*f),
            (SqlVal::Text(t), true) if looks_numeric(t) => {
                self.eval("SELECT CAST(?1 AS REAL)", &Value::Text(t.to_string()))?
            }
            (SqlVal::Text(t), _) => Value::Text(t.to_string()),
            (SqlVal::Int(i), false) => Value::Text(i.to_string()),
            (SqlVal::Real(f), false) => self.eval("SELECT CAST(?1 AS TEXT)", &Value::Real(*f))?,
        })
    }
}

fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Whether a stored value is the folded one (exactly; renderings are
/// compared only when this says no).
fn same(have: ValueRef<'_>, want: &Value) -> bool {
    match (have, want) {
        (ValueRef::Null, Value::Null) => true,
        (ValueRef::Integer(a), Value::Integer(b)) => a == *b,
        (ValueRef::Real(a), Value::Real(b)) => a == *b,
        (ValueRef::Text(a), Value::Text(b)) => a == b.as_bytes(),
        (ValueRef::Blob(a), Value::Blob(b)) => a == b.as_slice(),
        _ => false,
    }
}

/// A folded row: its columns after the key, in table order.
#[derive(Debug, Clone)]
pub(super) struct Row {
    vals: Vec<Value>,
    /// The row as the canonical hash renders it (key first), once rendered.
    line: Option<Box<str>>,
    /// Found in the database by [`State::compare`].
    seen: bool,
}

/// Per hashed table: the first prior version of each row changed since
/// [`State::start_undo`] (`None`: the row did not exist).
type Undo = [FxMap<Box<str>, Option<Row>>; 3];

/// One folded table: its rows by key, and its keys in order as of the last
/// time they were needed in order (the hash), with the keys added since.
#[derive(Default)]
struct Rows {
    map: FxMap<Box<str>, Row>,
    sorted: Vec<Box<str>>,
    added: Vec<Box<str>>,
    /// A key was removed: `sorted` is rebuilt when next needed.
    removed: bool,
}

impl Rows {
    fn get(&self, key: &str) -> Option<&Row> {
        self.map.get(key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Row> {
        self.map.get_mut(key)
    }
    fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }
    fn insert(&mut self, key: Box<str>, row: Row) {
        if self.map.insert(key.clone(), row).is_none() {
            self.added.push(key);
        }
    }
    fn remove(&mut self, key: &str) {
        if self.map.remove(key).is_some() {
            self.removed = true;
        }
    }
    /// Calls `f` on every row in key order: the keys added since the last
    /// call are sorted and merged in, O(rows + added x log added).
    fn for_each_sorted(&mut self, mut f: impl FnMut(&str, &mut Row) -> Result<()>) -> Result<()> {
        if self.removed {
            self.sorted = self.map.keys().cloned().collect();
            self.sorted.sort_unstable();
            self.added.clear();
            self.removed = false;
        } else if !self.added.is_empty() {
            self.added.sort_unstable();
            let old = std::mem::take(&mut self.sorted);
            let mut merged = Vec::with_capacity(old.len() + self.added.len());
            let mut a = old.into_iter().peekable();
            let mut b = self.added.drain(..).peekable();
            loop {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => x <= y,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                merged.extend(if take_a { a.next() } else { b.next() });
            }
            self.sorted = merged;
        }
        for key in &self.sorted {
            if let Some(row) = self.map.get_mut(key) {
                f(key, row)?;
            }
        }
        Ok(())
    }
}

/// The folded projections.
pub(super) struct State {
    tables: [Rows; 3],
    /// Keys that must stay unique outside the hashed rows.
    checkpoint_ids: HashSet<Box<str>>,
    client_order_ids: HashSet<Box<str>>,
    undo: Option<Undo>,
    pub(super) sqlite: Sqlite,
}

impl State {
    pub(super) fn new() -> Result<State> {
        Ok(State {
            tables: Default::default(),
            checkpoint_ids: HashSet::new(),
            client_order_ids: HashSet::new(),
            undo: None,
            sqlite: Sqlite::open()?,
        })
    }

    /// Applies one event's effect, as a replay would.
    ///
    /// # Errors
    /// [`Error::Event`] naming the event when its data cannot be read or its
    /// effect cannot apply (the row exists, does not exist, a unique key is
    /// taken); [`Error::Sqlite`] when a conversion cannot be evaluated.
    pub(super) fn apply(&mut self, ev: &Event) -> Result<()> {
        let Some(ops) = effects::effect_of(ev)? else {
            return Ok(());
        };
        for op in ops {
            let noun = op.table.row_noun();
            if op.table == Table::Checkpoints && op.kind == OpKind::Insert {
                if !self.checkpoint_ids.insert(op.key.as_ref().into()) {
                    return Err(Error::event(
                        ev,
                        format!("{noun} {} already exists", op.key),
                    ));
                }
                continue;
            }
            let Some(t) = slot(op.table) else { continue };
            let cols = op.table.columns();
            let exists = self.tables[t].contains_key(op.key.as_ref());
            match (op.kind, exists) {
                (OpKind::Insert, true) => {
                    return Err(Error::event(
                        ev,
                        format!("{noun} {} already exists", op.key),
                    ))
                }
                (OpKind::Update, false) => {
                    return Err(Error::event(ev, format!("no {noun} {} to update", op.key)))
                }
                _ => {}
            }
            let mut vals = Vec::with_capacity(op.set.len());
            for (c, v) in &op.set {
                let name = cols[usize::from(*c)];
                vals.push((
                    usize::from(*c),
                    self.sqlite.stored(v, is_real(op.table, name))?,
                ));
            }
            if op.table == Table::Orders && op.kind == OpKind::Insert {
                let client = cols.iter().position(|c| *c == "client_order_id");
                if let Some((_, Value::Text(id))) = vals.iter().find(|(c, _)| Some(*c) == client) {
                    if !self.client_order_ids.insert(id.as_str().into()) {
                        return Err(Error::event(
                            ev,
                            format!("cannot write {noun} {}: UNIQUE constraint failed: orders.client_order_id", op.key),
                        ));
                    }
                }
            }
            if let Some(undo) = &mut self.undo {
                if !undo[t].contains_key(op.key.as_ref()) {
                    let before = self.tables[t].get(op.key.as_ref()).cloned();
                    undo[t].insert(op.key.as_ref().into(), before);
                }
            }
            if !exists {
                let row = Row {
                    vals: vec![Value::Null; cols.len()],
                    line: None,
                    seen: false,
                };
                self.tables[t].insert(op.key.as_ref().into(), row);
            }
            let Some(row) = self.tables[t].get_mut(op.key.as_ref()) else {
                continue;
            };
            row.line = None;
            for (c, v) in vals {
                row.vals[c] = v;
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

    /// Stops remembering prior versions.
    pub(super) fn stop_undo(&mut self) {
        self.undo = None;
    }

    /// Puts back the rows as they were at [`State::start_undo`].
    pub(super) fn roll_back(&mut self) {
        for (t, undo) in self.undo.take().unwrap_or_default().into_iter().enumerate() {
            for (key, before) in undo {
                match before {
                    Some(row) => {
                        self.tables[t].insert(key, row);
                    }
                    None => self.tables[t].remove(&key),
                }
            }
        }
    }

    /// The canonical state hash (DOMAIN.md rule 10) of the folded state.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when a value cannot be rendered.
    pub(super) fn hash(&mut self) -> Result<String> {
        let mut hasher = blake3::Hasher::new();
        let sqlite = &mut self.sqlite;
        for (t, table) in HASHED.iter().enumerate() {
            hasher.update(table.name().as_bytes());
            hasher.update(b"\n");
            self.tables[t].for_each_sorted(|key, row| {
                if row.line.is_none() {
                    let mut line = String::new();
                    sqlite.quote(&Value::Text(key.to_string()), &mut line)?;
                    for v in &row.vals {
                        line.push('|');
                        sqlite.quote(v, &mut line)?;
                    }
                    row.line = Some(line.into_boxed_str());
                }
                if let Some(line) = &row.line {
                    hasher.update(line.as_bytes());
                }
                hasher.update(b"\n");
                Ok(())
            })?;
        }
        Ok(format!("blake3:{}", hasher.finalize().to_hex()))
    }

    /// Rule 9: the differences between the database's tables and the folded
    /// rows, one message per row and column, in key order per table.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when a table cannot be read.
    pub(super) fn compare(&mut self, conn: &Connection) -> Result<Vec<String>> {
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
            let mut stmt = conn.prepare(&sql).map_err(fail)?;
            let mut rows = stmt.query([]).map_err(fail)?;
            let mut found: Vec<(String, String)> = Vec::new();
            let sqlite = &mut self.sqlite;
            let folded = &mut self.tables[t];
            while let Some(r) = rows.next().map_err(fail)? {
                let key = r.get_ref(0).map_err(fail)?;
                let row = match key {
                    ValueRef::Text(k) => {
                        std::str::from_utf8(k).ok().and_then(|k| folded.get_mut(k))
                    }
                    _ => None,
                };
                let mut qk = String::new();
                let Some(row) = row else {
                    sqlite.quote(&owned(key), &mut qk)?;
                    let m = format!("{noun} {qk} is in the database but no event creates it");
                    found.push((qk, m));
                    continue;
                };
                row.seen = true;
                for (i, want) in row.vals.iter().enumerate() {
                    let have = r.get_ref(i + 1).map_err(fail)?;
                    if same(have, want) {
                        continue;
                    }
                    let (mut a, mut b) = (String::new(), String::new());
                    sqlite.quote(&owned(have), &mut a)?;
                    sqlite.quote(want, &mut b)?;
                    if a != b {
                        if qk.is_empty() {
                            sqlite.quote(&owned(key), &mut qk)?;
                        }
                        let m = format!("{noun} {qk}: {} is {a} in the database but {b} after replaying the events", cols[i]);
                        found.push((qk.clone(), m));
                    }
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(found.into_iter().map(|(_, m)| m));
            let mut missing: Vec<&str> = folded
                .map
                .iter_mut()
                .filter_map(|(key, row)| {
                    (!std::mem::replace(&mut row.seen, false)).then_some(&**key)
                })
                .collect();
            missing.sort_unstable();
            for key in missing {
                let mut qk = String::new();
                sqlite.quote(&Value::Text(key.to_string()), &mut qk)?;
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

    #[test]
    fn numeric_text_is_what_sqlite_converts() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (x REAL)").unwrap();
        for t in [
            "1", " 2.5 ", "-3e2", "+.5", "5.", "abc", "1e", "0x10", "", " ", "1.2.3", "inf",
            "1e+3x", "-", ".",
        ] {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t VALUES (?1)", [t]).unwrap();
            let ty: String = c
                .query_row("SELECT typeof(x) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(looks_numeric(t), ty == "real", "{t:?}: SQLite stored {ty}");
        }
    }

    #[test]
    fn stored_values_and_renderings_equal_sqlites() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (r REAL, s TEXT)").unwrap();
        let mut sqlite = Sqlite::open().unwrap();
        let vals = [
            SqlVal::Int(3),
            SqlVal::Int(-9_007_199_254_740_993),
            SqlVal::Real(0.1 + 0.2),
            SqlVal::Real(1e300),
            SqlVal::Real(-0.0),
            SqlVal::Text("12.5".into()),
            SqlVal::Text("it's".into()),
            SqlVal::Null,
        ];
        for v in &vals {
            c.execute("DELETE FROM t", []).unwrap();
            c.execute("INSERT INTO t VALUES (?1, ?1)", [v]).unwrap();
            let (qr, qs): (String, String) = c
                .query_row("SELECT quote(r), quote(s) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            let (mut r, mut s) = (String::new(), String::new());
            sqlite
                .quote(&sqlite.stored(v, true).unwrap(), &mut r)
                .unwrap();
            sqlite
                .quote(&sqlite.stored(v, false).unwrap(), &mut s)
                .unwrap();
            assert_eq!((r, s), (qr, qs), "{v:?}");
        }
    }
}
