//! Rebuilding the database at any captured txid: the snapshot, then for every
//! page only its newest version up to that txid (each page written once),
//! truncated to the commit's size, fsynced, and proven with the database
//! checksum. The wal-apply stage wraps [`build_database`]; [`rebuild`] does
//! the whole read-verify-build for callers outside a pipeline.

pub mod stream;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::checksum::page_hash;
use crate::error::{Error, Result};
use crate::repo::catalog::{Chain, RestorePoint};
use crate::repo::formats::decode_segment;
use crate::repo::{checksum_hex, parse_checksum, Manifest, Repository};

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
    let snap = input.snapshot;
    let ps = snap.page_size as usize;
    let walk = newest_pages(snap, &input.segments, input.target_txid)?;
    let Walk {
        newest,
        min_pages,
        final_pages,
        reached,
    } = walk;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| Error::io("create", out, e))?;
    file.set_len(final_pages * ps as u64)
        .map_err(|e| Error::io("size", out, e))?;
    let keep_snapshot_upto = min_pages.min(final_pages);
    // Snapshot pages that no segment replaced, frame by frame in parallel.
    let snap_stats: Vec<Result<(u64, u64)>> = input
        .snapshot_frames
        .par_iter()
        .zip(snap.frames.par_iter())
        .map(|(raw, fe)| {
            let first = fe.raw_offset / ps as u64 + 1;
            let mut x = 0u64;
            let mut n = 0u64;
            // Write runs of consecutive kept pages with one call each.
            let mut run_start: Option<usize> = None;
            let pages = raw.len() / ps;
            let flush = |from: usize, to: usize| -> Result<()> {
                let off = (first - 1 + from as u64) * ps as u64;
                write_page(&file, out, &raw[from * ps..to * ps], off)
            };
            for i in 0..pages {
                let pgno = first + i as u64;
                let keep = pgno <= keep_snapshot_upto && !newest.contains_key(&(pgno as u32));
                if keep {
                    x ^= page_hash(pgno as u32, &raw[i * ps..(i + 1) * ps]);
                    n += 1;
                    run_start.get_or_insert(i);
                } else if let Some(a) = run_start.take() {
                    flush(a, i)?;
                }
            }
            if let Some(a) = run_start {
                flush(a, pages)?;
            }
            Ok((x, n))
        })
        .collect();
    let mut checksum = 0u64;
    let mut from_snapshot = 0u64;
    for r in snap_stats {
        let (x, n) = r?;
        checksum ^= x;
        from_snapshot += n;
    }
    let pages: Vec<(u32, &[u8])> = newest.iter().map(|(p, d)| (*p, *d)).collect();
    let seg_x: Result<u64> = pages
        .par_iter()
        .map(|(pgno, data)| {
            write_page(&file, out, data, (u64::from(*pgno) - 1) * ps as u64)?;
            Ok(page_hash(*pgno, data))
        })
        .try_reduce(|| 0, |a, b| Ok(a ^ b));
    checksum ^= seg_x?;
    // Pages nobody wrote are zero-filled (as SQLite reads them).
    let zero = vec![0u8; ps];
    let mut zero_pages = 0u64;
    for pgno in (keep_snapshot_upto + 1)..=final_pages {
        if !newest.contains_key(&(pgno as u32)) {
            checksum ^= page_hash(pgno as u32, &zero);
            zero_pages += 1;
        }
    }
    file.sync_all().map_err(|e| Error::io("fsync", out, e))?;
    let expected = parse_checksum(&snap.id, input.expected_checksum)?;
    if checksum != expected {
        return Err(Error::corrupt(
            &snap.id,
            format!(
                "the database rebuilt at txid {} has checksum {} but the capture recorded {}: the chain does not reproduce the source",
                input.target_txid,
                checksum_hex(checksum),
                input.expected_checksum
            ),
        ));
    }
    let _ = zero_pages;
    Ok(RebuildResult {
        txid: reached,
        checksum: checksum_hex(checksum),
        pages: final_pages,
        page_size: snap.page_size,
        pages_from_snapshot: from_snapshot,
        pages_from_segments: pages.len() as u64,
        bytes_written: (from_snapshot + pages.len() as u64) * ps as u64,
    })
}

/// The segments walked up to the target: the newest version of each page,
/// the smallest size on the way, the size at the end and the txid reached.
pub(crate) struct Walk<'a> {
    pub newest: HashMap<u32, &'a [u8]>,
    pub min_pages: u64,
    pub final_pages: u64,
    pub reached: u64,
}

/// Walks `segments` (level 0 and compacted) after `snap` up to `target`.
///
/// # Errors
/// `Error::Corrupt` when the chain is not contiguous, a segment is
/// malformed, or it does not reach the target.
pub(crate) fn newest_pages<'a>(
    snap: &Manifest,
    segments: &[(&'a Manifest, &'a [u8])],
    target: u64,
) -> Result<Walk<'a>> {
    let mut newest: HashMap<u32, &[u8]> = HashMap::new();
    let mut final_pages = snap.db_pages;
    let mut min_pages = snap.db_pages;
    let mut next = snap.txid_max + 1;
    let mut reached = snap.txid_max;
    'segs: for (m, raw) in segments {
        let (seg_ps, txns) = decode_segment(&m.id, raw)?;
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
            for (pgno, data) in t.pages {
                newest.insert(pgno, data);
            }
            if t.db_pages < final_pages.max(t.db_pages) || t.db_pages < min_pages {
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

fn write_page(file: &File, path: &Path, data: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(data, offset)
        .map_err(|e| Error::io("write", path, e))
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
