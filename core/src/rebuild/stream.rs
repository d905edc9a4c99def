//! The rebuild in bounded memory, each page written once. The segments
//! reach wal-apply before the snapshot does (fetch sends them first), so
//! [`StreamingBuild::new`] walks them up to the target before any snapshot
//! page is written: it writes the newest version of every page they changed
//! and marks those pages, one bit each. The snapshot's frames then stream in
//! (each frame dropped once written) and of each only the pages no segment
//! replaced and no size cut off are written, in runs of contiguous pages;
//! pages the sizes cut off stay holes, read as zeros as SQLite reads them.
//! The database checksum is formed on the way from the hash of every page
//! written (and of the zero pages), and proven after the one fsync.
//! Writeback of each snapshot part starts as soon as it is written, so the
//! fsync at the end waits for little more than the last part.
//!
//! Memory holds the segments until their pages are written (few once
//! compacted; past the caller's budget they wait in a [`Spool`] and memory
//! holds only the index of their pages), one bit per snapshot page and the
//! frames in flight, never the whole snapshot.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::spool::{Spool, SpooledSegment};
use super::{decode, walk, RebuildResult, Walk};
use crate::checksum::page_hash;
use crate::error::{Error, Result};
use crate::repo::{checksum_hex, parse_checksum, Manifest};

/// The file a rebuild writes pages into: the staged database (a [`File`]),
/// or, in tests, one that records every write.
pub trait PageFile: Sync {
    /// Writes `buf` at byte `offset`.
    ///
    /// # Errors
    /// I/O failures.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Sets the file's length (growing it with a hole).
    ///
    /// # Errors
    /// I/O failures.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes everything written durable.
    ///
    /// # Errors
    /// I/O failures.
    fn sync_all(&self) -> io::Result<()>;
    /// Starts writing `len` bytes at `offset` back to the disk without
    /// waiting (a hint: the fsync at the end is what makes them durable).
    fn start_writeback(&self, _offset: u64, _len: u64) {}
}

impl PageFile for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range only reads the descriptor, which `self`
        // keeps open for the call; a failure only means no early writeback.
        unsafe {
            libc::sync_file_range(self.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

/// A segment of the build: its raw content in memory, or in a [`Spool`].
#[derive(Clone, Copy)]
pub enum Segment<'a> {
    Memory(&'a Manifest, &'a [u8]),
    Spooled(&'a Manifest, &'a SpooledSegment),
}

/// Where the newest version of a page is.
#[derive(Clone, Copy)]
enum PageRef<'a> {
    Memory(&'a [u8]),
    /// Its offset in the spool.
    Spooled(u64),
}

/// A database being rebuilt: the segments' pages written, the snapshot
/// arriving frame by frame.
pub struct StreamingBuild<F: PageFile = File> {
    snapshot: Manifest,
    file: F,
    /// The staged file, removed when the build does not finish.
    path: Option<PathBuf>,
    /// Snapshot pages a segment replaced: bit `p - 1` for page `p <= keep`.
    replaced: Vec<u64>,
    /// Snapshot pages above this were cut off by a size on the way.
    keep: u64,
    final_pages: u64,
    reached: u64,
    /// XOR of the hashes of the pages written and the zero pages so far.
    checksum: u64,
    from_snapshot: u64,
    from_segments: u64,
    bytes_written: u64,
    next_frame: usize,
    finished: bool,
}

impl StreamingBuild<File> {
    /// Creates (or truncates) `out` for the snapshot `snapshot` and writes
    /// the newest version up to `target` of every page `segments` changed.
    ///
    /// # Errors
    /// `Error::Corrupt` when the chain is not contiguous or a segment is
    /// malformed; I/O failures.
    pub fn new(
        snapshot: &Manifest,
        segments: &[(&Manifest, &[u8])],
        target: u64,
        out: &Path,
    ) -> Result<StreamingBuild<File>> {
        let segments: Vec<Segment<'_>> = segments
            .iter()
            .map(|(m, raw)| Segment::Memory(m, raw))
            .collect();
        Self::with_spool(snapshot, &segments, None, target, out)
    }

    /// [`StreamingBuild::new`] with segments in memory or in `spool`.
    ///
    /// # Errors
    /// As [`StreamingBuild::new`]; `Error::Failed` for a spooled segment
    /// without its spool, or when the spool cannot be read.
    pub fn with_spool(
        snapshot: &Manifest,
        segments: &[Segment<'_>],
        spool: Option<&Spool>,
        target: u64,
        out: &Path,
    ) -> Result<StreamingBuild<File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)
            .map_err(|e| Error::io("create", out, e))?;
        let mut build = StreamingBuild::over_spool(file, snapshot, segments, spool, target, out);
        if let Ok(b) = &mut build {
            b.path = Some(out.to_path_buf());
        } else {
            let _ = std::fs::remove_file(out);
        }
        build
    }
}

impl<F: PageFile> StreamingBuild<F> {
    /// [`StreamingBuild::new`] into `file` (`out` names it in errors).
    ///
    /// # Errors
    /// As [`StreamingBuild::new`].
    pub fn over(
        file: F,
        snapshot: &Manifest,
        segments: &[(&Manifest, &[u8])],
        target: u64,
        out: &Path,
    ) -> Result<StreamingBuild<F>> {
        let segments: Vec<Segment<'_>> = segments
            .iter()
            .map(|(m, raw)| Segment::Memory(m, raw))
            .collect();
        Self::over_spool(file, snapshot, &segments, None, target, out)
    }

    /// [`StreamingBuild::with_spool`] into `file`.
    ///
    /// # Errors
    /// As [`StreamingBuild::with_spool`].
    pub fn over_spool(
        file: F,
        snapshot: &Manifest,
        segments: &[Segment<'_>],
        spool: Option<&Spool>,
        target: u64,
        out: &Path,
    ) -> Result<StreamingBuild<F>> {
        let ps = u64::from(snapshot.page_size);
        if ps == 0 || snapshot.db_pages.checked_mul(ps) != Some(snapshot.raw_size) {
            return Err(Error::corrupt(
                &snapshot.id,
                format!(
                    "{} pages of {ps} bytes do not make its raw size of {} bytes",
                    snapshot.db_pages, snapshot.raw_size
                ),
            ));
        }
        let Walk {
            newest,
            min_pages,
            final_pages,
            reached,
        } = walk(
            snapshot,
            segments.iter().map(|s| match *s {
                Segment::Memory(m, raw) => decode(m, raw).map(|(m, ps, txns)| {
                    let txns = txns.into_iter().map(|t| t.map(PageRef::Memory));
                    (m, ps, txns.collect())
                }),
                Segment::Spooled(m, sp) => {
                    let (m, ps, txns) = sp.decoded(m);
                    let txns = txns.into_iter().map(|t| t.map(PageRef::Spooled));
                    Ok((m, ps, txns.collect()))
                }
            }),
            target,
        )?;

        let keep = min_pages.min(final_pages).min(snapshot.db_pages);
        let size = final_pages
            .checked_mul(ps)
            .ok_or_else(|| Error::corrupt(&snapshot.id, "the database size overflows"))?;
        file.set_len(size).map_err(|e| Error::io("size", out, e))?;
        let words = usize::try_from(keep.div_ceil(64))
            .map_err(|_| Error::corrupt(&snapshot.id, "too many pages for this machine"))?;
        let mut replaced = vec![0u64; words];
        for &pgno in newest.keys() {
            let i = u64::from(pgno) - 1;
            if i < keep {
                replaced[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        // Pages past what every size kept and no segment wrote again are zero.
        let zero = vec![0u8; ps as usize];
        let mut checksum = ((keep + 1)..=final_pages)
            .filter(|p| !newest.contains_key(&(*p as u32)))
            .fold(0u64, |c, p| c ^ page_hash(p as u32, &zero));
        let pages: Vec<(u32, PageRef<'_>)> = newest.iter().map(|(p, d)| (*p, *d)).collect();
        checksum ^= pages
            .par_iter()
            .map_init(
                || vec![0u8; ps as usize],
                |buf, (pgno, at)| {
                    let data: &[u8] = match (*at, spool) {
                        (PageRef::Memory(d), _) => d,
                        (PageRef::Spooled(offset), Some(spool)) => {
                            spool.read_page(offset, buf)?;
                            buf
                        }
                        (PageRef::Spooled(_), None) => {
                            return Err(Error::Failed(
                                "a spooled segment was given without its spool".into(),
                            ))
                        }
                    };
                    file.write_at(data, (u64::from(*pgno) - 1) * ps)
                        .map_err(|e| Error::io("write", out, e))?;
                    Ok::<u64, Error>(page_hash(*pgno, data))
                },
            )
            .try_reduce(|| 0, |a, b| Ok(a ^ b))?;
        Ok(StreamingBuild {
            snapshot: snapshot.clone(),
            file,
            path: None,
            replaced,
            keep,
            final_pages,
            reached,
            checksum,
            from_snapshot: 0,
            from_segments: pages.len() as u64,
            bytes_written: pages.len() as u64 * ps,
            next_frame: 0,
            finished: false,
        })
    }

    fn is_replaced(&self, pgno: u64) -> bool {
        let i = pgno - 1;
        self.replaced
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Writes one frame's pages that are neither replaced nor cut off, in
    /// runs of contiguous pages; returns the XOR of their hashes, their
    /// count and the bytes written.
    fn write_frame(&self, raw: &[u8], first_page: u64) -> Result<(u64, u64, u64)> {
        let ps = self.snapshot.page_size as usize;
        let wanted = |i: usize| {
            let pgno = first_page + i as u64 + 1;
            pgno <= self.keep && !self.is_replaced(pgno)
        };
        let n = raw.len() / ps;
        let (mut xor, mut pages, mut bytes) = (0u64, 0u64, 0u64);
        let mut i = 0;
        while i < n {
            if !wanted(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && wanted(i) {
                xor ^= page_hash(
                    (first_page + i as u64 + 1) as u32,
                    &raw[i * ps..(i + 1) * ps],
                );
                i += 1;
            }
            let run = &raw[start * ps..i * ps];
            self.file
                .write_at(run, (first_page + start as u64) * ps as u64)
                .map_err(|e| Error::io("write", self.display_path(), e))?;
            pages += (i - start) as u64;
            bytes += run.len() as u64;
        }
        Ok((xor, pages, bytes))
    }

    fn display_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from(&self.snapshot.id))
    }

    /// Writes the snapshot frames `first..first + frames.len()` (in order:
    /// `first` must be the next frame expected), but for the pages the
    /// segments replaced or a size cut off.
    ///
    /// # Errors
    /// `Error::Corrupt` for frames out of order or of the wrong size; I/O failures.
    pub fn frames(&mut self, first: usize, frames: &[Vec<u8>]) -> Result<()> {
        let snap = &self.snapshot;
        if first != self.next_frame || first + frames.len() > snap.frames.len() {
            return Err(Error::corrupt(
                &snap.id,
                format!(
                    "snapshot frames {first}..{} arrived where frame {} was expected",
                    first + frames.len(),
                    self.next_frame
                ),
            ));
        }
        let ps = u64::from(snap.page_size);
        let entries = &snap.frames[first..first + frames.len()];
        let this = &*self;
        let (xor, pages, bytes) = frames
            .par_iter()
            .zip(entries.par_iter())
            .map(|(raw, fe)| {
                if raw.len() as u64 != fe.raw_len
                    || fe.raw_offset % ps != 0
                    || fe.raw_len % ps != 0
                    || fe
                        .raw_offset
                        .checked_add(fe.raw_len)
                        .is_none_or(|e| e > snap.raw_size)
                {
                    return Err(Error::corrupt(
                        &snap.id,
                        "a snapshot frame has the wrong size or lies beyond the snapshot",
                    ));
                }
                this.write_frame(raw, fe.raw_offset / ps)
            })
            .try_reduce(|| (0, 0, 0), |a, b| Ok((a.0 ^ b.0, a.1 + b.1, a.2 + b.2)))?;
        if let (Some(a), Some(b)) = (entries.first(), entries.last()) {
            let end = (b.raw_offset + b.raw_len).min(self.keep * ps);
            if end > a.raw_offset {
                self.file.start_writeback(a.raw_offset, end - a.raw_offset);
            }
        }
        self.checksum ^= xor;
        self.from_snapshot += pages;
        self.bytes_written += bytes;
        self.next_frame += frames.len();
        Ok(())
    }

    /// Checks that every frame arrived, fsyncs, and proves the checksum.
    ///
    /// # Errors
    /// `Error::Corrupt` when frames are missing or the result's checksum
    /// differs from `expected_checksum`; I/O failures.
    pub fn finish(mut self, expected_checksum: &str) -> Result<RebuildResult> {
        let snap = &self.snapshot;
        if self.next_frame != snap.frames.len() {
            return Err(Error::corrupt(
                &snap.id,
                format!(
                    "{} of the snapshot's {} frames arrived",
                    self.next_frame,
                    snap.frames.len()
                ),
            ));
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", self.display_path(), e))?;
        let expected = parse_checksum(&snap.id, expected_checksum)?;
        if self.checksum != expected {
            return Err(Error::corrupt(
                &snap.id,
                format!(
                    "the database rebuilt at txid {} has checksum {} but the capture recorded {expected_checksum}: the chain does not reproduce the source",
                    self.reached,
                    checksum_hex(self.checksum)
                ),
            ));
        }
        self.finished = true;
        Ok(RebuildResult {
            txid: self.reached,
            checksum: checksum_hex(self.checksum),
            pages: self.final_pages,
            page_size: snap.page_size,
            pages_from_snapshot: self.from_snapshot,
            pages_from_segments: self.from_segments,
            bytes_written: self.bytes_written,
        })
    }
}

impl<F: PageFile> Drop for StreamingBuild<F> {
    /// A build that did not finish leaves no file behind.
    fn drop(&mut self) {
        if let (false, Some(path)) = (self.finished, &self.path) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
