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
}

impl Manifest {
    /// The key of the object's data.
    pub fn object_key(&self) -> String {
        format!("{}/{}.zst", self.kind.dir(), self.id)
    }
    /// The key of the manifest itself.
    pub fn manifest_key(id: &str) -> String {
        format!("manifests/{id}.json")
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
        Ok(m)
    }
}

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
