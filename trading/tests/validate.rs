//! Each validation rule has a database that breaks exactly it; a clean
//! simulated database has no error.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

use genesis_trading::validate::{codes, validate_state, ValidateOptions, ValidationReport};
use genesis_trading::{positions, replay, schema, simulate, state_hash, Event, ReplayOptions};
use rusqlite::Connection;

fn ev(seq: i64, ty: &str, id: &str, data: &str) -> Event {
    Event {
        event_id: format!("evt-{seq:04}"),
        event_type: ty.into(),
        aggregate_id: id.into(),
        event_data: data.into(),
        sequence_number: seq,
        created_at: format!("2025-01-15T14:{:02}:{:02}.000000", seq / 60, seq % 60),
    }
}

fn base_events() -> Vec<Event> {
    vec![
        ev(
            1,
            "BALANCE_UPDATED",
            "b",
            r#"{"asset":"USDT","free_balance":1000,"locked_balance":100,"total_balance":1100}"#,
        ),
        ev(
            2,
            "BALANCE_UPDATED",
            "b",
            r#"{"asset":"BTC","free_balance":1,"locked_balance":0,"total_balance":1}"#,
        ),
        ev(
            3,
            "POSITION_OPENED",
            "p1",
            r#"{"symbol":"BTC/USDT","side":"long","entry_price":100,"quantity":1,"strategy_id":"s"}"#,
        ),
        ev(
            4,
            "ORDER_CREATED",
            "o1",
            r#"{"client_order_id":"c1","symbol":"BTC/USDT","side":"buy","order_type":"limit","quantity":1,"price":100,"position_id":"p1"}"#,
        ),
        ev(
            5,
            "ORDER_CREATED",
            "o2",
            r#"{"client_order_id":"c2","symbol":"BTC/USDT","side":"buy","order_type":"limit","quantity":2,"price":10}"#,
        ),
        ev(
            6,
            "ORDER_FILLED",
            "o2",
            r#"{"filled_quantity":2,"executed_price":10}"#,
        ),
    ]
}

/// A database built from the events, with a correct CHECKPOINT after event 6.
fn build(extra: &[Event]) -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    schema::ensure_schema(&c).unwrap();
    let mut evs = base_events();
    replay(&mut c, &evs, &ReplayOptions::default()).unwrap();
    let hash = state_hash(&c).unwrap();
    let mut tail = vec![
        ev(
            7,
            "CHECKPOINT",
            "ck1",
            &format!(r#"{{"state_hash":"{hash}"}}"#),
        ),
        ev(8, "SYSTEM_STATE_SET", "s", r#"{"key":"mode","value":"x"}"#),
        ev(
            9,
            "POSITION_UPDATED",
            "p1",
            r#"{"current_price":110,"unrealized_pnl":10}"#,
        ),
    ];
    for (i, e) in extra.iter().enumerate() {
        let mut e = e.clone();
        e.sequence_number = 10 + i as i64;
        e.event_id = format!("evt-{:04}", e.sequence_number);
        if e.created_at == ev(0, "", "", "").created_at {
            e.created_at = ev(e.sequence_number, "", "", "").created_at;
        }
        tail.push(e);
    }
    replay(&mut c, &tail, &ReplayOptions::default()).unwrap();
    evs.extend(tail);
    c
}

fn error_codes(r: &ValidationReport) -> BTreeSet<String> {
    r.errors.iter().map(|f| f.code.clone()).collect()
}

fn only(conn: &Connection, opts: &ValidateOptions, code: &str, needle: &str) {
    let r = validate_state(conn, opts).unwrap();
    assert!(!r.is_consistent);
    assert_eq!(
        error_codes(&r),
        BTreeSet::from([code.to_string()]),
        "{:#?}",
        r.errors
    );
    assert!(
        r.errors.iter().any(|f| f.message.contains(needle)),
        "{needle:?} not in {:#?}",
        r.errors
    );
}

#[test]
fn the_base_database_is_clean() {
    let c = build(&[]);
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert!(r.is_consistent, "{:#?}", r.errors);
    assert!(r.warnings.is_empty(), "{:#?}", r.warnings);
    assert_eq!(r.metrics["event_count"], 9);
    assert_eq!(r.metrics["orders_by_status"]["filled"], 1);
    assert_eq!(r.metrics["open_exposure"]["BTC/USDT"], 100.0);
    assert_eq!(r.metrics["last_event_sequence"], 9);
}

#[test]
fn rule2_sequence_gap_and_duplicate() {
    let c = build(&[]);
    c.execute("DELETE FROM events WHERE sequence_number = 8", [])
        .unwrap();
    only(
        &c,
        &ValidateOptions::default(),
        codes::EVENT_SEQUENCE,
        "sequence numbers 8 are missing",
    );
    c.execute(
        "UPDATE events SET sequence_number = 8 WHERE sequence_number = 9",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT INTO events VALUES ('dup', 'SYSTEM_STATE_SET', 's', '{\"key\":\"k\",\"value\":1}', 8, '2025-01-15T14:00:08')",
        [],
    )
    .unwrap();
    only(
        &c,
        &ValidateOptions::default(),
        codes::EVENT_SEQUENCE,
        "sequence number 8 is used twice",
    );
}

#[test]
fn rule3_event_after_target() {
    let c = build(&[]);
    let opts = ValidateOptions {
        target: Some("2025-01-15T14:00:08.5Z".parse().unwrap()),
        ..Default::default()
    };
    only(&c, &opts, codes::EVENT_AFTER_TARGET, "event #9");
}

#[test]
fn rule4_balance_total() {
    let c = build(&[ev(
        0,
        "BALANCE_UPDATED",
        "b",
        r#"{"asset":"ETH","free_balance":1,"locked_balance":1,"total_balance":3}"#,
    )]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::BALANCE,
        "balance ETH",
    );
    let c = build(&[ev(
        0,
        "BALANCE_UPDATED",
        "b",
        r#"{"asset":"EUR","free_balance":-1,"locked_balance":1,"total_balance":0}"#,
    )]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::BALANCE,
        "balance EUR: free balance -1 is negative",
    );
}

#[test]
fn rule5_order_overfilled() {
    let c = build(&[ev(
        0,
        "ORDER_PARTIALLY_FILLED",
        "o1",
        r#"{"filled_quantity":2,"executed_price":100}"#,
    )]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::ORDER_INVALID,
        "order o1: filled quantity 2 exceeds quantity 1",
    );
}

#[test]
fn rule6_filled_order_not_fully_filled() {
    let c = build(&[ev(
        0,
        "ORDER_FILLED",
        "o1",
        r#"{"filled_quantity":0.5,"executed_price":100}"#,
    )]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::ORDER_FILL_STATE,
        "order o1: status filled",
    );
}

#[test]
fn rule7_open_position_without_quantity() {
    let c = build(&[ev(
        0,
        "POSITION_OPENED",
        "p2",
        r#"{"symbol":"BTC/USDT","side":"short","entry_price":100,"quantity":0}"#,
    )]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::POSITION_INVALID,
        "position p2",
    );
}

#[test]
fn rule8_order_names_missing_position() {
    let c = build(&[ev(
        0,
        "ORDER_CREATED",
        "o3",
        r#"{"client_order_id":"c3","symbol":"BTC/USDT","side":"buy","order_type":"market","quantity":1,"position_id":"ghost"}"#,
    )]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::ORDER_POSITION_MISSING,
        "order o3: position ghost",
    );
}

#[test]
fn rule9_projection_differs_from_replay() {
    let c = build(&[]);
    c.execute("UPDATE orders SET price = 101 WHERE order_id = 'o1'", [])
        .unwrap();
    only(
        &c,
        &ValidateOptions::default(),
        codes::REPLAY_MISMATCH,
        "order 'o1': price is 101.0 in the database but 100.0",
    );
    c.execute("DELETE FROM orders WHERE order_id = 'o2'", [])
        .unwrap();
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert!(
        r.errors.iter().any(|f| f
            .message
            .contains("order 'o2' is missing from the database")),
        "{:#?}",
        r.errors
    );
}

#[test]
fn rule10_checkpoint_hash() {
    let bad = format!(r#"{{"state_hash":"blake3:{}"}}"#, "0".repeat(64));
    let c = build(&[ev(0, "CHECKPOINT", "ck2", &bad)]);
    only(
        &c,
        &ValidateOptions::default(),
        codes::CHECKPOINT_HASH,
        "checkpoint ck2 (event #10)",
    );
    // A hash in another form is not checked.
    let c = build(&[ev(0, "CHECKPOINT", "ck3", r#"{"state_hash":"sha256:abc"}"#)]);
    assert!(
        validate_state(&c, &ValidateOptions::default())
            .unwrap()
            .is_consistent
    );
}

/// The newest checkpoint is hashed at the end of the pass (beside rule 9);
/// an event after it that cannot be replayed still leaves it checked, as
/// the state it had.
#[test]
fn rule10_the_newest_checkpoint_is_checked_when_the_replay_fails_after_it() {
    let bad = format!(r#"{{"state_hash":"blake3:{}"}}"#, "0".repeat(64));
    for (data, mismatch) in [(bad, true), (String::new(), false)] {
        let c = build(&[]);
        let data = if mismatch {
            data
        } else {
            format!(r#"{{"state_hash":"{}"}}"#, state_hash(&c).unwrap())
        };
        for e in [
            ev(10, "CHECKPOINT", "ck2", &data),
            ev(
                11,
                "ORDER_FILLED",
                "no-such-order",
                r#"{"filled_quantity":1}"#,
            ),
        ] {
            insert_event(&c, &e);
        }
        let r = validate_state(&c, &ValidateOptions::default()).unwrap();
        let mut want = BTreeSet::from([codes::REPLAY_MISMATCH.to_string()]);
        if mismatch {
            want.insert(codes::CHECKPOINT_HASH.to_string());
        }
        assert_eq!(error_codes(&r), want, "{:#?}", r.errors);
        assert!(
            r.errors
                .iter()
                .any(|f| f.message.contains("no order no-such-order to update")),
            "{:#?}",
            r.errors
        );
        assert_eq!(
            r.metrics["checkpoint_hashes"]["checked"],
            serde_json::json!(1),
            "{:#?}",
            r.metrics
        );
    }
}

#[test]
fn warnings_unknown_type_backwards_time_user_version() {
    let mut late = ev(0, "MARGIN_CALL", "m", "{}");
    late.created_at = "2025-01-15T13:00:00".into();
    let c = build(&[late]);
    c.pragma_update(None, "user_version", 0).unwrap();
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert!(r.is_consistent, "{:#?}", r.errors);
    let w: BTreeSet<_> = r.warnings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(
        w,
        BTreeSet::from([
            codes::UNKNOWN_EVENT_TYPE,
            codes::TIME_BACKWARDS,
            codes::USER_VERSION
        ])
    );
    let opts = ValidateOptions {
        handled_event_types: BTreeSet::from(["MARGIN_CALL".to_string()]),
        ..Default::default()
    };
    assert_eq!(validate_state(&c, &opts).unwrap().warnings.len(), 2);
}

/// Each unknown type is warned about once, in type order, with its count
/// and its first event; a handled type is counted but not warned about.
#[test]
fn unknown_types_are_counted_per_type_with_their_first_event() {
    let extra = [
        ev(0, "ZETA_EVENT", "z", "{}"),
        ev(0, "MARGIN_CALL", "m", "{}"),
        ev(0, "ZETA_EVENT", "z", "{}"),
        ev(0, "FUNDING_PAYMENT", "f", "{}"),
        ev(0, "MARGIN_CALL", "m", "{}"),
        ev(0, "ZETA_EVENT", "z", "{}"),
    ];
    let c = build(&extra);
    let opts = ValidateOptions {
        handled_event_types: BTreeSet::from(["FUNDING_PAYMENT".to_string()]),
        ..Default::default()
    };
    let r = validate_state(&c, &opts).unwrap();
    let unknown: Vec<&str> = r
        .warnings
        .iter()
        .filter(|f| f.code == codes::UNKNOWN_EVENT_TYPE)
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(
        unknown,
        [
            "event type MARGIN_CALL has no effect and no handler (2 events, first #11)",
            "event type ZETA_EVENT has no effect and no handler (3 events, first #10)",
        ]
    );
    let by_type = &r.metrics["events_by_type"];
    assert_eq!(by_type["ZETA_EVENT"], 3);
    assert_eq!(by_type["FUNDING_PAYMENT"], 1);
    assert_eq!(by_type["BALANCE_UPDATED"], 2);
}

#[test]
fn warnings_stale_order_and_short_lock() {
    let mut later = ev(0, "SYSTEM_STATE_SET", "s", r#"{"key":"k","value":"v"}"#);
    later.created_at = "2025-01-17T00:00:00".into();
    let c = build(&[
        ev(
            0,
            "ORDER_CREATED",
            "o4",
            r#"{"client_order_id":"c4","symbol":"BTC/USDT","side":"sell","order_type":"limit","quantity":0.5,"price":100}"#,
        ),
        later,
    ]);
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert!(r.is_consistent, "{:#?}", r.errors);
    let w: BTreeSet<_> = r.warnings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(
        w,
        BTreeSet::from([codes::STALE_OPEN_ORDER, codes::LOCKED_BALANCE_SHORT]),
        "{:#?}",
        r.warnings
    );
    assert!(r
        .warnings
        .iter()
        .any(|f| f.message.contains("balance BTC: locked 0")));
}

#[test]
fn a_clean_simulated_database_has_no_error_and_positions_match() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("genesis.db");
    let opts = simulate::SimulateOptions {
        max_commits: Some(3000),
        checkpoint_every: 97,
        seed: 5,
        ..Default::default()
    };
    simulate::simulate(&db, &opts, &AtomicBool::new(false)).unwrap();
    let c = Connection::open(&db).unwrap();
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert!(r.is_consistent, "{:#?}", r.errors);
    assert!(r.warnings.is_empty(), "{:#?}", r.warnings);

    let p = positions::recover_positions(&c, None).unwrap();
    assert!(p.divergences.is_empty(), "{:#?}", p.divergences);
    let open: i64 = c
        .query_row(
            "SELECT count(*) FROM positions WHERE status = 'open'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let all: i64 = c
        .query_row("SELECT count(*) FROM positions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (p.open_positions as i64, p.total_positions as i64),
        (open, all)
    );
    assert!(open > 0);

    let id: String = c
        .query_row(
            "SELECT position_id FROM positions WHERE status = 'open' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "UPDATE positions SET quantity = quantity + 1 WHERE position_id = ?1",
        [&id],
    )
    .unwrap();
    let p = positions::recover_positions(&c, None).unwrap();
    assert_eq!(p.divergences.len(), 1, "{:#?}", p.divergences);
    assert!(
        p.divergences[0].message.contains(&id) && p.divergences[0].message.contains("quantity")
    );

    // Up to a time: a prefix of the events, no divergence computed.
    let t: String = c
        .query_row(
            "SELECT created_at FROM events WHERE sequence_number = 100",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let p = positions::recover_positions(&c, Some(genesis_trading::time::parse_opt(&t).unwrap()))
        .unwrap();
    assert_eq!(p.last_sequence, Some(100));
    assert!(p.divergences.is_empty());
}

/// The checkpoint hashes as validation computed them before issue #13: every
/// `blake3:` checkpoint, the events replayed into a scratch database up to it
/// and the state hashed there. The oracle of the test below.
fn checkpoint_errors_by_replay(c: &Connection) -> Vec<String> {
    let events = genesis_trading::read_events(c, i64::MIN, None).unwrap();
    let mut scratch = Connection::open_in_memory().unwrap();
    schema::ensure_schema(&scratch).unwrap();
    let ro = ReplayOptions {
        check_sequence: false,
        record_events: false,
        tune_pragmas: false,
        ..ReplayOptions::default()
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (i, e) in events.iter().enumerate() {
        if e.event_type != "CHECKPOINT" {
            continue;
        }
        replay(&mut scratch, &events[start..=i], &ro).unwrap();
        start = i + 1;
        let d: serde_json::Value = serde_json::from_str(&e.event_data).unwrap();
        let h = d["state_hash"].as_str().unwrap();
        let actual = state_hash(&scratch).unwrap();
        if h.starts_with("blake3:") && actual != h {
            out.push(format!(
                "checkpoint {} (event #{}): state_hash {h} differs from the replayed state's {actual}",
                e.aggregate_id, e.sequence_number
            ));
        }
    }
    out
}

#[test]
fn many_checkpoints_planted_divergences_early_middle_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("genesis.db");
    let opts = simulate::SimulateOptions {
        max_commits: Some(3030),
        checkpoint_every: 50,
        seed: 9,
        ..Default::default()
    };
    simulate::simulate(&db, &opts, &AtomicBool::new(false)).unwrap();
    let c = Connection::open(&db).unwrap();
    let clean = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert!(clean.is_consistent, "{:#?}", clean.errors);
    let checkpoints: Vec<i64> = c
        .prepare("SELECT sequence_number FROM events WHERE event_type = 'CHECKPOINT' ORDER BY sequence_number")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let last_seq: i64 = c
        .query_row("SELECT max(sequence_number) FROM events", [], |r| r.get(0))
        .unwrap();
    // The premise: many checkpoints, and events after the newest one (so
    // that the default run hashes it from rows rolled back).
    assert!(checkpoints.len() >= 50, "{}", checkpoints.len());
    assert!(last_seq > checkpoints[checkpoints.len() - 1] + 10);
    let (early, middle, end) = (
        checkpoints[1],
        checkpoints[checkpoints.len() / 2],
        checkpoints[checkpoints.len() - 1],
    );
    let bad = format!(r#"{{"state_hash":"blake3:{}"}}"#, "f".repeat(64));
    for s in [early, middle, end] {
        c.execute(
            "UPDATE events SET event_data = ?1 WHERE sequence_number = ?2",
            rusqlite::params![bad, s],
        )
        .unwrap();
    }
    let expected = checkpoint_errors_by_replay(&c);
    assert_eq!(expected.len(), 3, "{expected:#?}");
    let hash_errors = |r: &ValidationReport| -> Vec<String> {
        r.errors
            .iter()
            .filter(|f| f.code == codes::CHECKPOINT_HASH)
            .map(|f| f.message.clone())
            .collect()
    };

    // --full: every checkpoint, the same findings as before.
    let full = ValidateOptions {
        all_checkpoints: true,
        ..ValidateOptions::default()
    };
    let r = validate_state(&c, &full).unwrap();
    assert_eq!(hash_errors(&r), expected);
    assert_eq!(
        error_codes(&r),
        BTreeSet::from([codes::CHECKPOINT_HASH.to_string()])
    );
    assert_eq!(r.warnings, clean.warnings);
    assert_eq!(r.metrics["checkpoint_hashes"]["not_checked"], 0);

    // Default: the newest one, and the report says which were not checked.
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert_eq!(hash_errors(&r), expected[2..].to_vec());
    assert_eq!(r.warnings, clean.warnings);
    let m = &r.metrics["checkpoint_hashes"];
    assert_eq!(m["checked"], 1);
    assert_eq!(m["not_checked"], checkpoints.len() - 1);
    assert_eq!(m["not_checked_first_sequence"], checkpoints[0]);
    assert_eq!(
        m["not_checked_last_sequence"],
        checkpoints[checkpoints.len() - 2]
    );

    // A restore that replayed from before the middle one checks it too.
    let replayed = ValidateOptions {
        checkpoints_after: Some(middle - 1),
        ..ValidateOptions::default()
    };
    let r = validate_state(&c, &replayed).unwrap();
    assert_eq!(hash_errors(&r), expected[1..].to_vec());

    // The same events out of rowid order: the pass reads them sorted and
    // finds the newest checkpoint itself (rows rolled back to it).
    reverse_rowid_order(&c);
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    assert_eq!(hash_errors(&r), expected[2..].to_vec());
    assert_eq!(r.metrics["checkpoint_hashes"], *m);
}

/// Appends an event row as it is (no replay).
fn insert_event(c: &Connection, e: &Event) {
    c.execute(
        "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            e.event_id,
            e.event_type,
            e.aggregate_id,
            e.event_data,
            e.sequence_number,
            e.created_at
        ],
    )
    .unwrap();
}

/// Writes the events again in reverse sequence order (rowids reversed).
fn reverse_rowid_order(c: &Connection) {
    let evs: Vec<Event> = genesis_trading::read_events(c, i64::MIN, None).unwrap();
    c.execute("DELETE FROM events", []).unwrap();
    for e in evs.iter().rev() {
        insert_event(c, e);
    }
}

#[test]
fn events_out_of_rowid_order_are_validated_in_sequence_order() {
    // The same events, appended in reverse: the fold must still apply them in
    // sequence order (an update before its insert would fail).
    let c = build(&[]);
    reverse_rowid_order(&c);
    let r = validate_state(
        &c,
        &ValidateOptions {
            all_checkpoints: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.is_consistent, "{:#?}", r.errors);
    assert_eq!(r.metrics["event_count"], 9);
}

/// The orders are read in rowid order; their findings still come out in
/// order id order, the capped list keeping the smallest ids, a row's findings
/// in rule order, as a read in key order gives them.
#[test]
fn table_findings_are_listed_in_key_order_whatever_the_rowid_order() {
    let c = build(&[]);
    // Ids inserted in an order that is neither key order nor its reverse.
    let ids: Vec<String> = (0..30).map(|i| format!("x{:02}", (i * 7) % 30)).collect();
    for id in &ids {
        c.execute(
            "INSERT INTO orders (order_id, client_order_id, symbol, side, order_type, quantity, price, status, filled_quantity) \
             VALUES (?1, ?1, 'BTC/USDT', 'buy', 'market', -1, 1, 'new', 0.5)",
            [id],
        )
        .unwrap();
    }
    let opts = ValidateOptions {
        max_findings_per_rule: 5,
        ..Default::default()
    };
    let r = validate_state(&c, &opts).unwrap();
    let mut sorted = ids.clone();
    sorted.sort();
    let mut want = Vec::new();
    for id in &sorted[..5] {
        want.push(format!("order {id}: quantity -1 is negative"));
        want.push(format!("order {id}: status new but filled quantity 0.5"));
    }
    want.push("... and 25 more order_fill_state findings".to_string());
    want.push("... and 25 more order_invalid findings".to_string());
    let have: Vec<String> = r
        .errors
        .iter()
        .filter(|f| f.code == codes::ORDER_INVALID || f.code == codes::ORDER_FILL_STATE)
        .map(|f| f.message.clone())
        .collect();
    assert_eq!(have, want);
}

/// An events table without its primary key can hold one event id twice:
/// rule 2 names it (the count of distinct ids differs from the count).
#[test]
fn rule2_duplicate_event_id_without_a_primary_key() {
    let c = build(&[]);
    c.execute_batch(
        "ALTER TABLE events RENAME TO events_old;
         CREATE TABLE events (event_id TEXT, event_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
           event_data TEXT NOT NULL, sequence_number INTEGER NOT NULL, created_at TEXT NOT NULL);
         INSERT INTO events SELECT * FROM events_old ORDER BY rowid;
         DROP TABLE events_old;
         UPDATE events SET event_id = 'evt-0008' WHERE sequence_number = 9;",
    )
    .unwrap();
    let r = validate_state(&c, &ValidateOptions::default()).unwrap();
    let dup: Vec<&str> = r
        .errors
        .iter()
        .filter(|f| f.code == codes::EVENT_SEQUENCE)
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(
        dup,
        ["event_id evt-0008 is used by 2 events"],
        "{:#?}",
        r.errors
    );
}
