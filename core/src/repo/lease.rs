//! The capturer's lease on an object-store prefix: one create-only object,
//! `lease/capturer.json`, naming the host and the database that capture
//! into the prefix. A second capturer from another host or of another
//! database is refused (two chains written into one prefix would each
//! believe they own its txids); the same host and database taking it again
//! (a restart, a crash) writes the same bytes, which a create-only put
//! accepts. On a local directory the capture lock beside the database does
//! this job.
//!
//! `replicate` releases it when it stops cleanly (a signal or the end of
//! its run, with its spool drained), so that another host can take over;
//! a capturer that crashed keeps it (its spool may hold objects its next
//! run uploads): moving capture to another host then means deleting the
//! object once the old capturer is stopped for good.

use crate::error::{Error, Result};
use crate::repo::Backend;

/// The lease's key.
pub const LEASE_KEY: &str = "lease/capturer.json";

/// Who holds a lease.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub host: String,
    pub database: String,
}

impl Lease {
    /// The lease of this host's capturer of `db`.
    pub fn for_database(db: &std::path::Path) -> Lease {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        let database = db
            .canonicalize()
            .unwrap_or_else(|_| db.to_path_buf())
            .display()
            .to_string();
        Lease { host, database }
    }
}

/// Takes (or confirms) the lease of `backend` for `lease`.
///
/// # Errors
/// `Error::Locked` naming the holder when another host or database holds
/// it; backend failures.
pub fn acquire(backend: &dyn Backend, lease: &Lease) -> Result<()> {
    let bytes =
        serde_json::to_vec(lease).map_err(|e| Error::Failed(format!("encode the lease: {e}")))?;
    match backend.put(LEASE_KEY, &bytes) {
        Ok(()) => Ok(()),
        Err(put_err) => {
            let Some(held) = backend.get_state(LEASE_KEY)? else {
                return Err(put_err);
            };
            let holder = serde_json::from_slice::<Lease>(&held)
                .map(|h| format!("the capturer of {} on host {}", h.database, h.host))
                .unwrap_or_else(|_| "an unreadable lease".into());
            if serde_json::from_slice::<Lease>(&held).is_ok_and(|h| &h == lease) {
                return Err(put_err);
            }
            Err(Error::Locked(format!(
                "{} is leased to {holder}: a second capturer would write a second chain into it. \
                 Capture into another prefix, or, once that capturer is stopped for good, delete \
                 the object {LEASE_KEY} of the prefix",
                backend.describe()
            )))
        }
    }
}

/// Releases the lease when `lease` holds it (deletes the object); a lease
/// held by another capturer, or none, is left as it is.
///
/// # Errors
/// Backend failures.
pub fn release(backend: &dyn Backend, lease: &Lease) -> Result<()> {
    let Some(held) = backend.get_state(LEASE_KEY)? else {
        return Ok(());
    };
    if serde_json::from_slice::<Lease>(&held).is_ok_and(|h| &h == lease) {
        backend.delete(LEASE_KEY)?;
        tracing::info!("released the capturer's lease on {}", backend.describe());
    }
    Ok(())
}
