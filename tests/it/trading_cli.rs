//! The trading commands as a user runs them: validate, recover-positions,
//! reconcile-orders, drill, demo, and retention.

use crate::common::{Env, Store};

fn simulated(commits: &str) -> Env {
    simulated_on(Store::Local, commits)
}

fn simulated_on(store: Store, commits: &str) -> Env {
    let env = Env::on(store);
    let o = env.run(&[
        "simulate",
        "--rate",
        "0",
        "--max-commits",
        commits,
        "--checkpoint-every",
        "200",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env
}

#[test]
fn validate_passes_a_clean_database_and_names_a_broken_balance() {
    let env = simulated("800");
    let (code, v) = env.json(&["validate"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["is_consistent"], true);
    assert!(v["errors"].as_array().unwrap().is_empty());
    assert!(v["metrics"].as_object().is_some_and(|m| !m.is_empty()));
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let asset: String = c
        .query_row(
            "SELECT asset FROM balances ORDER BY asset LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "UPDATE balances SET total_balance = total_balance + 5 WHERE asset = ?1",
        [&asset],
    )
    .unwrap();
    drop(c);
    let (code, v) = env.json(&["validate"]);
    assert_eq!(code, 3, "{v}");
    let errs = v["errors"].as_array().unwrap();
    assert!(
        errs.iter()
            .any(|e| e["message"].as_str().unwrap().contains(&asset)),
        "{v}"
    );
    let text = String::from_utf8_lossy(&env.run(&["validate"]).stdout).to_string();
    assert!(text.contains("Validation errors"), "{text}");
}

#[test]
fn recover_positions_matches_the_table_and_names_a_divergence() {
    let env = simulated("800");
    let (code, v) = env.json(&["recover-positions"]);
    assert_eq!(code, 0, "{v}");
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let total: i64 = c
        .query_row("SELECT count(*) FROM positions", [], |r| r.get(0))
        .unwrap();
    let open: i64 = c
        .query_row(
            "SELECT count(*) FROM positions WHERE status = 'open'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v["total_positions"].as_i64(), Some(total));
    assert_eq!(v["open_positions"].as_i64(), Some(open));
    assert!(v["divergences"].as_array().unwrap().is_empty(), "{v}");
    let id: String = c
        .query_row(
            "SELECT position_id FROM positions WHERE status = 'open' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "UPDATE positions SET quantity = quantity * 3 WHERE position_id = ?1",
        [&id],
    )
    .unwrap();
    drop(c);
    let (_, v) = env.json(&["recover-positions"]);
    let d = v["divergences"].as_array().unwrap();
    assert!(
        d.iter()
            .any(|f| f["message"].as_str().unwrap().contains(&id)),
        "{v}"
    );
    let text = String::from_utf8_lossy(&env.run(&["recover-positions"]).stdout).to_string();
    assert!(
        text.contains("Total positions:") && text.contains("Open positions:"),
        "{text}"
    );
}

#[test]
fn reconcile_orders_reports_discrepancies_with_exit_4_and_refuses_bad_files() {
    let env = simulated("800");
    let c = rusqlite::Connection::open(env.db()).unwrap();
    let clean = genesis_trading::simulate::exchange_open_orders_binance(&c, None).unwrap();
    let planted = genesis_trading::simulate::exchange_open_orders_binance(&c, Some(5)).unwrap();
    drop(c);
    let f = env.path().join("clean.json");
    std::fs::write(&f, serde_json::to_vec(&clean).unwrap()).unwrap();
    let (code, v) = env.json(&["reconcile-orders", "--exchange-orders", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["is_reconciled"], true);
    let f = env.path().join("planted.json");
    std::fs::write(&f, serde_json::to_vec(&planted).unwrap()).unwrap();
    let o = env.run(&["reconcile-orders", "--exchange-orders", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.contains("Discrepancies found")
            && text.contains("Missing in DB:")
            && text.contains("Cancel local order:"),
        "{text}"
    );
    let bad = env.path().join("bad.json");
    std::fs::write(&bad, br#"[{"symbol": "BTCUSDT", "orderId": 1}]"#).unwrap();
    let o = env.run(&[
        "reconcile-orders",
        "--exchange-orders",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.contains("bad.json") && e.contains("missing"), "{e}");
    std::fs::write(&bad, b"not json").unwrap();
    let o = env.run(&[
        "reconcile-orders",
        "--exchange-orders",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn drill_writes_prometheus_metrics_and_never_touches_the_live_database() {
    let env = simulated("600");
    assert!(env.run(&["backup", "full"]).status.success());
    let before = std::fs::read(env.db()).unwrap();
    let metrics = env.path().join("drill.prom");
    let (code, v) = env.json(&["drill", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["success"], true);
    assert!(v["rto_seconds"].as_f64().unwrap() > 0.0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    for m in [
        "genesis_recovery_drill_rto_seconds",
        "genesis_recovery_drill_rpo_seconds",
        "genesis_recovery_drill_validation_pass",
    ] {
        assert!(text.contains(m), "{m} missing from\n{text}");
    }
    assert_eq!(std::fs::read(env.db()).unwrap(), before);
    // A damaged repository fails the drill.
    let snap = std::fs::read_dir(env.repo().join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = std::fs::read(&snap).unwrap();
    let i = b.len() / 2;
    b[i] ^= 1;
    std::fs::write(&snap, b).unwrap();
    let o = env.run(&["drill"]);
    assert_ne!(o.status.code(), Some(0));
}

#[test]
fn demo_recovers_and_reports() {
    let env = Env::new();
    let dir = env.path().join("demo");
    let (code, v) = env.json(&["demo", "--dir", dir.to_str().unwrap(), "--trade-for", "3s"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["after_recovery"], v["before_incident"]);
    assert!(v["after_incident"]["positions"].as_i64() == Some(0));
    assert!(v["validation_passed"] == true);
    assert!(v["found_discrepancies"].as_u64().unwrap() >= 1);
    assert!(v["rto_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn prune_removes_whole_old_chains_and_keeps_every_kept_point_restorable() {
    prune_whole_chains(Store::Local);
}

#[test]
fn prune_removes_whole_old_chains_and_keeps_every_kept_point_restorable_on_s3() {
    prune_whole_chains(Store::S3);
}

fn prune_whole_chains(store: Store) {
    let env = simulated_on(store, "300");
    let app = rusqlite::Connection::open(env.db()).unwrap();
    app.query_row("SELECT count(*) FROM events", [], |_| Ok(()))
        .unwrap();
    for i in 0..4 {
        assert!(env.run(&["backup", "full"]).status.success());
        for j in 0..2 {
            let seed = (10 * i + j + 2).to_string();
            assert!(env
                .run(&[
                    "simulate",
                    "--rate",
                    "0",
                    "--max-commits",
                    "40",
                    "--seed",
                    &seed
                ])
                .status
                .success());
            assert!(env.run(&["backup", "sync"]).status.success());
        }
    }
    drop(app);
    let repo = env.open_repo();
    let before = repo.catalog().unwrap();
    let snaps_before: usize = before.generations.iter().map(|g| g.snapshots.len()).sum();
    assert!(snaps_before >= 4);
    let (code, v) = env.json(&[
        "backup",
        "prune",
        "--keep-days",
        "0",
        "--keep-full",
        "2",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{v}");
    assert!(!v["removed"].as_array().unwrap().is_empty());
    assert_eq!(
        repo.catalog().unwrap().manifests().count(),
        before.manifests().count(),
        "dry run removed something"
    );
    let (code, v) = env.json(&["backup", "prune", "--keep-days", "0", "--keep-full", "2"]);
    assert_eq!(code, 0, "{v}");
    let after = repo.catalog().unwrap();
    let snaps_after: usize = after.generations.iter().map(|g| g.snapshots.len()).sum();
    assert_eq!(snaps_after, 2);
    assert_eq!(
        after.latest_point(),
        before.latest_point(),
        "the newest point must survive"
    );
    // Every restore point left is restorable.
    for p in after.restore_points() {
        let chain = after.chain_to(&p).unwrap();
        assert!(chain.gap.is_none(), "txid {} lost its chain", p.txid);
        let out = env.path().join("p.db");
        genesis_core::rebuild::rebuild(&repo, &chain, &p, &out).unwrap();
    }
    let (code, v) = env.json(&["verify-backups"]);
    assert_eq!(code, 0, "{v}");
    // A long retention removes nothing.
    let (_, v) = env.json(&["backup", "prune", "--keep-days", "30"]);
    assert!(v["removed"].as_array().unwrap().is_empty());
}
