//! Regressions of issue 12, items 4 to 9, each named after what a user found.

use std::path::Path;

use crate::common::{stderr_text, Env};
use crate::exact_event::full_state;
use crate::trading_chain::{assert_state, trading_chain, ChainSpec};

fn small_trading_env() -> Env {
    let env = Env::new();
    let o = env.run(&["simulate", "--rate", "0", "--max-commits", "60"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    let o = env.run(&["backup", "full"]);
    assert!(o.status.success(), "{}", stderr_text(&o));
    env
}

#[test]
fn regression_4_set_target_together_with_a_typed_target_is_a_usage_error_naming_both() {
    let env = small_trading_env();
    let out = env.path().join("o.db");
    let out = out.to_str().unwrap();
    for (typed, set) in [
        (&["--txid", "500"][..], "target=latest"),
        (&["--txid", "500"][..], "target=2025-01-15T12:00:00"),
        (&["--latest"][..], "target=txid:1"),
        (&["--timestamp", "2025-01-15T12:00:00"][..], "target=latest"),
        (&["--backup-id", "full_x"][..], "target=latest"),
        (&["--ago", "1h"][..], "target=latest"),
    ] {
        let mut args = vec!["restore", "--output", out, "--set", set];
        args.extend_from_slice(typed);
        let o = env.run(&args);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(
            e.contains(typed[0]) && e.contains(&format!("--set {set}")),
            "{args:?}: the error does not name both: {e}"
        );
        assert!(!Path::new(out).exists());
    }
    // Alone, --set target= is the target.
    let (code, v) = env.json(&["restore", "--output", out, "--set", "target=latest"]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn regression_5_every_printed_timestamp_restores_that_exact_point_and_9_non_event_tables_are_reported(
) {
    let c = trading_chain(&ChainSpec {
        steps: 6,
        per_step: 15,
        side_table: true,
        ..ChainSpec::default()
    });
    let (code, rows) = c.env.json(&["list-backups"]);
    assert_eq!(code, 0, "{rows}");
    let rows = rows.as_array().unwrap().clone();
    assert!(rows.len() >= c.steps.len(), "{rows:?}");
    for row in &rows {
        let ts = row["timestamp"].as_str().unwrap();
        let txid = row["txid_max"].as_u64().unwrap();
        // The snapshot taken when the capturer opened precedes every step.
        let Some(step) = c.steps.iter().position(|(t, _)| *t == txid) else {
            assert_eq!(row["backup_type"], "full", "{row}");
            continue;
        };
        let name = format!("ts-{txid}");
        let (code, v, out) = c.restore(&name, &["--timestamp", ts]);
        assert_eq!(code, 0, "{ts}: {v}");
        assert_eq!(v["restored_txid"].as_u64(), Some(txid), "{ts}: {v}");
        assert_eq!(v["events_replayed"].as_u64(), Some(0), "{ts}: {v}");
        assert_state(&out, c.state_at_step(step), &name, &v);
        // The table no event touches has exactly the rows of that step.
        let notes: i64 = crate::common::open_ro(&out)
            .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(notes as usize, step + 1, "{ts}");
        // Item 9: the instant the non-event tables reached is reported, and
        // it is the restore point's; that timestamp restores the point too.
        assert_eq!(
            v["non_event_tables_at"], v["restore_point_timestamp"],
            "{v}"
        );
        let printed = v["restore_point_timestamp"].as_str().unwrap();
        let (code, v2, _) = c.restore(&format!("{name}-again"), &["--timestamp", printed]);
        assert_eq!(code, 0, "{v2}");
        assert_eq!(v2["restored_txid"].as_u64(), Some(txid), "{printed}: {v2}");
    }
}

#[test]
fn regression_6_extreme_numbers_in_every_numeric_flag_are_refused_without_a_panic() {
    let env = Env::new();
    // Nothing exists here: an accepted value fails fast on the missing
    // database; what matters is that no value panics and that values out of
    // range are refused (exit 2) naming the flag.
    let huge = [
        "4294967295",
        "18446744073709551615",
        "99999999999999999999",
        "-1",
        "1e308",
        "NaN",
        "inf",
    ];
    let durations = [
        "4294967295d",
        "99999999999999999999s",
        "18446744073709551615s",
        "1e308s",
        "9999999999999w",
    ];
    // (command, flag, the values that must be refused with the flag named)
    let cases: Vec<(Vec<&str>, &str, Vec<&str>)> = vec![
        (vec!["list-backups"], "--days", huge.to_vec()),
        (
            vec!["list-backups"],
            "--limit",
            vec!["-1", "99999999999999999999"],
        ),
        (vec!["restore"], "--ago", durations.to_vec()),
        (
            vec!["restore", "--dry-run"],
            "--txid",
            vec!["-1", "99999999999999999999"],
        ),
        (
            vec!["backup", "prune", "--keep-full", "1"],
            "--keep-days",
            huge.to_vec(),
        ),
        (
            vec!["backup", "prune", "--keep-days", "1"],
            "--keep-full",
            vec!["-1", "99999999999999999999"],
        ),
        (
            vec!["backup", "full"],
            "--checkpoint-frames",
            vec!["0", "4294967295", "-1"],
        ),
        (
            vec!["backup", "sync"],
            "--checkpoint-frames",
            vec!["0", "99999999999"],
        ),
        (
            vec!["backup", "replicate"],
            "--interval",
            durations.to_vec(),
        ),
        (
            vec!["backup", "replicate"],
            "--snapshot-interval",
            durations.to_vec(),
        ),
        (vec!["backup", "replicate"], "--for", durations.to_vec()),
        (
            vec!["simulate", "--duration=1ms"],
            "--rate",
            vec!["1e308", "NaN", "inf", "-1"],
        ),
        (
            vec!["simulate", "--max-commits=1"],
            "--duration",
            durations.to_vec(),
        ),
        (
            vec!["simulate", "--duration=1ms"],
            "--max-commits",
            vec!["-1", "99999999999999999999"],
        ),
        (
            vec!["simulate", "--duration=1ms"],
            "--seed",
            vec!["-1", "99999999999999999999"],
        ),
        (
            vec!["simulate", "--duration=1ms"],
            "--checkpoint-every",
            vec!["-1", "99999999999999999999"],
        ),
        (vec!["demo"], "--rate", vec!["1e308", "NaN", "-1"]),
        (vec!["demo"], "--trade-for", durations.to_vec()),
        (
            vec!["reconcile-orders", "--exchange-orders", "x.json"],
            "--tolerance",
            vec!["1e308", "NaN", "-1"],
        ),
    ];
    let missing = env.path().join("missing/db.sqlite");
    for (cmd, flag, refused) in &cases {
        let mut values: Vec<&str> = huge.to_vec();
        values.extend_from_slice(&durations);
        for value in values {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_genesis-recovery"));
            c.current_dir(env.path())
                .arg("--db")
                .arg(&missing)
                .arg("--repo")
                .arg(env.path().join("missing/repo"))
                .args(cmd)
                .arg(format!("{flag}={value}"));
            let o = c.output().unwrap();
            let e = stderr_text(&o);
            let what = format!("{cmd:?} {flag} {value}");
            assert_ne!(o.status.code(), Some(101), "{what} panicked: {e}");
            assert!(!e.contains("panicked"), "{what}: {e}");
            assert!(o.status.code().is_some(), "{what}: killed by a signal");
            if refused.contains(&value) {
                assert_eq!(o.status.code(), Some(2), "{what}: {e}");
                assert!(
                    e.contains(flag),
                    "{what}: the error does not name the flag: {e}"
                );
            }
        }
    }
    assert!(
        !env.path().join(".genesis").exists(),
        "a refused command left .genesis/"
    );
}

#[test]
fn regression_7_output_is_checked_before_any_work() {
    let env = small_trading_env();
    let db = env.db();
    let side = |s: &str| format!("{}{s}", db.display());
    let repo_inside = env.repo().join("restored.db");
    let missing = env.path().join("missing/dir/x.db");
    let cases: Vec<(String, &str)> = vec![
        (db.display().to_string(), "live database"),
        (side("-wal"), "-wal"),
        (side("-shm"), "-shm"),
        (side("-journal"), "-journal"),
        (repo_inside.display().to_string(), "repository"),
        (missing.display().to_string(), "does not exist"),
    ];
    let before = std::fs::read(&db).unwrap();
    let is_database = |p: &str| std::fs::read(p).is_ok_and(|b| b.starts_with(b"SQLite format 3\0"));
    for (out, why) in &cases {
        let o = env.run(&["restore", "--latest", "--output", out]);
        let e = stderr_text(&o);
        assert_eq!(o.status.code(), Some(2), "--output {out}: {e}");
        assert!(
            e.contains("--output") && e.contains(why),
            "--output {out}: {e}"
        );
        if out != &db.display().to_string() {
            assert!(!is_database(out), "a database was written at {out}");
        }
        assert!(
            !env.path().join(".genesis").exists(),
            "--output {out} left .genesis/ behind"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the live database changed"
    );
    // A relative name beside the live database through another spelling.
    let o = env.run(&[
        "restore",
        "--latest",
        "--output",
        "./data/../data/genesis.db-wal",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_text(&o));
    // A failure after the checks leaves no staging folder behind either.
    let o = env.run(&["restore", "--txid", "999999", "--output", "fine.db"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_text(&o));
    assert!(!env.path().join(".genesis").exists());
    assert!(!env.path().join("fine.db").exists());
}

#[test]
fn regression_8_json_always_prints_one_document_on_failure() {
    let env = Env::new();
    let cases: Vec<Vec<&str>> = vec![
        vec!["restore", "--latest"],
        vec!["restore", "--txid", "5", "--dry-run"],
        vec!["restore"],
        vec!["backup", "full"],
        vec!["backup", "sync"],
        vec!["backup", "replicate", "--for", "1s"],
        vec!["backup", "prune", "--keep-days", "1"],
        vec!["list-backups"],
        vec!["verify-backups"],
        vec!["validate"],
        vec!["recover-positions"],
        vec!["reconcile-orders", "--exchange-orders", "missing.json"],
        vec!["drill"],
        vec!["run", "missing.toml"],
        vec!["pipelines", "check", "missing.toml"],
        vec!["list-backups", "--days", "4294967295"],
        vec!["restore", "--no-such-flag"],
        vec!["no-such-command"],
    ];
    for args in cases {
        let (code, v) = env.json(&args);
        assert_ne!(code, 0, "{args:?} succeeded: {v}");
        assert_eq!(v["success"], false, "{args:?}: {v}");
        assert!(v["error"]["kind"].is_string(), "{args:?}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{args:?}: {v}"
        );
        assert_eq!(
            v["exit_code"].as_i64(),
            Some(i64::from(code)),
            "{args:?}: {v}"
        );
    }
    // A state the tool never had is not printed either: the live state is
    // unchanged by all of the above.
    assert!(!env.db().exists());
    let _ = full_state;
}
