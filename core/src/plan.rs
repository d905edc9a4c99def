//! The restore plan: what a restore was asked for and which objects reach it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repo::catalog::RestorePoint;
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
    /// The instant events are replayed up to (the target time, or the point's time).
    pub target_time: Option<DateTime<Utc>>,
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
    /// Set when a gap forced an earlier point than asked for: what happened.
    pub fallback: Option<String>,
    /// The txid the target asked for, before any fallback.
    pub requested_txid: u64,
}

impl RestorePlan {
    /// Ids of the objects the plan reads, in order.
    pub fn object_ids(&self) -> Vec<String> {
        std::iter::once(&self.snapshot)
            .chain(self.segments.iter())
            .chain(self.events.iter())
            .map(|m| m.id.clone())
            .collect()
    }
}
