//! `bench rto` end to end, its HTML report read by an independent parser
//! (Python's html.parser, tests/it/report_html.py), a planted slow stage in
//! the stage timeline, and the drill history across drills.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{stderr_text, Env};

/// Parses an HTML report with Python's parser; fails on any error it finds.
fn parse_html(path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/report_html.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3 (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", stderr_text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("the checker's JSON");
    assert_eq!(v["errors"], serde_json::json!([]), "{}", path.display());
    v
}

fn bench(env: &Env, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["bench", "rto"];
    all.extend_from_slice(args);
    env.json(&all)
}

/// Asserts that `v` has every key, each of the JSON type named.
fn has(v: &Value, what: &str, fields: &[(&str, &str)]) {
    for (key, ty) in fields {
        let f = v
            .get(key)
            .unwrap_or_else(|| panic!("{what} has no `{key}`: {v}"));
        let ok = match *ty {
            "bool" => f.is_boolean(),
            "num" => f.is_number(),
            "num?" => f.is_number() || f.is_null(),
            "bool?" => f.is_boolean() || f.is_null(),
            "str" => f.is_string(),
            "str?" => f.is_string() || f.is_null(),
            "arr" => f.is_array(),
            "obj" => f.is_object(),
            _ => unreachable!("type {ty}"),
        };
        assert!(ok, "{what}.{key} is not {ty}: {f}");
    }
}

const STAGE_FIELDS: &[(&str, &str)] = &[
    ("id", "str"),
    ("stage_type", "str"),
    ("seconds", "num"),
    ("start_offset_seconds", "num"),
    ("end_offset_seconds", "num"),
    ("items_in", "num"),
    ("bytes_in", "num"),
    ("items_out", "num"),
    ("bytes_out", "num"),
    ("items_skipped", "num"),
    ("status", "str"),
];

#[test]
fn bench_rto_runs_end_to_end_with_every_field_and_a_report() {
    let env = Env::new();
    let dir = env.path().join("bench");
    let html = env.path().join("rto.html");
    let (code, v) = bench(
        &env,
        &[
            "--size",
            "64MiB",
            "--history",
            "2m",
            "--dir",
            dir.to_str().unwrap(),
            "--report",
            html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    has(
        &v,
        "report",
        &[
            ("success", "bool"),
            ("timestamp", "str"),
            ("cpus", "num"),
            ("history_seconds", "num"),
            ("rate", "num"),
            ("pipeline", "str?"),
            ("needed_bytes", "num"),
            ("free_bytes", "num"),
            ("sizes", "arr"),
        ],
    );
    assert_eq!(v["success"], true);
    assert_eq!(v["history_seconds"], 120);
    let sizes = v["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 1);
    let z = &sizes[0];
    has(
        z,
        "size",
        &[
            ("requested_bytes", "num"),
            ("generation", "obj"),
            ("chain", "obj"),
            ("database_bytes", "num"),
            ("restores", "arr"),
            ("baselines", "arr"),
            ("kept_dir", "str?"),
        ],
    );
    assert_eq!(z["requested_bytes"], 64u64 << 20);
    has(
        &z["generation"],
        "generation",
        &[
            ("events", "num"),
            ("bytes", "num"),
            ("seconds", "num"),
            ("bytes_per_second", "num"),
        ],
    );
    assert!(z["generation"]["bytes"].as_u64().unwrap() >= 64 << 20);
    let c = &z["chain"];
    has(
        c,
        "chain",
        &[
            ("steps", "num"),
            ("commits", "num"),
            ("segments", "num"),
            ("snapshot_txid", "num"),
            ("last_txid", "num"),
            ("middle_txid", "num"),
            ("snapshot_seconds", "num"),
            ("capture_seconds", "num"),
            ("compaction_seconds", "num"),
            ("compacted_objects", "obj"),
            ("step_median_ms", "num"),
            ("step_max_ms", "num"),
            ("repository_bytes", "num"),
            ("wal_files", "num"),
        ],
    );
    // 120 steps of one second at the default 10 commits/s.
    assert_eq!(c["steps"], 120);
    assert_eq!(c["commits"], 1200);
    assert_eq!(
        c["last_txid"].as_u64().unwrap(),
        c["snapshot_txid"].as_u64().unwrap() + 1200
    );
    let restores = z["restores"].as_array().unwrap();
    let names: Vec<&str> = restores
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "latest, no validation",
            "latest, validated",
            "middle, no validation",
            "middle, validated"
        ]
    );
    let mut bars = 0;
    for r in restores {
        has(
            r,
            "restore",
            &[
                ("name", "str"),
                ("target", "str"),
                ("validate", "bool"),
                ("success", "bool"),
                ("wall_seconds", "num"),
                ("recovery_time_seconds", "num"),
                ("ratio_to_cp", "num"),
                ("expected_txid", "num"),
                ("restored_txid", "num"),
                ("equals_source", "bool?"),
                ("bytes_read", "num"),
                ("objects_read", "num"),
                ("peak_rss_bytes", "num"),
                ("stages", "arr"),
            ],
        );
        assert_eq!(r["success"], true, "{r:#}");
        assert_eq!(r["restored_txid"], r["expected_txid"], "{r:#}");
        assert!(r["bytes_read"].as_u64().unwrap() > 0);
        assert!(r["objects_read"].as_u64().unwrap() >= 1);
        // The child's own peak memory: more than a page cache's worth of nothing.
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 4 << 20, "{r:#}");
        if r["name"].as_str().unwrap().starts_with("latest") {
            assert_eq!(r["equals_source"], true, "{r:#}");
        }
        let stages = r["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 7);
        for s in stages {
            has(s, "stage", STAGE_FIELDS);
            let (a, b) = (
                s["start_offset_seconds"].as_f64().unwrap(),
                s["end_offset_seconds"].as_f64().unwrap(),
            );
            assert!(0.0 <= a && a <= b, "{s}");
        }
        bars += stages.len();
    }
    // Validation runs only where asked: the validated restores' stage takes longer.
    let mut validate_s = restores.iter().map(|r| {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "validate")
            .unwrap()["seconds"]
            .as_f64()
            .unwrap()
    });
    let (off, on) = (validate_s.next().unwrap(), validate_s.next().unwrap());
    assert!(on > off, "validation {on} s vs skipped {off} s");
    let baselines = z["baselines"].as_array().unwrap();
    let names: Vec<&str> = baselines
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cp",
            "cp + fsync",
            "zstd -d",
            "SQLite backup API",
            "naive WAL-by-WAL",
            "litestream restore"
        ]
    );
    for b in baselines {
        has(
            b,
            "baseline",
            &[
                ("name", "str"),
                ("seconds", "num?"),
                ("ratio_to_cp", "num?"),
                ("equals_source", "bool?"),
                ("note", "str"),
                ("skipped", "str?"),
            ],
        );
        assert!(b["equals_source"] != false, "{b}");
    }
    assert_eq!(baselines[0]["ratio_to_cp"], 1.0);
    for b in &baselines[..5] {
        assert!(
            b["seconds"].is_number(),
            "setup.sh --bench installs cp and zstd: {b}"
        );
    }
    assert_eq!(baselines[3]["equals_source"], true);
    assert_eq!(baselines[4]["equals_source"], true);
    // The files are gone without --keep.
    assert!(!dir.join("rto-64MiB").exists());

    let h = parse_html(&html);
    assert_eq!(
        h["stage_bars"].as_array().unwrap().len(),
        bars,
        "one bar per stage per restore"
    );
    assert!(h["tags"]["svg"].as_u64().unwrap() >= 1 + 1 + 4);
}

/// The restore pipeline with a plugin stage that sleeps on its input.
fn slow_pipeline(env: &Env) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--quiet", "-p", "genesis-plugin-fixture-faulty"])
        .status()
        .expect("run cargo");
    assert!(st.success(), "building the fixture plugin failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lib = target.join("debug/libgenesis_plugin_fixture_faulty.so");
    assert!(lib.exists(), "{}", lib.display());
    let text = genesis_stages::builtin_pipeline("restore").unwrap().replace(
        "[[stages]]\nid = \"event-replay\"",
        &format!(
            "[[stages]]\nid = \"slow\"\ntype = \"plugin\"\nlibrary = \"{}\"\n[stages.config]\nsleep_ms = 1500\n\n[[stages]]\nid = \"event-replay\"",
            lib.display()
        ),
    );
    assert!(text.contains("id = \"slow\""));
    let path = env.path().join("slow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_planted_slow_stage_shows_in_the_stage_timeline() {
    let env = Env::new();
    let pipeline = slow_pipeline(&env);
    let html = env.path().join("slow.html");
    let dir = env.path().join("bench");
    let (code, v) = bench(
        &env,
        &[
            "--size",
            "4MiB",
            "--history",
            "10s",
            "--dir",
            dir.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--report",
            html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    let restores = v["sizes"][0]["restores"].as_array().unwrap();
    for r in restores {
        let stages = r["stages"].as_array().unwrap();
        let at = |id: &str| {
            let s = stages.iter().find(|s| s["id"] == id).unwrap();
            (
                s["start_offset_seconds"].as_f64().unwrap(),
                s["end_offset_seconds"].as_f64().unwrap(),
            )
        };
        let (start, end) = at("slow");
        assert!(
            end - start >= 1.4,
            "the slow stage ran {start}..{end}: {r:#}"
        );
        // What follows it cannot end before it has passed the database on.
        let (_, replay_end) = at("event-replay");
        assert!(replay_end >= end, "{r:#}");
        let (_, apply_end) = at("wal-apply");
        assert!(
            apply_end <= start + 0.5,
            "wal-apply ends {apply_end}, slow starts {start}"
        );
    }
    let h = parse_html(&html);
    let bars = h["stage_bars"].as_array().unwrap();
    assert_eq!(bars.len(), restores.len() * 8);
    assert_eq!(
        bars.iter().filter(|b| b.as_str() == Some("slow")).count(),
        restores.len()
    );
}

#[test]
fn bench_rto_refuses_without_the_free_space_it_needs() {
    let env = Env::new();
    let o = env.run(&[
        "bench",
        "rto",
        "--size",
        "900TiB",
        "--dir",
        env.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_text(&o);
    assert!(err.contains("GiB free there"), "{err}");
    assert!(
        std::fs::read_dir(env.path()).unwrap().count() <= 2,
        "it wrote files"
    );
    let o = env.run(&["bench", "rto", "--size", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_text(&o).contains("\"lots\""), "{}", stderr_text(&o));
}

#[test]
fn drill_history_accumulates_and_the_report_draws_each_drill() {
    let env = Env::new();
    let html = env.path().join("drills.html");
    for i in 0..3 {
        let o = env.run(&[
            "simulate",
            "--rate",
            "0",
            "--max-commits",
            "40",
            "--seed",
            &i.to_string(),
        ]);
        assert!(o.status.success(), "{}", stderr_text(&o));
        let o = env.run(&["backup", "sync"]);
        assert!(o.status.success(), "{}", stderr_text(&o));
        let (code, d) = env.json(&["drill", "--report", html.to_str().unwrap()]);
        assert_eq!(code, 0, "{d:#}");
    }
    let history = env.repo().join("state/drills.jsonl");
    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let mut txids = Vec::new();
    for l in &lines {
        for key in [
            "timestamp",
            "success",
            "rto_seconds",
            "rpo_seconds",
            "validation_pass",
            "reconciliation_accuracy",
            "restored_txid",
            "restore_point_timestamp",
            "stages",
        ] {
            assert!(l.get(key).is_some(), "no {key}: {l}");
        }
        assert_eq!(l["validation_pass"], true);
        assert!(l["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "validate"));
        txids.push(l["restored_txid"].as_u64().unwrap());
    }
    assert!(
        txids.windows(2).all(|w| w[0] < w[1]),
        "each drill restored a later point: {txids:?}"
    );
    let h = parse_html(&html);
    assert_eq!(h["points"]["rto"], 3, "{h}");
    assert_eq!(h["points"]["rpo"], 3, "{h}");
    assert_eq!(h["points"]["validation"], 3, "{h}");
    // An explicit --history file is used instead of the default one.
    let other = env.path().join("elsewhere.jsonl");
    let (code, _) = env.json(&["drill", "--history", other.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&other).unwrap().lines().count(), 1);
    assert_eq!(
        std::fs::read_to_string(&history).unwrap().lines().count(),
        3
    );
}

#[test]
fn a_failing_litestream_is_a_line_saying_so_not_a_failed_benchmark() {
    let env = Env::new();
    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("litestream");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake litestream: no replica today' >&2\nexit 1\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = env.path().join("bench");
    let out = env
        .cmd()
        .env("PATH", path)
        .args([
            "--json",
            "bench",
            "rto",
            "--size",
            "2MiB",
            "--history",
            "3s",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stderr_text(&out)));
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    let b = v["sizes"][0]["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "litestream restore")
        .unwrap()
        .clone();
    assert!(b["seconds"].is_null(), "{b}");
    let why = b["skipped"].as_str().unwrap();
    assert!(
        why.contains("exited early") && why.contains("no replica today"),
        "{why}"
    );
}
