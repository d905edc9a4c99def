//! Capture and rebuild round trips on real SQLite databases, including WAL
//! restarts caused by the application's checkpoints.

use std::path::Path;

use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::rebuild::rebuild;
use genesis_core::repo::Repository;
use rusqlite::Connection;

fn writer(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("PRAGMA wal_autocheckpoint=10; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, pad BLOB);")
        .unwrap();
    c
}

fn dump(db: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn every_captured_txid_rebuilds_to_the_writers_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let w = writer(&db);
    let repo = Repository::open_local(&dir.path().join("repo"), true).unwrap();
    let mut opts = CaptureOptions::new(&db);
    opts.checkpoint_frames = 50;
    let mut cap = Capturer::open(opts, repo.clone()).unwrap();
    let mut expected: Vec<(u64, Vec<(i64, String)>)> = Vec::new();
    let mut state: std::collections::BTreeMap<i64, String> = Default::default();
    for i in 0..400i64 {
        w.execute(
            "INSERT INTO t(id, v, pad) VALUES (?1, ?2, zeroblob(?3))",
            rusqlite::params![i, format!("v{i}"), (i % 7) * 900],
        )
        .unwrap();
        state.insert(i, format!("v{i}"));
        if i % 3 == 0 {
            w.execute("UPDATE t SET v = v || 'x' WHERE id = ?1", [i / 2])
                .unwrap();
            if let Some(v) = state.get_mut(&(i / 2)) {
                v.push('x');
            }
        }
        if i % 50 == 25 {
            w.execute("DELETE FROM t WHERE id % 11 = 0", []).unwrap();
            state.retain(|id, _| id % 11 != 0);
        }
        if i % 97 == 0 {
            w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        if i % 5 == 0 {
            let r = cap.step(false).unwrap();
            assert!(
                r.new_generation.is_none(),
                "continuity lost at {i}: {:?}",
                r.new_generation
            );
            expected.push((cap.last_txid(), state.clone().into_iter().collect()));
        }
    }
    cap.finish().unwrap();
    let catalog = repo.catalog().unwrap();
    assert_eq!(catalog.generations.len(), 1);
    for (txid, want) in expected.iter().step_by(3) {
        let point = catalog.point_for_txid(*txid).unwrap();
        let chain = catalog.chain_to(&point).unwrap();
        let out = dir.path().join(format!("r{txid}.db"));
        rebuild(&repo, &chain, &point, &out).unwrap();
        assert_eq!(&dump(&out), want, "txid {txid}");
    }
}
