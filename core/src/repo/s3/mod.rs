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

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

pub use config::{configure, S3Settings};

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

/// Requests sent, by kind (for the benchmark's requests-per-hour figures
/// and the tests that an idle database costs no PUT).
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
}

impl RequestCounts {
    /// (put, get, head, list, delete) so far.
    pub fn snapshot(&self) -> [u64; 5] {
        [
            self.put.load(Ordering::Relaxed),
            self.get.load(Ordering::Relaxed),
            self.head.load(Ordering::Relaxed),
            self.list.load(Ordering::Relaxed),
            self.delete.load(Ordering::Relaxed),
        ]
    }
}

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

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
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

    /// Runs `op` until it succeeds, fails for good, or [`TRIES`] transient
    /// failures have passed; the client's own error, for the caller to map.
    fn attempt<T, F, Fut>(&self, action: &'static str, key: &str, op: F) -> object_store::Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.block_on(op()) {
                Err(e) if is_transient(&e) && tries < TRIES => {
                    tracing::debug!(action, object = %self.url(key), error = %e, "retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                r => return r,
            }
        }
    }

    /// [`Self::attempt`] with the error mapped to ours.
    fn retrying<T, F, Fut>(&self, action: &'static str, key: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        self.attempt(action, key, op)
            .map_err(|e| self.error(action, key, e))
    }

    fn error(&self, action: &'static str, key: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => Error::corrupt(key, format!("missing from {}", self.describe())),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::Failed(format!(
                "{action} {}: the object store refused the request ({e}); check the credentials \
                 (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the [s3] table) and their permissions",
                self.url(key)
            )),
            other => Error::Io {
                action,
                path: self.url(key).into(),
                source: std::io::Error::new(std::io::ErrorKind::NotConnected, other.to_string()),
            },
        }
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

    /// Reads the rest of an object whose first range is `first`, in
    /// parallel ranges.
    fn get_ranges(
        &self,
        key: &str,
        path: &ObjectPath,
        first: Vec<u8>,
        size: u64,
    ) -> Result<Vec<u8>> {
        let mut out = first;
        out.reserve(usize::try_from(size).unwrap_or(0).saturating_sub(out.len()));
        let mut start = out.len() as u64;
        while start < size {
            let wave: Vec<std::ops::Range<u64>> = (0..RANGES_IN_FLIGHT as u64)
                .map(|i| start + i * RANGE_BYTES)
                .take_while(|&s| s < size)
                .map(|s| s..(s + RANGE_BYTES).min(size))
                .collect();
            let parts = self.retrying("read", key, || {
                let store = self.store.clone();
                let path = path.clone();
                let wave = wave.clone();
                for _ in &wave {
                    bump(&self.counts.get);
                }
                async move {
                    let mut set = tokio::task::JoinSet::new();
                    for (i, r) in wave.into_iter().enumerate() {
                        let store = store.clone();
                        let path = path.clone();
                        set.spawn(async move { (i, store.get_range(&path, r).await) });
                    }
                    let mut parts = Vec::new();
                    while let Some(done) = set.join_next().await {
                        let (i, r) = done?;
                        parts.push((i, r?));
                    }
                    parts.sort_by_key(|(i, _)| *i);
                    Ok(parts)
                }
            })?;
            for (_, p) in parts {
                out.extend_from_slice(&p);
            }
            let next = wave.last().map_or(size, |r| r.end);
            start = next;
        }
        if out.len() as u64 != size {
            return Err(Error::corrupt(
                key,
                format!("read {} bytes where the store says {size}", out.len()),
            ));
        }
        Ok(out)
    }
}

/// Failures worth another try: the transport and the server, not answers
/// about the object or the request.
fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    matches!(e, E::Generic { .. } | E::JoinError { .. })
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
        let path = self.object_path(key)?;
        let first = self.attempt("read", key, || {
            bump(&self.counts.get);
            let opts = GetOptions {
                range: Some(GetRange::Bounded(0..RANGE_BYTES)),
                ..GetOptions::default()
            };
            async {
                let r = self.store.get_opts(&path, opts).await?;
                let size = r.meta.size;
                Ok((r.bytes().await?, size))
            }
        });
        let (first, size) = match first {
            Ok(v) => v,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(self.error("read", key, e)),
            // An empty object has no first byte to range over: read it whole.
            Err(_) => {
                let b = self.retrying("read", key, || {
                    bump(&self.counts.get);
                    async { self.store.get(&path).await?.bytes().await }
                })?;
                return Ok(ObjectBytes::Owned(b.to_vec()));
            }
        };
        if first.len() as u64 >= size {
            return Ok(ObjectBytes::Owned(first.to_vec()));
        }
        self.get_ranges(key, &path, first.to_vec(), size)
            .map(ObjectBytes::Owned)
    }

    fn get_many(&self, keys: &[String]) -> Vec<Result<ObjectBytes>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GETS_IN_FLIGHT) {
            let paths: Vec<Result<ObjectPath>> =
                chunk.iter().map(|k| self.object_path(k)).collect();
            let mut done: Vec<Option<object_store::Result<_>>> =
                (0..chunk.len()).map(|_| None).collect();
            self.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for (i, p) in paths.iter().enumerate() {
                    let Ok(p) = p else { continue };
                    let (store, p) = (self.store.clone(), p.clone());
                    bump(&self.counts.get);
                    set.spawn(
                        async move { (i, async { store.get(&p).await?.bytes().await }.await) },
                    );
                }
                while let Some(joined) = set.join_next().await {
                    if let Ok((i, r)) = joined {
                        done[i] = Some(r);
                    }
                }
            });
            for ((key, path), r) in chunk.iter().zip(paths).zip(done) {
                out.push(match (path, r) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(Ok(b))) => Ok(ObjectBytes::Owned(b.to_vec())),
                    (Ok(_), Some(Err(e))) if !is_transient(&e) => Err(self.error("read", key, e)),
                    // A transient failure (or a lost task) is read again alone, with retries.
                    (Ok(_), _) => self.get(key),
                });
            }
        }
        out
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
