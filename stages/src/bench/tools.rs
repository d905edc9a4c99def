//! Small file and process helpers of the benchmark: sizes, warming the page
//! cache, running a command-line tool, free space.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use genesis_core::{Error, Result};

/// A file's length, 0 when missing.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The bytes of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_size(&p)
            } else {
                file_len(&p)
            };
        }
    }
    total
}

/// Whether a command-line tool can be run.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs a command to success.
///
/// # Errors
/// `Error::Failed` with the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Failed(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Reads a file through, so that every method starts with its input in the page cache.
pub fn warm(path: &Path) {
    if path.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                warm(&e.path());
            }
        }
    } else if let Ok(mut f) = fs::File::open(path) {
        let mut buf = vec![0u8; 1 << 20];
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Writes dirty pages out (`sync`), so that no method pays for the previous one's.
pub fn sync_all() {
    let _ = Command::new("sync").status();
}

/// fsyncs a file.
///
/// # Errors
/// I/O failures naming the path.
pub fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", path, e))
}

/// Removes a database file and its `-wal` and `-shm`.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(genesis_core::lock::sibling(path, suffix));
    }
}

/// Bytes free for an unprivileged user on the filesystem of `dir`.
///
/// # Errors
/// I/O failures naming the directory.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Usage(format!("{}: a path with a NUL byte", dir.display())))?;
    // SAFETY: statvfs only writes into the struct we pass; `c` is a valid
    // NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(Error::io(
            "read the free space of",
            dir,
            std::io::Error::last_os_error(),
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
