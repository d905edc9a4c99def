//! The rebuild in bounded memory: the snapshot's frames are written to the
//! staged file as they arrive (each frame then dropped), remembering one
//! 64-bit hash per page; once the segments are in, the pages they changed
//! are written over, the pages their sizes cut off are zeroed, and the
//! database checksum is formed from the remembered hashes. Memory holds the
//! frames in flight, 8 bytes per snapshot page, and the segments (few once
//! compacted), never the whole snapshot.
//!
//! Snapshot pages are written once; a page a segment changed is written a
//! second time. One fsync at the end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{newest_pages, RebuildResult, Walk};
use crate::checksum::page_hash;
use crate::error::{Error, Result};
use crate::repo::{checksum_hex, parse_checksum, Manifest};

/// A database being rebuilt from a snapshot that arrives frame by frame.
pub struct StreamingBuild {
    snapshot: Manifest,
    file: File,
    path: PathBuf,
    /// Hash of each snapshot page written, by page number - 1.
    hashes: Vec<u64>,
    next_frame: usize,
    finished: bool,
}

impl StreamingBuild {
    /// Creates (or truncates) `out` for the snapshot `snapshot`.
    ///
    /// # Errors
    /// I/O failures.
    pub fn new(snapshot: &Manifest, out: &Path) -> Result<StreamingBuild> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)
            .map_err(|e| Error::io("create", out, e))?;
        let ps = u64::from(snapshot.page_size);
        file.set_len(snapshot.db_pages * ps)
            .map_err(|e| Error::io("size", out, e))?;
        Ok(StreamingBuild {
            snapshot: snapshot.clone(),
            file,
            path: out.to_path_buf(),
            hashes: vec![0; usize::try_from(snapshot.db_pages).unwrap_or(0)],
            next_frame: 0,
            finished: false,
        })
    }

    /// Writes the snapshot frames `first..first + frames.len()` (in order:
    /// `first` must be the next frame expected).
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
        let ps = snap.page_size as usize;
        let entries = &snap.frames[first..first + frames.len()];
        let hashes: Vec<(usize, Vec<u64>)> = frames
            .par_iter()
            .zip(entries.par_iter())
            .map(|(raw, fe)| {
                if raw.len() as u64 != fe.raw_len || raw.len() % ps != 0 {
                    return Err(Error::corrupt(
                        &snap.id,
                        "a snapshot frame has the wrong size",
                    ));
                }
                self.file
                    .write_all_at(raw, fe.raw_offset)
                    .map_err(|e| Error::io("write", &self.path, e))?;
                let first_page = (fe.raw_offset / ps as u64) as usize;
                let h = raw
                    .chunks(ps)
                    .enumerate()
                    .map(|(i, p)| page_hash((first_page + i + 1) as u32, p))
                    .collect();
                Ok((first_page, h))
            })
            .collect::<Result<_>>()?;
        for (first_page, h) in hashes {
            let end = first_page + h.len();
            let slot = self
                .hashes
                .get_mut(first_page..end)
                .ok_or_else(|| Error::corrupt(&snap.id, "a snapshot frame lies beyond its size"))?;
            slot.copy_from_slice(&h);
        }
        self.next_frame += frames.len();
        Ok(())
    }

    /// Applies the segments up to `target`, proves the checksum and fsyncs.
    ///
    /// # Errors
    /// `Error::Corrupt` when frames are missing, the chain is broken or the
    /// result's checksum differs from `expected_checksum`; I/O failures.
    pub fn finish(
        mut self,
        segments: &[(&Manifest, &[u8])],
        target: u64,
        expected_checksum: &str,
    ) -> Result<RebuildResult> {
        let snap = self.snapshot.clone();
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
        let ps = u64::from(snap.page_size);
        let Walk {
            newest,
            min_pages,
            final_pages,
            reached,
        } = newest_pages(&snap, segments, target)?;
        let keep = min_pages.min(final_pages).min(snap.db_pages);
        // Pages beyond what every size kept are zero, as SQLite reads them.
        self.file
            .set_len(keep * ps)
            .and_then(|_| self.file.set_len(final_pages * ps))
            .map_err(|e| Error::io("size", &self.path, e))?;
        let mut checksum = 0u64;
        let mut from_snapshot = 0u64;
        for (i, h) in self.hashes.iter().enumerate().take(keep as usize) {
            if !newest.contains_key(&(i as u32 + 1)) {
                checksum ^= h;
                from_snapshot += 1;
            }
        }
        let zero = vec![0u8; ps as usize];
        for pgno in (keep + 1)..=final_pages {
            if !newest.contains_key(&(pgno as u32)) {
                checksum ^= page_hash(pgno as u32, &zero);
            }
        }
        let pages: Vec<(u32, &[u8])> = newest.iter().map(|(p, d)| (*p, *d)).collect();
        let (file, path) = (&self.file, &self.path);
        checksum ^= pages
            .par_iter()
            .map(|(pgno, data)| {
                file.write_all_at(data, (u64::from(*pgno) - 1) * ps)
                    .map_err(|e| Error::io("write", path, e))?;
                Ok::<u64, Error>(page_hash(*pgno, data))
            })
            .try_reduce(|| 0, |a, b| Ok(a ^ b))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        let expected = parse_checksum(&snap.id, expected_checksum)?;
        if checksum != expected {
            return Err(Error::corrupt(
                &snap.id,
                format!(
                    "the database rebuilt at txid {target} has checksum {} but the capture recorded {expected_checksum}: the chain does not reproduce the source",
                    checksum_hex(checksum)
                ),
            ));
        }
        self.finished = true;
        Ok(RebuildResult {
            txid: reached,
            checksum: checksum_hex(checksum),
            pages: final_pages,
            page_size: snap.page_size,
            pages_from_snapshot: from_snapshot,
            pages_from_segments: pages.len() as u64,
            bytes_written: (snap.db_pages + pages.len() as u64) * ps,
        })
    }
}

impl Drop for StreamingBuild {
    /// A build that did not finish leaves no file behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{FrameEntry, ObjectKind};

    fn snapshot(pages: u64, ps: u32) -> Manifest {
        Manifest {
            page_size: ps,
            raw_size: pages * u64::from(ps),
            db_pages: pages,
            frames: (0..pages / 2)
                .map(|i| FrameEntry {
                    raw_offset: i * 2 * u64::from(ps),
                    raw_len: 2 * u64::from(ps),
                    comp_offset: 0,
                    comp_len: 0,
                })
                .collect(),
            ..Manifest::for_test("full_g_1", ObjectKind::Snapshot)
        }
    }

    fn frame(first_page: u8, ps: usize) -> Vec<u8> {
        (0..2 * ps)
            .map(|i| first_page.wrapping_add((i / ps) as u8))
            .collect()
    }

    #[test]
    fn frames_written_as_they_come_give_the_image_and_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s.db");
        let m = snapshot(4, 512);
        let mut b = StreamingBuild::new(&m, &out).unwrap();
        b.frames(0, &[frame(1, 512)]).unwrap();
        // Out of order: refused.
        assert!(b.frames(0, &[frame(1, 512)]).is_err());
        b.frames(1, &[frame(3, 512)]).unwrap();
        let image: Vec<u8> = [frame(1, 512), frame(3, 512)].concat();
        let want = crate::checksum::image_checksum(&image, 512);
        let r = b.finish(&[], 1, &checksum_hex(want)).unwrap();
        assert_eq!(r.pages, 4);
        assert_eq!(std::fs::read(&out).unwrap(), image);
    }

    #[test]
    fn an_unfinished_or_unproven_build_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s.db");
        let m = snapshot(4, 512);
        let mut b = StreamingBuild::new(&m, &out).unwrap();
        b.frames(0, &[frame(1, 512)]).unwrap();
        assert!(out.exists());
        drop(b);
        assert!(!out.exists(), "a build dropped before finish left its file");
        let mut b = StreamingBuild::new(&m, &out).unwrap();
        b.frames(0, &[frame(1, 512), frame(3, 512)]).unwrap();
        let err = b.finish(&[], 1, &checksum_hex(1)).unwrap_err().to_string();
        assert!(err.contains("does not reproduce the source"), "{err}");
        assert!(!out.exists(), "a build whose checksum failed left its file");
        // A frame missing: refused at finish.
        let mut b = StreamingBuild::new(&m, &out).unwrap();
        b.frames(0, &[frame(1, 512)]).unwrap();
        assert!(b.finish(&[], 1, &checksum_hex(0)).is_err());
        assert!(!out.exists());
    }
}
