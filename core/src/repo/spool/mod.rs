//! The durable local spool of a capturer whose repository is remote
//! (DESIGN.md §3): objects are written to a local directory (fsynced and
//! renamed, like any local object) and the capture position advances at
//! once; upload threads then copy them to the object store in parallel,
//! with retries and backoff, and remove each local copy once it is stored.
//! An outage of the store therefore neither loses a commit nor holds the
//! application's WAL for its length: it costs spool space, which is bounded
//! (a full spool is a storage outage to the capture loop, waited out like a
//! full disk) and reported in the metrics.
//!
//! Manifests stay the commit point: a manifest is uploaded only once its
//! object is stored. A spool left by a crash is uploaded by the next run
//! (objects first, then manifests).

mod stats;
mod upload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use stats::SpoolStats;
use upload::{Queue, Shared, Waiting};

use crate::error::{Error, Result};
use crate::repo::backend::{Backend, LocalBackend, ObjectBytes};
use crate::repo::ids::validate_key;

/// Default bound of the spool's size.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Upload threads.
const UPLOADERS: usize = 4;

/// Object directories, in the order a crashed spool is re-queued.
const DIRS: [&str; 4] = ["snapshots", "segments", "events", "manifests"];

/// A remote backend behind a durable local spool.
pub struct SpooledBackend {
    shared: Arc<Shared>,
    dir: PathBuf,
    /// Keys this backend stored or found in the store: `exists` answers
    /// them without a request, so that a capture step sends none to a
    /// store that is down (its check that the generation's snapshot is
    /// still there would otherwise fail the step and hold the read
    /// transaction, and with it the application's checkpoints, for the
    /// outage's length). A key deleted by someone else is seen by the next
    /// run.
    known: Mutex<HashSet<String>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl SpooledBackend {
    /// Opens the spool directory `dir` (made when missing) in front of
    /// `remote`, queues what a previous run left in it, and starts the
    /// uploaders.
    ///
    /// # Errors
    /// `Error::Usage` when the directory cannot be made or written.
    pub fn open(remote: Arc<dyn Backend>, dir: &Path, max_bytes: u64) -> Result<SpooledBackend> {
        let local = LocalBackend::open(dir, true)?;
        local.check_writable()?;
        let mut q = Queue::default();
        for d in DIRS {
            for key in local.list(d)? {
                let size = local.size(&key)?.unwrap_or(0);
                q.bytes += size;
                q.waiting.push_back(Waiting {
                    key,
                    size,
                    since: Instant::now(),
                });
            }
        }
        if !q.waiting.is_empty() {
            tracing::info!(objects = q.waiting.len(), bytes = q.bytes, spool = %dir.display(), "uploading what the last run left in the spool");
        }
        let stats = Arc::new(SpoolStats {
            max_bytes,
            ..SpoolStats::default()
        });
        let shared = Arc::new(Shared {
            remote,
            local,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            stats,
        });
        shared.publish(&q);
        *shared.lock() = q;
        let workers = (0..UPLOADERS)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("genesis-upload-{i}"))
                    .spawn(move || s.upload_loop())
                    .map_err(|e| Error::Failed(format!("start an upload thread: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpooledBackend {
            shared,
            dir: dir.to_path_buf(),
            known: Mutex::default(),
            workers: Mutex::new(workers),
        })
    }

    /// The spool's figures.
    pub fn stats(&self) -> Arc<SpoolStats> {
        self.shared.stats.clone()
    }

    /// Releases the capturer's lease on the store (`repo::lease`), after a
    /// clean stop: only when nothing is left in the spool (what is left
    /// belongs to this host's next run, so the lease stays).
    ///
    /// # Errors
    /// `Error::Failed` when objects wait in the spool; store failures.
    pub fn release_lease(&self, db: &Path) -> Result<()> {
        {
            let q = self.shared.lock();
            if !(q.waiting.is_empty() && q.in_flight.is_empty()) {
                return Err(Error::Failed(format!(
                    "the capturer's lease on {} is kept: {} object(s) still wait in the spool {}",
                    self.shared.remote.describe(),
                    q.waiting.len() + q.in_flight.len(),
                    self.dir.display()
                )));
            }
        }
        crate::repo::lease::release(
            self.shared.remote.as_ref(),
            &crate::repo::lease::Lease::for_database(db),
        )
    }

    /// Waits until every spooled object is stored, at most `timeout`.
    ///
    /// # Errors
    /// `Error::Failed` saying how much is left (it stays in the spool and the
    /// next run uploads it).
    pub fn drain(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.lock();
        while !(q.waiting.is_empty() && q.in_flight.is_empty()) {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Failed(format!(
                    "{} object(s) ({} bytes) are not yet in {}: they stay in the spool {} and the next \
                     `backup sync` or `replicate` uploads them",
                    q.waiting.len() + q.in_flight.len(),
                    q.bytes,
                    self.shared.remote.describe(),
                    self.dir.display()
                )));
            }
            q = self
                .shared
                .changed
                .wait_timeout(q, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn know(&self, key: &str, present: bool) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if present {
            k.insert(key.to_string());
        } else {
            k.remove(key);
        }
    }

    fn known(&self, key: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn spooled(&self, key: &str) -> bool {
        let q = self.shared.lock();
        q.in_flight.contains(key) || q.waiting.iter().any(|w| w.key == key)
    }
}

impl Drop for SpooledBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Backend for SpooledBackend {
    fn describe(&self) -> String {
        self.shared.remote.describe()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        validate_key(key)?;
        {
            let q = self.shared.lock();
            if q.bytes + bytes.len() as u64 > self.shared.stats.max_bytes && !q.waiting.is_empty() {
                return Err(Error::Io {
                    action: "spool",
                    path: self.dir.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "the upload spool holds {} bytes, its bound is {}: the object store is \
                             not taking uploads fast enough (see the upload metrics)",
                            q.bytes, self.shared.stats.max_bytes
                        ),
                    ),
                });
            }
        }
        if self.spooled(key) {
            return self.shared.local.put(key, bytes);
        }
        self.shared.local.put(key, bytes)?;
        self.know(key, true);
        let mut q = self.shared.lock();
        q.bytes += bytes.len() as u64;
        q.waiting.push_back(Waiting {
            key: key.to_string(),
            size: bytes.len() as u64,
            since: Instant::now(),
        });
        self.shared.publish(&q);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn get(&self, key: &str) -> Result<ObjectBytes> {
        if self.spooled(key) {
            if let Ok(b) = self.shared.local.get(key) {
                return Ok(b);
            }
        }
        self.shared.remote.get(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = self.shared.remote.list(prefix)?;
        keys.extend(self.shared.local.list(prefix)?);
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        {
            let mut q = self.shared.lock();
            while q.in_flight.contains(key) {
                q = self
                    .shared
                    .changed
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if let Some(i) = q.waiting.iter().position(|w| w.key == key) {
                if let Some(w) = q.waiting.remove(i) {
                    q.bytes = q.bytes.saturating_sub(w.size);
                }
                self.shared.publish(&q);
            }
        }
        self.know(key, false);
        self.shared.local.delete(key)?;
        self.shared.remote.delete(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        if self.known(key) || self.spooled(key) {
            return Ok(true);
        }
        let present = self.shared.remote.exists(key)?;
        if present {
            self.know(key, true);
        }
        Ok(present)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        if self.spooled(key) {
            if let Some(n) = self.shared.local.size(key)? {
                return Ok(Some(n));
            }
        }
        self.shared.remote.size(key)
    }

    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.shared.remote.put_state(key, bytes)
    }

    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.shared.remote.get_state(key)
    }

    fn spool_stats(&self) -> Option<Arc<SpoolStats>> {
        Some(self.stats())
    }
}

/// The spool directory of a database's capturer: `<db>-genesis-spool`,
/// beside the database (on the host, which is what the spool is for).
pub fn spool_dir(db: &Path) -> PathBuf {
    crate::lock::sibling(db, "-genesis-spool")
}

/// Opens the repository a capturer of `db` writes to: a local directory as
/// it is; an object store behind the database's spool, returned too so that
/// the caller can wait for it to drain.
///
/// # Errors
/// See [`crate::repo::Repository::open`] and [`SpooledBackend::open`].
pub fn open_for_capture(
    location: &crate::repo::RepoLocation,
    db: &Path,
) -> Result<(crate::repo::Repository, Option<Arc<SpooledBackend>>)> {
    match location {
        crate::repo::RepoLocation::Local(_) => {
            Ok((crate::repo::Repository::open(location, true)?, None))
        }
        crate::repo::RepoLocation::S3(s3) => {
            let remote: Arc<dyn Backend> = Arc::new(crate::repo::s3::S3Backend::open(s3)?);
            crate::repo::lease::acquire(
                remote.as_ref(),
                &crate::repo::lease::Lease::for_database(db),
            )?;
            let spooled = Arc::new(SpooledBackend::open(
                remote,
                &spool_dir(db),
                DEFAULT_SPOOL_MAX_BYTES,
            )?);
            let repo = crate::repo::Repository::new(spooled.clone());
            Ok((repo, Some(spooled)))
        }
    }
}
