//! A restore onto a full disk: whether the staging directory or the live
//! database's filesystem runs out of space, the restore fails with an error
//! that names the file and the cause, the live database is the old one,
//! byte for byte, no partial file is left behind, and the same restore
//! succeeds once there is room.

use std::path::Path;

use crate::capture_issue11::Tmpfs;
use crate::common::{file_hash, integrity, Env};

/// A trading database of a few MiB with one full backup.
fn backed_up(env: &Env) {
    let o = env.run(&["simulate", "--rate", "0", "--max-commits", "4000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, v) = env.json(&["backup", "full"]);
    assert_eq!(code, 0, "{v}");
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // Lock files stay, as after every restore.
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_failed_cleanly(env: &Env, code: i32, v: &serde_json::Value, before: &Option<String>) {
    assert!(code != 0 && code != 5, "the restore did not fail: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("No space left") && message.contains("is full: free space there"),
        "the error does not say the disk is full and what to do: {v}"
    );
    assert_eq!(
        &file_hash(&env.db()),
        before,
        "the live database changed: {v}"
    );
    assert_eq!(integrity(&env.db()), "ok");
}

#[test]
fn a_full_staging_disk_fails_the_restore_and_leaves_nothing_behind() {
    let env = Env::new();
    backed_up(&env);
    let stage = env.path().join("stage");
    let Some(_fs) = Tmpfs::mount(&stage, "256k") else {
        return;
    };
    let before = file_hash(&env.db());
    let stage_arg = stage.to_str().expect("utf-8 path");
    let (code, v) = env.json(&["restore", "--latest", "--staging-dir", stage_arg]);
    assert_failed_cleanly(&env, code, &v, &before);
    assert_eq!(
        files_in(&stage),
        Vec::<String>::new(),
        "left in the staging directory: {v}"
    );
    let roomy = env.path().join("roomy");
    let (code, v) = env.json(&[
        "restore",
        "--latest",
        "--staging-dir",
        roomy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "with room, the same restore: {v}");
}

#[test]
fn a_full_live_disk_fails_the_restore_and_keeps_the_old_database() {
    let env = Env::new();
    let data = env.path().join("data");
    let Some(fs) = Tmpfs::mount(&data, "12m") else {
        return;
    };
    backed_up(&env);
    let filler = fs.fill();
    let listed = files_in(&data);
    let before = file_hash(&env.db());
    let stage = env.path().join("stage");
    let stage_arg = stage.to_str().expect("utf-8 path");
    let (code, v) = env.json(&["restore", "--latest", "--staging-dir", stage_arg]);
    assert_failed_cleanly(&env, code, &v, &before);
    assert_eq!(
        files_in(&data),
        listed,
        "files added or removed beside the live database: {v}"
    );
    assert_eq!(
        files_in(&stage),
        Vec::<String>::new(),
        "left in the staging directory: {v}"
    );
    std::fs::remove_file(filler).expect("free the space");
    let (code, v) = env.json(&["restore", "--latest", "--staging-dir", stage_arg]);
    assert_eq!(code, 0, "with room, the same restore: {v}");
    assert_eq!(integrity(&env.db()), "ok");
}
