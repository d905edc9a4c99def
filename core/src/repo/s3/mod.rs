//! A repository in an S3-compatible object store (`s3://BUCKET/PREFIX`),
//! through the `object_store` crate, behind the same [`Backend`] contract as
//! the local directory.
//!
//! * Objects are written create-only (`PutMode::Create`, `If-None-Match: *`):
//!   a put that finds the key taken compares the stored bytes (size and
//!   BLAKE3) and succeeds only when they are the same, so a retry of a put
//!   whose answer was lost is harmless and nothing is ever overwritten.
//! * Every object is one PUT, at most [`MAX_PUT_BYTES`] (docs/decisions.md).
//! * Large objects are read with parallel ranged GETs; each range is retried
//!   on its own, so a broken stream costs one range, not the object.
//! * Transport failures are `Error::Io` with a connection kind, so the
//!   capture loop waits an outage out (`capture::run::is_storage_outage`).
//!
//! The trait is synchronous; a small tokio runtime inside the backend runs
//! the client's futures.

pub mod config;
mod read;
mod request;

use std::future::Future;
use std::sync::Arc;

use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use config::{configure, S3Settings};
use request::bump;
pub use request::RequestCounts;

use crate::error::{Error, Result};
use crate::repo::backend::{Backend, ObjectBytes};
use crate::repo::ids::validate_key;
use crate::repo::location::S3Location;

/// The largest object written in one PUT (S3's own limit is 5 GiB). A
/// snapshot is written whole; one over this is refused with a clear error.
pub const MAX_PUT_BYTES: usize = 4 << 30;

/// Objects larger than this are read in ranges of this size, in parallel.
pub const RANGE_BYTES: u64 = 8 << 20;

/// Ranged GETs in flight at once for one object.
const RANGES_IN_FLIGHT: usize = 8;

/// Whole-object GETs in flight at once in [`Backend::get_many`].
const GETS_IN_FLIGHT: usize = 32;

/// Tries of one request (on top of the client's own retries of idempotent
/// requests), with doubling backoff from 100 ms, after which the caller
/// (the spool's uploaders, the capture loop's outage backoff) takes over.
const TRIES: u32 = 3;

/// A repository under a bucket's prefix.
pub struct S3Backend {
    store: Arc<AmazonS3>,
    location: S3Location,
    runtime: tokio::runtime::Runtime,
    counts: Arc<RequestCounts>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Backend({})", self.location)
    }
}

impl S3Backend {
    /// Connects to `location` with the environment and the configured
    /// `[s3]` settings, and checks that the prefix can be listed.
    ///
    /// # Errors
    /// `Error::Usage` for refused settings or a bucket that cannot be
    /// listed (missing, wrong endpoint, refused credentials).
    pub fn open(location: &S3Location) -> Result<S3Backend> {
        let store = config::build_store(location, &config::configured())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("genesis-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Failed(format!("start the S3 client's runtime: {e}")))?;
        let backend = S3Backend {
            store: Arc::new(store),
            location: location.clone(),
            runtime,
            counts: Arc::default(),
        };
        backend.list("manifests").map_err(|e| {
            Error::Usage(format!(
                "cannot reach the backup repository {location}: {e}; check that the bucket exists, \
                 AWS_ENDPOINT_URL (or endpoint in the [s3] table) and the credentials"
            ))
        })?;
        Ok(backend)
    }

    /// The requests sent so far.
    pub fn counts(&self) -> Arc<RequestCounts> {
        self.counts.clone()
    }

    fn object_path(&self, key: &str) -> Result<ObjectPath> {
        validate_key(key)?;
        Ok(if self.location.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.location.prefix))
        })
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.location)
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The stored object, when a create-only put found the key taken:
    /// the same bytes are success, other bytes an error naming it.
    fn compare_existing(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let existing = self.get(key)?;
        if existing.len() == bytes.len() && blake3::hash(&existing) == blake3::hash(bytes) {
            return Ok(());
        }
        Err(Error::Failed(format!(
            "object {key} already exists in {} with other content; objects are immutable",
            self.describe()
        )))
    }
}

impl Backend for S3Backend {
    fn describe(&self) -> String {
        format!("object store {}", self.location)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.object_path(key)?;
        if bytes.len() > MAX_PUT_BYTES {
            return Err(Error::Failed(format!(
                "object {key} is {} bytes, over the {} bytes one PUT may carry here; \
                 snapshots that large are not supported on an object store yet (docs/decisions.md)",
                bytes.len(),
                MAX_PUT_BYTES
            )));
        }
        let payload = PutPayload::from(bytes.to_vec());
        let res = self.attempt("write", key, || {
            bump(&self.counts.put);
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            self.store.put_opts(&path, payload.clone(), opts)
        });
        match res {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => self.compare_existing(key, bytes),
            Err(e @ object_store::Error::NotImplemented { .. }) => Err(Error::Failed(format!(
                "the object store of {} cannot write create-only ({e}); genesis-recovery needs \
                 conditional puts (If-None-Match), which AWS S3 and most compatible servers have",
                self.location
            ))),
            Err(e) => Err(self.error("write", key, e)),
        }
    }

    fn get(&self, key: &str) -> Result<ObjectBytes> {
        self.read(key)
    }

    fn get_many(&self, keys: &[String]) -> Vec<Result<ObjectBytes>> {
        self.read_many(keys)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.object_path(prefix)?;
        let listed = self.retrying("list", prefix, || {
            bump(&self.counts.list);
            self.store.list_with_delimiter(Some(&path))
        })?;
        let mut out: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                (!name.starts_with('.')).then(|| format!("{prefix}/{name}"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.object_path(key)?;
        match self.retrying("delete", key, || {
            bump(&self.counts.delete);
            self.store.delete(&path)
        }) {
            Ok(()) | Err(Error::Corrupt { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size(key)?.is_some())
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.object_path(key)?;
        match self.retrying("stat", key, || {
            bump(&self.counts.head);
            self.store.head(&path)
        }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(Error::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.object_path(key)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.retrying("write", key, || {
            bump(&self.counts.put);
            self.store.put(&path, payload.clone())
        })
        .map(|_| ())
    }

    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.object_path(key)?;
        match self.retrying("read", key, || {
            bump(&self.counts.get);
            async { self.store.get(&path).await?.bytes().await }
        }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(Error::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
