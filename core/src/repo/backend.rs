//! Storage backends of a repository. The local directory is the one built
//! today; the trait is what an object store implements later.
//!
//! Objects are immutable: `put` writes to a temporary name, fsyncs it, renames
//! it into place and fsyncs the directory, and refuses to replace an existing
//! object with different bytes. Small mutable files (the capturer's saved
//! state) go through `put_state`, which is atomic but may replace.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::repo::ids::validate_key;

/// An object's bytes: memory-mapped when local, owned otherwise.
pub enum ObjectBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for ObjectBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectBytes({} bytes)", self.len())
    }
}

impl ObjectBytes {
    /// Lets the kernel drop the resident pages of `range` of a mapped object
    /// (nothing for owned bytes): a restore that has hashed or decompressed
    /// part of a large snapshot then holds no more than the part in flight.
    pub fn release(&self, range: std::ops::Range<usize>) {
        if let ObjectBytes::Mapped(m) = self {
            let start = range.start.min(m.len());
            let len = range.end.min(m.len()).saturating_sub(start);
            if len == 0 {
                return;
            }
            // SAFETY: the mapping is read-only and shared (`Mmap`) of a file
            // that is immutable once written (objects are written under a
            // temporary name and renamed into place), so a page dropped here
            // is read again from the same file with the same bytes at its
            // next access; nothing observes a change.
            let _ =
                unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
        }
    }
}

impl std::ops::Deref for ObjectBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ObjectBytes::Mapped(m) => m,
            ObjectBytes::Owned(v) => v,
        }
    }
}

/// Where a repository keeps its objects.
pub trait Backend: Send + Sync {
    /// A short description for messages (`local directory /x`).
    fn describe(&self) -> String;
    /// Stores an immutable object atomically.
    ///
    /// # Errors
    /// I/O failures; an existing object with other content.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Reads an object.
    ///
    /// # Errors
    /// A missing object (`Error::Corrupt` naming it) or I/O failures.
    fn get(&self, key: &str) -> Result<ObjectBytes>;
    /// Keys under a prefix (a directory such as `manifests`), sorted.
    ///
    /// # Errors
    /// I/O failures.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Deletes an object (retention only).
    ///
    /// # Errors
    /// I/O failures.
    fn delete(&self, key: &str) -> Result<()>;
    /// Whether an object exists.
    ///
    /// # Errors
    /// I/O failures.
    fn exists(&self, key: &str) -> Result<bool>;
    /// The stored size of an object in bytes, `None` when it does not exist
    /// (a restore plan checks every object it needs this way before reading).
    /// The default reads the object; backends override it with a cheap stat.
    ///
    /// # Errors
    /// I/O failures.
    fn size(&self, key: &str) -> Result<Option<u64>> {
        if !self.exists(key)? {
            return Ok(None);
        }
        self.get(key).map(|b| Some(b.len() as u64))
    }
    /// Reads many objects; each result in the order of `keys`. Remote
    /// backends send the requests concurrently (loading the catalog reads
    /// every manifest); the default reads one after the other.
    fn get_many(&self, keys: &[String]) -> Vec<Result<ObjectBytes>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// The upload spool's figures, for a backend that has one.
    fn spool_stats(&self) -> Option<std::sync::Arc<crate::repo::spool::SpoolStats>> {
        None
    }
    /// Writes or replaces a small mutable state file atomically.
    ///
    /// # Errors
    /// I/O failures.
    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Reads a state file, `None` when absent.
    ///
    /// # Errors
    /// I/O failures.
    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>>;
}

/// A repository on a local (or mounted) directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// Opens (creating when asked) a local repository directory.
    ///
    /// # Errors
    /// `Error::Usage` when it does not exist and `create` is false, or when it
    /// cannot be created or written.
    pub fn open(root: &Path, create: bool) -> Result<Self> {
        if !root.exists() {
            if !create {
                return Err(Error::Usage(format!(
                    "no backup repository at {}: run `genesis-recovery backup full` first, or pass --repo with the repository's path",
                    root.display()
                )));
            }
            fs::create_dir_all(root).map_err(|e| {
                Error::Usage(format!(
                    "cannot create the backup repository {}: {e}; choose a writable --repo",
                    root.display()
                ))
            })?;
        } else if !root.is_dir() {
            return Err(Error::Usage(format!(
                "the backup repository {} is not a directory",
                root.display()
            )));
        }
        Ok(LocalBackend {
            root: root.to_path_buf(),
        })
    }

    /// Checks that the directory can be written, by creating and removing a probe file.
    ///
    /// # Errors
    /// `Error::Usage` saying the repository is not writable.
    pub fn check_writable(&self) -> Result<()> {
        let probe = self
            .root
            .join(format!(".write-probe-{}", std::process::id()));
        let res = File::create(&probe).and_then(|mut f| f.write_all(b"x"));
        let _ = fs::remove_file(&probe);
        res.map_err(|e| {
            Error::Usage(format!(
                "the backup repository {} cannot be written ({e}); fix its permissions or choose another --repo",
                self.root.display()
            ))
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{name}",
            std::process::id(),
            unique_suffix()
        ));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        let res = f.write_all(bytes).and_then(|_| f.sync_all());
        drop(f);
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("write", &tmp, e));
        }
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("rename into place", path, e)
        })?;
        sync_dir(&dir)
    }
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Fsyncs a directory so that a rename in it is durable.
///
/// # Errors
/// I/O failures.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        if path.exists() {
            let existing = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            if existing == bytes {
                return Ok(());
            }
            return Err(Error::Failed(format!(
                "object {key} already exists in {} with other content; objects are immutable",
                self.describe()
            )));
        }
        self.write_atomic(&path, bytes)
    }

    fn get(&self, key: &str) -> Result<ObjectBytes> {
        let path = self.path(key)?;
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::corrupt(key, format!("missing from {}", self.describe()))
            } else {
                Error::io("open", &path, e)
            }
        })?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if len == 0 {
            return Ok(ObjectBytes::Owned(Vec::new()));
        }
        // SAFETY: objects are immutable once written (written under a temporary
        // name and renamed into place), so the mapped file does not change under us.
        // If mapping fails we fall back to reading.
        match unsafe { memmap2::Mmap::map(&file) } {
            Ok(m) => Ok(ObjectBytes::Mapped(m)),
            Err(_) => fs::read(&path)
                .map(ObjectBytes::Owned)
                .map_err(|e| Error::io("read", &path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_key(prefix)?;
        let dir = self.root.join(prefix);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            out.push(format!("{prefix}/{name}"));
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", &path, e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.exists())
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", &path, e)),
        }
    }

    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        self.write_atomic(&path, bytes)
    }

    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }
}
