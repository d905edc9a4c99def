//! Rules 4-8: the projections' own consistency (balances, orders, positions),
//! read from the tables beside the pass over the events, on a connection of
//! their own, with rule 2's duplicate event ids.
//!
//! The findings come out in key order, as an `ORDER BY` of the key would give
//! them, but the tables are read in rowid order: a table whose key is a TEXT
//! PRIMARY KEY is a rowid table, and reading it in key order costs a seek per
//! row (at 139k orders, 0.43 s against 0.02 s). Only what the findings and
//! the sums need is ordered afterwards, and no more of it than the report
//! keeps ([`Ordered`]).

use std::collections::{BTreeMap, BinaryHeap};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::{close, codes, each_row, num, rows, text, Sink, ValidateOptions, ORDER_STATUSES};
use crate::error::Result;

/// What rules 4-8 found: errors, the open orders with their opening time
/// (the age warning needs the last event's time), the locked-balance
/// warnings, and the table metrics; rule 2's duplicate event ids apart, as
/// the report lists them with rule 2.
pub(super) struct TableRules {
    pub(super) duplicates: Sink,
    pub(super) errors: Sink,
    pub(super) open_since: Vec<(String, String, DateTime<Utc>)>,
    pub(super) warnings: Sink,
    pub(super) metrics: Map<String, Value>,
}

pub(super) fn table_rules(conn: &Connection, opts: &ValidateOptions) -> Result<TableRules> {
    let mut t = TableRules {
        duplicates: Sink::new(opts.max_findings_per_rule),
        errors: Sink::new(opts.max_findings_per_rule),
        open_since: Vec::new(),
        warnings: Sink::new(opts.max_findings_per_rule),
        metrics: Map::new(),
    };
    duplicate_event_ids(conn, &mut t.duplicates)?;
    check_balances(conn, &mut t.errors, &mut t.metrics)?;
    check_orders(conn, &mut t, opts.max_findings_per_rule)?;
    check_positions(conn, &mut t.errors, &mut t.metrics)?;
    Ok(t)
}

/// Rule 2's duplicate event ids, through the primary-key index: counted
/// first (a scan of the index, half the cost of grouping it), listed only
/// when there are any.
fn duplicate_event_ids(conn: &Connection, errors: &mut Sink) -> Result<()> {
    // Two queries: together in one, SQLite would scan the table, not the index.
    let count = |sql: &str| -> Result<Option<f64>> {
        Ok(rows(conn, sql)?.first().and_then(|r| num(&r[0])))
    };
    let distinct = count("SELECT count(DISTINCT event_id) FROM events")?;
    if distinct.is_some() && distinct == count("SELECT count(*) FROM events")? {
        return Ok(());
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
    Ok(())
}

/// Findings of rows read in any order, given out in key order: per code, the
/// `cap` with the smallest keys (what a [`Sink`] fed in key order keeps) and
/// a count of the rest. Memory is bounded by the cap, not the table.
struct Ordered {
    cap: usize,
    /// Per code: the kept findings, largest key on top.
    kept: BTreeMap<&'static str, BinaryHeap<(String, u32, String)>>,
    dropped: BTreeMap<&'static str, usize>,
}

impl Ordered {
    fn new(cap: usize) -> Ordered {
        Ordered {
            cap: cap.max(1),
            kept: BTreeMap::new(),
            dropped: BTreeMap::new(),
        }
    }

    /// A finding of the row with this key; `nth` orders the findings of one row.
    fn push(&mut self, code: &'static str, key: &str, nth: u32, message: String) {
        let heap = self.kept.entry(code).or_default();
        if heap.len() < self.cap {
            heap.push((key.to_string(), nth, message));
            return;
        }
        *self.dropped.entry(code).or_default() += 1;
        if heap
            .peek()
            .is_some_and(|top| (top.0.as_str(), top.1) > (key, nth))
        {
            heap.pop();
            heap.push((key.to_string(), nth, message));
        }
    }

    /// Pushes the kept findings into `sink` in key order (a row's in the order
    /// they were found), and counts the rest.
    fn into_sink(self, sink: &mut Sink) {
        let mut all: Vec<(String, u32, &'static str, String)> = self
            .kept
            .into_iter()
            .flat_map(|(code, heap)| heap.into_iter().map(move |(k, n, m)| (k, n, code, m)))
            .collect();
        all.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        for (_, _, code, m) in all {
            sink.push(code, m);
        }
        for (code, n) in self.dropped {
            sink.skip(code, n);
        }
    }
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

fn check_orders(conn: &Connection, t: &mut TableRules, cap: usize) -> Result<()> {
    let mut found = Ordered::new(cap);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    // What open orders hold back, per asset, summed in order id order below.
    let mut holds: Vec<(String, String, f64)> = Vec::new();
    each_row(
        conn,
        "SELECT order_id, status, quantity, filled_quantity, price, order_type, side, symbol, created_at FROM orders",
        |r| {
        let id = text(&r[0]).unwrap_or_else(|| "NULL".into());
        let status = text(&r[1]).unwrap_or_else(|| "NULL".into());
        match by_status.get_mut(&status) {
            Some(n) => *n += 1,
            None => {
                by_status.insert(status.clone(), 1);
            }
        }
        let quantity = num(&r[2]);
        let filled = num(&r[3]).unwrap_or(0.0);
        let price = num(&r[4]);
        let order_type = text(&r[5]).unwrap_or_default().to_lowercase();
        let mut nth = 0;
        let mut push = |code: &'static str, m: String| {
            found.push(code, &id, nth, m);
            nth += 1;
        };
        // Rule 5.
        if !ORDER_STATUSES.contains(&status.as_str()) {
            push(codes::ORDER_INVALID, format!("order {id}: status {status:?} is not one of {}", ORDER_STATUSES.join(", ")));
        }
        match quantity {
            Some(qty) if qty < 0.0 => push(codes::ORDER_INVALID, format!("order {id}: quantity {qty} is negative")),
            Some(qty) if filled > qty && !close(filled, qty) => {
                push(codes::ORDER_INVALID, format!("order {id}: filled quantity {filled} exceeds quantity {qty}"))
            }
            None => push(codes::ORDER_INVALID, format!("order {id}: quantity is missing")),
            _ => {}
        }
        match price {
            Some(p) if p < 0.0 => push(codes::ORDER_INVALID, format!("order {id}: price {p} is negative")),
            Some(p) if p == 0.0 && order_type.contains("limit") => {
                push(codes::ORDER_INVALID, format!("order {id}: {order_type} order has price 0"))
            }
            None if order_type.contains("limit") => {
                push(codes::ORDER_INVALID, format!("order {id}: {order_type} order has no price"))
            }
            _ => {}
        }
        // Rule 6.
        if status == "new" && filled != 0.0 {
            push(codes::ORDER_FILL_STATE, format!("order {id}: status new but filled quantity {filled}"));
        }
        if let (true, Some(qty)) = (status == "filled", quantity) {
            if !close(filled, qty) {
                push(codes::ORDER_FILL_STATE, format!("order {id}: status filled but filled quantity {filled} is not quantity {qty}"));
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
                        holds.push((id.clone(), quote.to_string(), remaining * p));
                    }
                } else if side == "sell" {
                    holds.push((id.clone(), base.to_string(), remaining));
                }
            }
        }
        Ok(())
    })?;
    found.into_sink(&mut t.errors);
    t.open_since.sort_by(|a, b| a.0.cmp(&b.0));
    // Summed in order id order: the same floating-point sums as a read in that order.
    holds.sort_by(|a, b| a.0.cmp(&b.0));
    let mut held: BTreeMap<String, f64> = BTreeMap::new();
    for (_, asset, amount) in holds {
        *held.entry(asset).or_default() += amount;
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
            t.warnings.push(
                codes::LOCKED_BALANCE_SHORT,
                format!("balance {asset}: locked {locked} does not cover the {need} held back by open orders"),
            );
        }
    }
    // Rule 8 (the orders read in rowid order, the few found sorted).
    for r in rows(
        conn,
        "SELECT o.order_id, o.position_id FROM orders o WHERE o.position_id IS NOT NULL AND o.position_id <> '' \
         AND NOT EXISTS (SELECT 1 FROM positions p WHERE p.position_id = o.position_id) ORDER BY +o.order_id",
    )? {
        t.errors.push(
            codes::ORDER_POSITION_MISSING,
            format!("order {}: position {} does not exist", text(&r[0]).unwrap_or_default(), text(&r[1]).unwrap_or_default()),
        );
    }
    t.metrics
        .insert("orders_by_status".into(), json!(by_status));
    t.metrics
        .insert("order_count".into(), json!(by_status.values().sum::<u64>()));
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
        "SELECT position_id, status, quantity, closed_at, symbol, entry_price, realized_pnl, unrealized_pnl FROM positions ORDER BY +position_id",
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
