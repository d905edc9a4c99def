//! Reading SQLite's `-wal` file directly (see SQLite's `walformat` notes and
//! `src/wal.c`).
//!
//! A WAL file is a 32-byte header (magic, version, page size, checkpoint
//! sequence, two salts, a checksum of the first 24 bytes) and frames of a
//! 24-byte header (page number, database size after commit or 0, the salts,
//! the cumulative checksum) plus one page. A frame is valid when its salts
//! equal the header's and its cumulative checksum continues the chain; a frame
//! with a non-zero size field ends a committed transaction. The file is read
//! with positioned reads, never mapped: SQLite truncates and rewrites it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::repo::WalPosition;

/// Size of the WAL header.
pub const WAL_HEADER_SIZE: u64 = 32;
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

/// The parsed WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian_cksum: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub cksum1: u32,
    pub cksum2: u32,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
pub fn wal_checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = s;
    for chunk in data.chunks_exact(8) {
        let (x1, x2) = if big_endian {
            (be32(&chunk[0..4]), be32(&chunk[4..8]))
        } else {
            (
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            )
        };
        s1 = s1.wrapping_add(x1).wrapping_add(s2);
        s2 = s2.wrapping_add(x2).wrapping_add(s1);
    }
    (s1, s2)
}

/// Parses a WAL header; `None` when the bytes are not a valid header (SQLite
/// then ignores the whole file).
pub fn parse_header(b: &[u8]) -> Option<WalHeader> {
    if b.len() < WAL_HEADER_SIZE as usize {
        return None;
    }
    let magic = be32(&b[0..4]);
    let big_endian_cksum = match magic {
        MAGIC_LE => false,
        MAGIC_BE => true,
        _ => return None,
    };
    if be32(&b[4..8]) != 3_007_000 {
        return None;
    }
    // A 32-bit field: 65536 is stored as itself (only the database header's
    // 16-bit field stores it as 1). SQLite's walIndexRecover accepts any
    // power of two from 512 to SQLITE_MAX_PAGE_SIZE (65536).
    let page_size = match be32(&b[8..12]) {
        p if (512..=65536).contains(&p) && p.is_power_of_two() => p,
        _ => return None,
    };
    let h = WalHeader {
        big_endian_cksum,
        page_size,
        checkpoint_seq: be32(&b[12..16]),
        salt1: be32(&b[16..20]),
        salt2: be32(&b[20..24]),
        cksum1: be32(&b[24..28]),
        cksum2: be32(&b[28..32]),
    };
    if wal_checksum(big_endian_cksum, &b[0..24], (0, 0)) != (h.cksum1, h.cksum2) {
        return None;
    }
    Some(h)
}

/// One committed transaction found in the WAL.
#[derive(Debug, Clone)]
pub struct WalTxn {
    /// Database size in pages after the commit.
    pub db_pages: u32,
    /// Distinct pages written by the transaction, newest version within it:
    /// (page number, byte offset of the page data in the WAL file).
    pub pages: Vec<(u32, u64)>,
}

/// What a read of the WAL found after a position.
#[derive(Debug, Clone)]
pub struct WalRead {
    pub header: WalHeader,
    /// Committed transactions after the starting position, in order.
    pub txns: Vec<WalTxn>,
    /// The position after the last committed transaction read.
    pub end: WalPosition,
    /// Valid frames seen after the last commit (an open transaction).
    pub uncommitted_frames: u32,
}

/// The state of the `-wal` file relative to a capture position.
#[derive(Debug, Clone)]
pub enum WalState {
    /// No WAL file, or an empty or invalid header: no frames.
    Empty,
    /// The WAL has the salts of the position (same WAL): frames after it.
    Continues(WalRead),
    /// The WAL has other salts: it was restarted. The read starts at frame 1.
    Restarted(WalRead),
}

/// The path of a database's WAL file.
pub fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    s.into()
}

/// Reads the WAL after `from` (or from the start when `from` is `None` or the
/// WAL was restarted), returning every committed transaction.
///
/// With `from` given and the salts equal, the frames up to `from.frame` must
/// still chain to `from`'s checksum; otherwise the WAL is treated as restarted.
///
/// # Errors
/// I/O failures reading the file.
pub fn read_wal(path: &Path, from: Option<&WalPosition>) -> Result<WalState> {
    let Some((file, len, header)) = open_wal(path)? else {
        return Ok(WalState::Empty);
    };
    let same =
        from.is_some_and(|p| p.salt1 == header.salt1 && p.salt2 == header.salt2 && p.frame > 0);
    let (start_frame, start_ck) = match from {
        Some(p) if same => (p.frame, (p.cksum1, p.cksum2)),
        _ => (0, (header.cksum1, header.cksum2)),
    };
    if same {
        // Prove that the frame we stopped at is still the same frame.
        if let Some(p) = from {
            let ok = frame_checksum_matches(&file, path, &header, p)?;
            if !ok {
                let read = scan(
                    &file,
                    path,
                    len,
                    header,
                    0,
                    (header.cksum1, header.cksum2),
                    None,
                )?;
                return Ok(WalState::Restarted(read));
            }
        }
    }
    let read = scan(&file, path, len, header, start_frame, start_ck, None)?;
    if same || from.is_none() {
        Ok(WalState::Continues(read))
    } else if from.is_some_and(|p| p.salt1 == header.salt1 && p.salt2 == header.salt2) {
        // Same WAL, nothing consumed yet.
        Ok(WalState::Continues(read))
    } else {
        Ok(WalState::Restarted(read))
    }
}

fn frame_offset(page_size: u32, frame: u32) -> u64 {
    WAL_HEADER_SIZE + (u64::from(frame) - 1) * (FRAME_HEADER_SIZE + u64::from(page_size))
}

fn frame_checksum_matches(
    file: &File,
    path: &Path,
    header: &WalHeader,
    p: &WalPosition,
) -> Result<bool> {
    let off = frame_offset(header.page_size, p.frame);
    let mut fh = [0u8; FRAME_HEADER_SIZE as usize];
    match file.read_exact_at(&mut fh, off) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(Error::io("read", path, e)),
    }
    Ok(be32(&fh[8..12]) == header.salt1
        && be32(&fh[12..16]) == header.salt2
        && be32(&fh[16..20]) == p.cksum1
        && be32(&fh[20..24]) == p.cksum2)
}

/// Opens the WAL and reads its header; `None` when there is no file, it is
/// shorter than a header, or the header is invalid (SQLite then ignores it).
fn open_wal(path: &Path) -> Result<Option<(File, u64, WalHeader)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if len < WAL_HEADER_SIZE {
        return Ok(None);
    }
    let mut hbuf = [0u8; WAL_HEADER_SIZE as usize];
    file.read_exact_at(&mut hbuf, 0)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(parse_header(&hbuf).map(|h| (file, len, h)))
}

/// The WAL's header, `None` when there is no valid one (no frames).
///
/// # Errors
/// I/O failures.
pub fn read_header(path: &Path) -> Result<Option<WalHeader>> {
    Ok(open_wal(path)?.map(|(_, _, h)| h))
}

/// Whether the WAL still has `header` (the same salts and checkpoint
/// sequence). A restart or truncation rewrites the header before any frame
/// is overwritten, so frames read before a check that finds the header
/// unchanged were read intact, not torn by a concurrent restart (a reader
/// holding read mark 0 does not block a restart: SQLite's `walRestartLog`
/// locks only read marks 1 and up).
///
/// # Errors
/// I/O failures.
pub fn header_unchanged(path: &Path, header: &WalHeader) -> Result<bool> {
    Ok(match open_wal(path)? {
        Some((_, _, now)) => now == *header,
        None => false,
    })
}

/// Reads the WAL from its first frame up to (at most) frame `upto`.
///
/// # Errors
/// I/O failures.
pub fn read_wal_upto(path: &Path, upto: u32) -> Result<WalState> {
    let Some((file, len, header)) = open_wal(path)? else {
        return Ok(WalState::Empty);
    };
    Ok(WalState::Continues(scan(
        &file,
        path,
        len,
        header,
        0,
        (header.cksum1, header.cksum2),
        Some(upto),
    )?))
}

#[allow(clippy::too_many_arguments)]
fn scan(
    file: &File,
    path: &Path,
    len: u64,
    header: WalHeader,
    start_frame: u32,
    start_ck: (u32, u32),
    limit: Option<u32>,
) -> Result<WalRead> {
    let ps = u64::from(header.page_size);
    let frame_size = FRAME_HEADER_SIZE + ps;
    let mut txns = Vec::new();
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut ck = start_ck;
    let mut frame = start_frame;
    let mut end = WalPosition {
        salt1: header.salt1,
        salt2: header.salt2,
        checkpoint_seq: header.checkpoint_seq,
        frame: start_frame,
        cksum1: start_ck.0,
        cksum2: start_ck.1,
    };
    // Read in chunks of whole frames.
    let chunk_frames: u64 = (4 << 20) / frame_size + 1;
    let mut buf = vec![0u8; (chunk_frames * frame_size) as usize];
    let mut off = frame_offset(header.page_size, frame + 1);
    'outer: while off + frame_size <= len {
        let avail = ((len - off) / frame_size).min(chunk_frames);
        let want = (avail * frame_size) as usize;
        match file.read_exact_at(&mut buf[..want], off) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::io("read", path, e)),
        }
        for i in 0..avail as usize {
            if limit.is_some_and(|l| frame >= l) {
                break 'outer;
            }
            let f = &buf[i * frame_size as usize..(i + 1) * frame_size as usize];
            let pgno = be32(&f[0..4]);
            let commit = be32(&f[4..8]);
            if pgno == 0 || be32(&f[8..12]) != header.salt1 || be32(&f[12..16]) != header.salt2 {
                break 'outer;
            }
            let c = wal_checksum(header.big_endian_cksum, &f[0..8], ck);
            let c = wal_checksum(header.big_endian_cksum, &f[FRAME_HEADER_SIZE as usize..], c);
            if c != (be32(&f[16..20]), be32(&f[20..24])) {
                break 'outer;
            }
            ck = c;
            frame += 1;
            let data_off = off + i as u64 * frame_size + FRAME_HEADER_SIZE;
            pending.push((pgno, data_off));
            if commit != 0 {
                // Keep the newest version of each page within the transaction.
                let mut seen = std::collections::HashMap::with_capacity(pending.len());
                for (idx, (p, _)) in pending.iter().enumerate() {
                    seen.insert(*p, idx);
                }
                let mut pages: Vec<(u32, u64)> = pending
                    .iter()
                    .enumerate()
                    .filter(|(idx, (p, _))| seen.get(p) == Some(idx))
                    .map(|(_, x)| *x)
                    .collect();
                pages.sort_unstable_by_key(|x| x.0);
                txns.push(WalTxn {
                    db_pages: commit,
                    pages,
                });
                pending.clear();
                end.frame = frame;
                end.cksum1 = ck.0;
                end.cksum2 = ck.1;
            }
        }
        off += avail * frame_size;
    }
    Ok(WalRead {
        header,
        txns,
        end,
        uncommitted_frames: pending.len() as u32,
    })
}

/// Reads `len` bytes at `offset` of a file into a new buffer.
///
/// # Errors
/// I/O failures (a short read is an error).
pub fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x-wal");
        std::fs::write(&p, bytes).expect("write");
        (dir, p)
    }

    #[test]
    fn a_real_wal_is_read_to_its_last_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("d.db");
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
            .expect("setup");
        let WalState::Continues(r) = read_wal(&wal_path(&db), None).expect("read") else {
            panic!("expected frames")
        };
        assert_eq!(r.txns.len(), 3, "three commits");
        assert_eq!(r.uncommitted_frames, 0);
        // Cut the file in the middle of the last frame: the last commit disappears.
        let bytes = std::fs::read(wal_path(&db)).expect("read wal");
        let (_d, p) = wal_file(&bytes[..bytes.len() - 100]);
        let WalState::Continues(r2) = read_wal(&p, None).expect("read") else {
            panic!("expected frames")
        };
        assert_eq!(r2.txns.len(), 2);
        // From the end position nothing new; a flipped salt is a restart.
        let WalState::Continues(r3) = read_wal(&wal_path(&db), Some(&r.end)).expect("read") else {
            panic!()
        };
        assert!(r3.txns.is_empty());
        let mut moved = r.end;
        moved.salt1 ^= 1;
        assert!(matches!(
            read_wal(&wal_path(&db), Some(&moved)).expect("read"),
            WalState::Restarted(_)
        ));
    }

    #[test]
    fn a_wal_of_64k_pages_is_read() {
        // The WAL header's page size is a 32-bit field: 65536 is stored as
        // itself, not as 1 like the database header's 16-bit field. The
        // reader once took it for an invalid header and saw an empty WAL.
        for ps in [512u32, 1024, 4096, 8192, 16384, 32768, 65536] {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = dir.path().join("d.db");
            let c = rusqlite::Connection::open(&db).expect("open");
            c.execute_batch(&format!(
                "PRAGMA page_size={ps}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; \
                 CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(3000));"
            ))
            .expect("setup");
            let WalState::Continues(r) = read_wal(&wal_path(&db), None).expect("read") else {
                panic!("page size {ps}: the WAL was not recognised")
            };
            assert_eq!(r.header.page_size, ps);
            assert_eq!(r.txns.len(), 2, "page size {ps}: two commits");
            assert!(header_unchanged(&wal_path(&db), &r.header).expect("check"));
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .expect("truncate");
            assert!(
                !header_unchanged(&wal_path(&db), &r.header).expect("check"),
                "a truncated WAL no longer has its header"
            );
        }
    }

    proptest::proptest! {
        /// The WAL reader never panics on arbitrary file content.
        #[test]
        fn arbitrary_wal_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            let (_d, p) = wal_file(&bytes);
            let _ = read_wal(&p, None);
            let _ = read_wal_upto(&p, 3);
            let _ = parse_header(&bytes);
        }
    }
}
