//! A local cache of a remote repository's objects for restores and drills
//! (`--cache-dir`): a drill every night reads the chain from the cache and
//! downloads only what is new. Objects are immutable, so a cached copy is
//! the object; manifests are never cached (the catalog is always the
//! store's own, so a pruned object is never planned from the cache), but
//! manifest packs are: a pack is named by its content's hash, and the
//! catalog uses a pack's copy only for a manifest the store's listing shows.
//! Cached copies are written like local objects (temporary name, fsync,
//! rename). A cached copy damaged on disk fails fetch's BLAKE3 check like a
//! damaged object in the store: the restore falls back and says so; remove
//! the cache directory to download again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::repo::backend::{Backend, LocalBackend, ObjectBytes};

static CACHE_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Sets the cache directory remote repositories opened for reading by this
/// process use (the CLI's `--cache-dir` of restore, drill and run).
pub fn configure(dir: &Path) {
    if let Ok(mut g) = CACHE_DIR.write() {
        *g = Some(dir.to_path_buf());
    }
}

/// The configured cache directory.
pub(crate) fn configured() -> Option<PathBuf> {
    CACHE_DIR.read().ok().and_then(|g| g.clone())
}

/// Whether a key names an immutable data object or a manifest pack (not a
/// manifest or state).
fn cacheable(key: &str) -> bool {
    ["snapshots/", "segments/", "events/"]
        .iter()
        .any(|d| key.starts_with(d))
        || crate::repo::packs::is_pack_key(key)
}

/// A remote backend read through a local cache.
pub struct CachedBackend {
    remote: Arc<dyn Backend>,
    cache: LocalBackend,
}

impl CachedBackend {
    /// The cache in `dir` (made when missing) in front of `remote`.
    ///
    /// # Errors
    /// `Error::Usage` when the directory cannot be made or written.
    pub fn open(remote: Arc<dyn Backend>, dir: &Path) -> Result<CachedBackend> {
        let cache = LocalBackend::open(dir, true)?;
        cache.check_writable()?;
        Ok(CachedBackend { remote, cache })
    }
}

impl Backend for CachedBackend {
    fn describe(&self) -> String {
        format!(
            "{} (cached in {})",
            self.remote.describe(),
            self.cache.root().display()
        )
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.remote.put(key, bytes)
    }

    fn get(&self, key: &str) -> Result<ObjectBytes> {
        if !cacheable(key) {
            return self.remote.get(key);
        }
        if self.cache.exists(key)? {
            return self.cache.get(key);
        }
        let bytes = self.remote.get(key)?;
        if let Err(e) = self.cache.put(key, &bytes) {
            tracing::warn!(object = %key, error = %e, "could not keep a copy in the cache");
        }
        Ok(bytes)
    }

    fn get_many(&self, keys: &[String]) -> Vec<Result<ObjectBytes>> {
        // Cached copies from the cache; the rest from the store, together.
        let mut out: Vec<Option<Result<ObjectBytes>>> = keys
            .iter()
            .map(|k| {
                (cacheable(k) && self.cache.exists(k).unwrap_or(false)).then(|| self.cache.get(k))
            })
            .collect();
        let missing: Vec<String> = keys
            .iter()
            .zip(&out)
            .filter(|(_, got)| got.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let mut fetched = self.remote.get_many(&missing).into_iter();
        for (key, slot) in keys.iter().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let got = fetched.next().unwrap_or_else(|| {
                Err(crate::Error::Failed(format!(
                    "no answer for {key} from the store"
                )))
            });
            if let (Ok(bytes), true) = (&got, cacheable(key)) {
                if let Err(e) = self.cache.put(key, bytes) {
                    tracing::warn!(object = %key, error = %e, "could not keep a copy in the cache");
                }
            }
            *slot = Some(got);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(crate::Error::Failed("lost a read".into()))))
            .collect()
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.remote.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        if cacheable(key) {
            self.cache.delete(key)?;
        }
        self.remote.delete(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.remote.exists(key)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        if cacheable(key) {
            if let Some(n) = self.cache.size(key)? {
                return Ok(Some(n));
            }
        }
        self.remote.size(key)
    }

    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.remote.put_state(key, bytes)
    }

    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.remote.get_state(key)
    }
}
