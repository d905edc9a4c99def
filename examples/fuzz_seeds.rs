//! Writes the seed corpora of the fuzz targets (`fuzz/`, see its
//! `src/lib.rs` for each target's input layout) from real objects: it
//! simulates a small trading database (512-byte pages, so that every seed
//! stays a few KB), captures it with `backup full` and two `backup sync`
//! steps, and writes each manifest, object, the saved capture state, the WAL
//! with the position the capture saved, exchange files of the simulated
//! open orders and the shipped pipelines as seeds.
//!
//! ```bash
//! cargo run --example fuzz_seeds -- fuzz/seeds
//! ```
//!
//! `scripts/fuzz.sh` runs it when a target has no seeds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use genesis_core::capture::{backup_full, backup_sync, CaptureOptions};
use genesis_core::objects::decompress_object;
use genesis_core::repo::{Manifest, ObjectKind, Repository, WalPosition};
use genesis_trading::simulate::{exchange_open_orders_binance, Simulator};
use rusqlite::Connection;
use serde_json::{json, Value};

fn write(out: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))
}

/// The `object` target's layout: kind, raw size, frames, stored bytes.
fn object_input(m: &Manifest, stored: &[u8]) -> Vec<u8> {
    let kind = match m.kind {
        ObjectKind::Snapshot => 0u8,
        ObjectKind::Segment => 1,
        ObjectKind::Events => 2,
    };
    let mut out = vec![kind];
    out.extend_from_slice(&m.raw_size.to_le_bytes());
    out.extend_from_slice(&(m.frames.len() as u16).to_le_bytes());
    for f in &m.frames {
        for v in [f.raw_offset, f.raw_len, f.comp_offset, f.comp_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(stored);
    out
}

/// The `wal` target's layout: a capture position, a frame limit, the WAL.
fn wal_input(from: &WalPosition, upto: u32, wal: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [
        from.salt1,
        from.salt2,
        from.checkpoint_seq,
        from.frame,
        from.cksum1,
        from.cksum2,
        upto,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(wal);
    out
}

/// The same orders in CCXT's unified shape.
fn as_ccxt(binance: &Value) -> Value {
    let orders = binance.as_array().cloned().unwrap_or_default();
    Value::Array(
        orders
            .iter()
            .map(|o| {
                let symbol = o["symbol"].as_str().unwrap_or_default();
                let unified = symbol
                    .strip_suffix("USDT")
                    .map_or(symbol.to_string(), |b| format!("{b}/USDT"));
                json!({
                    "id": o["orderId"].to_string(),
                    "clientOrderId": o["clientOrderId"],
                    "symbol": unified,
                    "type": o["type"].as_str().unwrap_or_default().to_lowercase(),
                    "side": o["side"].as_str().unwrap_or_default().to_lowercase(),
                    "price": o["price"].as_str().and_then(|p| p.parse::<f64>().ok()),
                    "amount": o["origQty"].as_str().and_then(|p| p.parse::<f64>().ok()),
                    "filled": o["executedQty"].as_str().and_then(|p| p.parse::<f64>().ok()),
                    "status": "open",
                })
            })
            .collect(),
    )
}

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".to_string()),
    );
    let tmp = tempfile::tempdir()?;
    let db = tmp.path().join("genesis.db");
    let repo_dir = tmp.path().join("backups");
    let repo = Repository::open_local(&repo_dir, true)?;

    let mut conn = Connection::open(&db)?;
    conn.execute_batch("PRAGMA page_size=512; PRAGMA journal_mode=WAL;")?;
    let mut sim = Simulator::open(&conn, 1)?;
    for _ in 0..8 {
        sim.commit_one(&mut conn)?;
    }
    backup_full(
        CaptureOptions::new(&db),
        repo.clone(),
        Duration::from_secs(10),
    )?;
    let saved = genesis_core::capture::SavedState::load(&repo)?.context("no capture state")?;
    for _ in 0..3 {
        sim.commit_one(&mut conn)?;
    }
    // The WAL as the next capture finds it, cut to at most 8 KB at a frame
    // boundary (a valid prefix).
    let wal = std::fs::read(genesis_core::wal::wal_path(&db))?;
    let frame = 24 + 512;
    let keep = (32 + ((8192 - 32) / frame) * frame).min(wal.len());
    let wal = &wal[..keep];
    write(
        &out,
        "wal",
        "from-start",
        &wal_input(&WalPosition::default(), 0, wal),
    )?;
    write(
        &out,
        "wal",
        "from-saved-position",
        &wal_input(&saved.wal, 4, wal),
    )?;
    backup_sync(CaptureOptions::new(&db), repo.clone())?;
    for _ in 0..3 {
        sim.commit_one(&mut conn)?;
    }
    backup_sync(CaptureOptions::new(&db), repo.clone())?;

    let (manifests, bad) = repo.load_manifests()?;
    anyhow::ensure!(bad.is_empty(), "unreadable manifests: {bad:?}");
    let mut docs = Vec::new();
    for m in &manifests {
        let json = serde_json::to_vec_pretty(m)?;
        write(&out, "manifest", &format!("{}.json", m.id), &json)?;
        docs.push(json);
        let stored = repo.read_object(m)?;
        write(&out, "object", &m.id, &object_input(m, &stored))?;
        let frames = decompress_object(m, &stored)?;
        match m.kind {
            ObjectKind::Segment => write(&out, "segment", &m.id, &frames[0])?,
            ObjectKind::Events => write(&out, "events", &m.id, &frames[0])?,
            ObjectKind::Snapshot => {}
        }
    }
    let mut all = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            all.extend_from_slice(b"---\n");
        }
        all.extend_from_slice(d);
        all.push(b'\n');
    }
    write(&out, "manifest", "whole-repository", &all)?;

    let state_dir = repo_dir.join("state");
    let mut state = std::fs::read(state_dir.join("capture.json"))?;
    state.push(0);
    state.extend_from_slice(&std::fs::read(state_dir.join("pages.bin"))?);
    write(&out, "capture_state", "saved", &state)?;

    // The exchange target reconciles against Simulator seed 7 after 200
    // commits in memory: these files are that database's open orders.
    let mut mem = Connection::open_in_memory()?;
    let mut sim = Simulator::open(&mem, 7)?;
    for _ in 0..200 {
        sim.commit_one(&mut mem)?;
    }
    let clean = exchange_open_orders_binance(&mem, None)?;
    let planted = exchange_open_orders_binance(&mem, Some(3))?;
    write(
        &out,
        "exchange",
        "binance.json",
        &serde_json::to_vec(&clean)?,
    )?;
    write(
        &out,
        "exchange",
        "binance-planted.json",
        &serde_json::to_vec(&planted)?,
    )?;
    write(
        &out,
        "exchange",
        "ccxt.json",
        &serde_json::to_vec(&as_ccxt(&planted))?,
    )?;
    write(&out, "exchange", "empty.json", b"[]")?;

    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for entry in std::fs::read_dir(&pipelines)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            let text = std::fs::read(&path)?;
            write(&out, "pipeline", &name, &text)?;
            let mut with_set = b"target=latest\nstrict=true\n\0".to_vec();
            with_set.extend_from_slice(&text);
            write(&out, "pipeline", &format!("set-{name}"), &with_set)?;
        }
    }
    println!("seeds written to {}", out.display());
    Ok(())
}
