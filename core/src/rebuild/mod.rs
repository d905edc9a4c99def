//! Rebuilding the database at any captured txid: the snapshot, then for every
//! page its newest version up to that txid (level-0 and compacted segments),
//! truncated to the commit's size, fsynced, and proven with the database
//! checksum, each page written once. The wal-apply stage gives
//! [`stream::StreamingBuild`] the segments, then the snapshot in parts;
//! [`build_database`] does it with the snapshot in memory, and [`rebuild`]
//! the whole read-verify-build for callers outside a pipeline.

pub mod spool;
pub mod stream;

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::catalog::{Chain, RestorePoint};
use crate::repo::formats::decode_segment;
use crate::repo::{Manifest, Repository};

/// What a rebuild produced.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildResult {
    pub txid: u64,
    pub checksum: String,
    pub pages: u64,
    pub page_size: u32,
    pub pages_from_snapshot: u64,
    pub pages_from_segments: u64,
    pub bytes_written: u64,
}

/// The decompressed inputs of a rebuild.
pub struct RebuildInput<'a> {
    pub snapshot: &'a Manifest,
    /// The snapshot's raw frames, in order.
    pub snapshot_frames: &'a [Vec<u8>],
    /// The segments after the snapshot with their raw content, in txid order.
    pub segments: Vec<(&'a Manifest, &'a [u8])>,
    /// The txid to stop at.
    pub target_txid: u64,
    /// The checksum the result must have (hex).
    pub expected_checksum: &'a str,
}

/// Builds the database file at `out` (created or truncated) from the inputs.
///
/// # Errors
/// `Error::Corrupt` when the chain is not contiguous, a segment is malformed,
/// or the result's checksum differs from the expected one; I/O failures.
pub fn build_database(input: &RebuildInput<'_>, out: &Path) -> Result<RebuildResult> {
    let mut build =
        stream::StreamingBuild::new(input.snapshot, &input.segments, input.target_txid, out)?;
    build.frames(0, input.snapshot_frames)?;
    build.finish(input.expected_checksum)
}

/// The segments walked up to the target: the newest version of each page
/// (its bytes, or where they are), the smallest size on the way, the size at
/// the end and the txid reached.
pub(crate) struct Walk<P> {
    pub newest: HashMap<u32, P>,
    pub min_pages: u64,
    pub final_pages: u64,
    pub reached: u64,
}

/// One transaction of a decoded segment: its txid, its commit's size and
/// its pages (the bytes, or where they are).
pub(crate) struct Txn<P> {
    pub txid: u64,
    pub db_pages: u64,
    pub pages: Vec<(u32, P)>,
}

impl<P> Txn<P> {
    /// The same transaction with each page's `P` turned into a `Q`.
    pub(crate) fn map<Q>(self, mut f: impl FnMut(P) -> Q) -> Txn<Q> {
        Txn {
            txid: self.txid,
            db_pages: self.db_pages,
            pages: self.pages.into_iter().map(|(p, d)| (p, f(d))).collect(),
        }
    }
}

/// A decoded segment: its manifest, its page size and its transactions.
pub(crate) type Decoded<'m, P> = (&'m Manifest, u32, Vec<Txn<P>>);

/// Decodes a segment's raw content into its transactions with their pages'
/// bytes.
///
/// # Errors
/// `Error::Corrupt` for a malformed segment.
pub(crate) fn decode<'a>(m: &'a Manifest, raw: &'a [u8]) -> Result<Decoded<'a, &'a [u8]>> {
    let (ps, txns) = decode_segment(&m.id, raw)?;
    let txns = txns
        .into_iter()
        .map(|t| Txn {
            txid: t.txid,
            db_pages: t.db_pages,
            pages: t.pages,
        })
        .collect();
    Ok((m, ps, txns))
}

/// Walks `segments` (level 0 and compacted, decoded) after `snap` up to
/// `target`.
///
/// # Errors
/// `Error::Corrupt` when the chain is not contiguous, a segment's page size
/// differs from the snapshot's, or it does not reach the target.
pub(crate) fn walk<'m, P: Copy>(
    snap: &Manifest,
    segments: impl IntoIterator<Item = Result<Decoded<'m, P>>>,
    target: u64,
) -> Result<Walk<P>> {
    let mut newest: HashMap<u32, P> = HashMap::new();
    let mut final_pages = snap.db_pages;
    let mut min_pages = snap.db_pages;
    let mut next = snap.txid_max + 1;
    let mut reached = snap.txid_max;
    'segs: for segment in segments {
        let (m, seg_ps, txns) = segment?;
        if seg_ps != snap.page_size {
            return Err(Error::corrupt(
                &m.id,
                format!(
                    "page size {seg_ps} differs from the snapshot's {}",
                    snap.page_size
                ),
            ));
        }
        if m.is_compacted() {
            // One point, the span's end: the chain must start it exactly and
            // may not stop inside it; pages its span cut off go first.
            if m.txid_min != next || m.txid_max > target {
                return Err(Error::corrupt(
                    &m.id,
                    format!(
                        "compacted txids {}..={} do not continue the chain at txid {next} toward txid {target}",
                        m.txid_min, m.txid_max
                    ),
                ));
            }
            let cut = m.min_db_pages.unwrap_or(m.db_pages);
            newest.retain(|p, _| u64::from(*p) <= cut);
            min_pages = min_pages.min(cut);
            next = m.txid_max;
        }
        for t in txns {
            if t.txid > target {
                break 'segs;
            }
            if t.txid != next {
                return Err(Error::corrupt(
                    &m.id,
                    format!(
                        "holds txid {} where txid {next} was expected: the chain has a gap",
                        t.txid
                    ),
                ));
            }
            // A transaction's frames may hold pages past its own commit's
            // size (frames spilled before an auto-vacuum cut them off at the
            // commit): those are not part of the database it leaves.
            for (pgno, data) in t.pages {
                if u64::from(pgno) <= t.db_pages {
                    newest.insert(pgno, data);
                }
            }
            if t.db_pages < final_pages {
                newest.retain(|p, _| u64::from(*p) <= t.db_pages);
            }
            min_pages = min_pages.min(t.db_pages);
            final_pages = t.db_pages;
            reached = t.txid;
            next += 1;
        }
    }
    if reached != target {
        return Err(Error::corrupt(
            &snap.id,
            format!("the chain reaches txid {reached}, not the requested {target}"),
        ));
    }
    Ok(Walk {
        newest,
        min_pages,
        final_pages,
        reached,
    })
}

/// Reads, verifies and decompresses a chain's objects and builds the database at `point`.
///
/// # Errors
/// `Error::Corrupt` for any damaged or missing object; I/O failures.
pub fn rebuild(
    repo: &Repository,
    chain: &Chain,
    point: &RestorePoint,
    out: &Path,
) -> Result<RebuildResult> {
    let load = |m: &Manifest| -> Result<Vec<Vec<u8>>> {
        let bytes = repo.read_object(m)?;
        crate::objects::verify_compressed(m, &bytes)?;
        crate::objects::decompress_object(m, &bytes)
    };
    let snap_frames = load(&chain.snapshot)?;
    let seg_raw: Vec<Vec<u8>> = chain
        .segments
        .iter()
        .filter(|s| s.txid_min <= point.txid)
        .map(|s| load(s).map(|mut f| f.pop().unwrap_or_default()))
        .collect::<Result<_>>()?;
    let segments = chain
        .segments
        .iter()
        .filter(|s| s.txid_min <= point.txid)
        .map(|m| m.as_ref())
        .zip(seg_raw.iter().map(|v| v.as_slice()))
        .collect();
    build_database(
        &RebuildInput {
            snapshot: &chain.snapshot,
            snapshot_frames: &snap_frames,
            segments,
            target_txid: point.txid,
            expected_checksum: &point.checksum,
        },
        out,
    )
}
