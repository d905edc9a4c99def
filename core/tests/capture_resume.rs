//! Regression tests of issue 11, item 0: restores that reported success
//! returned corrupt databases after `backup full` then `backup replicate`
//! resumed the generation.
//!
//! Cause: a resumed capturer held a read transaction and called that
//! continuity. But when the WAL is wholly backfilled, a new read transaction
//! takes read mark 0, and a reader on mark 0 does not block a WAL restart
//! (SQLite's `walRestartLog` locks read marks 1 and up only). Frames
//! committed while no capturer ran, not yet copied but already checkpointed,
//! were then overwritten by the next writer, and the capturer shipped the new
//! WAL on top of a chain that lacked them. Its running checksum agreed with
//! what it had shipped, so every restore "proved" a database the source
//! never had. A resumed generation is now continuous only once the frames
//! after its saved position are copied; a restart before that starts a new
//! generation with a snapshot.

use std::path::Path;

use genesis_core::capture::{backup_sync, CaptureOptions, Capturer};
use genesis_core::rebuild::rebuild;
use genesis_core::repo::Repository;
use rusqlite::Connection;

fn dump(db: &Path) -> Vec<String> {
    let c = Connection::open(db).expect("open");
    let mut out: Vec<String> = c
        .prepare("SELECT k, quote(v), hex(pad) FROM kv ORDER BY k")
        .expect("prepare")
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    out.push(format!("integrity_check: {ok}"));
    out
}

fn latest(repo: &Repository, out: &Path) {
    let catalog = repo.catalog().expect("catalog");
    let point = catalog.latest_point().expect("a restore point");
    let chain = catalog.chain_to(&point).expect("chain");
    assert!(chain.gap.is_none(), "gap: {:?}", chain.gap);
    rebuild(repo, &chain, &point, out).expect("rebuild");
}

#[test]
fn a_resumed_capture_that_sees_the_wal_restarted_before_its_first_copy_starts_a_new_generation() {
    for av in ["NONE", "FULL", "INCREMENTAL"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db.sqlite");
        let w = Connection::open(&db).expect("open");
        w.execute_batch(&format!(
            "PRAGMA page_size=4096; PRAGMA auto_vacuum={av}; PRAGMA journal_mode=WAL; \
             PRAGMA wal_autocheckpoint=0; \
             CREATE TABLE kv(k INTEGER PRIMARY KEY, v INTEGER, pad BLOB);"
        ))
        .expect("setup");
        for k in 0..40 {
            w.execute(
                "INSERT INTO kv VALUES (?1, ?1, randomblob(?2))",
                rusqlite::params![k, 100 + (k % 5) * 2000],
            )
            .expect("insert");
        }
        let repo = Repository::open_local(&dir.path().join("repo"), true).expect("repo");
        backup_sync(CaptureOptions::new(&db), repo.clone()).expect("first capture");

        // While no capturer runs: commits, then a checkpoint that backfills
        // every frame (nobody reads), so the WAL can be restarted.
        w.execute_batch("DELETE FROM kv WHERE k BETWEEN 5 AND 25; UPDATE kv SET v = v + 1000;")
            .expect("commits while no capturer runs");
        for k in 100..110 {
            w.execute("INSERT INTO kv VALUES (?1, ?1, randomblob(6000))", [k])
                .expect("insert");
        }
        let (busy, log, done): (i64, i64, i64) = w
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!((busy, log), (0, done), "the WAL is wholly backfilled");

        // The capturer resumes (its read transaction takes read mark 0), and
        // the next write restarts the WAL over the frames it never copied.
        let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).expect("resume");
        assert!(cap.opened().new_generation.is_none(), "it resumed");
        w.execute("INSERT INTO kv VALUES (500, 500, randomblob(10))", [])
            .expect("the write that restarts the WAL");
        let r = cap.step(false).expect("step");
        assert!(
            r.new_generation
                .as_deref()
                .is_some_and(|why| why.contains("restarted")),
            "auto_vacuum={av}: the restart must start a new generation: {r:?}"
        );
        assert_eq!(
            r.txns, 0,
            "nothing of the new WAL is shipped onto the old chain"
        );
        cap.finish().expect("finish");

        let out = dir.path().join("restored.db");
        latest(&repo, &out);
        assert_eq!(
            dump(&out),
            dump(&db),
            "auto_vacuum={av}: the latest restore point"
        );
    }
}

/// An auto_vacuum=FULL database with one row, captured once (`backup sync`),
/// and the application's connection to it.
fn captured_once() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Connection,
    Repository,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db.sqlite");
    let w = Connection::open(&db).expect("open");
    w.execute_batch(
        "PRAGMA auto_vacuum=FULL; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; \
         CREATE TABLE kv(k INTEGER PRIMARY KEY, v INTEGER, pad BLOB); \
         INSERT INTO kv VALUES (1, 1, randomblob(9000));",
    )
    .expect("setup");
    let repo = Repository::open_local(&dir.path().join("repo"), true).expect("repo");
    backup_sync(CaptureOptions::new(&db), repo.clone()).expect("first capture");
    (dir, db, w, repo)
}

#[test]
fn a_resumed_capture_copies_what_was_committed_while_it_was_stopped() {
    let (dir, db, w, repo) = captured_once();
    w.execute_batch("INSERT INTO kv VALUES (2, 2, randomblob(9000)); DELETE FROM kv WHERE k = 1;")
        .expect("commits while stopped");
    let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).expect("resume");
    assert!(cap.opened().new_generation.is_none(), "it resumed");
    let r = cap.step(false).expect("step");
    assert!(r.new_generation.is_none(), "nothing was lost: {r:?}");
    assert_eq!(r.txns, 2);
    // Now continuous: a restart after the copy continues the generation.
    w.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .expect("checkpoint");
    cap.step(false).expect("roll");
    w.execute("INSERT INTO kv VALUES (3, 3, randomblob(10))", [])
        .expect("write");
    let r = cap.step(false).expect("step");
    assert!(r.new_generation.is_none(), "{r:?}");
    cap.finish().expect("finish");
    let out = dir.path().join("restored.db");
    latest(&repo, &out);
    assert_eq!(dump(&out), dump(&db));
}

#[test]
fn a_database_changed_behind_the_wal_is_caught_by_the_sampled_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db.sqlite");
    let w = Connection::open(&db).expect("open");
    w.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; \
         CREATE TABLE kv(k INTEGER PRIMARY KEY, v INTEGER, pad BLOB); \
         INSERT INTO kv VALUES (1, 1, randomblob(9000)); \
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .expect("setup");
    let repo = Repository::open_local(&dir.path().join("repo"), true).expect("repo");
    let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).expect("open");
    assert!(cap.opened().new_generation.is_some());
    // Another process writes page 1 of the file (bytes SQLite reserves and
    // ignores) without going through the WAL: the chain no longer
    // reproduces the database, and only a check against the source sees it.
    let st = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "f=open({:?},'r+b'); f.seek(72); f.write(bytes([1,2,3,4])); f.close()",
            db.display().to_string()
        ))
        .status()
        .expect("python3 (scripts/setup.sh installs it)");
    assert!(st.success());
    let r = cap.step(false).expect("step");
    assert!(
        r.new_generation
            .as_deref()
            .is_some_and(|why| why.contains("differ from the captured chain")),
        "{r:?}"
    );
    assert!(cap
        .metrics()
        .render()
        .contains("\ngenesis_capture_check_failures_total 1\n"));
    cap.finish().expect("finish");
    let out = dir.path().join("restored.db");
    latest(&repo, &out);
    assert_eq!(
        std::fs::read(&out).expect("restored"),
        std::fs::read(&db).expect("source"),
        "the new generation's snapshot is the database as it is"
    );
}

#[test]
fn a_resumed_capture_with_nothing_uncopied_continues_across_a_restart() {
    let (dir, db, w, repo) = captured_once();
    let (busy, log, done): (i64, i64, i64) = w
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!((busy, log), (0, done), "the WAL is wholly backfilled");
    let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).expect("resume");
    assert!(cap.opened().new_generation.is_none(), "it resumed");
    w.execute("INSERT INTO kv VALUES (2, 2, randomblob(10))", [])
        .expect("the write that restarts the WAL");
    let r = cap.step(false).expect("step");
    assert!(r.new_generation.is_none(), "nothing was uncopied: {r:?}");
    assert_eq!(r.txns, 1);
    cap.finish().expect("finish");
    let out = dir.path().join("restored.db");
    latest(&repo, &out);
    assert_eq!(dump(&out), dump(&db));
}
