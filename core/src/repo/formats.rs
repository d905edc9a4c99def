//! Binary formats of the objects' raw content, and the snapshot's framing.
//!
//! All integers little-endian. Every decoder checks lengths before it reads
//! and returns `Error::Corrupt` naming the object instead of panicking.
//!
//! - Snapshot: the database image, split into independent zstd frames of
//!   [`SNAPSHOT_FRAME_PAGES`] pages each (listed in the manifest), so frames
//!   decompress in parallel and can be read at random offsets.
//! - Segment (`GRSEG001`): `u32 page_size, u32 txn_count`, then per
//!   transaction `u64 txid, i64 commit_time_us, u64 db_pages, u64 checksum,
//!   u32 page_count` and `page_count × (u32 pgno, page bytes)`.
//! - Events (`GREVT001`): `u32 count`, then per row `i64 sequence_number` and
//!   five `u32`-length-prefixed byte strings: event_id, event_type,
//!   aggregate_id, event_data, created_at (stored verbatim).

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// Pages per independent snapshot frame (8 MiB at 4 KiB pages).
pub const SNAPSHOT_FRAME_PAGES: usize = 2048;
/// zstd level used for all objects.
pub const ZSTD_LEVEL: i32 = 3;

const SEGMENT_MAGIC: &[u8; 8] = b"GRSEG001";
const EVENTS_MAGIC: &[u8; 8] = b"GREVT001";

/// One transaction of a segment, decoded with borrowed page data.
#[derive(Debug, Clone)]
pub struct SegmentTxn<'a> {
    pub txid: u64,
    pub commit_time: DateTime<Utc>,
    pub db_pages: u64,
    pub checksum: u64,
    /// Pages written by the transaction (newest version within it), by page number.
    pub pages: Vec<(u32, &'a [u8])>,
}

/// One transaction to encode.
#[derive(Debug, Clone)]
pub struct SegmentTxnOwned {
    pub txid: u64,
    pub commit_time: DateTime<Utc>,
    pub db_pages: u64,
    pub checksum: u64,
    pub pages: Vec<(u32, Vec<u8>)>,
}

/// Encodes a segment's raw content.
pub fn encode_segment(page_size: u32, txns: &[SegmentTxnOwned]) -> Vec<u8> {
    let total: usize = txns
        .iter()
        .map(|t| 36 + t.pages.len() * (4 + page_size as usize))
        .sum();
    let mut out = Vec::with_capacity(16 + total);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&page_size.to_le_bytes());
    out.extend_from_slice(&(txns.len() as u32).to_le_bytes());
    for t in txns {
        out.extend_from_slice(&t.txid.to_le_bytes());
        out.extend_from_slice(&t.commit_time.timestamp_micros().to_le_bytes());
        out.extend_from_slice(&t.db_pages.to_le_bytes());
        out.extend_from_slice(&t.checksum.to_le_bytes());
        out.extend_from_slice(&(t.pages.len() as u32).to_le_bytes());
        for (pgno, data) in &t.pages {
            out.extend_from_slice(&pgno.to_le_bytes());
            out.extend_from_slice(data);
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    object: &'a str,
}

/// A read that found fewer bytes left than it needs (the count).
struct Short(usize);

impl<'a> Reader<'a> {
    /// `n` bytes, or [`Short`] (nothing consumed) when fewer are left: no
    /// error value is built on the way, for the event rows' hot loop.
    #[inline]
    fn get(&mut self, n: usize) -> std::result::Result<&'a [u8], Short> {
        let s = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or(Short(n))?;
        self.pos += n;
        Ok(s)
    }
    #[inline]
    fn get_array<const N: usize>(&mut self) -> std::result::Result<[u8; N], Short> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.get(N)?);
        Ok(a)
    }
    /// A `u32`-length-prefixed byte string, copied.
    #[inline]
    fn get_bytes(&mut self) -> std::result::Result<Vec<u8>, Short> {
        let len = u32::from_le_bytes(self.get_array()?) as usize;
        Ok(self.get(len)?.to_vec())
    }
    fn truncated(&self, Short(n): Short) -> Error {
        Error::corrupt(
            self.object,
            format!("truncated: needs {n} more bytes at offset {}", self.pos),
        )
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        self.get(n).map_err(|short| self.truncated(short))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }
}

/// Decodes a segment's raw content.
///
/// # Errors
/// `Error::Corrupt` naming `object` when the content is not a well-formed segment.
pub fn decode_segment<'a>(object: &'a str, raw: &'a [u8]) -> Result<(u32, Vec<SegmentTxn<'a>>)> {
    let mut r = Reader {
        buf: raw,
        pos: 0,
        object,
    };
    if r.take(8)? != SEGMENT_MAGIC {
        return Err(Error::corrupt(object, "not a segment (bad magic)"));
    }
    let page_size = r.u32()?;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(Error::corrupt(object, format!("bad page size {page_size}")));
    }
    let n = r.u32()? as usize;
    let mut txns = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let txid = r.u64()?;
        let us = r.i64()?;
        let commit_time = DateTime::<Utc>::from_timestamp_micros(us)
            .ok_or_else(|| Error::corrupt(object, format!("bad commit time {us}")))?;
        let db_pages = r.u64()?;
        if db_pages > u64::from(u32::MAX) {
            return Err(Error::corrupt(
                object,
                format!("txid {txid}: database size {db_pages} pages is more than SQLite allows"),
            ));
        }
        let checksum = r.u64()?;
        let count = r.u32()? as usize;
        let mut pages = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let pgno = r.u32()?;
            if pgno == 0 {
                return Err(Error::corrupt(object, "page number 0"));
            }
            pages.push((pgno, r.take(page_size as usize)?));
        }
        txns.push(SegmentTxn {
            txid,
            commit_time,
            db_pages,
            checksum,
            pages,
        });
    }
    if r.pos != raw.len() {
        return Err(Error::corrupt(
            object,
            format!(
                "{} unexpected bytes after the last transaction",
                raw.len() - r.pos
            ),
        ));
    }
    Ok((page_size, txns))
}

/// One row of the `events` table, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub sequence_number: i64,
    pub event_id: Vec<u8>,
    pub event_type: Vec<u8>,
    pub aggregate_id: Vec<u8>,
    pub event_data: Vec<u8>,
    pub created_at: Vec<u8>,
}

/// Encodes event rows.
pub fn encode_events(rows: &[EventRow]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(EVENTS_MAGIC);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for r in rows {
        out.extend_from_slice(&r.sequence_number.to_le_bytes());
        for f in [
            &r.event_id,
            &r.event_type,
            &r.aggregate_id,
            &r.event_data,
            &r.created_at,
        ] {
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
    }
    out
}

/// A reader past an events object's header, and its row count.
fn events_reader<'a>(object: &'a str, raw: &'a [u8]) -> Result<(Reader<'a>, usize)> {
    let mut r = Reader {
        buf: raw,
        pos: 0,
        object,
    };
    if r.take(8)? != EVENTS_MAGIC {
        return Err(Error::corrupt(object, "not an events object (bad magic)"));
    }
    let n = r.u32()? as usize;
    Ok((r, n))
}

/// Decodes event rows.
///
/// # Errors
/// `Error::Corrupt` naming `object`.
pub fn decode_events(object: &str, raw: &[u8]) -> Result<Vec<EventRow>> {
    let (mut r, n) = events_reader(object, raw)?;
    let mut rows = Vec::with_capacity(n.min(1 << 20));
    // Fields in the order the format stores them (a struct expression
    // evaluates in source order).
    let row = |r: &mut Reader<'_>| -> std::result::Result<EventRow, Short> {
        Ok(EventRow {
            sequence_number: i64::from_le_bytes(r.get_array()?),
            event_id: r.get_bytes()?,
            event_type: r.get_bytes()?,
            aggregate_id: r.get_bytes()?,
            event_data: r.get_bytes()?,
            created_at: r.get_bytes()?,
        })
    };
    for _ in 0..n {
        rows.push(row(&mut r).map_err(|short| r.truncated(short))?);
    }
    if r.pos != raw.len() {
        return Err(Error::corrupt(
            object,
            "unexpected bytes after the last event",
        ));
    }
    Ok(rows)
}

/// Where an events object's rows lie in sequence numbers, read without
/// decoding the rows (see [`event_sequences`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSequences {
    pub rows: usize,
    /// The first and last rows' sequence numbers (`None` when empty).
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// Whether every row's sequence number is above the one before.
    pub increasing: bool,
}

/// The sequence numbers of an events object's rows, checking its framing as
/// [`decode_events`] does but copying nothing: a reader that streams the
/// objects needs to know where they lie before it decodes them.
///
/// # Errors
/// `Error::Corrupt` naming `object`, as [`decode_events`].
pub fn event_sequences(object: &str, raw: &[u8]) -> Result<EventSequences> {
    let (mut r, rows) = events_reader(object, raw)?;
    let mut out = EventSequences {
        rows,
        first: None,
        last: None,
        increasing: true,
    };
    let row = |r: &mut Reader<'_>| -> std::result::Result<i64, Short> {
        let seq = i64::from_le_bytes(r.get_array()?);
        for _ in 0..5 {
            let len = u32::from_le_bytes(r.get_array()?) as usize;
            r.get(len)?;
        }
        Ok(seq)
    };
    for _ in 0..rows {
        let seq = row(&mut r).map_err(|short| r.truncated(short))?;
        if out.last.is_some_and(|last| seq <= last) {
            out.increasing = false;
        }
        out.first.get_or_insert(seq);
        out.last = Some(seq);
    }
    if r.pos != raw.len() {
        return Err(Error::corrupt(
            object,
            "unexpected bytes after the last event",
        ));
    }
    Ok(out)
}

/// Compresses one buffer as a single zstd frame.
///
/// # Errors
/// zstd failures (out of memory).
pub fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(raw, ZSTD_LEVEL)
        .map_err(|e| Error::Failed(format!("zstd compression failed: {e}")))
}

/// Decompresses a zstd frame whose raw size is known from the manifest.
///
/// # Errors
/// `Error::Corrupt` naming `object` when the bytes are not a valid frame of that size.
pub fn decompress(object: &str, compressed: &[u8], raw_len: u64) -> Result<Vec<u8>> {
    let cap = usize::try_from(raw_len).map_err(|_| Error::corrupt(object, "raw size too large"))?;
    let out = zstd::bulk::decompress(compressed, cap.max(1))
        .map_err(|e| Error::corrupt(object, format!("zstd decompression failed: {e}")))?;
    if out.len() as u64 != raw_len {
        return Err(Error::corrupt(
            object,
            format!(
                "decompressed to {} bytes, manifest says {raw_len}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_round_trip_and_truncation() {
        let t = SegmentTxnOwned {
            txid: 7,
            commit_time: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            db_pages: 3,
            checksum: 42,
            pages: vec![(1, vec![1u8; 512]), (3, vec![3u8; 512])],
        };
        let raw = encode_segment(512, std::slice::from_ref(&t));
        let (ps, txns) = decode_segment("s", &raw).unwrap();
        assert_eq!(ps, 512);
        assert_eq!(txns[0].txid, 7);
        assert_eq!(txns[0].commit_time, t.commit_time);
        assert_eq!(txns[0].pages[1].1, &[3u8; 512][..]);
        for cut in [0, 5, 20, raw.len() - 1] {
            assert!(decode_segment("s", &raw[..cut]).is_err());
        }
    }

    #[test]
    fn events_round_trip_verbatim() {
        let rows = vec![EventRow {
            sequence_number: 1,
            event_id: b"e1".to_vec(),
            event_type: b"ORDER_CREATED".to_vec(),
            aggregate_id: b"o1".to_vec(),
            event_data: "{\"price\": 1.10, \"note\": \"\u{e9}\"}"
                .as_bytes()
                .to_vec(),
            created_at: b"2025-01-15T14:30:00.123456".to_vec(),
        }];
        let raw = encode_events(&rows);
        assert_eq!(decode_events("e", &raw).unwrap(), rows);
        // created_at (26 bytes) is the last field: its length prefix ends 26
        // bytes before the end of the object.
        let at = raw.len() - 26;
        let err = decode_events("e", &raw[..raw.len() - 2])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("backup object e: truncated: needs 26 more bytes at offset {at}")
        );
        let err = decode_events("e", &raw[..at - 1]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "backup object e: truncated: needs 4 more bytes at offset {}",
                at - 4
            )
        );
    }

    /// Found by review while writing the fuzz targets: a segment whose
    /// transaction records a database of 2^48 pages or more made the rebuild
    /// overflow computing the file size (`db_pages * page_size`).
    #[test]
    fn a_database_size_beyond_sqlites_is_corrupt() {
        let t = SegmentTxnOwned {
            txid: 7,
            commit_time: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            db_pages: 1 << 48,
            checksum: 42,
            pages: vec![(1, vec![1u8; 512])],
        };
        let raw = encode_segment(512, std::slice::from_ref(&t));
        let err = decode_segment("s", &raw).unwrap_err().to_string();
        assert!(err.contains("more than SQLite allows"), "{err}");
    }

    /// What [`event_sequences`] must say of `raw`: the decoded rows' numbers.
    fn sequences_of_decoded(raw: &[u8]) -> Option<EventSequences> {
        let rows = decode_events("fuzz", raw).ok()?;
        Some(EventSequences {
            rows: rows.len(),
            first: rows.first().map(|r| r.sequence_number),
            last: rows.last().map(|r| r.sequence_number),
            increasing: rows
                .windows(2)
                .all(|w| w[0].sequence_number < w[1].sequence_number),
        })
    }

    #[test]
    fn event_sequences_are_read_without_decoding() {
        let row = |seq: i64| EventRow {
            sequence_number: seq,
            event_id: format!("e{seq}").into_bytes(),
            event_type: b"CHECKPOINT".to_vec(),
            aggregate_id: b"k".to_vec(),
            event_data: b"{}".to_vec(),
            created_at: b"2025-01-15T14:30:00".to_vec(),
        };
        for seqs in [vec![], vec![4], vec![4, 5, 9], vec![4, 9, 5], vec![4, 4]] {
            let raw = encode_events(&seqs.iter().map(|&s| row(s)).collect::<Vec<_>>());
            let got = event_sequences("e", &raw).unwrap();
            assert_eq!(Some(got), sequences_of_decoded(&raw), "{seqs:?}");
            assert_eq!(got.increasing, seqs.windows(2).all(|w| w[0] < w[1]));
            if !raw.is_empty() {
                let cut = event_sequences("e", &raw[..raw.len() - 1]).map_err(|e| e.to_string());
                let decoded = decode_events("e", &raw[..raw.len() - 1]).map_err(|e| e.to_string());
                assert_eq!(cut.err(), decoded.err(), "{seqs:?}");
            }
        }
    }

    proptest::proptest! {
        /// Decoders never panic, whatever the bytes (a fuzz target in miniature).
        #[test]
        fn decoders_survive_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode_segment("fuzz", &bytes);
            let _ = decode_events("fuzz", &bytes);
            proptest::prop_assert_eq!(sequences_of_decoded(&bytes), event_sequences("fuzz", &bytes).ok());
        }

        /// Valid encodings with one byte changed or cut are rejected or decode, never panic.
        #[test]
        fn damaged_encodings_never_panic(at in 0usize..2000, val in proptest::num::u8::ANY, cut in 0usize..2000) {
            let t = SegmentTxnOwned { txid: 1, commit_time: Utc::now(), db_pages: 2, checksum: 9, pages: vec![(1, vec![7u8; 512]), (2, vec![8u8; 512])] };
            let mut raw = encode_segment(512, &[t]);
            let i = at % raw.len();
            raw[i] = val;
            let _ = decode_segment("fuzz", &raw);
            let _ = decode_segment("fuzz", &raw[..cut.min(raw.len())]);
            let ev = vec![EventRow { sequence_number: 1, event_id: b"a".to_vec(), event_type: b"B".to_vec(), aggregate_id: b"c".to_vec(), event_data: b"{}".to_vec(), created_at: b"t".to_vec() }];
            let mut raw = encode_events(&ev);
            let i = at % raw.len();
            raw[i] = val;
            let _ = decode_events("fuzz", &raw);
            let _ = decode_events("fuzz", &raw[..cut.min(raw.len())]);
            for raw in [&raw[..], &raw[..cut.min(raw.len())]] {
                proptest::prop_assert_eq!(sequences_of_decoded(raw), event_sequences("fuzz", raw).ok());
            }
        }
    }
}
