//! Seeing the application's checkpointer: SQLite's unix VFS takes its WAL
//! locks as POSIX byte-range locks on the `-shm` file, the checkpoint lock at
//! byte 121 (`UNIX_SHM_BASE` 120 + `WAL_CKPT_LOCK` 1, see `os_unix.c` and
//! `wal.c`). `F_GETLK` reports a lock of another process there without
//! taking or changing any lock. A RESTART or TRUNCATE checkpoint holds it
//! while it waits for readers, the capturer's included; the replicate loop
//! then steps at once instead of at its next interval, which moves its read
//! transaction past the frames the checkpointer waits for.
//!
//! The file is opened once and kept open for the capturer's lifetime:
//! closing any descriptor of the `-shm` file would drop every POSIX lock this
//! process holds on it, SQLite's read marks included.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::lock::sibling;

/// The write lock's byte in the `-shm` file (`WAL_WRITE_LOCK` 0).
const WRITE_LOCK_BYTE: i64 = 120;
/// The checkpoint lock's byte in the `-shm` file.
const CKPT_LOCK_BYTE: i64 = 120 + 1;

/// A kept-open handle on the database's `-shm` file (none when it cannot be
/// opened: then no checkpointer is ever seen, and steps keep their interval).
pub(super) struct ShmProbe {
    file: Option<File>,
}

impl ShmProbe {
    pub(super) fn open(db: &Path) -> ShmProbe {
        ShmProbe {
            file: File::open(sibling(db, "-shm")).ok(),
        }
    }

    /// Whether another process holds the checkpoint lock.
    pub(super) fn checkpointer_active(&self) -> bool {
        self.held_by_other(CKPT_LOCK_BYTE)
    }

    /// Whether another process holds both the checkpoint lock and the WAL
    /// write lock: a FULL, RESTART or TRUNCATE checkpoint at work, under
    /// which no frame can be appended to the WAL.
    pub(super) fn blocking_checkpointer_active(&self) -> bool {
        self.held_by_other(CKPT_LOCK_BYTE) && self.held_by_other(WRITE_LOCK_BYTE)
    }

    fn held_by_other(&self, byte: i64) -> bool {
        let Some(f) = &self.file else {
            return false;
        };
        // SAFETY: `flock` is a plain C struct for which all-zero bytes are a
        // valid value; fcntl(F_GETLK) only reads and writes that struct and
        // takes no lock.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte as libc::off_t;
        fl.l_len = 1;
        // SAFETY: the descriptor is open for the life of `self`, and `fl`
        // is a valid, exclusively borrowed flock struct.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
        rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_checkpointer_of_another_process_is_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("d.db");
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("setup");
        let probe = ShmProbe::open(&db);
        assert!(!probe.checkpointer_active(), "nobody checkpoints");
        // Another process holds the checkpoint lock for a while.
        let mut py = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import fcntl,struct,time,os\n\
                 f=os.open({:?}, os.O_RDWR)\n\
                 fcntl.lockf(f, fcntl.LOCK_EX, 1, 121, 0)\n\
                 print('locked', flush=True)\n\
                 time.sleep(3)\n",
                sibling(&db, "-shm").display().to_string()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (scripts/setup.sh installs it)");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(py.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        assert_eq!(line.trim(), "locked");
        assert!(
            probe.checkpointer_active(),
            "the other process's lock is seen"
        );
        let _ = py.kill();
        let _ = py.wait();
        assert!(!probe.checkpointer_active(), "released with its process");
        drop(c);
    }
}
