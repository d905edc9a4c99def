//! Merging a contiguous run of segments into one compacted segment: the
//! newest version of each page, the span's end point, and the smallest size
//! the database had inside the span.
//!
//! The inputs are read newest first, one at a time, so memory holds the
//! merged pages and one decompressed input, never the whole run. A page
//! written at transaction i survives when no later transaction of the run
//! wrote it again and every size from i on kept it (`p <= d_j` for j >= i),
//! which is what applying the transactions one by one does.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::objects::{decompress_object, verify_compressed};
use crate::repo::formats::{self, decode_segment, SegmentTxnOwned};
use crate::repo::{checksum_hex, parse_checksum, Manifest, Repository, TxnEntry, FORMAT_VERSION};

/// The merged content of a run, before it is encoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// Newest surviving version of each page, by page number.
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// Smallest database size at any transaction of the run.
    pub min_db_pages: u64,
}

/// Merges `run` (contiguous, oldest first) as read from `repo`, each input
/// checked against its manifest (size, BLAKE3 of the stored and raw bytes,
/// page size, txids) before any page of it is used.
///
/// # Errors
/// `Error::Corrupt` naming the first damaged input; I/O failures.
pub fn merge_run(repo: &Repository, run: &[Arc<Manifest>]) -> Result<Merged> {
    merge_with(run, |m| {
        let bytes = repo.read_object(m)?;
        verify_compressed(m, &bytes)?;
        Ok(decompress_object(m, &bytes)?.pop().unwrap_or_default())
    })
}

/// [`merge_run`] over raw contents from `load` (which verify-backups feeds
/// with what it already decompressed).
///
/// # Errors
/// As [`merge_run`].
pub fn merge_with(
    run: &[Arc<Manifest>],
    mut load: impl FnMut(&Manifest) -> Result<Vec<u8>>,
) -> Result<Merged> {
    let first = run
        .first()
        .ok_or_else(|| Error::Failed("nothing to compact".into()))?;
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut keep_upto = u64::MAX;
    let mut min_db_pages = u64::MAX;
    for m in run.iter().rev() {
        if m.page_size != first.page_size || m.generation != first.generation {
            return Err(Error::corrupt(
                &m.id,
                "differs in page size or generation from the run it is compacted with",
            ));
        }
        let raw = load(m)?;
        let (ps, txns) = decode_segment(&m.id, &raw)?;
        if ps != m.page_size {
            return Err(Error::corrupt(
                &m.id,
                format!("page size {ps} differs from the manifest's {}", m.page_size),
            ));
        }
        let ids: Vec<u64> = txns.iter().map(|t| t.txid).collect();
        let expected: Vec<u64> = if m.is_compacted() {
            vec![m.txid_max]
        } else {
            (m.txid_min..=m.txid_max).collect()
        };
        if ids != expected {
            return Err(Error::corrupt(
                &m.id,
                format!(
                    "holds txids {:?}..{:?}, its manifest says {}..={}",
                    ids.first(),
                    ids.last(),
                    m.txid_min,
                    m.txid_max
                ),
            ));
        }
        for t in txns.iter().rev() {
            keep_upto = keep_upto.min(t.db_pages);
            for (pgno, data) in &t.pages {
                if u64::from(*pgno) <= keep_upto {
                    pages.entry(*pgno).or_insert_with(|| data.to_vec());
                }
            }
            keep_upto = keep_upto.min(t.db_pages);
        }
        if let Some(cut) = m.min_db_pages.filter(|_| m.is_compacted()) {
            keep_upto = keep_upto.min(cut);
        }
        min_db_pages = min_db_pages.min(keep_upto);
    }
    Ok(Merged {
        pages,
        min_db_pages,
    })
}

/// The compacted object of `run` at `level`: its raw content, compressed
/// bytes and manifest (written by the caller, object then manifest).
///
/// # Errors
/// `Error::Corrupt` when the run's manifests disagree with each other.
pub fn encode_compacted(
    run: &[Arc<Manifest>],
    level: u32,
    merged: &Merged,
) -> Result<(Vec<u8>, Manifest)> {
    let (first, last) = match (run.first(), run.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(Error::Failed("nothing to compact".into())),
    };
    let end: &TxnEntry = last
        .transactions
        .last()
        .ok_or_else(|| Error::corrupt(&last.id, "a segment records no transaction"))?;
    let checksum = parse_checksum(&last.id, &end.checksum)?;
    let txn = SegmentTxnOwned {
        txid: last.txid_max,
        commit_time: end.time,
        db_pages: end.db_pages,
        checksum,
        pages: merged.pages.iter().map(|(p, d)| (*p, d.clone())).collect(),
    };
    let raw = formats::encode_segment(first.page_size, std::slice::from_ref(&txn));
    let compressed = formats::compress(&raw)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        id: compacted_id(level, &first.generation, first.txid_min, last.txid_max),
        kind: crate::repo::ObjectKind::Segment,
        generation: first.generation.clone(),
        created_at: chrono::Utc::now(),
        page_size: first.page_size,
        txid_min: first.txid_min,
        txid_max: last.txid_max,
        time_min: first.time_min,
        time_max: last.time_max,
        seq_min: first.seq_min,
        seq_max: last.seq_max,
        raw_size: raw.len() as u64,
        compressed_size: compressed.len() as u64,
        blake3_compressed: blake3::hash(&compressed).to_hex().to_string(),
        blake3_raw: blake3::hash(&raw).to_hex().to_string(),
        db_checksum_before: first.db_checksum_before.clone(),
        db_checksum_after: Some(checksum_hex(checksum)),
        db_pages: end.db_pages,
        frames: Vec::new(),
        transactions: vec![TxnEntry {
            txid: last.txid_max,
            time: end.time,
            db_pages: end.db_pages,
            checksum: end.checksum.clone(),
            pages: merged.pages.len() as u32,
        }],
        wal: last.wal,
        event_count: 0,
        source_db: last.source_db.clone(),
        level,
        min_db_pages: Some(merged.min_db_pages.min(end.db_pages)),
    };
    Ok((compressed, manifest))
}

/// The id of a compacted segment: `l<level>_<generation>_<first>_<last>`.
pub fn compacted_id(level: u32, generation: &str, first: u64, last: u64) -> String {
    format!("l{level}_{generation}_{first:012}_{last:012}")
}
