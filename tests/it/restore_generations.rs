//! Restores into the span between two generations. A generation started
//! after the capturer was away archives the events committed meanwhile
//! only when the live table still holds the last archived event as it was
//! archived; otherwise its archive starts after its own snapshot, and the
//! events between the two archives exist in no event object. A time target
//! inside that hole cannot be restored exactly: the restore must say so
//! (data loss, exit 5, naming the sequence numbers), never return the older
//! generation's last point as if it were the target.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::repo::Repository;
use rusqlite::Connection;

use crate::common::{integrity, Env};
use crate::exact_event::{full_state, full_state_conn};

const EXIT_DATA_LOSS: i32 = 5;

struct TwoGenerations {
    env: Env,
    /// `created_at` of each event of the run and the state right after it.
    events: Vec<(DateTime<Utc>, String)>,
}

/// Generation A captures 20 events and stops; 20 more are committed with
/// no capturer; then `between` runs on the live database, and a capturer
/// opens again (generation B when `between` breaks continuity).
fn two_generations(between: &str) -> TwoGenerations {
    let env = Env::new();
    let mut conn = crate::trading_chain::open_writer(&env);
    let mut sim = genesis_trading::simulate::Simulator::open(&conn, 11).expect("simulator");
    let mut events = Vec::new();
    let mut commit = |conn: &mut Connection, events: &mut Vec<(DateTime<Utc>, String)>| {
        let ev = sim.commit_one(conn).expect("commit");
        let at = genesis_core::time::parse_timestamp(&ev.created_at).expect("created_at");
        events.push((at, full_state_conn(conn)));
    };
    let repo = Repository::open_local(&env.repo(), true).expect("repo");
    let mut cap = Capturer::open(CaptureOptions::new(env.db()), repo).expect("capturer");
    for _ in 0..20 {
        commit(&mut conn, &mut events);
    }
    cap.step(false).expect("capture step");
    cap.finish().expect("finish");
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        commit(&mut conn, &mut events);
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    conn.execute_batch(between)
        .expect("the change between the captures");
    let repo = Repository::open_local(&env.repo(), false).expect("repo");
    let cap = Capturer::open(CaptureOptions::new(env.db()), repo).expect("capturer again");
    cap.finish().expect("finish");
    drop(conn);
    TwoGenerations { env, events }
}

fn restore_to(env: &Env, at: DateTime<Utc>, name: &str) -> (i32, serde_json::Value, String) {
    let out = env.path().join(format!("{name}.db"));
    let tss = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
    let (code, v) = env.json(&[
        "restore",
        "--timestamp",
        &tss,
        "--output",
        out.to_str().expect("utf-8 path"),
        "--no-validate",
    ]);
    let state = if out.exists() {
        assert_eq!(integrity(&out), "ok", "{name}: {v}");
        full_state(&out)
    } else {
        String::new()
    };
    (code, v, state)
}

#[test]
fn a_target_in_a_hole_between_two_archives_is_a_reported_loss_not_an_older_state() {
    // The last archived event (sequence number 20) deleted from the live
    // table: the new generation cannot prove where the archive stood, so its
    // archive starts after its snapshot (seq 40); seqs 21..40 are archived
    // nowhere.
    let g = two_generations("DELETE FROM events WHERE sequence_number = 20");
    let catalog = g.env.open_repo().catalog().expect("catalog");
    assert_eq!(catalog.generations.len(), 2, "the premise: two generations");
    let target = g.events[29].0;
    let (code, v, state) = restore_to(&g.env, target, "hole");
    assert_ne!(
        (code, &state),
        (0, &g.events[19].1),
        "the restore to event 30's instant returned generation A's last point (event 20) as if exact: {v}"
    );
    if code == 0 {
        assert_eq!(state, g.events[29].1, "exit 0 but not exact: {v}");
    } else {
        assert_eq!(code, EXIT_DATA_LOSS, "{v}");
        assert_eq!(v["data_loss"], true, "{v}");
        let text = v.to_string();
        assert!(
            text.contains("21..40") || text.contains("21..=40"),
            "the report names the sequence numbers archived nowhere: {v}"
        );
    }
}

/// Renames generation `from` to `to` throughout a local repository: the
/// keys that name it and the manifests' text.
fn rename_generation(dir: &Path, from: &str, to: &str) {
    for entry in std::fs::read_dir(dir).expect("read the repository") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rename_generation(&path, from, to);
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !name.contains(from) {
            continue;
        }
        let renamed = path.with_file_name(name.replace(from, to));
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).expect("manifest");
            std::fs::write(&renamed, text.replace(from, to)).expect("write manifest");
            std::fs::remove_file(&path).expect("remove the old manifest");
        } else {
            std::fs::rename(&path, &renamed).expect("rename object");
        }
    }
}

#[test]
fn a_target_between_two_generations_whose_archives_meet_is_exact() {
    // A WAL restarted while no capturer ran: a new generation, whose archive
    // starts right after generation A's (the live table still holds seq 20).
    let g = two_generations("PRAGMA wal_checkpoint(TRUNCATE)");
    let check = |round: &str| {
        for (i, k) in [22usize, 29, 39].iter().enumerate() {
            let (code, v, state) = restore_to(&g.env, g.events[*k].0, &format!("meet-{round}-{i}"));
            assert_eq!(code, 0, "{round}: {v}");
            assert_eq!(state, g.events[*k].1, "{round}: event {}: {v}", k + 1);
        }
    };
    check("as captured");
    // Generations started within one second have ids that sort by their
    // random suffix: the later one's id sorting first must change nothing.
    let catalog = g.env.open_repo().catalog().expect("catalog");
    assert_eq!(catalog.generations.len(), 2, "the premise: two generations");
    let later = catalog.generations[1].id.clone();
    let earlier = &catalog.generations[0].id;
    let first = format!("{}-000000", &earlier[..earlier.len() - 7]);
    rename_generation(&g.env.repo(), &later, &first);
    assert!(first < *earlier, "{first} sorts before {earlier}");
    check("the later id sorting first");
}
