//! `recover-positions`: the positions rebuilt purely from the events, without
//! trusting the positions table, and where the table disagrees.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use rusqlite::types::Value as SqlValue;

use crate::error::{Error, Result};
use crate::event::read_events;
use crate::replay::{replay, ReplayOptions};
use crate::validate::Finding;

/// A position as the events build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionView {
    pub symbol: Option<String>,
    pub side: Option<String>,
    pub entry_price: Option<f64>,
    pub quantity: Option<f64>,
    pub status: Option<String>,
    pub unrealized_pnl: Option<f64>,
    pub realized_pnl: Option<f64>,
    pub current_price: Option<f64>,
    pub strategy_id: Option<String>,
    pub opened_at: Option<String>,
}

/// The rebuild's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionsReport {
    /// Positions the events create (open and closed).
    pub total_positions: u64,
    pub open_positions: u64,
    /// The open positions, by position id.
    pub positions: BTreeMap<String, PositionView>,
    /// Where the positions table disagrees with the rebuild (code
    /// `position_divergence`); only computed when rebuilding up to the last event.
    pub divergences: Vec<Finding>,
    /// The last event taken into account.
    pub last_sequence: Option<i64>,
}

/// Rebuilds the positions from the `POSITION_*` events from sequence 1, up to
/// `until` when given (the prefix of events at or before it).
///
/// # Errors
/// [`Error::Schema`] without the trading schema; [`Error::Event`] naming the
/// event when a position event cannot apply (e.g. an update of a position never
/// opened); [`Error::Sqlite`].
pub fn recover_positions(
    conn: &Connection,
    until: Option<DateTime<Utc>>,
) -> Result<PositionsReport> {
    crate::schema::require_trading_schema(conn)?;
    let events = read_events(conn, i64::MIN, until)?;
    let last_sequence = events.last().map(|e| e.sequence_number);
    let position_events: Vec<_> = events
        .into_iter()
        .filter(|e| e.event_type.starts_with("POSITION_"))
        .collect();
    let mut scratch = scratch_db()?;
    replay(&mut scratch, &position_events, &rebuild_options())?;
    let mut report = PositionsReport {
        last_sequence,
        ..Default::default()
    };
    let mut stmt = scratch
        .prepare(
            "SELECT position_id, symbol, side, entry_price, quantity, status, unrealized_pnl, realized_pnl, \
             current_price, strategy_id, opened_at FROM positions ORDER BY position_id",
        )
        .map_err(Error::sqlite("reading rebuilt positions"))?;
    let all = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                PositionView {
                    symbol: r.get(1)?,
                    side: r.get(2)?,
                    entry_price: r.get(3)?,
                    quantity: r.get(4)?,
                    status: r.get(5)?,
                    unrealized_pnl: r.get(6)?,
                    realized_pnl: r.get(7)?,
                    current_price: r.get(8)?,
                    strategy_id: r.get(9)?,
                    opened_at: r.get(10)?,
                },
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(Error::sqlite("reading rebuilt positions"))?;
    report.total_positions = all.len() as u64;
    for (id, p) in all {
        if p.status.as_deref() == Some("open") {
            report.positions.insert(id, p);
        }
    }
    report.open_positions = report.positions.len() as u64;
    if until.is_none() {
        report.divergences = diff_table(conn, &scratch, "positions", "position_id")?
            .into_iter()
            .map(|m| Finding::new("position_divergence", m))
            .collect();
    }
    Ok(report)
}

/// An in-memory database with the schema, for rebuilding projections.
fn scratch_db() -> Result<Connection> {
    let c = Connection::open_in_memory().map_err(q("opening an in-memory database"))?;
    crate::schema::ensure_schema(&c)?;
    Ok(c)
}

fn rebuild_options() -> ReplayOptions {
    ReplayOptions {
        check_sequence: false,
        record_events: false,
        tune_pragmas: false,
        ..ReplayOptions::default()
    }
}

type Rendered = BTreeMap<String, Vec<String>>;

fn render(conn: &Connection, table: &str, key: &str) -> Result<(Vec<String>, Rendered)> {
    let cols: Vec<String> = rows(
        conn,
        &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
    )?
    .iter()
    .filter_map(|r| text(&r[0]))
    .collect();
    let expr: Vec<String> = cols.iter().map(|c| format!("quote(\"{c}\")")).collect();
    let sql = format!("SELECT quote(\"{key}\"), {} FROM {table}", expr.join(", "));
    let mut out = BTreeMap::new();
    for r in rows(conn, &sql)? {
        let mut it = r.iter().map(|v| text(v).unwrap_or_default());
        let k = it.next().unwrap_or_default();
        out.insert(k, it.collect());
    }
    Ok((cols, out))
}

/// The differences between a table of the database and of the rebuilt state, one
/// message per row and column.
fn diff_table(
    db: &Connection,
    rebuilt: &Connection,
    table: &str,
    key: &str,
) -> Result<Vec<String>> {
    let (cols, have) = render(db, table, key)?;
    let (rcols, want) = render(rebuilt, table, key)?;
    let noun = table.trim_end_matches('s');
    let mut out = Vec::new();
    for (k, row) in &have {
        match want.get(k) {
            None => out.push(format!(
                "{noun} {k} is in the database but no event creates it"
            )),
            Some(w) => {
                for (i, (a, b)) in row.iter().zip(w).enumerate() {
                    if a != b {
                        out.push(format!(
                            "{noun} {k}: {} is {a} in the database but {b} after replaying the events",
                            cols.get(i).or(rcols.get(i)).map_or("?", |s| s.as_str())
                        ));
                    }
                }
            }
        }
    }
    for k in want.keys().filter(|k| !have.contains_key(*k)) {
        out.push(format!(
            "{noun} {k} is missing from the database but replaying the events creates it"
        ));
    }
    Ok(out)
}

fn q(action: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        action: action.to_string(),
        source,
    }
}

fn text(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::Text(t) => Some(t.clone()),
        SqlValue::Integer(i) => Some(i.to_string()),
        SqlValue::Real(f) => Some(f.to_string()),
        _ => None,
    }
}

fn rows(conn: &Connection, sql: &str) -> Result<Vec<Vec<SqlValue>>> {
    let mut stmt = conn.prepare(sql).map_err(q(sql))?;
    let n = stmt.column_count();
    let out = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, SqlValue>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(q(sql))?;
    Ok(out)
}
