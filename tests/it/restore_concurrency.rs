//! Only one restore per live database: a second restore while one runs exits
//! at once (exit code 1) with a message naming the first, and changes
//! nothing; the first one finishes undisturbed.

use std::time::{Duration, Instant};

use genesis_core::lock::LockFile;
use genesis_stages::restore::restore_lock_path;

use crate::common::{file_hash, kv_hash_ro, stderr_text, two_state_kv_repo, Env};

#[test]
fn a_second_restore_is_refused_naming_the_lock_holder() {
    let env = Env::new();
    let s = two_state_kv_repo(&env, 200, 500);
    let lock = restore_lock_path(&env.db());
    assert!(
        lock.to_string_lossy()
            .ends_with("genesis.db-genesis-restore.lock"),
        "{}",
        lock.display()
    );
    let purpose = format!("restore of {}", env.db().display());
    let held = LockFile::try_acquire(&lock, &purpose).expect("take the restore lock");
    let before = file_hash(&env.db());
    let staging = env.path().join("staging");
    for extra in [&[][..], &["--dry-run"][..]] {
        let t0 = Instant::now();
        let mut args = vec![
            "restore",
            "--no-validate",
            "--staging-dir",
            staging.to_str().unwrap(),
            "--backup-id",
            &s.a_id,
        ];
        args.extend_from_slice(extra);
        let o = env.run(&args);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the second restore waited {:?} instead of failing at once",
            t0.elapsed()
        );
        assert!(
            e.contains("restore") && e.contains(&format!("pid {}", std::process::id())),
            "the message does not name the running restore: {e}"
        );
        assert_eq!(file_hash(&env.db()), before, "the live database changed");
        assert!(
            !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
            "the refused restore wrote into the staging directory"
        );
    }
    drop(held);
    // Once the lock is free, the same restore runs.
    let o = env.run(&["restore", "--no-validate", "--backup-id", &s.a_id]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    assert_eq!(kv_hash_ro(&env.db()), s.a);
}

#[test]
fn a_restore_started_while_another_runs_fails_at_once_naming_it() {
    let env = Env::new();
    // ~50 MB: the first restore runs long enough to be caught holding the lock.
    let s = two_state_kv_repo(&env, 6_000, 8_000);
    let lock = restore_lock_path(&env.db());
    let mut caught = false;
    for attempt in 0..5 {
        let first = env.spawn(&["restore", "--no-validate", "--backup-id", &s.a_id]);
        let pid = first.id();
        let t0 = Instant::now();
        let mut holding = false;
        while t0.elapsed() < Duration::from_secs(10) {
            if LockFile::holder(&lock).is_some_and(|h| h.pid == pid) {
                holding = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let second = holding.then(|| {
            let t = Instant::now();
            let o = env.run(&["restore", "--no-validate", "--backup-id", &s.b_id]);
            (o, t.elapsed())
        });
        // Was the first still running when the second gave up?
        let still_held = LockFile::holder(&lock).is_some_and(|h| h.pid == pid);
        let out = first.wait_with_output().expect("first restore");
        assert!(
            out.status.success(),
            "the first restore failed: {}",
            stderr_text(&out)
        );
        let Some((o, took)) = second else {
            eprintln!("attempt {attempt}: the first restore finished before it was seen");
            continue;
        };
        if !still_held && o.status.success() {
            eprintln!("attempt {attempt}: the first restore finished before the second started");
            continue;
        }
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            took < Duration::from_secs(5),
            "the second restore took {took:?}"
        );
        assert!(
            e.contains("restore") && e.contains(&format!("pid {pid}")),
            "the message does not name the first restore (pid {pid}): {e}"
        );
        // The first one's result stands.
        assert_eq!(kv_hash_ro(&env.db()), s.a);
        caught = true;
        break;
    }
    assert!(caught, "never caught a restore holding its lock");
}
