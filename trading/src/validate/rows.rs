//! The fold's storage for one table, sized by the state and costing no
//! allocation per event: each row gets an id (its index) when first inserted;
//! its key is appended to one string, its cells to one vector (`width` per
//! row), and a hash table maps the key's hash to the id. Looking a key up costs
//! one probe of a table of 16-byte entries and one comparison with the stored
//! key; updating a row overwrites its cells in place. Text of up to
//! [`INLINE`] bytes (ids, statuses, timestamps) is stored inside its cell.

use hashbrown::HashTable;

use crate::replay::FxSet;

/// Text bytes kept inside a [`Cell`].
pub(super) const INLINE: usize = 30;

/// One stored value, as SQLite stores it in a column.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    /// Text of at most [`INLINE`] bytes: its length and bytes (UTF-8).
    Short(u8, [u8; INLINE]),
    Long(Box<str>),
    Blob(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Cell>() == 32);

impl Cell {
    /// A text cell.
    pub(super) fn text(t: &str) -> Cell {
        match u8::try_from(t.len()) {
            Ok(n) if t.len() <= INLINE => {
                let mut b = [0; INLINE];
                b[..t.len()].copy_from_slice(t.as_bytes());
                Cell::Short(n, b)
            }
            _ => Cell::Long(t.into()),
        }
    }

    /// The text of a text cell.
    pub(super) fn as_text(&self) -> Option<&str> {
        match self {
            // Copied from a `str` whole: valid UTF-8 up to `n`.
            Cell::Short(n, b) => std::str::from_utf8(&b[..usize::from(*n)]).ok(),
            Cell::Long(t) => Some(t),
            _ => None,
        }
    }
}

impl From<rusqlite::types::Value> for Cell {
    fn from(v: rusqlite::types::Value) -> Cell {
        use rusqlite::types::Value;
        match v {
            Value::Null => Cell::Null,
            Value::Integer(i) => Cell::Int(i),
            Value::Real(f) => Cell::Real(f),
            Value::Text(t) => Cell::text(&t),
            Value::Blob(b) => Cell::Blob(b.into()),
        }
    }
}

/// The hash of a key in the tables of [`Rows`].
pub(super) fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    // The fold's fast hasher (an empty set allocates nothing).
    let x = FxSet::<u8>::default().hasher().hash_one(key);
    // The table picks buckets by the low bits, which a multiplicative hash
    // mixes least: fold the high half into them.
    x ^ (x >> 32)
}

/// A table's keys, key ends, cells and per-row metadata ([`Rows::parts`]).
pub(super) type Parts<'r> = (&'r str, &'r [usize], &'r [Box<[Cell]>], &'r mut [Meta]);

/// Rows per chunk of cells.
const CHUNK: usize = 1024;

/// Per row: whether it exists, and its rendering for the hash once
/// rendered.
#[derive(Debug, Default)]
pub(super) struct Meta {
    pub(super) live: bool,
    pub(super) line: Option<Box<str>>,
}

/// One folded table.
pub(super) struct Rows {
    width: usize,
    /// (hash of the key, row id).
    index: HashTable<(u64, u32)>,
    keys: String,
    /// Row `i`'s key is `keys[key_ends[i - 1]..key_ends[i]]`.
    key_ends: Vec<usize>,
    /// Row `i`'s cells: `width` of them in chunk `i / CHUNK`; chunks of a
    /// fixed size, so that growing never copies the table nor holds it twice.
    cells: Vec<Box<[Cell]>>,
    pub(super) meta: Vec<Meta>,
    /// The live ids in key order as of the last [`Rows::sorted`], and the ids
    /// inserted since.
    sorted: Vec<u32>,
    added: Vec<u32>,
    /// A row was removed since: `sorted` is rebuilt when next needed.
    removed: bool,
}

impl Rows {
    pub(super) fn new(width: usize) -> Rows {
        Rows {
            width,
            index: HashTable::new(),
            keys: String::new(),
            key_ends: Vec::new(),
            cells: Vec::new(),
            meta: Vec::new(),
            sorted: Vec::new(),
            added: Vec::new(),
            removed: false,
        }
    }

    /// Rows ever inserted (ids run below this).
    pub(super) fn ids(&self) -> u32 {
        u32::try_from(self.key_ends.len()).unwrap_or(u32::MAX)
    }

    pub(super) fn key(&self, id: u32) -> &str {
        key_of(&self.keys, &self.key_ends, id)
    }

    /// The id of the live row with this key.
    pub(super) fn find(&self, key: &str) -> Option<u32> {
        let hash = key_hash(key);
        self.index
            .find(hash, |&(h, id)| {
                h == hash && key_of(&self.keys, &self.key_ends, id) == key
            })
            .map(|&(_, id)| id)
    }

    /// `id` when it is a live row with this key (one key comparison, no
    /// hash: for callers that can guess the id).
    pub(super) fn live_key_at(&self, id: u32, key: &str) -> Option<u32> {
        let live = self.meta.get(id as usize).is_some_and(|m| m.live);
        (live && self.key(id) == key).then_some(id)
    }

    /// Inserts a row of NULLs with a key no live row has; its id.
    ///
    /// # Errors
    /// When the table already holds `u32::MAX` rows.
    pub(super) fn insert(&mut self, key: &str) -> Result<u32, String> {
        let id = u32::try_from(self.key_ends.len())
            .ok()
            .filter(|id| *id < u32::MAX)
            .ok_or_else(|| format!("more than {} rows in one table", u32::MAX))?;
        self.keys.push_str(key);
        self.key_ends.push(self.keys.len());
        if (id as usize).is_multiple_of(CHUNK) {
            self.cells
                .push(vec![Cell::Null; CHUNK * self.width].into_boxed_slice());
        }
        self.meta.push(Meta {
            live: true,
            ..Meta::default()
        });
        self.index
            .insert_unique(key_hash(key), (key_hash(key), id), |&(h, _)| h);
        self.added.push(id);
        Ok(id)
    }

    /// Removes a live row (its cells stay, unreachable).
    pub(super) fn remove(&mut self, id: u32) {
        let hash = key_hash(self.key(id));
        if let Ok(entry) = self.index.find_entry(hash, |&(_, i)| i == id) {
            entry.remove();
        }
        if let Some(m) = self.meta.get_mut(id as usize) {
            m.live = false;
            m.line = None;
        }
        self.removed = true;
    }

    pub(super) fn row(&self, id: u32) -> &[Cell] {
        row_of(&self.cells, self.width, id)
    }

    /// The row's cells, to change: its rendering is dropped.
    pub(super) fn row_mut(&mut self, id: u32) -> &mut [Cell] {
        if let Some(m) = self.meta.get_mut(id as usize) {
            m.line = None;
        }
        let (chunk, at) = (id as usize / CHUNK, id as usize % CHUNK * self.width);
        &mut self.cells[chunk][at..at + self.width]
    }

    /// The keys, the cells and the per-row metadata, apart (to render rows
    /// in parallel): see [`key_of`] and [`row_of`].
    pub(super) fn parts(&mut self) -> Parts<'_> {
        (&self.keys, &self.key_ends, &self.cells, &mut self.meta)
    }

    /// The keys and the cells (see [`key_of`] and [`row_of`]).
    pub(super) fn parts_ref(&self) -> (&str, &[usize], &[Box<[Cell]>]) {
        (&self.keys, &self.key_ends, &self.cells)
    }

    pub(super) fn width(&self) -> usize {
        self.width
    }

    /// The live ids in key order, as of the last [`Rows::sort`].
    pub(super) fn sorted_ids(&self) -> &[u32] {
        &self.sorted
    }

    /// Brings [`Rows::sorted_ids`] up to date: the ids inserted since the
    /// last call are sorted and merged in, O(rows + added x log added).
    pub(super) fn sort(&mut self) {
        let Rows {
            keys,
            key_ends,
            meta,
            sorted,
            added,
            removed,
            ..
        } = self;
        let key = |id: &u32| key_of(keys, key_ends, *id);
        if *removed {
            *sorted = (0..u32::try_from(meta.len()).unwrap_or(u32::MAX))
                .filter(|id| meta[*id as usize].live)
                .collect();
            sorted.sort_unstable_by(|a, b| key(a).cmp(key(b)));
            added.clear();
            *removed = false;
        } else if !added.is_empty() {
            added.sort_unstable_by(|a, b| key(a).cmp(key(b)));
            let old = std::mem::take(sorted);
            let mut merged = Vec::with_capacity(old.len() + added.len());
            let mut a = old.into_iter().peekable();
            let mut b = added.drain(..).peekable();
            loop {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => key(x) <= key(y),
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                merged.extend(if take_a { a.next() } else { b.next() });
            }
            *sorted = merged;
        }
    }
}

/// Row `id`'s cells in [`Rows::parts`]'s cells.
pub(super) fn row_of(cells: &[Box<[Cell]>], width: usize, id: u32) -> &[Cell] {
    let (chunk, at) = (id as usize / CHUNK, id as usize % CHUNK * width);
    &cells[chunk][at..at + width]
}

/// Row `id`'s key in [`Rows::parts`]'s keys.
pub(super) fn key_of<'k>(keys: &'k str, ends: &[usize], id: u32) -> &'k str {
    let id = id as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] };
    // Each key was pushed whole, so both ends are character boundaries.
    keys.get(start..ends[id]).unwrap_or_default()
}

/// A set of texts that must stay unique (`orders.client_order_id`), each
/// stored once in one string.
#[derive(Default)]
pub(super) struct TextSet {
    index: HashTable<(u64, u32)>,
    texts: String,
    ends: Vec<usize>,
}

impl TextSet {
    /// Adds `t`; false when it is there already.
    pub(super) fn insert(&mut self, t: &str) -> bool {
        let hash = key_hash(t);
        let TextSet { index, texts, ends } = self;
        if index
            .find(hash, |&(h, i)| h == hash && key_of(texts, ends, i) == t)
            .is_some()
        {
            return false;
        }
        let Ok(id) = u32::try_from(ends.len()) else {
            return false;
        };
        texts.push_str(t);
        ends.push(texts.len());
        index.insert_unique(hash, (hash, id), |&(h, _)| h);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_find_insert_remove_and_sort() {
        let mut r = Rows::new(2);
        let keys: Vec<String> = (0..5000)
            .map(|i| format!("k{}", (i * 7919) % 5000))
            .collect();
        for k in &keys {
            assert_eq!(r.find(k), None);
            let id = r.insert(k).unwrap();
            r.row_mut(id)[1] = Cell::text(k);
            assert_eq!(r.find(k), Some(id));
        }
        let mut want: Vec<&str> = keys.iter().map(String::as_str).collect();
        want.sort_unstable();
        r.sort();
        let sorted: Vec<&str> = r.sorted_ids().iter().map(|id| r.key(*id)).collect();
        assert_eq!(sorted, want);
        // Inserted after a sort: merged in order.
        let id = r.insert("k0a").unwrap();
        r.remove(r.find("k17").unwrap());
        assert_eq!(r.find("k17"), None);
        assert_eq!(r.find("k0a"), Some(id));
        r.sort();
        let sorted: Vec<&str> = r.sorted_ids().iter().map(|id| r.key(*id)).collect();
        want.retain(|k| *k != "k17");
        want.push("k0a");
        want.sort_unstable();
        assert_eq!(sorted, want);
        assert_eq!(r.row(r.find("k42").unwrap())[1].as_text(), Some("k42"));
    }

    #[test]
    fn cells_keep_text_inline_or_boxed() {
        for t in [
            "",
            "x",
            "2025-01-15T14:30:00.000001",
            &"é".repeat(15),
            &"y".repeat(31),
        ] {
            let c = Cell::text(t);
            assert_eq!(c.as_text(), Some(t));
            assert_eq!(matches!(c, Cell::Short(..)), t.len() <= INLINE, "{t:?}");
        }
        let mut s = TextSet::default();
        assert!(s.insert("a") && s.insert("b") && !s.insert("a") && s.insert(""));
        assert!(!s.insert(""));
    }
}
