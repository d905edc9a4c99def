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

/// One row of `t`: id, v, pad.
type Row = (i64, String, Option<Vec<u8>>);

/// Every row with every column, the pad bytes included; and the database
/// must be whole.
fn dump(db: &Path) -> Vec<Row> {
    let c = Connection::open(db).unwrap();
    let ic: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ic, "ok", "{} is damaged", db.display());
    let mut s = c.prepare("SELECT id, v, pad FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
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
    let mut expected: Vec<(u64, Vec<Row>)> = Vec::new();
    let mut state: std::collections::BTreeMap<i64, (String, Option<Vec<u8>>)> = Default::default();
    for i in 0..400i64 {
        w.execute(
            "INSERT INTO t(id, v, pad) VALUES (?1, ?2, zeroblob(?3))",
            rusqlite::params![i, format!("v{i}"), (i % 7) * 900],
        )
        .unwrap();
        state.insert(
            i,
            (format!("v{i}"), Some(vec![0u8; ((i % 7) * 900) as usize])),
        );
        if i % 3 == 0 {
            w.execute("UPDATE t SET v = v || 'x' WHERE id = ?1", [i / 2])
                .unwrap();
            if let Some((v, _)) = state.get_mut(&(i / 2)) {
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
            expected.push((
                cap.last_txid(),
                state
                    .iter()
                    .map(|(id, (v, pad))| (*id, v.clone(), pad.clone()))
                    .collect(),
            ));
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

#[test]
fn a_failed_step_advances_nothing_and_the_next_one_ships_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let w = writer(&db);
    let repo_dir = dir.path().join("repo");
    let repo = Repository::open_local(&repo_dir, true).unwrap();
    let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).unwrap();
    for i in 0..20i64 {
        w.execute("INSERT INTO t(id, v) VALUES (?1, 'a')", [i])
            .unwrap();
    }
    cap.step(false).unwrap();
    // The repository cannot take the next segment: a file where its directory should be.
    let segs = repo_dir.join("segments");
    std::fs::rename(&segs, repo_dir.join("segments.away")).unwrap();
    std::fs::write(&segs, b"in the way").unwrap();
    for i in 20..40i64 {
        w.execute("INSERT INTO t(id, v) VALUES (?1, 'b')", [i])
            .unwrap();
    }
    let before = cap.last_txid();
    assert!(cap.step(false).is_err(), "the step must fail");
    assert_eq!(
        cap.last_txid(),
        before,
        "a failed step must not advance the position"
    );
    std::fs::remove_file(&segs).unwrap();
    std::fs::rename(repo_dir.join("segments.away"), &segs).unwrap();
    for i in 40..45i64 {
        w.execute("INSERT INTO t(id, v) VALUES (?1, 'c')", [i])
            .unwrap();
    }
    let r = cap.step(false).unwrap();
    assert!(r.new_generation.is_none(), "continuity was kept");
    assert_eq!(
        r.txns, 25,
        "every commit since the last good step is shipped"
    );
    cap.finish().unwrap();
    let catalog = repo.catalog().unwrap();
    assert_eq!(catalog.generations.len(), 1);
    let point = catalog.latest_point().unwrap();
    let chain = catalog.chain_to(&point).unwrap();
    assert!(chain.gap.is_none());
    let out = dir.path().join("latest.db");
    rebuild(&repo, &chain, &point, &out).unwrap();
    assert_eq!(dump(&out).len(), 45);
}
