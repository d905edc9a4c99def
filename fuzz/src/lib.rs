//! Helpers shared by the fuzz targets: an in-memory repository backend (so a
//! target can hand bytes to code that reads a [`Repository`] without touching
//! the disk) and the input layouts of the targets that take more than one
//! piece of outside data.
//!
//! # Input layouts
//!
//! - `manifest`: one or more manifest JSON documents separated by a line
//!   `---` ([`split_documents`]).
//! - `object`: [`ObjectInput`]: a little header describing the manifest's
//!   kind, frames and raw size, then the stored (compressed) bytes.
//! - `wal`: a 24-byte capture position ([`WalInput`]), a `u32` frame limit,
//!   then the `-wal` file's bytes.
//! - `pipeline`: `--set` overrides (`key=value` lines), a NUL byte, then the
//!   TOML text; without a NUL byte the whole input is the TOML text.
//! - `capture_state`: `state/capture.json`, a NUL byte, then
//!   `state/pages.bin` ([`split_at_nul`]).
//! - `segment`, `events`, `exchange`: the bytes as they are.
//!
//! `examples/fuzz_seeds.rs` in the main workspace writes seeds in these
//! layouts from a real captured repository.

use std::collections::BTreeMap;
use std::sync::Mutex;

use genesis_core::repo::{Backend, ObjectBytes, WalPosition};
use genesis_core::{Error, Result};

/// A repository backend held in memory.
#[derive(Debug, Default)]
pub struct MemBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    state: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemBackend {
    /// A backend holding `objects` (key → bytes) and no state files.
    pub fn with_objects(objects: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        MemBackend {
            objects: Mutex::new(objects.into_iter().collect()),
            state: Mutex::default(),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Backend for MemBackend {
    fn describe(&self) -> String {
        "in-memory repository".to_string()
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut objects = Self::lock(&self.objects);
        match objects.get(key) {
            Some(old) if old != bytes => {
                Err(Error::Failed(format!("{key} exists with other content")))
            }
            _ => {
                objects.insert(key.to_string(), bytes.to_vec());
                Ok(())
            }
        }
    }
    fn get(&self, key: &str) -> Result<ObjectBytes> {
        Self::lock(&self.objects)
            .get(key)
            .map(|b| ObjectBytes::Owned(b.clone()))
            .ok_or_else(|| Error::corrupt(key, "missing from the in-memory repository"))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = format!("{prefix}/");
        Ok(Self::lock(&self.objects)
            .keys()
            .filter(|k| k.starts_with(&dir))
            .cloned()
            .collect())
    }
    fn delete(&self, key: &str) -> Result<()> {
        Self::lock(&self.objects).remove(key);
        Ok(())
    }
    fn exists(&self, key: &str) -> Result<bool> {
        Ok(Self::lock(&self.objects).contains_key(key))
    }
    fn put_state(&self, key: &str, bytes: &[u8]) -> Result<()> {
        Self::lock(&self.state).insert(key.to_string(), bytes.to_vec());
        Ok(())
    }
    fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(Self::lock(&self.state).get(key).cloned())
    }
}

/// Splits `data` into the documents between lines that are exactly `---`.
pub fn split_documents(data: &[u8]) -> Vec<&[u8]> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut line_start = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            if &data[line_start..i] == b"---" {
                docs.push(&data[start..line_start]);
                start = i + 1;
            }
            line_start = i + 1;
        }
    }
    if &data[line_start..] == b"---" {
        docs.push(&data[start..line_start]);
    } else {
        docs.push(&data[start..]);
    }
    docs
}

/// Joins documents in the layout [`split_documents`] reads.
pub fn join_documents(docs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"---\n");
        }
        out.extend_from_slice(d);
        if !d.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

/// The part before the first NUL byte and the part after it (`None` without one).
pub fn split_at_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// A little-endian cursor over fuzz input that yields zeros past the end.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let n = N.min(self.data.len());
        a[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// The `wal` target's input: where a previous capture stood, a frame limit
/// for `read_wal_upto`, and the WAL file.
pub struct WalInput<'a> {
    pub from: WalPosition,
    pub upto: u32,
    pub wal: &'a [u8],
}

impl<'a> WalInput<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let mut c = Cursor::new(data);
        let from = WalPosition {
            salt1: c.u32(),
            salt2: c.u32(),
            checkpoint_seq: c.u32(),
            frame: c.u32(),
            cksum1: c.u32(),
            cksum2: c.u32(),
        };
        let upto = c.u32();
        WalInput {
            from,
            upto,
            wal: c.rest(),
        }
    }
}

/// One snapshot frame as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInput {
    pub raw_offset: u64,
    pub raw_len: u64,
    pub comp_offset: u64,
    pub comp_len: u64,
}

/// The `object` target's input: the manifest fields that drive reading an
/// object back (kind, frames, raw size), then the stored bytes.
pub struct ObjectInput<'a> {
    /// 0 snapshot, 1 segment, anything else events.
    pub kind: u8,
    pub raw_size: u64,
    pub frames: Vec<FrameInput>,
    pub stored: &'a [u8],
}

impl<'a> ObjectInput<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let mut c = Cursor::new(data);
        let kind = c.u8();
        let raw_size = c.u64();
        let n = usize::from(c.u16() % 64);
        let frames = (0..n)
            .map(|_| FrameInput {
                raw_offset: c.u64(),
                raw_len: c.u64(),
                comp_offset: c.u64(),
                comp_len: c.u64(),
            })
            .collect();
        ObjectInput {
            kind,
            raw_size,
            frames,
            stored: c.rest(),
        }
    }
}

/// Numbers at the edges of the types the decoders read them into.
const EDGE_NUMBERS: &[i128] = &[
    0,
    1,
    -1,
    2,
    511,
    512,
    65536,
    65537,
    u32::MAX as i128,
    1 << 32,
    1 << 53,
    i64::MAX as i128 - 1,
    i64::MAX as i128,
    i64::MIN as i128,
    u64::MAX as i128 - 1,
    u64::MAX as i128,
];

fn edge_number(seed: u32) -> serde_json::Value {
    let v = EDGE_NUMBERS[(seed >> 2) as usize % EDGE_NUMBERS.len()];
    match (u64::try_from(v), i64::try_from(v)) {
        (Ok(u), _) => serde_json::Value::from(u),
        (_, Ok(i)) => serde_json::Value::from(i),
        _ => serde_json::Value::Null,
    }
}

/// Replaces the `k`-th number or null (depth first) of `v` with `new`.
fn replace_nth_number(v: &mut serde_json::Value, k: &mut usize, new: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(_) | Value::Null => {
            if *k == 0 {
                *v = new.clone();
                return true;
            }
            *k -= 1;
            false
        }
        Value::Array(items) => items.iter_mut().any(|i| replace_nth_number(i, k, new)),
        Value::Object(map) => map.values_mut().any(|i| replace_nth_number(i, k, new)),
        _ => false,
    }
}

fn count_numbers(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Number(_) | Value::Null => 1,
        Value::Array(items) => items.iter().map(count_numbers).sum(),
        Value::Object(map) => map.values().map(count_numbers).sum(),
        _ => 0,
    }
}

/// A JSON-aware mutation for libFuzzer's custom mutator: one number (or
/// null) of one JSON document in `data[..size]` set to an edge value, where
/// the documents are those of [`split_documents`] before the first NUL byte
/// (the layouts of the `manifest`, `exchange` and `capture_state` targets).
/// Byte mutations rarely turn `7` into `18446744073709551615`; this does.
/// Returns the new size, or `None` when nothing was mutated (no JSON, or too
/// large for `max_size`).
pub fn mutate_json_number(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
) -> Option<usize> {
    let input = data.get(..size)?;
    let (json, tail) = split_at_nul(input);
    let mut docs: Vec<Vec<u8>> = split_documents(json).iter().map(|d| d.to_vec()).collect();
    let which = (seed >> 8) as usize % docs.len().max(1);
    let doc = docs.get_mut(which)?;
    let mut value: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let n = count_numbers(&value);
    if n == 0 {
        return None;
    }
    let mut k = (seed >> 16) as usize % n;
    if !replace_nth_number(&mut value, &mut k, &edge_number(seed)) {
        return None;
    }
    *doc = serde_json::to_vec_pretty(&value).ok()?;
    let mut out = if docs.len() == 1 {
        docs.remove(0)
    } else {
        join_documents(&docs)
    };
    if let Some(tail) = tail {
        out.push(0);
        out.extend_from_slice(tail);
    }
    if out.len() > max_size || out.len() > data.len() {
        return None;
    }
    data[..out.len()].copy_from_slice(&out);
    Some(out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip() {
        let docs = vec![b"{\"a\":1}\n".to_vec(), b"{}".to_vec()];
        let joined = join_documents(&docs);
        assert_eq!(split_documents(&joined), vec![&b"{\"a\":1}\n"[..], b"{}\n"]);
    }

    #[test]
    fn a_json_number_is_set_to_an_edge() {
        let mut data = b"{\"a\": 7}\0tail".to_vec();
        let size = data.len();
        data.resize(4096, 0);
        // The 16th edge (u64::MAX), document 0, number 0.
        let n = mutate_json_number(&mut data, size, 4096, 15 << 2).expect("mutated");
        let (json, tail) = split_at_nul(&data[..n]);
        let v: serde_json::Value = serde_json::from_slice(json).expect("json");
        assert_eq!(v["a"], serde_json::Value::from(u64::MAX));
        assert_eq!(tail, Some(&b"tail"[..]));
    }
}
