//! The restore plan: what a restore was asked for and which objects reach it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repo::catalog::RestorePoint;
use crate::repo::lost::LostObject;
use crate::repo::Manifest;

/// What the user asked to restore to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The last restore point observed at or before this instant (and events up to it).
    Time { at: DateTime<Utc> },
    /// A named backup: a snapshot's txid, or a segment's last txid.
    BackupId { id: String },
    /// An exact txid.
    Txid { txid: u64 },
    /// The newest restore point.
    Latest,
}

/// The resolved plan of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub target: Target,
    /// The restore point the chain reaches.
    pub point: RestorePoint,
    #[serde(skip)]
    pub snapshot: Arc<Manifest>,
    #[serde(skip)]
    pub segments: Vec<Arc<Manifest>>,
    /// Event objects with events after the point (for event replay).
    #[serde(skip)]
    pub events: Vec<Arc<Manifest>>,
    pub page_size: u32,
    /// Set when a gap (a missing, unreadable or damaged object or manifest)
    /// lies between the chain and the target: what is lost, the point used
    /// instead, and whether the event archive bridges the gap.
    pub fallback: Option<Fallback>,
    /// The txid the target asked for, before any fallback.
    pub requested_txid: u64,
    /// The instant archived events are replayed up to: the target for a time
    /// target; for a fallback to a txid, a backup or the latest point, the
    /// newest `created_at` of the events the plan reads (events are then
    /// bounded by the objects chosen); `None`: no replay.
    pub replay_until: Option<DateTime<Utc>>,
    /// Whether the event archive the plan reads reaches the target without a
    /// gap (checked again against the staged database by event-replay).
    pub archive_complete: bool,
    /// The instant the target stands for: the target time, else the
    /// requested restore point's commit time (for a point whose manifest is
    /// unreadable, the newest time the repository knows before it: the true
    /// instant is later).
    pub requested_time: Option<DateTime<Utc>>,
    /// Unreadable manifests whose key names no object, so whose place in the
    /// chain cannot be told (reported with the restore; refused by strict).
    pub unplaced_manifests: Vec<LostObject>,
}

/// How a restore got around a gap (the `fallback` of a restore result).
#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    /// What is missing or damaged, each piece named.
    pub gap: String,
    /// The objects the restore could not use.
    pub lost: Vec<LostObject>,
    /// The point the target asked for, in words.
    pub requested: String,
    /// The restore point the database was rebuilt at instead.
    pub point_used: RestorePoint,
    /// The full backup the chain starts from.
    pub full_backup_used: String,
    /// Whether the event archive covers everything from the point used to
    /// the target, so that replay makes the trading tables exact.
    pub archive_reaches_target: bool,
    /// Events replayed from the point used (filled in after the replay).
    pub events_replayed: u64,
}

impl RestorePlan {
    /// How many objects the plan reads, by kind and level: `snapshot`,
    /// `L0` (what capture steps wrote), `L1` and up (compacted), `events`.
    pub fn objects_by_level(&self) -> std::collections::BTreeMap<String, usize> {
        let mut n = std::collections::BTreeMap::new();
        n.insert("snapshot".to_string(), 1);
        for s in &self.segments {
            *n.entry(format!("L{}", s.level)).or_default() += 1;
        }
        if !self.events.is_empty() {
            n.insert("events".to_string(), self.events.len());
        }
        n
    }

    /// The objects the plan reads, in the order the stages pass them on:
    /// the segments (txid order), the event objects, then the snapshot. The
    /// segments come first so that wal-apply knows every page they replace
    /// before the snapshot streams, and writes each page once.
    pub fn delivery_order(&self) -> Vec<Arc<Manifest>> {
        self.segments
            .iter()
            .chain(self.events.iter())
            .chain(std::iter::once(&self.snapshot))
            .cloned()
            .collect()
    }

    /// Ids of the objects the plan reads, in [`Self::delivery_order`].
    pub fn object_ids(&self) -> Vec<String> {
        self.delivery_order().iter().map(|m| m.id.clone()).collect()
    }
}
