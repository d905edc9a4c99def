//! No lost commit under a hostile writer: a separate Python process commits
//! with a 10-page autocheckpoint, explicit PASSIVE and TRUNCATE checkpoints
//! and a concurrent reader while `backup replicate` runs with a short
//! interval. Every captured txid in a dense sample rebuilds to exactly the
//! state the writer recorded after the matching commit.

use crate::common::{integrity, kv_hash, read_record, rebuild_at, signal, soak, Env};

#[test]
fn replicate_never_loses_a_commit_under_a_hostile_writer() {
    let env = Env::new();
    let commits: u64 = if soak() { 60_000 } else { 5_000 };
    let record = env.path().join("record.txt");
    // Create the database before the capturer starts.
    let mut w = env.hostile_writer(&record, 1, 7, 0, 0);
    assert!(w.wait().expect("writer").success());
    let mut rep = env.spawn(&[
        "backup",
        "replicate",
        "--interval",
        "50ms",
        "--checkpoint-frames",
        "200",
        "--compaction-levels",
        crate::capture_matrix::SHORT_LEVELS,
    ]);
    let mut w = env.hostile_writer(&record, commits, 8, 97, 3);
    let st = w.wait().expect("writer");
    assert!(
        st.success(),
        "writer failed: {:?}",
        w.stderr
            .take()
            .map(|s| std::io::read_to_string(s).unwrap_or_default())
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    signal(&rep, "TERM");
    let status = rep.wait().expect("replicate");
    let stderr = rep
        .stderr
        .take()
        .map(|s| std::io::read_to_string(s).unwrap_or_default())
        .unwrap_or_default();
    assert!(
        status.success(),
        "replicate exited with {status:?}: {stderr}"
    );

    let rec = read_record(&record);
    assert_eq!(rec.len() as u64, commits + 1);
    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).unwrap();
    let catalog = repo.catalog().unwrap();
    assert_eq!(
        catalog.generations.len(),
        1,
        "continuity was lost: {:?}",
        catalog
            .generations
            .iter()
            .map(|g| &g.id)
            .collect::<Vec<_>>()
    );
    let points = catalog.restore_points();
    let first = points.first().unwrap().txid;
    let last = points.last().unwrap().txid;
    // Every commit after the first snapshot is its own restore point.
    assert_eq!(points.len() as u64, last - first + 1);
    let samples: u64 = if soak() { 2_000 } else { 220 };
    let step = ((last - first) / samples).max(1);
    let mut sample: Vec<u64> = (first..=last).step_by(step as usize).collect();
    sample.push(last);
    sample.dedup();
    let mut checked = 0;
    let mut offset: Option<i64> = None;
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
            "txid {txid} rebuilt to commit {n} with a state the writer never had"
        );
        // txids and commits advance together: no commit skipped or invented.
        let o = n as i64 - txid as i64;
        assert_eq!(
            *offset.get_or_insert(o),
            o,
            "txid {txid} maps to commit {n}: a commit was lost or duplicated"
        );
        checked += 1;
    }
    assert!(
        checked >= 200.min(last - first + 1) as usize,
        "only {checked} txids checked"
    );
    // The newest restore point is the writer's final state.
    let out = env.path().join("final.db");
    rebuild_at(&env.repo(), last, &out);
    assert_eq!(
        integrity(&out),
        "ok",
        "the newest point rebuilt to a damaged database"
    );
    let (n, hash) = kv_hash(&out);
    assert_eq!(n, commits + 1);
    assert_eq!(rec.get(&n), Some(&hash));
}
