//! Requests: counted by kind, retried on transport failures with backoff,
//! and their errors mapped to ours (a transport failure is an I/O error of
//! kind `NotConnected`, which the capture loop waits out as an outage).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{S3Backend, TRIES};
use crate::error::Error;
use crate::repo::backend::Backend;

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

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

/// Failures worth another try: the transport and the server, not answers
/// about the object or the request.
pub(super) fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    matches!(e, E::Generic { .. } | E::JoinError { .. })
}

impl S3Backend {
    /// Runs `op` until it succeeds, fails for good, or [`TRIES`] transient
    /// failures have passed; the client's own error, for the caller to map.
    pub(super) fn attempt<T, F, Fut>(
        &self,
        action: &'static str,
        key: &str,
        op: F,
    ) -> object_store::Result<T>
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
    pub(super) fn retrying<T, F, Fut>(
        &self,
        action: &'static str,
        key: &str,
        op: F,
    ) -> crate::error::Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        self.attempt(action, key, op)
            .map_err(|e| self.error(action, key, e))
    }

    pub(super) fn error(&self, action: &'static str, key: &str, e: object_store::Error) -> Error {
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
}
