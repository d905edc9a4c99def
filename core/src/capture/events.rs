//! The event archive: new `events` rows, by rowid, into event objects.

use super::*;

impl Capturer {
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
            let (rows, read, last_rowid) =
                self.read_events(self.gen.last_event_rowid, self.opts.events_per_object)?;
            if !rows.is_empty() {
                report.events += rows.len() as u64;
                report.event_objects.push(self.write_events(&rows)?);
            }
            self.gen.last_event_rowid = last_rowid;
            if read < self.opts.events_per_object {
                break;
            }
        }
        Ok(report)
    }

    /// Reads up to `limit` event rows after `after_rowid`, in rowid order;
    /// returns the rows with sequence numbers above the archived ones, sorted
    /// by sequence number, how many rows were read, and the last rowid read.
    pub(super) fn read_events(&self, after_rowid: i64, limit: usize) -> Result<(Vec<EventRow>, usize, i64)> {
        let conn = &self.readers[self.active];
        let db = self.db();
        let mut stmt = conn
            .prepare_cached(
                "SELECT rowid, sequence_number, event_id, event_type, aggregate_id, event_data, created_at \
                 FROM events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )
            .map_err(|e| Error::sqlite("read events", db, e))?;
        let bytes = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<Vec<u8>> {
            Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                    t.to_vec()
                }
                rusqlite::types::ValueRef::Null => Vec::new(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string().into_bytes(),
                rusqlite::types::ValueRef::Real(v) => v.to_string().into_bytes(),
            })
        };
        let read = stmt
            .query_map(rusqlite::params![after_rowid, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    EventRow {
                        sequence_number: r.get(1)?,
                        event_id: bytes(r, 2)?,
                        event_type: bytes(r, 3)?,
                        aggregate_id: bytes(r, 4)?,
                        event_data: bytes(r, 5)?,
                        created_at: bytes(r, 6)?,
                    },
                ))
            })
            .map_err(|e| Error::sqlite("read events", db, e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::sqlite("read events", db, e))?;
        let n = read.len();
        let last_rowid = read.last().map(|(r, _)| *r).unwrap_or(after_rowid);
        let mut rows: Vec<EventRow> = read
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.sequence_number > self.gen.last_seq)
            .collect();
        rows.sort_by_key(|e| e.sequence_number);
        Ok((rows, n, last_rowid))
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
        };
        self.repo.write_object(&manifest, &compressed)?;
        self.gen.last_seq = last;
        Ok(manifest.id)
    }
}
