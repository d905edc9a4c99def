//! Reading the exchange's open orders: a Binance spot `GET /api/v3/openOrders`
//! array or a CCXT unified orders array (the shape is detected from the first
//! element, then every element must have it).
//!
//! The array is read element by element from any reader ([`read_exchange_orders`]),
//! so a large file costs its normalised orders, not its bytes and a JSON tree of
//! them. Each field is taken from the element's raw JSON text: an order id is
//! kept exactly as written (an integer beyond 64 bits stays its digits, never a
//! float), and decimal strings and numbers are read the same way.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// As written: a JSON string's text, or a JSON number's digits.
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
        source: None,
    }
}

/// Parses the exchange's open orders from bytes; see [`read_exchange_orders`].
///
/// # Errors
/// As [`read_exchange_orders`].
pub fn parse_exchange_orders(bytes: &[u8], source: &str) -> Result<Vec<ExchangeOrder>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    read_from(&mut de, source)
}

/// Reads the exchange's open orders from `reader` (buffer it), element by
/// element; see the module documentation.
///
/// # Errors
/// [`Error::ExchangeFile`] naming the source when the bytes are not JSON, not an
/// array, or an element lacks a field of the detected shape (naming the shape,
/// the array index and the field) or has a value of the wrong type.
pub fn read_exchange_orders(
    reader: impl std::io::Read,
    source: &str,
) -> Result<Vec<ExchangeOrder>> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    read_from(&mut de, source)
}

fn read_from<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    source: &str,
) -> Result<Vec<ExchangeOrder>> {
    let mut failure = None;
    let visitor = Elements {
        source,
        failure: &mut failure,
    };
    let out = de
        .deserialize_any(visitor)
        .and_then(|v| de.end().map(|()| v));
    match (out, failure) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(Error::ExchangeFile {
            source_name: source.to_string(),
            message: format!(
                "not JSON ({e}); expected a Binance openOrders array or a CCXT orders array"
            ),
            source: Some(e),
        }),
    }
}

/// The top-level visitor: an array, read one element at a time.
struct Elements<'s, 'f> {
    source: &'s str,
    /// The typed error behind a custom serde error, when there is one.
    failure: &'f mut Option<Error>,
}

impl<'s, 'f> Elements<'s, 'f> {
    fn fail<E: de::Error>(self, e: Error) -> E {
        let text = e.to_string();
        *self.failure = Some(e);
        E::custom(text)
    }
    fn not_array<E: de::Error>(self, found: &str) -> E {
        let e = bad(
            self.source,
            format!("expected a JSON array (Binance openOrders: objects with {BINANCE_FIELDS}; or CCXT orders: objects with {CCXT_FIELDS}), found {found}"),
        );
        self.fail(e)
    }
}

impl<'de> Visitor<'de> for Elements<'_, '_> {
    type Value = Vec<ExchangeOrder>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of orders")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut shape = None;
        let mut index = 0usize;
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            match element(self.source, index, &mut shape, &raw) {
                Ok(o) => out.push(o),
                Err(e) => return Err(self.fail(e)),
            }
            index += 1;
        }
        Ok(out)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Read it to its end first: a file that is not JSON says so.
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Err(self.not_array("an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(self.not_array("a string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(self.not_array("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(self.not_array("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(self.not_array("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(self.not_array("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.not_array("null"))
    }
}

fn kind(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

type Object = BTreeMap<String, Box<RawValue>>;

fn element(
    source: &str,
    index: usize,
    shape: &mut Option<ExchangeShape>,
    raw: &RawValue,
) -> Result<ExchangeOrder> {
    let object: Option<Object> = if kind(raw.get()) == "an object" {
        Some(
            serde_json::from_str(raw.get()).map_err(|e| Error::ExchangeFile {
                source_name: source.to_string(),
                message: format!("element {index}: {e}"),
                source: Some(e),
            })?,
        )
    } else {
        None
    };
    let detected = match (&*shape, &object) {
        (Some(s), _) => *s,
        (None, Some(m)) if m.contains_key("orderId") || m.contains_key("origQty") => {
            ExchangeShape::Binance
        }
        (None, Some(m)) if m.contains_key("amount") || m.contains_key("id") => ExchangeShape::Ccxt,
        (None, _) => {
            return Err(bad(
                source,
                format!("element {index} ({}) is neither a Binance openOrders object (with {BINANCE_FIELDS}) nor a CCXT order (with {CCXT_FIELDS})", kind(raw.get())),
            ))
        }
    };
    *shape = Some(detected);
    let f = Fields {
        source,
        index,
        shape: detected,
        item: object.as_ref(),
        found: kind(raw.get()),
    };
    match detected {
        ExchangeShape::Binance => f.binance(),
        ExchangeShape::Ccxt => f.ccxt(),
    }
}

struct Fields<'a> {
    source: &'a str,
    index: usize,
    shape: ExchangeShape,
    item: Option<&'a Object>,
    found: &'static str,
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
    fn get(&self, name: &str) -> Result<&str> {
        let Some(item) = self.item else {
            return Err(self.err(format!("expected an object, found {}", self.found)));
        };
        match item.get(name) {
            Some(v) => Ok(v.get().trim()),
            None => Err(self.err(format!("missing field `{name}`"))),
        }
    }
    fn opt(&self, name: &str) -> Option<&str> {
        self.item
            .and_then(|m| m.get(name))
            .map(|v| v.get().trim())
            .filter(|v| *v != "null")
    }
    fn text_of(&self, name: &str, raw: &str) -> Result<String> {
        match kind(raw) {
            "a string" => serde_json::from_str::<String>(raw)
                .map_err(|e| self.err(format!("field `{name}`: {e}"))),
            // A number's digits as written: no 64-bit or float conversion.
            "a number" => Ok(raw.to_string()),
            other => Err(self.err(format!("field `{name}` should be a string, found {other}"))),
        }
    }
    fn text(&self, name: &str) -> Result<String> {
        let raw = self.get(name)?;
        self.text_of(name, raw)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        match self.opt(name) {
            None => Ok(None),
            Some(raw) => self.text_of(name, raw).map(Some),
        }
    }
    fn number_of(&self, name: &str, raw: &str) -> Result<f64> {
        let n = match kind(raw) {
            "a string" => serde_json::from_str::<String>(raw)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok()),
            "a number" => raw.parse::<f64>().ok(),
            _ => None,
        };
        n.filter(|x| x.is_finite()).ok_or_else(|| {
            self.err(format!(
                "field `{name}` should be a decimal number, found {raw}"
            ))
        })
    }
    fn number(&self, name: &str) -> Result<f64> {
        let raw = self.get(name)?;
        self.number_of(name, raw)
    }
    fn opt_number(&self, name: &str) -> Result<Option<f64>> {
        match self.opt(name) {
            None => Ok(None),
            Some(raw) => self.number_of(name, raw).map(Some),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_id_beyond_64_bits_stays_its_digits() {
        let json = br#"[{"symbol":"BTCUSDT","orderId":18446744073709551616123,"clientOrderId":"c","price":"1","origQty":"2","executedQty":"0","status":"NEW","side":"BUY"}]"#;
        let o = parse_exchange_orders(json, "ex.json").unwrap();
        assert_eq!(o[0].order_id, "18446744073709551616123");
        let o = read_exchange_orders(&json[..], "ex.json").unwrap();
        assert_eq!(o[0].order_id, "18446744073709551616123");
    }

    #[test]
    fn trailing_garbage_and_non_objects_are_errors() {
        let e = parse_exchange_orders(b"[] x", "ex.json").unwrap_err();
        assert!(e.to_string().starts_with("ex.json: not JSON"), "{e}");
        let json = br#"[{"symbol":"BTCUSDT","orderId":1,"clientOrderId":"c","price":"1","origQty":"2","executedQty":"0","status":"NEW","side":"BUY"}, 5]"#;
        let e = parse_exchange_orders(json, "ex.json")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "ex.json: element 1: Binance openOrders shape: expected an object, found a number"
        );
    }
}
