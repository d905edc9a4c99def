//! Writing the pages of the `events` b-trees directly, for a large replay onto
//! a staged copy.
//!
//! Even appended in order through SQLite (see [`crate::bulk`]), each event row
//! costs SQLite a trip through its virtual machine, its b-tree layer and its
//! page cache, on one thread; on a replay of a million events that is most of
//! the time. Here the rows and their index entries are written as SQLite's
//! file format defines them (<https://www.sqlite.org/fileformat2.html>), while
//! the replay folds the events' effects, and before SQLite writes them:
//!
//! 1. [`build`] decides which rows (or index entries) go on which leaf page,
//!    and finds duplicate ids, before anything is written.
//! 2. [`prepare`], with the connection holding no lock, writes the interior
//!    pages that link the new leaves in, then the database header, with its
//!    change counter moved so that SQLite discards its page cache when it
//!    next reads the file, as it does after another process's write.
//! 3. [`Prepared::write_leaves`] builds the leaf pages in parallel and writes
//!    them while the replay folds the events and SQLite writes the
//!    projections (which never read them), then starts their writeback to
//!    disk, so that the fsync ending the replay finds it mostly done. The
//!    file is closed only after SQLite has released its lock: closing a
//!    descriptor drops every POSIX lock the process holds on the file.
//!
//! * **Rows** are appended to the table's b-tree: the new leaves follow the
//!   rightmost leaf, and the interior pages on the rightmost path take the new
//!   children (splitting, and the root growing a level, as needed). Rowids are
//!   those one-by-one inserts would give (the highest rowid + 1, + 2, ...); the
//!   existing leaves keep their content.
//! * **The `event_id` index** is rebuilt from the merge of its entries and the
//!   new ones when it holds no more entries than the replay adds (the cost is
//!   then at most twice the new entries'): the new tree is written on new
//!   pages, its top on the root's page number, and the old pages go to the
//!   freelist. A duplicate id, within the replay or with the database, is
//!   found while building, before anything is written. When the index is
//!   larger, its entries are inserted through SQLite, in key order, by the
//!   caller ([`Outcome::RowsOnly`]).
//!
//! Everything the write depends on is checked before the first byte is
//! written; when anything is unusual (page reserve bytes, auto-vacuum, a
//! non-UTF-8 database, a row that would need overflow pages, an unexpected page
//! type, a highest rowid the file and SQLite disagree on) nothing is written
//! and the caller writes the rows through SQLite ([`Outcome::Declined`]).
//! Only a staged copy, discarded on any error, is written this way; the tests
//! compare every row with SQLite's own replay and run `integrity_check`.

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::event::Event;

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The rows and their index entries are in the file.
    Done,
    /// The rows are in the file; their index entries were inserted through
    /// SQLite (the index held more entries than the replay adds).
    RowsOnly,
    /// Nothing was written, for this reason.
    Declined(String),
}

/// The two b-trees of `events` (root page numbers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Roots {
    pub table: u32,
    pub index: u32,
}

/// Why the direct write is not possible; nothing has been written.
type Declined = String;

/// A value, or why the direct write is declined.
type OrDeclined<T> = std::result::Result<T, Declined>;

/// Pages by number, with their bytes.
type Pages = Vec<(u32, Vec<u8>)>;

/// The page size, as SQLite reports it, when the database can be written
/// directly: no auto-vacuum (pointer map pages), UTF-8 text. The file header
/// is checked again before writing.
///
/// # Errors
/// [`Error::Sqlite`] when the settings cannot be read.
pub(crate) fn page_size(conn: &Connection) -> Result<OrDeclined<usize>> {
    let read = |sql: &str| -> Result<rusqlite::types::Value> {
        conn.query_row(sql, [], |r| r.get(0))
            .map_err(Error::sqlite(format!("reading {sql}")))
    };
    use rusqlite::types::Value;
    if cfg!(not(unix)) {
        return Ok(Err("positioned file writes need a Unix system".into()));
    }
    if read("PRAGMA auto_vacuum")? != Value::Integer(0) {
        return Ok(Err("auto-vacuum (pointer map pages)".into()));
    }
    if read("PRAGMA encoding")? != Value::Text("UTF-8".into()) {
        return Ok(Err("the text encoding is not UTF-8".into()));
    }
    Ok(match read("PRAGMA page_size")? {
        Value::Integer(n) if (512..=65_536).contains(&n) && (n as u64).is_power_of_two() => {
            Ok(n as usize)
        }
        other => Err(format!("page size {other:?}")),
    })
}

/// The entries of the index on `table.column` (a text key) in key order,
/// read through SQLite (before a rebuild of the index); declined when a key
/// is not text.
///
/// # Errors
/// [`Error::Sqlite`].
pub(crate) fn index_entries(
    conn: &Connection,
    table: &str,
    column: &str,
) -> Result<OrDeclined<Vec<Entry<'static>>>> {
    let what = format!("reading the index on {table}.{column}");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {column}, rowid FROM {table} ORDER BY {column}"
        ))
        .map_err(Error::sqlite(what.clone()))?;
    let mut rows = stmt.query([]).map_err(Error::sqlite(what.clone()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(Error::sqlite(what.clone()))? {
        let rowid: i64 = row.get(1).map_err(Error::sqlite(what.clone()))?;
        match row.get_ref(0) {
            Ok(rusqlite::types::ValueRef::Text(key)) => out.push(Entry {
                key: Cow::Owned(key.to_vec()),
                rowid,
            }),
            _ => {
                return Ok(Err(format!(
                    "the {column} of rowid {rowid} in {table} is not text"
                )))
            }
        }
    }
    Ok(Ok(out))
}

/// The leaves of a b-tree, in key order: leaf `i` holds the items
/// `groups[i]`.
struct Leaves {
    groups: Vec<Range<usize>>,
}

/// The rebuilt index: all its entries, in key order, its leaves, and the
/// entries between two leaves.
struct Index<'e> {
    entries: Vec<Entry<'e>>,
    leaves: Leaves,
    dividers: Vec<Entry<'e>>,
}

/// What a direct write needs that does not depend on page numbers, decided
/// while SQLite writes the rest of the replay; see [`build`].
pub(crate) struct Built<'e> {
    page_size: usize,
    base: i64,
    events: &'e [Event],
    rows: Leaves,
    index: Option<Index<'e>>,
}

/// Decides the leaf pages of the rows of `events` (rowids from `base + 1`)
/// and, when `old` (the index's entries) is given, of the rebuilt index; the
/// pages are built as they are written.
///
/// # Errors
/// [`Error::Event`] naming the first event whose id repeats an earlier one or
/// one of `old`.
pub(crate) fn build<'e>(
    page_size: usize,
    events: &'e [Event],
    base: i64,
    old: Option<Vec<Entry<'static>>>,
) -> Result<OrDeclined<Built<'e>>> {
    let built = plan_leaves(page_size, events, base, old);
    #[cfg(test)]
    if let Ok(Err(reason)) = &built {
        tests::WRITTEN.with(|w| w.borrow_mut().push(Outcome::Declined(reason.clone())));
    }
    built
}

fn plan_leaves<'e>(
    page_size: usize,
    events: &'e [Event],
    base: i64,
    old: Option<Vec<Entry<'static>>>,
) -> Result<OrDeclined<Built<'e>>> {
    let t = std::time::Instant::now();
    let u = page_size;
    if base < 0 || base.checked_add(events.len() as i64).is_none() {
        return Ok(Err(format!("rowids after {base}")));
    }
    // Every row must fit on a leaf without overflow pages.
    let row_max = u - 35;
    let cells: Vec<usize> = events
        .par_iter()
        .enumerate()
        .map(|(i, ev)| {
            let payload = row_payload_len(ev);
            if payload > row_max {
                usize::MAX
            } else {
                varint_len(payload as u64) + varint_len((base + i as i64 + 1) as u64) + payload + 2
            }
        })
        .collect();
    if let Some(i) = cells.iter().position(|c| *c == usize::MAX) {
        return Ok(Err(format!(
            "event #{} needs overflow pages",
            events[i].sequence_number
        )));
    }
    let index = match old {
        Some(old) => {
            let entries =
                match merge(old, events, base) {
                    Merge::Entries(e) => e,
                    Merge::Duplicate(i) => return Err(Error::event(
                        &events[i],
                        "cannot insert the event row: UNIQUE constraint failed: events.event_id",
                    )),
                    Merge::Unsorted => return Ok(Err("the event_id index is out of order".into())),
                };
            let groups = match index_leaf_groups(&entries, u) {
                Ok(groups) => groups,
                Err(reason) => return Ok(Err(reason)),
            };
            let dividers: Vec<Entry<'e>> = groups[..groups.len() - 1]
                .iter()
                .map(|g| entries[g.end].clone())
                .collect();
            Some(Index {
                entries,
                leaves: Leaves { groups },
                dividers,
            })
        }
        None => None,
    };
    let groups = split_plain(&cells, u - 8);
    tracing::debug!("leaves decided in {:?}", t.elapsed());
    Ok(Ok(Built {
        page_size,
        base,
        events,
        rows: Leaves { groups },
        index,
    }))
}

/// A direct write under way: the file is opened, the interior pages and the
/// header written; the leaves are written by [`Prepared::write_leaves`].
pub(crate) struct Prepared<'b, 'e> {
    db: Db,
    plan: Plan,
    built: &'b Built<'e>,
    pub outcome: Outcome,
}

/// Starts writing the built pages into the database file at `path`: the
/// interior pages that link the new row leaves in after the table's
/// rightmost leaf and those of the rebuilt index (if built), whose old pages
/// go to the freelist, then the header. The connection must hold no lock;
/// it may take one once this returns (SQLite then sees the new header, and
/// never reads the leaves while it writes other tables), but the returned
/// value, which holds the file open, must be dropped only when it holds none
/// again: closing a descriptor drops every POSIX lock the process holds on
/// the file. `Ok(Err(Outcome::Declined))` when nothing was written.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read or written; the database must
/// then be discarded.
pub(crate) fn prepare<'b, 'e>(
    path: &Path,
    roots: Roots,
    built: &'b Built<'e>,
) -> Result<std::result::Result<Prepared<'b, 'e>, Outcome>> {
    let declined = |reason: String| {
        #[cfg(test)]
        tests::WRITTEN.with(|w| w.borrow_mut().push(Outcome::Declined(reason.clone())));
        Ok(Err(Outcome::Declined(reason)))
    };
    let t = std::time::Instant::now();
    #[cfg(test)]
    if tests::DECLINE.with(std::cell::Cell::get) {
        return declined("declined by the test".into());
    }
    let db = match Db::open(path)? {
        Ok(db) if db.page_size == built.page_size => db,
        Ok(db) => return declined(format!("the file's page size is {}", db.page_size)),
        Err(reason) => return declined(reason),
    };
    let plan = match plan(&db, roots, built)? {
        Ok(plan) => plan,
        Err(reason) => return declined(reason),
    };
    db.write_structure(&plan)?;
    tracing::debug!("pages planned and linked in {:?}", t.elapsed());
    let outcome = if built.index.is_some() {
        Outcome::Done
    } else {
        Outcome::RowsOnly
    };
    #[cfg(test)]
    tests::WRITTEN.with(|w| w.borrow_mut().push(outcome.clone()));
    Ok(Ok(Prepared {
        db,
        plan,
        built,
        outcome,
    }))
}

impl Prepared<'_, '_> {
    /// Builds the leaf pages and writes them, in parallel, then starts their
    /// writeback to disk.
    ///
    /// # Errors
    /// [`Error::Io`]; the database must then be discarded.
    pub(crate) fn write_leaves(&self) -> Result<()> {
        let t = std::time::Instant::now();
        let (db, plan, built) = (&self.db, &self.plan, self.built);
        let u = db.page_size;
        let rows = &built.rows.groups;
        db.write_leaves(&plan.row_leaves, |i, page| {
            let g = rows[i].clone();
            let first = built.base + 1 + g.start as i64;
            table_leaf(
                page,
                u,
                (first..).zip(&built.events[g]),
                |ev| row_payload_len(ev),
                |out, ev| encode_row(out, ev),
            );
        })?;
        if let Some(index) = &built.index {
            let groups = &index.leaves.groups;
            db.write_leaves(&plan.index_leaves, |i, page| {
                index_leaf(page, u, &index.entries[groups[i].clone()]);
            })?;
        }
        start_writeback(&db.file);
        tracing::debug!("leaf pages written in {:?}", t.elapsed());
        Ok(())
    }
}

/// The database file, as the header describes it.
struct Db {
    file: File,
    path: PathBuf,
    page_size: usize,
    pages: u32,
    /// The page holding the lock byte at 1 GiB, never used by SQLite.
    pending: u32,
    header: [u8; 100],
}

impl Db {
    fn open(path: &Path) -> Result<OrDeclined<Db>> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("open the staged database"))?;
        let len = file
            .metadata()
            .map_err(io("read the size of the staged database"))?
            .len();
        let mut header = [0u8; 100];
        read_at(&file, &mut header, 0).map_err(io("read the header of the staged database"))?;
        if &header[..16] != b"SQLite format 3\0" {
            return Ok(Err("not an SQLite database file".into()));
        }
        let page_size = match be16(&header, 16) {
            1 => 65_536,
            n => usize::from(n),
        };
        if !page_size.is_power_of_two() || page_size < 512 {
            return Ok(Err(format!("page size {page_size}")));
        }
        if header[18] != 1 || header[19] != 1 {
            return Ok(Err("the database is not in a rollback journal mode".into()));
        }
        if header[20] != 0 {
            return Ok(Err(format!("{} reserved bytes per page", header[20])));
        }
        if be32(&header, 52) != 0 {
            return Ok(Err("auto-vacuum (pointer map pages)".into()));
        }
        if be32(&header, 56) != 1 {
            return Ok(Err("the text encoding is not UTF-8".into()));
        }
        let file_pages = len / page_size as u64;
        let counted = be32(&header, 28);
        let pages = if counted != 0 && header[24..28] == header[92..96] {
            u64::from(counted)
        } else {
            file_pages
        };
        if pages > file_pages || pages == 0 || pages >= u64::from(u32::MAX) / 2 {
            return Ok(Err(format!(
                "the header counts {pages} pages, the file holds {file_pages}"
            )));
        }
        Ok(Ok(Db {
            file,
            path: path.to_path_buf(),
            page_size,
            pages: pages as u32,
            pending: u32::try_from((1u64 << 30) / page_size as u64 + 1).unwrap_or(u32::MAX),
            header,
        }))
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    fn read_page(&self, no: u32) -> Result<OrDeclined<Vec<u8>>> {
        if no < 2 || no > self.pages || no == self.pending {
            return Ok(Err(format!("a b-tree refers to page {no}")));
        }
        let mut page = vec![0u8; self.page_size];
        read_at(&self.file, &mut page, self.offset(no))
            .map_err(self.io("read a page of the staged database"))?;
        Ok(Ok(page))
    }

    fn offset(&self, no: u32) -> u64 {
        u64::from(no - 1) * self.page_size as u64
    }

    /// Writes the planned pages: leaves in parallel, then the rest, the
    /// header last.
    /// Writes the interior, moved and freelist pages, then the header (the
    /// file first extended to the new page count).
    fn write_structure(&self, plan: &Plan) -> Result<()> {
        self.file
            .set_len(u64::from(plan.pages_after) * self.page_size as u64)
            .map_err(self.io("extend the staged database"))?;
        for (no, page) in &plan.pages {
            write_at(&self.file, page, self.offset(*no))
                .map_err(self.io("write a page of the staged database"))?;
        }
        let mut header = self.header;
        let counter = be32(&header, 24).wrapping_add(1);
        header[24..28].copy_from_slice(&counter.to_be_bytes());
        header[92..96].copy_from_slice(&counter.to_be_bytes());
        header[28..32].copy_from_slice(&plan.pages_after.to_be_bytes());
        header[32..36].copy_from_slice(&plan.freelist.0.to_be_bytes());
        header[36..40].copy_from_slice(&plan.freelist.1.to_be_bytes());
        write_at(&self.file, &header, 0).map_err(self.io("write the staged database's header"))
    }

    /// Builds leaf `i` with `fill(i, page)` and writes it at `numbers[i]`,
    /// in parallel, each run of consecutive page numbers at once.
    fn write_leaves(&self, numbers: &[u32], fill: impl Fn(usize, &mut [u8]) + Sync) -> Result<()> {
        let ps = self.page_size;
        numbers
            .par_chunks(LEAVES_PER_WRITE)
            .enumerate()
            .try_for_each(|(c, chunk)| {
                let mut buf = vec![0u8; chunk.len() * ps];
                for (k, page) in buf.chunks_mut(ps).enumerate() {
                    fill(c * LEAVES_PER_WRITE + k, page);
                }
                let mut start = 0;
                while start < chunk.len() {
                    let mut end = start + 1;
                    while end < chunk.len() && chunk[end] == chunk[end - 1] + 1 {
                        end += 1;
                    }
                    write_at(
                        &self.file,
                        &buf[start * ps..end * ps],
                        self.offset(chunk[start]),
                    )
                    .map_err(self.io("write pages of the staged database"))?;
                    start = end;
                }
                Ok(())
            })
    }
}

/// Leaf pages built and written per parallel task.
const LEAVES_PER_WRITE: usize = 256;

/// Starts writing the file's dirty pages to disk without waiting, so that
/// the fsync that ends the staging replay finds most of them written.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed;
    // sync_file_range only reads its arguments. A failure costs only time
    // (the fsync does the writing), so it is not checked.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(_: &File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    Err(std::io::Error::other("positioned reads need a Unix system"))
}

#[cfg(not(unix))]
fn write_at(_: &File, _: &[u8], _: u64) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "positioned writes need a Unix system",
    ))
}

/// Where everything goes, decided before the first write.
struct Plan {
    /// The page number of each row leaf.
    row_leaves: Vec<u32>,
    /// The page number of each index leaf.
    index_leaves: Vec<u32>,
    /// Interior pages, moved and rewritten pages, freelist trunks.
    pages: Pages,
    pages_after: u32,
    /// First freelist trunk page and number of free pages.
    freelist: (u32, u32),
}

/// An index entry: a text key (an event id) and its rowid.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'e> {
    pub key: Cow<'e, [u8]>,
    pub rowid: i64,
}

/// Hands out new page numbers at the end of the file, never the lock-byte
/// page.
struct Alloc {
    next: u32,
    pending: u32,
}

impl Alloc {
    fn take(&mut self) -> u32 {
        if self.next == self.pending {
            self.next += 1;
        }
        self.next += 1;
        self.next - 1
    }
}

/// `Ok(Err(reason))` from a check that declines the direct write.
macro_rules! check {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        }
    };
}

fn plan(db: &Db, roots: Roots, built: &Built<'_>) -> Result<OrDeclined<Plan>> {
    let path = check!(rightmost_path_after(db, roots.table, built.base));
    let old_index = match &built.index {
        Some(_) => check!(tree_pages(db, roots.index)),
        None => Vec::new(),
    };
    let mut pages = Vec::new();
    let mut alloc = Alloc {
        next: db.pages + 1,
        pending: db.pending,
    };
    let row_leaves = plan_rows(
        db,
        &path,
        built.base,
        &built.rows.groups,
        &mut alloc,
        &mut pages,
    );
    let (index_leaves, freelist) = match &built.index {
        Some(index) => {
            // The new tree is written on new pages (its top on the root);
            // the old ones go to the freelist, for SQLite to take again.
            let numbers = plan_index(
                db,
                roots.index,
                &index.leaves,
                &index.dividers,
                &mut alloc,
                &mut pages,
            );
            let freelist = free_pages(db, &old_index, &mut pages);
            #[cfg(test)]
            tests::FREED.with(|f| f.set(old_index.len()));
            (numbers, freelist)
        }
        None => (Vec::new(), (be32(&db.header, 32), be32(&db.header, 36))),
    };
    Ok(Ok(Plan {
        row_leaves,
        index_leaves,
        pages,
        pages_after: alloc.next - 1,
        freelist,
    }))
}

/// Every page of a b-tree but its root.
fn tree_pages(db: &Db, root: u32) -> Result<OrDeclined<Vec<u32>>> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(no) = stack.pop() {
        let page = check!(db.read_page(no));
        match page[0] {
            0x0A | 0x0D => {}
            0x02 | 0x05 if out.len() <= db.pages as usize => {
                let n = usize::from(be16(&page, 3));
                for i in 0..n {
                    let off = usize::from(be16(&page, 12 + 2 * i));
                    match page.get(off..off + 4) {
                        Some(b) => stack.push(be32(b, 0)),
                        None => return Ok(Err(format!("page {no} has a cell out of bounds"))),
                    }
                }
                stack.push(be32(&page, 8));
                out.extend_from_slice(&stack[stack.len() - n - 1..]);
            }
            t => return Ok(Err(format!("page {no} of a b-tree has type {t}"))),
        }
    }
    Ok(Ok(out))
}

/// The pages from the root of a table b-tree to its rightmost leaf.
fn rightmost_path(db: &Db, root: u32) -> Result<OrDeclined<Pages>> {
    let mut path: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut no = root;
    loop {
        let page = check!(db.read_page(no));
        let kind = page[0];
        let right = be32(&page, 8);
        path.push((no, page));
        match kind {
            0x0D => return Ok(Ok(path)),
            0x05 if path.len() < 32 => no = right,
            t => return Ok(Err(format!("page {no} of a table has type {t}"))),
        }
    }
}

/// [`rightmost_path`], when the rightmost leaf's highest rowid is `base`
/// (SQLite's highest rowid of the table).
fn rightmost_path_after(db: &Db, root: u32, base: i64) -> Result<OrDeclined<Pages>> {
    let path = check!(rightmost_path(db, root));
    let last_rowid = match table_leaf_max(&path[path.len() - 1].1) {
        Some(r) => r,
        None if path.len() == 1 => 0,
        None => return Ok(Err("the rightmost leaf of the table is empty".into())),
    };
    if last_rowid != base {
        return Ok(Err(format!(
            "the file's highest rowid is {last_rowid}, SQLite's {base}"
        )));
    }
    Ok(Ok(path))
}

/// The page numbers of the new table leaves (returned), and the interior
/// pages that link them in (into `pages`).
fn plan_rows(
    db: &Db,
    path: &[(u32, Vec<u8>)],
    base: i64,
    groups: &[Range<usize>],
    alloc: &mut Alloc,
    pages: &mut Pages,
) -> Vec<u32> {
    let u = db.page_size;
    let (root, root_page) = &path[0];
    if path.len() == 1 && be16(root_page, 3) == 0 && groups.len() == 1 {
        // An empty table and one new leaf: the leaf is the root.
        return vec![*root];
    }
    let leaves: Vec<u32> = groups.iter().map(|_| alloc.take()).collect();
    let mut children: Vec<(u32, i64)> = leaves
        .iter()
        .zip(groups)
        .map(|(no, r)| (*no, base + r.end as i64))
        .collect();
    if path.len() == 1 {
        // The root is a leaf: its rows move to a new page, the root becomes
        // the interior page above.
        if be16(root_page, 3) > 0 {
            let moved = alloc.take();
            pages.push((moved, root_page.clone()));
            children.insert(0, (moved, base));
        }
        build_table_up(db, children, *root, alloc, pages);
        return leaves;
    }
    let depth = path.len() - 1;
    // The highest rowid under the path's page of the level below: the
    // rightmost leaf keeps its rows; a rewritten interior page ends where its
    // new last child does.
    let mut path_key = base;
    for h in 1..=depth {
        let (no, page) = &path[depth - h];
        // The page's children: its own, the path's page below, then the new
        // pages of the level below.
        let mut all = table_interior_cells(page);
        all.push((be32(page, 8), path_key));
        all.append(&mut children);
        if h == depth {
            build_table_up(db, all, *no, alloc, pages);
            break;
        }
        for (i, g) in split_children(&all, u - 12).into_iter().enumerate() {
            let page_no = if i == 0 { *no } else { alloc.take() };
            let last = all[g.end - 1];
            let mut p = vec![0u8; db.page_size];
            table_interior(&mut p, u, &all[g.start..g.end - 1], last.0);
            pages.push((page_no, p));
            if i == 0 {
                path_key = last.1;
            } else {
                children.push((page_no, last.1));
            }
        }
    }
    leaves
}

/// Interior levels over `children` (page, highest rowid) until one page
/// holds them all; that page is written at `root`.
fn build_table_up(
    db: &Db,
    mut children: Vec<(u32, i64)>,
    root: u32,
    alloc: &mut Alloc,
    pages: &mut Pages,
) {
    let u = db.page_size;
    loop {
        let groups = split_children(&children, u - 12);
        let single = groups.len() == 1;
        let mut next = Vec::with_capacity(groups.len());
        for g in groups {
            let no = if single { root } else { alloc.take() };
            let last = children[g.end - 1];
            let mut p = vec![0u8; db.page_size];
            table_interior(&mut p, u, &children[g.start..g.end - 1], last.0);
            pages.push((no, p));
            next.push((no, last.1));
        }
        if single {
            return;
        }
        children = next;
    }
}

/// The page numbers of the rebuilt index's leaves (returned), and its
/// interior pages (into `pages`); the top page is written at `root`.
fn plan_index(
    db: &Db,
    root: u32,
    leaves: &Leaves,
    dividers: &[Entry<'_>],
    alloc: &mut Alloc,
    pages: &mut Pages,
) -> Vec<u32> {
    let u = db.page_size;
    if leaves.groups.len() == 1 {
        return vec![root];
    }
    let numbers: Vec<u32> = leaves.groups.iter().map(|_| alloc.take()).collect();
    let mut children = numbers.clone();
    let mut dividers: Vec<&Entry<'_>> = dividers.iter().collect();
    loop {
        let sizes: Vec<usize> = dividers
            .iter()
            .map(|e| {
                let p = index_payload_len(e);
                4 + varint_len(p as u64) + p + 2
            })
            .collect();
        let groups = split_promoting(&sizes, u - 12);
        let single = groups.len() == 1;
        let mut next_children = Vec::with_capacity(groups.len());
        for g in &groups {
            let no = if single { root } else { alloc.take() };
            let cells: Vec<(u32, &Entry<'_>)> =
                g.clone().map(|j| (children[j], dividers[j])).collect();
            let mut p = vec![0u8; db.page_size];
            index_interior(&mut p, u, &cells, children[g.end]);
            pages.push((no, p));
            next_children.push(no);
        }
        if single {
            return numbers;
        }
        dividers = groups[..groups.len() - 1]
            .iter()
            .map(|g| dividers[g.end])
            .collect();
        children = next_children;
    }
}

/// Puts `left` on the freelist, in new trunk pages in front of the existing
/// ones; returns the new first trunk and count.
fn free_pages(db: &Db, left: &[u32], pages: &mut Pages) -> (u32, u32) {
    let mut first = be32(&db.header, 32);
    let count = be32(&db.header, 36) + left.len() as u32;
    // As SQLite: at most usable/4 - 8 leaves per trunk.
    let per_trunk = db.page_size / 4 - 8;
    for group in left.chunks(per_trunk + 1).rev() {
        let (trunk, leaves) = (group[0], &group[1..]);
        let mut p = vec![0u8; db.page_size];
        p[0..4].copy_from_slice(&first.to_be_bytes());
        p[4..8].copy_from_slice(&(leaves.len() as u32).to_be_bytes());
        for (i, leaf) in leaves.iter().enumerate() {
            p[8 + 4 * i..12 + 4 * i].copy_from_slice(&leaf.to_be_bytes());
        }
        pages.push((trunk, p));
        first = trunk;
    }
    (first, count)
}

// ---- Another table, written whole -------------------------------------

/// A value as a record stores it (the column's affinity already applied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stored<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
}

/// The record of `values`, in column order.
pub(crate) fn record(values: &[Stored<'_>]) -> Vec<u8> {
    let serial = |v: &Stored<'_>| match v {
        Stored::Null => (0, 0),
        Stored::Int(i) => int_serial(*i),
        Stored::Real(_) => (7, 8),
        Stored::Text(t) => (text_serial(t), t.len()),
    };
    let types: usize = values.iter().map(|v| varint_len(serial(v).0)).sum();
    let body: usize = values.iter().map(|v| serial(v).1).sum();
    let mut out = Vec::with_capacity(header_len(types) + body);
    push_varint(&mut out, header_len(types) as u64);
    for v in values {
        push_varint(&mut out, serial(v).0);
    }
    for v in values {
        match v {
            Stored::Null => {}
            Stored::Int(i) => {
                let len = serial(v).1;
                out.extend_from_slice(&i.to_be_bytes()[8 - len..]);
            }
            Stored::Real(f) => out.extend_from_slice(&f.to_bits().to_be_bytes()),
            Stored::Text(t) => out.extend_from_slice(t),
        }
    }
    out
}

/// Rows appended to a table, with rowids from `base + 1`, as records; and
/// every entry of each of its indexes (text keys, in key order, the old ones
/// with the new), for the indexes to be rebuilt.
pub(crate) struct TableAppend<'a> {
    pub table: u32,
    pub base: i64,
    pub records: Vec<Vec<u8>>,
    pub indexes: Vec<(u32, Vec<Entry<'a>>)>,
}

/// Writes `append` into the database file at `path` as [`prepare`] and
/// [`Prepared::write_leaves`] write the events (the rows after the table's
/// rightmost leaf; each index rebuilt on new pages, its top on its root, the
/// old pages to the freelist), all of it before returning: SQLite may read
/// these pages once it next locks the file. The connection must hold no
/// lock. `Ok(Err(reason))` when nothing was written.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read or written; the database must
/// then be discarded.
pub(crate) fn append_table(
    path: &Path,
    page_size: usize,
    append: &TableAppend<'_>,
) -> Result<OrDeclined<()>> {
    let t = std::time::Instant::now();
    #[cfg(test)]
    if tests::DECLINE.with(std::cell::Cell::get) {
        return Ok(Err("declined by the test".into()));
    }
    let db = check!(Db::open(path));
    let u = db.page_size;
    if u != page_size {
        return Ok(Err(format!("the file's page size is {u}")));
    }
    if append.base < 0
        || append
            .base
            .checked_add(append.records.len() as i64)
            .is_none()
    {
        return Ok(Err(format!("rowids after {}", append.base)));
    }
    let mut cells = Vec::with_capacity(append.records.len());
    for (rowid, r) in (append.base + 1..).zip(&append.records) {
        if r.len() > u - 35 {
            return Ok(Err(format!(
                "the row of rowid {rowid} needs overflow pages"
            )));
        }
        cells.push(varint_len(r.len() as u64) + varint_len(rowid as u64) + r.len() + 2);
    }
    let row_groups = split_plain(&cells, u - 8);
    let path_pages = check!(rightmost_path_after(&db, append.table, append.base));
    let mut index_groups = Vec::with_capacity(append.indexes.len());
    let mut old = Vec::new();
    for (root, entries) in &append.indexes {
        match index_leaf_groups(entries, u) {
            Ok(groups) => index_groups.push(groups),
            Err(reason) => return Ok(Err(reason)),
        }
        old.extend(check!(tree_pages(&db, *root)));
    }
    let mut pages = Vec::new();
    let mut alloc = Alloc {
        next: db.pages + 1,
        pending: db.pending,
    };
    let row_leaves = plan_rows(
        &db,
        &path_pages,
        append.base,
        &row_groups,
        &mut alloc,
        &mut pages,
    );
    let mut index_leaves = Vec::with_capacity(append.indexes.len());
    for ((root, entries), groups) in append.indexes.iter().zip(&index_groups) {
        let dividers: Vec<Entry<'_>> = groups[..groups.len() - 1]
            .iter()
            .map(|g| entries[g.end].clone())
            .collect();
        let leaves = Leaves {
            groups: groups.clone(),
        };
        index_leaves.push(plan_index(
            &db, *root, &leaves, &dividers, &mut alloc, &mut pages,
        ));
    }
    let freelist = free_pages(&db, &old, &mut pages);
    let plan = Plan {
        row_leaves,
        index_leaves: Vec::new(),
        pages,
        pages_after: alloc.next - 1,
        freelist,
    };
    db.write_structure(&plan)?;
    db.write_leaves(&plan.row_leaves, |i, page| {
        let g = row_groups[i].clone();
        let first = append.base + 1 + g.start as i64;
        table_leaf(
            page,
            u,
            (first..).zip(&append.records[g]),
            |r| r.len(),
            |out, r| out.copy_from_slice(r),
        );
    })?;
    for (((_, entries), groups), numbers) in
        append.indexes.iter().zip(&index_groups).zip(&index_leaves)
    {
        db.write_leaves(numbers, |i, page| {
            index_leaf(page, u, &entries[groups[i].clone()]);
        })?;
    }
    start_writeback(&db.file);
    tracing::debug!(
        "{} rows and {} indexes written in {:?}",
        append.records.len(),
        append.indexes.len(),
        t.elapsed()
    );
    Ok(Ok(()))
}

/// Which of an index's entries (in key order) go on which leaf of a page
/// size `u`, one entry promoted between each two leaves; declined when an
/// entry would need overflow pages.
fn index_leaf_groups(entries: &[Entry<'_>], u: usize) -> OrDeclined<Vec<Range<usize>>> {
    let max = index_max_local(u);
    let sizes: Vec<usize> = entries
        .par_iter()
        .map(|e| {
            let p = index_payload_len(e);
            if p > max {
                usize::MAX
            } else {
                varint_len(p as u64) + p + 2
            }
        })
        .collect();
    if let Some(i) = sizes.iter().position(|c| *c == usize::MAX) {
        return Err(format!(
            "the index entry of rowid {} needs overflow pages",
            entries[i].rowid
        ));
    }
    Ok(split_promoting(&sizes, u - 8))
}

// ---- Splitting a level into pages -------------------------------------

/// Consecutive groups of items whose sizes fit in `room`, each non-empty.
fn split_plain(sizes: &[usize], room: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, s) in sizes.iter().enumerate() {
        if used + s > room && i > start {
            groups.push(start..i);
            (start, used) = (i, 0);
        }
        used += s;
    }
    groups.push(start..sizes.len());
    groups
}

/// Table interior pages over `children`: each page holds a cell per child
/// but its last (the right pointer), and at least two children.
fn split_children(children: &[(u32, i64)], room: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut used) = (0, 0);
    let mut i = 0;
    while i < children.len() {
        let cell = 4 + varint_len(children[i].1 as u64) + 2;
        if used + cell > room && i > start {
            // Child i closes the page as its right pointer.
            groups.push(start..i + 1);
            (start, used) = (i + 1, 0);
        } else {
            used += cell;
        }
        i += 1;
    }
    if start < children.len() {
        groups.push(start..children.len());
    }
    // The last page needs two children: take one from the page before.
    if groups.len() > 1 && groups[groups.len() - 1].len() == 1 {
        let n = groups.len();
        groups[n - 2].end -= 1;
        groups[n - 1].start -= 1;
    }
    groups
}

/// Groups of index cells, each non-empty, with one item promoted between
/// each two groups (`groups[i].end` is the item after group `i`).
fn split_promoting(sizes: &[usize], room: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut used) = (0, 0);
    let mut i = 0;
    while i < sizes.len() {
        if used + sizes[i] > room && i > start {
            groups.push(start..i);
            (start, used) = (i + 1, 0);
        } else {
            used += sizes[i];
        }
        i += 1;
    }
    groups.push(start..sizes.len());
    // The last group empty (its only item was promoted): promote the item
    // before instead, and keep that one in the last group.
    let n = groups.len();
    if n > 1 && groups[n - 1].is_empty() {
        groups[n - 2].end -= 1;
        groups[n - 1] = groups[n - 2].end + 1..sizes.len();
    }
    groups
}

// ---- Reading existing pages --------------------------------------------

/// The highest rowid on a table leaf page, `None` when it has no cells.
fn table_leaf_max(page: &[u8]) -> Option<i64> {
    let n = usize::from(be16(page, 3));
    if n == 0 {
        return None;
    }
    let off = usize::from(be16(page, 8 + 2 * (n - 1)));
    let (_, a) = read_varint(page.get(off..)?)?;
    let (rowid, _) = read_varint(page.get(off + a..)?)?;
    Some(rowid as i64)
}

/// The cells of a table interior page: (child, key).
fn table_interior_cells(page: &[u8]) -> Vec<(u32, i64)> {
    let n = usize::from(be16(page, 3));
    (0..n)
        .filter_map(|i| {
            let off = usize::from(be16(page, 12 + 2 * i));
            let child = be32(page.get(off..off + 4)?, 0);
            let (key, _) = read_varint(page.get(off + 4..)?)?;
            Some((child, key as i64))
        })
        .collect()
}

enum Merge<'e> {
    Entries(Vec<Entry<'e>>),
    /// The index of the first event (in sequence order) whose id repeats.
    Duplicate(usize),
    Unsorted,
}

/// The old entries and the events' (rowids from `base + 1`), in key order.
fn merge<'e>(old: Vec<Entry<'static>>, events: &'e [Event], base: i64) -> Merge<'e> {
    if old.windows(2).any(|w| w[0].key >= w[1].key) {
        return Merge::Unsorted;
    }
    // Sorted by the first 16 bytes as a number (zero-padded: an order that
    // memcmp's refines), then by the whole id.
    let mut order: Vec<(u128, u32)> = events
        .par_iter()
        .enumerate()
        .map(|(i, ev)| {
            let id = ev.event_id.as_bytes();
            let mut prefix = [0u8; 16];
            let n = id.len().min(16);
            prefix[..n].copy_from_slice(&id[..n]);
            (u128::from_be_bytes(prefix), i as u32)
        })
        .collect();
    let id = |i: u32| events[i as usize].event_id.as_bytes();
    // Integers compare fast; the rare runs of equal prefixes are then put in
    // the order of the whole ids.
    order.par_sort_unstable();
    if order.par_windows(2).any(|w| w[0].0 == w[1].0) {
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && order[end].0 == order[start].0 {
                end += 1;
            }
            order[start..end].sort_unstable_by(|a, b| id(a.1).cmp(id(b.1)));
            start = end;
        }
    }
    let new: Vec<(&'e [u8], i64)> = order
        .into_iter()
        .map(|(_, i)| (id(i), base + 1 + i64::from(i)))
        .collect();
    let clash_within = new.windows(2).any(|w| w[0].0 == w[1].0);
    let clash_old = || {
        new.par_iter()
            .any(|(k, _)| old.binary_search_by(|e| e.key.as_ref().cmp(k)).is_ok())
    };
    if clash_within || clash_old() {
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            let id = ev.event_id.as_bytes();
            if !seen.insert(id) || old.binary_search_by(|e| e.key.as_ref().cmp(id)).is_ok() {
                return Merge::Duplicate(i);
            }
        }
    }
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut old = old.into_iter().peekable();
    for (k, rowid) in new {
        while let Some(o) = old.next_if(|o| o.key.as_ref() < k) {
            out.push(o);
        }
        out.push(Entry {
            key: Cow::Borrowed(k),
            rowid,
        });
    }
    out.extend(old);
    Merge::Entries(out)
}

// ---- Building pages ----------------------------------------------------

/// Writes cells (pointer array from `header`, content from the end of the
/// usable area down) and the page header fields common to all page types.
fn put_cells(page: &mut [u8], usable: usize, kind: u8, header: usize, cells: &[&[u8]]) {
    page[0] = kind;
    page[1..3].fill(0);
    page[3..5].copy_from_slice(&(cells.len() as u16).to_be_bytes());
    let mut top = usable;
    for (i, cell) in cells.iter().enumerate() {
        top -= cell.len();
        page[top..top + cell.len()].copy_from_slice(cell);
        page[header + 2 * i..header + 2 * i + 2].copy_from_slice(&(top as u16).to_be_bytes());
    }
    // 65536 is written as 0.
    page[5..7].copy_from_slice(&((top & 0xffff) as u16).to_be_bytes());
    page[7] = 0;
}

/// A table leaf of `rows` (rowid, item), each item's record `len` bytes long
/// and written by `encode`.
fn table_leaf<T>(
    page: &mut [u8],
    usable: usize,
    rows: impl Iterator<Item = (i64, T)>,
    len: impl Fn(&T) -> usize,
    encode: impl Fn(&mut [u8], &T),
) {
    page[0] = 0x0D;
    page[1..3].fill(0);
    page[7] = 0;
    let mut top = usable;
    let mut n = 0usize;
    for (rowid, item) in rows {
        let payload = len(&item);
        top -= varint_len(payload as u64) + varint_len(rowid as u64) + payload;
        let mut at = top;
        at += put_varint(&mut page[at..], payload as u64);
        at += put_varint(&mut page[at..], rowid as u64);
        encode(&mut page[at..at + payload], &item);
        page[8 + 2 * n..10 + 2 * n].copy_from_slice(&(top as u16).to_be_bytes());
        n += 1;
    }
    page[3..5].copy_from_slice(&(n as u16).to_be_bytes());
    page[5..7].copy_from_slice(&((top & 0xffff) as u16).to_be_bytes());
}

fn table_interior(page: &mut [u8], usable: usize, cells: &[(u32, i64)], right: u32) {
    let encoded: Vec<Vec<u8>> = cells
        .iter()
        .map(|(child, key)| {
            let mut c = vec![0u8; 4 + varint_len(*key as u64)];
            c[..4].copy_from_slice(&child.to_be_bytes());
            put_varint(&mut c[4..], *key as u64);
            c
        })
        .collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    put_cells(page, usable, 0x05, 12, &refs);
    page[8..12].copy_from_slice(&right.to_be_bytes());
}

fn index_leaf(page: &mut [u8], usable: usize, entries: &[Entry<'_>]) {
    page[0] = 0x0A;
    page[1..3].fill(0);
    page[7] = 0;
    let mut top = usable;
    let mut record = Vec::with_capacity(128);
    for (n, e) in entries.iter().enumerate() {
        record.clear();
        encode_index(&mut record, e);
        top -= varint_len(record.len() as u64) + record.len();
        let at = top + put_varint(&mut page[top..], record.len() as u64);
        page[at..at + record.len()].copy_from_slice(&record);
        page[8 + 2 * n..10 + 2 * n].copy_from_slice(&(top as u16).to_be_bytes());
    }
    page[3..5].copy_from_slice(&(entries.len() as u16).to_be_bytes());
    page[5..7].copy_from_slice(&((top & 0xffff) as u16).to_be_bytes());
}

fn index_interior(page: &mut [u8], usable: usize, cells: &[(u32, &Entry<'_>)], right: u32) {
    let encoded: Vec<Vec<u8>> = cells
        .iter()
        .map(|(child, e)| {
            let mut c = child.to_be_bytes().to_vec();
            let mut record = Vec::with_capacity(64);
            encode_index(&mut record, e);
            push_varint(&mut c, record.len() as u64);
            c.extend_from_slice(&record);
            c
        })
        .collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    put_cells(page, usable, 0x02, 12, &refs);
    page[8..12].copy_from_slice(&right.to_be_bytes());
}

// ---- Records -----------------------------------------------------------

/// The serial type of an integer and the bytes of its body: the smallest
/// width, as SQLite's record encoder chooses it, except that 0 and 1 take a
/// byte (types 8 and 9 need schema format 4, which is not checked).
fn int_serial(v: i64) -> (u64, usize) {
    let u = if v < 0 { !v as u64 } else { v as u64 };
    match u {
        0..=127 => (1, 1),
        128..=32_767 => (2, 2),
        32_768..=8_388_607 => (3, 3),
        8_388_608..=2_147_483_647 => (4, 4),
        2_147_483_648..=0x7fff_ffff_ffff => (5, 6),
        _ => (6, 8),
    }
}

fn text_serial(s: &[u8]) -> u64 {
    2 * s.len() as u64 + 13
}

/// The length of a record header holding serial types of total length `types`.
fn header_len(types: usize) -> usize {
    let mut h = types + 1;
    while varint_len(h as u64) + types != h {
        h = varint_len(h as u64) + types;
    }
    h
}

fn row_texts(ev: &Event) -> [&[u8]; 5] {
    [
        ev.event_id.as_bytes(),
        ev.event_type.as_bytes(),
        ev.aggregate_id.as_bytes(),
        ev.event_data.as_bytes(),
        ev.created_at.as_bytes(),
    ]
}

fn row_payload_len(ev: &Event) -> usize {
    let texts = row_texts(ev);
    let (seq_type, seq_len) = int_serial(ev.sequence_number);
    let types: usize = texts
        .iter()
        .map(|t| varint_len(text_serial(t)))
        .sum::<usize>()
        + varint_len(seq_type);
    header_len(types) + texts.iter().map(|t| t.len()).sum::<usize>() + seq_len
}

/// The record of an `events` row, in column order, into `out` (exactly
/// [`row_payload_len`] bytes).
fn encode_row(out: &mut [u8], ev: &Event) {
    let [id, ty, agg, data, at] = row_texts(ev);
    let (seq_type, seq_len) = int_serial(ev.sequence_number);
    let serials = [
        text_serial(id),
        text_serial(ty),
        text_serial(agg),
        text_serial(data),
        seq_type,
        text_serial(at),
    ];
    let types: usize = serials.iter().map(|s| varint_len(*s)).sum();
    let mut pos = put_varint(out, header_len(types) as u64);
    for s in serials {
        pos += put_varint(&mut out[pos..], s);
    }
    for t in [id, ty, agg, data] {
        out[pos..pos + t.len()].copy_from_slice(t);
        pos += t.len();
    }
    out[pos..pos + seq_len].copy_from_slice(&ev.sequence_number.to_be_bytes()[8 - seq_len..]);
    pos += seq_len;
    out[pos..pos + at.len()].copy_from_slice(at);
}

fn index_payload_len(e: &Entry<'_>) -> usize {
    let (t, len) = int_serial(e.rowid);
    let types = varint_len(text_serial(&e.key)) + varint_len(t);
    header_len(types) + e.key.len() + len
}

fn encode_index(out: &mut Vec<u8>, e: &Entry<'_>) {
    let (t, len) = int_serial(e.rowid);
    let key_type = text_serial(&e.key);
    push_varint(out, header_len(varint_len(key_type) + varint_len(t)) as u64);
    push_varint(out, key_type);
    push_varint(out, t);
    out.extend_from_slice(&e.key);
    out.extend_from_slice(&e.rowid.to_be_bytes()[8 - len..]);
}

/// The largest index payload kept on its page (the file format's X for
/// index b-trees).
fn index_max_local(usable: usize) -> usize {
    (usable - 12) * 64 / 255 - 23
}

// ---- Integers ----------------------------------------------------------

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn varint_len(v: u64) -> usize {
    if v > 0x00ff_ffff_ffff_ffff {
        9
    } else {
        ((64 - v.leading_zeros() as usize).div_ceil(7)).max(1)
    }
}

/// Writes SQLite's varint of `v` at the start of `out`; returns its length.
fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let n = varint_len(v);
    if n == 9 {
        out[8] = v as u8;
        v >>= 8;
        for i in (0..8).rev() {
            out[i] = (v & 0x7f) as u8 | 0x80;
            v >>= 7;
        }
        return 9;
    }
    for i in (0..n).rev() {
        out[i] = (v & 0x7f) as u8 | if i == n - 1 { 0 } else { 0x80 };
        v >>= 7;
    }
    n
}

fn push_varint(out: &mut Vec<u8>, v: u64) {
    let mut b = [0u8; 9];
    let n = put_varint(&mut b, v);
    out.extend_from_slice(&b[..n]);
}

/// SQLite's varint at the start of `b`: value and length.
fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..8 {
        let byte = *b.get(i)?;
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    Some(((v << 8) | u64::from(*b.get(8)?), 9))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::replay::{dump, replay, ReplayOptions};
    use rusqlite::Connection;
    use std::cell::RefCell;

    thread_local! {
        /// What the direct writes of this thread did (replay runs them on
        /// the calling thread).
        pub(super) static WRITTEN: RefCell<Vec<Outcome>> = const { RefCell::new(Vec::new()) };
        /// Makes [`prepare`] and [`append_table`] decline.
        pub(crate) static DECLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// The old index pages the last rebuild put on the freelist.
        pub(super) static FREED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn written() -> Vec<Outcome> {
        WRITTEN.with(|w| std::mem::take(&mut *w.borrow_mut()))
    }

    fn staged(dir: &Path, name: &str, page_size: u32) -> Connection {
        let conn = Connection::open(dir.join(name)).unwrap();
        conn.execute_batch(&format!("PRAGMA page_size={page_size}"))
            .unwrap();
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        crate::schema::ensure_schema(&conn).unwrap();
        conn
    }

    fn direct() -> ReplayOptions {
        ReplayOptions {
            staging: true,
            direct_pages_from: 1,
            ..ReplayOptions::default()
        }
    }

    fn check(conn: &Connection) -> (String, i64) {
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        (ok, free)
    }

    /// One part of 1 event (the leaf is the root), then a part onto a root
    /// leaf with rows, parts that rebuild the index with entries already in
    /// it, and a part smaller than the table (rows only).
    #[test]
    fn replays_in_parts_equal_sqlites_own_for_several_page_sizes() {
        let events = crate::simulate::random_events(11, 6000);
        let dir = tempfile::tempdir().unwrap();
        let mut expected = staged(dir.path(), "expected.db", 4096);
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        let expected = dump(&expected);
        for page_size in [1024, 4096, 65536] {
            let mut conn = staged(dir.path(), &format!("direct-{page_size}.db"), page_size);
            written();
            let cuts = [0, 1, 40, 2000, 2100, 6000];
            for w in cuts.windows(2) {
                replay(&mut conn, &events[w[0]..w[1]], &direct()).unwrap();
                assert_eq!(check(&conn).0, "ok", "page size {page_size}, part {w:?}");
            }
            let mut kinds: Vec<&str> = written()
                .iter()
                .map(|o| match o {
                    Outcome::Done => "done",
                    Outcome::RowsOnly => "rows only",
                    Outcome::Declined(_) => "declined",
                })
                .collect();
            kinds.dedup();
            assert_eq!(
                kinds,
                ["done", "rows only", "done"],
                "page size {page_size}"
            );
            assert_eq!(dump(&conn), expected, "page size {page_size}");
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }

    #[test]
    fn a_deep_table_takes_new_leaves_along_its_rightmost_path() {
        // 1024-byte pages and ~3 rows per leaf: the first part builds a
        // three-level table through SQLite, the second appends to it.
        let events = crate::simulate::random_events(12, 9000);
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "deep.db", 1024);
        replay(&mut conn, &events[..8000], &ReplayOptions::default()).unwrap();
        let depth_before = depth(&conn);
        assert!(depth_before >= 3, "{depth_before}");
        replay(&mut conn, &events[8000..], &direct()).unwrap();
        assert_eq!(written(), [Outcome::RowsOnly]);
        assert_eq!(check(&conn).0, "ok");
        let mut expected = staged(dir.path(), "expected.db", 1024);
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        assert_eq!(dump(&conn), dump(&expected));
    }

    /// The depth of the events table's b-tree, read from the file.
    fn depth(conn: &Connection) -> usize {
        let root: u32 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let path = conn.path().unwrap().to_string();
        let _: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .unwrap();
        let db = Db::open(Path::new(&path)).unwrap().unwrap();
        let n = rightmost_path(&db, root).unwrap().unwrap().len();
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        n
    }

    #[test]
    fn the_old_index_pages_go_to_the_freelist() {
        // Long ids make the old index many pages; the rebuild writes the
        // index on new pages and frees the old ones.
        let events = crate::simulate::random_events(13, 700);
        let mut long = events[..300].to_vec();
        for ev in &mut long {
            ev.event_id = format!("{}-{}", ev.event_id, "x".repeat(300));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "free.db", 4096);
        replay(&mut conn, &long, &ReplayOptions::default()).unwrap();
        let (_, free_before) = check(&conn);
        replay(&mut conn, &events[300..], &direct()).unwrap();
        assert_eq!(written(), [Outcome::Done]);
        let freed = FREED.with(std::cell::Cell::get);
        assert!(freed > 20, "{freed}");
        let (ok, free_after) = check(&conn);
        assert_eq!(ok, "ok");
        assert!(free_after > free_before, "{free_before} -> {free_after}");
        let mut expected = staged(dir.path(), "expected.db", 4096);
        replay(&mut expected, &long, &ReplayOptions::default()).unwrap();
        replay(&mut expected, &events[300..], &ReplayOptions::default()).unwrap();
        assert_eq!(dump(&conn), dump(&expected));
        // SQLite takes the freed pages again.
        conn.execute_batch("CREATE TABLE extra(x); INSERT INTO extra VALUES (randomblob(20000));")
            .unwrap();
        assert!(check(&conn).1 < free_after);
        assert_eq!(check(&conn).0, "ok");
    }

    #[test]
    fn duplicate_ids_are_found_before_anything_is_written() {
        let events = crate::simulate::random_events(15, 600);
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "dup.db", 4096);
        replay(&mut conn, &events[..100], &direct()).unwrap();
        written();
        // Within the replay: the later of the two is named.
        let mut within = events[100..].to_vec();
        within[250].event_id = within[30].event_id.clone();
        let err = replay(&mut conn, &within, &direct())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("event #{} (", within[250].sequence_number))
                && err.contains("UNIQUE constraint failed: events.event_id"),
            "{err}"
        );
        // With the database: the first such event is named.
        let mut with_db = events[100..].to_vec();
        with_db[7].event_id = events[3].event_id.clone();
        let err = replay(&mut conn, &with_db, &direct())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("event #{} (", with_db[7].sequence_number)),
            "{err}"
        );
        assert!(written().is_empty(), "nothing is written");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100);
        assert_eq!(check(&conn).0, "ok");
    }

    #[test]
    fn a_row_that_needs_overflow_pages_is_written_by_sqlite() {
        let mut events = crate::simulate::random_events(16, 300);
        let big = format!("{{\"note\": \"{}\"}}", "y".repeat(5000));
        let i = events
            .iter()
            .position(|e| {
                !crate::effects::is_known(&e.event_type) || e.event_type == "SYSTEM_STARTED"
            })
            .unwrap_or(0);
        events[i].event_type = "NOTE_FROM_TEST".into();
        events[i].event_data = big;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = staged(dir.path(), "big.db", 4096);
        let report = replay(&mut conn, &events, &direct()).unwrap();
        assert_eq!(report.unknown["NOTE_FROM_TEST"].count, 1);
        assert!(matches!(written().as_slice(), [Outcome::Declined(r)] if r.contains("overflow")));
        assert_eq!(check(&conn).0, "ok");
        let mut expected = staged(dir.path(), "expected.db", 4096);
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        assert_eq!(dump(&conn), dump(&expected));
    }

    #[test]
    fn a_declined_write_puts_the_rows_in_through_sqlite() {
        let events = crate::simulate::random_events(17, 3000);
        let dir = tempfile::tempdir().unwrap();
        let mut expected = staged(dir.path(), "expected.db", 4096);
        replay(&mut expected, &events, &ReplayOptions::default()).unwrap();
        let mut conn = staged(dir.path(), "declined.db", 4096);
        DECLINE.with(|d| d.set(true));
        // Onto an empty table (index rebuilt), then onto a larger one (index
        // entries through SQLite already).
        replay(&mut conn, &events[..2000], &direct()).unwrap();
        replay(&mut conn, &events[2000..], &direct()).unwrap();
        DECLINE.with(|d| d.set(false));
        assert_eq!(written().len(), 2);
        assert_eq!(check(&conn).0, "ok");
        assert_eq!(dump(&conn), dump(&expected));
    }

    #[test]
    fn new_pages_skip_the_lock_byte_page() {
        let mut alloc = Alloc {
            next: 20,
            pending: 21,
        };
        let taken: Vec<u32> = (0..3).map(|_| alloc.take()).collect();
        assert_eq!(taken, [20, 22, 23]);
        assert_eq!(alloc.next - 1, 23);
    }

    #[test]
    fn levels_split_into_pages_that_each_hold_a_cell() {
        // Promotion: no group is empty, and the items promoted between
        // groups are exactly the ones no group holds.
        for n in 1..60 {
            // Rooms for at least four of the largest items, as pages are.
            for room in [44, 60, 100] {
                let sizes: Vec<usize> = (0..n).map(|i| 5 + i % 7).collect();
                let groups = split_promoting(&sizes, room);
                let mut held = 0;
                for (i, g) in groups.iter().enumerate() {
                    assert!(!g.is_empty(), "{n} {room} {groups:?}");
                    assert!(g.clone().map(|j| sizes[j]).sum::<usize>() <= room);
                    held += g.len();
                    if i + 1 < groups.len() {
                        assert_eq!(groups[i + 1].start, g.end + 1);
                    }
                }
                assert_eq!(held + groups.len() - 1, n);
            }
        }
        // Table interior pages: at least two children each.
        for n in 2..80 {
            let children: Vec<(u32, i64)> = (0..n).map(|i| (i, i64::from(i))).collect();
            let groups = split_children(&children, 40);
            assert!(groups.len() > 1 || n < 8, "{n} {groups:?}");
            assert!(groups.iter().all(|g| g.len() >= 2), "{n} {groups:?}");
            assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), n as usize);
        }
    }

    #[test]
    fn varints_and_integers_are_encoded_as_sqlite_does() {
        for v in [
            0u64,
            1,
            127,
            128,
            16383,
            16384,
            1 << 40,
            u64::MAX >> 8,
            (u64::MAX >> 8) + 1,
            u64::MAX,
        ] {
            let mut b = [0u8; 9];
            let n = put_varint(&mut b, v);
            assert_eq!(n, varint_len(v));
            assert_eq!(read_varint(&b[..n]), Some((v, n)), "{v}");
        }
        for v in [
            0i64,
            1,
            2,
            -1,
            127,
            128,
            -129,
            32767,
            40000,
            -8388609,
            1 << 31,
            1 << 47,
            i64::MIN,
            i64::MAX,
        ] {
            let e = Entry {
                key: Cow::Borrowed(b"k"),
                rowid: v,
            };
            let mut ours = Vec::new();
            encode_index(&mut ours, &e);
            assert_eq!(ours.len(), index_payload_len(&e));
            // Header: its length, text of length 1, the integer's type.
            let (t, len) = int_serial(v);
            assert_eq!(&ours[..4], &[3, 15, t as u8, b'k']);
            let body = &ours[4..];
            assert_eq!(body.len(), len);
            let mut back: i64 = if body[0] & 0x80 != 0 { -1 } else { 0 };
            for b in body {
                back = (back << 8) | i64::from(*b);
            }
            assert_eq!(back, v);
            // The smallest width that holds it.
            let fits =
                |w: usize| w == 8 || (-(1i64 << (8 * w - 1))..(1i64 << (8 * w - 1))).contains(&v);
            let smallest = [1usize, 2, 3, 4, 6, 8].into_iter().find(|w| fits(*w));
            assert_eq!(Some(len), smallest, "{v}");
        }
    }
}
