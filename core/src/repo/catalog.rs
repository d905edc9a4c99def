//! The catalog: every readable manifest, organised by generation, and the
//! questions a restore asks of it (which restore points exist, which chain of
//! objects rebuilds a txid, where a chain is broken).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::lost::LostSet;
use crate::repo::{BadManifest, Manifest, ObjectKind};

/// One instant the repository can restore to: a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoint {
    pub generation: String,
    pub txid: u64,
    /// Commit time as observed by the capturer.
    pub time: DateTime<Utc>,
    /// Database checksum at this txid (hex).
    pub checksum: String,
    pub db_pages: u64,
}

/// The objects of one generation, ordered.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub id: String,
    /// Snapshots by txid.
    pub snapshots: Vec<Arc<Manifest>>,
    /// Segments of level 0 (what capture steps wrote) by first txid.
    pub segments: Vec<Arc<Manifest>>,
    /// Compacted segments (level 1 and up) by first txid, then level.
    pub compacted: Vec<Arc<Manifest>>,
    /// Event objects by first sequence number.
    pub events: Vec<Arc<Manifest>>,
}

/// The chain that rebuilds one txid.
#[derive(Debug, Clone)]
pub struct Chain {
    pub generation: String,
    pub snapshot: Arc<Manifest>,
    /// Segments after the snapshot, contiguous, up to the one holding
    /// `point`: at each step the object of the highest level that extends
    /// the range furthest without passing the target.
    pub segments: Vec<Arc<Manifest>>,
    /// The restore point the chain reaches.
    pub point: RestorePoint,
    /// Set when the asked-for point lies beyond a gap: what is missing.
    pub gap: Option<String>,
}

impl Generation {
    /// Every restore point of the generation, in txid order (snapshots' points
    /// and every transaction of every segment), deduplicated by txid.
    pub fn restore_points(&self) -> Vec<RestorePoint> {
        let mut by_txid: BTreeMap<u64, RestorePoint> = BTreeMap::new();
        for s in &self.snapshots {
            for t in &s.transactions {
                by_txid.entry(t.txid).or_insert_with(|| RestorePoint {
                    generation: self.id.clone(),
                    txid: t.txid,
                    time: t.time,
                    checksum: t.checksum.clone(),
                    db_pages: t.db_pages,
                });
            }
        }
        for s in self.compacted.iter().chain(&self.segments) {
            for t in &s.transactions {
                by_txid.insert(
                    t.txid,
                    RestorePoint {
                        generation: self.id.clone(),
                        txid: t.txid,
                        time: t.time,
                        checksum: t.checksum.clone(),
                        db_pages: t.db_pages,
                    },
                );
            }
        }
        by_txid.into_values().collect()
    }

    /// Every manifest of the generation, every kind and level.
    pub fn manifests(&self) -> impl Iterator<Item = &Arc<Manifest>> {
        self.snapshots
            .iter()
            .chain(&self.segments)
            .chain(&self.compacted)
            .chain(&self.events)
    }

    /// The first and last txid and time the generation covers.
    pub fn span(&self) -> Option<(RestorePoint, RestorePoint)> {
        let pts = self.restore_points();
        Some((pts.first()?.clone(), pts.last()?.clone()))
    }

    /// The chain that rebuilds `txid`: the newest snapshot at or before it and
    /// the contiguous segments after it. When a segment is missing, the chain
    /// stops at the last reachable txid and `gap` says what is missing.
    ///
    /// # Errors
    /// `Error::Usage` when no snapshot of the generation is at or before `txid`.
    pub fn chain_to(&self, txid: u64) -> Result<Chain> {
        let snapshot = self
            .snapshots
            .iter()
            .filter(|s| s.txid_max <= txid)
            .max_by_key(|s| s.txid_max)
            .cloned()
            .ok_or_else(|| self.no_snapshot(txid))?;
        self.chain_from(&snapshot, txid, &LostSet::default())
    }

    /// The chain toward `txid` that reaches furthest without any object in
    /// `lost`: every usable snapshot at or before `txid` is tried (a later
    /// snapshot after a gap wins when it reaches further; the newest wins a
    /// tie, as it reads fewer segments).
    ///
    /// # Errors
    /// `Error::Usage` when no snapshot of the generation is at or before
    /// `txid`; `Error::Failed` when every such snapshot is lost.
    pub fn best_chain(&self, txid: u64, lost: &LostSet) -> Result<Chain> {
        let candidates: Vec<&Arc<Manifest>> = self
            .snapshots
            .iter()
            .filter(|s| s.txid_max <= txid)
            .collect();
        if candidates.is_empty() {
            return Err(self.no_snapshot(txid));
        }
        let mut best: Option<Chain> = None;
        for s in candidates.iter().filter(|s| !lost.contains(&s.id)) {
            let chain = self.chain_from(s, txid, lost)?;
            if best
                .as_ref()
                .is_none_or(|b| chain.point.txid >= b.point.txid)
            {
                best = Some(chain);
            }
        }
        best.ok_or_else(|| {
            Error::Failed(format!(
                "every full backup of generation {} at or before txid {txid} is unusable: {}",
                self.id,
                candidates
                    .iter()
                    .filter_map(|s| lost.get(&s.id))
                    .map(|l| format!("{} ({})", l.id, l.problem))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })
    }

    fn no_snapshot(&self, txid: u64) -> Error {
        Error::Usage(format!(
            "generation {} has no snapshot at or before txid {txid}",
            self.id
        ))
    }

    /// The chain from `snapshot` toward `txid`, stopping before the first
    /// txid no usable segment holds.
    fn chain_from(&self, snapshot: &Arc<Manifest>, txid: u64, lost: &LostSet) -> Result<Chain> {
        let snap_txn = snapshot.transactions.first().cloned().ok_or_else(|| {
            Error::corrupt(
                &snapshot.id,
                "snapshot manifest records no transaction point",
            )
        })?;
        let mut point = RestorePoint {
            generation: self.id.clone(),
            txid: snap_txn.txid,
            time: snap_txn.time,
            checksum: snap_txn.checksum.clone(),
            db_pages: snap_txn.db_pages,
        };
        let mut segments = Vec::new();
        let mut next = snapshot.txid_max + 1;
        let mut gap = None;
        while next <= txid {
            match self.next_object(next, txid, lost) {
                Some(seg) => {
                    segments.push(seg.clone());
                    for t in &seg.transactions {
                        if t.txid <= txid {
                            point = RestorePoint {
                                generation: self.id.clone(),
                                txid: t.txid,
                                time: t.time,
                                checksum: t.checksum.clone(),
                                db_pages: t.db_pages,
                            };
                        }
                    }
                    next = seg.txid_max + 1;
                }
                None => {
                    gap = Some(self.describe_gap(next, lost));
                    break;
                }
            }
        }
        Ok(Chain {
            generation: self.id.clone(),
            snapshot: snapshot.clone(),
            segments,
            point,
            gap,
        })
    }

    /// The usable object that starts at `next` and reaches furthest toward
    /// `target`: a compacted one only when its end (its one restore point)
    /// is at or before the target, else the level-0 segment, which holds
    /// every transaction. Compaction merges whole runs of the level below,
    /// so objects never overlap partly and this greedy choice reads the
    /// fewest objects.
    fn next_object(&self, next: u64, target: u64, lost: &LostSet) -> Option<&Arc<Manifest>> {
        let compacted = self
            .compacted
            .iter()
            .filter(|s| s.txid_min == next && s.txid_max <= target && !lost.contains(&s.id))
            .max_by_key(|s| (s.txid_max, s.level));
        let level0 = self
            .segments
            .iter()
            .find(|s| s.txid_min == next && !lost.contains(&s.id));
        match (compacted, level0) {
            (Some(c), Some(l)) if l.txid_max.min(target) > c.txid_max => Some(l),
            (Some(c), _) => Some(c),
            (None, l) => l,
        }
    }

    /// What keeps txid `next` out of reach.
    fn describe_gap(&self, next: u64, lost: &LostSet) -> String {
        let known: Vec<String> = lost
            .of(&self.id, ObjectKind::Segment)
            .filter(|l| {
                l.parts
                    .as_ref()
                    .and_then(|p| p.txids)
                    .is_some_and(|(a, _)| a == next)
            })
            .map(|l| format!("incremental backup {} {}", l.id, l.problem))
            .collect();
        if !known.is_empty() {
            return known.join("; ");
        }
        let after = self
            .segments
            .iter()
            .filter(|s| s.txid_min > next)
            .map(|s| s.txid_min)
            .min();
        match after {
            Some(a) => format!(
                "the incremental backups for txids {next}..{} of generation {} are missing",
                a - 1,
                self.id
            ),
            None => format!(
                "no incremental backup holds txid {next} of generation {}",
                self.id
            ),
        }
    }
}

/// All manifests of a repository, by generation.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Generations in the order they were started: by the first txid any of
    /// their manifests holds (a new generation's txids continue after the
    /// repository's last), then by id. An id sorts by creation time only to
    /// the second: two generations started within one second (a capturer
    /// restarted quickly) have ids in random order.
    pub generations: Vec<Generation>,
    /// Manifests that could not be read.
    pub bad: Vec<BadManifest>,
}

impl Catalog {
    /// Organises manifests into generations.
    pub fn new(manifests: Vec<Manifest>, bad: Vec<BadManifest>) -> Self {
        let mut gens: BTreeMap<String, Generation> = BTreeMap::new();
        for m in manifests {
            let g = gens
                .entry(m.generation.clone())
                .or_insert_with(|| Generation {
                    id: m.generation.clone(),
                    ..Default::default()
                });
            let m = Arc::new(m);
            match m.kind {
                ObjectKind::Snapshot => g.snapshots.push(m),
                ObjectKind::Segment if m.is_compacted() => g.compacted.push(m),
                ObjectKind::Segment => g.segments.push(m),
                ObjectKind::Events => g.events.push(m),
            }
        }
        let mut generations: Vec<Generation> = gens.into_values().collect();
        for g in &mut generations {
            g.snapshots.sort_by_key(|s| s.txid_max);
            g.segments.sort_by_key(|s| (s.txid_min, s.txid_max));
            g.compacted
                .sort_by_key(|s| (s.txid_min, s.level, s.txid_max));
            g.events.sort_by_key(|e| (e.seq_min, e.seq_max));
        }
        generations.sort_by_cached_key(|g| (g.manifests().map(|m| m.txid_min).min(), g.id.clone()));
        Catalog { generations, bad }
    }

    /// All manifests, every kind.
    pub fn manifests(&self) -> impl Iterator<Item = &Arc<Manifest>> {
        self.generations.iter().flat_map(|g| g.manifests())
    }

    /// A manifest by id.
    pub fn find(&self, id: &str) -> Option<&Arc<Manifest>> {
        self.manifests().find(|m| m.id == id)
    }

    /// A generation by id.
    pub fn generation(&self, id: &str) -> Option<&Generation> {
        self.generations.iter().find(|g| g.id == id)
    }

    /// Every restore point of every generation, oldest first.
    pub fn restore_points(&self) -> Vec<RestorePoint> {
        let mut all: Vec<RestorePoint> = self
            .generations
            .iter()
            .flat_map(|g| g.restore_points())
            .collect();
        all.sort_by_key(|p| (p.time, p.txid));
        all
    }

    /// The newest restore point, if any.
    pub fn latest_point(&self) -> Option<RestorePoint> {
        self.restore_points()
            .into_iter()
            .max_by_key(|p| (p.txid, p.time))
    }

    /// The last restore point observed at or before `t`.
    ///
    /// # Errors
    /// `Error::Usage` naming the range that exists when `t` is before the first
    /// restore point or the repository is empty.
    pub fn point_at_or_before(&self, t: DateTime<Utc>) -> Result<RestorePoint> {
        let points = self.restore_points();
        let (first, last) = match (points.first(), points.last()) {
            (Some(f), Some(l)) => (f, l),
            _ => return Err(Error::Usage("the backup repository holds no restore point yet: run `genesis-recovery backup full` or `backup replicate` first".into())),
        };
        points
            .iter()
            .rev()
            .find(|p| p.time <= t)
            .cloned()
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{} is before the first backup: restore points exist from {} to {}",
                    crate::time::format_rfc3339(t),
                    crate::time::format_exact(first.time),
                    crate::time::format_exact(last.time)
                ))
            })
    }

    /// The restore point of a txid.
    ///
    /// # Errors
    /// `Error::Usage` naming the txid range that exists.
    pub fn point_for_txid(&self, txid: u64) -> Result<RestorePoint> {
        let points = self.restore_points();
        if let Some(p) = points.iter().find(|p| p.txid == txid) {
            return Ok(p.clone());
        }
        let lo = points.iter().map(|p| p.txid).min();
        let hi = points.iter().map(|p| p.txid).max();
        Err(Error::Usage(match (lo, hi) {
            (Some(lo), Some(hi)) => format!(
                "txid {txid} is not a restore point: the repository holds txids {lo}..={hi}"
            ),
            _ => "the backup repository holds no restore point yet".to_string(),
        }))
    }

    /// The chain that rebuilds a restore point.
    ///
    /// # Errors
    /// `Error::Usage` when the generation is unknown or has no snapshot before it.
    pub fn chain_to(&self, point: &RestorePoint) -> Result<Chain> {
        self.generation(&point.generation)
            .ok_or_else(|| Error::Usage(format!("unknown generation {}", point.generation)))?
            .chain_to(point.txid)
    }

    /// The largest txid recorded anywhere (0 for an empty repository).
    pub fn max_txid(&self) -> u64 {
        self.manifests()
            .filter(|m| m.kind != ObjectKind::Events)
            .map(|m| m.txid_max)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(generation: &str, txid: u64) -> Manifest {
        let mut m = Manifest::for_test(
            &format!("full_{generation}_{txid:012}"),
            ObjectKind::Snapshot,
        );
        m.generation = generation.to_string();
        m.txid_min = txid;
        m.txid_max = txid;
        m
    }

    #[test]
    fn generations_are_in_the_order_they_were_started_not_of_their_ids() {
        // Two generations started within one second: their ids share the
        // timestamp and sort by their random suffix, here against the order
        // of their txids (a new generation's txids follow the repository's).
        let first = "20261201T155210-f53154";
        let second = "20261201T155210-2131cd";
        let c = Catalog::new(
            vec![
                snapshot(second, 22),
                snapshot(first, 1),
                snapshot(first, 12),
            ],
            Vec::new(),
        );
        let ids: Vec<&str> = c.generations.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, [first, second]);
    }
}
