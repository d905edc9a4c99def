//! The spool's figures: backlog, uploads and failures, rendered as
//! Prometheus rows beside the capture metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What the spool reports (Prometheus rows in the capture metrics).
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub max_bytes: u64,
    pub uploaded: AtomicU64,
    pub upload_errors: AtomicU64,
    pub(super) backlog: Mutex<(u64, u64, Option<Instant>)>,
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
