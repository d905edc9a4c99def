//! The `decompress` stage: turns each fetched object's compressed bytes into
//! its raw content with [`objects::decompress_object`] (a snapshot's
//! independent zstd frames in parallel on the stage's workers), which also
//! checks the raw sizes and the BLAKE3 of the raw content against the
//! manifest. Everything else (the plan) passes through unchanged.
//!
//! A snapshot is emitted in parts of [`PART_FRAMES_PER_WORKER`] frames per
//! worker, each decompressed in parallel, so that wal-apply writes a part
//! and drops it before the next is made (the channels between stages are
//! bounded): memory stays flat in the database's size. The BLAKE3 of the raw
//! content is formed part by part and checked before the last part leaves;
//! a mismatch fails the restore, and wal-apply's unfinished file is removed.

use std::sync::Arc;

use serde::Deserialize;

use genesis_core::objects;
use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, DecompressedObject, Emit, FetchedObject,
    FramePart, Stage, StageContext, StageFactory,
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

/// Frames per worker in one part of a snapshot (8 MiB frames at 4 KiB pages).
const PART_FRAMES_PER_WORKER: usize = 1;

fn decompressed(f: FetchedObject, frames: Vec<Vec<u8>>) -> Artifact {
    Artifact::DecompressedObject(DecompressedObject {
        manifest: f.manifest,
        frames: Arc::new(frames),
        compressed: f.bytes,
        part: None,
    })
}

/// Emits a snapshot in parts, checking its raw BLAKE3 on the way.
fn snapshot_in_parts(f: FetchedObject, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
    let m = f.manifest.clone();
    objects::check_snapshot_layout(&m, &f.bytes)?;
    let per_part = (ctx.workers.max(1) * PART_FRAMES_PER_WORKER).max(1);
    let mut hasher = blake3::Hasher::new();
    let n = m.frames.len();
    let mut first = 0;
    loop {
        let end = (first + per_part).min(n);
        let frames = objects::decompress_frames(&m, &f.bytes, first..end)?;
        if let (Some(a), Some(b)) = (m.frames.get(first), m.frames.get(end.saturating_sub(1))) {
            f.bytes
                .release(a.comp_offset as usize..(b.comp_offset + b.comp_len) as usize);
        }
        for raw in &frames {
            objects::hash_raw(&mut hasher, raw);
            ctx.progress.advance(raw.len() as u64);
        }
        let last = end == n;
        if last {
            objects::check_raw_hash(&m, std::mem::take(&mut hasher))?;
        }
        out.emit(Artifact::DecompressedObject(DecompressedObject {
            manifest: m.clone(),
            frames: Arc::new(frames),
            compressed: f.bytes.clone(),
            part: Some(FramePart {
                first_frame: first,
                last,
            }),
        }))?;
        if last {
            return Ok(());
        }
        first = end;
    }
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
                snapshot_in_parts(f, ctx, out)
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
