//! `backup full` while `replicate` runs: the running capturer takes the
//! snapshot, in its own generation, at an exact txid.

use std::time::Duration;

use crate::common::{signal, Env};

#[test]
fn backup_full_asks_the_running_capturer_for_the_snapshot() {
    let env = Env::new();
    assert!(env
        .run(&["simulate", "--rate", "0", "--max-commits", "200"])
        .status
        .success());
    let mut rep = env.spawn(&["backup", "replicate", "--interval", "200ms"]);
    let lock = genesis_core::capture::capture_lock_path(&env.db());
    for _ in 0..100 {
        if genesis_core::lock::LockFile::holder(&lock).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env
        .run(&[
            "simulate",
            "--rate",
            "0",
            "--max-commits",
            "50",
            "--seed",
            "3"
        ])
        .status
        .success());
    let (code, v) = env.json(&["backup", "full"]);
    signal(&rep, "TERM");
    assert!(rep.wait().unwrap().success());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["taken_by_running_capturer"], true, "{v}");
    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).unwrap();
    let catalog = repo.catalog().unwrap();
    assert_eq!(
        catalog.generations.len(),
        1,
        "the snapshot must continue the running generation"
    );
    let snaps = &catalog.generations[0].snapshots;
    assert_eq!(snaps.len(), 2, "the opening snapshot and the requested one");
    let id = v["backup_id"].as_str().unwrap();
    assert!(snaps.iter().any(|s| s.id == id));
    let (code, v) = env.json(&["verify-backups"]);
    assert_eq!(code, 0, "{v}");
    // The requested snapshot restores on its own.
    let out = env.path().join("snap.db");
    let (code, v) = env.json(&[
        "restore",
        "--backup-id",
        id,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["incremental_count"], 0, "{v}");
}

#[test]
fn replicate_takes_a_snapshot_every_snapshot_interval_within_its_generation() {
    let env = Env::new();
    assert!(env
        .run(&["simulate", "--rate", "0", "--max-commits", "100"])
        .status
        .success());
    let mut rep = env.spawn(&[
        "backup",
        "replicate",
        "--interval",
        "100ms",
        "--snapshot-interval",
        "1s",
        "--for",
        "4s",
    ]);
    let o = env.run(&[
        "simulate",
        "--rate",
        "100",
        "--duration",
        "3s",
        "--seed",
        "5",
    ]);
    assert!(o.status.success());
    assert!(rep.wait().unwrap().success());
    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).unwrap();
    let catalog = repo.catalog().unwrap();
    assert_eq!(catalog.generations.len(), 1);
    let snaps = &catalog.generations[0].snapshots;
    assert!(
        snaps.len() >= 3,
        "expected a snapshot per second of a 4 s run, got {}",
        snaps.len()
    );
    // Each later snapshot agrees with the segment chain at its txid.
    let (code, v) = env.json(&["verify-backups"]);
    assert_eq!(code, 0, "{v}");
    // A restore to the newest point starts from the newest snapshot at or before it.
    let out = env.path().join("latest.db");
    let (code, v) = env.json(&["restore", "--latest", "--output", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    let newest = snaps.iter().map(|s| s.txid_max).max().unwrap();
    assert!(
        v["full_backup_used"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{newest:012}")),
        "{v}"
    );
}
