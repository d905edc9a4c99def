//! The `fetch` stage: resolves the restore plan from the run's parameters and
//! reads every object the plan needs from the repository, in parallel
//! (memory-mapped by the local backend).
//!
//! Settings (a `[stages.config]` key, else the pipeline parameter of the same
//! name):
//! * `repository`: the backup repository directory (default `.genesis/backups`);
//! * `target`: `latest`; an instant (`2025-01-15T12:00:00`, UTC unless an
//!   offset is given); `txid:N`; or `backup:ID` (a snapshot or segment id as
//!   `list-backups` shows it);
//! * `strict`: when the chain to the target has a gap, fail instead of
//!   falling back to the last restore point before the gap (default false).
//!
//! The restore point is the last commit observed at or before the target
//! ([`Catalog::point_at_or_before`]); a named backup restores to its last
//! txid. A target before the first backup names the range that exists; a
//! target in the future is refused, naming the latest restore point (a time
//! that has not happened yet is almost always a typo in the date, and
//! restoring "the latest" silently could hide it). Event objects are fetched
//! only for a time target: they let event-replay reach the target exactly.
//!
//! Emits `plan` first, then every object's compressed bytes in plan order
//! (snapshot, segments, event objects).

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Deserialize;

use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, Emit, FetchedObject, Params, Stage,
    StageContext, StageFactory,
};
use genesis_core::plan::{RestorePlan, Target};
use genesis_core::repo::catalog::RestorePoint;
use genesis_core::repo::{Catalog, ObjectKind, Repository};
use genesis_core::time::{format_rfc3339, parse_timestamp};
use genesis_core::{Error, Result};

use crate::settings;

/// Default repository directory.
pub const DEFAULT_REPOSITORY: &str = ".genesis/backups";

/// Parses a target as pipelines and the CLI write it: `latest`, `txid:N`,
/// `backup:ID`, or a timestamp.
///
/// # Errors
/// `Error::Usage` naming the text and the accepted forms.
pub fn parse_target(text: &str) -> Result<Target> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("latest") {
        return Ok(Target::Latest);
    }
    if let Some(n) = t.strip_prefix("txid:") {
        let txid = n.trim().parse::<u64>().map_err(|_| {
            Error::Usage(format!(
                "bad target {text:?}: `txid:` must be followed by a transaction id, e.g. txid:1234"
            ))
        })?;
        return Ok(Target::Txid { txid });
    }
    if let Some(id) = t.strip_prefix("backup:") {
        let id = id.trim();
        if id.is_empty() {
            return Err(Error::Usage(format!(
                "bad target {text:?}: `backup:` must be followed by a backup id from `list-backups`"
            )));
        }
        return Ok(Target::BackupId { id: id.to_string() });
    }
    match parse_timestamp(t) {
        Ok(at) => Ok(Target::Time { at }),
        Err(_) => Err(Error::Usage(format!(
            "bad target {text:?}: write `latest`, a UTC time such as 2025-01-15T12:00:00, `txid:N`, or `backup:ID`"
        ))),
    }
}

/// The text form of a target, as [`parse_target`] reads it.
pub fn target_text(target: &Target) -> String {
    match target {
        Target::Latest => "latest".to_string(),
        // Full precision: restore points carry nanoseconds, and a target
        // rounded down could fall before the point it names.
        Target::Time { at } => at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        Target::Txid { txid } => format!("txid:{txid}"),
        Target::BackupId { id } => format!("backup:{id}"),
    }
}

/// Resolves the restore plan of `target` against the catalog (see the module
/// documentation). `now` decides what "in the future" means.
///
/// # Errors
/// `Error::Usage` for a target outside what the repository holds (naming what
/// it holds); `Error::Failed` for a gap when `strict`; `Error::Corrupt` for
/// inconsistent manifests.
pub fn resolve_plan(
    catalog: &Catalog,
    target: &Target,
    strict: bool,
    now: DateTime<Utc>,
) -> Result<RestorePlan> {
    let describe = |p: &RestorePoint| format!("txid {} at {}", p.txid, format_rfc3339(p.time));
    let latest = catalog.latest_point();
    let point = match target {
        Target::Latest => latest.clone().ok_or_else(|| {
            Error::Usage("the backup repository holds no restore point yet: run `genesis-recovery backup full` or `backup replicate` first".into())
        })?,
        Target::Time { at } => {
            if *at > now {
                let hint = latest.as_ref().map_or_else(
                    || "the repository holds no restore point yet".to_string(),
                    |p| format!("the latest restore point is {}; to restore it, use `restore --latest` (target `latest` in a pipeline)", describe(p)),
                );
                return Err(Error::Usage(format!(
                    "the target {} is in the future (it is now {}): {hint}",
                    format_rfc3339(*at),
                    format_rfc3339(now)
                )));
            }
            catalog.point_at_or_before(*at)?
        }
        Target::Txid { txid } => catalog.point_for_txid(*txid)?,
        Target::BackupId { id } => backup_point(catalog, id)?,
    };
    let chain = catalog.chain_to(&point)?;
    let fallback = match &chain.gap {
        None => None,
        Some(gap) if strict => {
            return Err(Error::Failed(format!(
                "cannot restore {}: {gap}; the last point reachable before the gap is {} (strict mode refuses to fall back; run without `strict` to restore it)",
                describe(&point),
                describe(&chain.point)
            )))
        }
        Some(gap) => {
            let note = format!(
                "{gap}: restoring {} instead of {}, the last restore point reachable before the gap",
                describe(&chain.point),
                describe(&point)
            );
            tracing::warn!("{note}");
            Some(note)
        }
    };
    let reached = chain.point.clone();
    let generation = catalog
        .generation(&reached.generation)
        .ok_or_else(|| Error::Usage(format!("unknown generation {}", reached.generation)))?;
    let target_time = match target {
        Target::Time { at } => Some(*at),
        _ => Some(reached.time),
    };
    let events = match target {
        // Objects read at or after the point may hold events beyond it;
        // event-replay keeps only those after the database's own.
        Target::Time { at } => generation
            .events
            .iter()
            .filter(|e| e.txid_max >= reached.txid && e.time_min <= *at)
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    Ok(RestorePlan {
        target: target.clone(),
        target_time,
        page_size: chain.snapshot.page_size,
        snapshot: chain.snapshot.clone(),
        segments: chain
            .segments
            .iter()
            .filter(|s| s.txid_min <= reached.txid)
            .cloned()
            .collect(),
        events,
        fallback,
        requested_txid: point.txid,
        point: reached,
    })
}

/// The restore point a named backup stands for: a snapshot's txid, or a segment's last txid.
fn backup_point(catalog: &Catalog, id: &str) -> Result<RestorePoint> {
    let m = catalog.find(id).ok_or_else(|| {
        Error::Usage(format!(
            "no backup with id {id:?} in the repository; `genesis-recovery list-backups` shows the ids"
        ))
    })?;
    if m.kind == ObjectKind::Events {
        return Err(Error::Usage(format!(
            "{id:?} is an event archive object, not a restore point; name a full or incremental backup"
        )));
    }
    catalog
        .generation(&m.generation)
        .and_then(|g| {
            g.restore_points()
                .into_iter()
                .find(|p| p.txid == m.txid_max)
        })
        .ok_or_else(|| {
            Error::corrupt(
                id,
                format!(
                    "the manifest's txid {} is not a restore point of its generation",
                    m.txid_max
                ),
            )
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchConfig {
    repository: Option<String>,
    target: Option<String>,
    strict: Option<bool>,
}

/// The `fetch` stage type.
pub struct FetchFactory;

impl StageFactory for FetchFactory {
    fn type_name(&self) -> &str {
        "fetch"
    }
    fn description(&self) -> &str {
        "resolves the restore plan (target, chain, fallback over gaps) and reads its objects in parallel"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Request]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan, ArtifactKind::FetchedObject]
    }
    fn build(
        &self,
        config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let config: FetchConfig = decode_config(config)?;
        // Check the target's form now, so that a typo fails before anything runs.
        if let Some(t) = settings::text(&config.target, ctx.params, "target") {
            if let Err(e) = parse_target(&t) {
                let key = if config.target.is_some() {
                    "target"
                } else {
                    "config"
                };
                return Err(vec![(key.to_string(), e.to_string())]);
            }
        }
        if let Err(e) = settings::flag(config.strict, ctx.params, "strict", false) {
            return Err(vec![("strict".to_string(), e.to_string())]);
        }
        Ok(Box::new(Fetch { config }))
    }
}

struct Fetch {
    config: FetchConfig,
}

impl Fetch {
    fn plan(&self, params: &Params) -> Result<(Repository, RestorePlan)> {
        let repo_path = PathBuf::from(
            settings::text(&self.config.repository, params, "repository")
                .unwrap_or_else(|| DEFAULT_REPOSITORY.to_string()),
        );
        let target = parse_target(
            &settings::text(&self.config.target, params, "target").unwrap_or_default(),
        )?;
        let strict = settings::flag(self.config.strict, params, "strict", false)?;
        let repo = Repository::open_local(&repo_path, false)?;
        let catalog = repo.catalog()?;
        for bad in &catalog.bad {
            tracing::warn!(key = %bad.key, problem = %bad.problem, "unreadable manifest ignored");
        }
        let plan = resolve_plan(&catalog, &target, strict, Utc::now())?;
        Ok((repo, plan))
    }
}

impl Stage for Fetch {
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        let params = match input {
            Artifact::Request(params) => params,
            other => return out.emit(other),
        };
        let (repo, plan) = self.plan(&params)?;
        tracing::info!(
            txid = plan.point.txid,
            snapshot = %plan.snapshot.id,
            segments = plan.segments.len(),
            event_objects = plan.events.len(),
            "restore plan"
        );
        let manifests: Vec<_> = std::iter::once(&plan.snapshot)
            .chain(plan.segments.iter())
            .chain(plan.events.iter())
            .cloned()
            .collect();
        let plan = Arc::new(plan);
        out.emit(Artifact::Plan(plan.clone()))?;
        let total: u64 = manifests.iter().map(|m| m.compressed_size).sum();
        ctx.progress.start("fetch", Some(total));
        let fetched: Vec<FetchedObject> = manifests
            .par_iter()
            .map(|m| {
                if ctx.cancel.is_cancelled() {
                    return Err(Error::Cancelled("fetch stopped".into()));
                }
                let bytes = repo.read_object(m)?;
                ctx.progress.advance(m.compressed_size);
                Ok(FetchedObject {
                    manifest: m.clone(),
                    bytes: Arc::new(bytes),
                })
            })
            .collect::<Result<_>>()?;
        ctx.progress.finish("fetch");
        for object in fetched {
            out.emit(Artifact::FetchedObject(object))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_in_every_form() {
        assert_eq!(parse_target("latest").unwrap(), Target::Latest);
        assert_eq!(parse_target("").unwrap(), Target::Latest);
        assert_eq!(parse_target("txid:42").unwrap(), Target::Txid { txid: 42 });
        assert_eq!(
            parse_target("backup:snap_x").unwrap(),
            Target::BackupId {
                id: "snap_x".into()
            }
        );
        let t = parse_target("2025-01-15T12:00:00").unwrap();
        assert_eq!(parse_target(&target_text(&t)).unwrap(), t);
        for bad in ["txid:x", "backup:", "yesterday"] {
            assert!(matches!(parse_target(bad), Err(Error::Usage(_))), "{bad}");
        }
    }
}
