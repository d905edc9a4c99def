//! The canonical state hash of DOMAIN.md rule 10, written into CHECKPOINT events.
//!
//! BLAKE3 over this text: for each of `positions`, `orders`, `balances` in that
//! order, the table's name and `\n`, then each row ordered by primary key, its
//! columns (all of them, in table order) rendered by SQLite's own `quote()` and
//! joined by `|`, followed by `\n`. The result is `blake3:` and the hex digest.
//! Rendering is left to SQLite so that reals are written exactly as `quote()`
//! writes them.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The hashed tables with their primary keys, in hashing order.
pub const HASHED_TABLES: [(&str, &str); 3] = [
    ("positions", "position_id"),
    ("orders", "order_id"),
    ("balances", "asset"),
];

/// The SELECT that renders a table's rows for the hash (one text column per row).
///
/// # Errors
/// [`Error::Sqlite`] when the table's columns cannot be read.
pub fn render_query(conn: &Connection, table: &str, key: &str) -> Result<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .map_err(Error::sqlite(format!("reading the columns of {table}")))?;
    let cols = stmt
        .query_map([table], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .map_err(Error::sqlite(format!("reading the columns of {table}")))?;
    if cols.is_empty() {
        return Err(Error::Schema(format!("no table {table}")));
    }
    let expr: Vec<String> = cols
        .iter()
        .map(|c| format!("quote(\"{}\")", c.replace('"', "\"\"")))
        .collect();
    Ok(format!(
        "SELECT {} FROM {table} ORDER BY {key}",
        expr.join(" || '|' || ")
    ))
}

/// The canonical state hash, `blake3:<hex>`.
///
/// # Errors
/// [`Error::Sqlite`] or [`Error::Schema`] when a table cannot be read.
pub fn state_hash(conn: &Connection) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    for (table, key) in HASHED_TABLES {
        hasher.update(table.as_bytes());
        hasher.update(b"\n");
        let sql = render_query(conn, table, key)?;
        let mut stmt = conn
            .prepare(&sql)
            .map_err(Error::sqlite(format!("hashing {table}")))?;
        let mut rows = stmt
            .query([])
            .map_err(Error::sqlite(format!("hashing {table}")))?;
        while let Some(row) = rows
            .next()
            .map_err(Error::sqlite(format!("hashing {table}")))?
        {
            let text = row
                .get_ref(0)
                .map_err(Error::sqlite(format!("hashing {table}")))?;
            if let rusqlite::types::ValueRef::Text(t) = text {
                hasher.update(t);
            }
            hasher.update(b"\n");
        }
    }
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_the_documented_text() {
        let c = Connection::open_in_memory().unwrap();
        crate::schema::ensure_schema(&c).unwrap();
        c.execute_batch(
            "INSERT INTO balances VALUES ('USDT', 1.5, 0.25, 1.75, '2025-01-15T00:00:00');
             INSERT INTO balances VALUES ('BTC', 1, NULL, 1, 'x''y');",
        )
        .unwrap();
        let text = "positions\norders\nbalances\n'BTC'|1.0|NULL|1.0|'x''y'\n'USDT'|1.5|0.25|1.75|'2025-01-15T00:00:00'\n";
        let expected = format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex());
        assert_eq!(state_hash(&c).unwrap(), expected);
    }
}
