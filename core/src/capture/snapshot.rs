//! Snapshots: the database read whole (file overlaid with the WAL frames up
//! to the capture position) under a read transaction opened before that
//! position was read, compressed in independent frames, and compared with the
//! chain when the chain exists (the check of the capture against the source).

use super::*;

impl Capturer {
    /// Starts a new generation: a snapshot of the database at the current WAL
    /// end, read under the held read transaction. A snapshot whose WAL was
    /// restarted or truncated while it was being read (possible while the
    /// capturer holds read mark 0) is torn and taken again.
    pub(super) fn new_generation(&mut self, why: &str) -> Result<StepReport> {
        let catalog = self.repo.catalog()?;
        let txid = catalog.max_txid() + 1;
        let id = new_generation_id();
        if catalog.generations.is_empty() {
            info!(generation = %id, "first capture of this database: starting generation");
        } else {
            warn!(generation = %id, "starting a new generation: {why}");
        }
        self.metrics.generation_started();
        for _ in 0..TORN_READ_TRIES {
            let header = source::header_of(&self.db_file, self.db())?;
            let read = match wal::read_wal(&wal::wal_path(self.db()), None)? {
                WalState::Empty => None,
                WalState::Continues(r) | WalState::Restarted(r) => Some(r),
            };
            let mut overlay = HashMap::new();
            let (db_pages, position, page_size) = match &read {
                Some(r) if !r.txns.is_empty() => {
                    overlay = newest_frames(r);
                    let pages = r
                        .txns
                        .last()
                        .map(|t| u64::from(t.db_pages))
                        .unwrap_or(header.pages);
                    (pages, r.end, r.header.page_size)
                }
                Some(r) => (header.pages, r.end, header.page_size),
                None => (header.pages, WalPosition::default(), header.page_size),
            };
            let events = self.events_from(&catalog)?;
            let now = Utc::now();
            self.gen = GenState {
                id: id.clone(),
                page_size,
                last_txid: txid,
                last_time: now,
                hashes: PageHashes::new(page_size as usize),
                wal: position,
                wal_pages: overlay.clone(),
                last_seq: events.archived_seq,
                last_event_rowid: events.archived_rowid,
                last_event_digest: events.archived_digest,
                last_snapshot_at: now,
                base_snapshot: String::new(),
            };
            let wal_header = read.as_ref().map(|r| r.header);
            let taken = self.snapshot_at(
                txid,
                now,
                &overlay,
                db_pages,
                Some(events.live_seq),
                wal_header.as_ref(),
            );
            let (manifest, hashes) = match taken {
                Ok(Some(x)) => x,
                Ok(None) => {
                    warn!("the WAL was restarted while the snapshot read it; taking it again");
                    continue;
                }
                Err(e) => {
                    // The generation has no base: the next step must start again.
                    self.poisoned = Some(format!(
                        "the snapshot of generation {} failed: {e}",
                        self.gen.id
                    ));
                    return Err(e);
                }
            };
            self.poisoned = None;
            self.gen.hashes = hashes;
            self.gen.base_snapshot = manifest.id.clone();
            self.continuous = true;
            self.save_state()?;
            return Ok(StepReport {
                snapshot: Some(manifest.id),
                new_generation: Some(why.to_string()),
                ..Default::default()
            });
        }
        self.poisoned = Some(format!(
            "the snapshot of generation {id} was torn by WAL restarts {TORN_READ_TRIES} times"
        ));
        Err(Error::Failed(format!(
            "could not read a consistent snapshot of {}: the application restarted its WAL \
             during each of {TORN_READ_TRIES} attempts; the capturer tries again at its next step",
            self.db().display()
        )))
    }

    /// Reads the database image (file overlaid with WAL pages) in frames of
    /// [`SNAPSHOT_FRAME_PAGES`] pages, calling `sink` with each frame in order.
    /// Returns the page hashes.
    pub(super) fn scan_pages(
        &self,
        overlay: &HashMap<u32, u64>,
        db_pages: u64,
        mut sink: Option<&mut dyn FnMut(u64, Vec<u8>) -> Result<()>>,
    ) -> Result<(PageHashes, ())> {
        let ps = self.gen.page_size as usize;
        let db_file = &self.db_file;
        let wal_path = wal::wal_path(self.db());
        let wal_file = if overlay.is_empty() {
            None
        } else {
            Some(File::open(&wal_path).map_err(|e| Error::io("open", &wal_path, e))?)
        };
        let frames = (db_pages as usize).div_ceil(SNAPSHOT_FRAME_PAGES);
        let batch = rayon::current_num_threads().max(1) * 2;
        let mut hashes = Vec::with_capacity(db_pages as usize);
        let db_path = self.db().to_path_buf();
        for batch_start in (0..frames).step_by(batch) {
            let batch_end = (batch_start + batch).min(frames);
            let results: Vec<Result<(Vec<u8>, Vec<u64>)>> = (batch_start..batch_end)
                .into_par_iter()
                .map(|f| {
                    let first = f * SNAPSHOT_FRAME_PAGES + 1;
                    let last = ((f + 1) * SNAPSHOT_FRAME_PAGES).min(db_pages as usize);
                    let mut raw = vec![0u8; (last + 1 - first) * ps];
                    // One read for the frame's range of the database file (pages
                    // the overlay replaces may be torn by a concurrent backfill;
                    // they are overwritten from the WAL below), then the overlay.
                    read_page_or_zero(db_file, &db_path, &mut raw, ((first - 1) * ps) as u64)?;
                    let mut hs = Vec::with_capacity(last + 1 - first);
                    for pgno in first..=last {
                        let buf = &mut raw[(pgno - first) * ps..(pgno - first + 1) * ps];
                        if let (Some(off), Some(wf)) = (overlay.get(&(pgno as u32)), &wal_file) {
                            wf.read_exact_at(buf, *off)
                                .map_err(|e| Error::io("read", &wal_path, e))?;
                        }
                        hs.push(page_hash(pgno as u32, buf));
                    }
                    Ok((raw, hs))
                })
                .collect();
            for (i, r) in results.into_iter().enumerate() {
                let (raw, hs) = r?;
                hashes.extend(hs);
                if let Some(s) = sink.as_mut() {
                    s(((batch_start + i) * SNAPSHOT_FRAME_PAGES * ps) as u64, raw)?;
                }
            }
        }
        Ok((PageHashes::from_hashes(ps, hashes), ()))
    }

    /// Writes a snapshot of the image at `txid` and returns its manifest and
    /// page hashes; `None`, with nothing written, when `wal_header` (the WAL
    /// the overlay was read from) changed during the read: the image may be
    /// torn.
    pub(super) fn snapshot_at(
        &self,
        txid: u64,
        time: DateTime<Utc>,
        overlay: &HashMap<u32, u64>,
        db_pages: u64,
        seq_max: Option<i64>,
        wal_header: Option<&wal::WalHeader>,
    ) -> Result<Option<(Manifest, PageHashes)>> {
        let mut compressed: Vec<u8> = Vec::new();
        let mut frames: Vec<FrameEntry> = Vec::new();
        let mut raw_hasher = blake3::Hasher::new();
        let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut flush = |pending: &mut Vec<(u64, Vec<u8>)>,
                         compressed: &mut Vec<u8>,
                         frames: &mut Vec<FrameEntry>|
         -> Result<()> {
            let outs: Vec<Result<Vec<u8>>> = pending
                .par_iter()
                .map(|(_, raw)| formats::compress(raw))
                .collect();
            for ((off, raw), out) in pending.drain(..).zip(outs) {
                let out = out?;
                raw_hasher.update(&raw);
                frames.push(FrameEntry {
                    raw_offset: off,
                    raw_len: raw.len() as u64,
                    comp_offset: compressed.len() as u64,
                    comp_len: out.len() as u64,
                });
                compressed.extend_from_slice(&out);
            }
            Ok(())
        };
        let batch = rayon::current_num_threads().max(1) * 2;
        let scanned = {
            let mut sink = |off: u64, raw: Vec<u8>| -> Result<()> {
                pending.push((off, raw));
                if pending.len() >= batch {
                    flush(&mut pending, &mut compressed, &mut frames)?;
                }
                Ok(())
            };
            self.scan_pages(overlay, db_pages, Some(&mut sink))
        };
        let flushed =
            scanned.and_then(|h| flush(&mut pending, &mut compressed, &mut frames).map(|()| h));
        // A WAL restarted or truncated under the read makes it torn, and a
        // read error on a WAL cut short is part of that, not a failure.
        if let Some(h) = wal_header {
            if !wal::header_unchanged(&wal::wal_path(self.db()), h)? {
                return Ok(None);
            }
        }
        let (hashes, ()) = flushed?;
        let raw_size = db_pages * u64::from(self.gen.page_size);
        let checksum = checksum_hex(hashes.checksum());
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: snapshot_id(&self.gen.id, txid),
            kind: ObjectKind::Snapshot,
            generation: self.gen.id.clone(),
            created_at: Utc::now(),
            page_size: self.gen.page_size,
            txid_min: txid,
            txid_max: txid,
            time_min: time,
            time_max: time,
            seq_min: None,
            seq_max,
            raw_size,
            compressed_size: compressed.len() as u64,
            blake3_compressed: blake3::hash(&compressed).to_hex().to_string(),
            blake3_raw: raw_hasher.finalize().to_hex().to_string(),
            db_checksum_before: None,
            db_checksum_after: Some(checksum.clone()),
            db_pages,
            frames,
            transactions: vec![TxnEntry {
                txid,
                time,
                db_pages,
                checksum,
                pages: db_pages as u32,
            }],
            wal: Some(self.gen.wal),
            event_count: 0,
            source_db: Some(self.db().display().to_string()),
            level: 0,
            min_db_pages: None,
        };
        self.repo.write_object(&manifest, &compressed)?;
        self.metrics.shipped(compressed.len() as u64);
        info!(id = %manifest.id, pages = db_pages, bytes = compressed.len(), "snapshot written");
        Ok(Some((manifest, hashes)))
    }

    /// Snapshot of the current capture position (under the read transaction
    /// opened before the position was read), compared with the chain: this is
    /// the check of the capture against the source. When a snapshot of this
    /// txid exists already (nothing was committed since), it is not taken
    /// again.
    pub(super) fn snapshot_now(&mut self) -> Result<StepReport> {
        let id = snapshot_id(&self.gen.id, self.gen.last_txid);
        if self.repo.backend().exists(&Manifest::manifest_key(&id))? {
            self.gen.last_snapshot_at = Utc::now();
            info!(id = %id, "nothing committed since the last snapshot: not taken again");
            return Ok(StepReport {
                snapshot_existing: Some(id),
                ..Default::default()
            });
        }
        for _ in 0..TORN_READ_TRIES {
            let mut header = None;
            let mut overlay = HashMap::new();
            if self.gen.wal.frame > 0 {
                if let WalState::Continues(r) | WalState::Restarted(r) =
                    wal::read_wal_upto(&wal::wal_path(self.db()), self.gen.wal.frame)?
                {
                    if r.end != self.gen.wal {
                        return Err(Error::Failed(
                            "the WAL no longer matches the capture position".into(),
                        ));
                    }
                    header = Some(r.header);
                    overlay = newest_frames(&r);
                }
            }
            let seq = if self.has_events {
                Some(self.live_last_seq()?)
            } else {
                None
            };
            let taken = self.snapshot_at(
                self.gen.last_txid,
                self.gen.last_time,
                &overlay,
                self.gen.hashes.pages(),
                seq,
                header.as_ref(),
            )?;
            let Some((manifest, hashes)) = taken else {
                warn!("the WAL was restarted while the snapshot read it; taking it again");
                continue;
            };
            self.gen.last_snapshot_at = Utc::now();
            if hashes.checksum() != self.gen.hashes.checksum() {
                // The database differs from what the chain says: never guess.
                let why = format!(
                    "the snapshot at txid {} has checksum {} but the captured chain says {}",
                    self.gen.last_txid,
                    checksum_hex(hashes.checksum()),
                    checksum_hex(self.gen.hashes.checksum())
                );
                self.metrics.check_failed();
                tracing::error!("capture check failed: {why}");
                let _ = self
                    .repo
                    .backend()
                    .delete(&Manifest::manifest_key(&manifest.id));
                return self.restart_generation(&why);
            }
            self.gen.base_snapshot = manifest.id.clone();
            return Ok(StepReport {
                snapshot: Some(manifest.id),
                ..Default::default()
            });
        }
        Err(Error::Failed(format!(
            "the snapshot at txid {} was torn by WAL restarts {TORN_READ_TRIES} times; \
             it is taken again at the next step",
            self.gen.last_txid
        )))
    }
}

/// The id of a generation's snapshot at a txid.
pub(super) fn snapshot_id(generation: &str, txid: u64) -> String {
    format!("full_{generation}_{txid:012}")
}

/// How often a snapshot torn by a concurrent WAL restart is taken again
/// before the step fails (and is retried at the next one).
const TORN_READ_TRIES: usize = 5;

pub(super) fn read_page_or_zero(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    Ok(())
}
