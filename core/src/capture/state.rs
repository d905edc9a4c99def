//! The capturer's saved state: what a later run needs to resume the same
//! generation (its position in the WAL, the last txid, the per-page hashes).
//! Saved at clean exits and after `backup sync`; a run that finds it stale or
//! unprovable starts a new generation instead.

use serde::{Deserialize, Serialize};

use crate::checksum::PageHashes;
use crate::error::{Error, Result};
use crate::repo::{Repository, WalPosition};

const STATE_KEY: &str = "state/capture.json";
const PAGES_KEY: &str = "state/pages.bin";

/// The saved capture state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedState {
    pub generation: String,
    pub page_size: u32,
    pub last_txid: u64,
    pub wal: WalPosition,
    pub last_seq: i64,
    /// Rowid of the last event row read (0 in states saved before it existed:
    /// the archive then re-reads from the start and skips what it has).
    #[serde(default)]
    pub last_event_rowid: i64,
    pub identity: (u64, u64),
    #[serde(skip)]
    pub hashes: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    #[serde(flatten)]
    state: SavedState,
    pages: u64,
    pages_blake3: String,
}

impl SavedState {
    /// The page hash table.
    pub fn hashes(&self) -> PageHashes {
        PageHashes::from_hashes(self.page_size as usize, self.hashes.clone())
    }

    /// The checksum of the saved state.
    pub fn checksum(&self) -> u64 {
        self.hashes.iter().fold(0, |a, h| a ^ h)
    }

    /// Writes the state (page table first, then the JSON that names its hash).
    ///
    /// # Errors
    /// Repository failures.
    pub fn save(&self, repo: &Repository) -> Result<()> {
        let mut bin = Vec::with_capacity(self.hashes.len() * 8);
        for h in &self.hashes {
            bin.extend_from_slice(&h.to_le_bytes());
        }
        let disk = OnDisk {
            state: self.clone(),
            pages: self.hashes.len() as u64,
            pages_blake3: blake3::hash(&bin).to_hex().to_string(),
        };
        repo.backend().put_state(PAGES_KEY, &bin)?;
        let json = serde_json::to_vec_pretty(&disk)
            .map_err(|e| Error::Failed(format!("encode capture state: {e}")))?;
        repo.backend().put_state(STATE_KEY, &json)
    }

    /// Loads the state; `None` when absent or unreadable (a new generation follows).
    ///
    /// # Errors
    /// Repository I/O failures.
    pub fn load(repo: &Repository) -> Result<Option<SavedState>> {
        let json = match repo.backend().get_state(STATE_KEY)? {
            Some(j) => j,
            None => return Ok(None),
        };
        let disk: OnDisk = match serde_json::from_slice(&json) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("ignoring unreadable capture state: {e}");
                return Ok(None);
            }
        };
        let bin = repo.backend().get_state(PAGES_KEY)?.unwrap_or_default();
        if blake3::hash(&bin).to_hex().as_str() != disk.pages_blake3
            || disk.pages.checked_mul(8) != Some(bin.len() as u64)
        {
            tracing::warn!("ignoring capture state whose page table does not match its checksum");
            return Ok(None);
        }
        let mut state = disk.state;
        state.hashes = bin
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(Some(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `capture_state` fuzz target: a state file whose `pages`
    /// count times 8 overflows u64 panicked (debug) instead of being ignored.
    #[test]
    fn a_page_count_that_overflows_is_an_unreadable_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::open_local(dir.path(), true).expect("repo");
        let state = SavedState {
            generation: "g1".to_string(),
            page_size: 512,
            last_txid: 7,
            wal: WalPosition::default(),
            last_seq: 3,
            last_event_rowid: 3,
            identity: (1, 2),
            hashes: vec![1, 2, 3],
        };
        state.save(&repo).expect("save");
        assert!(SavedState::load(&repo).expect("load").is_some());
        let json = repo
            .backend()
            .get_state(STATE_KEY)
            .expect("read")
            .expect("state");
        let mut v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        v["pages"] = serde_json::Value::from(u64::MAX - 1);
        let json = serde_json::to_vec(&v).expect("json");
        repo.backend().put_state(STATE_KEY, &json).expect("write");
        assert!(SavedState::load(&repo).expect("load").is_none());
    }
}
