//! The `decompress` stage: turns each fetched object's compressed bytes into
//! its raw content with [`objects::decompress_object`] (a snapshot's
//! independent zstd frames in parallel on the stage's workers), which also
//! checks the raw sizes and the BLAKE3 of the raw content against the
//! manifest. Everything else (the plan) passes through unchanged.

use std::sync::Arc;

use serde::Deserialize;

use genesis_core::objects;
use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, DecompressedObject, Emit, FetchedObject,
    Stage, StageContext, StageFactory,
};
use genesis_core::repo::ObjectKind;
use genesis_core::Result;
use rayon::prelude::*;

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
        Ok(Box::new(Decompress {
            pending: Vec::new(),
            pending_raw: 0,
        }))
    }
}

/// Segments and event objects are single zstd frames; they are collected in
/// small batches and decompressed in parallel (rayon, `workers` threads),
/// then emitted in their original order. Snapshots are split into frames that
/// decompress in parallel on their own.
struct Decompress {
    pending: Vec<FetchedObject>,
    pending_raw: u64,
}

/// Raw bytes held in a batch before it is decompressed.
const BATCH_RAW_BYTES: u64 = 256 << 20;

fn decompressed(f: FetchedObject, frames: Vec<Vec<u8>>) -> Artifact {
    Artifact::DecompressedObject(DecompressedObject {
        manifest: f.manifest,
        frames: Arc::new(frames),
        compressed: f.bytes,
    })
}

impl Decompress {
    fn flush(&mut self, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_raw = 0;
        let results: Vec<Result<Vec<Vec<u8>>>> = batch
            .par_iter()
            .map(|f| objects::decompress_object(&f.manifest, &f.bytes))
            .collect();
        for (f, r) in batch.into_iter().zip(results) {
            let frames = r?;
            ctx.progress.advance(f.manifest.raw_size);
            out.emit(decompressed(f, frames))?;
        }
        Ok(())
    }
}

impl Stage for Decompress {
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::Plan(plan) => {
                self.flush(ctx, out)?;
                let raw: u64 = std::iter::once(&plan.snapshot)
                    .chain(plan.segments.iter())
                    .chain(plan.events.iter())
                    .map(|m| m.raw_size)
                    .sum();
                ctx.progress.start("decompress", Some(raw));
                out.emit(Artifact::Plan(plan))
            }
            Artifact::FetchedObject(f) if f.manifest.kind == ObjectKind::Snapshot => {
                self.flush(ctx, out)?;
                let frames = objects::decompress_object(&f.manifest, &f.bytes)?;
                ctx.progress.advance(f.manifest.raw_size);
                out.emit(decompressed(f, frames))
            }
            Artifact::FetchedObject(f) => {
                self.pending_raw += f.manifest.raw_size;
                self.pending.push(f);
                if self.pending.len() >= ctx.workers.max(1) * 4
                    || self.pending_raw >= BATCH_RAW_BYTES
                {
                    self.flush(ctx, out)?;
                }
                Ok(())
            }
            other => {
                self.flush(ctx, out)?;
                out.emit(other)
            }
        }
    }

    fn finish(&mut self, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        self.flush(ctx, out)?;
        ctx.progress.finish("decompress");
        Ok(())
    }
}
