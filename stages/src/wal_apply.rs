//! The `wal-apply` stage: builds the database of the plan's restore point in
//! the staging directory with [`rebuild::build_database`] (the snapshot, then
//! each page's newest version up to the txid, written once, fsynced), which
//! proves the result page-exactly against the database checksum the capture
//! recorded. It then decodes the plan's event objects and hands them, with
//! the target time, to event-replay on the emitted staged database.
//!
//! The file is `<staging_dir>/restore-<txid>-<pid>.db`; the pid lets the next
//! restore tell a crashed run's leftovers from a running one's
//! ([`crate::restore::clean_staging_dir`]). Settings: `staging_dir` (config
//! key, else the pipeline parameter, else `.genesis/recovery`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Deserialize;

use genesis_core::lock::sibling;
use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, DecompressedObject, Emit, Stage,
    StageContext, StageFactory, StagedDatabase,
};
use genesis_core::plan::RestorePlan;
use genesis_core::rebuild::{build_database, RebuildInput};
use genesis_core::repo::formats::decode_events;
use genesis_core::repo::ObjectKind;
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
        .or_else(|| rest.strip_suffix(".db-journal"))?;
    let (txid, pid) = rest.split_once('-')?;
    Some((txid.parse().ok()?, pid.parse().ok()?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalApplyConfig {
    staging_dir: Option<String>,
}

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
        &[ArtifactKind::StagedDatabase]
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
        }))
    }
}

struct WalApply {
    config: WalApplyConfig,
    plan: Option<Arc<RestorePlan>>,
    objects: Vec<DecompressedObject>,
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
    for suffix in ["-wal", "-shm", "-journal"] {
        remove_if_exists(&sibling(path, suffix))?;
    }
    remove_if_exists(path)
}

impl Stage for WalApply {
    fn process(&mut self, input: Artifact, _ctx: &StageContext, _out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::Plan(plan) => self.plan = Some(plan),
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
        let snapshot = self
            .objects
            .iter()
            .find(|o| o.manifest.kind == ObjectKind::Snapshot && o.manifest.id == plan.snapshot.id)
            .ok_or_else(|| {
                Error::corrupt(&plan.snapshot.id, "the snapshot never arrived at wal-apply")
            })?;
        // By id: a day-long chain has tens of thousands of objects.
        let by_id: HashMap<&str, &DecompressedObject> = self
            .objects
            .iter()
            .map(|o| (o.manifest.id.as_str(), o))
            .collect();
        let mut segments = Vec::with_capacity(plan.segments.len());
        for m in &plan.segments {
            let o = by_id
                .get(m.id.as_str())
                .ok_or_else(|| Error::corrupt(&m.id, "the segment never arrived at wal-apply"))?;
            let raw = o
                .frames
                .first()
                .ok_or_else(|| Error::corrupt(&m.id, "a segment without content"))?;
            segments.push((m.as_ref(), raw.as_slice()));
        }

        let staging = PathBuf::from(
            settings::text(&self.config.staging_dir, &ctx.params, "staging_dir")
                .unwrap_or_else(|| DEFAULT_STAGING_DIR.to_string()),
        );
        std::fs::create_dir_all(&staging)
            .map_err(|e| Error::io("create the staging directory", &staging, e))?;
        let path = staging.join(staged_file_name(plan.point.txid, std::process::id()));
        // A stale -wal beside a fresh file would be replayed onto it by SQLite.
        remove_staged(&path)?;
        ctx.progress.start("wal-apply", Some(plan.point.db_pages));
        let built = build_database(
            &RebuildInput {
                snapshot: &plan.snapshot,
                snapshot_frames: &snapshot.frames,
                segments,
                target_txid: plan.point.txid,
                expected_checksum: &plan.point.checksum,
            },
            &path,
        );
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

        let events = plan
            .events
            .par_iter()
            .filter_map(|m| by_id.get(m.id.as_str()).map(|o| (m, o)))
            .map(|(m, o)| {
                let raw = o
                    .frames
                    .first()
                    .ok_or_else(|| Error::corrupt(&m.id, "an event object without content"))?;
                decode_events(&m.id, raw).map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        drop(by_id);
        self.objects.clear();
        // A time target replays up to it; a fallback to another kind of
        // target replays the events the plan chose (bounded by its objects).
        let target_time = plan.replay_until;
        out.emit(Artifact::StagedDatabase(Box::new(StagedDatabase {
            path,
            txid: built.txid,
            generation: plan.point.generation.clone(),
            checksum: built.checksum,
            pages: built.pages,
            page_size: built.page_size,
            point_time: Some(plan.point.time),
            target_time,
            events,
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
        assert_eq!(parse_staged_file_name("restore-x-1.db"), None);
        assert_eq!(parse_staged_file_name("other.db"), None);
    }
}
