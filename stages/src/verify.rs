//! The `verify` stage: proves every object before anything is built from it.
//!
//! For each object, in the order fetch sends them
//! ([`RestorePlan::delivery_order`]: segments, event objects, the snapshot
//! last): the BLAKE3 and size of the stored (compressed) bytes against the
//! manifest ([`objects::verify_compressed`]); that it is the object the plan
//! expects next; its generation and page size; for segments, txid contiguity
//! with the previous object and the chained database checksums (a segment's
//! `db_checksum_before` equals the previous object's `db_checksum_after`,
//! the first one's the plan's snapshot's, whose manifest the arriving
//! snapshot must equal); for event objects, contiguous sequence ranges. At the end, that every
//! object of the plan arrived. The first problem fails the stage with
//! `Error::Corrupt` naming the object, which cancels the run before
//! wal-apply writes anything.
//!
//! The raw content's BLAKE3 was already checked by decompress; the final
//! database checksum is proven by wal-apply.

use std::sync::Arc;

use serde::Deserialize;

use genesis_core::objects;
use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, DecompressedObject, Emit, Stage,
    StageContext, StageFactory,
};
use genesis_core::plan::RestorePlan;
use genesis_core::repo::{Manifest, ObjectKind};
use genesis_core::{Error, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyConfig {}

/// The `verify` stage type.
pub struct VerifyFactory;

impl StageFactory for VerifyFactory {
    fn type_name(&self) -> &str {
        "verify"
    }
    fn description(&self) -> &str {
        "checks BLAKE3 of every object, txid contiguity, page size and the chained database checksums"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan, ArtifactKind::DecompressedObject]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan, ArtifactKind::VerifiedObject]
    }
    fn build(
        &self,
        config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let _: VerifyConfig = decode_config(config)?;
        Ok(Box::new(Verify::default()))
    }
}

/// The chain checker, fed objects in delivery order.
#[derive(Default)]
struct Verify {
    plan: Option<Arc<RestorePlan>>,
    expected: Vec<String>,
    seen: usize,
    /// Database checksum and last txid after the previous snapshot/segment.
    db_after: Option<(String, u64)>,
    last_seq: Option<i64>,
    /// The snapshot whose parts are arriving.
    in_parts: Option<String>,
}

impl Verify {
    fn check(&mut self, m: &Manifest) -> Result<()> {
        let Some(plan) = &self.plan else {
            return Err(Error::Failed(format!(
                "verify received object {} before the restore plan; put `fetch` first in the pipeline",
                m.id
            )));
        };
        match self.expected.get(self.seen) {
            Some(id) if id == &m.id => {}
            Some(id) => {
                return Err(Error::corrupt(
                    &m.id,
                    format!("arrived where the plan expects object {id}"),
                ))
            }
            None => return Err(Error::corrupt(&m.id, "is not part of the restore plan")),
        }
        self.seen += 1;
        // Pages come from the point's generation alone; events may also come
        // from a later generation whose archive continues it (the plan checks
        // that the sequence numbers run on). A later generation's txids all
        // follow the point's (txids are numbered across the repository; ids
        // sort by start time only to the second).
        if m.generation != plan.point.generation
            && !(m.kind == ObjectKind::Events && m.txid_min > plan.point.txid)
        {
            return Err(Error::corrupt(
                &m.id,
                format!(
                    "belongs to generation {}, the plan restores generation {}",
                    m.generation, plan.point.generation
                ),
            ));
        }
        match m.kind {
            ObjectKind::Snapshot | ObjectKind::Segment => {
                if m.page_size != plan.page_size {
                    return Err(Error::corrupt(
                        &m.id,
                        format!(
                            "page size {} differs from the snapshot's {}",
                            m.page_size, plan.page_size
                        ),
                    ));
                }
                let after = m.db_checksum_after.clone().ok_or_else(|| {
                    Error::corrupt(&m.id, "the manifest records no database checksum after it")
                })?;
                if m.kind == ObjectKind::Segment {
                    let Some((prev, prev_txid)) = &self.db_after else {
                        return Err(Error::corrupt(
                            &plan.snapshot.id,
                            "the manifest records no database checksum after it",
                        ));
                    };
                    if m.txid_min != prev_txid + 1 {
                        return Err(Error::corrupt(
                            &m.id,
                            format!(
                                "starts at txid {} but the chain reached txid {prev_txid}: the chain has a gap",
                                m.txid_min
                            ),
                        ));
                    }
                    if m.db_checksum_before.as_deref() != Some(prev.as_str()) {
                        return Err(Error::corrupt(
                            &m.id,
                            format!(
                                "its database checksum before is {}, but the previous object ends at {prev}: the chain is broken",
                                m.db_checksum_before.as_deref().unwrap_or("(none)")
                            ),
                        ));
                    }
                    self.db_after = Some((after, m.txid_max));
                } else if *m != *plan.snapshot {
                    // The segments were chained to the plan's snapshot.
                    return Err(Error::corrupt(
                        &m.id,
                        "its manifest differs from the one the restore plan chained the segments to",
                    ));
                } else if m.txid_max > plan.point.txid {
                    return Err(Error::corrupt(
                        &m.id,
                        format!(
                            "snapshot txid {} is after the restore point {}",
                            m.txid_max, plan.point.txid
                        ),
                    ));
                }
            }
            ObjectKind::Events => {
                let (Some(lo), Some(hi)) = (m.seq_min, m.seq_max) else {
                    return Err(Error::corrupt(
                        &m.id,
                        "event object without a sequence range",
                    ));
                };
                if let Some(prev) = self.last_seq {
                    if lo > prev + 1 {
                        return Err(Error::corrupt(
                            &m.id,
                            format!(
                                "starts at sequence number {lo} but the previous event object ends at {prev}: the event archive has a gap"
                            ),
                        ));
                    }
                }
                self.last_seq = Some(self.last_seq.map_or(hi, |p| p.max(hi)));
            }
        }
        Ok(())
    }
}

impl Stage for Verify {
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::Plan(plan) => {
                self.expected = plan.object_ids();
                ctx.progress
                    .start("verify", Some(self.expected.len() as u64));
                self.seen = 0;
                // The segments arrive first and chain from the plan's snapshot.
                self.db_after = plan
                    .snapshot
                    .db_checksum_after
                    .clone()
                    .map(|c| (c, plan.snapshot.txid_max));
                self.last_seq = None;
                self.plan = Some(plan.clone());
                out.emit(Artifact::Plan(plan))
            }
            Artifact::DecompressedObject(o) => {
                // The parts of a snapshot after its first belong to the
                // object already checked.
                let later_part = o.part.is_some_and(|p| p.first_frame > 0);
                if later_part {
                    if self.in_parts.as_deref() != Some(o.manifest.id.as_str()) {
                        return Err(Error::corrupt(
                            &o.manifest.id,
                            "a part of a snapshot arrived without its first part",
                        ));
                    }
                } else {
                    objects::verify_compressed_with(&o.manifest, &o.compressed, |r| {
                        o.compressed.release(r)
                    })?;
                    self.check(&o.manifest)?;
                    ctx.progress.advance(1);
                }
                self.in_parts = o.part.filter(|p| !p.last).map(|_| o.manifest.id.clone());
                out.emit(Artifact::VerifiedObject(DecompressedObject { ..o }))
            }
            other => out.emit(other),
        }
    }

    fn finish(&mut self, ctx: &StageContext, _out: &mut dyn Emit) -> Result<()> {
        ctx.progress.finish("verify");
        if let Some(id) = &self.in_parts {
            return Err(Error::corrupt(id, "the snapshot's last part never arrived"));
        }
        if self.plan.is_some() && self.seen != self.expected.len() {
            let missing = &self.expected[self.seen.min(self.expected.len())..];
            return Err(Error::Failed(format!(
                "verify received {} of the plan's {} objects; missing: {}",
                self.seen,
                self.expected.len(),
                missing.join(", ")
            )));
        }
        Ok(())
    }
}
