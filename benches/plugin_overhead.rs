//! Plugin overhead benchmark: what a `type = "plugin"` stage costs a restore.
//!
//! Builds a trading database (the simulator's valid event stream replayed in
//! big transactions) of `GENESIS_BENCH_DB_MB` MiB (default 256), captures it
//! (a snapshot and `GENESIS_BENCH_SEGMENTS` segments), then runs the restore
//! pipeline (`pipelines/restore.toml`'s stage list, validation off) compiled
//! from a temporary pipeline file, `GENESIS_BENCH_RUNS` times (default 10)
//! with and `GENESIS_BENCH_RUNS` times without a plugin stage that uses the
//! pass-through plugin (`libgenesis_plugin_passthrough.so`, built with
//! `cargo build --release -p genesis-plugin-passthrough` when missing),
//! alternating. Each run is compile + run (`compile_file` then `.run`), the
//! way `genesis-recovery restore --pipeline` does it. Prints the medians and
//! the overhead in percent (target <= 2 %).
//!
//! Run: `cargo bench --bench plugin_overhead` (env: GENESIS_BENCH_DB_MB=256,
//! GENESIS_BENCH_SEGMENTS=20, GENESIS_BENCH_RUNS=10).

mod common;
use common::{checkpoint_truncate, env_num, fast, file_len};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::pipeline::{compile_file, Artifact, CancelToken};
use genesis_core::plugin_host::LibraryLoader;
use genesis_core::progress::NoProgress;
use genesis_core::repo::Repository;
use genesis_trading::{replay, schema, simulate};
use rusqlite::Connection;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A trading database of about `mb` MiB captured as a snapshot plus
/// `segments` segments (10 % more events after the snapshot).
fn build(dir: &Path, mb: u64, segments: usize) -> PathBuf {
    let t = Instant::now();
    let db = dir.join("live.db");
    let mut conn = Connection::open(&db).expect("open");
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA wal_autocheckpoint=0;")
        .expect("pragmas");
    schema::ensure_schema(&conn).expect("schema");
    // About 400 bytes per replayed event; generate enough, use what is needed.
    let total = ((mb << 20) / 300) as usize;
    let events = simulate::random_events(42, total);
    let change = total / 20;
    let mut next = 0;
    while file_len(&db) < mb << 20 && next + change < events.len() {
        let end = (next + 100_000).min(events.len() - change);
        replay(&mut conn, &events[next..end], &fast()).expect("replay");
        checkpoint_truncate(&conn);
        next = end;
    }
    let repo = dir.join("repo");
    let mut opts = CaptureOptions::new(&db);
    opts.snapshot_interval = None;
    opts.checkpoint_frames = 1;
    let mut cap =
        Capturer::open(opts, Repository::open_local(&repo, true).expect("repo")).expect("capture");
    let change = change.min(events.len() - next);
    let per = (change / segments.max(1)).max(1);
    for chunk in events[next..next + change].chunks(per) {
        for txn in chunk.chunks(chunk.len().div_ceil(20).max(1)) {
            replay(&mut conn, txn, &fast()).expect("replay");
        }
        cap.step(false).expect("capture step");
        checkpoint_truncate(&conn);
    }
    cap.finish().expect("finish");
    println!(
        "built and captured a {} MiB database ({} events) in {:.1}s",
        file_len(&db) >> 20,
        next + change,
        t.elapsed().as_secs_f64()
    );
    repo
}

/// The passthrough plugin library, built when missing.
fn passthrough_library() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("release/libgenesis_plugin_passthrough.so");
    if !lib.exists() {
        println!(
            "building the passthrough plugin (cargo build --release -p genesis-plugin-passthrough)"
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(root)
            .args(["build", "--release", "-p", "genesis-plugin-passthrough"])
            .status()
            .expect("run cargo");
        assert!(st.success(), "building the passthrough plugin failed");
    }
    lib.canonicalize().expect("the passthrough plugin library")
}

/// restore.toml with its `[params]` defaults kept and, optionally, a plugin
/// stage between validate and reconcile.
fn pipeline_text(plugin: Option<&Path>) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(root.join("pipelines/restore.toml")).expect("restore.toml");
    let Some(lib) = plugin else {
        return text;
    };
    let stage = format!(
        "[[stages]]\nid = \"passthrough\"\ntype = \"plugin\"\nlibrary = \"{}\"\n\n",
        lib.display()
    );
    let at = text
        .find("[[stages]]\nid = \"reconcile\"")
        .expect("restore.toml has a reconcile stage");
    format!("{}{stage}{}", &text[..at], &text[at..])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb = env_num("GENESIS_BENCH_DB_MB", 256.0) as u64;
    let segments = (env_num("GENESIS_BENCH_SEGMENTS", 20.0) as usize).max(1);
    let runs = (env_num("GENESIS_BENCH_RUNS", 10.0) as usize).max(1);
    let lib = passthrough_library();
    let dir = tempfile::Builder::new()
        .prefix("genesis-bench-plugin-")
        .tempdir()
        .expect("tempdir");
    println!(
        "== plugin stage overhead on a restore pipeline ({mb} MiB, {runs} runs each, alternating)"
    );
    let repo = build(dir.path(), mb, segments);
    let plain = dir.path().join("restore.toml");
    let with = dir.path().join("restore-passthrough.toml");
    fs::write(&plain, pipeline_text(None)).expect("write");
    fs::write(&with, pipeline_text(Some(&lib))).expect("write");
    let staging = dir.path().join("staging");
    let overrides = vec![
        ("repository".to_string(), repo.display().to_string()),
        ("staging_dir".to_string(), staging.display().to_string()),
        (
            "database".to_string(),
            dir.path().join("live.db").display().to_string(),
        ),
        ("target".to_string(), "latest".to_string()),
        ("validate".to_string(), "false".to_string()),
    ];
    let registry = genesis_stages::registry();
    let loader = LibraryLoader::new();
    let mut times = [Vec::new(), Vec::new()];
    // One unmeasured run of each warms the page cache and loads the library.
    for i in 0..=runs {
        for k in 0..2 {
            // Alternate which goes first.
            let order = if i % 2 == 0 { k } else { 1 - k };
            let path = [&plain, &with][order];
            let _ = fs::remove_dir_all(&staging);
            fs::create_dir_all(&staging).expect("mkdir");
            let t = Instant::now();
            let compiled =
                compile_file(path, &registry, &loader, &overrides).expect("compile the pipeline");
            let outcome = compiled
                .run(Arc::new(NoProgress), CancelToken::default())
                .expect("run the pipeline");
            let secs = t.elapsed().as_secs_f64();
            assert!(
                outcome
                    .outputs
                    .iter()
                    .any(|a| matches!(a, Artifact::StagedDatabase(_))),
                "the pipeline produced no staged database"
            );
            let ran_plugin = outcome.stages.iter().any(|s| s.id == "passthrough");
            assert_eq!(ran_plugin, order == 1, "the wrong pipeline ran");
            if i > 0 {
                times[order].push(secs);
            }
        }
    }
    let without = median(&mut times[0]);
    let with_plugin = median(&mut times[1]);
    println!("without plugin stage: median {without:.3} s ({runs} runs)");
    println!("with passthrough    : median {with_plugin:.3} s ({runs} runs)");
    println!(
        "overhead: {:+.2} % ({:+.1} ms; target <= 2 %)",
        (with_plugin / without - 1.0) * 100.0,
        (with_plugin - without) * 1000.0
    );
}
