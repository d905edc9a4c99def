//! The `wal-apply` stage: builds the database of the plan's restore point in
//! the staging directory with [`StreamingBuild`], each page written once:
//! the segments arrive first (fetch sends them before the snapshot), so when
//! the snapshot's first part comes, each page's newest version up to the
//! txid is written and the segments are dropped; then the snapshot's parts
//! are written as they arrive (but for the pages the segments replaced) and
//! dropped; one fsync. The build proves the result page-exactly against the
//! database checksum the capture recorded. It then emits the plan's event
//! objects (decompressed, not decoded: event-replay decodes them beside its
//! replay) as one `archived-events` artifact
//! (always, empty when the plan reads none) ahead of the staged database,
//! which carries the instant event-replay replays up to.
//!
//! Until the snapshot comes, the segments are held in memory up to
//! `segment_memory_mib` (config key, default 256) of raw content; each
//! segment past that goes to a spool file beside the staged one
//! (`<staged>-spool`, removed once its pages are written), with only an index
//! of its pages kept ([`genesis_core::rebuild::spool`]): what wal-apply holds
//! stays bounded however many segments the plan reads.
//!
//! The file is `<staging_dir>/restore-<txid>-<pid>.db`; the pid lets the next
//! restore tell a crashed run's leftovers from a running one's
//! ([`crate::restore::clean_staging_dir`]). Settings: `staging_dir` (config
//! key, else the pipeline parameter, else `.genesis/recovery`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use genesis_core::lock::sibling;
use genesis_core::pipeline::{
    decode_config, ArchivedEvents, Artifact, ArtifactKind, BuildContext, DecompressedObject, Emit,
    EncodedEvents, Stage, StageContext, StageFactory, StagedDatabase,
};
use genesis_core::plan::RestorePlan;
use genesis_core::rebuild::spool::{Spool, SpooledSegment};
use genesis_core::rebuild::stream::{Segment, StreamingBuild};
use genesis_core::repo::{Manifest, ObjectKind};
use genesis_core::{Error, Result};

use crate::settings;

/// Default staging directory.
pub const DEFAULT_STAGING_DIR: &str = ".genesis/recovery";

/// The staged file name of a restore to `txid` by process `pid`.
pub fn staged_file_name(txid: u64, pid: u32) -> String {
    format!("restore-{txid}-{pid}.db")
}

/// Parses a staged file name back into `(txid, pid)`.
pub fn parse_staged_file_name(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix("restore-")?;
    let rest = rest
        .strip_suffix(".db")
        .or_else(|| rest.strip_suffix(".db-wal"))
        .or_else(|| rest.strip_suffix(".db-shm"))
        .or_else(|| rest.strip_suffix(".db-journal"))
        .or_else(|| rest.strip_suffix(".db-spool"))?;
    let (txid, pid) = rest.split_once('-')?;
    Some((txid.parse().ok()?, pid.parse().ok()?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalApplyConfig {
    staging_dir: Option<String>,
    /// Raw segment content held in memory before the snapshot, in MiB.
    segment_memory_mib: Option<u64>,
}

/// Default of `segment_memory_mib`.
const DEFAULT_SEGMENT_MEMORY_MIB: u64 = 256;

/// The `wal-apply` stage type.
pub struct WalApplyFactory;

impl StageFactory for WalApplyFactory {
    fn type_name(&self) -> &str {
        "wal-apply"
    }
    fn description(&self) -> &str {
        "builds the database at the restore point in the staging directory and proves its checksum"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan, ArtifactKind::VerifiedObject]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::ArchivedEvents, ArtifactKind::StagedDatabase]
    }
    fn requires(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan]
    }
    fn build(
        &self,
        config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let config: WalApplyConfig = decode_config(config)?;
        Ok(Box::new(WalApply {
            config,
            plan: None,
            objects: Vec::new(),
            held: 0,
            spool: None,
            spooled: Vec::new(),
            build: None,
        }))
    }
}

struct WalApply {
    config: WalApplyConfig,
    plan: Option<Arc<RestorePlan>>,
    /// Segments (until the snapshot arrives) and event objects (the
    /// snapshot goes to `build` as it comes).
    objects: Vec<DecompressedObject>,
    /// Raw bytes of the segments in `objects`.
    held: u64,
    /// The segments past the memory budget, until the snapshot comes.
    spool: Option<Spool>,
    spooled: Vec<(Arc<Manifest>, SpooledSegment)>,
    /// The staged file being built, and its path.
    build: Option<(StreamingBuild, PathBuf)>,
}

impl WalApply {
    /// The staged file of `plan` (its folder created).
    fn staged_path(&self, plan: &RestorePlan, ctx: &StageContext) -> Result<PathBuf> {
        let staging = PathBuf::from(
            settings::text(&self.config.staging_dir, &ctx.params, "staging_dir")
                .unwrap_or_else(|| DEFAULT_STAGING_DIR.to_string()),
        );
        std::fs::create_dir_all(&staging)
            .map_err(|e| Error::io("create the staging directory", &staging, e))?;
        Ok(staging.join(staged_file_name(plan.point.txid, std::process::id())))
    }

    /// Keeps a segment that arrived before the snapshot: in memory while the
    /// budget allows, else in the spool.
    fn segment(&mut self, o: DecompressedObject, ctx: &StageContext) -> Result<()> {
        let budget = self
            .config
            .segment_memory_mib
            .unwrap_or(DEFAULT_SEGMENT_MEMORY_MIB)
            .saturating_mul(1 << 20);
        let raw_len = o.raw_len();
        let Some(plan) = self.plan.clone().filter(|_| self.held + raw_len > budget) else {
            self.held += raw_len;
            self.objects.push(o);
            return Ok(());
        };
        let raw = o
            .frames
            .first()
            .ok_or_else(|| Error::corrupt(&o.manifest.id, "a segment without content"))?;
        if self.spool.is_none() {
            let path = sibling(&self.staged_path(&plan, ctx)?, "-spool");
            self.spool = Some(Spool::create(&path)?);
        }
        if let Some(spool) = &mut self.spool {
            let spooled = spool.add(&o.manifest, raw)?;
            self.spooled.push((Arc::clone(&o.manifest), spooled));
        }
        Ok(())
    }

    /// Writes a part (or the whole) of the plan's snapshot to the staged file,
    /// which the first part creates.
    fn snapshot_part(&mut self, o: &DecompressedObject, ctx: &StageContext) -> Result<()> {
        let plan = self.plan.as_ref().ok_or_else(|| {
            Error::Failed("wal-apply received a snapshot before the restore plan; put `fetch` first in the pipeline".into())
        })?;
        if o.manifest.id != plan.snapshot.id {
            return Err(Error::corrupt(&o.manifest.id, "is not the plan's snapshot"));
        }
        let first = o.part.map_or(0, |p| p.first_frame);
        if self.build.is_none() {
            if first != 0 {
                return Err(Error::corrupt(
                    &o.manifest.id,
                    "the snapshot's first part never arrived",
                ));
            }
            let path = self.staged_path(plan, ctx)?;
            // A stale -wal beside a fresh file would be replayed onto it by
            // SQLite (the spool, if any, is beside it already).
            for suffix in ["-wal", "-shm", "-journal"] {
                remove_if_exists(&sibling(&path, suffix))?;
            }
            remove_if_exists(&path)?;
            ctx.progress.start("wal-apply", Some(plan.point.db_pages));
            if let Some(spool) = &self.spool {
                let raw: u64 = self.spooled.iter().map(|(_, s)| s.raw_len()).sum();
                tracing::info!(
                    "{} segments ({:.1} MiB raw) past the {} MiB held in memory are read back from {}",
                    self.spooled.len(),
                    raw as f64 / f64::from(1 << 20),
                    self.held >> 20,
                    spool.path().display()
                );
            }
            let build = {
                let segments = plan_segments(plan, &self.objects, &self.spooled)?;
                StreamingBuild::with_spool(
                    &plan.snapshot,
                    &segments,
                    self.spool.as_ref(),
                    plan.point.txid,
                    &path,
                )?
            };
            // Their pages are written: only the event objects are kept.
            self.objects
                .retain(|o| o.manifest.kind == ObjectKind::Events);
            self.held = 0;
            self.spooled.clear();
            self.spool = None;
            self.build = Some((build, path));
        }
        if let Some((b, _)) = &mut self.build {
            b.frames(first, &o.frames)?;
        }
        Ok(())
    }
}

/// The plan's segments, in txid order, from the objects that arrived (held
/// in memory) and those spooled.
///
/// # Errors
/// `Error::Corrupt` naming a segment that has not arrived.
fn plan_segments<'a>(
    plan: &'a RestorePlan,
    objects: &'a [DecompressedObject],
    spooled: &'a [(Arc<Manifest>, SpooledSegment)],
) -> Result<Vec<Segment<'a>>> {
    // By id: a chain that is not compacted yet can have thousands of objects.
    let by_id: HashMap<&str, &DecompressedObject> = objects
        .iter()
        .map(|o| (o.manifest.id.as_str(), o))
        .collect();
    let in_spool: HashMap<&str, &SpooledSegment> =
        spooled.iter().map(|(m, s)| (m.id.as_str(), s)).collect();
    plan.segments
        .iter()
        .map(|m| {
            if let Some(s) = in_spool.get(m.id.as_str()) {
                return Ok(Segment::Spooled(m.as_ref(), s));
            }
            let o = by_id.get(m.id.as_str()).ok_or_else(|| {
                Error::corrupt(
                    &m.id,
                    "had not arrived at wal-apply when the snapshot did (fetch sends the segments first)",
                )
            })?;
            let raw = o
                .frames
                .first()
                .ok_or_else(|| Error::corrupt(&m.id, "a segment without content"))?;
            Ok(Segment::Memory(m.as_ref(), raw.as_slice()))
        })
        .collect()
}

/// Removes a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Removes a staged database and its SQLite side files.
pub(crate) fn remove_staged(path: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal", "-spool"] {
        remove_if_exists(&sibling(path, suffix))?;
    }
    remove_if_exists(path)
}

impl Stage for WalApply {
    fn process(&mut self, input: Artifact, ctx: &StageContext, _out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::Plan(plan) => self.plan = Some(plan),
            Artifact::VerifiedObject(o) if o.manifest.kind == ObjectKind::Snapshot => {
                self.snapshot_part(&o, ctx)?
            }
            Artifact::VerifiedObject(o)
                if o.manifest.kind == ObjectKind::Segment && self.build.is_some() =>
            {
                return Err(Error::corrupt(
                    &o.manifest.id,
                    "arrived at wal-apply after the snapshot; the segments must come first (as fetch sends them)",
                ))
            }
            Artifact::VerifiedObject(o) if o.manifest.kind == ObjectKind::Segment => {
                self.segment(o, ctx)?
            }
            Artifact::VerifiedObject(o) => self.objects.push(o),
            other => {
                return Err(Error::Failed(format!(
                    "wal-apply does not take {} artifacts",
                    other.kind().name()
                )))
            }
        }
        Ok(())
    }

    fn finish(&mut self, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        let plan = self.plan.clone().ok_or_else(|| {
            Error::Failed(
                "wal-apply received no restore plan; put `fetch` first in the pipeline".into(),
            )
        })?;
        let (build, path) = self.build.take().ok_or_else(|| {
            Error::corrupt(&plan.snapshot.id, "the snapshot never arrived at wal-apply")
        })?;
        let built = build.finish(&plan.point.checksum);
        ctx.progress.finish("wal-apply");
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                if let Err(cleanup) = remove_staged(&path) {
                    tracing::warn!("cannot remove the partial staged database: {cleanup}");
                }
                return Err(e);
            }
        };
        tracing::info!(path = %path.display(), txid = built.txid, checksum = %built.checksum, "database rebuilt and proven");
        let by_id: HashMap<&str, &DecompressedObject> = self
            .objects
            .iter()
            .map(|o| (o.manifest.id.as_str(), o))
            .collect();

        // Decoded by event-replay, beside the replay (each object's content
        // checked there, before any of its rows is used).
        let objects = plan
            .events
            .iter()
            .filter_map(|m| by_id.get(m.id.as_str()).map(|o| (m, o)))
            .map(|(m, o)| {
                if o.frames.is_empty() {
                    return Err(Error::corrupt(&m.id, "an event object without content"));
                }
                Ok(EncodedEvents {
                    id: m.id.clone(),
                    frames: Arc::clone(&o.frames),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(by_id);
        self.objects.clear();
        // A time target replays up to it; a fallback to another kind of
        // target replays the events the plan chose (bounded by its objects).
        let target_time = plan.replay_until;
        out.emit(Artifact::ArchivedEvents(ArchivedEvents { objects }))?;
        out.emit(Artifact::StagedDatabase(Box::new(StagedDatabase {
            path,
            txid: built.txid,
            generation: plan.point.generation.clone(),
            checksum: built.checksum,
            pages: built.pages,
            page_size: built.page_size,
            point_time: Some(plan.point.time),
            target_time,
            plan: Some(plan),
            ..StagedDatabase::default()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_round_trip() {
        let n = staged_file_name(42, 7);
        assert_eq!(parse_staged_file_name(&n), Some((42, 7)));
        assert_eq!(parse_staged_file_name(&format!("{n}-wal")), Some((42, 7)));
        assert_eq!(parse_staged_file_name(&format!("{n}-spool")), Some((42, 7)));
        assert_eq!(parse_staged_file_name("restore-x-1.db"), None);
        assert_eq!(parse_staged_file_name("other.db"), None);
    }
}
