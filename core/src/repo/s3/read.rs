//! Reads: an object in [`RANGE_BYTES`] ranges, [`RANGES_IN_FLIGHT`] at
//! once, each retried on its own (a broken stream costs one range); many
//! small objects (the catalog's manifests) [`GETS_IN_FLIGHT`] at once.

use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::request::{bump, is_transient};
use super::{S3Backend, GETS_IN_FLIGHT, RANGES_IN_FLIGHT, RANGE_BYTES};
use crate::error::{Error, Result};
use crate::repo::backend::{Backend, ObjectBytes};

impl S3Backend {
    /// [`Backend::get`]: the first range, then the rest in parallel ranges.
    pub(super) fn read(&self, key: &str) -> Result<ObjectBytes> {
        let path = self.object_path(key)?;
        let first = self.attempt("read", key, || {
            bump(&self.counts.get);
            let opts = GetOptions {
                range: Some(GetRange::Bounded(0..RANGE_BYTES)),
                ..GetOptions::default()
            };
            async {
                let r = self.store.get_opts(&path, opts).await?;
                let size = r.meta.size;
                Ok((r.bytes().await?, size))
            }
        });
        let (first, size) = match first {
            Ok(v) => v,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(self.error("read", key, e)),
            // An empty object has no first byte to range over: read it whole.
            Err(_) => {
                let b = self.retrying("read", key, || {
                    bump(&self.counts.get);
                    async { self.store.get(&path).await?.bytes().await }
                })?;
                return Ok(ObjectBytes::Owned(b.to_vec()));
            }
        };
        if first.len() as u64 >= size {
            return Ok(ObjectBytes::Owned(first.to_vec()));
        }
        self.get_ranges(key, &path, first.to_vec(), size)
            .map(ObjectBytes::Owned)
    }

    /// [`Backend::get_many`]: whole objects, [`GETS_IN_FLIGHT`] at a time.
    pub(super) fn read_many(&self, keys: &[String]) -> Vec<Result<ObjectBytes>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GETS_IN_FLIGHT) {
            let paths: Vec<Result<ObjectPath>> =
                chunk.iter().map(|k| self.object_path(k)).collect();
            let mut done: Vec<Option<object_store::Result<_>>> =
                (0..chunk.len()).map(|_| None).collect();
            self.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for (i, p) in paths.iter().enumerate() {
                    let Ok(p) = p else { continue };
                    let (store, p) = (self.store.clone(), p.clone());
                    bump(&self.counts.get);
                    set.spawn(
                        async move { (i, async { store.get(&p).await?.bytes().await }.await) },
                    );
                }
                while let Some(joined) = set.join_next().await {
                    if let Ok((i, r)) = joined {
                        done[i] = Some(r);
                    }
                }
            });
            for ((key, path), r) in chunk.iter().zip(paths).zip(done) {
                out.push(match (path, r) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(Ok(b))) => Ok(ObjectBytes::Owned(b.to_vec())),
                    (Ok(_), Some(Err(e))) if !is_transient(&e) => Err(self.error("read", key, e)),
                    // A transient failure (or a lost task) is read again alone, with retries.
                    (Ok(_), _) => self.get(key),
                });
            }
        }
        out
    }

    /// Reads the rest of an object whose first range is `first`, in
    /// parallel ranges.
    fn get_ranges(
        &self,
        key: &str,
        path: &ObjectPath,
        first: Vec<u8>,
        size: u64,
    ) -> Result<Vec<u8>> {
        let mut out = first;
        out.reserve(usize::try_from(size).unwrap_or(0).saturating_sub(out.len()));
        let mut start = out.len() as u64;
        while start < size {
            let wave: Vec<std::ops::Range<u64>> = (0..RANGES_IN_FLIGHT as u64)
                .map(|i| start + i * RANGE_BYTES)
                .take_while(|&s| s < size)
                .map(|s| s..(s + RANGE_BYTES).min(size))
                .collect();
            let parts = self.retrying("read", key, || {
                let store = self.store.clone();
                let path = path.clone();
                let wave = wave.clone();
                for _ in &wave {
                    bump(&self.counts.get);
                }
                async move {
                    let mut set = tokio::task::JoinSet::new();
                    for (i, r) in wave.into_iter().enumerate() {
                        let store = store.clone();
                        let path = path.clone();
                        set.spawn(async move { (i, store.get_range(&path, r).await) });
                    }
                    let mut parts = Vec::new();
                    while let Some(done) = set.join_next().await {
                        let (i, r) = done?;
                        parts.push((i, r?));
                    }
                    parts.sort_by_key(|(i, _)| *i);
                    Ok(parts)
                }
            })?;
            for (_, p) in parts {
                out.extend_from_slice(&p);
            }
            let next = wave.last().map_or(size, |r| r.end);
            start = next;
        }
        if out.len() as u64 != size {
            return Err(Error::corrupt(
                key,
                format!("read {} bytes where the store says {size}", out.len()),
            ));
        }
        Ok(out)
    }
}
