//! Restore refuses bad input with a clear error and loses nothing: targets
//! outside what the repository holds name what it holds; a damaged object
//! under `--strict` stops the restore before anything is applied, naming the object; a backup
//! id that is a path is refused; a dry run leaves the live database alone and
//! hands back a valid database; a real restore keeps the live database as the
//! pre-recovery backup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use genesis_core::time::format_exact;

use crate::common::{file_hash, files_starting, integrity, signal, state_hash, stderr_text, Env};

/// The bytes of the live database and its side files.
fn live_bytes(db: &Path) -> Vec<Option<String>> {
    ["", "-wal"]
        .iter()
        .map(|s| {
            let mut p = db.as_os_str().to_owned();
            p.push(s);
            file_hash(Path::new(&p))
        })
        .collect()
}

/// Nothing beside the live database says a restore touched it.
fn assert_untouched(env: &Env, before: &[Option<String>], what: &str) {
    assert_eq!(
        live_bytes(&env.db()),
        before,
        "{what}: the live database changed"
    );
    let dir = env.db().parent().unwrap().to_path_buf();
    let pre = files_starting(&dir, "genesis.db.pre-recovery-");
    assert!(
        pre.is_empty(),
        "{what}: a pre-recovery backup was made: {pre:?}"
    );
    let tmp = files_starting(&dir, "genesis.db.genesis-restore-");
    assert!(tmp.is_empty(), "{what}: left {tmp:?}");
}

/// A trading database with one full backup.
fn trading_env(commits: u32) -> Env {
    let env = Env::new();
    let o = env.run(&[
        "simulate",
        "--rate",
        "0",
        "--max-commits",
        &commits.to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let o = env.run(&["backup", "full"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    env
}

fn catalog(env: &Env) -> genesis_core::repo::Catalog {
    genesis_core::repo::Repository::open_path(&env.repo(), false)
        .unwrap()
        .catalog()
        .unwrap()
}

#[test]
fn targets_outside_the_repository_name_what_it_holds() {
    let env = trading_env(100);
    let points = catalog(&env).restore_points();
    let (first, last) = (points.first().unwrap(), points.last().unwrap());
    let before = live_bytes(&env.db());

    // Before the first backup, down to the nanosecond.
    let just_before = (first.time - chrono::Duration::nanoseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    for t in ["2020-01-01T00:00:00", just_before.as_str()] {
        let o = env.run(&["restore", "--timestamp", t]);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}: {e}");
        assert!(
            e.contains("before the first backup")
                && e.contains(&format_exact(first.time))
                && e.contains(&format_exact(last.time)),
            "{t}: the error does not name the range that exists: {e}"
        );
        assert_untouched(&env, &before, t);
    }
    // In the future: names the latest restore point.
    for t in ["2099-01-01T00:00:00", "2099-01-01T00:00:00+02:00"] {
        let o = env.run(&["restore", "--timestamp", t]);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}: {e}");
        assert!(
            e.contains("future")
                && e.contains(&format!("txid {}", last.txid))
                && e.contains(&format_exact(last.time)),
            "{t}: the error does not name the latest restore point: {e}"
        );
        assert_untouched(&env, &before, t);
    }
    // A txid that is not a restore point names the range.
    let o = env.run(&["restore", "--txid", "999999"]);
    let e = stderr_text(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("999999") && e.contains(&format!("{}", last.txid)),
        "{e}"
    );
    // An unreadable timestamp.
    let o = env.run(&["restore", "--timestamp", "yesterday"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_text(&o));
    assert!(stderr_text(&o).contains("yesterday"));
    assert_untouched(&env, &before, "bad targets");
}

#[test]
fn a_backup_id_that_is_a_path_is_refused() {
    let env = trading_env(20);
    let before = live_bytes(&env.db());
    for bad in ["../x", "a/b", "..", "/abs", "../../etc/passwd"] {
        let o = env.run(&["restore", "--backup-id", bad]);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(2), "{bad}: {e}");
        assert!(e.contains("not a valid backup id"), "{bad}: {e}");
        assert!(!env.path().join("x").exists());
    }
    // A well-formed id that does not exist names list-backups.
    let o = env.run(&["restore", "--backup-id", "full_nothing"]);
    let e = stderr_text(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("full_nothing") && e.contains("list-backups"),
        "{e}"
    );
    assert_untouched(&env, &before, "bad backup ids");
}

#[test]
fn a_damaged_segment_under_strict_stops_the_restore_before_anything_is_applied() {
    let env = Env::new();
    let o = env.run(&["simulate", "--rate", "0", "--max-commits", "50"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let mut rep = env.spawn(&["backup", "replicate", "--interval", "100ms"]);
    let lock = genesis_core::capture::capture_lock_path(&env.db());
    for _ in 0..200 {
        if genesis_core::lock::LockFile::holder(&lock).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = env.run(&["simulate", "--rate", "300", "--max-commits", "300"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    std::thread::sleep(Duration::from_millis(400));
    signal(&rep, "TERM");
    assert!(rep.wait().unwrap().success());

    let mut segments: Vec<PathBuf> = std::fs::read_dir(env.repo().join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "only {segments:?}");
    // The newest segment: every restore to the latest point reads it.
    let victim = segments.last().unwrap().clone();
    let id = victim.file_stem().unwrap().to_string_lossy().to_string();
    let original = std::fs::read(&victim).unwrap();
    let before = live_bytes(&env.db());
    let live_state = state_hash(&env.db());
    let out = env.path().join("out.db");
    let staging = env.path().join("staging");
    let len = original.len();
    for (pos, what) in [
        (0, "first byte"),
        (len / 2, "middle byte"),
        (len - 1, "last byte"),
    ] {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x40;
        std::fs::write(&victim, &bytes).unwrap();
        for extra in [&[][..], &["--output", out.to_str().unwrap()][..]] {
            // Without --strict the damaged segment is a gap and the restore
            // falls back (restore_gaps.rs); --strict refuses.
            let mut args = vec![
                "restore",
                "--latest",
                "--strict",
                "--staging-dir",
                staging.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            let o = env.run(&args);
            let e = stderr_text(&o);
            assert_eq!(o.status.code(), Some(1), "{what} {extra:?}: {e}");
            assert!(
                e.contains(&id),
                "{what} {extra:?}: the error does not name the damaged object {id}: {e}"
            );
            assert!(!e.contains("panicked"), "{e}");
            assert_untouched(&env, &before, what);
            assert!(!out.exists(), "{what}: --output was written");
        }
    }
    // Repaired, the same restore goes through (and cleans the staging dir).
    std::fs::write(&victim, &original).unwrap();
    let (code, v) = env.json(&[
        "restore",
        "--latest",
        "--staging-dir",
        staging.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v}");
    assert!(files_starting(&staging, "restore-").is_empty());
    assert_eq!(state_hash(&env.db()), live_state);
}

#[test]
fn a_dry_run_leaves_the_live_database_alone_and_a_real_restore_keeps_it_aside() {
    let env = trading_env(150);
    let at_backup = state_hash(&env.db());
    let first_id = catalog(&env).generations[0].snapshots[0].id.clone();
    // The live database moves on after the backup.
    let o = env.run(&[
        "simulate",
        "--rate",
        "0",
        "--max-commits",
        "60",
        "--seed",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let live_state = state_hash(&env.db());
    assert_ne!(live_state, at_backup);
    let before = live_bytes(&env.db());

    let (code, v) = env.json(&["restore", "--backup-id", &first_id, "--dry-run"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["applied"], false);
    assert!(v["pre_recovery_backup"].is_null(), "{v}");
    assert_eq!(v["validation"]["is_consistent"], true, "{v}");
    assert_untouched(&env, &before, "dry run");
    let staged = env
        .path()
        .join(v["recovered_db_path"].as_str().expect("recovered_db_path"));
    assert_ne!(staged, env.db());
    assert_eq!(integrity(&staged), "ok", "{}", staged.display());
    assert_eq!(
        state_hash(&staged),
        at_backup,
        "the dry run's database is not the backed-up state"
    );

    // The real restore: the live database is kept as the pre-recovery backup.
    let (code, v) = env.json(&["restore", "--backup-id", &first_id]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["applied"], true, "{v}");
    assert_eq!(v["dry_run"], false);
    let pre = env.path().join(
        v["pre_recovery_backup"]
            .as_str()
            .unwrap_or_else(|| panic!("no pre_recovery_backup: {v}")),
    );
    assert!(pre.exists(), "{} does not exist", pre.display());
    assert_eq!(integrity(&pre), "ok");
    assert_eq!(
        state_hash(&pre),
        live_state,
        "the pre-recovery backup is not the database that was live"
    );
    assert_eq!(integrity(&env.db()), "ok");
    assert_eq!(
        state_hash(&env.db()),
        at_backup,
        "the restore did not apply"
    );
    assert_eq!(
        env.path().join(v["recovered_db_path"].as_str().unwrap()),
        env.db()
    );
}
