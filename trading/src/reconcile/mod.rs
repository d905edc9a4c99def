//! Reconciliation of the recovered open orders with the exchange's (DOMAIN.md).
//!
//! The exchange side is parsed from either a Binance spot `GET /api/v3/openOrders`
//! array or a CCXT unified orders array (the shape is detected from the first
//! element, then every element must have it). Symbols are compared in the unified
//! form (`BTCUSDT` → `BTC/USDT`), statuses in the database's vocabulary. The
//! report proposes actions; nothing is ever executed.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

mod exchange;

pub use exchange::{
    normalise_status, parse_exchange_orders, read_exchange_orders, ExchangeOrder, ExchangeShape,
};

/// Quote assets recognised at the end of an exchange symbol, longest first.
pub const KNOWN_QUOTES: [&str; 9] = [
    "FDUSD", "USDT", "USDC", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY",
];

/// A symbol in the unified form `BASE/QUOTE`: from the map, as is when it already
/// has a `/` (a CCXT settle suffix `:USDT` dropped), or split before a known quote.
pub fn unify_symbol(symbol: &str, map: &BTreeMap<String, String>) -> String {
    if let Some(m) = map.get(symbol) {
        return m.clone();
    }
    let s = symbol.trim().to_uppercase();
    if let Some(m) = map.get(&s) {
        return m.clone();
    }
    if s.contains('/') {
        return s.split(':').next().unwrap_or(&s).to_string();
    }
    for q in KNOWN_QUOTES {
        if let Some(base) = s.strip_suffix(q).filter(|b| !b.is_empty()) {
            return format!("{base}/{q}");
        }
    }
    s
}

/// How to reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileOptions {
    /// Relative tolerance for quantities and prices (default 1e-9).
    pub tolerance: f64,
    /// Exchange symbol → unified symbol, for symbols the quote list cannot split.
    pub symbol_map: BTreeMap<String, String>,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            tolerance: 1e-9,
            symbol_map: BTreeMap::new(),
        }
    }
}

/// An order on one side only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRef {
    pub order_id: String,
    pub client_order_id: Option<String>,
    pub symbol: String,
    pub side: String,
    pub quantity: Option<f64>,
    pub filled_quantity: Option<f64>,
    pub price: Option<f64>,
    pub status: String,
}

/// A matched order whose status differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMismatch {
    pub order_id: String,
    pub client_order_id: Option<String>,
    pub exchange_order_id: String,
    pub db_status: String,
    pub exchange_status: String,
}

/// A matched order whose quantity, filled quantity, price (or symbol, side) differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldMismatch {
    pub order_id: String,
    pub client_order_id: Option<String>,
    pub exchange_order_id: String,
    /// `quantity`, `filled_quantity`, `price`, `symbol` or `side`.
    pub field: String,
    pub db_value: Value,
    pub exchange_value: Value,
}

/// The reconciliation report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconciliationReport {
    pub is_reconciled: bool,
    pub missing_in_db: Vec<OrderRef>,
    pub missing_on_exchange: Vec<OrderRef>,
    pub status_mismatches: Vec<StatusMismatch>,
    /// Quantity, filled quantity and price differences beyond the tolerance.
    pub quantity_mismatches: Vec<FieldMismatch>,
    /// Symbol and side differences.
    pub other_mismatches: Vec<FieldMismatch>,
    pub db_order_count: u64,
    pub exchange_order_count: u64,
    pub matched: u64,
    /// Matched without mismatch ÷ orders on either side (1 when both are empty).
    pub accuracy: f64,
    /// Proposed, never executed.
    pub actions: Vec<String>,
    /// Worth a look, not a discrepancy: an order listed twice by the exchange,
    /// a client order id shared by several exchange orders (each names them).
    #[serde(default)]
    pub warnings: Vec<String>,
}

struct DbOrder {
    r: OrderRef,
    unified: String,
}

/// Compares the database's open orders (`new`, `partially_filled`) with the
/// exchange's; see the module documentation. Exchange orders that are closed
/// and match no open database order are not counted.
///
/// # Errors
/// [`Error::Schema`] without an orders table, [`Error::Sqlite`].
pub fn reconcile(
    conn: &Connection,
    exchange: &[ExchangeOrder],
    opts: &ReconcileOptions,
) -> Result<ReconciliationReport> {
    let db = open_db_orders(conn, opts)?;
    let mut warnings = Vec::new();
    // An order listed more than once is compared once, with its first listing.
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut listed: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for (i, e) in exchange.iter().enumerate() {
        match by_id.get(e.order_id.as_str()) {
            None => {
                by_id.insert(e.order_id.as_str(), i);
            }
            Some(&first) => {
                let l = listed.entry(e.order_id.as_str()).or_insert((1, true));
                l.0 += 1;
                l.1 &= exchange[first] == *e;
            }
        }
    }
    for (id, (n, same)) in &listed {
        warnings.push(if *same {
            format!("exchange order {id} is listed {n} times in the exchange orders; compared once")
        } else {
            format!("exchange order {id} is listed {n} times in the exchange orders with different contents; compared with its first listing (check it on the exchange)")
        });
    }
    let first_listing = |i: usize| by_id.get(exchange[i].order_id.as_str()) == Some(&i);
    let mut by_client: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in exchange.iter().enumerate() {
        if let (Some(c), true) = (e.client_order_id.as_deref(), first_listing(i)) {
            by_client.entry(c).or_default().push(i);
        }
    }
    let shared: BTreeMap<&str, &Vec<usize>> = by_client
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(c, v)| (*c, v))
        .collect();
    let ids = |v: &[usize]| {
        v.iter()
            .map(|i| exchange[*i].order_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (c, v) in &shared {
        warnings.push(format!(
            "client order id {c} is used by {} exchange orders ({}): each is matched by its order id, and none is imported or cancelled on the strength of the client order id",
            v.len(),
            ids(v)
        ));
    }
    // Duplicate listings count as used: never imported.
    let mut used: Vec<bool> = (0..exchange.len()).map(|i| !first_listing(i)).collect();
    let mut report = ReconciliationReport {
        db_order_count: db.len() as u64,
        ..Default::default()
    };
    let mut clean = 0u64;
    let mut unresolved = 0u64;
    for d in &db {
        let by_order_id = by_id
            .get(d.r.order_id.as_str())
            .copied()
            .filter(|i| !used[*i]);
        let hit = match d
            .r
            .client_order_id
            .as_deref()
            .and_then(|c| by_client.get(c))
        {
            Some(v) if v.len() == 1 => Some(v[0]).filter(|i| !used[*i]).or(by_order_id),
            Some(v) => match v
                .iter()
                .copied()
                .find(|i| exchange[*i].order_id == d.r.order_id)
            {
                Some(i) => Some(i).filter(|i| !used[*i]),
                None => {
                    warnings.push(format!(
                        "local order {} (client order id {}) matches {} exchange orders by client order id ({}) and none by order id: not compared, no action proposed",
                        d.r.order_id,
                        d.r.client_order_id.as_deref().unwrap_or_default(),
                        v.len(),
                        ids(v)
                    ));
                    unresolved += 1;
                    continue;
                }
            },
            None => by_order_id,
        };
        let Some(i) = hit else {
            report.actions.push(format!(
                "Cancel local order: {}",
                d.r.client_order_id.as_deref().unwrap_or(&d.r.order_id)
            ));
            report.missing_on_exchange.push(d.r.clone());
            continue;
        };
        used[i] = true;
        report.matched += 1;
        let e = &exchange[i];
        let before = (
            report.status_mismatches.len(),
            report.quantity_mismatches.len(),
            report.other_mismatches.len(),
        );
        let field = |name: &str, a: Value, b: Value| FieldMismatch {
            order_id: d.r.order_id.clone(),
            client_order_id: d.r.client_order_id.clone(),
            exchange_order_id: e.order_id.clone(),
            field: name.to_string(),
            db_value: a,
            exchange_value: b,
        };
        if d.r.status != e.status {
            report.status_mismatches.push(StatusMismatch {
                order_id: d.r.order_id.clone(),
                client_order_id: d.r.client_order_id.clone(),
                exchange_order_id: e.order_id.clone(),
                db_status: d.r.status.clone(),
                exchange_status: e.status.clone(),
            });
            report.actions.push(format!(
                "Update local order {} status from {} to {} ({} on the exchange)",
                d.r.order_id, d.r.status, e.status, e.raw_status
            ));
        }
        let differs = |a: f64, b: f64| (a - b).abs() > opts.tolerance * a.abs().max(b.abs());
        let db_qty = d.r.quantity.unwrap_or(0.0);
        if differs(db_qty, e.quantity) {
            report.quantity_mismatches.push(field(
                "quantity",
                d.r.quantity.into(),
                e.quantity.into(),
            ));
        }
        let db_filled = d.r.filled_quantity.unwrap_or(0.0);
        if differs(db_filled, e.filled_quantity) {
            report.quantity_mismatches.push(field(
                "filled_quantity",
                d.r.filled_quantity.into(),
                e.filled_quantity.into(),
            ));
        }
        if let (Some(a), Some(b)) = (d.r.price, e.price) {
            if differs(a, b) {
                report
                    .quantity_mismatches
                    .push(field("price", a.into(), b.into()));
            }
        }
        let ex_symbol = unify_symbol(&e.symbol, &opts.symbol_map);
        if d.unified != ex_symbol {
            report.other_mismatches.push(field(
                "symbol",
                d.r.symbol.clone().into(),
                e.symbol.clone().into(),
            ));
        }
        if !d.r.side.eq_ignore_ascii_case(&e.side) {
            report.other_mismatches.push(field(
                "side",
                d.r.side.clone().into(),
                e.side.clone().into(),
            ));
        }
        if report.quantity_mismatches.len() > before.1 || report.other_mismatches.len() > before.2 {
            report.actions.push(format!(
                "Review local order {}: it differs from exchange order {}",
                d.r.order_id, e.order_id
            ));
        }
        if (
            report.status_mismatches.len(),
            report.quantity_mismatches.len(),
            report.other_mismatches.len(),
        ) == before
        {
            clean += 1;
        }
    }
    let mut exchange_count = report.matched;
    for (i, e) in exchange.iter().enumerate() {
        if used[i] || !(e.status == "new" || e.status == "partially_filled") {
            continue;
        }
        exchange_count += 1;
        if let Some(c) = e
            .client_order_id
            .as_deref()
            .filter(|c| shared.contains_key(c))
        {
            warnings.push(format!(
                "exchange order {} shares client order id {c} with other exchange orders and matches no local order: not imported (check it on the exchange)",
                e.order_id
            ));
            unresolved += 1;
            continue;
        }
        report
            .actions
            .push(format!("Import exchange order: {}", e.order_id));
        report.missing_in_db.push(OrderRef {
            order_id: e.order_id.clone(),
            client_order_id: e.client_order_id.clone(),
            symbol: unify_symbol(&e.symbol, &opts.symbol_map),
            side: e.side.clone(),
            quantity: Some(e.quantity),
            filled_quantity: Some(e.filled_quantity),
            price: e.price,
            status: e.status.clone(),
        });
    }
    report.exchange_order_count = exchange_count;
    let either = report.matched
        + report.missing_in_db.len() as u64
        + report.missing_on_exchange.len() as u64
        + unresolved;
    report.accuracy = if either == 0 {
        1.0
    } else {
        clean as f64 / either as f64
    };
    report.warnings = warnings;
    report.is_reconciled = unresolved == 0
        && report.missing_in_db.is_empty()
        && report.missing_on_exchange.is_empty()
        && report.status_mismatches.is_empty()
        && report.quantity_mismatches.is_empty()
        && report.other_mismatches.is_empty();
    Ok(report)
}

fn open_db_orders(conn: &Connection, opts: &ReconcileOptions) -> Result<Vec<DbOrder>> {
    let mut stmt = conn
        .prepare(
            "SELECT order_id, client_order_id, symbol, side, quantity, filled_quantity, price, status FROM orders \
             WHERE status IN ('new', 'partially_filled') ORDER BY order_id",
        )
        .map_err(|e| Error::Schema(format!("cannot read the orders table: {e}")))?;
    let num = |v: rusqlite::types::Value| match v {
        rusqlite::types::Value::Integer(i) => Some(i as f64),
        rusqlite::types::Value::Real(f) => Some(f),
        rusqlite::types::Value::Text(t) => t.trim().parse().ok(),
        _ => None,
    };
    let rows = stmt
        .query_map([], |r| {
            Ok(OrderRef {
                order_id: r.get(0)?,
                client_order_id: r.get(1)?,
                symbol: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                side: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                quantity: num(r.get(4)?),
                filled_quantity: num(r.get(5)?),
                price: num(r.get(6)?),
                status: r.get(7)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(Error::sqlite("reading open orders"))?;
    Ok(rows
        .into_iter()
        .map(|r| DbOrder {
            unified: unify_symbol(&r.symbol, &opts.symbol_map),
            r,
        })
        .collect())
}
