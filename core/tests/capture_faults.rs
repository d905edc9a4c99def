//! Faults from the repository, injected by a backend that fails on purpose
//! (as restic's tests do): a write or a read that returns an I/O error.
//! Capture steps must fail loudly (an error returned, the position not
//! advanced, nothing half-published), and the retry must ship everything,
//! with nothing lost and no new generation; a restore whose read fails must
//! name the object.

use std::path::Path;
use std::sync::{Arc, Mutex};

use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::rebuild::rebuild;
use genesis_core::repo::{Backend, LocalBackend, ObjectBytes, Repository};
use genesis_core::{Error, Result};
use rusqlite::Connection;

/// Which call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    PutState,
}

/// A fault: calls of `op` on keys starting with `prefix` fail, `times` times
/// (`u32::MAX`: until cleared).
#[derive(Debug, Clone)]
struct Fault {
    op: Op,
    prefix: String,
    times: u32,
}

/// A local backend with injectable I/O errors, and a log of the keys it failed.
struct FaultyBackend {
    inner: LocalBackend,
    faults: Mutex<Vec<Fault>>,
    failed: Mutex<Vec<String>>,
}

impl FaultyBackend {
    fn new(root: &Path) -> Arc<FaultyBackend> {
        Arc::new(FaultyBackend {
            inner: LocalBackend::open(root, true).unwrap(),
            faults: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
        })
    }
    fn fail(&self, op: Op, prefix: &str, times: u32) {
        self.faults.lock().unwrap().push(Fault {
            op,
            prefix: prefix.to_string(),
            times,
        });
    }
    fn clear(&self) {
        self.faults.lock().unwrap().clear();
    }
    fn failed(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }
    fn check(&self, op: Op, key: &str) -> Result<()> {
        let mut faults = self.faults.lock().unwrap();
        if let Some(f) = faults
            .iter_mut()
            .find(|f| f.op == op && key.starts_with(&f.prefix) && f.times > 0)
        {
            if f.times != u32::MAX {
                f.times -= 1;
            }
            self.failed.lock().unwrap().push(key.to_string());
            return Err(Error::io(
                match op {
                    Op::Put => "write",
                    Op::Get => "read",
                    Op::PutState => "write state",
                },
                self.inner.root().join(key),
                std::io::Error::other("injected I/O error"),
            ));
        }
        Ok(())
    }
}

impl Backend for FaultyBackend {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.check(Op::Put, key)?;
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> Result<ObjectBytes> {
        self.check(Op::Get, key)?;
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }
    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key)
    }
    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.check(Op::PutState, key)?;
        self.inner.put_state(key, bytes)
    }
    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_state(key)
    }
}

fn writer(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch(
        "PRAGMA wal_autocheckpoint=10;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, pad BLOB);",
    )
    .unwrap();
    c
}

fn commit(w: &Connection, i: i64) {
    w.execute(
        "INSERT INTO t(id, v, pad) VALUES (?1, ?2, randomblob(?3))",
        rusqlite::params![i, format!("v{i}"), (i % 5) * 1500],
    )
    .unwrap();
}

/// Every row, every column, every byte.
fn dump(db: &Path) -> Vec<(i64, String, Vec<u8>)> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id, v, pad FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn integrity(db: &Path) -> String {
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn restore_latest(repo: &Repository, out: &Path) -> Result<()> {
    let catalog = repo.catalog()?;
    let point = catalog.latest_point().expect("a restore point");
    let chain = catalog.chain_to(&point)?;
    assert!(chain.gap.is_none(), "a gap in the chain: {:?}", chain.gap);
    rebuild(repo, &chain, &point, out).map(|_| ())
}

struct Setup {
    dir: tempfile::TempDir,
    w: Connection,
    faulty: Arc<FaultyBackend>,
    repo: Repository,
    cap: Capturer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let w = writer(&db);
    for i in 0..20 {
        commit(&w, i);
    }
    let faulty = FaultyBackend::new(&dir.path().join("repo"));
    let repo = Repository::new(faulty.clone());
    let mut opts = CaptureOptions::new(&db);
    opts.checkpoint_frames = 10_000;
    let mut cap = Capturer::open(opts, repo.clone()).unwrap();
    cap.step(false).unwrap();
    Setup {
        dir,
        w,
        faulty,
        repo,
        cap,
    }
}

/// One fault case: `prefix` of `op` fails `times` times during the step
/// after commits 20..40; the step must fail without advancing; the next one
/// (after 5 more commits) must ship all 25 and continue the generation.
fn a_failed_write_is_loud_and_the_retry_loses_nothing(op: Op, prefix: &str) {
    let mut s = setup();
    let db = s.dir.path().join("db.sqlite");
    let gen = s.cap.generation().to_string();
    let before = s.cap.last_txid();
    let max_before = s.repo.catalog().unwrap().max_txid();
    for i in 20..40 {
        commit(&s.w, i);
    }
    s.faulty.fail(op, prefix, u32::MAX);
    let r = s.cap.step(false);
    assert!(
        r.is_err(),
        "a step whose {op:?} of {prefix}* fails must return an error, got {r:?}"
    );
    assert!(
        !s.faulty.failed().is_empty(),
        "the injected fault never fired: the test did not test anything"
    );
    assert_eq!(
        s.cap.last_txid(),
        before,
        "a failed step advanced the position"
    );
    let catalog = s.repo.catalog().unwrap();
    assert_eq!(
        catalog.max_txid(),
        max_before,
        "a failed step published a restore point (manifest) anyway"
    );
    s.faulty.clear();
    // The retry with nothing new committed first: it must not trip over
    // what the failed attempt left (an object without a manifest).
    let r = s
        .cap
        .step(false)
        .unwrap_or_else(|e| panic!("the retry after a failed {op:?} of {prefix}* failed: {e}"));
    assert!(
        r.new_generation.is_none(),
        "the retry started a new generation: {r:?}"
    );
    for i in 40..45 {
        commit(&s.w, i);
    }
    let r2 = s.cap.step(false).unwrap();
    assert_eq!(
        r.txns + r2.txns,
        25,
        "every commit since the last good step is shipped"
    );
    assert_eq!(s.cap.generation(), gen);
    s.cap.finish().unwrap();
    let out = s.dir.path().join("latest.db");
    restore_latest(&s.repo, &out).unwrap();
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&db), "the restore is not the database");
}

#[test]
fn a_failing_segment_write_fails_the_step_and_the_retry_ships_everything() {
    a_failed_write_is_loud_and_the_retry_loses_nothing(Op::Put, "segments/");
}

#[test]
fn a_failing_manifest_write_fails_the_step_and_the_retry_ships_everything() {
    // The segment object is written, its manifest (the commit point) is not.
    a_failed_write_is_loud_and_the_retry_loses_nothing(Op::Put, "manifests/incr_");
}

#[test]
fn a_failing_state_write_is_an_error_and_nothing_shipped_is_lost() {
    let mut s = setup();
    let db = s.dir.path().join("db.sqlite");
    for i in 20..40 {
        commit(&s.w, i);
    }
    s.cap.step(false).unwrap();
    s.faulty.fail(Op::PutState, "", u32::MAX);
    assert!(
        s.cap.save_state().is_err(),
        "a failed state write must be an error"
    );
    assert!(
        s.cap.finish().is_err(),
        "finish must report its failed state write"
    );
    s.faulty.clear();
    // What was shipped is restorable; a new capturer carries on.
    let out = s.dir.path().join("latest.db");
    restore_latest(&s.repo, &out).unwrap();
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&db));
    let mut cap = Capturer::open(CaptureOptions::new(&db), s.repo.clone()).unwrap();
    for i in 40..45 {
        commit(&s.w, i);
    }
    cap.step(false).unwrap();
    cap.finish().unwrap();
    restore_latest(&s.repo, &out).unwrap();
    assert_eq!(dump(&out), dump(&db));
}

#[test]
fn a_failing_write_of_every_object_fails_the_step_and_the_retry_ships_everything() {
    a_failed_write_is_loud_and_the_retry_loses_nothing(Op::Put, "");
}

#[test]
fn a_failing_snapshot_write_at_open_is_an_error_and_a_reopen_captures_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let w = writer(&db);
    for i in 0..20 {
        commit(&w, i);
    }
    let faulty = FaultyBackend::new(&dir.path().join("repo"));
    let repo = Repository::new(faulty.clone());
    faulty.fail(Op::Put, "snapshots/", 1);
    let r = Capturer::open(CaptureOptions::new(&db), repo.clone());
    assert!(
        r.is_err(),
        "open must fail when its snapshot cannot be written"
    );
    assert_eq!(faulty.failed().len(), 1);
    drop(r);
    assert!(
        repo.catalog().unwrap().latest_point().is_none(),
        "a restore point was published without its snapshot"
    );
    let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).unwrap();
    for i in 20..30 {
        commit(&w, i);
    }
    cap.step(false).unwrap();
    cap.finish().unwrap();
    let out = dir.path().join("latest.db");
    restore_latest(&repo, &out).unwrap();
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&db));
}

#[test]
fn a_restore_whose_read_fails_names_the_object() {
    let mut s = setup();
    for i in 20..40 {
        commit(&s.w, i);
    }
    s.cap.step(false).unwrap();
    s.cap.finish().unwrap();
    let catalog = s.repo.catalog().unwrap();
    let point = catalog.latest_point().unwrap();
    let chain = catalog.chain_to(&point).unwrap();
    let seg = chain.segments.last().expect("a segment").id.clone();
    let snap = chain.snapshot.id.clone();
    for (prefix, id) in [("segments/", &seg), ("snapshots/", &snap)] {
        s.faulty.clear();
        s.faulty.fail(Op::Get, prefix, u32::MAX);
        let out = s.dir.path().join("r.db");
        let e = rebuild(&s.repo, &chain, &point, &out)
            .err()
            .unwrap_or_else(|| panic!("a restore whose read of {prefix}* fails succeeded"));
        assert!(
            e.to_string().contains(id.as_str()),
            "the error of a failed read does not name the object {id}: {e}"
        );
    }
    s.faulty.clear();
    let out = s.dir.path().join("ok.db");
    rebuild(&s.repo, &chain, &point, &out).unwrap();
    assert_eq!(integrity(&out), "ok");
}

/// The event archive: a failing write of an event object fails the step, and
/// the retry archives every event, with no gap in the sequence numbers.
#[test]
fn a_failing_event_archive_write_fails_the_step_and_the_retry_archives_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let w = writer(&db);
    w.execute_batch(
        "CREATE TABLE events (event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL,
           aggregate_id TEXT NOT NULL, event_data TEXT NOT NULL,
           sequence_number INTEGER NOT NULL, created_at TEXT NOT NULL);",
    )
    .unwrap();
    let event = |seq: i64| {
        w.execute(
            "INSERT INTO events VALUES (?1, 'HEARTBEAT', 'sys', '{}', ?2, ?3)",
            rusqlite::params![
                format!("e{seq}"),
                seq,
                format!(
                    "2026-01-01T00:00:{:02}.{:06}Z",
                    seq / 1_000_000 % 60,
                    seq % 1_000_000
                )
            ],
        )
        .unwrap();
    };
    for s in 1..=10 {
        event(s);
    }
    let faulty = FaultyBackend::new(&dir.path().join("repo"));
    let repo = Repository::new(faulty.clone());
    let mut cap = Capturer::open(CaptureOptions::new(&db), repo.clone()).unwrap();
    cap.step(false).unwrap();
    for s in 11..=30 {
        event(s);
    }
    faulty.fail(Op::Put, "events/", u32::MAX);
    assert!(
        cap.step(false).is_err(),
        "a step whose event archive write fails must fail"
    );
    assert!(
        !faulty.failed().is_empty(),
        "the injected fault never fired"
    );
    faulty.clear();
    for s in 31..=35 {
        event(s);
    }
    cap.step(false).unwrap();
    cap.finish().unwrap();
    let catalog = repo.catalog().unwrap();
    let mut ranges: Vec<(i64, i64)> = catalog
        .manifests()
        .filter(|m| m.kind == genesis_core::repo::ObjectKind::Events)
        .map(|m| (m.seq_min.unwrap(), m.seq_max.unwrap()))
        .collect();
    ranges.sort();
    // Events up to the opening snapshot's are in the snapshot itself.
    let base = catalog.generations[0].snapshots[0].seq_max.unwrap_or(0);
    assert_eq!(base, 10, "the opening snapshot holds events 1..=10");
    let mut next = base + 1;
    for (a, b) in &ranges {
        assert_eq!(
            *a, next,
            "the event archive has a gap or an overlap: {ranges:?}"
        );
        next = b + 1;
    }
    assert_eq!(next, 36, "events are missing from the archive: {ranges:?}");
}
