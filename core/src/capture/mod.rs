//! Capture: snapshots, continuous WAL replication and the event archive
//! (DESIGN.md §3).
//!
//! The capturer always holds an open read transaction on the database. While
//! a reader holds a read mark above zero SQLite cannot restart the WAL, and a
//! reader holding mark 0 blocks every backfill (SQLite `src/wal.c`:
//! `walRestartLog`, `walCheckpoint`, `walTryBeginRead`). A mark-0 reader does
//! not block a restart, so frames that existed uncopied when its read began
//! are not protected: continuity is proven by a copy to the WAL's end under a
//! read begun before it (see `continuous`). Each step copies the
//! valid committed frames after its position, ships them as a segment, then
//! opens a new read transaction on its second connection *before* ending the
//! old one. When the WAL grows past a limit it checkpoints itself under the
//! write lock (see [`Capturer::step`]). Whatever it cannot prove continuous
//! starts a new generation with a fresh snapshot.
//!
//! Snapshots are read directly from the database file overlaid with the WAL
//! frames up to the capture position, under a read transaction opened before
//! that position was read: the checkpointer can then only write pages that
//! the overlay replaces, so the image is exactly the database at that txid.

mod aside;
mod check;
mod events;
pub mod metrics;
mod run;
mod ship;
mod shm;
mod snapshot;
pub mod source;
mod state;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use rusqlite::{Connection, OpenFlags};
use tracing::{info, warn};

use crate::checksum::{page_hash, PageHashes};
use crate::error::{Error, Result};
use crate::lock::{sibling, LockFile};
use crate::repo::formats::{self, EventRow, SegmentTxnOwned, SNAPSHOT_FRAME_PAGES};
use crate::repo::{
    checksum_hex, new_generation_id, FrameEntry, Manifest, ObjectKind, Repository, TxnEntry,
    WalPosition, FORMAT_VERSION,
};
use crate::wal::{self, WalRead, WalState};

pub use metrics::CaptureMetrics;
pub use run::{
    backup_full, backup_sync, replicate, FullBackupResult, ReplicateOptions, ReplicateSummary,
};
pub use state::SavedState;

/// How a capturer runs.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The database to capture.
    pub db: PathBuf,
    /// Switch a rollback-journal database to WAL instead of refusing it.
    pub enable_wal: bool,
    /// Take a snapshot when the last one is older than this.
    pub snapshot_interval: Option<Duration>,
    /// Checkpoint the WAL when it holds more frames than this.
    pub checkpoint_frames: u32,
    /// Most event rows archived per object.
    pub events_per_object: usize,
}

impl CaptureOptions {
    /// Defaults for a database path.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        CaptureOptions {
            db: db.into(),
            enable_wal: false,
            snapshot_interval: Some(Duration::from_secs(24 * 3600)),
            checkpoint_frames: 1000,
            events_per_object: 100_000,
        }
    }
}

/// What one capture step did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepReport {
    /// Transactions shipped.
    pub txns: u64,
    /// Pages shipped.
    pub pages: u64,
    /// The txid range shipped.
    pub txid_min: Option<u64>,
    pub txid_max: Option<u64>,
    /// Segment objects written.
    pub segments: Vec<String>,
    /// Event rows archived, and the object.
    pub events: u64,
    pub event_objects: Vec<String>,
    /// Snapshot written, if any.
    pub snapshot: Option<String>,
    /// A snapshot was due but one of this txid exists (nothing was committed
    /// since): its id.
    pub snapshot_existing: Option<String>,
    /// A new generation started, and why.
    pub new_generation: Option<String>,
    /// Whether the capturer checkpointed the WAL.
    pub checkpointed: bool,
}

impl StepReport {
    /// Adds another step's report to this one.
    pub fn absorb(&mut self, other: StepReport) {
        self.txns += other.txns;
        self.pages += other.pages;
        self.txid_min = self.txid_min.or(other.txid_min);
        self.txid_max = other.txid_max.or(self.txid_max);
        self.segments.extend(other.segments);
        self.events += other.events;
        self.event_objects.extend(other.event_objects);
        self.snapshot = other.snapshot.or(self.snapshot.take());
        self.snapshot_existing = other.snapshot_existing.or(self.snapshot_existing.take());
        self.new_generation = other.new_generation.or(self.new_generation.take());
        self.checkpointed |= other.checkpointed;
    }
}

/// The state of the generation being captured.
#[derive(Debug, Clone)]
struct GenState {
    id: String,
    page_size: u32,
    /// Txid of the last shipped commit (or of the generation's snapshot).
    last_txid: u64,
    last_time: DateTime<Utc>,
    hashes: PageHashes,
    wal: WalPosition,
    /// The pages the current WAL holds up to `wal`, each at the offset of its
    /// newest frame: what the database is made of besides its file, for the
    /// sampled check of the chain against the source.
    wal_pages: HashMap<u32, u64>,
    /// Largest event sequence number archived (or present in the base snapshot).
    last_seq: i64,
    /// Rowid of the last `events` row read: the archive reads forward in
    /// rowid order (the table has no index on sequence_number, and events are
    /// appended in sequence order), so each step costs O(new rows).
    last_event_rowid: i64,
    /// Digest of the row at `last_event_rowid` as it was read: checked
    /// against the live table at every step.
    last_event_digest: Option<[u8; 32]>,
    last_snapshot_at: DateTime<Utc>,
    /// The generation's newest snapshot: when the repository loses it, the
    /// chain has no base.
    base_snapshot: String,
}

impl GenState {
    /// The txid of the generation's newest snapshot (0 when unknown).
    fn base_txid(&self) -> u64 {
        self.base_snapshot
            .rsplit('_')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }
}

/// A running capturer holding the database's capture lock.
pub struct Capturer {
    opts: CaptureOptions,
    repo: Repository,
    _lock: LockFile,
    readers: [Connection; 2],
    active: usize,
    writer: Connection,
    checkpointer: Connection,
    identity: (u64, u64),
    gen: GenState,
    /// True when no committed frame after `gen.wal` can have been lost to a
    /// WAL restart: a read transaction has been held since before `gen.wal`
    /// was last advanced to the WAL's end. (A held read transaction alone is
    /// not enough: a reader on read mark 0 does not block a restart, so frames
    /// committed before it began and not yet copied are not protected. This
    /// is why a resumed generation is not continuous until its first copy.)
    continuous: bool,
    /// Set when the capturer held no read for a checkpointer of another
    /// process since its position was last advanced (see `aside`): the
    /// next restarted WAL must then be the position's, restarted once.
    stood_aside: bool,
    has_events: bool,
    /// Report of what `open` did (a new generation, a snapshot).
    opened: StepReport,
    /// Set when a new generation's snapshot failed: the next step starts again.
    poisoned: Option<String>,
    metrics: Arc<CaptureMetrics>,
    /// Steps taken, for choosing sampled pages.
    steps: u64,
    /// The last txid at which the sampled check of the chain passed.
    last_good_check: u64,
    /// Sees the application's checkpointer in the `-shm` file's locks. Kept
    /// open like `db_file`, for the same reason (closing a descriptor of the
    /// `-shm` file would drop SQLite's read-mark locks of this process).
    shm: shm::ShmProbe,
    /// The database file, opened once and kept for the capturer's lifetime:
    /// closing any descriptor of it would drop SQLite's locks of this
    /// process (POSIX lock semantics), letting the application's last close
    /// checkpoint and delete a WAL we have not copied. Declared last so that
    /// it is closed after the connections.
    db_file: File,
}

/// The lock file of the capturer of a database.
pub fn capture_lock_path(db: &Path) -> PathBuf {
    sibling(db, "-genesis-capture.lock")
}

/// The file a `backup full` leaves for a running capturer to take a snapshot.
pub fn snapshot_request_path(db: &Path) -> PathBuf {
    sibling(db, "-genesis-snapshot-request")
}

fn open_conn(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open", db, e))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(|e| Error::sqlite("configure", db, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| Error::sqlite("configure", db, e))?;
    Ok(conn)
}

fn begin_read(conn: &Connection, db: &Path) -> Result<()> {
    conn.execute_batch("BEGIN DEFERRED")
        .map_err(|e| Error::sqlite("begin read transaction", db, e))?;
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(Error::sqlite("start read transaction", db, e));
    }
    Ok(())
}

fn end_read(conn: &Connection, db: &Path) -> Result<()> {
    conn.execute_batch("COMMIT")
        .map_err(|e| Error::sqlite("end read transaction", db, e))
}

fn has_events_table(conn: &Connection, db: &Path) -> Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type='table' AND name='events'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(|e| Error::sqlite("read schema", db, e))
}

/// The (rowid, sequence_number) of the last event row, (0, 0) when none:
/// read from the end of the rowid b-tree, without scanning the table.
fn last_event_position(conn: &Connection, db: &Path) -> Result<(i64, i64)> {
    match conn.query_row(
        "SELECT rowid, sequence_number FROM events ORDER BY rowid DESC LIMIT 1",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?.unwrap_or(0),
            ))
        },
    ) {
        Ok(p) => Ok(p),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok((0, 0)),
        Err(e) => Err(Error::sqlite("read events", db, e)),
    }
}

impl Capturer {
    /// Opens the capturer: checks the database, takes the capture lock, holds
    /// a read transaction, and resumes the saved generation when continuity
    /// can be proven, or starts a new generation with a snapshot.
    ///
    /// # Errors
    /// `Error::Usage` for a missing, foreign or rollback-journal database;
    /// `Error::Locked` when another capturer runs; repository failures.
    pub fn open(opts: CaptureOptions, repo: Repository) -> Result<Capturer> {
        let header = source::ensure_wal(&opts.db, opts.enable_wal)?;
        let db_file = source::open_db_file(&opts.db)?;
        let lock = LockFile::try_acquire(
            &capture_lock_path(&opts.db),
            &format!("capturer of {}", opts.db.display()),
        )?;
        let readers = [open_conn(&opts.db)?, open_conn(&opts.db)?];
        let writer = open_conn(&opts.db)?;
        let checkpointer = open_conn(&opts.db)?;
        let identity = source::file_identity(&opts.db)?;
        begin_read(&readers[0], &opts.db)?;
        let has_events = has_events_table(&readers[0], &opts.db)?;
        let shm = shm::ShmProbe::open(&opts.db);
        let placeholder = GenState {
            id: String::new(),
            page_size: header.page_size,
            last_txid: 0,
            last_time: Utc::now(),
            hashes: PageHashes::new(header.page_size as usize),
            wal: WalPosition::default(),
            wal_pages: HashMap::new(),
            last_seq: 0,
            last_event_rowid: 0,
            last_event_digest: None,
            last_snapshot_at: Utc::now(),
            base_snapshot: String::new(),
        };
        let mut cap = Capturer {
            opts,
            repo,
            _lock: lock,
            readers,
            active: 0,
            writer,
            checkpointer,
            identity,
            gen: placeholder,
            continuous: false,
            stood_aside: false,
            has_events,
            opened: StepReport::default(),
            poisoned: None,
            metrics: CaptureMetrics::new(),
            steps: 0,
            last_good_check: 0,
            shm,
            db_file,
        };
        match cap.try_resume()? {
            Some((g, proven)) => {
                info!(generation = %g.id, txid = g.last_txid, "resuming capture");
                cap.metrics.committed(g.last_txid, g.last_time);
                cap.gen = g;
                cap.continuous = proven;
            }
            None => {
                let report = cap.new_generation(
                    "no saved capture state could be proven continuous with the database",
                )?;
                cap.opened = report;
            }
        }
        Ok(cap)
    }

    /// What `open` did (a new generation and its snapshot, or nothing).
    pub fn opened(&self) -> &StepReport {
        &self.opened
    }

    /// The generation being captured.
    pub fn generation(&self) -> &str {
        &self.gen.id
    }

    /// The last shipped txid.
    pub fn last_txid(&self) -> u64 {
        self.gen.last_txid
    }

    /// The capturer's metrics (shared: serve them from another thread).
    pub fn metrics(&self) -> Arc<CaptureMetrics> {
        self.metrics.clone()
    }

    /// The current database checksum (hex).
    pub fn checksum(&self) -> String {
        checksum_hex(self.gen.hashes.checksum())
    }

    fn db(&self) -> &Path {
        &self.opts.db
    }

    /// The saved generation, when the database is provably the one it left
    /// (same file, same WAL or none), and whether continuity is already
    /// proven: with no WAL, or no commit after the saved position; otherwise
    /// the frames after it still have to be copied before a restart is
    /// lossless.
    fn try_resume(&mut self) -> Result<Option<(GenState, bool)>> {
        let saved = match SavedState::load(&self.repo)? {
            Some(s) => s,
            None => return Ok(None),
        };
        let catalog = self.repo.catalog()?;
        let why_not = |why: &str| {
            info!("not resuming generation {}: {why}", saved.generation);
            Ok(None)
        };
        if saved.identity != self.identity {
            return why_not("the database file was replaced");
        }
        if saved.page_size != self.gen.page_size {
            return why_not("the page size changed");
        }
        let latest = catalog
            .generation(&saved.generation)
            .and_then(|g| g.restore_points().last().cloned());
        match latest {
            Some(p)
                if p.txid == saved.last_txid && p.checksum == checksum_hex(saved.checksum()) => {}
            _ => {
                return why_not(
                    "the repository's last restore point does not match the saved state",
                )
            }
        }
        if catalog.max_txid() != saved.last_txid {
            return why_not("the repository holds newer txids than the saved state");
        }
        let mut wal_pages = HashMap::new();
        let proven = match wal::read_wal(&wal::wal_path(self.db()), Some(&saved.wal))? {
            // No commit after the saved position: nothing uncopied existed
            // when the read transaction began (a frame can only vanish with a
            // restart, which changes the salts), and frames appended since
            // cannot be checkpointed past that read, so none can be lost.
            WalState::Continues(r) if r.txns.is_empty() => {
                wal_pages = self.wal_pages_upto(saved.wal.frame)?;
                true
            }
            WalState::Continues(_) => {
                wal_pages = self.wal_pages_upto(saved.wal.frame)?;
                false
            }
            WalState::Empty => {
                // The WAL was checkpointed and removed; the database file must
                // then hold exactly the saved state.
                let h = source::header_of(&self.db_file, self.db())?;
                let hashes = self.scan_pages(&HashMap::new(), h.pages, None)?.0;
                if hashes.checksum() != saved.checksum() {
                    return why_not(
                        "the WAL is gone and the database differs from the saved state",
                    );
                }
                true
            }
            WalState::Restarted(_) => {
                return why_not("the WAL was restarted while no capturer held it")
            }
        };
        let mut last_event_digest = None;
        if self.has_events && saved.last_event_rowid > 0 {
            let live = self.live_event_at(saved.last_event_rowid)?;
            let archived = self.archived_tail(&catalog)?;
            match (&live, archived) {
                (Some(e), Some((seq, digest)))
                    if e.sequence_number == seq && events::event_digest(e) != digest =>
                {
                    return why_not("the last archived event was rewritten in the live table");
                }
                (None, _) => {
                    return why_not("the last archived event was deleted from the live table")
                }
                _ => {}
            }
            last_event_digest = live.as_ref().map(events::event_digest);
        }
        let base_snapshot = catalog
            .generation(&saved.generation)
            .and_then(|g| g.snapshots.last().map(|s| s.id.clone()))
            .unwrap_or_default();
        let last_time = catalog
            .generation(&saved.generation)
            .and_then(|g| g.restore_points().last().map(|p| p.time))
            .unwrap_or_else(Utc::now);
        let last_snapshot_at = catalog
            .generation(&saved.generation)
            .and_then(|g| g.snapshots.last().map(|s| s.created_at))
            .unwrap_or_else(Utc::now);
        Ok(Some((
            GenState {
                id: saved.generation.clone(),
                page_size: saved.page_size,
                last_txid: saved.last_txid,
                last_time,
                hashes: saved.hashes(),
                wal: saved.wal,
                wal_pages,
                last_seq: saved.last_seq,
                last_event_rowid: saved.last_event_rowid,
                last_event_digest,
                last_snapshot_at,
                base_snapshot,
            },
            proven,
        )))
    }

    /// Reads the WAL after the capture position and ships what is committed.
    /// Returns `None` (after starting a new generation) when continuity is lost.
    fn copy_new_frames(&mut self) -> Result<std::result::Result<StepReport, StepReport>> {
        if source::file_identity(self.db())? != self.identity {
            return Ok(Err(
                self.restart_generation("the database file was replaced")?
            ));
        }
        let wal_path = wal::wal_path(self.db());
        let seen_a_wal = self.gen.wal.salt1 != 0 || self.gen.wal.salt2 != 0;
        if seen_a_wal && !wal_path.exists() {
            // A WAL that vanished was checkpointed and deleted by a last
            // close, which our locks should have prevented: what it held
            // cannot be proven captured.
            return Ok(Err(self.restart_generation(
                "the WAL file disappeared (checkpointed and deleted by another process)",
            )?));
        }
        match wal::read_wal(&wal_path, Some(&self.gen.wal))? {
            WalState::Empty => {
                // A WAL is emptied only after every frame was checkpointed:
                // the database file alone holds the pages again.
                self.gen.wal_pages.clear();
                Ok(Ok(StepReport::default()))
            }
            WalState::Continues(r) => {
                if r.header.page_size != self.gen.page_size {
                    return Ok(Err(self.restart_generation("the page size changed")?));
                }
                let report = self.ship(&r)?;
                // Everything up to the WAL's end is copied, under a read
                // transaction begun before the copy.
                self.continuous = true;
                self.stood_aside = false;
                Ok(Ok(report))
            }
            WalState::Restarted(r) => {
                if !self.continuous {
                    return Ok(Err(self.restart_generation(
                        "the WAL was restarted while continuity was not held",
                    )?));
                }
                if !self.restart_follows(&r.header) {
                    return Ok(Err(self.restart_generation(
                        "the WAL was restarted more than once while the capturer stood aside \
                         for a checkpointer",
                    )?));
                }
                if r.header.page_size != self.gen.page_size {
                    return Ok(Err(self.restart_generation("the page size changed")?));
                }
                let report = self.ship(&r)?;
                self.stood_aside = false;
                Ok(Ok(report))
            }
        }
    }

    /// The pages the WAL's frames up to `frame` hold, each at the offset of
    /// its newest frame.
    fn wal_pages_upto(&self, frame: u32) -> Result<HashMap<u32, u64>> {
        if frame == 0 {
            return Ok(HashMap::new());
        }
        Ok(
            match wal::read_wal_upto(&wal::wal_path(self.db()), frame)? {
                WalState::Continues(r) | WalState::Restarted(r) => newest_frames(&r),
                WalState::Empty => HashMap::new(),
            },
        )
    }

    /// Sets the WAL size gauge.
    fn note_wal_size(&self) {
        let len = std::fs::metadata(wal::wal_path(self.db()))
            .map(|m| m.len())
            .unwrap_or(0);
        self.metrics.wal_size(len);
    }

    fn restart_generation(&mut self, why: &str) -> Result<StepReport> {
        // Reopen everything against the current file and re-hold a read
        // transaction. Every connection to the database is closed before the
        // old file handles are: closing a descriptor drops all of this
        // process's POSIX locks on the file, the new connections' included,
        // so the handles are replaced while no connection is open.
        let _ = end_read(&self.readers[self.active], &self.opts.db);
        let closed =
            || Connection::open_in_memory().map_err(|e| Error::sqlite("open", ":memory:", e));
        self.readers = [closed()?, closed()?];
        self.writer = closed()?;
        self.checkpointer = closed()?;
        self.db_file = source::open_db_file(&self.opts.db)?;
        self.shm = shm::ShmProbe::open(&self.opts.db);
        self.identity = source::file_identity(&self.opts.db)?;
        self.readers = [open_conn(&self.opts.db)?, open_conn(&self.opts.db)?];
        self.writer = open_conn(&self.opts.db)?;
        self.checkpointer = open_conn(&self.opts.db)?;
        self.active = 0;
        self.stood_aside = false;
        begin_read(&self.readers[0], &self.opts.db)?;
        self.has_events = has_events_table(&self.readers[0], &self.opts.db)?;
        self.new_generation(why)
    }

    /// Moves the held read transaction forward: opens the new one on the other
    /// connection before ending the old.
    fn roll_read(&mut self) -> Result<()> {
        let other = 1 - self.active;
        begin_read(&self.readers[other], &self.opts.db)?;
        // The old one may hold no transaction after a failed step.
        if !self.readers[self.active].is_autocommit() {
            if let Err(e) = end_read(&self.readers[self.active], &self.opts.db) {
                let _ = end_read(&self.readers[other], &self.opts.db);
                self.continuous = false;
                return Err(e);
            }
        }
        self.active = other;
        Ok(())
    }

    /// Checkpoints under the write lock (DESIGN.md §3 step 3). Returns the
    /// segment shipped while holding the lock. When the lock cannot be had
    /// quickly, it only rolls the read transaction.
    fn checkpoint(&mut self) -> Result<StepReport> {
        let db = self.opts.db.clone();
        self.writer
            .busy_timeout(Duration::from_millis(200))
            .map_err(|e| Error::sqlite("configure", &db, e))?;
        let got = self.writer.execute_batch("BEGIN IMMEDIATE");
        self.writer
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| Error::sqlite("configure", &db, e))?;
        if got.is_err() {
            self.roll_read()?;
            return Ok(StepReport::default());
        }
        let result = (|| -> Result<StepReport> {
            let mut report = match self.copy_new_frames()? {
                Ok(r) => r,
                Err(r) => return Ok(r),
            };
            end_read(&self.readers[self.active], &db)?;
            self.continuous = false;
            let ck: std::result::Result<(i64, i64, i64), _> =
                self.checkpointer
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    });
            let other = 1 - self.active;
            begin_read(&self.readers[other], &db)?;
            self.active = other;
            self.continuous = true;
            match ck {
                Ok((_, log, done)) => {
                    report.checkpointed = log == done;
                    tracing::debug!(log, done, "checkpoint");
                }
                Err(e) => warn!("checkpoint of {} failed: {e}", db.display()),
            }
            Ok(report)
        })();
        let _ = self.writer.execute_batch("ROLLBACK");
        result
    }

    /// One capture step: ship new commits as a segment, snapshot when due,
    /// checkpoint when the WAL is long, move the read transaction forward, and
    /// archive new events.
    ///
    /// # Errors
    /// Repository or database failures; the capture position advances only
    /// past what is durable.
    pub fn step(&mut self, force_snapshot: bool) -> Result<StepReport> {
        self.steps += 1;
        self.note_wal_size();
        if let Some(why) = self.poisoned.clone() {
            return self.restart_and_archive(&why);
        }
        if self.readers[self.active].is_autocommit() {
            // A failed step left no read transaction held: continuity is not proven.
            self.continuous = false;
            begin_read(&self.readers[self.active], &self.opts.db)?;
        }
        if let Some(why) = self.base_lost()? {
            self.metrics.repository_lost();
            tracing::error!("{why}; starting a new generation with a snapshot");
            return self.restart_and_archive(&why);
        }
        let mut report = match self.copy_new_frames()? {
            Ok(r) => r,
            Err(r) => {
                // A new generation began with a snapshot; archive events and stop here.
                let mut r = r;
                r.absorb(self.archive_events()?);
                return Ok(r);
            }
        };
        if let Some(why) = self.check_sample()? {
            self.metrics.check_failed();
            tracing::error!(
                "capture check failed: {why}; the restore points of generation {} after txid {} \
                 (the last that passed) up to txid {} may not reproduce the database; starting a \
                 new generation",
                self.gen.id,
                self.last_good_check.max(self.gen.base_txid()),
                self.gen.last_txid
            );
            let mut r = self.restart_and_archive(&why)?;
            r.absorb(report);
            return Ok(r);
        }
        self.last_good_check = self.gen.last_txid;
        if let Err(why) = self.check_archive()? {
            self.metrics.archive_error();
            tracing::error!("event archive: {why}; starting a new generation");
            let mut r = self.restart_and_archive(&why)?;
            r.absorb(report);
            return Ok(r);
        }
        let request = run::SnapshotRequest::take(self.db());
        let interval_due = self.opts.snapshot_interval.is_some_and(|iv| {
            (Utc::now() - self.gen.last_snapshot_at)
                .to_std()
                .unwrap_or_default()
                >= iv
        });
        if force_snapshot || request.is_some() || interval_due {
            let taken = self.snapshot_now();
            if let Some(req) = &request {
                req.answer(self.db(), &taken);
            }
            report.absorb(taken?);
        }
        if self.stand_aside()? {
            // A checkpointer of another process restarts the WAL.
        } else if self.gen.wal.frame >= self.opts.checkpoint_frames {
            report.absorb(self.checkpoint()?);
        } else {
            self.roll_read()?;
        }
        report.absorb(self.archive_events()?);
        Ok(report)
    }

    /// Starts a new generation and archives the events after it.
    fn restart_and_archive(&mut self, why: &str) -> Result<StepReport> {
        let mut r = self.restart_generation(why)?;
        r.absorb(self.archive_events()?);
        Ok(r)
    }

    /// Whether the oldest object the chain needs, its snapshot, is gone from
    /// the repository (a repository deleted or pruned under the capturer).
    fn base_lost(&self) -> Result<Option<String>> {
        if self.gen.base_snapshot.is_empty() {
            return Ok(None);
        }
        let key = Manifest::manifest_key(&self.gen.base_snapshot);
        Ok((!self.repo.backend().exists(&key)?).then(|| {
            format!(
                "the snapshot {} of generation {} is gone from the repository {} \
                 (deleted or pruned under the running capturer): the chain has no base",
                self.gen.base_snapshot,
                self.gen.id,
                self.repo.backend().describe()
            )
        }))
    }

    /// Whether a checkpointer of another process is at work on the database
    /// (it may be waiting for this capturer's read transaction).
    pub fn checkpointer_active(&self) -> bool {
        self.shm.checkpointer_active()
    }

    /// Saves the capture state so that a later run can resume the generation.
    ///
    /// # Errors
    /// Repository failures.
    pub fn save_state(&self) -> Result<()> {
        SavedState {
            generation: self.gen.id.clone(),
            page_size: self.gen.page_size,
            last_txid: self.gen.last_txid,
            wal: self.gen.wal,
            last_seq: self.gen.last_seq,
            last_event_rowid: self.gen.last_event_rowid,
            identity: self.identity,
            hashes: self.gen.hashes.hashes().to_vec(),
        }
        .save(&self.repo)
    }

    /// Ships what is left, saves the state and releases the lock.
    ///
    /// # Errors
    /// Repository or database failures of the last step.
    pub fn finish(mut self) -> Result<StepReport> {
        let report = self.step(false)?;
        self.save_state()?;
        let _ = end_read(&self.readers[self.active], &self.opts.db);
        Ok(report)
    }
}

/// Each page of a WAL read's committed transactions, at the offset of its
/// newest frame.
fn newest_frames(r: &WalRead) -> HashMap<u32, u64> {
    let mut pages = HashMap::new();
    for t in &r.txns {
        for (p, off) in &t.pages {
            pages.insert(*p, *off);
        }
    }
    pages
}

/// Shared handle type used by the CLI to stop a replicate loop.
pub type StopFlag = Arc<std::sync::atomic::AtomicBool>;
