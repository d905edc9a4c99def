//! Values as SQLite stores and renders them, for the fold ([`super::fold`]):
//! the conversions of DOMAIN.md's REAL and TEXT affinities, and `quote()`'s
//! rendering, which the canonical hash (rule 10) and the messages of rule 9
//! use.
//!
//! Reals are rendered by SQLite itself (its printf with `quote()`'s format),
//! and the rare conversions that need SQLite's own arithmetic are evaluated by
//! an in-memory connection (`CAST`, nothing stored).

use rusqlite::types::Value;
use rusqlite::Connection;

use super::rows::Cell;
use crate::effects::SqlVal;
use crate::error::{Error, Result};

/// Whether SQLite's numeric affinity converts this text (a decimal literal,
/// optionally surrounded by spaces).
pub(super) fn looks_numeric(t: &str) -> bool {
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

    fn eval(&self, sql: &str, v: &Value) -> Result<Cell> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([v], |r| r.get::<_, Value>(0)))
            .map(Cell::from)
            .map_err(|e| Error::sqlite(format!("evaluating {sql}"))(e))
    }

    /// The value SQLite stores for `v` in a column of this affinity (REAL
    /// when `real`, else TEXT).
    pub(super) fn stored(&self, v: &SqlVal<'_>, real: bool) -> Result<Cell> {
        Ok(match (v, real) {
            (SqlVal::Null, _) => Cell::Null,
            (SqlVal::Int(i), true) => Cell::Real(*i as f64),
            (SqlVal::Real(f), true) => Cell::Real(*f),
            (SqlVal::Text(t), true) if looks_numeric(t) => {
                self.eval("SELECT CAST(?1 AS REAL)", &Value::Text(t.to_string()))?
            }
            (SqlVal::Text(t), _) => Cell::text(t),
            (SqlVal::Int(i), false) => {
                let mut b = itoa_buf();
                Cell::text(itoa(*i, &mut b))
            }
            (SqlVal::Real(f), false) => self.eval("SELECT CAST(?1 AS TEXT)", &Value::Real(*f))?,
        })
    }
}

/// A cell as `quote()` renders it.
pub(super) fn quote_cell(c: &Cell, out: &mut String) {
    match c {
        Cell::Null => out.push_str("NULL"),
        Cell::Int(i) => {
            let mut b = itoa_buf();
            out.push_str(itoa(*i, &mut b));
        }
        Cell::Real(r) => quote_real(*r, out),
        Cell::Blob(b) => quote_blob(b, out),
        text => quote_text(text.as_text().unwrap_or_default(), out),
    }
}

/// A row as the canonical hash renders it: the key, then each column, as
/// `quote()` renders them, separated by `|`.
pub(super) fn render(key: &str, vals: &[Cell]) -> String {
    let mut line = String::with_capacity(16 * (vals.len() + 1));
    render_into(key, vals, &mut line);
    line
}

/// [`render`], appended to `out`.
pub(super) fn render_into(key: &str, vals: &[Cell], out: &mut String) {
    quote_text(key, out);
    for v in vals {
        out.push('|');
        quote_cell(v, out);
    }
}

/// A blob as `quote()` renders it: `X'...'` in upper-case hex.
fn quote_blob(b: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(b.len() * 2 + 3);
    out.push_str("X'");
    for byte in b {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 15)]));
    }
    out.push('\'');
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
pub(super) fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// `i` in decimal, written into `buf` (no allocation).
pub(super) fn itoa(i: i64, buf: &mut [u8; 20]) -> &str {
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
            quote_cell(&sqlite.stored(v, true).unwrap(), &mut r);
            quote_cell(&sqlite.stored(v, false).unwrap(), &mut s);
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
        quote_cell(&Cell::Blob(vec![0, 1, 0xab, 0xff].into()), &mut have);
        assert_eq!(have, blob);
        for t in ["", "'", "it's", "''x'", "plain"] {
            let want: String = stmt.query_row([t], |row| row.get(0)).unwrap();
            let mut have = String::new();
            quote_text(t, &mut have);
            assert_eq!(have, want, "{t:?}");
        }
    }
}
