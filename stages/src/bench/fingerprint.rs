//! What a restored database is compared with its source on, independently
//! of the restore's own checksums: the events' count and last sequence
//! number and a digest of every row of `orders` and `positions`.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use genesis_core::{Error, Result};

/// A database's trading content in brief.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprint {
    pub events: i64,
    pub last_seq: i64,
    /// Rows and a digest of every column of every row.
    pub orders: (i64, u64),
    pub positions: (i64, u64),
}

fn table_digest(conn: &Connection, table: &str, key: &str) -> rusqlite::Result<(i64, u64)> {
    let mut st = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {key}"))?;
    let ncol = st.column_count();
    let mut rows = st.query([])?;
    let mut h = DefaultHasher::new();
    let mut n = 0i64;
    while let Some(row) = rows.next()? {
        n += 1;
        for i in 0..ncol {
            match row.get_ref(i)? {
                ValueRef::Null => 0u8.hash(&mut h),
                ValueRef::Integer(v) => (1u8, v).hash(&mut h),
                ValueRef::Real(v) => (2u8, v.to_bits()).hash(&mut h),
                ValueRef::Text(t) => (3u8, t).hash(&mut h),
                ValueRef::Blob(t) => (4u8, t).hash(&mut h),
            }
        }
    }
    Ok((n, h.finish()))
}

/// The fingerprint of the database at `path` (read only).
///
/// # Errors
/// SQLite failures naming the path (not a trading database, unreadable).
pub fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let e = |what: &'static str| move |err| Error::sqlite(what, path, err);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(e("open for a fingerprint"))?;
    let (events, last_seq) = conn
        .query_row(
            "SELECT count(*), coalesce(max(sequence_number), 0) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(e("count the events"))?;
    Ok(Fingerprint {
        events,
        last_seq,
        orders: table_digest(&conn, "orders", "order_id").map_err(e("digest the orders"))?,
        positions: table_digest(&conn, "positions", "position_id")
            .map_err(e("digest the positions"))?,
    })
}

/// Whether two files hold the same bytes (false when either is unreadable).
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    if super::tools::file_len(a) != super::tools::file_len(b) {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap_or(0);
        if na == 0 {
            return true;
        }
        if fb.read_exact(&mut bb[..na]).is_err() || ba[..na] != bb[..na] {
            return false;
        }
    }
}
