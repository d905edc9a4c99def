//! Read leases: a restore names the objects it is about to read in a small
//! state file (`leases/<id>.json`) before it reads them, and removes it when
//! it has them; `backup prune` reads the leases right before it deletes and
//! keeps every object a live lease names (Litestream #1270: retention
//! deleted files that a restore in progress still needed).
//!
//! A lease older than [`LEASE_TTL`] is stale (its restore crashed) and is
//! ignored. A restore whose object was deleted anyway (a prune that read the
//! leases just before the lease was written) finds it missing when it reads,
//! and plans again around it: never a silently wrong restore.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::repo::Repository;

/// How long a lease protects its objects.
pub const LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct LeaseFile {
    taken_at: DateTime<Utc>,
    pid: u32,
    objects: Vec<String>,
}

/// A held lease; dropped, it is removed.
pub struct ReadLease {
    repo: Repository,
    key: String,
}

impl ReadLease {
    /// Takes a lease on `objects` (ids).
    ///
    /// # Errors
    /// Backend failures writing the lease.
    pub fn take(repo: &Repository, objects: &[String]) -> Result<ReadLease> {
        let key = format!(
            "leases/restore-{}-{}.json",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let lease = ReadLease {
            repo: repo.clone(),
            key,
        };
        lease.update(objects)?;
        Ok(lease)
    }

    /// Replaces the objects the lease names (a plan made again).
    ///
    /// # Errors
    /// Backend failures writing the lease.
    pub fn update(&self, objects: &[String]) -> Result<()> {
        let body = LeaseFile {
            taken_at: Utc::now(),
            pid: std::process::id(),
            objects: objects.to_vec(),
        };
        let json = serde_json::to_vec(&body)
            .map_err(|e| crate::Error::Failed(format!("encode lease: {e}")))?;
        self.repo.backend().put_state(&self.key, &json)
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        if let Err(e) = self.repo.backend().delete(&self.key) {
            tracing::warn!("cannot remove the read lease {}: {e}", self.key);
        }
    }
}

/// Every object id a live lease names (an unreadable lease names nothing it
/// could protect: it is logged and skipped).
///
/// # Errors
/// Backend failures listing or reading the leases.
pub fn leased_objects(repo: &Repository) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for key in repo.backend().list("leases")? {
        let Some(bytes) = repo.backend().get_state(&key)? else {
            continue;
        };
        match serde_json::from_slice::<LeaseFile>(&bytes) {
            Ok(l) => {
                let age = Utc::now() - l.taken_at;
                if age.to_std().is_ok_and(|a| a > LEASE_TTL) {
                    continue;
                }
                out.extend(l.objects);
            }
            Err(e) => tracing::warn!("unreadable read lease {key}: {e}"),
        }
    }
    Ok(out)
}
