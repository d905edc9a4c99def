//! Segments spooled to a file, so that what a restore holds stays bounded
//! however many segments the plan reads. The segments reach wal-apply before
//! the snapshot and their pages can be written only once the last of them has
//! come (the newest version of each page wins), so until then wal-apply holds
//! them; past its memory budget it appends each further segment's raw content
//! to a spool file in the staging directory and keeps only an index of its
//! transactions and where each page's bytes are. The build reads those pages
//! back one at a time. The spool is removed when dropped.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{decode, Decoded, Txn};
use crate::error::{Error, Result};
use crate::repo::Manifest;

/// A spool file of segments' raw content.
pub struct Spool {
    file: File,
    path: PathBuf,
    len: u64,
}

/// A segment in a [`Spool`]: its page size and transactions, each page by
/// its offset in the spool.
pub struct SpooledSegment {
    page_size: u32,
    txns: Vec<Txn<u64>>,
    raw_len: u64,
}

impl SpooledSegment {
    /// The segment's raw length (what memory no longer holds).
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    /// The segment decoded, its pages by offset (for the walk).
    pub(crate) fn decoded<'m>(&self, m: &'m Manifest) -> Decoded<'m, u64> {
        let txns = self
            .txns
            .iter()
            .map(|t| Txn {
                txid: t.txid,
                db_pages: t.db_pages,
                pages: t.pages.clone(),
            })
            .collect();
        (m, self.page_size, txns)
    }
}

impl Spool {
    /// Creates (or truncates) the spool file at `path`.
    ///
    /// # Errors
    /// I/O failures.
    pub fn create(path: &Path) -> Result<Spool> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create the segment spool", path, e))?;
        Ok(Spool {
            file,
            path: path.to_path_buf(),
            len: 0,
        })
    }

    /// The spool file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the segment `m` with raw content `raw` and returns its index.
    ///
    /// # Errors
    /// `Error::Corrupt` for a malformed segment; I/O failures (a full disk
    /// among them).
    pub fn add(&mut self, m: &Manifest, raw: &[u8]) -> Result<SpooledSegment> {
        let (_, page_size, txns) = decode(m, raw)?;
        let base = self.len;
        let start = raw.as_ptr() as usize;
        let txns = txns
            .into_iter()
            .map(|t| t.map(|data| base + (data.as_ptr() as usize - start) as u64))
            .collect();
        self.file
            .write_all_at(raw, base)
            .map_err(|e| Error::io("write the segment spool", &self.path, e))?;
        self.len += raw.len() as u64;
        Ok(SpooledSegment {
            page_size,
            txns,
            raw_len: raw.len() as u64,
        })
    }

    /// Reads the page whose bytes start at `offset` into `buf`.
    ///
    /// # Errors
    /// I/O failures, or an offset past what was spooled.
    pub(crate) fn read_page(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(Error::Failed(format!(
                "{}: a page at offset {offset} lies past the spool's {} bytes",
                self.path.display(),
                self.len
            )));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read the segment spool", &self.path, e))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}
