//! `simulate` and the `backup` commands.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use genesis_core::capture::{self, CaptureOptions, ReplicateOptions};
use genesis_core::repo::spool::SpooledBackend;
use genesis_core::repo::{RepoLocation, Repository};
use genesis_core::time::parse_duration;

use super::args::{BackupCommand, CaptureFlags, SimulateArgs};
use super::output::{bytes, print};
use super::{Ctx, EXIT_OK};

pub fn simulate(ctx: &Ctx, a: SimulateArgs) -> anyhow::Result<i32> {
    if let Some(dir) = ctx.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let opts = genesis_trading::simulate::SimulateOptions {
        rate: a.rate,
        duration: Some(parse_duration(&a.duration)?),
        max_commits: a.max_commits,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
    };
    let stop = stop_on_signals()?;
    let report = genesis_trading::simulate::simulate(&ctx.db, &opts, &stop)?;
    print(ctx, &report, || {
        format!(
            "simulated {} commits into {} in {:.1}s (sequences {}..{})",
            report.commits,
            ctx.db.display(),
            report.elapsed_seconds,
            report.first_sequence.unwrap_or_default(),
            report.last_sequence.unwrap_or_default()
        )
    })?;
    Ok(EXIT_OK)
}

fn capture_options(ctx: &Ctx, flags: &CaptureFlags) -> anyhow::Result<CaptureOptions> {
    let mut o = CaptureOptions::new(&ctx.db);
    o.enable_wal = flags.enable_wal;
    if let Some(n) = flags
        .checkpoint_frames
        .or(ctx.settings.capture.checkpoint_frames)
    {
        o.checkpoint_frames = n.max(1);
    }
    if let Some(s) = &ctx.settings.capture.snapshot_interval {
        o.snapshot_interval = Some(parse_duration(s)?);
    }
    Ok(o)
}

/// The capturer's repository; an object store comes behind the
/// database's upload spool, returned to be drained before the command ends.
fn open_repo(ctx: &Ctx) -> anyhow::Result<(Repository, Option<Arc<SpooledBackend>>)> {
    // Check the database before creating anything.
    genesis_core::capture::source::read_db_header(&ctx.db)?;
    let location = RepoLocation::from_path(&ctx.repo)?;
    Ok(genesis_core::repo::spool::open_for_capture(
        &location, &ctx.db,
    )?)
}

/// How long a capture command waits for its spool to reach the object store.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for the spool (when there is one) to be uploaded.
fn drain(spool: Option<Arc<SpooledBackend>>) -> anyhow::Result<()> {
    if let Some(s) = spool {
        s.drain(DRAIN_TIMEOUT)?;
    }
    Ok(())
}

/// Compaction level spans: `--levels`/`--compaction-levels` (comma-separated,
/// `none` for off), else the settings file, else the defaults.
fn compaction_levels(ctx: &Ctx, flag: Option<&str>) -> anyhow::Result<Vec<Duration>> {
    let Some(list) = flag else {
        return Ok(ctx.settings.compaction.level_spans()?);
    };
    if list.trim() == "none" {
        return Ok(Vec::new());
    }
    let spans = list
        .split(',')
        .map(|t| parse_duration(t.trim()))
        .collect::<genesis_core::Result<Vec<_>>>()?;
    genesis_core::compact::check_levels(&spans)?;
    Ok(spans)
}

/// A flag set on SIGINT or SIGTERM.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    Ok(stop)
}

pub fn backup(ctx: &Ctx, cmd: BackupCommand) -> anyhow::Result<i32> {
    match cmd {
        BackupCommand::Full(flags) => {
            let opts = capture_options(ctx, &flags)?;
            let (repo, spool) = open_repo(ctx)?;
            let r = capture::backup_full(opts, repo, Duration::from_secs(120))?;
            drain(spool)?;
            print(ctx, &r, || {
                format!(
                    "full backup {} at txid {} ({}, checksum {}){}",
                    r.backup_id,
                    r.txid,
                    bytes(r.size_bytes),
                    r.checksum,
                    if r.taken_by_running_capturer {
                        " taken by the running capturer"
                    } else {
                        ""
                    }
                )
            })?;
        }
        BackupCommand::Sync(flags) => {
            let opts = capture_options(ctx, &flags)?;
            let (repo, spool) = open_repo(ctx)?;
            let r = capture::backup_sync(opts, repo)?;
            drain(spool)?;
            print(ctx, &r, || {
                let mut s = match (r.txid_min, r.txid_max) {
                    (Some(a), Some(b)) => format!("shipped txids {a}..={b} ({} pages)", r.pages),
                    _ => "no new transactions".to_string(),
                };
                if r.events > 0 {
                    s.push_str(&format!(", {} events archived", r.events));
                }
                if let Some(g) = &r.new_generation {
                    s.push_str(&format!(
                        "; new generation ({g}), snapshot {}",
                        r.snapshot.clone().unwrap_or_default()
                    ));
                }
                s
            })?;
        }
        BackupCommand::Replicate(a) => {
            let mut opts = capture_options(ctx, &a.capture)?;
            if let Some(s) = &a.snapshot_interval {
                opts.snapshot_interval = Some(parse_duration(s)?);
            }
            let interval = a
                .interval
                .as_deref()
                .or(ctx.settings.capture.interval.as_deref())
                .map(parse_duration)
                .transpose()?;
            let ropts = ReplicateOptions {
                interval: interval.unwrap_or(Duration::from_secs(1)),
                run_for: a.run_for.as_deref().map(parse_duration).transpose()?,
                metrics_addr: a.metrics_addr.clone(),
                compaction: compaction_levels(ctx, a.compaction_levels.as_deref())?,
            };
            let (repo, spool) = open_repo(ctx)?;
            let stop = stop_on_signals()?;
            let quiet = ctx.quiet || ctx.json;
            let sum = capture::replicate(opts, repo, &ropts, &stop, |r| {
                if let (Some(a), Some(b)) = (r.txid_min, r.txid_max) {
                    tracing::info!(txids = %format!("{a}..={b}"), pages = r.pages, events = r.events, "shipped");
                }
                if let Some(g) = &r.new_generation {
                    if !quiet {
                        eprintln!("new generation: {g}");
                    }
                }
            })?;
            // A clean stop: once the spool is drained, the lease goes, so
            // that another host may capture into the prefix.
            if let Some(s) = &spool {
                s.drain(DRAIN_TIMEOUT)?;
                s.release_lease(&ctx.db)?;
            }
            print(ctx, &sum, || {
                format!(
                    "replicated {} transactions in {} segments, {} events, {} snapshot(s), over {:.1}s; last txid {} (generation {})",
                    sum.txns,
                    sum.segments,
                    sum.events,
                    sum.snapshots.len(),
                    sum.seconds,
                    sum.last_txid,
                    sum.generation
                )
            })?;
        }
        BackupCommand::Compact(a) => {
            let levels = compaction_levels(ctx, a.levels.as_deref())?;
            let repo = Repository::open_path(&ctx.repo, false)?;
            let r = genesis_core::compact::compact_repository(&repo, &levels, chrono::Utc::now())?;
            print(ctx, &r, || {
                let mut s = format!(
                    "compacted {} objects into {} ({:?}, {})",
                    r.inputs,
                    r.created.len(),
                    r.per_level,
                    bytes(r.bytes_written)
                );
                for k in &r.skipped {
                    s.push_str(&format!("\nskipped: {k}"));
                }
                s
            })?;
            if !r.skipped.is_empty() {
                return Ok(super::EXIT_FAILED);
            }
        }
        BackupCommand::Prune(a) => {
            let keep_days = a.keep_days.or(ctx.settings.retention.keep_days).ok_or_else(|| {
                genesis_core::Error::Usage("backup prune needs --keep-days N (or retention.keep_days in the settings file)".into())
            })?;
            let keep_full = a
                .keep_full
                .or(ctx.settings.retention.keep_full)
                .unwrap_or(1);
            let keep_l0 = match &a.keep_l0 {
                Some(t) => parse_duration(t)?,
                None => ctx.settings.compaction.l0_retention()?,
            };
            let repo = Repository::open_path(&ctx.repo, false)?;
            let mut r = genesis_core::retention::prune(&repo, keep_days, keep_full, a.dry_run)?;
            r.level0 = genesis_core::compact::prune::prune_level0(&repo, keep_l0, a.dry_run)?;
            print(ctx, &r, || {
                let mut s = format!(
                    "{} {} objects ({}); {} full backups kept; oldest restore point now {}; {} {} level-0 segments ({}) that compacted objects cover",
                    if r.dry_run { "would remove" } else { "removed" },
                    r.removed.len(),
                    bytes(r.removed_bytes),
                    r.kept_snapshots,
                    r.oldest_kept.clone().unwrap_or_else(|| "-".into()),
                    if r.dry_run { "would remove" } else { "removed" },
                    r.level0.removed.len(),
                    bytes(r.level0.removed_bytes),
                );
                for c in &r.level0.unverified {
                    s.push_str(&format!(
                        "\n{c} differs from the objects it compacted: they are kept; run `genesis-recovery verify-backups`"
                    ));
                }
                s
            })?;
        }
    }
    Ok(EXIT_OK)
}
