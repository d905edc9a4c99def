//! Exact to the event: a writer following DOMAIN.md (one event and its effect
//! per transaction, `created_at` its commit time) trades while `replicate`
//! runs with a 1 s interval. Restores to at least 50 instants, most of them
//! between two captures, each equal, table by table, the writer's state after
//! the last event at or before the instant.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::common::{signal, Env};

/// Every user table's rows, in primary-key order, as text.
pub fn full_state(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    full_state_conn(&c)
}

pub fn full_state_conn(c: &rusqlite::Connection) -> String {
    let mut tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    tables.sort();
    let mut out = String::new();
    for t in tables {
        out.push_str(&t);
        out.push('\n');
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
            .unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i).unwrap();
                out.push_str(&format!("{v:?}|"));
            }
            out.push('\n');
        }
    }
    blake3::hash(out.as_bytes()).to_hex().to_string()
}

#[test]
fn restores_between_captures_are_exact_to_the_event() {
    let env = Env::new();
    let o = env.run(&["simulate", "--rate", "0", "--max-commits", "300"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut rep = env.spawn(&[
        "backup",
        "replicate",
        "--interval",
        "1s",
        "--compaction-levels",
        LEVELS,
    ]);
    std::thread::sleep(Duration::from_millis(700));

    let mut conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut sim = genesis_trading::simulate::Simulator::open(&conn, 99).unwrap();
    // (created_at of the last event, state after it), starting with the state before the writer.
    let mut states: Vec<(DateTime<Utc>, String)> = Vec::new();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(7) {
        let ev = sim.commit_one(&mut conn).unwrap();
        let at = genesis_core::time::parse_timestamp(&ev.created_at).unwrap();
        states.push((at, full_state_conn(&conn)));
        n += 1;
        // ~100 commits per second, in bursts, so that captures fall between events.
        std::thread::sleep(Duration::from_millis(if n.is_multiple_of(25) {
            120
        } else {
            7
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    signal(&rep, "TERM");
    assert!(rep.wait().unwrap().success());
    drop(conn);

    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).unwrap();
    let points = repo.catalog().unwrap().restore_points();
    let first_event = states.first().unwrap().0;
    let last_event = states.last().unwrap().0;
    // Targets: between events (most), exactly at an event, at capture instants.
    let mut targets: Vec<DateTime<Utc>> = Vec::new();
    let span = (last_event - first_event).num_microseconds().unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..45 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        targets.push(first_event + chrono::Duration::microseconds((x % span as u64) as i64));
    }
    for i in (0..states.len()).step_by(states.len() / 5) {
        targets.push(states[i].0);
    }
    for p in points
        .iter()
        .filter(|p| p.time > first_event && p.time < last_event)
        .take(5)
    {
        targets.push(p.time);
    }
    assert!(targets.len() >= 50, "{} targets", targets.len());
    let check = |targets: &[DateTime<Utc>], pass: &str| -> usize {
        let mut between = 0;
        for (i, t) in targets.iter().enumerate() {
            let expected = states
                .iter()
                .rev()
                .find(|(at, _)| at <= t)
                .map(|(_, h)| h.clone())
                .expect("a state at or before");
            let out = env.path().join(format!("exact-{i}.db"));
            let ts = t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
            let (code, v) = env.json(&[
                "restore",
                "--timestamp",
                &ts,
                "--output",
                out.to_str().unwrap(),
                "--no-validate",
            ]);
            assert_eq!(code, 0, "{pass}: restore to {ts}: {v}");
            let got = full_state(&out);
            assert_eq!(
                got, expected,
                "{pass}: restore to {ts} (txid {}, {} events replayed, objects read {}) differs from the writer's state",
                v["restored_txid"], v["events_replayed"], v["objects_read"]
            );
            if v["events_replayed"].as_u64().unwrap_or(0) > 0 {
                between += 1;
            }
            let _ = std::fs::remove_file(&out);
        }
        between
    };
    let between = check(&targets, "with every level-0 segment");
    assert!(
        between >= 25,
        "only {between} of {} targets fell between captures",
        targets.len()
    );

    // Compacted (issue 14), then every level-0 segment a compacted object
    // covers pruned: instants inside compacted spans are reached from the
    // span's end before them and the events after it, still exact.
    std::thread::sleep(Duration::from_millis(4200));
    let (code, v) = env.json(&["backup", "compact", "--levels", LEVELS]);
    assert_eq!(code, 0, "backup compact: {v}");
    let (code, v) = env.json(&["backup", "prune", "--keep-days", "3650", "--keep-l0", "0s"]);
    assert_eq!(code, 0, "prune: {v}");
    let removed = v["level0"]["removed"].as_array().map_or(0, Vec::len);
    assert!(
        removed >= 3,
        "level-0 retention removed {removed} segments: {v}"
    );
    let left = repo.catalog().unwrap().restore_points().len();
    assert!(
        left < points.len(),
        "{left} of {} points left",
        points.len()
    );
    let between = check(&targets[..30], "after level-0 retention");
    assert!(
        between >= 15,
        "only {between} of 30 targets replayed events after retention"
    );
}

/// Compaction spans of this test, fast enough that seconds of trading make
/// objects of every level.
const LEVELS: &str = "1s,2s,4s";
