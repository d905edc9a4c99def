//! The JSON manifest written for every object of the repository.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// The whole database at one txid, as independent zstd frames.
    Snapshot,
    /// Pages changed by consecutive committed transactions.
    Segment,
    /// Rows of the `events` table in a contiguous sequence range.
    Events,
}

impl ObjectKind {
    /// The key prefix (directory) objects of this kind live under.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Segment => "segments",
            ObjectKind::Events => "events",
        }
    }
    /// The name used in listings (`full`, `incremental`, `events`).
    pub fn backup_type(self) -> &'static str {
        match self {
            ObjectKind::Snapshot => "full",
            ObjectKind::Segment => "incremental",
            ObjectKind::Events => "events",
        }
    }
}

/// One independent zstd frame of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameEntry {
    /// Offset and length in the raw database.
    pub raw_offset: u64,
    pub raw_len: u64,
    /// Offset and length in the compressed object.
    pub comp_offset: u64,
    pub comp_len: u64,
}

/// One committed transaction recorded in a segment (or the snapshot's point).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnEntry {
    pub txid: u64,
    /// Commit time as observed by the capturer.
    pub time: DateTime<Utc>,
    /// Database size in pages after the transaction.
    pub db_pages: u64,
    /// Database checksum after the transaction (hex).
    pub checksum: String,
    /// Distinct pages the transaction wrote.
    pub pages: u32,
}

/// Where in the WAL the capture stood after this object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WalPosition {
    pub salt1: u32,
    pub salt2: u32,
    pub checkpoint_seq: u32,
    /// Index of the last frame consumed (0: none of this WAL yet).
    pub frame: u32,
    /// Cumulative checksum after that frame (or of the WAL header when `frame` is 0).
    pub cksum1: u32,
    pub cksum2: u32,
}

/// The manifest of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub kind: ObjectKind,
    pub generation: String,
    /// When the object was written.
    pub created_at: DateTime<Utc>,
    pub page_size: u32,
    /// Txid range: a snapshot has `txid_min == txid_max`; an events object the txid it was read at.
    pub txid_min: u64,
    pub txid_max: u64,
    /// Time range covered (commit times observed; for events, their created_at range).
    pub time_min: DateTime<Utc>,
    pub time_max: DateTime<Utc>,
    /// Event sequence range (events objects; for snapshots and segments, the
    /// largest sequence number in the database when known).
    #[serde(default)]
    pub seq_min: Option<i64>,
    #[serde(default)]
    pub seq_max: Option<i64>,
    pub raw_size: u64,
    pub compressed_size: u64,
    pub blake3_compressed: String,
    pub blake3_raw: String,
    /// Database checksum (hex) before the first and after the last transaction.
    pub db_checksum_before: Option<String>,
    pub db_checksum_after: Option<String>,
    /// Database size in pages after the object.
    pub db_pages: u64,
    /// Snapshot frames.
    #[serde(default)]
    pub frames: Vec<FrameEntry>,
    /// Segment transactions (and, for a snapshot, its one point).
    #[serde(default)]
    pub transactions: Vec<TxnEntry>,
    /// Capture position after the object.
    #[serde(default)]
    pub wal: Option<WalPosition>,
    /// Number of event rows (events objects).
    #[serde(default)]
    pub event_count: u64,
    /// The database file the capture read, for information.
    #[serde(default)]
    pub source_db: Option<String>,
    /// Compaction level of a segment: 0 for what one capture step wrote;
    /// k > 0 for an object that merges level k-1's objects over a longer
    /// span (`core/src/compact.rs`), holding only the newest version of each
    /// page and one restore point, its span's end.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub level: u32,
    /// A compacted segment only: the smallest database size, in pages, after
    /// any transaction of its span. Pages above it that the span did not
    /// write again are cut off, as the transactions one by one would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_db_pages: Option<u64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The highest compaction level a manifest may carry.
pub const MAX_LEVEL: u32 = 9;

impl Manifest {
    /// The key of the object's data.
    pub fn object_key(&self) -> String {
        format!("{}/{}.zst", self.kind.dir(), self.id)
    }
    /// The key of the manifest itself.
    pub fn manifest_key(id: &str) -> String {
        format!("manifests/{id}.json")
    }
    /// Whether this is a compacted segment (level above 0).
    pub fn is_compacted(&self) -> bool {
        self.level > 0
    }

    /// Parses and checks a manifest read from `key`.
    ///
    /// # Errors
    /// `Error::Corrupt` when it is not JSON of this shape, has another format
    /// version, or its id is unsafe or does not match the key.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                key,
                format!("manifest is not valid JSON of the expected shape: {e}"),
            )
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::corrupt(
                key,
                format!(
                    "manifest format version {} is not the supported {FORMAT_VERSION}",
                    m.format_version
                ),
            ));
        }
        super::ids::validate_id(&m.id).map_err(|e| Error::corrupt(key, e.to_string()))?;
        super::ids::validate_id(&m.generation).map_err(|e| Error::corrupt(key, e.to_string()))?;
        if Manifest::manifest_key(&m.id) != key {
            return Err(Error::corrupt(
                key,
                format!(
                    "manifest names object {:?}, which does not match its key",
                    m.id
                ),
            ));
        }
        if m.txid_min > m.txid_max {
            return Err(Error::corrupt(key, "txid range is reversed"));
        }
        m.check_numbers().map_err(|e| Error::corrupt(key, e))?;
        Ok(m)
    }

    /// Checks that every number lies where a capture writes it, so that the
    /// arithmetic on it (the next txid or sequence number, sizes in bytes)
    /// cannot overflow: a page size SQLite can have, txids and sequence
    /// numbers from 0 to below 2^63-1, page counts within SQLite's 2^32.
    fn check_numbers(&self) -> std::result::Result<(), String> {
        if !(512..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return Err(format!(
                "page size {} is not a power of two from 512 to 65536",
                self.page_size
            ));
        }
        let txids = [self.txid_min, self.txid_max]
            .into_iter()
            .chain(self.transactions.iter().map(|t| t.txid));
        for txid in txids {
            if txid >= MAX_NUMBER as u64 {
                return Err(format!(
                    "txid {txid} is out of range (0 to {})",
                    MAX_NUMBER - 1
                ));
            }
        }
        for seq in self.seq_min.into_iter().chain(self.seq_max) {
            if !(0..MAX_NUMBER).contains(&seq) {
                return Err(format!(
                    "sequence number {seq} is out of range (0 to {})",
                    MAX_NUMBER - 1
                ));
            }
        }
        self.check_level()?;
        if let (Some(lo), Some(hi)) = (self.seq_min, self.seq_max) {
            if lo > hi {
                return Err("sequence range is reversed".to_string());
            }
        }
        let pages =
            std::iter::once(self.db_pages).chain(self.transactions.iter().map(|t| t.db_pages));
        for p in pages {
            if p > u64::from(u32::MAX) {
                return Err(format!(
                    "database size {p} pages is more than SQLite allows"
                ));
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// A compacted segment holds one restore point, its span's end, and the
    /// smallest size its span had; nothing else may carry a level.
    fn check_level(&self) -> std::result::Result<(), String> {
        if self.level == 0 {
            return match self.min_db_pages {
                None => Ok(()),
                Some(_) => Err("min_db_pages is set on an object of level 0".into()),
            };
        }
        if self.level > MAX_LEVEL || self.kind != ObjectKind::Segment {
            return Err(format!(
                "level {} is not a compaction level of a segment (1 to {MAX_LEVEL})",
                self.level
            ));
        }
        let ends_at_max = self.transactions.len() == 1
            && self.transactions.first().map(|t| t.txid) == Some(self.txid_max);
        if !ends_at_max {
            return Err("a compacted segment records exactly one point, its last txid".into());
        }
        match self.min_db_pages {
            Some(m) if m <= self.db_pages => Ok(()),
            Some(m) => Err(format!(
                "min_db_pages {m} is more than the {} pages at the span's end",
                self.db_pages
            )),
            None => Err("a compacted segment lacks min_db_pages".into()),
        }
    }
}

#[cfg(test)]
impl Manifest {
    /// A manifest for unit tests: `id` and `kind`, generation `g`, page size
    /// 512, txid 1, a fixed time, every other field empty.
    pub(crate) fn for_test(id: &str, kind: ObjectKind) -> Manifest {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        Manifest {
            format_version: FORMAT_VERSION,
            id: id.to_string(),
            kind,
            generation: "g".to_string(),
            created_at: t,
            page_size: 512,
            txid_min: 1,
            txid_max: 1,
            time_min: t,
            time_max: t,
            seq_min: None,
            seq_max: None,
            raw_size: 0,
            compressed_size: 0,
            blake3_compressed: String::new(),
            blake3_raw: String::new(),
            db_checksum_before: None,
            db_checksum_after: None,
            db_pages: 0,
            frames: Vec::new(),
            transactions: Vec::new(),
            wal: None,
            event_count: 0,
            source_db: None,
            level: 0,
            min_db_pages: None,
        }
    }
}

/// Txids and sequence numbers stay below this (`i64::MAX`), so the next one exists.
const MAX_NUMBER: i64 = i64::MAX;

/// Formats a database checksum as the hex text stored in manifests.
pub fn checksum_hex(c: u64) -> String {
    format!("{c:016x}")
}

/// Parses a checksum written by [`checksum_hex`].
///
/// # Errors
/// `Error::Corrupt` naming the object.
pub fn parse_checksum(object: &str, text: &str) -> Result<u64> {
    u64::from_str_radix(text, 16)
        .map_err(|_| Error::corrupt(object, format!("bad database checksum {text:?}")))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn segment_json() -> Value {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let m = Manifest {
            format_version: FORMAT_VERSION,
            id: "incr_g_2_3".to_string(),
            kind: ObjectKind::Segment,
            generation: "g".to_string(),
            created_at: t,
            page_size: 4096,
            txid_min: 2,
            txid_max: 3,
            time_min: t,
            time_max: t,
            seq_min: Some(1),
            seq_max: Some(5),
            raw_size: 10,
            compressed_size: 10,
            blake3_compressed: String::new(),
            blake3_raw: String::new(),
            db_checksum_before: None,
            db_checksum_after: None,
            db_pages: 3,
            frames: Vec::new(),
            transactions: [2, 3]
                .iter()
                .map(|txid| TxnEntry {
                    txid: *txid,
                    time: t,
                    db_pages: 3,
                    checksum: checksum_hex(0),
                    pages: 1,
                })
                .collect(),
            wal: None,
            event_count: 0,
            source_db: None,
            level: 0,
            min_db_pages: None,
        };
        serde_json::to_value(&m).expect("json")
    }

    fn parse(v: &Value) -> Result<Manifest> {
        Manifest::from_json(
            "manifests/incr_g_2_3.json",
            &serde_json::to_vec(v).expect("json"),
        )
    }

    #[test]
    fn a_manifest_as_written_parses() {
        assert!(parse(&segment_json()).is_ok());
    }

    /// Found by the `manifest` fuzz target: an events manifest with
    /// `seq_min` -2^63 made verify-backups panic computing `seq_min - 1`.
    #[test]
    fn a_sequence_number_of_i64_min_is_corrupt() {
        let mut v = segment_json();
        v["seq_min"] = json!(i64::MIN);
        let err = parse(&v).expect_err("corrupt").to_string();
        assert!(
            err.contains("sequence number -9223372036854775808 is out of range"),
            "{err}"
        );
    }

    /// A segment ending at txid 2^64-1 overflowed the next txid in
    /// `Generation::chain_to` and verify-backups (a panic, or with overflow
    /// checks off a wrap to txid 0 and a chain that loops).
    #[test]
    fn a_txid_of_u64_max_is_corrupt() {
        let mut v = segment_json();
        v["txid_max"] = json!(u64::MAX);
        assert!(parse(&v).is_err());
        let mut v = segment_json();
        v["transactions"][1]["txid"] = json!(u64::MAX);
        assert!(parse(&v).is_err());
    }

    /// The edges that the arithmetic on a manifest's numbers relies on.
    #[test]
    fn numbers_outside_what_a_capture_writes_are_corrupt() {
        for (field, value) in [
            ("page_size", json!(0)),
            ("page_size", json!(1000)),
            ("page_size", json!(131072)),
            ("seq_max", json!(i64::MAX)),
            ("seq_min", json!(-1)),
            ("seq_min", json!(6)),
            ("db_pages", json!(1u64 << 32)),
        ] {
            let mut v = segment_json();
            v[field] = value.clone();
            assert!(parse(&v).is_err(), "{field} = {value}");
        }
        let mut v = segment_json();
        v["transactions"][0]["db_pages"] = json!(u64::MAX);
        assert!(parse(&v).is_err());
    }
}
