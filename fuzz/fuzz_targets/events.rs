//! Event objects (`GREVT001`): `decode_events` (and `event_sequences`, which
//! must agree with it on every input), the rows turned into events as
//! event-replay does (`select_events`: UTF-8, times, order), each event's
//! effect (`effect_of`, the flat JSON reader), and the replay itself onto an
//! empty in-memory trading database.
#![no_main]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use genesis_core::repo::formats::{decode_events, event_sequences};
use genesis_stages::event_replay::select_events;
use genesis_trading::effects::effect_of;
use genesis_trading::replay::{replay, ReplayOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sequences = event_sequences("fuzz", data);
    let Ok(rows) = decode_events("fuzz", data) else {
        assert!(sequences.is_err(), "event_sequences accepts what decode_events refuses");
        return;
    };
    let Ok(sequences) = sequences else {
        panic!("event_sequences refuses what decode_events accepts");
    };
    assert_eq!(sequences.rows, rows.len());
    assert_eq!(sequences.first, rows.first().map(|r| r.sequence_number));
    assert_eq!(sequences.last, rows.last().map(|r| r.sequence_number));
    let until = DateTime::<Utc>::MAX_UTC;
    let Ok(events) = select_events(vec![Arc::new(rows)], i64::MIN, until) else {
        return;
    };
    for ev in &events {
        let _ = ev.time();
        let _ = effect_of(ev);
    }
    if events.is_empty() || events.len() > 64 {
        return;
    }
    let Ok(mut conn) = rusqlite::Connection::open_in_memory() else {
        return;
    };
    if genesis_trading::ensure_schema(&conn).is_err() {
        return;
    }
    let opts = ReplayOptions {
        check_sequence: false,
        after_sequence: Some(0),
        ..ReplayOptions::default()
    };
    let _ = replay(&mut conn, &events, &opts);
});
