//! Damage is found: a flipped bit in each kind of object, a truncated object,
//! a segment deleted from the middle of a chain, and a manifest whose checksum
//! does not match; `verify-backups` exits 1 and names each one.

use std::path::Path;

use crate::common::Env;

fn prepared() -> Env {
    let env = Env::new();
    let out = env.run(&[
        "simulate",
        "--rate",
        "0",
        "--duration",
        "30s",
        "--max-commits",
        "300",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An application connection stays open, as a trading system's does, so
    // the WAL is not checkpointed away between the simulate runs.
    let app = rusqlite::Connection::open(env.db()).unwrap();
    app.query_row("SELECT count(*) FROM events", [], |_| Ok(()))
        .unwrap();
    assert!(env.run(&["backup", "full"]).status.success());
    for i in 0..4 {
        let out = env.run(&[
            "simulate",
            "--rate",
            "0",
            "--duration",
            "30s",
            "--max-commits",
            "50",
            "--seed",
            &(i + 2).to_string(),
        ]);
        assert!(out.status.success());
        let out = env.run(&["backup", "sync"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(app);
    let (code, v) = env.json(&["verify-backups"]);
    assert_eq!(code, 0, "clean repository must verify: {v}");
    env
}

fn objects(env: &Env, dir: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(env.repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

fn problems_naming(v: &serde_json::Value, needle: &str) -> usize {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["object"].as_str().unwrap_or("").contains(needle))
        .count()
}

#[test]
fn a_flipped_bit_in_each_kind_of_object_is_named() {
    for dir in ["snapshots", "segments", "events"] {
        let env = prepared();
        let victim = objects(&env, dir).into_iter().next().unwrap();
        let len = std::fs::metadata(&victim).unwrap().len() as usize;
        flip(&victim, len / 2);
        let (code, v) = env.json(&["verify-backups"]);
        assert_eq!(code, 1, "{dir}: {v}");
        let id = victim.file_stem().unwrap().to_str().unwrap().to_string();
        assert_eq!(problems_naming(&v, &id), 1, "{dir}: {v}");
        let p = &v["problems"][0];
        assert!(p["problem"].as_str().unwrap().contains("BLAKE3"), "{p}");
        assert!(!p["breaks"].as_array().unwrap().is_empty());
    }
}

#[test]
fn truncation_deletion_and_manifest_mismatch_are_named() {
    let env = prepared();
    let segs = objects(&env, "segments");
    assert!(segs.len() >= 3, "{segs:?}");
    // Truncate one segment.
    let t = &segs[0];
    let b = std::fs::read(t).unwrap();
    std::fs::write(t, &b[..b.len() / 2]).unwrap();
    // Delete a segment from the middle (object and manifest).
    let mid = &segs[1];
    let mid_id = mid.file_stem().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(mid).unwrap();
    std::fs::remove_file(env.repo().join("manifests").join(format!("{mid_id}.json"))).unwrap();
    // A manifest whose checksum does not match its object.
    let last = &segs[2];
    let last_id = last.file_stem().unwrap().to_str().unwrap().to_string();
    let mpath = env.repo().join("manifests").join(format!("{last_id}.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["blake3_compressed"] = serde_json::Value::String("0".repeat(64));
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();

    let (code, v) = env.json(&["verify-backups"]);
    assert_eq!(code, 1);
    let t_id = t.file_stem().unwrap().to_str().unwrap();
    assert!(
        problems_naming(&v, t_id) >= 1,
        "truncated object not named: {v}"
    );
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["problem"].as_str().unwrap().contains("missing")),
        "gap not named: {v}"
    );
    assert!(
        problems_naming(&v, &last_id) >= 1,
        "manifest mismatch not named: {v}"
    );
    let text = String::from_utf8_lossy(&env.run(&["verify-backups"]).stdout).to_string();
    assert!(text.contains("breaks"), "{text}");
}
