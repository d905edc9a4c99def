//! Standing aside for a checkpointer of another process.
//!
//! A FULL, RESTART or TRUNCATE checkpoint waits (in SQLite's busy handler,
//! one try every 100 ms or so) for an exclusive lock on each read mark it
//! saw below the WAL's end. The capturer's roll begins its new read before
//! it ends the old one, and the new read takes the best mark, usually the
//! one the old read holds: both connections are in this process, so the
//! POSIX lock on that mark is never released, and the checkpointer's tries
//! all fail until its busy timeout ends (the outage test's 30 s waits; the
//! same happens with a local repository, docs/decisions.md).
//!
//! While another process holds both the checkpoint lock and the WAL write
//! lock, no frame can be appended. When the capturer has copied every
//! committed frame, it then ends its read and holds none until that
//! checkpointer is done, then begins a new one. Nothing can be lost
//! meanwhile: the only restart possible is that checkpointer's own (of a
//! WAL fully copied), and a restart is proven to be that one alone by the
//! WAL's salt, which SQLite increments by one at every restart: the next
//! restarted WAL shipped must have the position's salt plus one, otherwise
//! a new generation starts (`copy_new_frames`).

use std::time::{Duration, Instant};

use super::*;

/// The longest a step stands aside (the next step does it again).
const MAX_ASIDE: Duration = Duration::from_secs(2);

/// How often the capturer looks whether the checkpointer is done: often,
/// for the read to be held again before the application appends to the
/// restarted WAL and a checkpoint of its own could restart it once more
/// (which the salt check would see, at the cost of a new generation).
const POLL: Duration = Duration::from_micros(100);

impl Capturer {
    /// Stands aside when a blocking checkpointer of another process is at
    /// work and every committed frame is copied; returns whether it did
    /// (the read transaction is then held again, begun after it).
    pub(super) fn stand_aside(&mut self) -> Result<bool> {
        let seen_a_wal = self.gen.wal.salt1 != 0 || self.gen.wal.salt2 != 0;
        if !self.continuous || !seen_a_wal || !self.shm.blocking_checkpointer_active() {
            return Ok(false);
        }
        // The write lock is held: nothing can be appended from here on; the
        // position must be the WAL's end (nothing committed after it).
        let wal_path = wal::wal_path(self.db());
        match wal::read_wal(&wal_path, Some(&self.gen.wal))? {
            WalState::Continues(r) if r.txns.is_empty() => {}
            _ => return Ok(false),
        }
        if !self.readers[self.active].is_autocommit() {
            end_read(&self.readers[self.active], &self.opts.db)?;
        }
        let t0 = Instant::now();
        while t0.elapsed() < MAX_ASIDE && self.shm.blocking_checkpointer_active() {
            std::thread::sleep(POLL);
        }
        self.metrics.stood_aside(t0.elapsed());
        if t0.elapsed() >= MAX_ASIDE {
            tracing::warn!(
                "stood aside {:.1}s for a checkpointer of another process, which is still at work \
                 (another reader may hold it)",
                t0.elapsed().as_secs_f64()
            );
        } else {
            tracing::debug!(
                micros = t0.elapsed().as_micros() as u64,
                "stood aside for a checkpointer"
            );
        }
        self.stood_aside = true;
        if let Err(e) = begin_read(&self.readers[self.active], &self.opts.db) {
            self.continuous = false;
            return Err(e);
        }
        // What happened while no read was held. The same WAL with frames
        // after the position: they were committed after the checkpointer
        // let go, and are shipped by the next copy (continuity is proven by
        // that copy, as after a resume). An empty WAL (truncated) or a
        // restarted one: the salt check of the next copy decides.
        if let WalState::Continues(r) = wal::read_wal(&wal_path, Some(&self.gen.wal))? {
            if !r.txns.is_empty() {
                self.continuous = false;
            }
        }
        Ok(true)
    }

    /// Whether a restarted WAL may follow the position: after standing
    /// aside, only when it is the position's WAL restarted exactly once.
    pub(super) fn restart_follows(&self, header: &wal::WalHeader) -> bool {
        !self.stood_aside || header.salt1 == self.gen.wal.salt1.wrapping_add(1)
    }
}
