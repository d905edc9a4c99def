//! Event replay with an event-handler plugin (the workspace's funding-payment
//! cdylib, built by this test): a FUNDING_PAYMENT archived after the restore
//! point is applied through the plugin, and a statement that changes another
//! number of rows than the plugin expects fails the restore naming the event.
//! A pipeline plugin stage placed between wal-apply and event-replay (the
//! passthrough cdylib) passes the archived events on: the replay is the same.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::plan::Target;
use genesis_core::progress::NoProgress;
use genesis_core::repo::Repository;
use genesis_stages::{restore, RestoreOptions};
use rusqlite::Connection;

/// Builds a workspace plugin (`genesis-plugin-NAME`) into this test's
/// profile directory and returns its library.
fn workspace_plugin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        &format!("genesis-plugin-{name}"),
    ]);
    if profile.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile.join(format!(
        "{}genesis_plugin_{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// Writes a FUNDING_PAYMENT event and its effect, as the trading system would.
fn funding(w: &Connection, asset: &str, amount: f64) -> chrono::DateTime<chrono::Utc> {
    let seq: i64 = w
        .query_row("SELECT max(sequence_number) + 1 FROM events", [], |r| {
            r.get(0)
        })
        .unwrap();
    let now = chrono::Utc::now();
    let t = genesis_core::time::format_trading(now);
    w.execute(
        "INSERT INTO events VALUES (?1, 'FUNDING_PAYMENT', ?2, ?3, ?4, ?5)",
        rusqlite::params![
            format!("fund-{seq}"),
            format!("funding-{asset}"),
            serde_json::json!({"asset": asset, "amount": amount}).to_string(),
            seq,
            t
        ],
    )
    .unwrap();
    w.execute(
        "UPDATE balances SET free_balance = free_balance + ?1, total_balance = total_balance + ?1, updated_at = ?2 WHERE asset = ?3",
        rusqlite::params![amount, t, asset],
    )
    .unwrap();
    // Trading's `created_at` has microseconds: the instant as written.
    genesis_core::time::parse_timestamp(&t).unwrap()
}

#[test]
fn funding_payments_replay_through_the_plugin_and_expect_changes_is_enforced() {
    let plugin = workspace_plugin("funding-payment");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("genesis.db");
    let mut w = Connection::open(&db).unwrap();
    w.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let mut sim = genesis_trading::simulate::Simulator::open(&w, 3).unwrap();
    let repo = dir.path().join("repo");
    let mut cap = Capturer::open(
        CaptureOptions::new(&db),
        Repository::open_local(&repo, true).unwrap(),
    )
    .unwrap();
    for _ in 0..30 {
        sim.commit_one(&mut w).unwrap();
    }
    cap.step(false).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let at = funding(&w, "USDT", 12.5);
    let hash = genesis_trading::state_hash(&w).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let bad_at = funding(&w, "DOGE", 1.0);
    cap.step(false).unwrap();
    cap.finish().unwrap();

    let pipeline = dir.path().join("funding.toml");
    let text = format!(
        "{}\n[stages.config]\nplugins = [{:?}]\n",
        genesis_stages::restore::RESTORE_PIPELINE
            .split("[[stages]]\nid = \"validate\"")
            .next()
            .unwrap(),
        plugin.display().to_string()
    );
    std::fs::write(&pipeline, &text).unwrap();

    let mut o = RestoreOptions::new(&repo, &db, Target::Time { at });
    o.staging_dir = dir.path().join("staging");
    o.pipeline = Some(pipeline.clone());
    o.output = Some(dir.path().join("funded.db"));
    let r = restore(&o, Arc::new(NoProgress)).unwrap();
    assert_eq!(r.events_replayed, 1, "{r:?}");
    let replay = r.replay.unwrap();
    assert_eq!(replay["handled_by_extension"], 1, "{replay}");
    let c = Connection::open(dir.path().join("funded.db")).unwrap();
    assert_eq!(genesis_trading::state_hash(&c).unwrap(), hash);

    // A plugin stage between wal-apply and event-replay gets the staged
    // database and passes the archived events on to the replay.
    let between = dir.path().join("between.toml");
    let stage = format!(
        "[[stages]]\nid = \"between\"\ntype = \"plugin\"\nlibrary = {:?}\n\n",
        workspace_plugin("passthrough").display().to_string()
    );
    let replay_stage = "[[stages]]\nid = \"event-replay\"";
    assert!(text.contains(replay_stage));
    std::fs::write(
        &between,
        text.replace(replay_stage, &format!("{stage}{replay_stage}")),
    )
    .unwrap();
    let mut o = RestoreOptions::new(&repo, &db, Target::Time { at });
    o.staging_dir = dir.path().join("staging");
    o.pipeline = Some(between);
    o.output = Some(dir.path().join("funded-between.db"));
    let r = restore(&o, Arc::new(NoProgress)).unwrap();
    assert_eq!(r.events_replayed, 1, "{r:?}");
    assert!(r.stages.iter().any(|s| s.id == "between"), "{:?}", r.stages);
    let c = Connection::open(dir.path().join("funded-between.db")).unwrap();
    assert_eq!(genesis_trading::state_hash(&c).unwrap(), hash);

    // No DOGE balance: the plugin's UPDATE changes 0 rows where it expects 1.
    let mut o = RestoreOptions::new(&repo, &db, Target::Time { at: bad_at });
    o.staging_dir = dir.path().join("staging");
    o.pipeline = Some(pipeline);
    o.dry_run = true;
    let err = restore(&o, Arc::new(NoProgress)).unwrap_err().to_string();
    assert!(err.contains("FUNDING_PAYMENT"), "{err}");
    assert!(
        err.contains("plugin_statement_changed_another_number_of_rows"),
        "{err}"
    );
}
