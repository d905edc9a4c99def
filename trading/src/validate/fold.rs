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

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

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
}

impl Sqlite {
    pub(super) fn open() -> Result<Sqlite> {
        Ok(Sqlite {
            conn: Connection::open_in_memory()
                .map_err(Error::sqlite("opening an in-memory SQLite for rendering"))?,
        })
    }

    fn eval(&self, sql: &str, v: &Value) -> Result<Value> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([v], |r| r.get::<_, Value>(0)))
            .map_err(Error::sqlite(format!("evaluating {sql}")))
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

/// A row as the canonical hash renders it: the key, then each column, as
/// `quote()` renders them, separated by `|`.
fn render(key: &str, vals: &[Value]) -> String {
    let mut line = String::with_capacity(16 * (vals.len() + 1));
    quote_text(key, &mut line);
    for v in vals {
        line.push('|');
        quote_value(v, &mut line);
    }
    line
}

/// `v` as `quote()` renders it.
pub(super) fn quote_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Integer(i) => {
            let mut b = itoa_buf();
            out.push_str(itoa(*i, &mut b));
        }
        Value::Text(t) => quote_text(t, out),
        Value::Real(r) => quote_real(*r, out),
        Value::Blob(b) => {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.reserve(b.len() * 2 + 3);
            out.push_str("X'");
            for byte in b {
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 15)]));
            }
            out.push('\'');
        }
    }
}

/// Text as `quote()` renders it: in single quotes, each quote doubled.
pub(super) fn quote_text(t: &str, out: &mut String) {
    out.reserve(t.len() + 2);
    out.push('\'');
    let mut rest = t;
    while let Some(i) = rest.find('\'') {
        out.push_str(&rest[..=i]);
        out.push('\'');
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('\'');
}

/// A real as `quote()` renders it: SQLite's own printf with `quote()`'s
/// format (`%!0.17g`, SQLite's `sqlite3QuoteValue`), so the digits are
/// SQLite's and no statement runs.
pub(super) fn quote_real(r: f64, out: &mut String) {
    // 17 significant digits, sign, point, exponent: well under 40 bytes.
    let mut buf = [0u8; 64];
    let len = std::ffi::c_int::try_from(buf.len()).unwrap_or(64);
    // SAFETY: sqlite3_snprintf writes at most `len` bytes, NUL included,
    // into `buf`, which is `len` bytes long; the format takes one double.
    unsafe {
        rusqlite::ffi::sqlite3_snprintf(len, buf.as_mut_ptr().cast(), c"%!0.17g".as_ptr(), r);
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    out.push_str(&String::from_utf8_lossy(&buf[..end]));
}

/// A buffer for [`itoa`].
fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// `i` in decimal, written into `buf` (no allocation).
fn itoa(i: i64, buf: &mut [u8; 20]) -> &str {
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("")
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
    checkpoint_ids: FxSet<Box<str>>,
    client_order_ids: FxSet<Box<str>>,
    undo: Option<Undo>,
    pub(super) sqlite: Sqlite,
    /// Per hashed table, bit `c` set when column `c` is declared REAL.
    real_cols: [u64; 3],
    /// The converted values of the operation being applied.
    scratch: Vec<(usize, Value)>,
}

impl State {
    pub(super) fn new() -> Result<State> {
        Ok(State {
            tables: Default::default(),
            checkpoint_ids: FxSet::default(),
            client_order_ids: FxSet::default(),
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
        let State {
            tables,
            checkpoint_ids,
            client_order_ids,
            undo,
            sqlite,
            real_cols,
            scratch,
        } = self;
        for op in ops {
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
            let cols = op.table.columns();
            let key: &str = op.key.as_ref();
            let exists = tables[t].contains_key(key);
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
            scratch.clear();
            for (c, v) in &op.set {
                let c = usize::from(*c);
                let real = u32::try_from(c)
                    .ok()
                    .and_then(|c| real_cols[t].checked_shr(c))
                    .is_some_and(|m| m & 1 == 1);
                scratch.push((c, sqlite.stored(v, real)?));
            }
            if op.table == Table::Orders && op.kind == OpKind::Insert {
                let client = cols.iter().position(|c| *c == "client_order_id");
                if let Some((_, Value::Text(id))) = scratch.iter().find(|(c, _)| Some(*c) == client)
                {
                    if !client_order_ids.insert(id.as_str().into()) {
                        return Err(Error::event(
                            ev,
                            format!("cannot write {noun} {}: UNIQUE constraint failed: orders.client_order_id", op.key),
                        ));
                    }
                }
            }
            if let Some(undo) = undo {
                if !undo[t].contains_key(key) {
                    let before = tables[t].get(key).cloned();
                    undo[t].insert(key.into(), before);
                }
            }
            let row = match tables[t].map.get_mut(key) {
                Some(row) => row,
                None => {
                    tables[t].insert(
                        key.into(),
                        Row {
                            vals: vec![Value::Null; cols.len()],
                            line: None,
                            seen: false,
                        },
                    );
                    match tables[t].map.get_mut(key) {
                        Some(row) => row,
                        None => continue,
                    }
                }
            };
            row.line = None;
            for (c, v) in scratch.drain(..) {
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
        // Rows not rendered since they last changed are rendered first, on
        // every CPU (a row's rendering does not depend on any other row).
        let mut todo: Vec<(&str, &mut Row)> = Vec::new();
        for table in &mut self.tables {
            todo.extend(
                table
                    .map
                    .iter_mut()
                    .filter(|(_, row)| row.line.is_none())
                    .map(|(key, row)| (&**key, row)),
            );
        }
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let per = todo.len().div_ceil(threads).max(4096);
        std::thread::scope(|s| {
            for chunk in todo.chunks_mut(per) {
                s.spawn(move || {
                    for (key, row) in chunk {
                        row.line = Some(render(key, &row.vals).into_boxed_str());
                    }
                });
            }
        });
        let mut hasher = blake3::Hasher::new();
        for (t, table) in HASHED.iter().enumerate() {
            hasher.update(table.name().as_bytes());
            hasher.update(b"\n");
            self.tables[t].for_each_sorted(|key, row| {
                if row.line.is_none() {
                    row.line = Some(render(key, &row.vals).into_boxed_str());
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
                    quote_value(&owned(key), &mut qk);
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
                    quote_value(&owned(have), &mut a);
                    quote_value(want, &mut b);
                    if a != b {
                        if qk.is_empty() {
                            quote_value(&owned(key), &mut qk);
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
        let sqlite = Sqlite::open().unwrap();
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
            quote_value(&sqlite.stored(v, true).unwrap(), &mut r);
            quote_value(&sqlite.stored(v, false).unwrap(), &mut s);
            assert_eq!((r, s), (qr, qs), "{v:?}");
        }
    }

    #[test]
    fn reals_and_integers_render_as_sqlites_quote() {
        let c = Connection::open_in_memory().unwrap();
        let mut stmt = c.prepare("SELECT quote(?1)").unwrap();
        let mut reals = vec![
            0.0,
            -0.0,
            0.1,
            0.1 + 0.2,
            49.47,
            1.0,
            -1.5,
            1e300,
            -1e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
            123456789012345678.0,
            0.000123,
            1e23,
        ];
        // Random bit patterns (every exponent) and random prices.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = f64::from_bits(x);
            if !r.is_nan() {
                reals.push(r);
            }
            reals.push((x % 10_000_000) as f64 / 100.0);
        }
        for r in reals {
            let want: String = stmt.query_row([r], |row| row.get(0)).unwrap();
            let mut have = String::new();
            quote_real(r, &mut have);
            assert_eq!(have, want, "{r:e}");
        }
        for i in [0, 1, -1, 42, i64::MAX, i64::MIN, -9_007_199_254_740_993] {
            let mut b = itoa_buf();
            assert_eq!(itoa(i, &mut b), i.to_string());
        }
        let blob: String = stmt
            .query_row([vec![0u8, 1, 0xab, 0xff]], |row| row.get(0))
            .unwrap();
        let mut have = String::new();
        quote_value(&Value::Blob(vec![0, 1, 0xab, 0xff]), &mut have);
        assert_eq!(have, blob);
        for t in ["", "'", "it's", "''x'", "plain"] {
            let want: String = stmt.query_row([t], |row| row.get(0)).unwrap();
            let mut have = String::new();
            quote_text(t, &mut have);
            assert_eq!(have, want, "{t:?}");
        }
    }
}
