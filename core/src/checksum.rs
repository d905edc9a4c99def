//! The database checksum of DESIGN.md §2: the XOR over all pages of a 64-bit
//! hash of (page number, page bytes). It updates in O(changed pages) and lets
//! a restore prove its output equals the source at a txid, page for page.

use rayon::prelude::*;

/// Hash of one page: XXH3-64 of its bytes seeded with its page number.
#[inline]
pub fn page_hash(pgno: u32, bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, u64::from(pgno))
}

/// The checksum of a whole database image (`data.len()` a multiple of `page_size`).
pub fn image_checksum(data: &[u8], page_size: usize) -> u64 {
    data.par_chunks(page_size)
        .enumerate()
        .map(|(i, p)| page_hash(i as u32 + 1, p))
        .reduce(|| 0, |a, b| a ^ b)
}

/// Per-page hashes of a database, kept by the capturer so that the checksum
/// updates in O(changed pages).
#[derive(Debug, Clone, Default)]
pub struct PageHashes {
    page_size: usize,
    hashes: Vec<u64>,
    checksum: u64,
}

impl PageHashes {
    /// Empty table (a database of zero pages).
    pub fn new(page_size: usize) -> Self {
        PageHashes {
            page_size,
            hashes: Vec::new(),
            checksum: 0,
        }
    }

    /// Builds the table from hashes of pages 1..=n.
    pub fn from_hashes(page_size: usize, hashes: Vec<u64>) -> Self {
        let checksum = hashes.iter().fold(0, |a, h| a ^ h);
        PageHashes {
            page_size,
            hashes,
            checksum,
        }
    }

    /// The current checksum.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Pages in the database.
    pub fn pages(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The hashes (for saving).
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// Sets page `pgno` (1-based) to `bytes`, growing with zero pages if needed.
    pub fn set(&mut self, pgno: u32, bytes: &[u8]) {
        let idx = pgno as usize - 1;
        if idx >= self.hashes.len() {
            self.resize(pgno as u64);
        }
        let new = page_hash(pgno, bytes);
        self.checksum ^= self.hashes[idx] ^ new;
        self.hashes[idx] = new;
    }

    /// Sets the database size in pages: pages cut off leave the checksum, new
    /// pages count as zero-filled (SQLite reads unwritten pages as zeros).
    pub fn resize(&mut self, pages: u64) {
        let pages = pages as usize;
        while self.hashes.len() > pages {
            if let Some(h) = self.hashes.pop() {
                self.checksum ^= h;
            }
        }
        if self.hashes.len() < pages {
            let zero = vec![0u8; self.page_size];
            while self.hashes.len() < pages {
                let pgno = self.hashes.len() as u32 + 1;
                let h = page_hash(pgno, &zero);
                self.checksum ^= h;
                self.hashes.push(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_equals_full_recompute() {
        let ps = 512;
        let mut img = vec![0u8; ps * 8];
        for (i, b) in img.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let hashes: Vec<u64> = img
            .chunks(ps)
            .enumerate()
            .map(|(i, p)| page_hash(i as u32 + 1, p))
            .collect();
        let mut t = PageHashes::from_hashes(ps, hashes);
        assert_eq!(t.checksum(), image_checksum(&img, ps));
        // change page 3, grow to 10 with page 10 written, shrink to 9
        img[2 * ps] ^= 0xff;
        t.set(3, &img[2 * ps..3 * ps]);
        img.resize(ps * 10, 0);
        img[9 * ps] = 7;
        t.set(10, &img[9 * ps..]);
        assert_eq!(t.checksum(), image_checksum(&img, ps));
        img.truncate(ps * 9);
        t.resize(9);
        assert_eq!(t.checksum(), image_checksum(&img, ps));
        assert_ne!(
            page_hash(1, &img[..ps]),
            page_hash(2, &img[..ps]),
            "page number is part of the hash"
        );
    }
}
