//! Replay equals the original: the simulator's own writer and the folded
//! replay (and the one-by-one reference writer) give identical tables.

use genesis_trading::replay::replay_stream;
use genesis_trading::{effects, replay, schema, simulate, ReplayOptions};
use proptest::prelude::*;
use rusqlite::Connection;

const TABLES: [&str; 8] = [
    "events",
    "positions",
    "orders",
    "balances",
    "system_state",
    "tier_history",
    "risk_limits",
    "checkpoints",
];

/// Every table's rows, rowid included where there is one, as quote()d text.
fn dump(conn: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    for t in TABLES.iter().chain(["sqlite_sequence"].iter()) {
        let cols: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expr: Vec<String> = cols.iter().map(|c| format!("quote({c})")).collect();
        let sql = format!(
            "SELECT rowid || ':' || {} FROM {t} ORDER BY rowid",
            expr.join("||'|'||")
        );
        let rows: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        out.push(format!("{t}: {}", rows.join("\n")));
    }
    out
}

fn assert_same(a: &Connection, b: &Connection, what: &str) {
    for (ta, tb) in dump(a).iter().zip(dump(b).iter()) {
        if ta != tb {
            let (la, lb): (Vec<&str>, Vec<&str>) = (ta.lines().collect(), tb.lines().collect());
            let i = la
                .iter()
                .zip(&lb)
                .position(|(x, y)| x != y)
                .unwrap_or(la.len().min(lb.len()));
            panic!(
                "{what}: first difference at line {i} (lengths {} vs {}):\n  {:?}\n  {:?}",
                la.len(),
                lb.len(),
                la.get(i),
                lb.get(i)
            );
        }
    }
}

fn written_by_simulator(seed: u64, n: usize) -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::ensure_schema(&conn).unwrap();
    let mut sim = simulate::synthetic(seed);
    for _ in 0..n {
        sim.commit_one(&mut conn).unwrap();
    }
    conn
}

fn check(seed: u64, n: usize, split: usize) {
    let events = simulate::random_events(seed, n);
    let original = written_by_simulator(seed, n);
    let mut replayed = Connection::open_in_memory().unwrap();
    schema::ensure_schema(&replayed).unwrap();
    let split = split.min(n);
    replay(&mut replayed, &events[..split], &ReplayOptions::default()).unwrap();
    replay(&mut replayed, &events[split..], &ReplayOptions::default()).unwrap();
    assert_same(&original, &replayed, "replay");
    assert_integrity(&replayed, "replay");

    // The staged copy's replay: no journal, multi-row inserts, all through
    // SQLite; the b-trees must agree.
    let dir = tempfile::tempdir().unwrap();
    let mut staged = Connection::open(dir.path().join("staged.db")).unwrap();
    let _: String = staged
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    schema::ensure_schema(&staged).unwrap();
    let staging = ReplayOptions {
        staging: true,
        ..ReplayOptions::default()
    };
    replay(&mut staged, &events[..split], &staging).unwrap();
    replay(&mut staged, &events[split..], &staging).unwrap();
    assert_same(&original, &staged, "staging replay");
    assert_integrity(&staged, "staging replay");

    // The same, streamed in uneven chunks (as event-replay streams decoded
    // event objects).
    let mut streamed = Connection::open(dir.path().join("streamed.db")).unwrap();
    let _: String = streamed
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    schema::ensure_schema(&streamed).unwrap();
    let size = 1 + (seed % 997) as usize;
    for part in [&events[..split], &events[split..]] {
        replay_stream(&mut streamed, part.chunks(size).map(Ok), &staging, &mut []).unwrap();
    }
    assert_same(&original, &streamed, "streamed staging replay");
    assert_integrity(&streamed, "streamed staging replay");

    let reference = Connection::open_in_memory().unwrap();
    schema::ensure_schema(&reference).unwrap();
    for ev in &events {
        reference
            .execute(
                "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    ev.event_id,
                    ev.event_type,
                    ev.aggregate_id,
                    ev.event_data,
                    ev.sequence_number,
                    ev.created_at
                ],
            )
            .unwrap();
        effects::apply(&reference, ev).unwrap();
    }
    assert_same(&original, &reference, "reference writer");
    assert_integrity(&reference, "reference writer");
}

fn assert_integrity(c: &Connection, what: &str) {
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{what}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn replay_equals_the_simulators_writer(seed in any::<u64>(), n in 1usize..1500, split in 0usize..1500) {
        check(seed, n, split);
    }
}

#[test]
fn a_long_stream_replays_identically() {
    check(42, 30_000, 12_345);
}
