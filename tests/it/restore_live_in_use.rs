//! A real restore folds the live WAL into the live file before moving it
//! aside (so a crash can only leave the old database or the new one), and
//! refuses while another process still uses the live database.

use crate::common::Env;

fn rows(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_restore_refuses_a_database_in_use_and_keeps_uncheckpointed_commits_in_the_copy() {
    let env = Env::new();
    assert!(env
        .run(&["simulate", "--rate", "0", "--max-commits", "200"])
        .status
        .success());
    assert!(env.run(&["backup", "full"]).status.success());
    // Commits that stay in the live WAL (an application keeps it open).
    let app = rusqlite::Connection::open(env.db()).unwrap();
    app.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    assert!(env
        .run(&[
            "simulate",
            "--rate",
            "0",
            "--max-commits",
            "50",
            "--seed",
            "4"
        ])
        .status
        .success());
    let live_rows = rows(&env.db());
    assert_eq!(live_rows, 250);
    // While the application holds a read transaction, the restore refuses.
    app.execute_batch("BEGIN").unwrap();
    app.query_row("SELECT count(*) FROM events", [], |_| Ok(()))
        .unwrap();
    let o = env.run(&["restore", "--latest"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        e.contains("in use") && e.contains("stop the application"),
        "{e}"
    );
    assert_eq!(rows(&env.db()), live_rows, "the live database changed");
    app.execute_batch("COMMIT").unwrap();
    drop(app);
    // Stopped: the restore applies, and the pre-recovery copy holds every live commit.
    let (code, v) = env.json(&["restore", "--backup-id", &first_snapshot(&env)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(rows(&env.db()), 200);
    let pre = std::path::PathBuf::from(v["pre_recovery_backup"].as_str().unwrap());
    let pre = if pre.is_absolute() {
        pre
    } else {
        env.path().join(pre)
    };
    assert_eq!(
        rows(&pre),
        live_rows,
        "the pre-recovery copy lost the commits its WAL held"
    );
}

fn first_snapshot(env: &Env) -> String {
    let (_, v) = env.json(&["list-backups"]);
    v.as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|b| b["backup_type"] == "full")
        .unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string()
}
