//! An event-handler plugin for `FUNDING_PAYMENT` events, which the trading
//! system writes when a perpetual-futures funding payment is paid or received
//! and which the built-in replay does not know.
//!
//! Effect (in the style of DOMAIN.md's table): with event_data
//! `{"asset":"USDT","amount":-1.25,"symbol":"BTC/USDT"}`, the `balances` row
//! where `asset` = data.asset gets `free_balance` and `total_balance` adjusted
//! by `amount` (a NULL column counts as 0) and `updated_at` = the event's
//! `created_at` text. `amount` may be a JSON number or a decimal string;
//! `symbol` is informational. The update must change exactly one row: a
//! payment for an asset without a balance row fails the replay, naming the
//! event, unless the config sets `create_missing = true`, which inserts the row
//! (free = total = amount, locked = 0) instead.

use genesis_plugin_sdk::serde_json::{self, Value};
use genesis_plugin_sdk::wire::{SqlStatement, SqlValue, WireEvent};
use genesis_plugin_sdk::{EventHandler, EventHandlerStage};
use serde::Deserialize;

/// The event type handled.
pub const FUNDING_PAYMENT: &str = "FUNDING_PAYMENT";

const UPDATE_SQL: &str = "UPDATE balances SET \
     free_balance = COALESCE(free_balance, 0) + ?1, \
     total_balance = COALESCE(total_balance, 0) + ?1, \
     updated_at = ?2 \
     WHERE asset = ?3";

const UPSERT_SQL: &str = "INSERT INTO balances \
     (asset, free_balance, locked_balance, total_balance, updated_at) \
     VALUES (?3, ?1, 0, ?1, ?2) \
     ON CONFLICT(asset) DO UPDATE SET \
     free_balance = COALESCE(free_balance, 0) + ?1, \
     total_balance = COALESCE(total_balance, 0) + ?1, \
     updated_at = ?2";

/// The plugin's `[stages.config]` keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Insert a missing balance row instead of failing the replay.
    #[serde(default)]
    create_missing: bool,
}

/// The handler.
pub struct FundingPayment {
    create_missing: bool,
}

impl FundingPayment {
    fn amount(event: &WireEvent) -> Result<f64, String> {
        let amount = match event.event_data.get("amount") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
            None => {
                return Err(format!(
                    "FUNDING_PAYMENT event {} (sequence {}) has no `amount` in its data",
                    event.event_id, event.sequence_number
                ))
            }
        };
        amount.filter(|a| a.is_finite()).ok_or_else(|| {
            format!(
                "FUNDING_PAYMENT event {} (sequence {}) has an `amount` that is not a finite number: {}",
                event.event_id, event.sequence_number, event.event_data["amount"]
            )
        })
    }

    fn asset(event: &WireEvent) -> Result<String, String> {
        match event.event_data.get("asset") {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format!(
                "FUNDING_PAYMENT event {} (sequence {}) has no `asset` string in its data",
                event.event_id, event.sequence_number
            )),
        }
    }
}

impl EventHandler for FundingPayment {
    fn new(config: Value) -> Result<Self, String> {
        let config: Config =
            serde_json::from_value(config).map_err(|e| format!("funding-payment config: {e}"))?;
        Ok(FundingPayment {
            create_missing: config.create_missing,
        })
    }

    fn event_types(&self) -> Vec<String> {
        vec![FUNDING_PAYMENT.to_string()]
    }

    fn handle(&mut self, event: &WireEvent) -> Result<Vec<SqlStatement>, String> {
        if event.event_type != FUNDING_PAYMENT {
            return Err(format!(
                "funding-payment handles only {FUNDING_PAYMENT}, was given {} (event {})",
                event.event_type, event.event_id
            ));
        }
        let amount = Self::amount(event)?;
        let asset = Self::asset(event)?;
        let sql = if self.create_missing {
            UPSERT_SQL
        } else {
            UPDATE_SQL
        };
        Ok(vec![SqlStatement {
            sql: sql.to_string(),
            params: vec![
                SqlValue::Real(amount),
                SqlValue::Text(event.created_at.clone()),
                SqlValue::Text(asset),
            ],
            expect_changes: Some(1),
        }])
    }
}

genesis_plugin_sdk::export_stage!(EventHandlerStage<FundingPayment>, "funding-payment");

#[cfg(test)]
mod tests {
    use super::*;
    use genesis_plugin_sdk::serde_json::json;
    use rusqlite::{params_from_iter, Connection};

    fn event(data: Value) -> WireEvent {
        WireEvent {
            event_id: "ev-9".into(),
            event_type: FUNDING_PAYMENT.into(),
            aggregate_id: "USDT".into(),
            event_data: data,
            sequence_number: 9,
            created_at: "2025-01-15T14:30:00.123456".into(),
        }
    }

    fn apply(db: &Connection, statements: &[SqlStatement]) -> usize {
        let mut changed = 0;
        for s in statements {
            let params = s.params.iter().map(|p| match p {
                SqlValue::Null => rusqlite::types::Value::Null,
                SqlValue::Integer(i) => rusqlite::types::Value::Integer(*i),
                SqlValue::Real(f) => rusqlite::types::Value::Real(*f),
                SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
            });
            changed += db.execute(&s.sql, params_from_iter(params)).unwrap();
        }
        changed
    }

    fn balances() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE balances (asset TEXT PRIMARY KEY, free_balance REAL,
               locked_balance REAL, total_balance REAL, updated_at TEXT);
             INSERT INTO balances VALUES ('USDT', 100.0, 10.0, 110.0, 'old');",
        )
        .unwrap();
        db
    }

    fn row(db: &Connection, asset: &str) -> (f64, f64, f64, String) {
        db.query_row(
            "SELECT free_balance, locked_balance, total_balance, updated_at FROM balances WHERE asset = ?1",
            [asset],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_payment_adjusts_free_and_total() {
        let db = balances();
        let mut handler = FundingPayment::new(json!({})).unwrap();
        let statements = handler
            .handle(&event(
                json!({"asset": "USDT", "amount": -1.25, "symbol": "BTC/USDT"}),
            ))
            .unwrap();
        assert_eq!(apply(&db, &statements), 1);
        assert_eq!(
            row(&db, "USDT"),
            (98.75, 10.0, 108.75, "2025-01-15T14:30:00.123456".into())
        );
    }

    #[test]
    fn amounts_may_be_decimal_strings() {
        let mut handler = FundingPayment::new(json!({})).unwrap();
        let s = handler
            .handle(&event(json!({"asset": "USDT", "amount": "0.5"})))
            .unwrap();
        assert_eq!(s[0].params[0], SqlValue::Real(0.5));
    }

    #[test]
    fn a_missing_balance_is_created_only_when_asked() {
        let db = balances();
        let mut strict = FundingPayment::new(json!({})).unwrap();
        let s = strict
            .handle(&event(json!({"asset": "BNB", "amount": 2})))
            .unwrap();
        assert_eq!(s[0].expect_changes, Some(1));
        assert_eq!(apply(&db, &s), 0, "the host turns this into a replay error");

        let mut lenient = FundingPayment::new(json!({"create_missing": true})).unwrap();
        let s = lenient
            .handle(&event(json!({"asset": "BNB", "amount": 2})))
            .unwrap();
        assert_eq!(apply(&db, &s), 1);
        assert_eq!(row(&db, "BNB").2, 2.0);
        let s = lenient
            .handle(&event(json!({"asset": "BNB", "amount": 1})))
            .unwrap();
        apply(&db, &s);
        assert_eq!(row(&db, "BNB").0, 3.0);
    }

    #[test]
    fn bad_data_names_the_event() {
        let mut handler = FundingPayment::new(json!({})).unwrap();
        let err = handler
            .handle(&event(json!({"asset": "USDT"})))
            .unwrap_err();
        assert!(err.contains("ev-9") && err.contains("amount"), "{err}");
        let err = handler.handle(&event(json!({"amount": 1}))).unwrap_err();
        assert!(err.contains("asset"), "{err}");
        let err = handler
            .handle(&event(json!({"asset": "USDT", "amount": "lots"})))
            .unwrap_err();
        assert!(err.contains("finite"), "{err}");
        assert!(FundingPayment::new(json!({"nope": 1})).is_err());
    }
}
