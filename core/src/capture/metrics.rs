//! What the capturer reports to monitoring: counters and gauges in the spirit
//! of Litestream's `litestream_*` metrics, updated by the capturer and the
//! `replicate` loop, rendered in the Prometheus text format and served over
//! HTTP by `replicate --metrics-addr`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// The capturer's metrics. Every field is safe to read from another thread.
#[derive(Debug, Default)]
pub struct CaptureMetrics {
    txid: AtomicU64,
    /// Unix time (ms) of the last shipped commit, as observed.
    last_commit_ms: AtomicI64,
    /// Unix time (ms) of the last step that succeeded.
    last_ok_step_ms: AtomicI64,
    wal_bytes: AtomicU64,
    steps: AtomicU64,
    step_errors: AtomicU64,
    consecutive_failures: AtomicU64,
    generations: AtomicU64,
    bytes_shipped: AtomicU64,
    check_failures: AtomicU64,
    archive_errors: AtomicU64,
    repository_lost: AtomicU64,
    events_archived: AtomicU64,
    early_steps: AtomicU64,
    stood_aside: AtomicU64,
    stood_aside_micros: AtomicU64,
    compacted: AtomicU64,
    compaction_errors: AtomicU64,
    /// The upload spool of a remote repository (its backlog and lag).
    spool: std::sync::OnceLock<Arc<crate::repo::spool::SpoolStats>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl CaptureMetrics {
    /// A new, shared set of metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(CaptureMetrics::default())
    }

    pub(crate) fn shipped(&self, bytes: u64) {
        self.bytes_shipped.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn committed(&self, txid: u64, at: chrono::DateTime<chrono::Utc>) {
        self.txid.store(txid, Ordering::Relaxed);
        self.last_commit_ms
            .store(at.timestamp_millis(), Ordering::Relaxed);
    }

    pub(crate) fn generation_started(&self) {
        self.generations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn check_failed(&self) {
        self.check_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn archive_error(&self) {
        self.archive_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn repository_lost(&self) {
        self.repository_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn archived(&self, events: u64) {
        self.events_archived.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn compacted(&self, objects: u64) {
        self.compacted.fetch_add(objects, Ordering::Relaxed);
    }

    pub(crate) fn compaction_error(&self) {
        self.compaction_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn wal_size(&self, bytes: u64) {
        self.wal_bytes.store(bytes, Ordering::Relaxed);
    }

    /// A step that succeeded.
    pub fn step_ok(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.last_ok_step_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A step that failed (it is retried).
    pub fn step_failed(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_errors.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A step taken before its interval because a checkpointer waited.
    pub fn early_step(&self) {
        self.early_steps.fetch_add(1, Ordering::Relaxed);
    }

    /// The capturer held no read for `how_long` to let a checkpointer of
    /// another process restart the WAL.
    pub fn stood_aside(&self, how_long: std::time::Duration) {
        self.stood_aside.fetch_add(1, Ordering::Relaxed);
        self.stood_aside_micros.fetch_add(
            u64::try_from(how_long.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Reports the upload spool's backlog and lag with these metrics.
    pub fn attach_spool(&self, stats: Arc<crate::repo::spool::SpoolStats>) {
        let _ = self.spool.set(stats);
    }

    /// Consecutive failed steps.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |ms: i64| ms as f64 / 1000.0;
        let now = now_ms();
        let last_ok = self.last_ok_step_ms.load(Ordering::Relaxed);
        let lag = if last_ok == 0 {
            0.0
        } else {
            secs(now - last_ok)
        };
        let rows: [(&str, &str, &str, String); 19] = [
            ("genesis_capture_txid", "gauge", "Last txid shipped to the repository.", g(&self.txid).to_string()),
            ("genesis_capture_last_commit_timestamp_seconds", "gauge", "Unix time of the last shipped commit, as observed by the capturer.", secs(self.last_commit_ms.load(Ordering::Relaxed)).to_string()),
            ("genesis_capture_lag_seconds", "gauge", "Seconds since the last capture step that succeeded: how far behind the database the repository may be.", lag.to_string()),
            ("genesis_capture_wal_bytes", "gauge", "Size of the database's -wal file at the last step.", g(&self.wal_bytes).to_string()),
            ("genesis_capture_steps_total", "counter", "Capture steps run.", g(&self.steps).to_string()),
            ("genesis_capture_step_errors_total", "counter", "Capture steps that failed (each is retried).", g(&self.step_errors).to_string()),
            ("genesis_capture_consecutive_failures", "gauge", "Failed steps since the last one that succeeded.", g(&self.consecutive_failures).to_string()),
            ("genesis_capture_generations_total", "counter", "Generations started (each begins with a snapshot).", g(&self.generations).to_string()),
            ("genesis_capture_bytes_shipped_total", "counter", "Compressed bytes written to the repository (snapshots and segments).", g(&self.bytes_shipped).to_string()),
            ("genesis_capture_check_failures_total", "counter", "Checks of the captured chain against the database that failed.", g(&self.check_failures).to_string()),
            ("genesis_capture_archive_errors_total", "counter", "Archived events found deleted or rewritten in the live table.", g(&self.archive_errors).to_string()),
            ("genesis_capture_repository_lost_total", "counter", "Times the repository lost the generation's snapshot under the capturer.", g(&self.repository_lost).to_string()),
            ("genesis_capture_events_archived_total", "counter", "Event rows archived.", g(&self.events_archived).to_string()),
            ("genesis_capture_early_steps_total", "counter", "Steps taken early to let a waiting checkpointer through.", g(&self.early_steps).to_string()),
            ("genesis_capture_stood_aside_total", "counter", "Times the capturer held no read transaction while another process checkpointed.", g(&self.stood_aside).to_string()),
            ("genesis_capture_stood_aside_seconds_total", "counter", "Time the capturer held no read transaction while another process checkpointed.", (g(&self.stood_aside_micros) as f64 / 1e6).to_string()),
            ("genesis_capture_compacted_objects_total", "counter", "Compacted objects written (levels 1 and up).", g(&self.compacted).to_string()),
            ("genesis_capture_compaction_errors_total", "counter", "Compaction runs that failed or skipped a window (each logged).", g(&self.compaction_errors).to_string()),
            ("genesis_capture_up", "gauge", "1 while the capturer runs.", "1".to_string()),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        if let Some(spool) = self.spool.get() {
            out.push_str(&spool.render());
        }
        out
    }
}

/// Binds the metrics address (before anything else starts, so that a bad
/// address fails the command at once).
///
/// # Errors
/// `Error::Usage` when the address cannot be bound.
pub fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        Error::Usage(format!(
            "cannot serve metrics on {addr}: {e}; pass --metrics-addr HOST:PORT with a free port"
        ))
    })
}

/// Serves `metrics` at `http://ADDR/metrics` from `listener` on a background
/// thread for the life of the process. Returns the address served.
///
/// # Errors
/// `Error::Failed` when the thread cannot start.
pub fn start(listener: TcpListener, metrics: Arc<CaptureMetrics>) -> Result<SocketAddr> {
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Failed(format!("the metrics listener has no address: {e}")))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &metrics) {
                    tracing::debug!("metrics request: {e}");
                }
            }
        })
        .map_err(|e| Error::Failed(format!("start the metrics server: {e}")))?;
    Ok(bound)
}

/// [`bind`] and [`start`] together.
///
/// # Errors
/// As theirs.
pub fn serve(addr: &str, metrics: Arc<CaptureMetrics>) -> Result<SocketAddr> {
    start(bind(addr)?, metrics)
}

fn answer(stream: TcpStream, metrics: &CaptureMetrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Drain the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body, kind) = if path == "/metrics" || path.starts_with("/metrics?") {
        ("200 OK", metrics.render(), "text/plain; version=0.0.4")
    } else {
        ("404 Not Found", "see /metrics\n".to_string(), "text/plain")
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn metrics_are_served_in_the_prometheus_text_format() {
        let m = CaptureMetrics::new();
        m.committed(42, chrono::Utc::now());
        m.step_failed();
        m.step_failed();
        let addr = serve("127.0.0.1:0", m.clone()).expect("serve");
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("\ngenesis_capture_txid 42\n"), "{body}");
        assert!(body.contains("\ngenesis_capture_consecutive_failures 2\n"));
        assert!(body.contains("\ngenesis_capture_step_errors_total 2\n"));
        assert!(body.contains("# TYPE genesis_capture_steps_total counter"));
        m.step_ok();
        assert!(m
            .render()
            .contains("\ngenesis_capture_consecutive_failures 0\n"));
    }
}
