//! A restore from start to finish: the lock, the staging directory's
//! leftovers, the pipeline run, and the apply (DESIGN.md §4; the apply and
//! what a crash leaves: the `apply` module).
//!
//! The next run removes what a crashed run left: staged files
//! (`restore-<txid>-<pid>.db` and side files) and temporary files whose
//! process is gone. Only one restore runs per live database: it holds
//! `<db>-genesis-restore.lock`, and a second one fails at once naming the first.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use genesis_core::lock::{sibling, LockFile};
use genesis_core::pipeline::{
    compile_file_with, compile_str_with, CancelToken, Overrides, ParamValue, PluginLoader,
    StageReport, StagedDatabase, ValidationReport,
};
use genesis_core::plan::{Fallback, Target};
use genesis_core::plugin_host::LibraryLoader;
use genesis_core::progress::Progress;
use genesis_core::time::{format_exact, format_rfc3339};
use genesis_core::{Error, Result};

use crate::wal_apply::{parse_staged_file_name, remove_if_exists};

mod apply;
use apply::{apply, clean_apply_leftovers, remove_database_files};
pub(crate) use apply::{move_file, settle};

/// What to restore, where, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup repository directory.
    pub repo: PathBuf,
    /// The live database (replaced by a real restore; the lock sits beside it).
    pub db: PathBuf,
    pub target: Target,
    /// Where the database is built; keep it on the live database's filesystem.
    pub staging_dir: PathBuf,
    /// Stop with the staged database and report its path.
    pub dry_run: bool,
    /// Run the validation checks.
    pub validate: bool,
    /// The exchange's open orders (JSON) to reconcile with.
    pub reconcile: Option<PathBuf>,
    /// Move the result here instead of replacing the live database.
    pub output: Option<PathBuf>,
    /// Fail instead of falling back over a gap in the chain.
    pub strict: bool,
    /// A pipeline file to run instead of the built-in `restore` pipeline.
    pub pipeline: Option<PathBuf>,
    /// `--set key=value` overrides, applied after the options above.
    pub overrides: Vec<(String, String)>,
    /// `integrity_check` instead of `quick_check`.
    pub integrity_check: bool,
}

impl RestoreOptions {
    /// Defaults for a repository, a live database and a target (staging in
    /// `.genesis/recovery`, validation on, real restore).
    pub fn new(repo: impl Into<PathBuf>, db: impl Into<PathBuf>, target: Target) -> Self {
        RestoreOptions {
            repo: repo.into(),
            db: db.into(),
            target,
            staging_dir: PathBuf::from(crate::wal_apply::DEFAULT_STAGING_DIR),
            dry_run: false,
            validate: true,
            reconcile: None,
            output: None,
            strict: false,
            pipeline: None,
            overrides: Vec::new(),
            integrity_check: false,
        }
    }
}

/// What a restore did (the recovery guide's result, plus what this tool adds).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreResult {
    /// The database was produced, validation (if run) passed, and it was
    /// applied (real restore) or left/moved as asked.
    pub success: bool,
    /// The instant asked for (for targets that are not times, the restore point's).
    pub target_timestamp: String,
    /// The snapshot the chain starts from.
    pub full_backup_used: String,
    /// Segments applied on top of it.
    pub incremental_count: usize,
    /// The objects the restore read, by kind and level (`snapshot`, `L0`,
    /// `L1`, ..., `events`).
    pub objects_read: std::collections::BTreeMap<String, usize>,
    /// Peak resident memory of this process so far (Linux `VmHWM`), bytes:
    /// for the command line, the restore's own peak.
    pub peak_rss_bytes: Option<u64>,
    pub recovery_time_seconds: f64,
    pub dry_run: bool,
    /// Where the recovered database is: the staged file (dry run, or not
    /// applied), the `--output` path, or the live path.
    pub recovered_db_path: PathBuf,
    /// Whether the live database was replaced.
    pub applied: bool,
    pub restored_txid: u64,
    pub generation: String,
    /// The proven database checksum at the restore point.
    pub checksum: String,
    pub restore_point_timestamp: String,
    /// Seconds of committed history before the target that the restore could
    /// not bring back: 0 when the event archive reached the target without a
    /// gap (every event up to it was replayed), else the target (or the
    /// requested point's commit time) minus the state reached (the restore
    /// point or the last event replayed). For a txid, backup or latest target
    /// without a gap, 0: the point itself is restored.
    pub rpo_gap_seconds: f64,
    /// History before the target is missing from the result: a gap in the
    /// backups that the event archive could not bridge (the CLI exits with
    /// code 5, "restored with data loss").
    pub data_loss: bool,
    pub events_replayed: u64,
    /// `created_at` of the last event replayed.
    pub replayed_until: Option<String>,
    /// The instant the tables *not* rebuilt from events (anything outside
    /// the trading projections) reached: the commit time of the restore
    /// point, the last capture at or before the target. Event replay makes
    /// the trading tables exact to the event; it does not move these.
    pub non_event_tables_at: String,
    pub replay: Option<serde_json::Value>,
    /// Set when a gap (a missing, unreadable or damaged object or manifest)
    /// made the restore start from another point than the target's: the gap,
    /// the point used, whether the event archive bridged it, the events
    /// replayed from there.
    pub fallback: Option<Fallback>,
    /// Unreadable manifests whose place in the chain cannot be told (a
    /// manifest key that names no object): reported, not a gap of this restore.
    pub unplaced_manifests: Vec<genesis_core::repo::lost::LostObject>,
    /// The live database as it was before the restore.
    pub pre_recovery_backup: Option<PathBuf>,
    /// Why the database was not applied, when it was not.
    pub not_applied_reason: Option<String>,
    pub pipeline: String,
    pub stages: Vec<StageReport>,
    pub validation: Option<ValidationReport>,
    pub reconciliation: Option<serde_json::Value>,
    pub reconciled: Option<bool>,
}

/// The lock file of restores of the live database `db`.
pub fn restore_lock_path(db: &Path) -> PathBuf {
    sibling(db, "-genesis-restore.lock")
}

/// Whether a process with this pid is running (Linux: `/proc/<pid>`). Unknown
/// counts as running, so that nothing in use is ever removed.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

/// Removes what crashed restores left in the staging directory: staged files
/// and their side files whose process is gone. Returns the paths removed.
///
/// # Errors
/// I/O failures reading the directory or removing a file.
pub fn clean_staging_dir(staging_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(staging_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io("read the staging directory", staging_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read the staging directory", staging_dir, e))?;
        let name = entry.file_name();
        let Some((_, pid)) = name.to_str().and_then(parse_staged_file_name) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        remove_if_exists(&path)?;
        tracing::info!(path = %path.display(), "removed the leftover of a crashed restore");
        removed.push(path);
    }
    Ok(removed)
}

fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

/// The built-in restore pipeline's text.
pub const RESTORE_PIPELINE: &str = include_str!("../../../pipelines/restore.toml");

/// The `[params]` keys a pipeline text declares (to pass only those).
fn declared_params(text: &str) -> Vec<String> {
    text.parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("params").and_then(|p| p.as_table()).cloned())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// What a pipeline run to a staged database gives back.
pub(crate) struct StagedRun {
    pub staged: StagedDatabase,
    pub stages: Vec<StageReport>,
    pub pipeline: String,
}

/// Compiles and runs a pipeline (the file given, or `builtin_text`) with the
/// given parameters set where the pipeline declares them (text ones as
/// `--set` would, typed ones as they are: the restore's target), then the
/// user's overrides, and returns the staged database the last stage emitted.
pub(crate) fn run_to_staged(
    pipeline: Option<&Path>,
    builtin_name: &str,
    builtin_text: &str,
    params: Vec<(String, String)>,
    typed: Vec<(String, ParamValue)>,
    overrides: &[(String, String)],
    progress: Arc<dyn Progress>,
) -> Result<StagedRun> {
    let registry = crate::registry();
    let loader: Arc<dyn PluginLoader> =
        Arc::new(LibraryLoader::new().reserving(registry.names().iter().map(|s| s.to_string())));
    let (text, file) = match pipeline {
        Some(p) => (
            fs::read_to_string(p).map_err(|e| Error::io("read pipeline file", p, e))?,
            p.to_path_buf(),
        ),
        None => (
            builtin_text.to_string(),
            PathBuf::from(format!("pipelines/{builtin_name}.toml")),
        ),
    };
    let declared = declared_params(&text);
    let mut all = Overrides {
        text: params
            .into_iter()
            .filter(|(k, _)| declared.contains(k))
            .collect(),
        typed: typed
            .into_iter()
            .filter(|(k, _)| declared.contains(k))
            .collect(),
    };
    all.text.extend(overrides.iter().cloned());
    let compiled = match pipeline {
        Some(p) => compile_file_with(p, &registry, loader.as_ref(), &all)?,
        None => compile_str_with(&text, &file, &registry, loader.as_ref(), &all)?,
    };
    let name = compiled.name.clone();
    let outcome = compiled
        .run(progress, CancelToken::default())
        .map_err(|failure| {
            tracing::debug!("{failure}");
            failure.error
        })?;
    let staged = outcome
        .outputs
        .into_iter()
        .rev()
        .find_map(|a| match a {
            genesis_core::pipeline::Artifact::StagedDatabase(s) => Some(*s),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Usage(format!(
                "pipeline {name:?} ({}) produces no staged database; a restore needs a pipeline that runs through wal-apply",
                file.display()
            ))
        })?;
    Ok(StagedRun {
        staged,
        stages: outcome.stages,
        pipeline: name,
    })
}

/// This process's peak resident memory (`VmHWM` of `/proc/self/status`,
/// which a new program starts afresh, unlike `getrusage`'s `ru_maxrss`,
/// which keeps the peak of the process that spawned it).
fn peak_rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The absolute form of a path whose last component may not exist yet:
/// its folder canonicalized, its name kept.
fn resolved(path: &Path) -> Option<PathBuf> {
    let dir = parent_dir(path)?.canonicalize().ok()?;
    Some(dir.join(path.file_name()?))
}

/// Checks `--output` before any work: its folder exists and takes new files,
/// it is not the live database nor one of its side files, not an existing
/// file, and not inside the backup repository (a database written there
/// would be read as part of the repository).
fn check_output(out: &Path, opts: &RestoreOptions) -> Result<()> {
    let bad = |why: String| Error::Usage(format!("--output {}: {why}", out.display()));
    let name = out
        .file_name()
        .ok_or_else(|| bad("name a file, not a folder".into()))?;
    let dir = parent_dir(out).ok_or_else(|| bad("name a file".into()))?;
    if !dir.is_dir() {
        return Err(bad(format!(
            "its folder {} does not exist; create it first",
            dir.display()
        )));
    }
    let probe = dir.join(format!(".genesis-output-probe-{}.tmp", std::process::id()));
    match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(bad(format!(
                "its folder {} does not take new files ({e}); choose a writable folder",
                dir.display()
            )))
        }
    }
    let out_abs = resolved(out).ok_or_else(|| bad("cannot resolve its folder".into()))?;
    if let Some(db_abs) = resolved(&opts.db) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut side = db_abs.clone().into_os_string();
            side.push(suffix);
            if out_abs.as_os_str() == side {
                return Err(bad(if suffix.is_empty() {
                    "it names the live database; leave --output out for a real restore".into()
                } else {
                    format!(
                        "it names the live database's {suffix} file ({}); SQLite would read it as part of the live database",
                        side.to_string_lossy()
                    )
                }));
            }
        }
    }
    if let Ok(repo_abs) = opts.repo.canonicalize() {
        if out_abs.starts_with(&repo_abs) {
            return Err(bad(format!(
                "it is inside the backup repository {}; write the restored database elsewhere",
                opts.repo.display()
            )));
        }
    }
    if out.exists() {
        return Err(bad(format!(
            "already exists; choose another --output or remove it first ({})",
            name.to_string_lossy()
        )));
    }
    Ok(())
}

/// The folders from `dir` up that do not exist yet (deepest first), so that
/// a failed restore can remove the ones it created.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Some(dir.to_path_buf());
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        cur = d.parent().map(Path::to_path_buf);
        out.push(d);
    }
    out
}

/// The RPO gap of a staged restore, whether history was lost, and the
/// fallback as it ended (with the events replayed, and a hole in the event
/// archive that event-replay found at the start of its run).
fn rpo_and_fallback(staged: &StagedDatabase, target: &Target) -> (f64, bool, Option<Fallback>) {
    let Some(plan) = staged.plan.as_ref() else {
        return (0.0, false, None);
    };
    let archive_gap = staged
        .replay
        .as_ref()
        .and_then(|r| r.get("archive_gap"))
        .cloned();
    let mut fallback = plan.fallback.clone();
    if let Some(gap) = &archive_gap {
        let f = fallback.get_or_insert_with(|| Fallback {
            gap: String::new(),
            lost: Vec::new(),
            requested: format!("txid {}", plan.requested_txid),
            point_used: plan.point.clone(),
            full_backup_used: plan.snapshot.id.clone(),
            archive_reaches_target: false,
            events_replayed: 0,
        });
        let text = format!(
            "the event archive has no event {} after the restore point (the next archived one is {}): an event object is lost",
            gap["expected_sequence"], gap["found_sequence"]
        );
        f.gap = if f.gap.is_empty() {
            text
        } else {
            format!("{}; {text}", f.gap)
        };
        f.archive_reaches_target = false;
    }
    if let Some(f) = fallback.as_mut() {
        f.events_replayed = staged.events_replayed;
    }
    let complete = plan.archive_complete && archive_gap.is_none();
    let replay_matters = matches!(target, Target::Time { .. }) || fallback.is_some();
    let rpo = if !replay_matters || complete {
        0.0
    } else {
        let reached = match (staged.replayed_until, staged.point_time) {
            (Some(r), Some(p)) => Some(r.max(p)),
            (r, p) => r.or(p),
        };
        match (plan.requested_time, reached) {
            (Some(at), Some(r)) => ((at - r).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0),
            _ => 0.0,
        }
    };
    let data_loss = fallback.is_some() && !complete;
    (rpo, data_loss, fallback)
}

/// Restores a database as `opts` says; see the module documentation.
///
/// # Errors
/// `Error::Locked` when another restore of the same live database runs;
/// `Error::Usage`/`Error::Config` for bad options, targets or pipelines;
/// `Error::Corrupt` naming a damaged object (nothing is applied);
/// I/O failures. A validation failure is not an error: the result has
/// `success = false` and the database is not applied.
pub fn restore(opts: &RestoreOptions, progress: Arc<dyn Progress>) -> Result<RestoreResult> {
    let started = Instant::now();
    let db_dir = parent_dir(&opts.db).ok_or_else(|| {
        Error::Usage(format!("{} is not a database file path", opts.db.display()))
    })?;
    if !db_dir.is_dir() {
        return Err(Error::Usage(format!(
            "the directory of the live database {} does not exist",
            opts.db.display()
        )));
    }
    if let Some(out) = &opts.output {
        check_output(out, opts)?;
    }
    let _lock = LockFile::try_acquire(
        &restore_lock_path(&opts.db),
        &format!("restore of {}", opts.db.display()),
    )?;
    clean_staging_dir(&opts.staging_dir)?;
    clean_apply_leftovers(&opts.db)?;
    if !opts.dry_run && opts.output.is_none() {
        if let Some(h) = LockFile::holder(&genesis_core::capture::capture_lock_path(&opts.db)) {
            tracing::warn!(
                "a capturer ({}, pid {}) is replicating {}; it will start a new generation after the restore. Stop the application and the capturer before restoring.",
                h.purpose,
                h.pid,
                opts.db.display()
            );
        }
    }

    let params = vec![
        ("repository".to_string(), opts.repo.display().to_string()),
        ("database".to_string(), opts.db.display().to_string()),
        (
            "staging_dir".to_string(),
            opts.staging_dir.display().to_string(),
        ),
        ("strict".to_string(), opts.strict.to_string()),
        ("validate".to_string(), opts.validate.to_string()),
        (
            "integrity_check".to_string(),
            opts.integrity_check.to_string(),
        ),
        (
            "exchange_orders".to_string(),
            opts.reconcile
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    ];
    let created = missing_dirs(&opts.staging_dir);
    // The target goes to fetch typed, as the caller gave it.
    let typed = vec![(
        "target".to_string(),
        ParamValue::Target(opts.target.clone()),
    )];
    let run = run_to_staged(
        opts.pipeline.as_deref(),
        "restore",
        RESTORE_PIPELINE,
        params,
        typed,
        &opts.overrides,
        progress,
    )
    .inspect_err(|_| {
        // Leave no empty staging folders (`.genesis/recovery`) behind.
        for d in &created {
            let _ = fs::remove_dir(d);
        }
    })?;
    let staged = run.staged;
    settle(&staged.path)?;

    let plan = staged.plan.clone();
    let point_time = staged.point_time;
    let target_time = match &opts.target {
        Target::Time { at } => Some(*at),
        _ => None,
    };
    let (rpo_gap_seconds, data_loss, fallback) = rpo_and_fallback(&staged, &opts.target);
    let valid = staged.validation.as_ref().is_none_or(|v| v.is_consistent);

    let mut applied = false;
    let mut pre_recovery_backup = None;
    let mut not_applied_reason = None;
    let recovered_db_path = if opts.dry_run {
        not_applied_reason = Some("dry run".to_string());
        staged.path.clone()
    } else if !valid {
        not_applied_reason = Some(format!(
            "validation failed; the staged database is left at {} for inspection",
            staged.path.display()
        ));
        staged.path.clone()
    } else if let Some(out) = &opts.output {
        if let Err(e) = move_file(&staged.path, out) {
            remove_database_files(&staged.path);
            return Err(e);
        }
        not_applied_reason = Some("--output given: the live database was not touched".into());
        out.clone()
    } else {
        pre_recovery_backup = apply(&staged.path, &opts.db)?;
        applied = true;
        opts.db.clone()
    };

    Ok(RestoreResult {
        success: valid,
        target_timestamp: target_time
            .or(point_time)
            .map(format_exact)
            .unwrap_or_default(),
        full_backup_used: plan
            .as_ref()
            .map(|p| p.snapshot.id.clone())
            .unwrap_or_default(),
        incremental_count: plan.as_ref().map_or(0, |p| p.segments.len()),
        objects_read: plan
            .as_ref()
            .map(|p| p.objects_by_level())
            .unwrap_or_default(),
        peak_rss_bytes: peak_rss_bytes(),
        recovery_time_seconds: started.elapsed().as_secs_f64(),
        dry_run: opts.dry_run,
        recovered_db_path,
        applied,
        restored_txid: staged.txid,
        generation: staged.generation.clone(),
        checksum: staged.checksum.clone(),
        restore_point_timestamp: point_time.map(format_exact).unwrap_or_default(),
        rpo_gap_seconds,
        events_replayed: staged.events_replayed,
        replayed_until: staged.replayed_until.map(format_rfc3339),
        replay: staged.replay.clone(),
        fallback,
        unplaced_manifests: plan
            .as_ref()
            .map(|p| p.unplaced_manifests.clone())
            .unwrap_or_default(),
        data_loss,
        non_event_tables_at: point_time.map(format_exact).unwrap_or_default(),
        pre_recovery_backup,
        not_applied_reason,
        pipeline: run.pipeline,
        stages: run.stages,
        validation: staged.validation.clone(),
        reconciliation: staged.reconciliation.clone(),
        reconciled: staged.reconciled,
    })
}
