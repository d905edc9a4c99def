//! Compaction beside a running capturer: a thread of its own, fed with the
//! ids of the segments each step wrote, so that a long merge never delays a
//! capture step (which would hold the application's WAL longer). Its
//! failures are logged and counted (`genesis_capture_compaction_errors_total`)
//! and never stop the capture: the level-0 objects stay complete without it.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Compactor;
use crate::capture::metrics::CaptureMetrics;
use crate::repo::{Manifest, Repository};

/// The compaction thread of a `replicate` run.
pub struct Background {
    tx: Option<Sender<Vec<String>>>,
    handle: Option<JoinHandle<()>>,
}

/// How often the compaction thread packs the manifests written since.
const PACK_EVERY: Duration = Duration::from_secs(60);
/// Manifests worth a pack of their own.
const PACK_MIN: usize = 64;

impl Background {
    /// Starts compacting `repo` with `levels`, looking for complete windows
    /// every `every`.
    pub fn spawn(
        repo: Repository,
        levels: Vec<Duration>,
        metrics: Arc<CaptureMetrics>,
        every: Duration,
    ) -> Background {
        let (tx, rx) = channel::<Vec<String>>();
        let thread_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("compaction".into())
            .spawn(move || {
                let mut compactor: Option<Compactor> = None;
                let mut pending: Vec<String> = Vec::new();
                let mut last_run = Instant::now();
                let mut last_pack = Instant::now();
                // Segments shipped since the last pack: an idle database
                // costs no request for packing.
                let mut unpacked = 0usize;
                loop {
                    match rx.recv_timeout(every) {
                        Ok(ids) => {
                            unpacked += ids.len();
                            pending.extend(ids);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    if last_run.elapsed() < every {
                        continue;
                    }
                    last_run = Instant::now();
                    if let Err(e) =
                        round(&repo, &levels, &thread_metrics, &mut compactor, &mut pending)
                    {
                        thread_metrics.compaction_error();
                        tracing::error!(
                            "compaction failed: {e}; the capture goes on, and compaction is tried again"
                        );
                    }
                    if last_pack.elapsed() >= PACK_EVERY && unpacked >= PACK_MIN {
                        last_pack = Instant::now();
                        unpacked = 0;
                        match repo.pack_manifests(PACK_MIN) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(manifests = n, "packed manifests"),
                            Err(e) => {
                                thread_metrics.compaction_error();
                                tracing::error!("packing manifests failed: {e}; tried again later");
                            }
                        }
                    }
                }
            })
            .ok();
        if handle.is_none() {
            metrics.compaction_error();
            tracing::error!("cannot start the compaction thread: the capture goes on without it");
        }
        Background {
            tx: handle.is_some().then_some(tx),
            handle,
        }
    }

    /// Tells the compactor which segments a step wrote.
    pub fn shipped(&self, ids: &[String]) {
        if let (Some(tx), false) = (&self.tx, ids.is_empty()) {
            let _ = tx.send(ids.to_vec());
        }
    }

    /// Stops the thread (after the round it may be in).
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One round: the catalog on the first, then the segments written since,
/// then every complete window.
fn round(
    repo: &Repository,
    levels: &[Duration],
    metrics: &CaptureMetrics,
    compactor: &mut Option<Compactor>,
    pending: &mut Vec<String>,
) -> crate::Result<()> {
    let c = match compactor {
        Some(c) => c,
        None => {
            let catalog = repo.catalog()?;
            pending.clear();
            compactor.insert(Compactor::new(repo.clone(), levels.to_vec(), &catalog)?)
        }
    };
    // An id leaves `pending` only once its manifest is read.
    while let Some(id) = pending.first() {
        let key = Manifest::manifest_key(id);
        let bytes = repo.backend().get(&key)?;
        c.add(Arc::new(Manifest::from_json(&key, &bytes)?));
        pending.remove(0);
    }
    let report = c.run(chrono::Utc::now())?;
    if !report.created.is_empty() {
        tracing::info!(
            objects = report.created.len(),
            inputs = report.inputs,
            bytes = report.bytes_written,
            "compacted {:?}",
            report.per_level
        );
    }
    metrics.compacted(report.created.len() as u64);
    for _ in &report.skipped {
        metrics.compaction_error();
    }
    Ok(())
}
