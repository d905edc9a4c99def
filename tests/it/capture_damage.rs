//! Damage is found: a flipped bit in each kind of object, a truncated object,
//! a segment deleted from the middle of a chain, a manifest whose checksum
//! does not match, and keys someone else put in the repository;
//! `verify-backups` exits 1 and names each one. Every test runs against a
//! local directory and against the S3 server; the damage is done through the
//! backend (or, for a key genesis-recovery would never write, around it).

use crate::common::{Env, Store};

fn prepared(store: Store) -> Env {
    let env = Env::on(store);
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

fn objects(env: &Env, dir: &str) -> Vec<String> {
    env.open_repo().backend().list(dir).unwrap()
}

/// The object id of a key (`segments/ID.zst` -> `ID`).
fn id_of(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap();
    name.split_once('.').map_or(name, |(id, _)| id).to_string()
}

fn read(env: &Env, key: &str) -> Vec<u8> {
    env.open_repo().backend().get(key).unwrap().to_vec()
}

/// Replaces an object's bytes (damage from outside: `put_state` is the one
/// write that may replace).
fn overwrite(env: &Env, key: &str, bytes: &[u8]) {
    env.open_repo().backend().put_state(key, bytes).unwrap();
}

fn flip(env: &Env, key: &str) {
    let mut b = read(env, key);
    let i = b.len() / 2;
    b[i] ^= 0x10;
    overwrite(env, key, &b);
}

/// Puts `bytes` at a key of the repository that genesis-recovery would
/// never write (`name` may be an invalid key).
fn put_foreign(env: &Env, key: &str, bytes: &[u8]) {
    match &env.repo_url {
        None => std::fs::write(env.repo().join(key), bytes).unwrap(),
        Some(url) => {
            let prefix = url.trim_start_matches("s3://").split_once('/').unwrap().1;
            crate::s3_server::server().raw_put(&format!("{prefix}/{key}"), bytes);
        }
    }
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
    flipped_bits(Store::Local);
}

#[test]
fn a_flipped_bit_in_each_kind_of_object_is_named_on_s3() {
    flipped_bits(Store::S3);
}

fn flipped_bits(store: Store) {
    for dir in ["snapshots", "segments", "events"] {
        let env = prepared(store);
        let victim = objects(&env, dir).into_iter().next().unwrap();
        flip(&env, &victim);
        let (code, v) = env.json(&["verify-backups"]);
        assert_eq!(code, 1, "{dir}: {v}");
        let id = id_of(&victim);
        assert_eq!(problems_naming(&v, &id), 1, "{dir}: {v}");
        let p = &v["problems"][0];
        assert!(p["problem"].as_str().unwrap().contains("BLAKE3"), "{p}");
        assert!(!p["breaks"].as_array().unwrap().is_empty());
    }
}

#[test]
fn truncation_deletion_and_manifest_mismatch_are_named() {
    truncation_deletion_mismatch_foreign(Store::Local);
}

#[test]
fn truncation_deletion_and_manifest_mismatch_are_named_on_s3() {
    truncation_deletion_mismatch_foreign(Store::S3);
}

fn truncation_deletion_mismatch_foreign(store: Store) {
    let env = prepared(store);
    let segs = objects(&env, "segments");
    assert!(segs.len() >= 3, "{segs:?}");
    // Truncate one segment.
    let t = &segs[0];
    let b = read(&env, t);
    overwrite(&env, t, &b[..b.len() / 2]);
    // Delete a segment from the middle (object and manifest).
    let mid = &segs[1];
    let mid_id = id_of(mid);
    let repo = env.open_repo();
    repo.backend().delete(mid).unwrap();
    repo.backend()
        .delete(&format!("manifests/{mid_id}.json"))
        .unwrap();
    // A manifest whose checksum does not match its object.
    let last = &segs[2];
    let last_id = id_of(last);
    let mkey = format!("manifests/{last_id}.json");
    let mut m: serde_json::Value = serde_json::from_slice(&read(&env, &mkey)).unwrap();
    m["blake3_compressed"] = serde_json::Value::String("0".repeat(64));
    overwrite(&env, &mkey, &serde_json::to_vec(&m).unwrap());
    // Keys someone else put there: a manifest that is not one, and a key
    // genesis-recovery refuses to follow.
    put_foreign(&env, "manifests/foreign.json", b"not a manifest");
    put_foreign(&env, "manifests/evil..json", b"{}");

    let (code, v) = env.json(&["verify-backups"]);
    assert_eq!(code, 1);
    assert_eq!(problems_naming(&v, "manifests/foreign.json"), 1, "{v}");
    assert_eq!(problems_naming(&v, "manifests/evil..json"), 1, "{v}");
    let t_id = id_of(t);
    assert!(
        problems_naming(&v, &t_id) >= 1,
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
