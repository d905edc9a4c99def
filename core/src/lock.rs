//! Exclusive lock files (advisory `flock`), used so that only one capturer
//! runs per database and only one restore per live path. The file holds a
//! JSON note of the holder so that the loser can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Who holds a lock.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub purpose: String,
    pub since: String,
}

impl LockFile {
    /// Takes the lock at `path` without waiting.
    ///
    /// # Errors
    /// `Error::Locked` naming the holder when another process has it; I/O errors.
    pub fn try_acquire(path: &Path, purpose: &str) -> Result<LockFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let who = serde_json::from_str::<Holder>(&text)
                    .map(|h| format!("{} (pid {}, running since {})", h.purpose, h.pid, h.since))
                    .unwrap_or_else(|_| "another process".to_string());
                return Err(Error::Locked(format!(
                    "cannot start the {purpose}: {who} holds the lock {}; wait for it to finish or stop it",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
        let holder = Holder {
            pid: std::process::id(),
            purpose: purpose.to_string(),
            since: crate::time::format_rfc3339(chrono::Utc::now()),
        };
        let note = serde_json::to_vec(&holder).unwrap_or_default();
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = file.write_all(&note);
        let _ = file.sync_all();
        Ok(LockFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Reads who holds the lock at `path`, if anyone does.
    pub fn holder(path: &Path) -> Option<Holder> {
        let file = File::open(path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(_) => {
                let text = std::fs::read_to_string(path).ok()?;
                serde_json::from_str(&text).ok()
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// A path beside `base` with a suffix appended to its file name.
pub fn sibling(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}
