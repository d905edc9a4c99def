//! The StateReconstructor: DOMAIN.md's validation rules 2–10, its warnings and
//! its metrics, over a database with the trading schema. (Rule 1, SQLite's own
//! checks, belongs to `core`.)
//!
//! Each rule has one error code, so a report can be read (and tested) rule by
//! rule; the message names the row: order id, position id, asset or sequence
//! number.
//!
//! Time is linear in the events and memory bounded by the state: the events
//! are read once ([`stream`]), rules 2 and 3 checked as they go, and their
//! effects folded in memory ([`fold`]); rule 9 compares the folded positions,
//! orders and balances with the tables, rule 10 the `blake3:` checkpoints it
//! rehashes with the folded state at them (which ones: [`pass`]). Nothing is
//! written to any database.

mod fold;
mod pass;
mod stream;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Error codes, one per rule.
pub mod codes {
    pub const EVENT_SEQUENCE: &str = "event_sequence";
    pub const EVENT_AFTER_TARGET: &str = "event_after_target";
    pub const BALANCE: &str = "balance_inconsistent";
    pub const ORDER_INVALID: &str = "order_invalid";
    pub const ORDER_FILL_STATE: &str = "order_fill_state";
    pub const POSITION_INVALID: &str = "position_invalid";
    pub const ORDER_POSITION_MISSING: &str = "order_position_missing";
    pub const REPLAY_MISMATCH: &str = "replay_mismatch";
    pub const CHECKPOINT_HASH: &str = "checkpoint_hash_mismatch";
    // Warnings.
    pub const USER_VERSION: &str = "user_version_zero";
    pub const UNKNOWN_EVENT_TYPE: &str = "unknown_event_type";
    pub const TIME_BACKWARDS: &str = "created_at_backwards";
    pub const STALE_OPEN_ORDER: &str = "stale_open_order";
    pub const LOCKED_BALANCE_SHORT: &str = "locked_balance_short";
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
}

/// The order statuses DOMAIN.md allows.
pub const ORDER_STATUSES: [&str; 6] = [
    "new",
    "partially_filled",
    "filled",
    "cancelled",
    "rejected",
    "expired",
];

/// A finding: a stable code and a message naming the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub message: String,
}

impl Finding {
    /// A finding with this code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Finding {
        Finding {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The validation report (same field names as core's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub is_consistent: bool,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub metrics: Map<String, Value>,
}

/// How to validate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The restore target: events after it are errors (rule 3).
    pub target: Option<DateTime<Utc>>,
    /// Open orders older than this (before the last event, or the target) are warned about.
    pub max_open_order_age: TimeDelta,
    /// Rule 9 (replay comparison); default true.
    pub check_replay: bool,
    /// Rule 10 (checkpoint hashes); default true.
    pub check_checkpoints: bool,
    /// Rule 10 for every `blake3:` checkpoint (`validate --full`); by default
    /// only the newest and those after [`ValidateOptions::checkpoints_after`]
    /// are rehashed (see the module `pass` for why), and the metrics
    /// (`checkpoint_hashes`) say which were not.
    pub all_checkpoints: bool,
    /// Rehash every checkpoint with a sequence number above this one (a
    /// restore passes the last sequence number of the restored database, so
    /// that every checkpoint it replayed is checked); default none.
    pub checkpoints_after: Option<i64>,
    /// Event types handled elsewhere (plugins): not warned about.
    pub handled_event_types: BTreeSet<String>,
    /// Findings listed per rule before a summary line; default 50.
    pub max_findings_per_rule: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            target: None,
            max_open_order_age: TimeDelta::hours(24),
            check_replay: true,
            check_checkpoints: true,
            all_checkpoints: false,
            checkpoints_after: None,
            handled_event_types: BTreeSet::new(),
            max_findings_per_rule: 50,
        }
    }
}

/// Collects findings per code, capped, with a summary of what was left out.
struct Sink {
    cap: usize,
    found: Vec<Finding>,
    counts: BTreeMap<String, usize>,
}

impl Sink {
    fn new(cap: usize) -> Sink {
        Sink {
            cap: cap.max(1),
            found: Vec::new(),
            counts: BTreeMap::new(),
        }
    }
    fn push(&mut self, code: &str, message: impl Into<String>) {
        let n = self.counts.entry(code.to_string()).or_default();
        *n += 1;
        if *n <= self.cap {
            self.found.push(Finding::new(code, message));
        }
    }
    /// Adds another sink's findings after this one's.
    fn append(&mut self, other: Sink) {
        self.found.extend(other.found);
        for (code, n) in other.counts {
            *self.counts.entry(code).or_default() += n;
        }
    }
    /// Counts `n` findings of `code` that are not kept.
    fn skip(&mut self, code: &str, n: usize) {
        if n > 0 {
            *self.counts.entry(code.to_string()).or_default() += n;
        }
    }
    fn finish(mut self) -> Vec<Finding> {
        for (code, n) in &self.counts {
            if *n > self.cap {
                self.found.push(Finding::new(
                    code,
                    format!("... and {} more {code} findings", n - self.cap),
                ));
            }
        }
        self.found
    }
}

fn q(action: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        action: action.to_string(),
        source,
    }
}

fn num(v: &SqlValue) -> Option<f64> {
    match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        SqlValue::Text(t) => t.trim().parse().ok(),
        _ => None,
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

/// Calls `f` on each row of `sql`, one buffer reused: a table is never held whole.
fn each_row(
    conn: &Connection,
    sql: &str,
    mut f: impl FnMut(&[SqlValue]) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(sql).map_err(q(sql))?;
    let n = stmt.column_count();
    let mut rows = stmt.query([]).map_err(q(sql))?;
    let mut buf = Vec::with_capacity(n);
    while let Some(r) = rows.next().map_err(q(sql))? {
        buf.clear();
        for i in 0..n {
            buf.push(r.get::<_, SqlValue>(i).map_err(q(sql))?);
        }
        f(&buf)?;
    }
    Ok(())
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

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Validates the database's trading state; see the module documentation.
///
/// # Errors
/// [`Error::Schema`] without the trading schema, [`Error::Sqlite`] when a table
/// cannot be read. Inconsistencies are findings in the report, not errors.
pub fn validate_state(conn: &Connection, opts: &ValidateOptions) -> Result<ValidationReport> {
    let _span = tracing::info_span!("validate").entered();
    crate::schema::require_trading_schema(conn)?;
    let mut errors = Sink::new(opts.max_findings_per_rule);
    let mut warnings = Sink::new(opts.max_findings_per_rule);
    let mut metrics = Map::new();

    let user_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(q("reading user_version"))?;
    if user_version == 0 {
        warnings.push(
            codes::USER_VERSION,
            "PRAGMA user_version is 0 (the trading system sets 1)",
        );
    }

    // The table rules (4-8) read only the projections: on a database file
    // they run on a second connection beside the pass over the events.
    let second = conn
        .path()
        .filter(|p| !p.is_empty())
        .and_then(|p| Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY).ok());
    let t0 = std::time::Instant::now();
    let (events, tables) = std::thread::scope(|s| {
        let beside = second.map(|c| s.spawn(move || table_rules(&c, opts)));
        let events = events_pass(conn, opts, t0);
        let tables = match beside {
            Some(h) => h
                .join()
                .unwrap_or_else(|p| Err(Error::internal("the table rules", p.as_ref()))),
            None => table_rules(conn, opts),
        };
        (events, tables)
    });
    let (mut pass, event_warnings, diffs) = events?;
    let tables = tables?;
    metrics.extend(std::mem::take(&mut pass.metrics));
    // Open orders older than the age before the last event (or the target).
    let reference = pass
        .last_time()
        .and_then(crate::time::parse_opt)
        .map(|t| opts.target.map_or(t, |target| target.min(t)));

    tracing::debug!("events and tables checked in {:?}", t0.elapsed());
    warnings.append(event_warnings);
    pass.sequence.into_sink(codes::EVENT_SEQUENCE, &mut errors);
    duplicate_event_ids(conn, &mut errors)?;
    pass.after_target
        .into_sink(codes::EVENT_AFTER_TARGET, &mut errors);
    errors.append(tables.errors);
    if let Some(reference) = reference {
        for (id, created, t) in &tables.open_since {
            if reference - *t > opts.max_open_order_age {
                warnings.push(
                    codes::STALE_OPEN_ORDER,
                    format!(
                        "order {id} has been open since {created} (more than {} hours before {})",
                        opts.max_open_order_age.num_hours(),
                        crate::time::format(reference)
                    ),
                );
            }
        }
    }
    warnings.append(tables.warnings);
    metrics.extend(tables.metrics);
    pass.checkpoint_errors
        .into_sink(codes::CHECKPOINT_HASH, &mut errors);
    if let Some(m) = pass.replay_failed {
        errors.push(codes::REPLAY_MISMATCH, m);
    } else {
        for d in diffs {
            errors.push(codes::REPLAY_MISMATCH, d);
        }
    }
    let errors = errors.finish();
    Ok(ValidationReport {
        is_consistent: errors.is_empty(),
        errors,
        warnings: warnings.finish(),
        metrics,
    })
}

/// The pass over the events (rules 2, 3, 9, 10, the event warnings and
/// metrics): in rowid order, again through SQLite's sorter only when the
/// table is not in sequence order.
fn events_pass<'o>(
    conn: &Connection,
    opts: &'o ValidateOptions,
    t0: std::time::Instant,
) -> Result<(pass::Pass<'o>, Sink, Vec<String>)> {
    let mut pass = pass::Pass::new(opts)?;
    let mut warnings = Sink::new(opts.max_findings_per_rule);
    let read = stream::each_event(conn, stream::Order::Rowid, |ev| {
        pass.event(ev, &mut warnings)
    })?;
    if read == stream::Streamed::OutOfOrder {
        tracing::debug!("events are not in sequence order by rowid: reading them sorted");
        pass = pass::Pass::new(opts)?;
        warnings = Sink::new(opts.max_findings_per_rule);
        stream::each_event(conn, stream::Order::Sorted, |ev| {
            pass.event(ev, &mut warnings)
        })?;
    }
    tracing::debug!("events read and folded in {:?}", t0.elapsed());
    let mut metrics = Map::new();
    let (mut pass, diffs) = pass.finish(conn, &mut warnings, &mut metrics)?;
    pass.metrics = metrics;
    tracing::debug!(
        "replay comparison and newest checkpoint done in {:?}",
        t0.elapsed()
    );
    Ok((pass, warnings, diffs))
}

/// What rules 4-8 found: errors, the open orders with their opening time
/// (the age warning needs the last event's time), the locked-balance
/// warnings, and the table metrics.
struct TableRules {
    errors: Sink,
    open_since: Vec<(String, String, DateTime<Utc>)>,
    warnings: Sink,
    metrics: Map<String, Value>,
}

fn table_rules(conn: &Connection, opts: &ValidateOptions) -> Result<TableRules> {
    let mut t = TableRules {
        errors: Sink::new(opts.max_findings_per_rule),
        open_since: Vec::new(),
        warnings: Sink::new(opts.max_findings_per_rule),
        metrics: Map::new(),
    };
    check_balances(conn, &mut t.errors, &mut t.metrics)?;
    check_orders(conn, &mut t)?;
    check_positions(conn, &mut t.errors, &mut t.metrics)?;
    Ok(t)
}

/// Rule 2's duplicate event ids, through the primary-key index.
fn duplicate_event_ids(conn: &Connection, errors: &mut Sink) -> Result<()> {
    for r in rows(
        conn,
        "SELECT event_id, count(*) FROM events GROUP BY event_id HAVING count(*) > 1",
    )? {
        errors.push(
            codes::EVENT_SEQUENCE,
            format!(
                "event_id {} is used by {} events",
                text(&r[0]).unwrap_or_default(),
                num(&r[1]).unwrap_or(0.0)
            ),
        );
    }
    Ok(())
}

fn check_balances(
    conn: &Connection,
    errors: &mut Sink,
    metrics: &mut Map<String, Value>,
) -> Result<()> {
    let mut per_asset = Map::new();
    for r in rows(
        conn,
        "SELECT asset, free_balance, locked_balance, total_balance FROM balances ORDER BY asset",
    )? {
        let asset = text(&r[0]).unwrap_or_else(|| "NULL".into());
        let (free, locked, total) = (num(&r[1]), num(&r[2]), num(&r[3]));
        per_asset.insert(
            asset.clone(),
            json!({"free": free, "locked": locked, "total": total}),
        );
        match (free, locked, total) {
            (Some(f), Some(l), Some(t)) => {
                if (t - (f + l)).abs() > 1e-9 * t.abs().max((f + l).abs()) {
                    errors.push(
                        codes::BALANCE,
                        format!(
                            "balance {asset}: total {t} is not free {f} + locked {l} ({})",
                            f + l
                        ),
                    );
                }
                for (name, v) in [("free", f), ("locked", l), ("total", t)] {
                    if v < 0.0 {
                        errors.push(
                            codes::BALANCE,
                            format!("balance {asset}: {name} balance {v} is negative"),
                        );
                    }
                }
            }
            _ => errors.push(
                codes::BALANCE,
                format!("balance {asset}: free, locked or total is missing or not a number"),
            ),
        }
    }
    metrics.insert("balances".into(), Value::Object(per_asset));
    Ok(())
}

fn check_orders(conn: &Connection, t: &mut TableRules) -> Result<()> {
    let (errors, warnings, metrics) = (&mut t.errors, &mut t.warnings, &mut t.metrics);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    // Held back by open orders, per asset.
    let mut held: BTreeMap<String, f64> = BTreeMap::new();
    each_row(
        conn,
        "SELECT order_id, status, quantity, filled_quantity, price, order_type, side, symbol, created_at FROM orders ORDER BY order_id",
        |r| {
        let id = text(&r[0]).unwrap_or_else(|| "NULL".into());
        let status = text(&r[1]).unwrap_or_else(|| "NULL".into());
        *by_status.entry(status.clone()).or_default() += 1;
        let quantity = num(&r[2]);
        let filled = num(&r[3]).unwrap_or(0.0);
        let price = num(&r[4]);
        let order_type = text(&r[5]).unwrap_or_default().to_lowercase();
        // Rule 5.
        if !ORDER_STATUSES.contains(&status.as_str()) {
            errors.push(codes::ORDER_INVALID, format!("order {id}: status {status:?} is not one of {}", ORDER_STATUSES.join(", ")));
        }
        match quantity {
            Some(qty) if qty < 0.0 => errors.push(codes::ORDER_INVALID, format!("order {id}: quantity {qty} is negative")),
            Some(qty) if filled > qty && !close(filled, qty) => {
                errors.push(codes::ORDER_INVALID, format!("order {id}: filled quantity {filled} exceeds quantity {qty}"))
            }
            None => errors.push(codes::ORDER_INVALID, format!("order {id}: quantity is missing")),
            _ => {}
        }
        match price {
            Some(p) if p < 0.0 => errors.push(codes::ORDER_INVALID, format!("order {id}: price {p} is negative")),
            Some(p) if p == 0.0 && order_type.contains("limit") => {
                errors.push(codes::ORDER_INVALID, format!("order {id}: {order_type} order has price 0"))
            }
            None if order_type.contains("limit") => {
                errors.push(codes::ORDER_INVALID, format!("order {id}: {order_type} order has no price"))
            }
            _ => {}
        }
        // Rule 6.
        if status == "new" && filled != 0.0 {
            errors.push(codes::ORDER_FILL_STATE, format!("order {id}: status new but filled quantity {filled}"));
        }
        if let (true, Some(qty)) = (status == "filled", quantity) {
            if !close(filled, qty) {
                errors.push(codes::ORDER_FILL_STATE, format!("order {id}: status filled but filled quantity {filled} is not quantity {qty}"));
            }
        }
        // Warnings on open orders.
        if status == "new" || status == "partially_filled" {
            if let Some(created) = text(&r[8]) {
                if let Some(at) = crate::time::parse_opt(&created) {
                    t.open_since.push((id.clone(), created, at));
                }
            }
            let symbol = text(&r[7]).unwrap_or_default();
            let side = text(&r[6]).unwrap_or_default().to_lowercase();
            let remaining = (quantity.unwrap_or(0.0) - filled).max(0.0);
            if let Some((base, quote)) = symbol.split_once('/') {
                if side == "buy" {
                    if let Some(p) = price {
                        *held.entry(quote.to_string()).or_default() += remaining * p;
                    }
                } else if side == "sell" {
                    *held.entry(base.to_string()).or_default() += remaining;
                }
            }
        }
        Ok(())
    })?;
    for (asset, need) in &held {
        let locked: Option<f64> = rows(
            conn,
            &format!(
                "SELECT locked_balance FROM balances WHERE asset = {}",
                sql_quote(asset)
            ),
        )?
        .first()
        .and_then(|r| num(&r[0]));
        let locked = locked.unwrap_or(0.0);
        if locked < *need && !close(locked, *need) && *need - locked > 1e-9 {
            warnings.push(
                codes::LOCKED_BALANCE_SHORT,
                format!("balance {asset}: locked {locked} does not cover the {need} held back by open orders"),
            );
        }
    }
    // Rule 8.
    for r in rows(
        conn,
        "SELECT o.order_id, o.position_id FROM orders o WHERE o.position_id IS NOT NULL AND o.position_id <> '' \
         AND NOT EXISTS (SELECT 1 FROM positions p WHERE p.position_id = o.position_id) ORDER BY o.order_id",
    )? {
        errors.push(
            codes::ORDER_POSITION_MISSING,
            format!("order {}: position {} does not exist", text(&r[0]).unwrap_or_default(), text(&r[1]).unwrap_or_default()),
        );
    }
    metrics.insert("orders_by_status".into(), json!(by_status));
    metrics.insert("order_count".into(), json!(by_status.values().sum::<u64>()));
    Ok(())
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn check_positions(
    conn: &Connection,
    errors: &mut Sink,
    metrics: &mut Map<String, Value>,
) -> Result<()> {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut exposure: BTreeMap<String, f64> = BTreeMap::new();
    let (mut realized, mut unrealized) = (0.0, 0.0);
    each_row(
        conn,
        "SELECT position_id, status, quantity, closed_at, symbol, entry_price, realized_pnl, unrealized_pnl FROM positions ORDER BY position_id",
        |r| {
        let id = text(&r[0]).unwrap_or_else(|| "NULL".into());
        let status = text(&r[1]).unwrap_or_else(|| "NULL".into());
        *by_status.entry(status.clone()).or_default() += 1;
        let qty = num(&r[2]);
        realized += num(&r[6]).unwrap_or(0.0);
        if status == "open" {
            match qty {
                Some(v) if v > 0.0 => {}
                _ => errors.push(codes::POSITION_INVALID, format!("position {id}: open with quantity {}", qty.map_or("NULL".into(), |v| v.to_string()))),
            }
            *exposure.entry(text(&r[4]).unwrap_or_default()).or_default() += qty.unwrap_or(0.0) * num(&r[5]).unwrap_or(0.0);
            unrealized += num(&r[7]).unwrap_or(0.0);
        } else if status == "closed" && text(&r[3]).is_none_or(|s| s.is_empty()) {
            errors.push(codes::POSITION_INVALID, format!("position {id}: closed without closed_at"));
        }
        Ok(())
    })?;
    metrics.insert("positions_by_status".into(), json!(by_status));
    metrics.insert("open_exposure".into(), json!(exposure));
    metrics.insert("realized_pnl".into(), json!(realized));
    metrics.insert("unrealized_pnl".into(), json!(unrealized));
    Ok(())
}
