//! A transaction whose frames hold pages past its own commit's size.
//!
//! With a small page cache SQLite spills dirty pages to the WAL before the
//! commit; when the transaction then frees them and auto-vacuum truncates
//! the database at the commit (`auto_vacuum=full`, or an
//! `incremental_vacuum` inside the transaction), the WAL holds frames of
//! pages the committed database does not have. The rebuild once kept those
//! pages when the size had not changed across the transaction, so every
//! restore point from there on was refused with "the chain does not
//! reproduce the source" (the `matrix_65536_full` flake: 64 KiB pages leave
//! SQLite's default cache ~31 pages, so only that cell spilled).
//!
//! Here each such transaction is made on purpose, at several page sizes,
//! the premise (a frame past the commit's size) read from the WAL itself,
//! and every point restored and compared with the source as it was.

use std::path::Path;

use rusqlite::Connection;

use crate::common::{integrity, state_hash, Env};

/// The WAL's frames as (page number, size after commit or 0), in order.
fn wal_frames(db: &Path) -> Vec<(u32, u32)> {
    let wal = std::fs::read(db.with_extension("db-wal")).expect("read the WAL");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let ps = be(&wal[8..12]) as usize;
    let (salt1, salt2) = (be(&wal[16..20]), be(&wal[20..24]));
    let mut out = Vec::new();
    let mut off = 32;
    while off + 24 + ps <= wal.len() {
        let h = &wal[off..off + 24];
        if be(&h[8..12]) != salt1 || be(&h[12..16]) != salt2 {
            break;
        }
        out.push((be(&h[0..4]), be(&h[4..8])));
        off += 24 + ps;
    }
    out
}

/// The largest page a committed transaction's frames hold past that
/// transaction's own size, over the WAL from frame `from` on.
fn pages_past_commit(frames: &[(u32, u32)], from: usize) -> u32 {
    let (mut worst, mut max_in_txn) = (0, 0);
    for (pgno, commit) in frames.iter().skip(from) {
        max_in_txn = max_in_txn.max(*pgno);
        if *commit > 0 {
            worst = worst.max(max_in_txn.saturating_sub(*commit));
            max_in_txn = 0;
        }
    }
    worst
}

/// One transaction that grows the database by ~`rows` big rows (spilled:
/// the cache holds 2 pages), frees them and commits with one small row.
fn grow_and_free(c: &Connection, mode: &str, rows: u32, ps: u32, n: u32) {
    c.execute_batch("BEGIN").expect("begin");
    let blob = vec![n as u8; ps as usize - 200];
    for i in 0..rows {
        c.execute(
            "INSERT INTO big (k, v) VALUES (?1, ?2)",
            rusqlite::params![format!("tmp-{n}-{i}"), blob],
        )
        .expect("insert big");
    }
    c.execute("DELETE FROM big WHERE k LIKE 'tmp-%'", [])
        .expect("delete big");
    c.execute(
        "INSERT INTO small (n, note) VALUES (?1, ?2)",
        rusqlite::params![n, format!("txn {n}")],
    )
    .expect("insert small");
    if mode == "incremental" {
        c.query_row("PRAGMA incremental_vacuum", [], |_| Ok(()))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(()),
                e => Err(e),
            })
            .expect("incremental_vacuum");
    }
    c.execute_batch("COMMIT").expect("commit");
}

fn run(ps: u32, mode: &str) {
    let what = format!("page_size={ps} auto_vacuum={mode}");
    let env = Env::new();
    let c = Connection::open(env.db()).expect("open db");
    c.execute_batch(&format!(
        "PRAGMA page_size={ps}; PRAGMA auto_vacuum={mode}; PRAGMA journal_mode=WAL;
         PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=2;
         CREATE TABLE big (k TEXT PRIMARY KEY, v BLOB);
         CREATE TABLE small (n INTEGER PRIMARY KEY, note TEXT);
         INSERT INTO small VALUES (0, 'base');"
    ))
    .expect("set up db");
    let (code, v) = env.json(&["backup", "full"]);
    assert_eq!(code, 0, "{what}: backup full: {v}");
    let start = wal_frames(&env.db()).len();
    // Each sync ships one transaction: its restore point is one txid.
    let mut states = Vec::new();
    for n in 1..=4u32 {
        grow_and_free(&c, mode, 12 + 4 * n, ps, n);
        let o = env.run(&["backup", "sync"]);
        assert!(o.status.success(), "{what}: backup sync: {o:?}");
        states.push(state_hash(&env.db()));
    }
    let past = pages_past_commit(&wal_frames(&env.db()), start);
    assert!(
        past > 0,
        "{what}: the premise failed: no transaction left a frame past its commit's size"
    );
    let last = env.open_repo().catalog().expect("catalog").max_txid();
    for (i, want) in states.iter().enumerate() {
        let txid = last - (states.len() - 1 - i) as u64;
        let out = env.path().join(format!("at{txid}.db"));
        let (code, v) = env.json(&[
            "restore",
            "--txid",
            &txid.to_string(),
            "--no-validate",
            "--output",
            out.to_str().expect("utf-8 path"),
        ]);
        assert_eq!(code, 0, "{what}: restore --txid {txid}: {v}");
        assert_eq!(integrity(&out), "ok", "{what}: txid {txid}");
        assert_eq!(&state_hash(&out), want, "{what}: txid {txid} differs");
    }
    drop(c);
}

#[test]
fn pages_spilled_then_cut_off_at_the_commit_are_not_restored() {
    for ps in [1024, 4096, 65536] {
        run(ps, "full");
    }
    run(65536, "incremental");
}
