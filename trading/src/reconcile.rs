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

/// The input shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeShape {
    Binance,
    Ccxt,
}

/// One exchange order, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeOrder {
    pub order_id: String,
    pub client_order_id: Option<String>,
    /// As the exchange wrote it (`BTCUSDT` or `BTC/USDT`).
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: String,
    pub order_type: Option<String>,
    pub quantity: f64,
    pub filled_quantity: f64,
    pub price: Option<f64>,
    /// Normalised: `new`, `partially_filled`, `filled`, `cancelled`, `rejected`, `expired`.
    pub status: String,
    /// As the exchange wrote it.
    pub raw_status: String,
    pub shape: ExchangeShape,
}

const BINANCE_FIELDS: &str =
    "symbol, orderId, clientOrderId, price, origQty, executedQty, status, side";
const CCXT_FIELDS: &str =
    "id, symbol, side, amount, status (clientOrderId, filled, price optional)";

fn bad(source: &str, message: String) -> Error {
    Error::ExchangeFile {
        source_name: source.to_string(),
        message,
    }
}

/// Parses the exchange's open orders; see the module documentation.
///
/// # Errors
/// [`Error::ExchangeFile`] naming the source when the bytes are not JSON, not an
/// array, or an element lacks a field of the detected shape (naming the shape,
/// the array index and the field) or has a value of the wrong type.
pub fn parse_exchange_orders(bytes: &[u8], source: &str) -> Result<Vec<ExchangeOrder>> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        bad(
            source,
            format!("not JSON ({e}); expected a Binance openOrders array or a CCXT orders array"),
        )
    })?;
    let Value::Array(items) = v else {
        return Err(bad(
            source,
            format!("expected a JSON array (Binance openOrders: objects with {BINANCE_FIELDS}; or CCXT orders: objects with {CCXT_FIELDS}), found {}", kind(&v)),
        ));
    };
    let Some(first) = items.first() else {
        return Ok(Vec::new());
    };
    let shape = match first {
        Value::Object(m) if m.contains_key("orderId") || m.contains_key("origQty") => ExchangeShape::Binance,
        Value::Object(m) if m.contains_key("amount") || m.contains_key("id") => ExchangeShape::Ccxt,
        other => {
            return Err(bad(
                source,
                format!("element 0 ({}) is neither a Binance openOrders object (with {BINANCE_FIELDS}) nor a CCXT order (with {CCXT_FIELDS})", kind(other)),
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let f = Fields {
                source,
                index: i,
                shape,
                item,
            };
            match shape {
                ExchangeShape::Binance => f.binance(),
                ExchangeShape::Ccxt => f.ccxt(),
            }
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Fields<'a> {
    source: &'a str,
    index: usize,
    shape: ExchangeShape,
    item: &'a Value,
}

impl Fields<'_> {
    fn shape_name(&self) -> &'static str {
        match self.shape {
            ExchangeShape::Binance => "Binance openOrders",
            ExchangeShape::Ccxt => "CCXT order",
        }
    }
    fn err(&self, msg: String) -> Error {
        bad(
            self.source,
            format!("element {}: {} shape: {msg}", self.index, self.shape_name()),
        )
    }
    fn get(&self, name: &str) -> Result<&Value> {
        match self.item.get(name) {
            Some(v) => Ok(v),
            None if self.item.is_object() => Err(self.err(format!("missing field `{name}`"))),
            None => Err(self.err(format!("expected an object, found {}", kind(self.item)))),
        }
    }
    fn opt(&self, name: &str) -> Option<&Value> {
        self.item.get(name).filter(|v| !v.is_null())
    }
    fn text(&self, name: &str) -> Result<String> {
        match self.get(name)? {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.err(format!(
                "field `{name}` should be a string, found {}",
                kind(other)
            ))),
        }
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        match self.opt(name) {
            None => Ok(None),
            Some(_) => self.text(name).map(Some),
        }
    }
    fn number_of(&self, name: &str, v: &Value) -> Result<f64> {
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        n.filter(|x| x.is_finite()).ok_or_else(|| {
            self.err(format!(
                "field `{name}` should be a decimal number, found {v}"
            ))
        })
    }
    fn number(&self, name: &str) -> Result<f64> {
        let v = self.get(name)?;
        self.number_of(name, v)
    }
    fn opt_number(&self, name: &str) -> Result<Option<f64>> {
        match self.opt(name) {
            None => Ok(None),
            Some(v) => self.number_of(name, v).map(Some),
        }
    }

    fn binance(&self) -> Result<ExchangeOrder> {
        let raw_status = self.text("status")?;
        let price = self.number("price")?;
        Ok(ExchangeOrder {
            order_id: self.text("orderId")?,
            client_order_id: Some(self.text("clientOrderId")?).filter(|s| !s.is_empty()),
            symbol: self.text("symbol")?,
            side: self.text("side")?.to_lowercase(),
            order_type: self.opt_text("type")?.map(|t| t.to_lowercase()),
            quantity: self.number("origQty")?,
            filled_quantity: self.number("executedQty")?,
            price: (price != 0.0).then_some(price),
            status: normalise_status(&raw_status, None),
            raw_status,
            shape: ExchangeShape::Binance,
        })
    }

    fn ccxt(&self) -> Result<ExchangeOrder> {
        let raw_status = self.text("status")?;
        let filled = self.opt_number("filled")?.unwrap_or(0.0);
        Ok(ExchangeOrder {
            order_id: self.text("id")?,
            client_order_id: self.opt_text("clientOrderId")?.filter(|s| !s.is_empty()),
            symbol: self.text("symbol")?,
            side: self.text("side")?.to_lowercase(),
            order_type: self.opt_text("type")?.map(|t| t.to_lowercase()),
            quantity: self.number("amount")?,
            filled_quantity: filled,
            price: self.opt_number("price")?.filter(|p| *p != 0.0),
            status: normalise_status(&raw_status, Some(filled)),
            raw_status,
            shape: ExchangeShape::Ccxt,
        })
    }
}

/// An exchange status in the database's vocabulary. CCXT's `open` becomes
/// `partially_filled` when something is filled, else `new`.
pub fn normalise_status(raw: &str, filled: Option<f64>) -> String {
    let s = raw.trim().to_lowercase().replace([' ', '-'], "_");
    match s.as_str() {
        "new" => "new",
        "partially_filled" | "partiallyfilled" => "partially_filled",
        "open" if filled.is_some_and(|f| f > 0.0) => "partially_filled",
        "open" => "new",
        "filled" | "closed" => "filled",
        "canceled" | "cancelled" | "pending_cancel" => "cancelled",
        "rejected" => "rejected",
        "expired" | "expired_in_match" => "expired",
        _ => return s,
    }
    .to_string()
}

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
    let by_client: HashMap<&str, usize> = exchange
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.client_order_id.as_deref().map(|c| (c, i)))
        .collect();
    let by_id: HashMap<&str, usize> = exchange
        .iter()
        .enumerate()
        .map(|(i, e)| (e.order_id.as_str(), i))
        .collect();
    let mut used = vec![false; exchange.len()];
    let mut report = ReconciliationReport {
        db_order_count: db.len() as u64,
        ..Default::default()
    };
    let mut clean = 0u64;
    for d in &db {
        let hit =
            d.r.client_order_id
                .as_deref()
                .and_then(|c| by_client.get(c))
                .or_else(|| by_id.get(d.r.order_id.as_str()))
                .copied()
                .filter(|i| !used[*i]);
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
        + report.missing_on_exchange.len() as u64;
    report.accuracy = if either == 0 {
        1.0
    } else {
        clean as f64 / either as f64
    };
    report.is_reconciled = report.missing_in_db.is_empty()
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
