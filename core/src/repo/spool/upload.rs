//! The upload queue and its threads: oldest first, a manifest only once
//! its object is stored, each failure kept in the queue and retried with
//! backoff, each local copy removed once stored.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::stats::SpoolStats;
use crate::error::Result;
use crate::repo::backend::{Backend, LocalBackend};

/// The longest wait between two tries of one upload.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct Waiting {
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) since: Instant,
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) waiting: VecDeque<Waiting>,
    pub(super) in_flight: HashSet<String>,
    pub(super) bytes: u64,
}

impl Queue {
    /// The object id a key names (`segments/ID.zst` -> `ID`).
    pub(super) fn id(key: &str) -> &str {
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

pub(super) struct Shared {
    pub(super) remote: Arc<dyn Backend>,
    pub(super) local: LocalBackend,
    pub(super) queue: Mutex<Queue>,
    pub(super) changed: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) stats: Arc<SpoolStats>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn publish(&self, q: &Queue) {
        let mut b = self.stats.backlog.lock().unwrap_or_else(|p| p.into_inner());
        *b = (
            (q.waiting.len() + q.in_flight.len()) as u64,
            q.bytes,
            q.waiting.iter().map(|w| w.since).min(),
        );
    }

    /// One uploader: takes keys until stopped.
    pub(super) fn upload_loop(&self) {
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
