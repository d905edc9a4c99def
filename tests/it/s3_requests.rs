//! How many requests the S3 repository costs: none to write on an idle
//! database, and with `--cache-dir` no object download on a second drill.
//! Requests are counted by the proxy in front of moto.

use std::time::{Duration, Instant};

use crate::capture_metrics::{scrape, value};
use crate::common::{signal, wait_for_capture_lock, Env, Store};
use crate::s3_outage::replicate_through;
use crate::s3_server::{server, Outage};

/// An idle database costs no PUT (Litestream #1171 reports 480 an hour):
/// once the opening snapshot is stored, steps that find nothing new send
/// nothing to write.
#[test]
fn an_idle_database_costs_no_put() {
    let s3 = server();
    let proxy = Outage::start(s3.addr);
    let env = Env::on(Store::S3);
    let record = env.path().join("record.txt");
    let (mut rep, maddr) = replicate_through(&env, &proxy, &record, 20, &["--interval", "100ms"]);
    wait_for_capture_lock(&env);
    let metric = |name: &str| value(&scrape(&maddr).unwrap_or_default(), name).unwrap_or(-1.0);
    let t0 = Instant::now();
    while metric("genesis_capture_uploads_total") < 2.0
        || metric("genesis_capture_upload_backlog_objects") != 0.0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the snapshot never reached the store"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let steps_before = metric("genesis_capture_steps_total");
    let before = proxy.counts();
    std::thread::sleep(Duration::from_secs(3));
    let after = proxy.counts();
    let steps = metric("genesis_capture_steps_total") - steps_before;
    signal(&rep, "TERM");
    let status = rep.wait().expect("replicate");
    assert!(status.success(), "replicate failed");
    assert!(before[0] >= 2, "the proxy saw no PUT at all: {before:?}");
    assert!(steps >= 10.0, "only {steps} idle steps ran");
    assert_eq!(
        after[0] - before[0],
        0,
        "{steps} idle steps sent PUTs (PUT, GET, HEAD, DELETE before {before:?}, after {after:?})"
    );
    assert_eq!(
        after[1] - before[1],
        0,
        "{steps} idle steps sent GETs (before {before:?}, after {after:?})"
    );
}

/// A database of `commits` simulated commits, its full backup, then one
/// `backup sync` after each of `syncs` runs of `each` commits, with the
/// application's connection open (so that the WAL stays).
fn chain(env: &Env, commits: u64, syncs: u64, each: u64) {
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", crate::common::stderr_text(&o));
    };
    ok(env.run(&[
        "simulate",
        "--rate",
        "0",
        "--max-commits",
        &commits.to_string(),
    ]));
    let app = rusqlite::Connection::open(env.db()).unwrap();
    app.query_row("SELECT count(*) FROM events", [], |_| Ok(()))
        .unwrap();
    ok(env.run(&["backup", "full"]));
    for seed in 2..2 + syncs {
        let (each, seed) = (each.to_string(), seed.to_string());
        ok(env.run(&[
            "simulate",
            "--rate",
            "0",
            "--max-commits",
            &each,
            "--seed",
            &seed,
        ]));
        ok(env.run(&["backup", "sync"]));
    }
}

/// Runs the command through the counting proxy; returns the GETs and HEADs
/// it sent, and its standard output.
fn counted(env: &Env, proxy: &Outage, args: &[&str]) -> (u64, u64, Vec<u8>) {
    let before = proxy.counts();
    let out = env
        .cmd()
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .args(args)
        .output()
        .expect("run through the proxy");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        crate::common::stderr_text(&out)
    );
    let after = proxy.counts();
    (after[1] - before[1], after[2] - before[2], out.stdout)
}

/// `--cache-dir`: a second drill reads the chain from the cache; only the
/// catalog (LIST and manifests) comes from the store.
#[test]
fn a_second_drill_with_a_cache_downloads_no_object() {
    let s3 = server();
    let proxy = Outage::start(s3.addr);
    let env = Env::on(Store::S3);
    chain(&env, 200, 2, 50);
    let manifests = env.open_repo().backend().list("manifests").unwrap().len() as u64;
    assert!(manifests >= 3, "only {manifests} objects");
    // Two LISTs (GETs too): the reachability check and the catalog.
    let catalog_gets = manifests + 2;
    let cache = env.path().join("cache");
    let cache = cache.to_str().unwrap();
    let drill = || counted(&env, &proxy, &["--json", "drill", "--cache-dir", cache]);
    let (first_gets, _, _) = drill();
    assert!(
        first_gets > catalog_gets,
        "the first drill sent {first_gets} GETs for {manifests} objects"
    );
    let cached =
        std::fs::read_dir(env.path().join("cache").join("snapshots")).map_or(0, |d| d.count());
    assert!(cached >= 1, "nothing was cached");
    let (second_gets, second_heads, _) = drill();
    assert_eq!(
        second_gets, catalog_gets,
        "the second drill read more than the catalog ({second_gets} GETs, {manifests} manifests)"
    );
    assert_eq!(
        second_heads, 0,
        "the second drill asked the store for sizes"
    );
}

/// Issue 15, Litestream #1172: once `backup compact` has packed the
/// manifests, loading the catalog costs the LISTs and one GET per pack, not
/// one per manifest; the catalog is the same.
#[test]
fn a_packed_catalog_costs_a_few_requests_whatever_the_chain() {
    let s3 = server();
    let proxy = Outage::start(s3.addr);
    let env = Env::on(Store::S3);
    chain(&env, 100, 10, 5);
    let manifests = env.open_repo().backend().list("manifests").unwrap().len() as u64;
    assert!(manifests >= 12, "only {manifests} manifests");
    let list = || counted(&env, &proxy, &["--json", "list-backups"]);
    let (before_gets, _, before_doc) = list();
    // Two LISTs (the reachability check and the catalog), then each manifest.
    assert_eq!(before_gets, manifests + 2, "before packing");
    // A level no window of which is complete: `backup compact` only packs
    // (a level-1 window completing meanwhile would add an object).
    let o = env.run(&["backup", "compact", "--levels", "1000h"]);
    assert!(o.status.success(), "{}", crate::common::stderr_text(&o));
    let (after_gets, _, after_doc) = list();
    assert_eq!(
        after_gets, 3,
        "after packing {manifests} manifests: two LISTs and one pack"
    );
    assert_eq!(
        String::from_utf8_lossy(&after_doc),
        String::from_utf8_lossy(&before_doc),
        "the packed catalog is not the same"
    );
    // With --cache-dir a pack is read once: a second drill sends the LISTs only.
    let cache = env.path().join("cache");
    let cache = cache.to_str().unwrap();
    let drill = || counted(&env, &proxy, &["--json", "drill", "--cache-dir", cache]).0;
    drill();
    assert_eq!(drill(), 2, "a second drill read more than the two LISTs");
}
