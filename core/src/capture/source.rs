//! Checks on the database being captured, before anything touches it: it
//! exists, it is SQLite, and it is in WAL mode (or is switched when asked).

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// What the database file's header says.
#[derive(Debug, Clone, Copy)]
pub struct DbHeader {
    pub page_size: u32,
    /// Database size in pages from the header (when valid), else from the file size.
    pub pages: u64,
    /// Bytes 18-19 are 2 (WAL mode).
    pub wal_mode: bool,
}

/// Reads and checks a database file's header.
///
/// # Errors
/// `Error::Usage` when the file is missing, unreadable, or not a SQLite database.
pub fn read_db_header(path: &Path) -> Result<DbHeader> {
    let f = open_db_file(path)?;
    header_of(&f, path)
}

/// Opens the database file for reading.
///
/// Careful: POSIX advisory locks belong to the process, and closing ANY
/// descriptor of a file drops all of the process's locks on it, SQLite's
/// included. A process holding SQLite connections to the database must open
/// the file once and keep the handle for as long as the connections live (the
/// capturer does); never open and close it on the side.
///
/// # Errors
/// `Error::Usage` when the file is missing or unreadable.
pub fn open_db_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Usage(format!(
                "the database {} does not exist: check --db (default .genesis/data/genesis.db), \
                 or create one with `genesis-recovery simulate --db {}`",
                path.display(),
                path.display()
            ))
        } else {
            Error::Usage(format!("cannot open the database {}: {e}", path.display()))
        }
    })
}

/// Reads and checks the header through an open handle (positioned read).
///
/// # Errors
/// `Error::Usage` when the file is not a SQLite database.
pub fn header_of(f: &File, path: &Path) -> Result<DbHeader> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let mut h = [0u8; 100];
    let mut n = 0;
    while n < h.len() {
        match f.read_at(&mut h[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    if n < 100 || &h[0..16] != b"SQLite format 3\0" {
        return Err(Error::Usage(format!(
            "{} is not a SQLite database (its header does not start with \"SQLite format 3\"): check --db",
            path.display()
        )));
    }
    let raw_ps = u32::from(u16::from_be_bytes([h[16], h[17]]));
    let page_size = if raw_ps == 1 { 65536 } else { raw_ps };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(Error::Usage(format!(
            "{} has an invalid page size {page_size}",
            path.display()
        )));
    }
    let change_counter = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
    let header_pages = u32::from_be_bytes([h[28], h[29], h[30], h[31]]);
    let valid_for = u32::from_be_bytes([h[92], h[93], h[94], h[95]]);
    let pages = if header_pages > 0 && valid_for == change_counter {
        u64::from(header_pages)
    } else {
        len / u64::from(page_size)
    };
    Ok(DbHeader {
        page_size,
        pages,
        wal_mode: h[18] == 2 && h[19] == 2,
    })
}

/// Checks that the database is SQLite in WAL mode; with `enable_wal`, switches it.
///
/// # Errors
/// `Error::Usage` explaining how to switch a rollback-journal database to WAL.
pub fn ensure_wal(path: &Path, enable_wal: bool) -> Result<DbHeader> {
    let h = read_db_header(path)?;
    if h.wal_mode {
        return Ok(h);
    }
    if !enable_wal {
        return Err(Error::Usage(format!(
            "the database {} is in rollback-journal mode; continuous capture needs WAL mode. \
             Switch it once with `sqlite3 {} 'PRAGMA journal_mode=WAL'` while the application is stopped, \
             or pass --enable-wal to let genesis-recovery switch it",
            path.display(),
            path.display()
        )));
    }
    let conn = rusqlite::Connection::open(path).map_err(|e| Error::sqlite("open", path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("switch to WAL mode", path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Failed(format!(
            "{} could not be switched to WAL mode (still {mode})",
            path.display()
        )));
    }
    drop(conn);
    read_db_header(path)
}

/// The (device, inode) of a file, to notice a database replaced under us.
///
/// # Errors
/// I/O failures.
pub fn file_identity(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok((m.dev(), m.ino()))
}
