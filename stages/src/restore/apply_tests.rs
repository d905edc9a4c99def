//! The apply with an error injected before each of its steps: before the
//! rename the live path keeps the old database as it was (with its -wal and
//! -shm), and nothing of the restore is left; after it, the restored database
//! stays and the old one is kept under its second name. The -wal and -shm are
//! moved aside only when their checkpoint failed (a damaged database, an I/O
//! error): that failure is injected too.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use genesis_core::lock::sibling;
use rusqlite::{Connection, OpenFlags};

use super::{apply, Step, FAIL_BEFORE};

const BEFORE_THE_RENAME: [Step; 5] = [
    Step::Link,
    Step::MoveAside(0),
    Step::MoveAside(1),
    Step::SyncAside,
    Step::Rename,
];

/// The live database of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Its newest commits in its WAL.
    Healthy,
    /// Not a database, nor its WAL a WAL file.
    Damaged,
}

struct Case {
    _dir: tempfile::TempDir,
    live: PathBuf,
    staged: PathBuf,
    staging: PathBuf,
}

/// Rows committed to the live database's file, and then to its WAL only.
const IN_FILE: i64 = 50;
const IN_WAL: i64 = 30;
/// Rows of the staged (restored) database.
const STAGED: i64 = 7;

fn insert(c: &Connection, from: i64, n: i64) {
    for i in from..from + n {
        c.execute("INSERT INTO t VALUES (?1, randomblob(300))", [i])
            .unwrap();
    }
}

/// A live database whose newest commits are in its WAL only, as a crashed
/// application leaves it (the files copied while the writer has them open).
fn case(kind: Live) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let writer_dir = dir.path().join("writer");
    let data = dir.path().join("data");
    let staging = dir.path().join("staging");
    for d in [&writer_dir, &data, &staging] {
        fs::create_dir(d).unwrap();
    }
    let w = writer_dir.join("w.db");
    let c = Connection::open(&w).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(x INTEGER PRIMARY KEY, b BLOB);",
    )
    .unwrap();
    insert(&c, 0, IN_FILE);
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    insert(&c, IN_FILE, IN_WAL);
    let live = data.join("live.db");
    for suffix in ["", "-wal", "-shm"] {
        fs::copy(sibling(&w, suffix), sibling(&live, suffix)).unwrap();
    }
    drop(c);
    if kind == Live::Damaged {
        // Not a database at all, its WAL header too (SQLite would otherwise
        // read page 1 from the WAL and mend the file by the checkpoint).
        for suffix in ["", "-wal"] {
            let mut bytes = fs::read(sibling(&live, suffix)).unwrap();
            bytes[..32].copy_from_slice(b"not a database, nor a WAL file!\0");
            fs::write(sibling(&live, suffix), bytes).unwrap();
        }
    }
    let staged = staging.join("restore-9-1.db");
    let c = Connection::open(&staged).unwrap();
    c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY, b BLOB);")
        .unwrap();
    insert(&c, 0, STAGED);
    drop(c);
    Case {
        _dir: dir,
        live,
        staged,
        staging,
    }
}

/// Every file of a folder with its bytes.
fn files(dir: &Path) -> Files {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect::<BTreeMap<_, _>>()
        .into()
}

/// A folder's files; shown by name and length only.
#[derive(PartialEq, Eq)]
struct Files(BTreeMap<String, Vec<u8>>);

impl From<BTreeMap<String, Vec<u8>>> for Files {
    fn from(m: BTreeMap<String, Vec<u8>>) -> Self {
        Self(m)
    }
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

impl Files {
    fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn rows(path: &Path) -> i64 {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{}", path.display());
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn apply_failing_before(c: &Case, steps: &[Step]) -> genesis_core::Result<Option<PathBuf>> {
    FAIL_BEFORE.with(|f| *f.borrow_mut() = steps.to_vec());
    let r = apply(&c.staged, &c.live);
    FAIL_BEFORE.with(|f| f.borrow_mut().clear());
    r
}

#[test]
fn an_error_before_the_rename_puts_the_wal_and_shm_moved_aside_back() {
    for step in BEFORE_THE_RENAME {
        let c = case(Live::Healthy);
        let data = c.live.parent().unwrap().to_path_buf();
        let before = files(&data);
        assert_eq!(
            before.0.len(),
            3,
            "the premise: a file with its -wal and -shm"
        );
        let e = apply_failing_before(&c, &[Step::Fold, step])
            .unwrap_err()
            .to_string();
        assert!(e.contains("injected"), "{step:?}: {e}");
        let after = files(&data);
        assert!(after == before, "{step:?}: {before:?} then {after:?}");
        assert_eq!(rows(&c.live), IN_FILE + IN_WAL, "{step:?}");
        assert!(
            files(&c.staging).0.is_empty(),
            "{step:?}: the staged file is left"
        );
    }
}

#[test]
fn an_error_before_the_rename_leaves_the_healthy_live_database_with_every_commit() {
    // No -wal is left to move once the checkpoint folded it.
    for step in [
        Step::Link,
        Step::MoveAside(1),
        Step::SyncAside,
        Step::Rename,
    ] {
        let c = case(Live::Healthy);
        let data = c.live.parent().unwrap().to_path_buf();
        let e = apply_failing_before(&c, &[step]).unwrap_err().to_string();
        assert!(e.contains("injected"), "{step:?}: {e}");
        // Its WAL was checkpointed into the file: the file alone is whole
        // (SQLite leaves the -shm).
        let after = files(&data);
        assert!(
            [vec!["live.db"], vec!["live.db", "live.db-shm"]].contains(&after.names()),
            "{step:?}: {after:?}"
        );
        assert_eq!(rows(&c.live), IN_FILE + IN_WAL, "{step:?}");
        assert!(files(&c.staging).0.is_empty(), "{step:?}");
    }
}

#[test]
fn an_error_after_the_rename_keeps_the_restored_database_and_the_old_one() {
    let c = case(Live::Healthy);
    let data = c.live.parent().unwrap().to_path_buf();
    let before = files(&data);
    let e = apply_failing_before(&c, &[Step::Fold, Step::SyncRenamed])
        .unwrap_err()
        .to_string();
    assert!(e.contains("is in place at"), "{e}");
    assert_eq!(rows(&c.live), STAGED);
    // The old database, its -wal and -shm, whole under the second name.
    let after = files(&data);
    let backup: Vec<&String> = after
        .0
        .keys()
        .filter(|n| {
            n.starts_with("live.db.pre-recovery-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(backup.len(), 1, "{after:?}");
    assert!(
        e.contains(backup[0].as_str()),
        "the error names the backup: {e}"
    );
    for suffix in ["", "-wal", "-shm"] {
        assert!(
            after.0.get(&format!("{}{suffix}", backup[0]))
                == before.0.get(&format!("live.db{suffix}")),
            "the old database's {suffix:?}: {before:?} then {after:?}"
        );
    }
    assert_eq!(after.0.len(), 4, "{after:?}");
    assert_eq!(rows(&data.join(backup[0])), IN_FILE + IN_WAL);
}

#[test]
fn a_whole_apply_keeps_the_old_database_with_every_commit_beside_the_new() {
    for fold_fails in [false, true] {
        let c = case(Live::Healthy);
        let steps: &[Step] = if fold_fails { &[Step::Fold] } else { &[] };
        let backup = apply_failing_before(&c, steps).unwrap().unwrap();
        assert_eq!(rows(&c.live), STAGED, "{fold_fails}");
        assert!(!sibling(&c.live, "-wal").exists(), "{fold_fails}");
        assert_eq!(sibling(&backup, "-wal").exists(), fold_fails);
        assert_eq!(rows(&backup), IN_FILE + IN_WAL, "{fold_fails}");
    }
}

#[test]
fn a_live_file_that_is_not_a_database_is_kept_whole_beside_the_restored_one() {
    let c = case(Live::Damaged);
    let old = fs::read(&c.live).unwrap();
    let backup = apply_failing_before(&c, &[]).unwrap().unwrap();
    assert_eq!(rows(&c.live), STAGED);
    assert!(
        fs::read(&backup).unwrap() == old,
        "the damaged file changed"
    );
}

#[test]
fn an_error_at_the_rename_without_a_live_database_leaves_nothing() {
    let c = case(Live::Healthy);
    let data = c.live.parent().unwrap().to_path_buf();
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(sibling(&c.live, suffix));
    }
    let e = apply_failing_before(&c, &[Step::Rename])
        .unwrap_err()
        .to_string();
    assert!(e.contains("injected"), "{e}");
    assert!(files(&data).0.is_empty(), "{:?}", files(&data));
    assert!(files(&c.staging).0.is_empty());
}

#[test]
fn a_move_across_filesystems_copies_then_removes_the_source() {
    use std::os::unix::fs::MetadataExt;
    let shm = Path::new("/dev/shm");
    let here = tempfile::tempdir().unwrap();
    let same_device =
        fs::metadata(shm).map(|m| m.dev()).ok() == Some(fs::metadata(here.path()).unwrap().dev());
    if !shm.is_dir() || same_device {
        eprintln!("skipped: no /dev/shm on another filesystem than the temporary folder");
        return;
    }
    let there = tempfile::tempdir_in(shm).unwrap();
    let from = there.path().join("staged.db");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&from, &bytes).unwrap();
    let to = here.path().join("out.db");
    super::move_file(&from, &to).unwrap();
    assert!(fs::read(&to).unwrap() == bytes, "the copy differs");
    assert!(!from.exists(), "the source is left");
    let names: Vec<String> = fs::read_dir(here.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out.db"], "a temporary copy is left");
}
