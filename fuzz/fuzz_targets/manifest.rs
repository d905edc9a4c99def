//! Manifests: JSON parse and validation (`Manifest::from_json`), then what a
//! restore and `verify-backups` do with the manifests alone: the catalog,
//! its restore points and chains, the plan of every kind of target, and the
//! repository check (the objects themselves are absent).
#![no_main]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use genesis_core::plan::Target;
use genesis_core::repo::{parse_checksum, Catalog, Manifest, Repository};
use genesis_fuzz::{split_documents, MemBackend};
use libfuzzer_sys::{fuzz_mutator, fuzz_target};

/// The key a manifest is stored under: the one its own id names, so that the
/// fuzzer reaches past the key check (a mismatch is still tried below).
fn key_of(doc: &[u8]) -> String {
    let id = serde_json::from_slice::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .unwrap_or_else(|| "x".to_string());
    Manifest::manifest_key(&id)
}

fuzz_target!(|data: &[u8]| {
    let mut manifests = Vec::new();
    let mut stored = Vec::new();
    for doc in split_documents(data) {
        let key = key_of(doc);
        let _ = Manifest::from_json("manifests/other.json", doc);
        if let Ok(m) = Manifest::from_json(&key, doc) {
            let _ = m.object_key();
            for t in &m.transactions {
                let _ = parse_checksum(&m.id, &t.checksum);
            }
            manifests.push(m);
        }
        stored.push((key, doc.to_vec()));
    }
    let catalog = Catalog::new(manifests, Vec::new());
    let now = DateTime::<Utc>::from_timestamp(4_000_000_000, 0).unwrap_or_default();
    let mut targets = vec![
        Target::Latest,
        Target::Txid { txid: 0 },
        Target::Txid { txid: u64::MAX },
        Target::Time {
            at: DateTime::<Utc>::MIN_UTC,
        },
        Target::Time { at: now },
    ];
    for p in catalog.restore_points().iter().take(16) {
        targets.push(Target::Txid { txid: p.txid });
        targets.push(Target::Time { at: p.time });
        let _ = catalog.chain_to(p);
    }
    for m in catalog.manifests().take(16) {
        targets.push(Target::BackupId { id: m.id.clone() });
    }
    for g in &catalog.generations {
        let _ = g.span();
    }
    let _ = catalog.max_txid();
    for t in &targets {
        let _ = genesis_stages::resolve_plan(&catalog, t, false, now);
        let _ = genesis_stages::resolve_plan(&catalog, t, true, now);
    }
    // verify-backups over the same manifests, read back through a repository.
    let repo = Repository::new(Arc::new(MemBackend::with_objects(stored)));
    let _ = genesis_core::verify::verify_repository(&repo, None);
});

// A quarter of the mutations set one JSON number to an edge value.
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed & 3 == 0 {
        if let Some(n) = genesis_fuzz::mutate_json_number(data, size, max_size, seed) {
            return n;
        }
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max_size)
});
