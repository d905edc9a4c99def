//! Crashes of a real restore: `restore` (not a dry run) is killed with
//! SIGKILL at random moments, alternating between two targets so that the
//! restored content always differs from the live one. After every kill the
//! live path holds a whole database (`PRAGMA integrity_check` = ok, opened
//! read-only) whose content is exactly the old state or the new one, never
//! anything else; the next restore then removes what the killed one left in
//! the staging directory and beside the live database, and succeeds.

use std::time::{Duration, Instant};

use crate::common::{
    files_starting, integrity, kv_hash_ro, signal, soak, test_seed, two_state_kv_repo, Env, Rng,
};

#[test]
fn a_killed_restore_leaves_the_old_or_the_new_database_never_a_partial_one() {
    let env = Env::new();
    let kills = if soak() { 100 } else { 20 };
    let mut rng = Rng(test_seed("restore_crash"));
    // ~50 MB of incompressible rows: a restore takes a noticeable while.
    let s = two_state_kv_repo(&env, 6_000, 8_000);
    let staging = env.path().join("staging");
    let staging_s = staging.to_str().unwrap().to_string();
    let data_dir = env.db().parent().unwrap().to_path_buf();
    let db_name = env.db().file_name().unwrap().to_string_lossy().to_string();
    let restore_args = |id: &str| -> Vec<String> {
        [
            "restore",
            "--no-validate",
            "--staging-dir",
            &staging_s,
            "--backup-id",
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let state_name = |h: &(u64, String)| {
        if *h == s.a {
            "A"
        } else if *h == s.b {
            "B"
        } else {
            "neither"
        }
    };

    // How long a whole restore takes here, to spread the kills over it.
    let t0 = Instant::now();
    let args = restore_args(&s.a_id);
    let (code, v) = env.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{v}");
    let mut full = t0.elapsed();
    assert_eq!(kv_hash_ro(&env.db()), s.a);
    eprintln!("a whole restore takes {full:?}");
    let mut live = s.a.clone();

    let mut killed_mid_run = 0;
    let mut saw_old = 0;
    let mut saw_new = 0;
    let mut left_something = 0;
    for i in 0..kills {
        // Alternate: restore the state the live database is not in.
        let (id, new) = if live == s.a {
            (&s.b_id, s.b.clone())
        } else {
            (&s.a_id, s.a.clone())
        };
        let old = live.clone();
        let args = restore_args(id);
        let child = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let delay = Duration::from_secs_f64(full.as_secs_f64() * 1.2 * rng.unit());
        std::thread::sleep(delay);
        signal(&child, "KILL");
        let out = child.wait_with_output().expect("killed restore");
        if out.status.code().is_none() {
            killed_mid_run += 1;
        }

        // The live path holds a whole database: the old state or the new one.
        let ic = integrity(&env.db());
        assert_eq!(
            ic, "ok",
            "kill {i} after {delay:?}: the live database is damaged"
        );
        let got = kv_hash_ro(&env.db());
        assert!(
            got == old || got == new,
            "kill {i} after {delay:?}: the live database holds state {} (commit {}), neither the old ({}) nor the new ({})",
            state_name(&got),
            got.0,
            state_name(&old),
            state_name(&new)
        );
        if got == old {
            saw_old += 1;
        } else {
            saw_new += 1;
        }
        live = got;
        let leftovers = files_starting(&staging, "restore-").len()
            + files_starting(&data_dir, &format!("{db_name}.genesis-restore-")).len();
        if leftovers > 0 {
            left_something += 1;
        }

        // The next run cleans up and succeeds.
        let (id, new) = if live == s.a {
            (&s.b_id, s.b.clone())
        } else {
            (&s.a_id, s.a.clone())
        };
        let args = restore_args(id);
        let t0 = Instant::now();
        let (code, v) = env.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
        // Spread the next kill over the time a whole restore takes now.
        full = t0.elapsed();
        assert_eq!(code, 0, "the restore after kill {i}: {v}");
        assert_eq!(v["applied"], true, "{v}");
        let left = files_starting(&staging, "restore-");
        assert!(
            left.is_empty(),
            "after kill {i}, a successful restore left in the staging directory: {left:?}"
        );
        let left = files_starting(&data_dir, &format!("{db_name}.genesis-restore-"));
        assert!(
            left.is_empty(),
            "after kill {i}, a successful restore left beside the live database: {left:?}"
        );
        assert_eq!(integrity(&env.db()), "ok");
        assert_eq!(
            kv_hash_ro(&env.db()),
            new,
            "the restore after kill {i} did not restore its target"
        );
        // The pre-recovery backup holds the state the live database had.
        let pre = v["pre_recovery_backup"]
            .as_str()
            .map(|p| env.path().join(p))
            .expect("pre_recovery_backup");
        assert_eq!(
            kv_hash_ro(&pre),
            live,
            "the pre-recovery backup {} is not the database that was live",
            pre.display()
        );
        live = new;
        // Pre-recovery backups are whole copies: remove them to keep the
        // temporary directory small.
        for p in files_starting(&data_dir, &format!("{db_name}.pre-recovery-")) {
            std::fs::remove_file(p).unwrap();
        }
    }
    eprintln!(
        "{kills} kills: {killed_mid_run} mid-run, old state {saw_old}, new state {saw_new}, leftovers after {left_something}"
    );
    assert!(
        killed_mid_run >= kills / 3,
        "only {killed_mid_run} of {kills} kills hit a running restore; the restores are too fast for this test"
    );
}
