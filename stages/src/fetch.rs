//! The `fetch` stage: resolves the restore plan from the run's parameters and
//! reads every object the plan needs from the repository, in parallel
//! (memory-mapped by the local backend).
//!
//! Settings (a `[stages.config]` key, else the pipeline parameter of the same
//! name):
//! * `repository`: the backup repository directory (default `.genesis/backups`);
//! * `target`: `latest`; an instant (`2025-01-15T12:00:00`, UTC unless an
//!   offset is given); `txid:N`; or `backup:ID` (a snapshot or segment id as
//!   `list-backups` shows it), read by [`Target::parse`] when the pipeline
//!   is compiled; a target the caller passed typed (the restore command's
//!   flags) is taken as it is, never through text;
//! * `strict`: when the chain to the target has a gap, fail instead of
//!   falling back (default false).
//!
//! The restore point is the last commit observed at or before the target
//! ([`Catalog::point_at_or_before`]); a named backup restores to its last
//! txid. A target before the first backup names the range that exists; a
//! target in the future is refused, naming the latest restore point (a time
//! that has not happened yet is almost always a typo in the date, and
//! restoring "the latest" silently could hide it). Event objects are fetched
//! for a time target (they let event-replay reach the target exactly) and
//! for any fallback (they bridge the gap).
//!
//! **Gaps are found before anything is emitted.** Unreadable manifests are
//! lost objects from the start; then every object the plan needs is checked
//! to exist with its manifest's size, read, and checked against its BLAKE3.
//! Any that fails is lost too and the plan is resolved again without it
//! ([`crate::resolve`]: the furthest-reaching chain, the event archive
//! replayed across the gap). So a missing or damaged object never fails a
//! restore that a fallback can serve, and never reaches wal-apply. (verify
//! checks the BLAKE3 again, for pipelines that read objects another way.)
//!
//! Emits `plan` first, then every object's compressed bytes in
//! [`RestorePlan::delivery_order`] (segments, event objects, then the
//! snapshot: wal-apply knows the pages the segments replace before the
//! snapshot streams).

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Deserialize;

use genesis_core::objects;
use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, Emit, FetchedObject, ParamValue, Params,
    Stage, StageContext, StageFactory,
};
use genesis_core::plan::{RestorePlan, Target};
use genesis_core::repo::lost::LostSet;
use genesis_core::repo::{Catalog, Repository};
use genesis_core::{Error, Result};

use crate::{resolve, settings};

/// Default repository directory.
pub const DEFAULT_REPOSITORY: &str = ".genesis/backups";

/// Resolves the restore plan of `target` against the catalog, with no object
/// known to be lost beyond the unreadable manifests the catalog lists (see
/// [`crate::resolve`]). `now` decides what "in the future" means.
///
/// # Errors
/// As [`resolve::resolve_plan`].
pub fn resolve_plan(
    catalog: &Catalog,
    target: &Target,
    strict: bool,
    now: DateTime<Utc>,
) -> Result<RestorePlan> {
    let lost = LostSet::from_bad_manifests(&catalog.bad);
    resolve::resolve_plan(catalog, target, strict, now, &lost)
}

/// How many times a plan is resolved again after fetch finds one of its
/// objects missing or damaged (each round loses at least one more object).
const MAX_REPLANS: usize = 64;

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
        let target = build_target(&config, ctx).map_err(|problem| vec![problem])?;
        if let Err(e) = settings::flag(config.strict, ctx.params, "strict", false) {
            return Err(vec![("strict".to_string(), e.to_string())]);
        }
        Ok(Box::new(Fetch { config, target }))
    }
}

/// The run's target, decided when the pipeline is compiled (so that a typo
/// fails before anything runs): a parameter the caller passed typed is
/// taken as it is (named by `target = "${name}"` in the config, or the
/// `target` parameter); text (a pipeline file's value, `--set target=`) is
/// read once, here, by [`Target::parse`]. An error comes with its config key.
fn build_target(
    config: &FetchConfig,
    ctx: &BuildContext<'_>,
) -> std::result::Result<Target, (String, String)> {
    let (value, key) = match (&config.target, ctx.bound_param("target")) {
        (_, Some(ParamValue::Target(t))) => return Ok(t.clone()),
        (Some(text), _) => (Some(ParamValue::Str(text.clone())), "target"),
        (None, _) => (ctx.params.get("target").cloned(), "config"),
    };
    match value {
        Some(ParamValue::Target(t)) => Ok(t),
        Some(v) => Target::parse(&v.as_text()).map_err(|e| (key.to_string(), e.to_string())),
        None => Ok(Target::Latest),
    }
}

struct Fetch {
    config: FetchConfig,
    /// Decided at compile time ([`build_target`]).
    target: Target,
}

impl Fetch {
    /// Resolves the plan and reads its objects. Every object the plan needs is
    /// checked before anything is emitted: it exists with the manifest's size
    /// (a stat), and its bytes have the manifest's BLAKE3. One that fails is
    /// lost: the plan is resolved again without it (a fallback, or an error
    /// under `strict`), so that nothing is built from a chain that cannot be
    /// read whole.
    fn plan_and_read(
        &self,
        params: &Params,
        ctx: &StageContext,
    ) -> Result<(RestorePlan, Vec<FetchedObject>)> {
        let repo_path = PathBuf::from(
            settings::text(&self.config.repository, params, "repository")
                .unwrap_or_else(|| DEFAULT_REPOSITORY.to_string()),
        );
        let target = &self.target;
        let strict = settings::flag(self.config.strict, params, "strict", false)?;
        let repo = Repository::open_path(&repo_path, false)?;
        let catalog = repo.catalog()?;
        let mut lost = LostSet::from_bad_manifests(&catalog.bad);
        for bad in &catalog.bad {
            tracing::warn!(key = %bad.key, problem = %bad.problem, "unreadable manifest: a gap in the chain");
        }
        let now = Utc::now();
        // Prune keeps what a live lease names, for as long as this reads.
        let mut lease: Option<genesis_core::repo::read_leases::ReadLease> = None;
        for _ in 0..MAX_REPLANS {
            let plan = resolve::resolve_plan(&catalog, target, strict, now, &lost)?;
            let manifests = plan.delivery_order();
            let ids: Vec<String> = manifests.iter().map(|m| m.id.clone()).collect();
            // Best effort: a read-only repository takes no lease (an object
            // pruned under the read is then found missing and planned around).
            let taken = match &lease {
                Some(l) => l.update(&ids),
                None => genesis_core::repo::read_leases::ReadLease::take(&repo, &ids)
                    .map(|l| lease = Some(l)),
            };
            if let Err(e) = taken {
                tracing::warn!("no read lease on the repository ({e}): a prune meanwhile could remove what this restore reads");
            }
            let mut found = false;
            for m in &manifests {
                match repo.backend().size(&m.object_key())? {
                    Some(n) if n == m.compressed_size => {}
                    Some(n) => {
                        lost.insert(
                            m,
                            format!(
                                "has {n} bytes where its manifest records {}",
                                m.compressed_size
                            ),
                        );
                        found = true;
                    }
                    None => {
                        lost.insert(m, format!("is missing from {}", repo.backend().describe()));
                        found = true;
                    }
                }
            }
            if found {
                continue;
            }
            let total: u64 = manifests.iter().map(|m| m.compressed_size).sum();
            ctx.progress.start("fetch", Some(total));
            let read: Vec<Result<FetchedObject>> = manifests
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
                .collect();
            ctx.progress.finish("fetch");
            let mut fetched = Vec::with_capacity(read.len());
            for r in read {
                fetched.push(r?);
            }
            let damaged: Vec<(Arc<genesis_core::repo::Manifest>, String)> = fetched
                .par_iter()
                .filter_map(|o| {
                    objects::verify_compressed_with(&o.manifest, &o.bytes, |r| o.bytes.release(r))
                        .err()
                        .map(|e| (o.manifest.clone(), e.to_string()))
                })
                .collect();
            if damaged.is_empty() {
                return Ok((plan, fetched));
            }
            for (m, why) in damaged {
                tracing::warn!(object = %m.id, "damaged object: {why}");
                lost.insert(&m, format!("is damaged ({why})"));
            }
        }
        Err(Error::Failed(format!(
            "gave up resolving a restore plan after {MAX_REPLANS} rounds of missing or damaged objects; run `genesis-recovery verify-backups`"
        )))
    }
}

impl Stage for Fetch {
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        let params = match input {
            Artifact::Request(params) => params,
            other => return out.emit(other),
        };
        let (plan, fetched) = self.plan_and_read(&params, ctx)?;
        tracing::info!(
            txid = plan.point.txid,
            snapshot = %plan.snapshot.id,
            segments = plan.segments.len(),
            event_objects = plan.events.len(),
            fallback = plan.fallback.is_some(),
            "restore plan"
        );
        out.emit(Artifact::Plan(Arc::new(plan)))?;
        for object in fetched {
            out.emit(Artifact::FetchedObject(object))?;
        }
        Ok(())
    }
}
