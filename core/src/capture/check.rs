//! The sampled check of the captured chain against the source (DESIGN.md
//! §2): at every step a few pages of the database, read as SQLite would read
//! them at the capture position (the newest WAL frame up to the position, or
//! the database file), must hash to the chain's version of each page. A
//! snapshot checks every page; this catches a chain that drifted from the
//! database between snapshots, which no check of the chain against itself
//! can see.

use super::*;

/// Pages compared at each step besides page 1 and the last page.
const SAMPLED_PAGES: u64 = 4;

impl Capturer {
    /// Compares sampled pages with the chain. Runs after the step's copy and
    /// before the read transaction moves: the read held then began at or
    /// before the capture position, so a checkpoint cannot have written a
    /// page newer than the position into the database file. Returns what
    /// differs, `None` when every sampled page agrees (or when the WAL was
    /// restarted during the reads, which makes them inconclusive).
    pub(super) fn check_sample(&self) -> Result<Option<String>> {
        let pages = self.gen.hashes.pages();
        if pages == 0 {
            return Ok(None);
        }
        let mut sample = vec![1, pages];
        for i in 0..SAMPLED_PAGES {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&self.steps.to_le_bytes(), i);
            sample.push(h % pages + 1);
        }
        sample.sort_unstable();
        sample.dedup();
        let ps = self.gen.page_size as usize;
        let wal_path = wal::wal_path(self.db());
        let wal_header = if self.gen.wal_pages.is_empty() {
            None
        } else {
            match wal::read_header(&wal_path)? {
                Some(h) => Some(h),
                None => return Ok(None),
            }
        };
        if let Some(h) = &wal_header {
            if (h.salt1, h.salt2) != (self.gen.wal.salt1, self.gen.wal.salt2) {
                return Ok(None);
            }
        }
        let wal_file = match wal_header {
            Some(_) => Some(File::open(&wal_path).map_err(|e| Error::io("open", &wal_path, e))?),
            None => None,
        };
        let mut buf = vec![0u8; ps];
        let mut differing = Vec::new();
        for pgno in sample {
            let idx = (pgno - 1) as usize;
            match (self.gen.wal_pages.get(&(pgno as u32)), &wal_file) {
                (Some(off), Some(f)) => {
                    if let Err(e) = f.read_exact_at(&mut buf, *off) {
                        // Cut short by a restart or truncation: inconclusive.
                        if wal_header
                            .as_ref()
                            .is_some_and(|h| !wal::header_unchanged(&wal_path, h).unwrap_or(false))
                        {
                            return Ok(None);
                        }
                        return Err(Error::io("read", &wal_path, e));
                    }
                }
                _ => snapshot::read_page_or_zero(
                    &self.db_file,
                    self.db(),
                    &mut buf,
                    idx as u64 * ps as u64,
                )?,
            }
            if page_hash(pgno as u32, &buf) != self.gen.hashes.hashes()[idx] {
                differing.push(pgno);
            }
        }
        if let Some(h) = &wal_header {
            if !wal::header_unchanged(&wal_path, h)? {
                return Ok(None);
            }
        }
        if differing.is_empty() {
            return Ok(None);
        }
        Ok(Some(format!(
            "page(s) {differing:?} of {} at txid {} differ from the captured chain's versions: \
             the chain does not reproduce the database",
            self.db().display(),
            self.gen.last_txid
        )))
    }
}
