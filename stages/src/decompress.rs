//! The `decompress` stage: turns each fetched object's compressed bytes into
//! its raw content with [`objects::decompress_object`] (a snapshot's
//! independent zstd frames in parallel on the stage's workers), which also
//! checks the raw sizes and the BLAKE3 of the raw content against the
//! manifest. Everything else (the plan) passes through unchanged.

use std::sync::Arc;

use serde::Deserialize;

use genesis_core::objects;
use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, DecompressedObject, Emit, Stage,
    StageContext, StageFactory,
};
use genesis_core::Result;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecompressConfig {}

/// The `decompress` stage type.
pub struct DecompressFactory;

impl StageFactory for DecompressFactory {
    fn type_name(&self) -> &str {
        "decompress"
    }
    fn description(&self) -> &str {
        "zstd-decompresses fetched objects (snapshot frames in parallel) and checks their raw BLAKE3"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan, ArtifactKind::FetchedObject]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Plan, ArtifactKind::DecompressedObject]
    }
    fn build(
        &self,
        config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let _: DecompressConfig = decode_config(config)?;
        Ok(Box::new(Decompress))
    }
}

struct Decompress;

impl Stage for Decompress {
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::Plan(plan) => {
                let raw: u64 = std::iter::once(&plan.snapshot)
                    .chain(plan.segments.iter())
                    .chain(plan.events.iter())
                    .map(|m| m.raw_size)
                    .sum();
                ctx.progress.start("decompress", Some(raw));
                out.emit(Artifact::Plan(plan))
            }
            Artifact::FetchedObject(f) => {
                let frames = objects::decompress_object(&f.manifest, &f.bytes)?;
                ctx.progress.advance(f.manifest.raw_size);
                out.emit(Artifact::DecompressedObject(DecompressedObject {
                    manifest: f.manifest,
                    frames: Arc::new(frames),
                    compressed: f.bytes,
                }))
            }
            other => out.emit(other),
        }
    }

    fn finish(&mut self, ctx: &StageContext, _out: &mut dyn Emit) -> Result<()> {
        ctx.progress.finish("decompress");
        Ok(())
    }
}
