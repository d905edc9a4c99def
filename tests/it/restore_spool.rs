//! wal-apply past its memory budget: segments that arrive when the budget is
//! spent go to a spool file beside the staged database and their pages are
//! read back from it. A restore pipeline whose wal-apply holds nothing in
//! memory (`segment_memory_mib = 0`) restores every point of a non-trading
//! chain exactly (page sizes 1 KiB to 64 KiB, every auto_vacuum mode, rows
//! that grow, shrink and move), leaves no spool behind, and the next restore
//! removes a spool a crashed one left.

use rusqlite::Connection;

use crate::common::{integrity, state_hash, Env};

/// The built-in restore pipeline with wal-apply spooling every segment.
fn spooling_pipeline(env: &Env) -> std::path::PathBuf {
    let text = genesis_stages::restore::RESTORE_PIPELINE;
    let from = "staging_dir = \"${staging_dir}\"";
    assert!(
        text.contains(from),
        "the restore pipeline names its staging_dir"
    );
    let text = text.replace(from, &format!("{from}\nsegment_memory_mib = 0"));
    let path = env.path().join("spooling.toml");
    std::fs::write(&path, text).expect("write the pipeline");
    path
}

fn change(c: &Connection, round: u32, ps: u32) {
    let blob = |n: u32| vec![(round * 7 + n) as u8; (ps as usize / 3) + 17 * n as usize];
    c.execute_batch("BEGIN").expect("begin");
    for i in 0..(20 + 10 * round) {
        c.execute(
            "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)",
            rusqlite::params![format!("k{}", (i * 13 + round) % 90), blob(i)],
        )
        .expect("upsert");
    }
    if round % 2 == 1 {
        c.execute("DELETE FROM kv WHERE k > 'k5'", [])
            .expect("delete");
    }
    c.execute_batch("COMMIT").expect("commit");
}

fn run(ps: u32, mode: &str) {
    let what = format!("page_size={ps} auto_vacuum={mode}");
    let env = Env::new();
    let pipeline = spooling_pipeline(&env);
    let c = Connection::open(env.db()).expect("open db");
    c.execute_batch(&format!(
        "PRAGMA page_size={ps}; PRAGMA auto_vacuum={mode}; PRAGMA journal_mode=WAL;
         PRAGMA wal_autocheckpoint=0;
         CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB);"
    ))
    .expect("set up db");
    let (code, v) = env.json(&["backup", "full"]);
    assert_eq!(code, 0, "{what}: backup full: {v}");
    let mut states = Vec::new();
    for round in 1..=5u32 {
        change(&c, round, ps);
        let o = env.run(&["backup", "sync"]);
        assert!(o.status.success(), "{what}: backup sync: {o:?}");
        states.push(state_hash(&env.db()));
    }
    let last = env.open_repo().catalog().expect("catalog").max_txid();
    let staging = env.path().join("staging");
    for (i, want) in states.iter().enumerate() {
        let txid = last - (states.len() - 1 - i) as u64;
        let out = env.path().join(format!("at{txid}.db"));
        let o = env
            .cmd()
            .args([
                "-v",
                "restore",
                "--txid",
                &txid.to_string(),
                "--no-validate",
            ])
            .arg("--pipeline")
            .arg(&pipeline)
            .arg("--staging-dir")
            .arg(&staging)
            .arg("--output")
            .arg(&out)
            .output()
            .expect("restore");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{what}: restore --txid {txid}: {err}");
        assert!(
            err.contains("are read back from"),
            "{what}: txid {txid}: the premise failed, nothing was spooled: {err}"
        );
        assert_eq!(integrity(&out), "ok", "{what}: txid {txid}");
        assert_eq!(&state_hash(&out), want, "{what}: txid {txid} differs");
        let left: Vec<_> = std::fs::read_dir(&staging)
            .expect("staging")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{what}: left in the staging folder: {left:?}"
        );
    }
    drop(c);
}

#[test]
fn a_restore_that_spools_every_segment_restores_every_point_exactly() {
    for (ps, mode) in [(1024, "incremental"), (4096, "none"), (65536, "full")] {
        run(ps, mode);
    }
}

#[test]
fn a_spool_a_crashed_restore_left_is_removed_by_the_next() {
    let env = Env::new();
    let c = Connection::open(env.db()).expect("open db");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB);
         INSERT INTO kv VALUES ('a', x'00');",
    )
    .expect("set up db");
    assert_eq!(env.json(&["backup", "full"]).0, 0);
    let staging = env.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    // A pid no process has (Linux pids stay below 2^22).
    let leftover = staging.join("restore-7-4999999.db-spool");
    std::fs::write(&leftover, b"spooled pages").expect("leftover");
    let out = env.path().join("out.db");
    let (code, v) = env.json(&[
        "restore",
        "--latest",
        "--no-validate",
        "--staging-dir",
        staging.to_str().expect("utf-8"),
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{v}");
    assert!(
        !leftover.exists(),
        "the crashed restore's spool is still there"
    );
}

#[test]
fn a_full_staging_disk_under_the_spool_fails_the_restore_and_leaves_nothing() {
    let env = Env::new();
    let pipeline = spooling_pipeline(&env);
    let c = Connection::open(env.db()).expect("open db");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB);",
    )
    .expect("set up db");
    assert_eq!(env.json(&["backup", "full"]).0, 0);
    // ~600 KiB of segments against a 128 KiB staging filesystem: the spool,
    // written before anything else there, is what runs out of space.
    for round in 1..=3 {
        change(&c, round * 10, 4096);
        assert!(env.run(&["backup", "sync"]).status.success());
    }
    let stage = env.path().join("stage");
    let Some(_fs) = crate::capture_issue11::Tmpfs::mount(&stage, "128k") else {
        return;
    };
    let out = env.path().join("out.db");
    let (code, v) = env.json(&[
        "restore",
        "--latest",
        "--no-validate",
        "--pipeline",
        pipeline.to_str().expect("utf-8"),
        "--staging-dir",
        stage.to_str().expect("utf-8"),
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    assert!(code != 0 && code != 5, "the restore did not fail: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("segment spool") && message.contains("No space left"),
        "the error does not name the spool and the full disk: {v}"
    );
    let left: Vec<_> = std::fs::read_dir(&stage)
        .expect("stage")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in the staging folder: {left:?}");
    assert!(!out.exists(), "a partial --output");
}

#[test]
fn a_damaged_segment_on_the_spool_path_is_never_a_silently_wrong_restore() {
    let env = Env::new();
    let pipeline = spooling_pipeline(&env);
    let c = Connection::open(env.db()).expect("open db");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB);",
    )
    .expect("set up db");
    assert_eq!(env.json(&["backup", "full"]).0, 0);
    let mut states = Vec::new();
    for round in 1..=4 {
        change(&c, round, 4096);
        assert!(env.run(&["backup", "sync"]).status.success());
        states.push(state_hash(&env.db()));
    }
    drop(c);
    // A flipped byte in the middle of the second segment.
    let mut segs: Vec<_> = std::fs::read_dir(env.repo().join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 4, "the premise: one segment per sync: {segs:?}");
    let mut bytes = std::fs::read(&segs[1]).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&segs[1], bytes).expect("write");
    let staging = env.path().join("staging");
    let out = env.path().join("out.db");
    let (code, v) = env.json(&[
        "restore",
        "--latest",
        "--no-validate",
        "--pipeline",
        pipeline.to_str().expect("utf-8"),
        "--staging-dir",
        staging.to_str().expect("utf-8"),
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    // The point before the damage, said to be a loss: never the latest state
    // built from a damaged segment, never silently.
    assert_eq!(code, 5, "{v}");
    assert_eq!(v["data_loss"], true, "{v}");
    assert!(
        v["fallback"]["gap"]
            .as_str()
            .unwrap_or_default()
            .contains("damaged"),
        "{v}"
    );
    assert_eq!(integrity(&out), "ok");
    assert_eq!(
        &state_hash(&out),
        &states[0],
        "not the point before the damage: {v}"
    );
    let left: Vec<_> = std::fs::read_dir(&staging)
        .expect("staging")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in the staging folder: {left:?}");
}
