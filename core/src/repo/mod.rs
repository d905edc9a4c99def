//! The backup repository (DESIGN.md §2): immutable objects with JSON
//! manifests, on a [`Backend`].

pub mod backend;
pub mod cache;
pub mod catalog;
pub mod formats;
pub mod ids;
pub mod lease;
pub mod location;
pub mod lost;
pub mod manifest;
pub mod packs;
pub mod read_leases;
pub mod s3;
pub mod spool;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use backend::{Backend, LocalBackend, ObjectBytes};
pub use catalog::Catalog;
pub use location::{RepoLocation, S3Location};
pub use manifest::{
    checksum_hex, parse_checksum, FrameEntry, Manifest, ObjectKind, TxnEntry, WalPosition,
    FORMAT_VERSION, MAX_LEVEL,
};

use crate::error::{Error, Result};

/// A manifest that could not be read, with why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadManifest {
    pub key: String,
    pub problem: String,
}

/// A backup repository.
#[derive(Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.backend.describe())
    }
}

impl Repository {
    /// A repository on any backend.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Repository { backend }
    }

    /// Opens a local directory repository; `create` makes it (for capture).
    ///
    /// # Errors
    /// `Error::Usage` when missing (and not created) or not writable when creating.
    pub fn open_local(path: &Path, create: bool) -> Result<Self> {
        let local = LocalBackend::open(path, create)?;
        if create {
            local.check_writable()?;
        }
        Ok(Repository {
            backend: Arc::new(local),
        })
    }

    /// Opens the repository at `location`: a local directory (made when
    /// `create`) or an `s3://` prefix (whose bucket must exist).
    ///
    /// # Errors
    /// `Error::Usage` for a missing or unwritable directory, or an object
    /// store that cannot be reached.
    pub fn open(location: &RepoLocation, create: bool) -> Result<Self> {
        match location {
            RepoLocation::Local(path) => Repository::open_local(path, create),
            RepoLocation::S3(s3) => {
                let remote: Arc<dyn Backend> = Arc::new(s3::S3Backend::open(s3)?);
                let backend: Arc<dyn Backend> = match cache::configured() {
                    Some(dir) if !create => Arc::new(cache::CachedBackend::open(remote, &dir)?),
                    _ => remote,
                };
                Ok(Repository { backend })
            }
        }
    }

    /// [`Repository::open`] of a repository as typed (`--repo`, a
    /// pipeline's `repository`): a directory or `s3://BUCKET/PREFIX`, any
    /// other URL refused.
    ///
    /// # Errors
    /// See [`RepoLocation::parse`] and [`Repository::open`].
    pub fn open_path(text: &Path, create: bool) -> Result<Self> {
        Repository::open(&RepoLocation::from_path(text)?, create)
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Stores an object and then its manifest (the manifest is the commit point:
    /// an object without a manifest is garbage from a crash, removed by prune).
    ///
    /// # Errors
    /// Backend failures.
    pub fn write_object(&self, manifest: &Manifest, compressed: &[u8]) -> Result<()> {
        ids::validate_id(&manifest.id)?;
        let key = manifest.object_key();
        let mkey = Manifest::manifest_key(&manifest.id);
        if let Err(e) = self.backend.put(&key, compressed) {
            // An object without its manifest is an attempt that failed before
            // its commit point (a segment re-read on retry carries a new
            // commit time, so other bytes): nothing can read it, so it is
            // replaced. An object with a manifest is never replaced.
            if self.backend.exists(&mkey)? || !self.backend.exists(&key)? {
                return Err(e);
            }
            tracing::info!(object = %key, "replacing the object of an attempt that never committed");
            self.backend.delete(&key)?;
            self.backend.put(&key, compressed)?;
        }
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::Failed(format!("encode manifest: {e}")))?;
        self.backend.put(&mkey, &json)
    }

    /// Deletes an object: its manifest first (the commit point), so a crash
    /// between the two leaves an orphan object, which prune removes, never
    /// a manifest naming an object that is gone.
    ///
    /// # Errors
    /// Backend failures.
    pub fn delete_object(&self, manifest: &Manifest) -> Result<()> {
        self.backend.delete(&Manifest::manifest_key(&manifest.id))?;
        self.backend.delete(&manifest.object_key())
    }

    /// Reads every manifest, from the packs that hold it ([`packs`]) or on
    /// its own; unreadable ones are returned as problems, not errors.
    ///
    /// # Errors
    /// Backend failures listing the repository.
    pub fn load_manifests(&self) -> Result<(Vec<Manifest>, Vec<BadManifest>)> {
        let mut listed = self.list_manifests()?;
        let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for held in std::mem::take(&mut listed.packs).into_values() {
            for (key, bytes) in held {
                if listed.loose.contains(&key) {
                    found.insert(key, bytes);
                }
            }
        }
        let keys: Vec<String> = listed
            .loose
            .iter()
            .filter(|k| !found.contains_key(*k))
            .cloned()
            .collect();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let read = self.backend.get_many(&keys);
        for (key, bytes) in keys.into_iter().zip(read) {
            match bytes {
                Ok(b) => {
                    found.insert(key, b.to_vec());
                }
                Err(e) => bad.push(BadManifest {
                    key,
                    problem: e.to_string(),
                }),
            }
        }
        for (key, bytes) in found {
            match Manifest::from_json(&key, &bytes) {
                Ok(m) => good.push(m),
                Err(e) => bad.push(BadManifest {
                    key,
                    problem: e.to_string(),
                }),
            }
        }
        Ok((good, bad))
    }

    /// Loads the catalog (all readable manifests, organised by generation).
    ///
    /// # Errors
    /// Backend failures.
    pub fn catalog(&self) -> Result<Catalog> {
        let (manifests, bad) = self.load_manifests()?;
        Ok(Catalog::new(manifests, bad))
    }

    /// Reads an object's compressed bytes.
    ///
    /// # Errors
    /// A missing object or I/O failure, naming the object.
    pub fn read_object(&self, manifest: &Manifest) -> Result<ObjectBytes> {
        ids::validate_id(&manifest.id)?;
        self.backend.get(&manifest.object_key())
    }
}

/// A new generation id: UTC time plus 6 hex digits of entropy, sortable by time.
pub fn new_generation_id() -> String {
    let now = chrono::Utc::now();
    let mut h = blake3::Hasher::new();
    h.update(&now.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let local = 0u8;
    h.update(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    let hex = h.finalize().to_hex();
    format!("{}-{}", now.format("%Y%m%dT%H%M%S"), &hex[..6])
}
