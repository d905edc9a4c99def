//! The event archive: new `events` rows, by rowid, into event objects.
//!
//! The archive is proven against the live table at every step: the last
//! archived row must still be in the table, unchanged, at its rowid (an
//! application that deletes or rewrites archived events is reported, and a
//! new generation records the table as it is). A new generation continues
//! the repository's archive where it ended when the live table still holds
//! that last archived event, so that events committed while no capturer ran
//! (after a crash) are archived too and restores in that span stay exact.

use super::*;

/// Where a new generation's event archive starts.
pub(super) struct ArchiveStart {
    /// The largest sequence number in the live table.
    pub live_seq: i64,
    /// The last sequence number already archived (the archive continues after it).
    pub archived_seq: i64,
    /// Its rowid (0 when unknown: the first read then scans from the start).
    pub archived_rowid: i64,
    /// The digest of that row, as the per-step check expects it.
    pub archived_digest: Option<[u8; 32]>,
}

/// Rows read after a rowid.
pub(super) struct EventsRead {
    /// Rows with sequence numbers above the archived ones, by sequence number.
    pub rows: Vec<EventRow>,
    /// How many rows were read.
    pub read: usize,
    /// The rowid of the last row read, and its digest.
    pub last_rowid: i64,
    pub last_digest: Option<[u8; 32]>,
}

/// The digest of an event row, for the per-step check of the archive.
pub(super) fn event_digest(e: &EventRow) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&e.sequence_number.to_le_bytes());
    for part in [
        &e.event_id,
        &e.event_type,
        &e.aggregate_id,
        &e.event_data,
        &e.created_at,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

fn value_bytes(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(match r.get_ref(i)? {
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.to_vec(),
        rusqlite::types::ValueRef::Null => Vec::new(),
        rusqlite::types::ValueRef::Integer(v) => v.to_string().into_bytes(),
        rusqlite::types::ValueRef::Real(v) => v.to_string().into_bytes(),
    })
}

fn event_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        sequence_number: r.get(first)?,
        event_id: value_bytes(r, first + 1)?,
        event_type: value_bytes(r, first + 2)?,
        aggregate_id: value_bytes(r, first + 3)?,
        event_data: value_bytes(r, first + 4)?,
        created_at: value_bytes(r, first + 5)?,
    })
}

const EVENT_COLUMNS: &str =
    "sequence_number, event_id, event_type, aggregate_id, event_data, created_at";

impl Capturer {
    /// The largest sequence number in the live table (0 when none).
    pub(super) fn live_last_seq(&self) -> Result<i64> {
        Ok(last_event_position(&self.readers[self.active], self.db())?.1)
    }

    /// The live row at `rowid`, if any.
    pub(super) fn live_event_at(&self, rowid: i64) -> Result<Option<EventRow>> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE rowid = ?1");
        match self.readers[self.active].query_row(&sql, [rowid], |r| event_row(r, 0)) {
            Ok(e) => Ok(Some(e)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(Error::sqlite("read events", self.db(), e)),
        }
    }

    /// The last event the repository archived (any generation): its
    /// sequence number and digest, read from the newest event object.
    pub(super) fn archived_tail(
        &self,
        catalog: &crate::repo::Catalog,
    ) -> Result<Option<(i64, [u8; 32])>> {
        let Some(m) = catalog
            .generations
            .iter()
            .flat_map(|g| g.events.iter())
            .filter(|e| e.seq_max.is_some())
            .max_by_key(|e| e.seq_max)
        else {
            return Ok(None);
        };
        let bytes = self.repo.read_object(m)?;
        crate::objects::verify_compressed(m, &bytes)?;
        let raw = formats::decompress(&m.id, &bytes, m.raw_size)?;
        let rows = formats::decode_events(&m.id, &raw)?;
        Ok(rows.last().map(|e| (e.sequence_number, event_digest(e))))
    }

    /// Where a new generation's archive starts: after the repository's last
    /// archived event when the live table still holds it unchanged (the
    /// events after it were committed while nobody archived them), else after
    /// the live table's last event (those are in the generation's snapshot).
    pub(super) fn events_from(&self, catalog: &crate::repo::Catalog) -> Result<ArchiveStart> {
        if !self.has_events {
            return Ok(ArchiveStart {
                live_seq: 0,
                archived_seq: 0,
                archived_rowid: 0,
                archived_digest: None,
            });
        }
        let conn = &self.readers[self.active];
        let (live_rowid, live_seq) = last_event_position(conn, self.db())?;
        let live_tail = self.live_event_at(live_rowid)?;
        let at_live = ArchiveStart {
            live_seq,
            archived_seq: live_seq,
            archived_rowid: live_rowid,
            archived_digest: live_tail.as_ref().map(event_digest),
        };
        let Some((seq, digest)) = self.archived_tail(catalog)? else {
            return Ok(at_live);
        };
        if seq >= live_seq {
            return Ok(at_live);
        }
        // One scan, only when a generation starts behind the live table.
        let sql = format!("SELECT rowid, {EVENT_COLUMNS} FROM events WHERE sequence_number = ?1");
        let found = conn
            .query_row(&sql, [seq], |r| Ok((r.get::<_, i64>(0)?, event_row(r, 1)?)))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(Error::sqlite("read events", self.db(), e)),
            })?;
        match found {
            Some((rowid, row)) if event_digest(&row) == digest => {
                info!(
                    from = seq + 1,
                    to = live_seq,
                    "archiving the events committed while no capturer ran"
                );
                Ok(ArchiveStart {
                    live_seq,
                    archived_seq: seq,
                    archived_rowid: rowid,
                    archived_digest: Some(digest),
                })
            }
            _ => {
                warn!(
                    seq,
                    "the live events table no longer holds the last archived event as archived: \
                     the new generation's archive starts after its snapshot"
                );
                Ok(at_live)
            }
        }
    }

    /// Checks that the last archived event is still in the live table,
    /// unchanged, at its rowid. `Err` names what changed.
    pub(super) fn check_archive(&self) -> Result<std::result::Result<(), String>> {
        let Some(expected) = self.gen.last_event_digest else {
            return Ok(Ok(()));
        };
        if self.gen.last_event_rowid == 0 {
            return Ok(Ok(()));
        }
        let live = self.live_event_at(self.gen.last_event_rowid)?;
        Ok(match live {
            Some(e) if event_digest(&e) == expected => Ok(()),
            Some(e) => Err(format!(
                "the archived event with sequence number {} (rowid {}) was rewritten in the live \
                 events table (the row there now has sequence number {}); archived events must \
                 never change",
                self.gen.last_seq, self.gen.last_event_rowid, e.sequence_number
            )),
            None => Err(format!(
                "the archived event with sequence number {} (rowid {}) was deleted from the live \
                 events table; archived events must never change",
                self.gen.last_seq, self.gen.last_event_rowid
            )),
        })
    }

    /// Archives events with sequence numbers above the last archived one.
    pub(super) fn archive_events(&mut self) -> Result<StepReport> {
        let mut report = StepReport::default();
        if !self.has_events {
            self.has_events = has_events_table(&self.readers[self.active], &self.opts.db)?;
            if !self.has_events {
                return Ok(report);
            }
        }
        loop {
            let got = self.read_events(self.gen.last_event_rowid, self.opts.events_per_object)?;
            if !got.rows.is_empty() {
                report.events += got.rows.len() as u64;
                self.metrics.archived(got.rows.len() as u64);
                report.event_objects.push(self.write_events(&got.rows)?);
            }
            self.gen.last_event_rowid = got.last_rowid;
            if got.last_digest.is_some() {
                self.gen.last_event_digest = got.last_digest;
            }
            if got.read < self.opts.events_per_object {
                break;
            }
        }
        Ok(report)
    }

    /// Reads up to `limit` event rows after `after_rowid`, in rowid order.
    pub(super) fn read_events(&self, after_rowid: i64, limit: usize) -> Result<EventsRead> {
        let conn = &self.readers[self.active];
        let db = self.db();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT rowid, {EVENT_COLUMNS} FROM events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ))
            .map_err(|e| Error::sqlite("read events", db, e))?;
        let read = stmt
            .query_map(rusqlite::params![after_rowid, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, event_row(r, 1)?))
            })
            .map_err(|e| Error::sqlite("read events", db, e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::sqlite("read events", db, e))?;
        let n = read.len();
        let last_rowid = read.last().map(|(r, _)| *r).unwrap_or(after_rowid);
        let last_digest = read.last().map(|(_, e)| event_digest(e));
        let mut rows: Vec<EventRow> = read
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.sequence_number > self.gen.last_seq)
            .collect();
        rows.sort_by_key(|e| e.sequence_number);
        Ok(EventsRead {
            rows,
            read: n,
            last_rowid,
            last_digest,
        })
    }

    pub(super) fn write_events(&mut self, rows: &[EventRow]) -> Result<String> {
        let first = rows.first().map(|r| r.sequence_number).unwrap_or_default();
        let last = rows.last().map(|r| r.sequence_number).unwrap_or_default();
        let times: Vec<DateTime<Utc>> = rows
            .iter()
            .filter_map(|r| {
                std::str::from_utf8(&r.created_at)
                    .ok()
                    .and_then(crate::time::parse_timestamp_opt)
            })
            .collect();
        let now = Utc::now();
        let raw = formats::encode_events(rows);
        let compressed = formats::compress(&raw)?;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: format!("events_{}_{:012}_{:012}", self.gen.id, first, last),
            kind: ObjectKind::Events,
            generation: self.gen.id.clone(),
            created_at: now,
            page_size: self.gen.page_size,
            txid_min: self.gen.last_txid,
            txid_max: self.gen.last_txid,
            time_min: times.iter().min().copied().unwrap_or(now),
            time_max: times.iter().max().copied().unwrap_or(now),
            seq_min: Some(first),
            seq_max: Some(last),
            raw_size: raw.len() as u64,
            compressed_size: compressed.len() as u64,
            blake3_compressed: blake3::hash(&compressed).to_hex().to_string(),
            blake3_raw: blake3::hash(&raw).to_hex().to_string(),
            db_checksum_before: None,
            db_checksum_after: None,
            db_pages: 0,
            frames: Vec::new(),
            transactions: Vec::new(),
            wal: None,
            event_count: rows.len() as u64,
            source_db: Some(self.db().display().to_string()),
            level: 0,
            min_db_pages: None,
        };
        self.repo.write_object(&manifest, &compressed)?;
        self.gen.last_seq = last;
        Ok(manifest.id)
    }
}
