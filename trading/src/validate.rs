//! The StateReconstructor: DOMAIN.md's validation rules 2–10, its warnings and
//! its metrics, over a database with the trading schema. (Rule 1, SQLite's own
//! checks, belongs to `core`.)
//!
//! Each rule has one error code, so a report can be read (and tested) rule by
//! rule; the message names the row: order id, position id, asset or sequence
//! number. Rule 9 rebuilds positions, orders and balances by replaying every
//! event into an in-memory database; rule 10 checks each CHECKPOINT's
//! `blake3:` hash against the state replayed up to it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::event::{read_events, Event};
use crate::replay::{replay, ReplayOptions};
use crate::statehash::{state_hash, HASHED_TABLES};

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

    let events = read_events(conn, i64::MIN, None)?;
    check_events(
        conn,
        &events,
        opts,
        &mut errors,
        &mut warnings,
        &mut metrics,
    )?;
    check_balances(conn, &mut errors, &mut metrics)?;
    let reference = events
        .last()
        .and_then(|e| crate::time::parse_opt(&e.created_at))
        .map(|t| opts.target.map_or(t, |target| target.min(t)));
    check_orders(
        conn,
        opts,
        reference,
        &mut errors,
        &mut warnings,
        &mut metrics,
    )?;
    check_positions(conn, &mut errors, &mut metrics)?;
    if opts.check_replay || opts.check_checkpoints {
        check_replay(conn, &events, opts, &mut errors)?;
    }
    let errors = errors.finish();
    Ok(ValidationReport {
        is_consistent: errors.is_empty(),
        errors,
        warnings: warnings.finish(),
        metrics,
    })
}

fn check_events(
    conn: &Connection,
    events: &[Event],
    opts: &ValidateOptions,
    errors: &mut Sink,
    warnings: &mut Sink,
    metrics: &mut Map<String, Value>,
) -> Result<()> {
    // Rule 2: sequence numbers 1, 2, 3, ... and unique event ids.
    let mut expected = 1i64;
    let mut prev: Option<&Event> = None;
    for ev in events {
        let s = ev.sequence_number;
        if let Some(p) = prev.filter(|p| p.sequence_number == s) {
            errors.push(
                codes::EVENT_SEQUENCE,
                format!(
                    "sequence number {s} is used twice (events {} and {})",
                    p.event_id, ev.event_id
                ),
            );
        } else if s > expected {
            let gap = if s - 1 == expected {
                format!("{expected}")
            } else {
                format!("{expected}..{}", s - 1)
            };
            errors.push(
                codes::EVENT_SEQUENCE,
                format!(
                    "sequence numbers {gap} are missing (before event #{s}, {})",
                    ev.event_id
                ),
            );
        }
        expected = expected.max(s + 1);
        prev = Some(ev);
    }
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
    // Rule 3 and the time warnings.
    let mut last_time: Option<(DateTime<Utc>, i64)> = None;
    let mut unknown: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for ev in events {
        match crate::time::parse_opt(&ev.created_at) {
            None => warnings.push(
                codes::BAD_TIMESTAMP,
                format!(
                    "event #{} ({}) has created_at {:?}, which is not a timestamp",
                    ev.sequence_number, ev.event_id, ev.created_at
                ),
            ),
            Some(t) => {
                if let Some(target) = opts.target.filter(|target| t > *target) {
                    errors.push(
                        codes::EVENT_AFTER_TARGET,
                        format!(
                            "event #{} ({}, {}) at {} is after the target {}",
                            ev.sequence_number,
                            ev.event_id,
                            ev.event_type,
                            ev.created_at,
                            crate::time::format(target)
                        ),
                    );
                }
                if let Some((lt, ls)) = last_time.filter(|(lt, _)| t < *lt) {
                    warnings.push(
                        codes::TIME_BACKWARDS,
                        format!(
                            "event #{} at {} is earlier than event #{ls} at {}",
                            ev.sequence_number,
                            ev.created_at,
                            crate::time::format(lt)
                        ),
                    );
                }
                if last_time.is_none_or(|(lt, _)| t >= lt) {
                    last_time = Some((t, ev.sequence_number));
                }
            }
        }
        if !crate::effects::is_known(&ev.event_type)
            && !opts.handled_event_types.contains(&ev.event_type)
        {
            let u = unknown
                .entry(ev.event_type.as_str())
                .or_insert((0, ev.sequence_number));
            u.0 += 1;
        }
    }
    for (ty, (count, first)) in unknown {
        warnings.push(
            codes::UNKNOWN_EVENT_TYPE,
            format!(
                "event type {ty} has no effect and no handler ({count} events, first #{first})"
            ),
        );
    }
    let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for ev in events {
        *by_type.entry(ev.event_type.as_str()).or_default() += 1;
    }
    metrics.insert("event_count".into(), json!(events.len()));
    metrics.insert("events_by_type".into(), json!(by_type));
    metrics.insert(
        "last_event_sequence".into(),
        json!(events.last().map(|e| e.sequence_number)),
    );
    metrics.insert(
        "last_event_time".into(),
        json!(events.last().map(|e| e.created_at.clone())),
    );
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

fn check_orders(
    conn: &Connection,
    opts: &ValidateOptions,
    reference: Option<DateTime<Utc>>,
    errors: &mut Sink,
    warnings: &mut Sink,
    metrics: &mut Map<String, Value>,
) -> Result<()> {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    // Held back by open orders, per asset.
    let mut held: BTreeMap<String, f64> = BTreeMap::new();
    for r in rows(
        conn,
        "SELECT order_id, status, quantity, filled_quantity, price, order_type, side, symbol, created_at FROM orders ORDER BY order_id",
    )? {
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
            if let (Some(created), Some(reference)) = (text(&r[8]), reference) {
                if let Some(t) = crate::time::parse_opt(&created) {
                    if reference - t > opts.max_open_order_age {
                        warnings.push(
                            codes::STALE_OPEN_ORDER,
                            format!("order {id} has been open since {created} (more than {} hours before {})", opts.max_open_order_age.num_hours(), crate::time::format(reference)),
                        );
                    }
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
    }
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
    for r in rows(
        conn,
        "SELECT position_id, status, quantity, closed_at, symbol, entry_price, realized_pnl, unrealized_pnl FROM positions ORDER BY position_id",
    )? {
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
    }
    metrics.insert("positions_by_status".into(), json!(by_status));
    metrics.insert("open_exposure".into(), json!(exposure));
    metrics.insert("realized_pnl".into(), json!(realized));
    metrics.insert("unrealized_pnl".into(), json!(unrealized));
    Ok(())
}

/// An in-memory database with the schema, for rebuilding projections.
pub(crate) fn scratch_db() -> Result<Connection> {
    let c = Connection::open_in_memory().map_err(q("opening an in-memory database"))?;
    crate::schema::ensure_schema(&c)?;
    Ok(c)
}

pub(crate) fn rebuild_options() -> ReplayOptions {
    ReplayOptions {
        check_sequence: false,
        record_events: false,
        tune_pragmas: false,
        ..ReplayOptions::default()
    }
}

fn check_replay(
    conn: &Connection,
    events: &[Event],
    opts: &ValidateOptions,
    errors: &mut Sink,
) -> Result<()> {
    let mut scratch = scratch_db()?;
    let mut start = 0;
    let mut failed = false;
    let ro = rebuild_options();
    for (i, ev) in events.iter().enumerate() {
        if ev.event_type != "CHECKPOINT" || !opts.check_checkpoints {
            continue;
        }
        if let Err(e) = replay(&mut scratch, &events[start..=i], &ro) {
            errors.push(
                codes::REPLAY_MISMATCH,
                format!("replaying the events from the first fails: {e}"),
            );
            failed = true;
            break;
        }
        start = i + 1;
        let recorded = serde_json::from_str::<Value>(&ev.event_data)
            .ok()
            .and_then(|d| {
                d.get("state_hash")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        if let Some(h) = recorded.filter(|h| h.starts_with("blake3:")) {
            let actual = state_hash(&scratch)?;
            if actual != h {
                errors.push(
                    codes::CHECKPOINT_HASH,
                    format!("checkpoint {} (event #{}): state_hash {h} differs from the replayed state's {actual}", ev.aggregate_id, ev.sequence_number),
                );
            }
        }
    }
    if failed || !opts.check_replay {
        return Ok(());
    }
    if let Err(e) = replay(&mut scratch, &events[start..], &ro) {
        errors.push(
            codes::REPLAY_MISMATCH,
            format!("replaying the events from the first fails: {e}"),
        );
        return Ok(());
    }
    for (table, key) in HASHED_TABLES {
        for d in diff_table(conn, &scratch, table, key)? {
            errors.push(codes::REPLAY_MISMATCH, d);
        }
    }
    Ok(())
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
pub(crate) fn diff_table(
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
