//! Bad input gets a clear error and changes nothing.

use crate::common::Env;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn a_missing_database_is_named_and_nothing_is_created() {
    let env = Env::new();
    let o = env.run(&["backup", "full"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(
        !env.repo().exists(),
        "a repository was created for a missing database"
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_refused() {
    let env = Env::new();
    std::fs::write(env.db(), b"this is not a database at all, just text that is long enough to have a header of 100 bytes......").unwrap();
    let o = env.run(&["backup", "sync"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a SQLite database"),
        "{}",
        stderr(&o)
    );
    assert!(!env.repo().exists());
}

#[test]
fn a_rollback_journal_database_is_refused_unless_asked() {
    let env = Env::new();
    {
        let c = rusqlite::Connection::open(env.db()).unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(env.db()).unwrap();
    let o = env.run(&["backup", "full"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("rollback-journal")
            && e.contains("journal_mode=WAL")
            && e.contains("--enable-wal"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(env.db()).unwrap(),
        before,
        "the database was changed"
    );
    let o = env.run(&["backup", "full", "--enable-wal"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_unwritable_repository_is_refused() {
    let env = Env::new();
    assert!(env
        .run(&["simulate", "--rate", "0", "--max-commits", "20"])
        .status
        .success());
    let repo = env.repo();
    std::fs::create_dir_all(&repo).unwrap();
    // A file where the repository directory should be cannot be written as one.
    let bad = env.path().join("not-a-dir");
    std::fs::write(&bad, b"x").unwrap();
    let o = env
        .cmd_with_repo(&bad)
        .args(["backup", "full"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    let nested = bad.join("sub");
    let o = env
        .cmd_with_repo(&nested)
        .args(["backup", "full"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot create the backup repository"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_second_capturer_is_refused_naming_the_first() {
    let env = Env::new();
    assert!(env
        .run(&["simulate", "--rate", "0", "--max-commits", "20"])
        .status
        .success());
    let mut first = env.spawn(&["backup", "replicate", "--interval", "100ms", "--for", "20s"]);
    // Wait until the first holds the lock.
    let lock = genesis_core::capture::capture_lock_path(&env.db());
    for _ in 0..100 {
        if genesis_core::lock::LockFile::holder(&lock).is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = env.run(&["backup", "sync"]);
    crate::common::signal(&first, "TERM");
    let _ = first.wait();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("capturer") && e.contains(&format!("pid {}", first.id())),
        "{e}"
    );
}

#[test]
fn object_ids_with_separators_or_dotdot_are_refused() {
    let env = Env::new();
    assert!(env
        .run(&["simulate", "--rate", "0", "--max-commits", "20"])
        .status
        .success());
    assert!(env.run(&["backup", "full"]).status.success());
    for bad in ["../etc/passwd", "a/b", "..", "/abs"] {
        let o = env.run(&["verify-backups", "--backup-id", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not a valid backup id"),
            "{}",
            stderr(&o)
        );
    }
}
