//! The apply: the staged database replaces the live one (DESIGN.md §4).
//!
//! A real restore replaces the live database only when the pipeline succeeded
//! and validation (when it ran) found the state consistent. Steps:
//!
//! 1. the staged database is settled into one file (its WAL checkpointed) and
//!    fsynced, then moved beside the live database as
//!    `<db>.genesis-restore-<pid>.tmp` (a rename, or, across filesystems, a
//!    copy that is fsynced);
//! 2. the live database's WAL is checkpointed into its file, so that the file
//!    alone holds every commit; the live database gets a second name,
//!    `<db>.pre-recovery-<UTC stamp>` (a hard link, or a fsynced copy where
//!    links are not supported), and whatever `-wal`/`-shm` it still has (the
//!    checkpoint fails on a damaged database) is renamed to that name plus
//!    `-wal`/`-shm`, so the pre-recovery backup opens with everything it had
//!    committed; the directory is fsynced;
//! 3. the temporary file is renamed over the live path and the directory
//!    fsynced.
//!
//! The live path changes only by the rename of step 3, which is atomic: at
//! every instant it names the complete old file or the complete new one, never
//! a partial database. A crash before step 3 leaves the old database (and a
//! temporary file the next restore removes); after it, the new one. A crash
//! inside step 2 of a database whose WAL could not be checkpointed can leave
//! the old file without its `-wal` (a consistent, older state); its committed
//! WAL is then beside the pre-recovery backup.
//!
//! An error before the rename of step 3 undoes steps 2 and 1: the `-wal` and
//! `-shm` go back beside the live file, the second name and the temporary
//! file are removed. An error after it (the directory's fsync) undoes
//! nothing: the live path names the restored database, and the pre-recovery
//! backup is the only name left of the old one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use chrono::Utc;

use genesis_core::lock::sibling;
use genesis_core::{Error, Result};

use super::{parent_dir, process_alive};
use crate::wal_apply::remove_if_exists;

/// Removes temporary files a crashed apply left beside the live database.
pub(super) fn clean_apply_leftovers(db: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (parent_dir(db), db.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    let prefix = format!("{name}.genesis-restore-");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .strip_suffix(".tmp")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            remove_if_exists(&entry.path())?;
            tracing::info!(path = %entry.path().display(), "removed the leftover of a crashed apply");
        }
    }
    Ok(())
}

/// Checkpoints the staged database's WAL into the file (if SQLite left one)
/// and fsyncs it, so that it is one complete file that can be moved.
pub(crate) fn settle(path: &Path) -> Result<()> {
    let wal = sibling(path, "-wal");
    if wal.exists() {
        let conn = rusqlite::Connection::open(path).map_err(|e| Error::sqlite("open", path, e))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| Error::sqlite("checkpoint", path, e))?;
        drop(conn);
    }
    if let Ok(m) = fs::metadata(&wal) {
        if m.len() > 0 {
            return Err(Error::Failed(format!(
                "{} still holds frames after a checkpoint; is another program using the staged database?",
                wal.display()
            )));
        }
        remove_if_exists(&wal)?;
    }
    remove_if_exists(&sibling(path, "-shm"))?;
    fsync_file(path)
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", path, e))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Moves `from` to `to` (which must not be a live database): a rename, or,
/// across filesystems, a copy to a temporary name beside `to`, fsynced and
/// renamed. The directory of `to` is fsynced.
pub(crate) fn move_file(from: &Path, to: &Path) -> Result<()> {
    let dir = parent_dir(to).unwrap_or_else(|| PathBuf::from("."));
    match fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(18) || e.kind() == io::ErrorKind::CrossesDevices => {
            let tmp = sibling(to, &format!(".genesis-copy-{}.tmp", std::process::id()));
            let copied = fs::copy(from, &tmp)
                .map_err(|e| Error::io("copy", &tmp, e))
                .and_then(|_| fsync_file(&tmp))
                .and_then(|()| fs::rename(&tmp, to).map_err(|e| Error::io("rename", to, e)));
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            remove_if_exists(from)?;
        }
        Err(e) => return Err(Error::io("rename", from, e)),
    }
    fsync_dir(&dir)
}

/// The steps of the apply an error can be injected before, by unit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The checkpoint of the live database's WAL (an error there is not
    /// fatal: the -wal and -shm are then moved aside).
    Fold,
    /// The live database's second name.
    Link,
    /// The move of its `-wal` (0) or `-shm` (1) beside that name.
    MoveAside(usize),
    /// The directory's fsync after step 2.
    SyncAside,
    /// The rename over the live path.
    Rename,
    /// The directory's fsync after the rename.
    SyncRenamed,
}

#[cfg(test)]
thread_local! {
    /// The steps before which [`at`] fails, in this thread.
    pub(super) static FAIL_BEFORE: std::cell::RefCell<Vec<Step>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks the start of `step`: an error only when a unit test asked for one.
fn at(step: Step) -> Result<()> {
    #[cfg(test)]
    if FAIL_BEFORE.with(|f| f.borrow().contains(&step)) {
        return Err(Error::Failed(format!("an error injected before {step:?}")));
    }
    let _ = step;
    Ok(())
}

/// What step 2 did, for its undo.
#[derive(Default)]
struct SetAside {
    /// `(from, to)` of each side file moved.
    moved: Vec<(PathBuf, PathBuf)>,
    /// The second name, recorded before it is made.
    backup: Option<PathBuf>,
}

/// Replaces the live database with `staged` (see the module documentation).
/// Returns the pre-recovery backup's path when there was a live database.
/// On an error before the rename, the live path still names the old
/// database with its -wal and -shm, and no file of the restore is left beside
/// it (nor `staged`); after the rename, the error says so and nothing is
/// undone.
pub(super) fn apply(staged: &Path, db: &Path) -> Result<Option<PathBuf>> {
    let dir = parent_dir(db).unwrap_or_else(|| PathBuf::from("."));
    let tmp = sibling(db, &format!(".genesis-restore-{}.tmp", std::process::id()));
    if let Err(e) = move_file(staged, &tmp) {
        remove_database_files(staged);
        return Err(e);
    }
    let mut aside = SetAside::default();
    let swapped = set_aside(db, &dir, &mut aside).and_then(|()| {
        at(Step::Rename)?;
        // The one step that changes what the live path names: atomic.
        fs::rename(&tmp, db).map_err(|e| Error::io("rename the restored database to", db, e))
    });
    if let Err(e) = swapped {
        undo(&aside, &tmp, &dir);
        return Err(e);
    }
    if let Err(e) = at(Step::SyncRenamed).and_then(|()| fsync_dir(&dir)) {
        let kept = aside.backup.as_ref().map_or_else(
            || "there was no live database before".to_string(),
            |b| format!("the old database is kept as {}", b.display()),
        );
        return Err(Error::Failed(format!(
            "the restored database is in place at {} but its folder could not be made durable \
             ({e}); {kept}. A crash before the next sync of that folder may bring the old name \
             back: run `sync`, then check the database",
            db.display()
        )));
    }
    Ok(aside.backup)
}

/// Step 2 (see the module documentation), recording what it did in `aside`.
fn set_aside(db: &Path, dir: &Path, aside: &mut SetAside) -> Result<()> {
    if !db.exists() {
        return Ok(());
    }
    // Fold the live WAL into the live file first, so that the file alone
    // is the whole old database: from then on, whatever instant a crash
    // hits, the live path names the old database or the new one, never the
    // old file without the commits its WAL held.
    if let Err(e) = at(Step::Fold).and_then(|()| fold_wal(db)) {
        if let Error::Locked(_) = e {
            return Err(e);
        }
        tracing::warn!(
            "could not checkpoint the live database before moving it aside ({e}); \
             it is kept with its -wal and -shm beside the pre-recovery copy"
        );
    }
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ").to_string();
    let backup = sibling(db, &format!(".pre-recovery-{stamp}"));
    // Recorded first: the undo removes a link or a partial copy alike.
    aside.backup = Some(backup.clone());
    at(Step::Link)?;
    if let Err(e) = fs::hard_link(db, &backup) {
        tracing::debug!("hard link failed ({e}); copying the live database instead");
        fs::copy(db, &backup).map_err(|e| Error::io("copy the live database to", &backup, e))?;
        fsync_file(&backup)?;
    }
    for (i, suffix) in ["-wal", "-shm"].into_iter().enumerate() {
        let side = sibling(db, suffix);
        if side.exists() {
            at(Step::MoveAside(i))?;
            let to = sibling(&backup, suffix);
            fs::rename(&side, &to).map_err(|e| Error::io("move aside", &side, e))?;
            aside.moved.push((side, to));
        }
    }
    at(Step::SyncAside)?;
    fsync_dir(dir)
}

/// Undoes steps 2 and 1 in reverse: the live -wal and -shm back beside the
/// live file (which was never replaced), then the restore's own files removed.
fn undo(aside: &SetAside, tmp: &Path, dir: &Path) {
    for (from, to) in aside.moved.iter().rev() {
        if let Err(e) = fs::rename(to, from) {
            tracing::error!(
                "could not move {} back to {}: {e}; move it back by hand before opening the database",
                to.display(),
                from.display()
            );
        }
    }
    if let Some(b) = &aside.backup {
        let _ = fs::remove_file(b);
    }
    remove_database_files(tmp);
    let _ = fsync_dir(dir);
}

/// Removes a database file the restore made, with any -wal and -shm.
pub(super) fn remove_database_files(path: &Path) {
    for p in [
        path.to_path_buf(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        if let Err(e) = fs::remove_file(&p) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", p.display());
            }
        }
    }
}

/// Checkpoints the live database's WAL into its file (TRUNCATE), so that the
/// file alone holds every commit.
///
/// # Errors
/// `Error::Locked` when another process uses the database (the checkpoint
/// cannot finish); other errors when the database cannot be opened (a
/// damaged file: the caller then keeps its WAL beside the copy).
fn fold_wal(db: &Path) -> Result<()> {
    let wal = sibling(db, "-wal");
    if !wal.exists() {
        return Ok(());
    }
    let in_use = || {
        Error::Locked(format!(
            "the live database {} is in use by another process: stop the application and any \
             `backup replicate` on it, then restore again",
            db.display()
        ))
    };
    let conn = rusqlite::Connection::open(db)
        .map_err(|e| Error::sqlite("open the live database", db, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(|e| Error::sqlite("configure", db, e))?;
    // An exclusive file lock is granted only when no other connection has the
    // database open (in WAL mode every connection holds a shared lock).
    conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |_| Ok(()))
        .map_err(|e| Error::sqlite("lock the live database", db, e))?;
    let busy_code = |e: &rusqlite::Error| {
        matches!(e, rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    };
    if let Err(e) = conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;") {
        return Err(if busy_code(&e) {
            in_use()
        } else {
            Error::sqlite("lock the live database", db, e)
        });
    }
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| {
            if busy_code(&e) {
                in_use()
            } else {
                Error::sqlite("checkpoint the live database", db, e)
            }
        })?;
    if busy != 0 || log != done {
        return Err(in_use());
    }
    Ok(())
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
