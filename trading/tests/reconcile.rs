//! Reconciliation: both file shapes, normalisation, each mismatch kind,
//! tolerance, malformed files, and the simulated exchange.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use genesis_trading::reconcile::{
    parse_exchange_orders, reconcile, unify_symbol, ExchangeShape, ReconcileOptions,
};
use genesis_trading::{replay, schema, simulate, Event, ReplayOptions};
use rusqlite::Connection;
use serde_json::json;

fn db() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    schema::ensure_schema(&c).unwrap();
    let mk = |seq: i64, ty: &str, id: &str, data: serde_json::Value| Event {
        event_id: format!("e{seq}"),
        event_type: ty.into(),
        aggregate_id: id.into(),
        event_data: data.to_string(),
        sequence_number: seq,
        created_at: format!("2025-01-15T14:00:{seq:02}"),
    };
    let evs = vec![
        mk(
            1,
            "ORDER_CREATED",
            "1001",
            json!({"client_order_id":"c1","symbol":"BTC/USDT","side":"buy","order_type":"limit","quantity":0.5,"price":42000.0}),
        ),
        mk(
            2,
            "ORDER_CREATED",
            "1002",
            json!({"client_order_id":"c2","symbol":"ETH/USDT","side":"sell","order_type":"limit","quantity":2.0,"price":2300.0}),
        ),
        mk(
            3,
            "ORDER_PARTIALLY_FILLED",
            "1002",
            json!({"filled_quantity":0.5,"executed_price":2300.0}),
        ),
        mk(
            4,
            "ORDER_CREATED",
            "1003",
            json!({"client_order_id":"c3","symbol":"BTC/USDT","side":"buy","order_type":"limit","quantity":1.0,"price":41000.0}),
        ),
        mk(
            5,
            "ORDER_FILLED",
            "1003",
            json!({"filled_quantity":1.0,"executed_price":41000.0}),
        ),
    ];
    replay(&mut c, &evs, &ReplayOptions::default()).unwrap();
    c
}

fn binance() -> serde_json::Value {
    json!([
        {"symbol":"BTCUSDT","orderId":1001,"orderListId":-1,"clientOrderId":"c1","price":"42000.00000000","origQty":"0.50000000","executedQty":"0.00000000","status":"NEW","timeInForce":"GTC","type":"LIMIT","side":"BUY","time":1,"updateTime":1},
        {"symbol":"ETHUSDT","orderId":1002,"orderListId":-1,"clientOrderId":"c2","price":"2300.00000000","origQty":"2.00000000","executedQty":"0.50000000","status":"PARTIALLY_FILLED","timeInForce":"GTC","type":"LIMIT","side":"SELL","time":1,"updateTime":1}
    ])
}

fn ccxt() -> serde_json::Value {
    json!([
        {"id":"1001","clientOrderId":"c1","symbol":"BTC/USDT","side":"buy","type":"limit","amount":0.5,"filled":0.0,"price":42000.0,"status":"open"},
        {"id":"1002","clientOrderId":"c2","symbol":"ETH/USDT","side":"sell","type":"limit","amount":2.0,"filled":0.5,"price":2300.0,"status":"open"}
    ])
}

fn parse(v: &serde_json::Value) -> Vec<genesis_trading::reconcile::ExchangeOrder> {
    parse_exchange_orders(v.to_string().as_bytes(), "orders.json").unwrap()
}

#[test]
fn both_shapes_reconcile_cleanly() {
    let c = db();
    for (v, shape) in [
        (binance(), ExchangeShape::Binance),
        (ccxt(), ExchangeShape::Ccxt),
    ] {
        let orders = parse(&v);
        assert!(orders.iter().all(|o| o.shape == shape));
        assert_eq!(orders[1].status, "partially_filled");
        let r = reconcile(&c, &orders, &ReconcileOptions::default()).unwrap();
        assert!(r.is_reconciled, "{r:#?}");
        assert_eq!(
            (r.db_order_count, r.exchange_order_count, r.accuracy),
            (2, 2, 1.0)
        );
        assert!(r.actions.is_empty());
    }
}

#[test]
fn symbols_are_unified() {
    let none = BTreeMap::new();
    assert_eq!(unify_symbol("BTCUSDT", &none), "BTC/USDT");
    assert_eq!(unify_symbol("ETHBTC", &none), "ETH/BTC");
    assert_eq!(unify_symbol("BTCFDUSD", &none), "BTC/FDUSD");
    assert_eq!(unify_symbol("BTC/USDT:USDT", &none), "BTC/USDT");
    let map = BTreeMap::from([("XBTZUSD".to_string(), "BTC/USD".to_string())]);
    assert_eq!(unify_symbol("XBTZUSD", &map), "BTC/USD");
}

#[test]
fn each_mismatch_kind_is_reported_with_actions() {
    let c = db();
    let mut v = binance();
    v[0]["origQty"] = json!("0.60000000");
    v[0]["price"] = json!("42001.00000000");
    v[1]["status"] = json!("CANCELED");
    v[1]["executedQty"] = json!("0.70000000");
    v.as_array_mut().unwrap().push(json!({"symbol":"SOLUSDT","orderId":9,"clientOrderId":"x9","price":"90","origQty":"1","executedQty":"0","status":"NEW","type":"LIMIT","side":"BUY"}));
    let r = reconcile(&c, &parse(&v), &ReconcileOptions::default()).unwrap();
    assert!(!r.is_reconciled);
    let fields: Vec<_> = r
        .quantity_mismatches
        .iter()
        .map(|m| (m.order_id.as_str(), m.field.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("1001", "quantity"),
            ("1001", "price"),
            ("1002", "filled_quantity")
        ]
    );
    assert_eq!(r.status_mismatches.len(), 1);
    assert_eq!(
        (
            r.status_mismatches[0].db_status.as_str(),
            r.status_mismatches[0].exchange_status.as_str()
        ),
        ("partially_filled", "cancelled")
    );
    assert_eq!(r.missing_in_db.len(), 1);
    assert_eq!(r.missing_in_db[0].symbol, "SOL/USDT");
    assert!(
        r.actions.contains(&"Import exchange order: 9".to_string()),
        "{:?}",
        r.actions
    );
    assert_eq!(r.accuracy, 0.0);

    // One order gone from the exchange: cancel it locally.
    let mut v = binance();
    v.as_array_mut().unwrap().remove(0);
    let r = reconcile(&c, &parse(&v), &ReconcileOptions::default()).unwrap();
    assert_eq!(r.missing_on_exchange.len(), 1);
    assert_eq!(
        r.missing_on_exchange[0].client_order_id.as_deref(),
        Some("c1")
    );
    assert_eq!(r.actions, vec!["Cancel local order: c1".to_string()]);
    assert_eq!(r.accuracy, 0.5);
}

#[test]
fn matching_falls_back_to_order_id_and_tolerance_applies() {
    let c = db();
    let mut v = ccxt();
    v[0]["clientOrderId"] = json!(null);
    v[0]["amount"] = json!(0.5000001);
    let orders = parse(&v);
    let r = reconcile(&c, &orders, &ReconcileOptions::default()).unwrap();
    assert_eq!(r.quantity_mismatches.len(), 1);
    assert!(r.missing_in_db.is_empty() && r.missing_on_exchange.is_empty());
    let loose = ReconcileOptions {
        tolerance: 1e-3,
        ..Default::default()
    };
    assert!(reconcile(&c, &orders, &loose).unwrap().is_reconciled);
}

#[test]
fn malformed_files_say_what_was_expected() {
    let err = parse_exchange_orders(b"{not json", "ex.json")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("ex.json: not JSON"), "{err}");
    let err = parse_exchange_orders(br#"{"orders": []}"#, "ex.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected a JSON array") && err.contains("found an object"),
        "{err}"
    );
    let err = parse_exchange_orders(br#"[{"foo": 1}]"#, "ex.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("element 0") && err.contains("neither a Binance"),
        "{err}"
    );
    let mut v = binance();
    v[1].as_object_mut().unwrap().remove("origQty");
    let err = parse_exchange_orders(v.to_string().as_bytes(), "ex.json")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "ex.json: element 1: Binance openOrders shape: missing field `origQty`"
    );
    let mut v = ccxt();
    v[0].as_object_mut().unwrap().remove("amount");
    v[0]["id"] = json!("1001");
    let err = parse_exchange_orders(v.to_string().as_bytes(), "plugin:ccxt")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "plugin:ccxt: element 0: CCXT order shape: missing field `amount`"
    );
    let mut v = binance();
    v[0]["price"] = json!("cheap");
    let err = parse_exchange_orders(v.to_string().as_bytes(), "ex.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`price` should be a decimal number"), "{err}");
    assert!(parse_exchange_orders(b"[]", "ex.json").unwrap().is_empty());
}

#[test]
fn the_simulated_exchange_reconciles_and_plants_discrepancies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let opts = simulate::SimulateOptions {
        max_commits: Some(600),
        seed: 9,
        ..Default::default()
    };
    simulate::simulate(&db, &opts, &AtomicBool::new(false)).unwrap();
    let c = Connection::open(&db).unwrap();
    let clean = simulate::exchange_open_orders_binance(&c, None).unwrap();
    let r = reconcile(&c, &parse(&clean), &ReconcileOptions::default()).unwrap();
    assert!(r.is_reconciled, "{r:#?}");
    assert!(r.db_order_count >= 2);
    let planted = simulate::exchange_open_orders_binance(&c, Some(3)).unwrap();
    let r = reconcile(&c, &parse(&planted), &ReconcileOptions::default()).unwrap();
    assert_eq!(
        (
            r.missing_in_db.len(),
            r.missing_on_exchange.len(),
            r.quantity_mismatches.len()
        ),
        (1, 1, 1),
        "{r:#?}"
    );
}

#[test]
fn an_order_listed_twice_matches_once_with_a_warning() {
    let c = db();
    let mut v = binance();
    let again = v[0].clone();
    v.as_array_mut().unwrap().push(again);
    let r = reconcile(&c, &parse(&v), &ReconcileOptions::default()).unwrap();
    assert!(r.is_reconciled, "{r:#?}");
    assert!(r.missing_in_db.is_empty() && r.actions.is_empty(), "{r:#?}");
    assert_eq!(r.accuracy, 1.0);
    assert_eq!(
        r.warnings,
        vec![
            "exchange order 1001 is listed 2 times in the exchange orders; compared once"
                .to_string()
        ]
    );
}

#[test]
fn a_client_order_id_shared_by_two_exchange_orders_proposes_no_false_action() {
    let c = db();
    let mut v = binance();
    // Listed after the true match: the old last-wins index picked this one.
    v.as_array_mut().unwrap().push(json!(
        {"symbol":"BTCUSDT","orderId":2001,"clientOrderId":"c1","price":"40000","origQty":"3","executedQty":"1","status":"PARTIALLY_FILLED","type":"LIMIT","side":"SELL"}
    ));
    let r = reconcile(&c, &parse(&v), &ReconcileOptions::default()).unwrap();
    assert!(r.actions.is_empty(), "{:#?}", r.actions);
    assert!(
        r.status_mismatches.is_empty()
            && r.quantity_mismatches.is_empty()
            && r.other_mismatches.is_empty(),
        "{r:#?}"
    );
    assert!(
        r.missing_in_db.is_empty() && r.missing_on_exchange.is_empty(),
        "{r:#?}"
    );
    assert_eq!(r.matched, 2);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("client order id c1") && w.contains("1001, 2001")),
        "{:#?}",
        r.warnings
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.starts_with("exchange order 2001 shares client order id c1")),
        "{:#?}",
        r.warnings
    );
    assert!(
        !r.is_reconciled,
        "an exchange order nobody accounts for is not reconciled"
    );

    // Neither shares the local order id: not compared, no action either way.
    let mut v = binance();
    v[0]["orderId"] = json!(3001);
    v.as_array_mut().unwrap().push(json!(
        {"symbol":"BTCUSDT","orderId":3002,"clientOrderId":"c1","price":"40000","origQty":"3","executedQty":"0","status":"NEW","type":"LIMIT","side":"BUY"}
    ));
    let r = reconcile(&c, &parse(&v), &ReconcileOptions::default()).unwrap();
    assert!(r.actions.is_empty(), "{:#?}", r.actions);
    assert!(
        r.missing_in_db.is_empty() && r.missing_on_exchange.is_empty(),
        "{r:#?}"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w
                .starts_with("local order 1001 (client order id c1) matches 2 exchange orders")),
        "{:#?}",
        r.warnings
    );
    assert!(!r.is_reconciled);
}

#[test]
fn an_order_id_beyond_64_bits_is_imported_as_written() {
    let c = db();
    let text = r#"[{"symbol":"BTCUSDT","orderId":18446744073709551616123,"clientOrderId":"cx","price":"1","origQty":"2","executedQty":"0","status":"NEW","type":"LIMIT","side":"BUY"}]"#;
    let orders =
        genesis_trading::reconcile::read_exchange_orders(text.as_bytes(), "ex.json").unwrap();
    let r = reconcile(&c, &orders, &ReconcileOptions::default()).unwrap();
    assert!(
        r.actions
            .contains(&"Import exchange order: 18446744073709551616123".to_string()),
        "{:#?}",
        r.actions
    );
    assert_eq!(r.missing_in_db[0].order_id, "18446744073709551616123");
}
