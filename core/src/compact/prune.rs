//! Level-0 retention: per-transaction restore points are kept for a window
//! (`compaction.l0_retention`, default 24 h); older level-0 segments are
//! removed once a level-1 object covers them, and only after that object was
//! read back and found equal to a merge of them done again. A level-0
//! segment no verified compacted object covers is kept whatever its age, as
//! is one a read lease names (a restore in progress), and those under a
//! compacted object that a snapshot splits.
//!
//! Restore points inside a removed span are gone; its end stays (the
//! compacted object's point), and event replay keeps every instant exact.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::error::Result;
use crate::repo::{Manifest, Repository};

/// What level-0 retention removed (or would).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Level0Prune {
    pub removed: Vec<String>,
    pub removed_bytes: u64,
    /// Compacted objects that failed the comparison with their inputs (the
    /// inputs are kept; `verify-backups` names the problem).
    pub unverified: Vec<String>,
}

/// Removes level-0 segments older than `retention` that a verified level-1
/// object covers.
///
/// # Errors
/// Backend failures.
pub fn prune_level0(repo: &Repository, retention: Duration, dry_run: bool) -> Result<Level0Prune> {
    let catalog = repo.catalog()?;
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut report = Level0Prune::default();
    let mut doomed: Vec<&Manifest> = Vec::new();
    for g in &catalog.generations {
        for c in g.compacted.iter().filter(|c| c.level == 1) {
            let old: Vec<&Manifest> = g
                .segments
                .iter()
                .filter(|s| s.txid_min >= c.txid_min && s.txid_max <= c.txid_max)
                .map(|s| s.as_ref())
                .collect();
            // A snapshot inside the span starts chains that need these
            // level-0 objects once the chain before it is pruned.
            let splits = g
                .snapshots
                .iter()
                .any(|s| s.txid_max >= c.txid_min && s.txid_max < c.txid_max);
            if old.is_empty() || splits || old.iter().any(|s| s.time_max >= cutoff) {
                continue;
            }
            match super::check::matches_inputs(repo, g, c) {
                Some(true) => doomed.extend(old),
                Some(false) => report.unverified.push(c.id.clone()),
                None => {}
            }
        }
    }
    let leased: BTreeSet<String> = crate::repo::read_leases::leased_objects(repo)?;
    for m in doomed {
        if leased.contains(&m.id) {
            continue;
        }
        report.removed.push(m.id.clone());
        report.removed_bytes += m.compressed_size;
        if !dry_run {
            repo.delete_object(m)?;
        }
    }
    // A pack holding a manifest removed here goes too (repo::packs).
    if !dry_run {
        for key in repo.prune_packs(false)? {
            tracing::info!(pack = %key, "removed a manifest pack that held pruned manifests");
        }
    }
    Ok(report)
}
