//! Resolving a restore plan over a repository that may have gaps.
//!
//! The target names a restore point (the *requested* point). The chain that
//! reaches furthest toward it without any lost object is chosen among every
//! usable snapshot at or before it ([`Generation::best_chain`]): a later
//! snapshot after a gap wins when it reaches further. When the chain stops
//! short, or a lost object lies in the event archive the restore needs, the
//! plan *falls back*: the database is rebuilt at the point reached, and the
//! archived events from there are replayed up to the target, so that a lost
//! segment costs nothing when the archive is contiguous. `archive_complete`
//! says whether it is; when not, the restore reports the true RPO gap and the
//! CLI exits with the "restored with data loss" code. `strict` refuses
//! instead of falling back.
//!
//! Lost objects are those the [`LostSet`] names: unreadable manifests
//! (placed by their key), and objects that fetch found missing, of the wrong
//! size, or failing their BLAKE3.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use genesis_core::plan::{Fallback, RestorePlan, Target};
use genesis_core::repo::catalog::{Generation, RestorePoint};
use genesis_core::repo::lost::LostSet;
use genesis_core::repo::{Catalog, Manifest, ObjectKind};
use genesis_core::time::{format_exact, format_rfc3339};
use genesis_core::{Error, Result};

/// The restore point a target asks for, possibly one only an unreadable
/// manifest knows (then its time is unknown).
struct Requested {
    generation: String,
    txid: u64,
    /// The commit time when a readable manifest records it.
    time: Option<DateTime<Utc>>,
}

fn describe(p: &RestorePoint) -> String {
    format!("txid {} at {}", p.txid, format_exact(p.time))
}

fn no_point() -> Error {
    Error::Usage("the backup repository holds no restore point yet: run `genesis-recovery backup full` or `backup replicate` first".into())
}

/// The highest txid that lost snapshots and segments are known to hold.
fn lost_tail(lost: &LostSet) -> Option<(String, u64)> {
    lost.iter()
        .filter_map(|l| l.parts.as_ref())
        .filter(|p| p.kind != ObjectKind::Events)
        .filter_map(|p| p.txids.map(|(_, hi)| (p.generation.clone(), hi)))
        .max_by_key(|(_, hi)| *hi)
}

/// A txid that only a lost snapshot or segment holds.
fn lost_holding(lost: &LostSet, txid: u64) -> Option<String> {
    lost.iter()
        .filter_map(|l| l.parts.as_ref())
        .filter(|p| p.kind != ObjectKind::Events)
        .find(|p| p.txids.is_some_and(|(a, b)| a <= txid && txid <= b))
        .map(|p| p.generation.clone())
}

fn requested(
    catalog: &Catalog,
    target: &Target,
    lost: &LostSet,
    now: DateTime<Utc>,
) -> Result<Requested> {
    let from_point = |p: RestorePoint| Requested {
        generation: p.generation,
        txid: p.txid,
        time: Some(p.time),
    };
    let latest = catalog.latest_point();
    match target {
        Target::Latest => {
            let tail = lost_tail(lost);
            match (latest, tail) {
                (Some(p), Some((g, t))) if t > p.txid => Ok(Requested {
                    generation: g,
                    txid: t,
                    time: None,
                }),
                (Some(p), _) => Ok(from_point(p)),
                (None, Some((g, t))) => Ok(Requested {
                    generation: g,
                    txid: t,
                    time: None,
                }),
                (None, None) => Err(no_point()),
            }
        }
        Target::Time { at } => {
            if *at > now {
                let hint = latest.as_ref().map_or_else(
                    || "the repository holds no restore point yet".to_string(),
                    |p| format!("the latest restore point is {}; to restore it, use `restore --latest` (target `latest` in a pipeline)", describe(p)),
                );
                return Err(Error::Usage(format!(
                    "the target {} is in the future (it is now {}): {hint}",
                    format_rfc3339(*at),
                    format_rfc3339(now)
                )));
            }
            catalog.point_at_or_before(*at).map(from_point)
        }
        Target::Txid { txid } => match catalog.point_for_txid(*txid) {
            Ok(p) => Ok(from_point(p)),
            Err(e) => match lost_holding(lost, *txid) {
                Some(generation) => Ok(Requested {
                    generation,
                    txid: *txid,
                    time: None,
                }),
                None => Err(e),
            },
        },
        Target::BackupId { id } => match catalog.find(id) {
            Some(_) => backup_point(catalog, id).map(from_point),
            None => match lost.get(id).and_then(|l| l.parts.clone()) {
                Some(p) if p.kind != ObjectKind::Events => Ok(Requested {
                    generation: p.generation,
                    txid: p.txids.map_or(0, |(_, hi)| hi),
                    time: None,
                }),
                _ => backup_point(catalog, id).map(from_point),
            },
        },
    }
}

/// The restore point a named backup stands for: a snapshot's txid, or a segment's last txid.
fn backup_point(catalog: &Catalog, id: &str) -> Result<RestorePoint> {
    let m = catalog.find(id).ok_or_else(|| {
        Error::Usage(format!(
            "no backup with id {id:?} in the repository; `genesis-recovery list-backups` shows the ids"
        ))
    })?;
    if m.kind == ObjectKind::Events {
        return Err(Error::Usage(format!(
            "{id:?} is an event archive object, not a restore point; name a full or incremental backup"
        )));
    }
    catalog
        .generation(&m.generation)
        .and_then(|g| {
            g.restore_points()
                .into_iter()
                .find(|p| p.txid == m.txid_max)
        })
        .ok_or_else(|| {
            Error::corrupt(
                id,
                format!(
                    "the manifest's txid {} is not a restore point of its generation",
                    m.txid_max
                ),
            )
        })
}

/// The usable event objects read at or after `from_txid`, in sequence
/// order, up to the first break in their sequence ranges; and what breaks
/// the run, when something does. The run goes on into later generations
/// (in the catalog's order, the order they were started) whose archive
/// continues this one's: a generation started after the capturer was away
/// archives the events committed meanwhile, from the sequence number after
/// the repository's last, so restores into the span between two
/// generations are exact too. A later generation whose archive starts
/// further on, while its full backup holds events after the run's last
/// (the live table no longer held the last archived event as archived),
/// breaks the run: those events are archived nowhere.
fn event_run(
    catalog: &Catalog,
    generation: &Generation,
    from_txid: u64,
    lost: &LostSet,
) -> (Vec<Arc<Manifest>>, Option<String>) {
    let mut run: Vec<Arc<Manifest>> = Vec::new();
    // Where the run ends so far.
    let mut last: Option<i64> = None;
    // Where this generation's archive ends, whether or not any of its
    // objects are in the run (the point may be after its last event object).
    let own_last = generation.events.iter().filter_map(|e| e.seq_max).max();
    let own = generation
        .events
        .iter()
        .filter(|e| e.txid_max >= from_txid && !lost.contains(&e.id));
    if let Some(why) = extend_run(&mut run, &mut last, own, lost, generation) {
        return (run, Some(why));
    }
    let later = catalog
        .generations
        .iter()
        .skip_while(|g| g.id != generation.id)
        .skip(1);
    for g in later {
        let Some(prev) = last.or(own_last) else {
            break;
        };
        let mut usable = g.events.iter().filter(|e| !lost.contains(&e.id)).peekable();
        let start = usable.peek().and_then(|e| e.seq_min);
        let in_snapshot = g.snapshots.first().and_then(|s| s.seq_max);
        let hole_end = start.map(|lo| lo - 1).or(in_snapshot).filter(|h| *h > prev);
        if let Some(end) = hole_end {
            let held = if in_snapshot.is_some_and(|s| s >= end) {
                "its full backup holds them"
            } else {
                "no object holds them"
            };
            return (
                run,
                Some(format!(
                    "the events with sequence numbers {}..{end} are archived nowhere (committed while no capturer ran: the archive of generation {} ends at {prev}, the next generation {} archives from {}; {held})",
                    prev + 1,
                    generation.id,
                    g.id,
                    start.map_or_else(|| format!("after {}", end), |lo| lo.to_string()),
                )),
            );
        }
        if start.is_none() {
            continue;
        }
        last = Some(prev);
        if let Some(why) = extend_run(&mut run, &mut last, usable, lost, g) {
            return (run, Some(why));
        }
    }
    (run, None)
}

/// Appends `objects` (in sequence order) to `run` while their ranges are
/// contiguous with `last`; the reason of the first break, if any.
fn extend_run<'a>(
    run: &mut Vec<Arc<Manifest>>,
    last: &mut Option<i64>,
    objects: impl Iterator<Item = &'a Arc<Manifest>>,
    lost: &LostSet,
    generation: &Generation,
) -> Option<String> {
    for e in objects {
        let (Some(lo), Some(hi)) = (e.seq_min, e.seq_max) else {
            continue;
        };
        if let Some(prev) = *last {
            if lo > prev + 1 {
                let named: Vec<String> = lost
                    .of(&generation.id, ObjectKind::Events)
                    .filter(|l| {
                        l.parts
                            .as_ref()
                            .and_then(|p| p.seqs)
                            .is_some_and(|(a, b)| a <= prev + 1 && prev < b)
                    })
                    .map(|l| format!("event object {} {}", l.id, l.problem))
                    .collect();
                return Some(if named.is_empty() {
                    format!(
                        "the event archive has no object holding sequence numbers {}..{}",
                        prev + 1,
                        lo - 1
                    )
                } else {
                    named.join("; ")
                });
            }
        }
        *last = Some(last.map_or(hi, |p| p.max(hi)));
        run.push(e.clone());
    }
    None
}

/// Resolves the restore plan of `target` (see the module documentation).
/// `now` decides what "in the future" means.
///
/// # Errors
/// `Error::Usage` for a target outside what the repository holds (naming what
/// it holds); `Error::Failed` for a gap when `strict`, or when no usable
/// full backup precedes the target; `Error::Corrupt` for inconsistent manifests.
pub fn resolve_plan(
    catalog: &Catalog,
    target: &Target,
    strict: bool,
    now: DateTime<Utc>,
    lost: &LostSet,
) -> Result<RestorePlan> {
    let req = requested(catalog, target, lost, now)?;
    let generation = catalog.generation(&req.generation).ok_or_else(|| {
        Error::Failed(format!(
            "the restore point txid {} belongs to generation {}, of which no manifest is readable: {}",
            req.txid,
            req.generation,
            lost_list(lost)
        ))
    })?;
    let chain = generation.best_chain(req.txid, lost)?;
    let reached = chain.point.clone();
    let mut gaps: Vec<String> = chain.gap.iter().cloned().collect();
    if reached.txid < req.txid && gaps.is_empty() {
        gaps.push(format!(
            "txids {}..={} of generation {} are out of reach",
            reached.txid + 1,
            req.txid,
            generation.id
        ));
    }
    // A time target whose point is followed by txids only an unreadable
    // manifest knows: their commit times are unknown, so they may be before
    // the target.
    if let Target::Time { .. } = target {
        if reached.txid == req.txid {
            for l in lost.of(&generation.id, ObjectKind::Segment) {
                let starts_next = l
                    .parts
                    .as_ref()
                    .and_then(|p| p.txids)
                    .is_some_and(|(a, _)| a == req.txid + 1);
                if starts_next && catalog.find(&l.id).is_none() {
                    gaps.push(format!(
                        "incremental backup {} {}: its commit times are unknown and may be before the target",
                        l.id, l.problem
                    ));
                }
            }
            // Txids after the point that no manifest at all accounts for
            // (object and manifest both gone): their times are unknown too.
            let next_known = generation
                .segments
                .iter()
                .chain(generation.snapshots.iter())
                .map(|m| m.txid_min)
                .filter(|t| *t > req.txid)
                .min();
            if let Some(next) = next_known.filter(|n| *n > req.txid + 1) {
                if gaps.is_empty() {
                    gaps.push(format!(
                        "the incremental backups for txids {}..{} of generation {} are missing: their commit times are unknown and may be before the target",
                        req.txid + 1,
                        next - 1,
                        generation.id
                    ));
                }
            }
        }
    }
    // An unreadable manifest whose key names no object cannot be placed in
    // the chain: reported with every restore (and refused under strict),
    // but not counted as a gap of this restore.
    let unplaced: Vec<_> = lost.unplaced().cloned().collect();
    if strict && !unplaced.is_empty() {
        return Err(Error::Failed(format!(
            "the repository holds unreadable manifests whose place in the chain cannot be told: {}; strict mode refuses to restore past them: run `genesis-recovery verify-backups`, or restore without --strict",
            unplaced
                .iter()
                .map(|l| format!("{} ({})", l.id, l.problem))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    for l in &unplaced {
        tracing::warn!(
            "{} {}: which restore points it breaks cannot be told",
            l.id,
            l.problem
        );
    }

    let requested_time = match target {
        Target::Time { at } => Some(*at),
        _ => req.time.or_else(|| newest_time(generation)),
    };
    let fell_back = !gaps.is_empty();
    let (run, run_break) = event_run(catalog, generation, reached.txid, lost);
    let (events, replay_until, archive_complete) = match target {
        Target::Time { at } => {
            let complete = run.iter().any(|e| e.created_at >= *at);
            let events: Vec<_> = run.into_iter().filter(|e| e.time_min <= *at).collect();
            (events, Some(*at), complete)
        }
        _ if !fell_back => (Vec::new(), None, true),
        Target::Latest => {
            let complete = run.iter().any(|e| e.txid_max >= req.txid);
            let until = run.iter().map(|e| e.time_max).max();
            (run, until, complete)
        }
        _ => {
            let events: Vec<_> = run.into_iter().filter(|e| e.txid_max <= req.txid).collect();
            let complete = events.iter().any(|e| e.txid_max == req.txid);
            let until = events.iter().map(|e| e.time_max).max();
            (events, until, complete)
        }
    };
    let lost_events_after = generation
        .events
        .iter()
        .any(|e| e.txid_max >= reached.txid && lost.contains(&e.id));
    let replay_needed = matches!(target, Target::Time { .. }) || !gaps.is_empty();
    if !archive_complete
        && replay_needed
        && (run_break.is_some() || lost_events_after || !gaps.is_empty())
    {
        match run_break {
            Some(why) => gaps.push(why),
            None => gaps.push(archive_shortfall(generation, reached.txid, lost)),
        }
    }
    let fell_back = !gaps.is_empty();
    let requested_text = match target {
        Target::Time { at } => format!(
            "the target {} (restore point txid {})",
            format_rfc3339(*at),
            req.txid
        ),
        _ => match req.time {
            Some(t) => format!("txid {} at {}", req.txid, format_exact(t)),
            None => format!("txid {} (its manifest is unreadable)", req.txid),
        },
    };
    let fallback = if fell_back {
        let gap = gaps.join("; ");
        if strict {
            return Err(Error::Failed(format!(
                "cannot restore {requested_text}: {gap}; the last point reachable is {} (the event archive {} the target from there); strict mode refuses to fall back: run without --strict (`strict = false`) to restore it",
                describe(&reached),
                if archive_complete { "reaches" } else { "does not reach" }
            )));
        }
        let bridge = if archive_complete {
            "the event archive is contiguous from there to the target: its events are replayed, so the trading tables are exact; other tables stay at the point used"
        } else {
            "the event archive does not bridge the gap: history between the point used (or the last event replayed) and the target is lost"
        };
        tracing::warn!(
            "{gap}: restoring {} instead of {requested_text}; {bridge}",
            describe(&reached)
        );
        Some(Fallback {
            gap,
            lost: lost.iter().cloned().collect(),
            requested: requested_text,
            point_used: reached.clone(),
            full_backup_used: chain.snapshot.id.clone(),
            archive_reaches_target: archive_complete,
            events_replayed: 0,
        })
    } else {
        None
    };
    Ok(RestorePlan {
        target: target.clone(),
        page_size: chain.snapshot.page_size,
        snapshot: chain.snapshot.clone(),
        segments: chain
            .segments
            .iter()
            .filter(|s| s.txid_min <= reached.txid)
            .cloned()
            .collect(),
        replay_until: if events.is_empty() && !matches!(target, Target::Time { .. }) {
            None
        } else {
            replay_until
        },
        events,
        fallback,
        requested_txid: req.txid,
        archive_complete,
        requested_time,
        unplaced_manifests: unplaced,
        point: reached,
    })
}

/// Why the event archive stops short of the target when no hole inside
/// the run explains it: lost event objects after the point, or nothing
/// archived after it.
fn archive_shortfall(g: &Generation, from_txid: u64, lost: &LostSet) -> String {
    let gone: Vec<String> = g
        .events
        .iter()
        .filter(|e| e.txid_max >= from_txid && lost.contains(&e.id))
        .map(|e| e.id.clone())
        .collect();
    if gone.is_empty() {
        format!(
            "the event archive of generation {} holds nothing read after txid {from_txid} that reaches the target",
            g.id
        )
    } else {
        format!(
            "the event objects after txid {from_txid} are lost ({} of them, from {})",
            gone.len(),
            gone[0]
        )
    }
}

/// The newest instant any readable manifest of the generation records.
fn newest_time(g: &Generation) -> Option<DateTime<Utc>> {
    g.snapshots
        .iter()
        .chain(g.segments.iter())
        .chain(g.events.iter())
        .map(|m| m.time_max)
        .max()
}

fn lost_list(lost: &LostSet) -> String {
    lost.iter()
        .map(|l| format!("{} ({})", l.id, l.problem))
        .collect::<Vec<_>>()
        .join("; ")
}
