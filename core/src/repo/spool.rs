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

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::repo::backend::{Backend, LocalBackend, ObjectBytes};
use crate::repo::ids::validate_key;

/// Default bound of the spool's size.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Upload threads.
const UPLOADERS: usize = 4;

/// The longest wait between two tries of one upload.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Object directories, in the order a crashed spool is re-queued.
const DIRS: [&str; 4] = ["snapshots", "segments", "events", "manifests"];

/// What the spool reports (Prometheus rows in the capture metrics).
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub max_bytes: u64,
    pub uploaded: AtomicU64,
    pub upload_errors: AtomicU64,
    backlog: Mutex<(u64, u64, Option<Instant>)>,
}

impl SpoolStats {
    /// (objects waiting, their bytes, seconds the oldest has waited).
    pub fn backlog(&self) -> (u64, u64, f64) {
        let g = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1, g.2.map_or(0.0, |t| t.elapsed().as_secs_f64()))
    }

    /// The rows of the Prometheus text format.
    pub fn render(&self) -> String {
        let (n, bytes, lag) = self.backlog();
        let rows = [
            (
                "genesis_capture_upload_backlog_objects",
                "gauge",
                "Objects in the local spool not yet stored in the object store.",
                n.to_string(),
            ),
            (
                "genesis_capture_upload_backlog_bytes",
                "gauge",
                "Bytes in the local spool not yet stored in the object store.",
                bytes.to_string(),
            ),
            (
                "genesis_capture_upload_lag_seconds",
                "gauge",
                "How long the oldest object in the spool has waited for its upload.",
                lag.to_string(),
            ),
            (
                "genesis_capture_spool_max_bytes",
                "gauge",
                "The bound of the spool's size.",
                self.max_bytes.to_string(),
            ),
            (
                "genesis_capture_uploads_total",
                "counter",
                "Objects uploaded from the spool.",
                self.uploaded.load(Ordering::Relaxed).to_string(),
            ),
            (
                "genesis_capture_upload_errors_total",
                "counter",
                "Upload tries that failed (each is retried).",
                self.upload_errors.load(Ordering::Relaxed).to_string(),
            ),
        ];
        rows.iter()
            .map(|(name, kind, help, v)| {
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n")
            })
            .collect()
    }
}

struct Waiting {
    key: String,
    size: u64,
    since: Instant,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    in_flight: HashSet<String>,
    bytes: u64,
}

impl Queue {
    /// The object id a key names (`segments/ID.zst` -> `ID`).
    fn id(key: &str) -> &str {
        let name = key.rsplit('/').next().unwrap_or(key);
        name.rsplit_once('.').map_or(name, |(id, _)| id)
    }

    /// The next key an uploader may take: a manifest only once no object of
    /// its id waits or is in flight.
    fn pick(&self) -> Option<usize> {
        let object_pending = |id: &str| {
            self.waiting
                .iter()
                .map(|w| w.key.as_str())
                .chain(self.in_flight.iter().map(String::as_str))
                .any(|k| !k.starts_with("manifests/") && Queue::id(k) == id)
        };
        self.waiting
            .iter()
            .position(|w| !w.key.starts_with("manifests/") || !object_pending(Queue::id(&w.key)))
    }
}

struct Shared {
    remote: Arc<dyn Backend>,
    local: LocalBackend,
    queue: Mutex<Queue>,
    changed: Condvar,
    stop: AtomicBool,
    stats: Arc<SpoolStats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, q: &Queue) {
        let mut b = self.stats.backlog.lock().unwrap_or_else(|p| p.into_inner());
        *b = (
            (q.waiting.len() + q.in_flight.len()) as u64,
            q.bytes,
            q.waiting.iter().map(|w| w.since).min(),
        );
    }

    /// One uploader: takes keys until stopped.
    fn upload_loop(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(w) = q.pick().and_then(|i| q.waiting.remove(i)) {
                        q.in_flight.insert(w.key.clone());
                        break w;
                    }
                    q = self
                        .changed
                        .wait_timeout(q, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            let res = self.upload(&job.key);
            let failed = res.is_err();
            let mut q = self.lock();
            q.in_flight.remove(&job.key);
            match res {
                Ok(()) => {
                    q.bytes = q.bytes.saturating_sub(job.size);
                    self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    self.stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(object = %job.key, error = %e, "upload failed; kept in the spool and retried");
                    q.waiting.push_front(job);
                }
            }
            self.publish(&q);
            self.changed.notify_all();
            drop(q);
            if failed {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn upload(&self, key: &str) -> Result<()> {
        let bytes = self.local.get(key)?;
        if let Err(e) = self.remote.put(key, &bytes) {
            // The remote copy of an attempt that never committed (its
            // manifest absent) is replaced, as `Repository::write_object`
            // does; anything else stays in the spool.
            let mkey = format!("manifests/{}.json", Queue::id(key));
            if key.starts_with("manifests/")
                || !self.remote.exists(key)?
                || self.remote.exists(&mkey)?
            {
                return Err(e);
            }
            self.remote.delete(key)?;
            self.remote.put(key, &bytes)?;
        }
        self.local.delete(key)
    }
}

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
