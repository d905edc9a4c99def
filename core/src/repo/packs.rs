//! Manifest packs: the catalog in a few objects (issue 15, Litestream #1172).
//!
//! Loading the catalog lists `manifests/` once and, without packs, reads
//! every manifest: one GET each, 86,400 a day at 1 s syncs. A pack is an
//! immutable object in the same directory, `manifests/pack_<hash>.pack`,
//! holding the exact bytes of up to [`MAX_PER_PACK`] manifests, its name the
//! BLAKE3 of its content. The catalog reads the packs and GETs only the
//! manifests no readable pack holds.
//!
//! The listing stays the truth: a pack's entry is used only for a manifest
//! the listing shows, so a pruned manifest never comes back from a pack. A
//! pack whose bytes do not match its name, or that does not decode, is not
//! used (its manifests are read one by one) and `verify-backups` reports it;
//! so does a pack whose copy of a manifest differs from the manifest.
//! Manifests are never rewritten, so a pack's copies stay right while the
//! manifests exist; a pack is deleted as soon as one of its manifests is
//! (prune calls [`Repository::prune_packs`]), and its other manifests are
//! packed again by the next [`Repository::pack_manifests`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::{Manifest, Repository};
use crate::{Error, Result};

/// The suffix of a pack's key.
pub const PACK_SUFFIX: &str = ".pack";
/// Manifests in one pack at most.
pub const MAX_PER_PACK: usize = 4096;
/// Packs with fewer manifests than this are merged into new ones.
const SMALL_PACK: usize = MAX_PER_PACK / 2;
/// The largest decoded pack accepted (4096 manifests of a few KiB).
const MAX_DECODED: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
struct PackDoc {
    format: u32,
    manifests: Vec<PackEntry>,
}

#[derive(Serialize, Deserialize)]
struct PackEntry {
    key: String,
    json: String,
}

/// Whether `key` names a pack.
pub fn is_pack_key(key: &str) -> bool {
    key.starts_with("manifests/pack_") && key.ends_with(PACK_SUFFIX)
}

fn key_for(bytes: &[u8]) -> String {
    let hex = blake3::hash(bytes).to_hex();
    format!("manifests/pack_{}{PACK_SUFFIX}", &hex[..32])
}

/// A pack's stored bytes and key for these manifests (key, exact bytes).
///
/// # Errors
/// Encoding failures.
pub fn encode(entries: &[(String, Vec<u8>)]) -> Result<(String, Vec<u8>)> {
    let doc = PackDoc {
        format: 1,
        manifests: entries
            .iter()
            .map(|(key, bytes)| PackEntry {
                key: key.clone(),
                json: String::from_utf8_lossy(bytes).into_owned(),
            })
            .collect(),
    };
    let json =
        serde_json::to_vec(&doc).map_err(|e| Error::Failed(format!("encode a pack: {e}")))?;
    let stored = zstd::encode_all(json.as_slice(), 3)
        .map_err(|e| Error::Failed(format!("compress a pack: {e}")))?;
    Ok((key_for(&stored), stored))
}

/// The manifests a pack holds (key, exact bytes), after checking that its
/// bytes are the ones its name was made from.
///
/// # Errors
/// `Error::Corrupt` naming the pack.
pub fn decode(key: &str, stored: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    if key_for(stored) != key {
        return Err(Error::corrupt(
            key,
            "the pack's bytes are not the ones its name was made from",
        ));
    }
    let mut json = Vec::new();
    zstd::Decoder::new(stored)
        .map_err(|e| Error::corrupt(key, format!("the pack does not decompress: {e}")))?
        .take(MAX_DECODED)
        .read_to_end(&mut json)
        .map_err(|e| Error::corrupt(key, format!("the pack does not decompress: {e}")))?;
    let doc: PackDoc = serde_json::from_slice(&json)
        .map_err(|e| Error::corrupt(key, format!("the pack is not a pack: {e}")))?;
    if doc.format != 1 {
        return Err(Error::corrupt(
            key,
            format!("pack format {} is not one this version reads", doc.format),
        ));
    }
    let mut out = Vec::with_capacity(doc.manifests.len());
    for e in doc.manifests {
        if !e.key.starts_with("manifests/") || !e.key.ends_with(".json") || e.key.contains("..") {
            return Err(Error::corrupt(
                key,
                format!("the pack holds {:?}, which is not a manifest's key", e.key),
            ));
        }
        out.push((e.key, e.json.into_bytes()));
    }
    Ok(out)
}

/// What the listing and the readable packs say.
pub(super) struct Listed {
    /// Every manifest listed.
    pub loose: BTreeSet<String>,
    /// Per readable pack: the manifests it holds.
    pub packs: BTreeMap<String, Vec<(String, Vec<u8>)>>,
    /// Packs that could not be read or did not check, with why.
    pub bad_packs: Vec<(String, String)>,
}

impl Repository {
    /// Lists `manifests/` once and reads every pack in it.
    ///
    /// # Errors
    /// Backend failures listing the repository.
    pub(super) fn list_manifests(&self) -> Result<Listed> {
        let keys = self.backend.list("manifests")?;
        let pack_keys: Vec<String> = keys.iter().filter(|k| is_pack_key(k)).cloned().collect();
        let loose: BTreeSet<String> = keys.into_iter().filter(|k| k.ends_with(".json")).collect();
        let mut packs = BTreeMap::new();
        let mut bad_packs = Vec::new();
        for (key, read) in pack_keys.iter().zip(self.backend.get_many(&pack_keys)) {
            match read.and_then(|b| decode(key, &b)) {
                Ok(entries) => {
                    packs.insert(key.clone(), entries);
                }
                Err(e) => {
                    tracing::warn!(pack = %key, "{e}; its manifests are read one by one");
                    bad_packs.push((key.clone(), e.to_string()));
                }
            }
        }
        Ok(Listed {
            loose,
            packs,
            bad_packs,
        })
    }

    /// Packs the manifests no pack holds yet, with those of small packs,
    /// when there are at least `min` of them; returns how many were packed.
    /// Only manifests that parse are packed. The small packs merged are
    /// deleted once the new ones are written (a crash between leaves both,
    /// which the catalog reads as one).
    ///
    /// # Errors
    /// Backend failures.
    pub fn pack_manifests(&self, min: usize) -> Result<usize> {
        let listed = self.list_manifests()?;
        let mut packed: BTreeSet<&str> = BTreeSet::new();
        let mut merged: Vec<&String> = Vec::new();
        let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (key, held) in &listed.packs {
            if held.len() < SMALL_PACK {
                merged.push(key);
                for (k, b) in held {
                    if listed.loose.contains(k) {
                        entries.insert(k.clone(), b.clone());
                    }
                }
            } else {
                packed.extend(held.iter().map(|(k, _)| k.as_str()));
            }
        }
        let unpacked: Vec<String> = listed
            .loose
            .iter()
            .filter(|k| !packed.contains(k.as_str()) && !entries.contains_key(*k))
            .cloned()
            .collect();
        if unpacked.len() < min.max(1) {
            return Ok(0);
        }
        for (key, read) in unpacked.iter().zip(self.backend.get_many(&unpacked)) {
            if let Ok(bytes) = read {
                if Manifest::from_json(key, &bytes).is_ok() {
                    entries.insert(key.clone(), bytes.to_vec());
                }
            }
        }
        let all: Vec<(String, Vec<u8>)> = entries.into_iter().collect();
        let mut written = BTreeSet::new();
        for chunk in all.chunks(MAX_PER_PACK) {
            let (key, stored) = encode(chunk)?;
            self.backend.put(&key, &stored)?;
            written.insert(key);
        }
        for key in merged {
            if !written.contains(key) {
                self.backend.delete(key)?;
            }
        }
        Ok(all.len())
    }

    /// Deletes every pack that holds a manifest the listing no longer
    /// shows (prune removed it); returns their keys.
    ///
    /// # Errors
    /// Backend failures.
    pub fn prune_packs(&self, dry_run: bool) -> Result<Vec<String>> {
        let listed = self.list_manifests()?;
        let mut gone = Vec::new();
        for (key, held) in &listed.packs {
            if held.iter().any(|(k, _)| !listed.loose.contains(k)) {
                if !dry_run {
                    self.backend.delete(key)?;
                }
                gone.push(key.clone());
            }
        }
        Ok(gone)
    }

    /// What `verify-backups` finds wrong with the packs: unreadable ones, and
    /// copies that differ from the manifest they copy (each a message).
    ///
    /// # Errors
    /// Backend failures listing the repository.
    pub fn check_packs(&self) -> Result<Vec<String>> {
        let listed = self.list_manifests()?;
        let mut found: Vec<String> = listed
            .bad_packs
            .iter()
            .map(|(k, why)| format!("{k}: {why}"))
            .collect();
        for (key, held) in &listed.packs {
            let keys: Vec<String> = held
                .iter()
                .filter(|(k, _)| listed.loose.contains(k))
                .map(|(k, _)| k.clone())
                .collect();
            let copies: BTreeMap<&str, &[u8]> = held
                .iter()
                .map(|(k, b)| (k.as_str(), b.as_slice()))
                .collect();
            for (k, read) in keys.iter().zip(self.backend.get_many(&keys)) {
                if let Ok(bytes) = read {
                    if copies.get(k.as_str()).is_some_and(|c| *c != &bytes[..]) {
                        found.push(format!(
                            "{key}: its copy of {k} differs from the manifest; delete the pack so that the manifest itself is read (`backup compact` packs it again)"
                        ));
                    }
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::repo::backend::{Backend, LocalBackend, ObjectBytes};
    use crate::repo::ObjectKind;

    /// A local directory that counts its reads.
    struct Counting {
        inner: LocalBackend,
        gets: AtomicU64,
    }

    impl Backend for Counting {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
            self.inner.put(key, bytes)
        }
        fn get(&self, key: &str) -> Result<ObjectBytes> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<String>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn exists(&self, key: &str) -> Result<bool> {
            self.inner.exists(key)
        }
        fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
            self.inner.put_state(key, bytes)
        }
        fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.inner.get_state(key)
        }
    }

    fn repo_with(n: usize) -> (tempfile::TempDir, Arc<Counting>, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(Counting {
            inner: LocalBackend::open(dir.path(), true).unwrap(),
            gets: AtomicU64::new(0),
        });
        let repo = Repository::new(backend.clone());
        for i in 0..n {
            let mut m = Manifest::for_test(&format!("seg_g_{i:06}"), ObjectKind::Segment);
            m.txid_min = i as u64 + 2;
            m.txid_max = i as u64 + 2;
            repo.write_object(&m, b"x").unwrap();
        }
        (dir, backend, repo)
    }

    fn ids(repo: &Repository) -> Vec<String> {
        let (good, bad) = repo.load_manifests().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        good.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_packed_catalog_is_the_same_catalog_in_few_reads() {
        let (_dir, backend, repo) = repo_with(300);
        let before = ids(&repo);
        let gets = backend.gets.swap(0, Ordering::SeqCst);
        assert_eq!(gets, 300);
        assert_eq!(repo.pack_manifests(64).unwrap(), 300);
        backend.gets.store(0, Ordering::SeqCst);
        assert_eq!(ids(&repo), before);
        assert_eq!(
            backend.gets.load(Ordering::SeqCst),
            1,
            "one pack, no manifest"
        );
        // Newer manifests are read on their own until packed; few are not
        // worth a pack, and a small pack is merged into the next.
        let mut m = Manifest::for_test("seg_g_999999", ObjectKind::Segment);
        m.txid_min = 5000;
        m.txid_max = 5000;
        repo.write_object(&m, b"x").unwrap();
        assert_eq!(repo.pack_manifests(64).unwrap(), 0);
        backend.gets.store(0, Ordering::SeqCst);
        assert_eq!(ids(&repo).len(), 301);
        assert_eq!(backend.gets.load(Ordering::SeqCst), 2);
        assert_eq!(
            repo.pack_manifests(1).unwrap(),
            301,
            "the small pack merged"
        );
        let packs: Vec<String> = repo
            .backend
            .list("manifests")
            .unwrap()
            .into_iter()
            .filter(|k| is_pack_key(k))
            .collect();
        assert_eq!(packs.len(), 1, "{packs:?}");
        assert!(repo.check_packs().unwrap().is_empty());
    }

    #[test]
    fn a_pruned_manifest_never_comes_back_from_a_pack() {
        let (_dir, _backend, repo) = repo_with(10);
        repo.pack_manifests(1).unwrap();
        let m = Manifest::for_test("seg_g_000003", ObjectKind::Segment);
        repo.delete_object(&m).unwrap();
        let left = ids(&repo);
        assert_eq!(left.len(), 9);
        assert!(!left.contains(&m.id));
        // Prune then removes the pack; the others are read one by one.
        assert_eq!(repo.prune_packs(false).unwrap().len(), 1);
        assert_eq!(ids(&repo), left);
    }

    #[test]
    fn a_damaged_or_forged_pack_is_not_used_and_verify_names_it() {
        let (dir, backend, repo) = repo_with(20);
        repo.pack_manifests(1).unwrap();
        let before = ids(&repo);
        let pack = repo
            .backend
            .list("manifests")
            .unwrap()
            .into_iter()
            .find(|k| is_pack_key(k))
            .unwrap();
        // A flipped byte: its name no longer matches; the manifests are read one by one.
        let path = dir.path().join(&pack);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        backend.gets.store(0, Ordering::SeqCst);
        assert_eq!(ids(&repo), before);
        assert_eq!(backend.gets.load(Ordering::SeqCst), 21);
        let found = repo.check_packs().unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("not the ones its name was made from"),
            "{found:?}"
        );
        std::fs::remove_file(&path).unwrap();
        // A well-formed pack whose copy differs from the manifest: verify says so.
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for key in repo.backend.list("manifests").unwrap() {
            let mut b = repo.backend.get(&key).unwrap().to_vec();
            if entries.is_empty() {
                b = String::from_utf8(b)
                    .unwrap()
                    .replace("\"txid_max\": 2", "\"txid_max\": 3")
                    .into_bytes();
            }
            entries.push((key, b));
        }
        let (key, stored) = encode(&entries).unwrap();
        repo.backend.put(&key, &stored).unwrap();
        let found = repo.check_packs().unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("differs from the manifest"), "{found:?}");
        // A pack naming a key outside the manifests is refused whole.
        let (key, stored) = encode(&[("manifests/../x.json".into(), b"{}".to_vec())]).unwrap();
        assert!(decode(&key, &stored).is_err());
    }
}
