//! Shipping committed WAL frames as segments. The frames are read, then the
//! WAL header is read again: only when it is unchanged were the frames read
//! intact (a restart rewrites the header before any frame), and only then is
//! the segment written.

use super::*;

impl Capturer {
    /// Copies the committed transactions of `read` into one segment.
    pub(super) fn ship(&mut self, read: &WalRead) -> Result<StepReport> {
        let mut report = StepReport::default();
        if read.header.page_size != self.gen.page_size {
            return Err(Error::Failed("page size changed".into()));
        }
        if read.txns.is_empty() {
            if read.end.salt1 != self.gen.wal.salt1 || read.end.salt2 != self.gen.wal.salt2 {
                self.gen.wal_pages.clear();
            }
            self.gen.wal = read.end;
            return Ok(report);
        }
        let wal_path = wal::wal_path(self.db());
        let wal_file = File::open(&wal_path).map_err(|e| Error::io("open", &wal_path, e))?;
        let ps = self.gen.page_size as usize;
        let now = Utc::now();
        let before = checksum_hex(self.gen.hashes.checksum());
        let mut txns = Vec::with_capacity(read.txns.len());
        let mut entries = Vec::with_capacity(read.txns.len());
        let mut hashes = self.gen.hashes.clone();
        let mut txid = self.gen.last_txid;
        for t in &read.txns {
            txid += 1;
            let mut pages = Vec::with_capacity(t.pages.len());
            for (pgno, off) in &t.pages {
                let mut buf = vec![0u8; ps];
                if let Err(e) = wal_file.read_exact_at(&mut buf, *off) {
                    // A WAL cut short under the read was restarted or
                    // truncated: the read is torn, not an I/O failure.
                    if !wal::header_unchanged(&wal_path, &read.header)? {
                        return Err(torn(self.db()));
                    }
                    return Err(Error::io("read", &wal_path, e));
                }
                hashes.set(*pgno, &buf);
                pages.push((*pgno, buf));
            }
            hashes.resize(u64::from(t.db_pages));
            let checksum = hashes.checksum();
            entries.push(TxnEntry {
                txid,
                time: now,
                db_pages: u64::from(t.db_pages),
                checksum: checksum_hex(checksum),
                pages: pages.len() as u32,
            });
            report.pages += pages.len() as u64;
            txns.push(SegmentTxnOwned {
                txid,
                commit_time: now,
                db_pages: u64::from(t.db_pages),
                checksum,
                pages,
            });
        }
        if !wal::header_unchanged(&wal_path, &read.header)? {
            return Err(torn(self.db()));
        }
        let raw = formats::encode_segment(self.gen.page_size, &txns);
        let compressed = formats::compress(&raw)?;
        let first = self.gen.last_txid + 1;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: format!("incr_{}_{:012}_{:012}", self.gen.id, first, txid),
            kind: ObjectKind::Segment,
            generation: self.gen.id.clone(),
            created_at: now,
            page_size: self.gen.page_size,
            txid_min: first,
            txid_max: txid,
            time_min: now,
            time_max: now,
            seq_min: None,
            seq_max: None,
            raw_size: raw.len() as u64,
            compressed_size: compressed.len() as u64,
            blake3_compressed: blake3::hash(&compressed).to_hex().to_string(),
            blake3_raw: blake3::hash(&raw).to_hex().to_string(),
            db_checksum_before: Some(before),
            db_checksum_after: Some(checksum_hex(hashes.checksum())),
            db_pages: hashes.pages(),
            frames: Vec::new(),
            transactions: entries,
            wal: Some(read.end),
            event_count: 0,
            source_db: Some(self.db().display().to_string()),
            level: 0,
            min_db_pages: None,
        };
        self.repo.write_object(&manifest, &compressed)?;
        // Only once the segment is durable does the capture position advance.
        self.metrics.shipped(compressed.len() as u64);
        self.metrics.committed(txid, now);
        if read.end.salt1 != self.gen.wal.salt1 || read.end.salt2 != self.gen.wal.salt2 {
            self.gen.wal_pages.clear();
        }
        for t in &read.txns {
            for (p, off) in &t.pages {
                self.gen.wal_pages.insert(*p, *off);
            }
        }
        self.gen.hashes = hashes;
        self.gen.last_txid = txid;
        self.gen.last_time = now;
        self.gen.wal = read.end;
        report.txns = read.txns.len() as u64;
        report.txid_min = Some(first);
        report.txid_max = Some(txid);
        report.segments.push(manifest.id);
        Ok(report)
    }
}

fn torn(db: &Path) -> Error {
    Error::Failed(format!(
        "the WAL of {} was restarted while its frames were being read; \
         nothing was shipped, the step is retried",
        db.display()
    ))
}
