//! The trading schema of DOMAIN.md: creating it and recognising it.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The schema, exactly as DOMAIN.md defines it.
pub const SCHEMA_SQL: &str = "\
CREATE TABLE events (
  event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
  event_data TEXT NOT NULL,
  sequence_number INTEGER NOT NULL,
  created_at TEXT NOT NULL);
CREATE TABLE positions (position_id TEXT PRIMARY KEY, symbol TEXT, side TEXT,
  entry_price REAL, quantity REAL, status TEXT, opened_at TEXT, strategy_id TEXT,
  unrealized_pnl REAL, realized_pnl REAL, current_price REAL, exit_price REAL,
  closed_at TEXT);
CREATE TABLE orders (order_id TEXT PRIMARY KEY, client_order_id TEXT UNIQUE,
  symbol TEXT, side TEXT, order_type TEXT, quantity REAL, price REAL, status TEXT,
  created_at TEXT, filled_quantity REAL, executed_price REAL, filled_at TEXT,
  cancelled_at TEXT, position_id TEXT);
CREATE TABLE balances (asset TEXT PRIMARY KEY, free_balance REAL,
  locked_balance REAL, total_balance REAL, updated_at TEXT);
CREATE TABLE system_state (key TEXT PRIMARY KEY, value TEXT, updated_at TEXT);
CREATE TABLE tier_history (id INTEGER PRIMARY KEY AUTOINCREMENT, old_tier TEXT,
  new_tier TEXT, reason TEXT, changed_at TEXT);
CREATE TABLE risk_limits (limit_type TEXT PRIMARY KEY, limit_value REAL, tier TEXT,
  updated_at TEXT);
CREATE TABLE checkpoints (checkpoint_id TEXT PRIMARY KEY, state_hash TEXT,
  created_at TEXT);
";

/// The columns of the `events` table, in order.
pub const EVENT_COLUMNS: [&str; 6] = [
    "event_id",
    "event_type",
    "aggregate_id",
    "event_data",
    "sequence_number",
    "created_at",
];

/// Creates the tables that are missing; on a database without any table, also sets
/// `PRAGMA user_version = 1`.
///
/// # Errors
/// [`Error::Sqlite`] when SQLite refuses a statement.
pub fn ensure_schema(conn: &Connection) -> Result<()> {
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(Error::sqlite("reading the schema"))?;
    let sql = SCHEMA_SQL.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ");
    conn.execute_batch(&format!("BEGIN; {sql} COMMIT;"))
        .map_err(Error::sqlite("creating the trading schema"))?;
    if tables == 0 {
        conn.pragma_update(None, "user_version", 1)
            .map_err(Error::sqlite("setting user_version"))?;
    }
    Ok(())
}

/// Whether the database has an `events` table with the expected columns.
///
/// # Errors
/// [`Error::Sqlite`] when the schema cannot be read.
pub fn has_trading_schema(conn: &Connection) -> Result<bool> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('events')")
        .map_err(Error::sqlite("reading the events table's columns"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .map_err(Error::sqlite("reading the events table's columns"))?;
    Ok(EVENT_COLUMNS.iter().all(|c| names.iter().any(|n| n == c)))
}

/// Fails with [`Error::Schema`] unless the database has the trading schema.
///
/// # Errors
/// [`Error::Schema`] or [`Error::Sqlite`].
pub fn require_trading_schema(conn: &Connection) -> Result<()> {
    if has_trading_schema(conn)? {
        Ok(())
    } else {
        Err(Error::Schema(
            "no `events` table with the columns event_id, event_type, aggregate_id, event_data, sequence_number, created_at".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_schema_once_and_recognises_it() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(!has_trading_schema(&conn).unwrap());
        ensure_schema(&conn).unwrap();
        ensure_schema(&conn).unwrap();
        assert!(has_trading_schema(&conn).unwrap());
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }
}
