//! Listing backups and retention (`list-backups`, `backup prune`).
//!
//! Retention removes whole chains only. A chain is a snapshot, the segments
//! after it up to the next snapshot of its generation, and the event objects
//! read in that span. Chains are removed oldest first, and only while every
//! restore point of the chain is older than the cutoff and at least
//! `keep_full` newer snapshots remain; so no restore point that is kept ever
//! loses an object it needs. Manifests are removed before their objects (an
//! object without a manifest is invisible), and objects left without a
//! manifest by a crash are removed once they are an hour old.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::repo::{Manifest, ObjectKind, Repository};

/// One row of `list-backups`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub backup_id: String,
    /// `full` or `incremental` (or `events` with `--all`).
    pub backup_type: String,
    /// The newest instant the backup reaches (UTC, RFC 3339).
    pub timestamp: String,
    pub size_bytes: u64,
    /// BLAKE3 of the stored bytes.
    pub checksum: String,
    pub generation: String,
    pub txid_min: u64,
    pub txid_max: u64,
    /// Database checksum after the backup (full and incremental).
    pub db_checksum: Option<String>,
    /// Restore points the object holds: every transaction of a level-0
    /// segment, the span's end of a compacted one.
    pub transactions: usize,
    /// Compaction level of a segment (0: written by a capture step).
    pub level: u32,
}

impl BackupEntry {
    /// The row of one manifest.
    pub fn of(m: &Manifest) -> BackupEntry {
        BackupEntry {
            backup_id: m.id.clone(),
            backup_type: m.kind.backup_type().to_string(),
            // Every digit: given back to `restore --timestamp`, it restores this point.
            timestamp: crate::time::format_exact(m.time_max),
            size_bytes: m.compressed_size,
            checksum: m.blake3_compressed.clone(),
            generation: m.generation.clone(),
            txid_min: m.txid_min,
            txid_max: m.txid_max,
            db_checksum: m.db_checksum_after.clone(),
            transactions: m.transactions.len(),
            level: m.level,
        }
    }
}

/// Lists backups newest first, those reaching `since` or later.
///
/// # Errors
/// Backend failures.
pub fn list_backups(
    repo: &Repository,
    since: Option<DateTime<Utc>>,
    include_events: bool,
) -> Result<Vec<BackupEntry>> {
    let catalog = repo.catalog()?;
    let mut rows: Vec<BackupEntry> = catalog
        .manifests()
        .filter(|m| include_events || m.kind != ObjectKind::Events)
        .filter(|m| since.is_none_or(|s| m.time_max >= s))
        .map(|m| BackupEntry::of(m))
        .collect();
    rows.sort_by(|a, b| {
        (b.txid_max, &b.timestamp, &b.backup_id).cmp(&(a.txid_max, &a.timestamp, &a.backup_id))
    });
    Ok(rows)
}

/// What `prune` removed (or would remove).
#[derive(Debug, Clone, Serialize, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    pub removed: Vec<String>,
    pub removed_bytes: u64,
    pub kept_snapshots: usize,
    pub orphans_removed: Vec<String>,
    /// The oldest restore point still available afterwards.
    pub oldest_kept: Option<String>,
    /// Level-0 retention (filled in by the caller).
    pub level0: crate::compact::prune::Level0Prune,
}

struct ChainSet {
    objects: Vec<Arc<Manifest>>,
    newest: DateTime<Utc>,
}

/// Removes whole chains older than `keep_days`, keeping at least `keep_full` snapshots.
///
/// # Errors
/// Backend failures.
pub fn prune(
    repo: &Repository,
    keep_days: u32,
    keep_full: usize,
    dry_run: bool,
) -> Result<PruneReport> {
    let catalog = repo.catalog()?;
    // Checked: a retention longer than the calendar keeps everything.
    let cutoff = Utc::now()
        .checked_sub_signed(ChronoDuration::days(i64::from(keep_days)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut chains: Vec<ChainSet> = Vec::new();
    for g in &catalog.generations {
        for (i, s) in g.snapshots.iter().enumerate() {
            let end = g
                .snapshots
                .get(i + 1)
                .map(|n| n.txid_max)
                .unwrap_or(u64::MAX);
            let mut objects = vec![s.clone()];
            objects.extend(
                g.segments
                    .iter()
                    .chain(&g.compacted)
                    .filter(|x| x.txid_min > s.txid_max && x.txid_min <= end)
                    .cloned(),
            );
            objects.extend(
                g.events
                    .iter()
                    .filter(|e| e.txid_min >= s.txid_max && e.txid_min < end)
                    .cloned(),
            );
            let newest = objects
                .iter()
                .map(|m| m.time_max)
                .max()
                .unwrap_or(s.time_max);
            chains.push(ChainSet { objects, newest });
        }
    }
    chains.sort_by_key(|c| c.newest);
    let total = chains.len();
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    let mut removable = 0;
    for (i, c) in chains.iter().enumerate() {
        let remaining_after = total - (i + 1);
        if c.newest < cutoff && remaining_after >= keep_full.max(1) {
            removable = i + 1;
        } else {
            break;
        }
    }
    let mut removed_ids = BTreeSet::new();
    let leased = crate::repo::read_leases::leased_objects(repo)?;
    for c in &chains[..removable] {
        if c.objects.iter().any(|m| leased.contains(&m.id)) {
            tracing::info!(
                "a restore in progress reads the chain of {}: kept",
                c.objects[0].id
            );
            report.kept_snapshots += 1;
            continue;
        }
        for m in &c.objects {
            if !removed_ids.insert(m.id.clone()) {
                continue;
            }
            report.removed.push(m.id.clone());
            report.removed_bytes += m.compressed_size;
            if !dry_run {
                repo.delete_object(m)?;
            }
        }
    }
    report.kept_snapshots += total - removable;
    report.oldest_kept = chains
        .get(removable)
        .and_then(|c| c.objects.first())
        .map(|m| crate::time::format_rfc3339(m.time_min));
    // Objects without a manifest (a crash between the two writes).
    let known: BTreeSet<String> = catalog.manifests().map(|m| m.object_key()).collect();
    for dir in ["snapshots", "segments", "events"] {
        for key in repo.backend().list(dir)? {
            if known.contains(&key) {
                continue;
            }
            let id = key
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".zst")
                .to_string();
            if repo
                .backend()
                .exists(&Manifest::manifest_key(&id))
                .unwrap_or(true)
            {
                continue;
            }
            if is_old_orphan(repo, &key) {
                report.orphans_removed.push(key.clone());
                if !dry_run {
                    repo.backend().delete(&key)?;
                }
            }
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

fn is_old_orphan(repo: &Repository, key: &str) -> bool {
    // Only local repositories expose modification times; elsewhere keep orphans.
    let desc = repo.backend().describe();
    let Some(root) = desc.strip_prefix("local directory ") else {
        return false;
    };
    std::fs::metadata(std::path::Path::new(root).join(key))
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().map(|e| e.as_secs() > 3600).unwrap_or(false))
        .unwrap_or(false)
}
