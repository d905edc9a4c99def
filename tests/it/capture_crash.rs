//! Crashes: the capturer is killed with SIGKILL at random moments and
//! restarted while the writer keeps committing. At the end every restore
//! point rebuilds to a state the writer had, txids map to consecutive commits
//! within each generation (nothing skipped silently), every generation starts
//! with a snapshot, and the newest point is the writer's final state.

use std::time::Duration;

use crate::common::{integrity, kv_hash, read_record, rebuild_at, signal, soak, Env, Store};

#[test]
fn killed_capturer_never_leaves_a_silently_broken_chain() {
    killed_capturer(Store::Local, if soak() { 100 } else { 20 });
}

/// The same against the S3 server (fewer kills by default: each restart
/// of the capturer there costs a snapshot upload).
#[test]
fn killed_capturer_never_leaves_a_silently_broken_chain_on_s3() {
    killed_capturer(Store::S3, if soak() { 100 } else { 8 });
}

fn killed_capturer(store: Store, kills: u64) {
    let env = Env::on(store);
    let record = env.path().join("record.txt");
    let mut w = env.hostile_writer(&record, 1, 3, 0, 0);
    assert!(w.wait().expect("writer").success());
    let commits: u64 = if soak() { 40_000 } else { 4_000 };
    let mut writer = env.hostile_writer(&record, commits, 4, 50, 5);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..kills {
        let rep = env.spawn(&[
            "backup",
            "replicate",
            "--interval",
            "20ms",
            "--checkpoint-frames",
            "100",
        ]);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 400));
        signal(&rep, "KILL");
        let _ = rep.wait_with_output();
    }
    assert!(writer.wait().expect("writer").success());
    let out = env.run(&["backup", "sync"]);
    assert!(
        out.status.success(),
        "final sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rec = read_record(&record);
    let repo = env.open_repo();
    let catalog = repo.catalog().unwrap();
    assert!(
        catalog.bad.is_empty(),
        "unreadable manifests: {:?}",
        catalog.bad
    );
    for g in &catalog.generations {
        let (start, _) = g.span().unwrap();
        assert!(
            g.snapshots.iter().any(|s| s.txid_max == start.txid),
            "generation {} does not begin with a snapshot",
            g.id
        );
        let pts = g.restore_points();
        let sample: Vec<u64> = pts
            .iter()
            .map(|p| p.txid)
            .step_by((pts.len() / 8).max(1))
            .chain(pts.last().map(|p| p.txid))
            .collect();
        let mut offset = None;
        for txid in sample {
            let out = env.path().join("r.db");
            rebuild_at(&env.repo(), txid, &out);
            assert_eq!(
                integrity(&out),
                "ok",
                "txid {txid} rebuilt to a damaged database"
            );
            let (n, hash) = kv_hash(&out);
            assert_eq!(
                rec.get(&n),
                Some(&hash),
                "generation {} txid {txid}: state of commit {n} never existed",
                g.id
            );
            let o = n as i64 - txid as i64;
            assert_eq!(
                *offset.get_or_insert(o),
                o,
                "generation {} txid {txid}: commits skipped silently",
                g.id
            );
        }
    }
    let last = catalog.latest_point().unwrap();
    let out = env.path().join("final.db");
    rebuild_at(&env.repo(), last.txid, &out);
    assert_eq!(
        integrity(&out),
        "ok",
        "the newest point rebuilt to a damaged database"
    );
    let (n, hash) = kv_hash(&out);
    assert_eq!(n, commits + 1, "the final commit is not restorable");
    assert_eq!(rec.get(&n), Some(&hash));
    let v = env.run(&["verify-backups"]);
    assert!(
        v.status.success(),
        "verify-backups after crashes: {}",
        String::from_utf8_lossy(&v.stdout)
    );
}
