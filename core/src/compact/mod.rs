//! Compaction levels (DESIGN.md §2): level 0 is what a capture step writes;
//! level k merges the level k-1 objects whose span ends inside one window of
//! `levels[k-1]` (windows aligned to the Unix epoch, by the commit time of
//! each object's last transaction) into one object holding the newest
//! version of each page, so that a restore reads O(levels) objects whatever
//! the chain's length ([`crate::repo::catalog::Generation::chain_to`]).
//!
//! - A window is compacted once it is complete: a later object of the level
//!   below exists in the generation, or the window ended a grace period ago
//!   (the smaller of its span and 10 s; a capture step stamps its commits
//!   when it reads them, so nothing stamped inside a window arrives later).
//! - Each window's inputs are split at any txid gap: an object only ever
//!   merges a contiguous run, whole objects of the level below, so objects
//!   of different levels never overlap partly.
//! - An input that fails its checks is never merged: the window is skipped,
//!   the error logged and counted; the level-0 objects stay usable.
//! - Writing is the repository's: the object, then its manifest, the commit
//!   point. A crash at any moment leaves at most an object without a
//!   manifest, which the next run writes again (the same id and content).
//! - Compaction deletes nothing; `backup prune` removes level-0 objects
//!   beyond their retention once a compacted object covers them.

pub mod check;
pub mod merge;
pub mod prune;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::catalog::Catalog;
use crate::repo::{Manifest, ObjectKind, Repository, MAX_LEVEL};

/// The default spans of levels 1, 2 and 3.
pub const DEFAULT_LEVELS: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(5 * 60),
    Duration::from_secs(60 * 60),
];

/// The default spans scaled so that one capture step that took `per_step`
/// stands for one second of 1 s syncs (benchmarks that make an hour's chain
/// in a minute): level 1 rounded to a millisecond, the others exact
/// multiples of it, so that windows nest.
pub fn scaled_defaults(per_step: Duration) -> Vec<Duration> {
    let l1 = Duration::from_millis(((per_step.as_secs_f64() * 30_000.0).round() as u64).max(1));
    vec![l1, l1 * 10, l1 * 120]
}

/// What one compaction run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// Ids of the objects written, oldest level first.
    pub created: Vec<String>,
    /// Objects written per level (`"L1"`: 3).
    pub per_level: BTreeMap<String, u64>,
    /// Level-below objects merged into them.
    pub inputs: u64,
    pub bytes_written: u64,
    /// Windows skipped because an input failed its checks (each logged).
    pub skipped: Vec<String>,
}

/// Checks configured level spans: 1 to 9 levels, each longer than the one
/// below (so that windows nest).
///
/// # Errors
/// `Error::Usage` naming the level.
pub fn check_levels(levels: &[Duration]) -> Result<()> {
    if levels.len() > MAX_LEVEL as usize {
        return Err(Error::Usage(format!(
            "{} compaction levels configured; at most {MAX_LEVEL} are allowed",
            levels.len()
        )));
    }
    for (i, span) in levels.iter().enumerate() {
        if span.as_micros() == 0 {
            return Err(Error::Usage(format!(
                "compaction level {} has a zero span: give each level a duration such as 30s",
                i + 1
            )));
        }
        if i > 0 && span.as_micros() % levels[i - 1].as_micros() != 0 {
            return Err(Error::Usage(format!(
                "compaction level {} ({:?}) is not a multiple of level {} ({:?}): each level's span must be a multiple of the one below, so that its windows nest",
                i + 1,
                span,
                i,
                levels[i - 1]
            )));
        }
    }
    Ok(())
}

/// The compaction state of a repository: every segment by generation and
/// level, kept in memory so that a long-running capturer compacts without
/// listing the repository again.
pub struct Compactor {
    repo: Repository,
    levels: Vec<Duration>,
    /// generation -> level -> objects by first txid.
    objects: BTreeMap<String, Vec<BTreeMap<u64, Arc<Manifest>>>>,
}

impl Compactor {
    /// The compactor of a repository's current catalog.
    ///
    /// # Errors
    /// `Error::Usage` for bad level spans.
    pub fn new(repo: Repository, levels: Vec<Duration>, catalog: &Catalog) -> Result<Compactor> {
        check_levels(&levels)?;
        let mut c = Compactor {
            repo,
            levels,
            objects: BTreeMap::new(),
        };
        for g in &catalog.generations {
            for m in g.segments.iter().chain(&g.compacted) {
                c.add(m.clone());
            }
        }
        Ok(c)
    }

    /// Records a segment written since (by the capturer).
    pub fn add(&mut self, m: Arc<Manifest>) {
        if m.kind != ObjectKind::Segment || m.level as usize > self.levels.len() {
            return;
        }
        let by_level = self.objects.entry(m.generation.clone()).or_default();
        if by_level.len() <= m.level as usize {
            by_level.resize_with(m.level as usize + 1, BTreeMap::new);
        }
        by_level[m.level as usize].insert(m.txid_min, m);
    }

    /// Forgets a generation's objects (pruned).
    pub fn forget(&mut self, generation: &str) {
        self.objects.remove(generation);
    }

    /// Compacts every complete window of every level, lowest level first, so
    /// that the objects one run writes at level k feed level k+1 at once.
    ///
    /// # Errors
    /// Repository failures writing an object (inputs that fail their checks
    /// are skipped and reported instead).
    pub fn run(&mut self, now: DateTime<Utc>) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        let gens: Vec<String> = self.objects.keys().cloned().collect();
        for g in gens {
            for level in 1..=self.levels.len() as u32 {
                for run in self.complete_runs(&g, level, now) {
                    self.compact_run(&run, level, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// The runs of level `level - 1` objects of generation `g` whose window
    /// is complete and which no level `level` object covers yet.
    fn complete_runs(&self, g: &str, level: u32, now: DateTime<Utc>) -> Vec<Vec<Arc<Manifest>>> {
        let Some(by_level) = self.objects.get(g) else {
            return Vec::new();
        };
        let Some(below) = by_level.get(level as usize - 1) else {
            return Vec::new();
        };
        let span = self.levels[level as usize - 1];
        let span_us = span.as_micros().max(1) as i64;
        let grace = span.min(Duration::from_secs(10));
        let done = |m: &Manifest| {
            by_level.get(level as usize).is_some_and(|objs| {
                objs.range(..=m.txid_min)
                    .next_back()
                    .is_some_and(|(_, c)| c.txid_max >= m.txid_min)
            })
        };
        let window = |m: &Manifest| m.time_max.timestamp_micros().div_euclid(span_us);
        let newest_window = below.values().map(|m| window(m)).max();
        let mut runs: Vec<Vec<Arc<Manifest>>> = Vec::new();
        let mut current: Vec<Arc<Manifest>> = Vec::new();
        for m in below.values() {
            if done(m) {
                continue;
            }
            let w = window(m);
            let window_end = DateTime::<Utc>::from_timestamp_micros((w + 1) * span_us);
            let complete = newest_window.is_some_and(|n| n > w)
                || window_end.is_some_and(|end| {
                    now >= end + chrono::Duration::from_std(grace).unwrap_or_default()
                });
            let continues = current
                .last()
                .is_some_and(|p| window(p) == w && p.txid_max + 1 == m.txid_min);
            if !continues && !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
            if complete {
                current.push(m.clone());
            }
        }
        if !current.is_empty() {
            runs.push(current);
        }
        runs
    }

    fn compact_run(
        &mut self,
        run: &[Arc<Manifest>],
        level: u32,
        report: &mut CompactReport,
    ) -> Result<()> {
        let merged = match merge::merge_run(&self.repo, run) {
            Ok(m) => m,
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => {
                let what = format!(
                    "level {level} window of {} objects from {}: {e}",
                    run.len(),
                    run[0].id
                );
                tracing::error!("compaction skipped a {what}; the objects below stay in use");
                report.skipped.push(what);
                return Ok(());
            }
        };
        let (compressed, manifest) = merge::encode_compacted(run, level, &merged)?;
        self.repo.write_object(&manifest, &compressed)?;
        report.created.push(manifest.id.clone());
        *report.per_level.entry(format!("L{level}")).or_default() += 1;
        report.inputs += run.len() as u64;
        report.bytes_written += compressed.len() as u64;
        self.add(Arc::new(manifest));
        Ok(())
    }
}

/// Compacts a repository once (`backup compact`, and the benchmarks).
///
/// # Errors
/// As [`Compactor::run`]; repository failures reading the catalog.
pub fn compact_repository(
    repo: &Repository,
    levels: &[Duration],
    now: DateTime<Utc>,
) -> Result<CompactReport> {
    let catalog = repo.catalog()?;
    let report = Compactor::new(repo.clone(), levels.to_vec(), &catalog)?.run(now)?;
    // The manifests no pack holds yet, so that loading the catalog costs
    // few reads (repo::packs).
    let packed = repo.pack_manifests(1)?;
    if packed > 0 {
        tracing::info!(manifests = packed, "packed manifests");
    }
    Ok(report)
}
