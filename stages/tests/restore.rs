//! Restores of real captured databases through the built-in pipelines: exact
//! states at txids and times, corrupt and missing objects, targets outside
//! the repository, dry runs, the apply with its pre-recovery backup, the
//! lock, leftovers of crashed runs, event replay, the drill, and the
//! pipeline files themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::lock::LockFile;
use genesis_core::pipeline::{compile_file, compile_str, Artifact, CancelToken, NoPlugins};
use genesis_core::plan::Target;
use genesis_core::progress::NoProgress;
use genesis_core::repo::catalog::RestorePoint;
use genesis_core::repo::Repository;
use genesis_core::Error;
use genesis_stages::restore::{restore_lock_path, RestoreOptions};
use genesis_stages::{drill, registry, restore, DrillOptions};
use rusqlite::Connection;

type Rows = Vec<(i64, String)>;

/// A WAL database written with rusqlite and captured into a repository.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    repo: PathBuf,
    writer: Option<Connection>,
    cap: Option<Capturer>,
    /// (txid, rows) after each capture step.
    steps: Vec<(u64, Rows)>,
}

fn dump(db: &Path) -> Rows {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let w = Connection::open(&db).unwrap();
        w.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        w.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, pad BLOB);")
            .unwrap();
        let repo = dir.path().join("repo");
        let r = Repository::open_local(&repo, true).unwrap();
        let mut opts = CaptureOptions::new(&db);
        opts.checkpoint_frames = 40;
        let cap = Capturer::open(opts, r).unwrap();
        Fixture {
            dir,
            db,
            repo,
            writer: Some(w),
            cap: Some(cap),
            steps: Vec::new(),
        }
    }

    fn w(&self) -> &Connection {
        self.writer.as_ref().unwrap()
    }

    /// Writes a few transactions (inserts, updates, deletes) then captures them.
    fn batch(&mut self, n: i64) {
        let base = self.steps.len() as i64 * 1000;
        for i in 0..n {
            let id = base + i;
            self.w()
                .execute(
                    "INSERT INTO t(id, v, pad) VALUES (?1, ?2, zeroblob(?3))",
                    rusqlite::params![id, format!("v{id}"), (i % 5) * 700],
                )
                .unwrap();
            if i % 4 == 3 {
                self.w()
                    .execute("UPDATE t SET v = v || 'u' WHERE id = ?1", [id - 2])
                    .unwrap();
            }
        }
        if self.steps.len() % 3 == 2 {
            self.w()
                .execute("DELETE FROM t WHERE id % 7 = 0", [])
                .unwrap();
        }
        let cap = self.cap.as_mut().unwrap();
        cap.step(false).unwrap();
        let txid = cap.last_txid();
        self.steps.push((txid, dump(&self.db)));
        std::thread::sleep(Duration::from_millis(5));
    }

    /// Stops the capturer and closes the writer (as before a real restore).
    fn stop(&mut self) {
        if let Some(cap) = self.cap.take() {
            cap.finish().unwrap();
        }
        self.writer.take();
    }

    fn points(&self) -> Vec<RestorePoint> {
        Repository::open_local(&self.repo, false)
            .unwrap()
            .catalog()
            .unwrap()
            .restore_points()
    }

    fn opts(&self, target: Target) -> RestoreOptions {
        let mut o = RestoreOptions::new(&self.repo, &self.db, target);
        o.staging_dir = self.dir.path().join("staging");
        o
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn staged_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("staging"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn progress() -> Arc<NoProgress> {
    Arc::new(NoProgress)
}

fn captured(batches: usize) -> Fixture {
    let mut f = Fixture::new();
    for _ in 0..batches {
        f.batch(12);
    }
    f
}

#[test]
fn restores_to_txids_and_times_equal_the_source() {
    let f = captured(6);
    for (i, (txid, rows)) in f.steps.iter().enumerate() {
        let mut o = f.opts(Target::Txid { txid: *txid });
        let out = f.out(&format!("txid-{i}.db"));
        o.output = Some(out.clone());
        let r = restore(&o, progress()).unwrap();
        assert!(r.success && !r.applied, "{r:?}");
        assert_eq!(r.restored_txid, *txid);
        assert_eq!(r.recovered_db_path, out);
        assert_eq!(&dump(&out), rows, "txid {txid}");
    }
    // A time between two captured points restores the earlier one.
    let points = f.points();
    for (i, (txid, rows)) in f.steps.iter().enumerate().skip(1) {
        let p = points.iter().find(|p| p.txid == *txid).unwrap();
        let next = points.iter().find(|q| q.txid > p.txid);
        let at: DateTime<Utc> = match next {
            Some(q) => p.time + (q.time - p.time) / 2,
            None => p.time,
        };
        let mut o = f.opts(Target::Time { at });
        let out = f.out(&format!("time-{i}.db"));
        o.output = Some(out.clone());
        let r = restore(&o, progress()).unwrap();
        assert_eq!(r.restored_txid, *txid, "at {at}");
        assert_eq!(&dump(&out), rows, "time {at}");
        assert!(r.rpo_gap_seconds >= 0.0);
        assert!(r.fallback.is_none(), "{:?}", r.fallback);
        let v = r.validation.unwrap();
        assert!(v.is_consistent, "{v:?}");
    }
}

/// The target reaches fetch as the value given, never through its text:
/// an instant at a commit's exact nanosecond restores that commit (one
/// rounded to microseconds would fall before it and restore the one
/// before), and a backup id is looked up as it is (text would trim it).
#[test]
fn a_typed_target_reaches_fetch_exactly() {
    let f = captured(4);
    let points = f.points();
    // The premise: commit times carry digits below the microsecond.
    assert!(
        points
            .iter()
            .any(|p| p.time.timestamp_subsec_nanos() % 1000 != 0),
        "{points:?}"
    );
    for (i, p) in points.iter().enumerate().skip(1) {
        // A capture step stamps every commit it reads with one time: the
        // target is the last of them.
        let last = points
            .iter()
            .filter(|q| q.time == p.time)
            .map(|q| q.txid)
            .max();
        let mut o = f.opts(Target::Time { at: p.time });
        o.output = Some(f.out(&format!("exact-{i}.db")));
        o.validate = false;
        let r = restore(&o, progress()).unwrap();
        assert_eq!(Some(r.restored_txid), last, "at {}", p.time);
        assert_eq!(r.target_timestamp, genesis_core::time::format_exact(p.time));
    }
    let snapshot = Repository::open_local(&f.repo, false)
        .unwrap()
        .catalog()
        .unwrap()
        .generations[0]
        .snapshots[0]
        .id
        .clone();
    let mut o = f.opts(Target::BackupId {
        id: format!("{snapshot} "),
    });
    o.output = Some(f.out("backup-with-space.db"));
    let err = restore(&o, progress()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("no backup with id \"{snapshot} \"")),
        "{err}"
    );
}

#[test]
fn a_corrupt_segment_is_a_gap_found_before_anything_is_written() {
    let mut f = captured(5);
    f.stop();
    let before = std::fs::read(&f.db).unwrap();
    let segs = f.repo.join("segments");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&segs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let victim = &names[names.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let id = victim
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".zst")
        .to_string();
    let catalog = Repository::open_local(&f.repo, false)
        .unwrap()
        .catalog()
        .unwrap();
    let damaged = catalog.find(&id).unwrap().clone();

    // Strict: refused, naming the object, nothing written.
    let mut o = f.opts(Target::Latest);
    o.strict = true;
    let err = restore(&o, progress()).unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    assert!(err.to_string().contains(&id), "{err} should name {id}");
    assert_eq!(std::fs::read(&f.db).unwrap(), before, "live db changed");
    assert!(
        f.staged_files().iter().all(|n| !n.ends_with(".db")),
        "{:?}",
        f.staged_files()
    );

    // Otherwise: the point before the damaged segment, with the loss said
    // (no event archive in this database: the history after it is lost).
    let mut o = f.opts(Target::Latest);
    let out = f.out("fallback.db");
    o.output = Some(out.clone());
    let r = restore(&o, progress()).unwrap();
    let fb = r.fallback.clone().expect("a fallback");
    assert!(fb.gap.contains(&id) && fb.gap.contains("damaged"), "{fb:?}");
    assert_eq!(r.restored_txid, damaged.txid_min - 1);
    assert!(r.data_loss && !fb.archive_reaches_target, "{r:?}");
    assert!(r.rpo_gap_seconds > 0.0, "{r:?}");
    let rows = &f
        .steps
        .iter()
        .find(|(t, _)| *t == r.restored_txid)
        .unwrap()
        .1;
    assert_eq!(&dump(&out), rows);
    assert_eq!(std::fs::read(&f.db).unwrap(), before, "live db changed");
}

#[test]
fn targets_outside_the_repository_name_what_exists() {
    let f = captured(2);
    let at = genesis_core::time::parse_timestamp("2001-01-01T00:00:00").unwrap();
    let mut o = f.opts(Target::Time { at });
    o.dry_run = true;
    let err = restore(&o, progress()).unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err}");
    assert!(
        err.to_string().contains("restore points exist from"),
        "{err}"
    );

    let at = Utc::now() + chrono::TimeDelta::hours(2);
    let mut o = f.opts(Target::Time { at });
    o.dry_run = true;
    let err = restore(&o, progress()).unwrap_err();
    let last = f.steps.last().unwrap().0;
    assert!(matches!(err, Error::Usage(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("in the future"), "{text}");
    assert!(
        text.contains(&format!("latest restore point is txid {last}")),
        "{text}"
    );

    let mut o = f.opts(Target::Txid { txid: 999_999 });
    o.dry_run = true;
    assert!(restore(&o, progress())
        .unwrap_err()
        .to_string()
        .contains("holds txids"));
}

#[test]
fn a_dry_run_leaves_the_live_database_untouched() {
    let mut f = captured(3);
    let txid = f.steps[1].0;
    f.batch(5);
    f.stop();
    let before = std::fs::read(&f.db).unwrap();
    let mut o = f.opts(Target::Txid { txid });
    o.dry_run = true;
    let r = restore(&o, progress()).unwrap();
    assert!(r.success && r.dry_run && !r.applied);
    assert_eq!(std::fs::read(&f.db).unwrap(), before);
    assert!(r
        .recovered_db_path
        .starts_with(f.dir.path().join("staging")));
    assert_eq!(dump(&r.recovered_db_path), f.steps[1].1);
    let report =
        genesis_stages::validate_database(&r.recovered_db_path, &Default::default()).unwrap();
    assert!(report.is_consistent, "{report:?}");
}

#[test]
fn a_real_restore_replaces_the_live_database_and_keeps_the_old_one() {
    let mut f = captured(4);
    let (txid, rows) = f.steps[1].clone();
    // Changes after the last capture: only the pre-recovery backup has them.
    f.w()
        .execute("INSERT INTO t(id, v) VALUES (-1, 'late')", [])
        .unwrap();
    let live_rows = dump(&f.db);
    f.stop();
    let r = restore(&f.opts(Target::Txid { txid }), progress()).unwrap();
    assert!(r.success && r.applied, "{r:?}");
    assert_eq!(r.recovered_db_path, f.db);
    assert_eq!(dump(&f.db), rows);
    let backup = r.pre_recovery_backup.expect("a pre-recovery backup");
    assert!(backup.to_string_lossy().contains("live.db.pre-recovery-"));
    assert_eq!(dump(&backup), live_rows);
    assert!(
        !genesis_core::lock::sibling(&f.db, "-wal").exists() || {
            // A WAL beside the new database may only be one SQLite created since.
            std::fs::metadata(genesis_core::lock::sibling(&f.db, "-wal"))
                .unwrap()
                .len()
                == 0
        }
    );
    assert!(f.staged_files().iter().all(|n| !n.ends_with(".db")));
}

#[test]
fn a_second_restore_fails_at_once_naming_the_first() {
    let f = captured(2);
    let _held = LockFile::try_acquire(&restore_lock_path(&f.db), "restore of the test").unwrap();
    let started = std::time::Instant::now();
    let err = restore(&f.opts(Target::Latest), progress()).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("restore of the test"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn leftovers_of_a_crashed_run_are_cleaned_on_the_next_run() {
    let f = captured(2);
    let staging = f.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let dead = (3_000_000u32..4_000_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let stale = staging.join(format!("restore-7-{dead}.db"));
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::write(staging.join(format!("restore-7-{dead}.db-wal")), b"x").unwrap();
    let tmp = genesis_core::lock::sibling(&f.db, &format!(".genesis-restore-{dead}.tmp"));
    std::fs::write(&tmp, b"partial").unwrap();
    let mine = staging.join(format!("restore-7-{}.db", std::process::id()));
    std::fs::write(&mine, b"in use").unwrap();

    let mut o = f.opts(Target::Latest);
    o.dry_run = true;
    restore(&o, progress()).unwrap();
    assert!(!stale.exists());
    assert!(!staging.join(format!("restore-7-{dead}.db-wal")).exists());
    assert!(!tmp.exists());
    assert!(mine.exists(), "a file of a running process is kept");
}

#[test]
fn trading_restores_replay_events_to_the_target_validate_reconcile_and_refuse_bad_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("genesis.db");
    let mut w = Connection::open(&db).unwrap();
    w.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let mut sim = genesis_trading::simulate::Simulator::open(&w, 7).unwrap();
    let repo = dir.path().join("repo");
    let mut cap = Capturer::open(
        CaptureOptions::new(&db),
        Repository::open_local(&repo, true).unwrap(),
    )
    .unwrap();
    for _ in 0..60 {
        sim.commit_one(&mut w).unwrap();
    }
    cap.step(false).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    // Between two captures: events whose state only event replay can reach.
    let mut marks = Vec::new();
    for i in 0..40 {
        let ev = sim.commit_one(&mut w).unwrap();
        if i % 10 == 4 {
            let hash = genesis_trading::state_hash(&w).unwrap();
            marks.push((ev, hash));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cap.step(false).unwrap();
    cap.finish().unwrap();

    for (i, (ev, hash)) in marks.iter().enumerate() {
        let at = ev.time().unwrap();
        let mut o = RestoreOptions::new(&repo, &db, Target::Time { at });
        o.staging_dir = dir.path().join("staging");
        let out = dir.path().join(format!("r{i}.db"));
        o.output = Some(out.clone());
        let r = restore(&o, progress()).unwrap();
        assert!(r.events_replayed > 0, "{r:?}");
        assert_eq!(r.rpo_gap_seconds, 0.0, "{r:?}");
        let c = Connection::open(&out).unwrap();
        assert_eq!(
            &genesis_trading::state_hash(&c).unwrap(),
            hash,
            "at event #{}",
            ev.sequence_number
        );
        let max: i64 = c
            .query_row("SELECT max(sequence_number) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max, ev.sequence_number);
        let v = r.validation.unwrap();
        assert!(v.is_consistent, "{v:?}");
        assert_eq!(v.metrics["trading_schema"], true);
    }

    // Reconciliation against the exchange's view of the latest state.
    let exact = genesis_trading::simulate::exchange_open_orders_binance(&w, None).unwrap();
    let planted = genesis_trading::simulate::exchange_open_orders_binance(&w, Some(3)).unwrap();
    for (name, orders, reconciled) in [("exact", exact, true), ("planted", planted, false)] {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&orders).unwrap()).unwrap();
        let mut o = RestoreOptions::new(&repo, &db, Target::Latest);
        o.staging_dir = dir.path().join("staging");
        o.dry_run = true;
        o.reconcile = Some(file);
        let r = restore(&o, progress()).unwrap();
        assert!(r.success, "{r:?}");
        assert_eq!(
            r.reconciled,
            Some(reconciled),
            "{name}: {:?}",
            r.reconciliation
        );
        let rec = r.reconciliation.unwrap();
        assert!(rec["accuracy"].as_f64().is_some(), "{rec}");
    }
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, b"{\"orders\": 1}").unwrap();
    let mut o = RestoreOptions::new(&repo, &db, Target::Latest);
    o.staging_dir = dir.path().join("staging");
    o.dry_run = true;
    o.reconcile = Some(junk);
    let err = restore(&o, progress()).unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err}");

    // A state that fails validation is never applied.
    let mut cap = Capturer::open(
        CaptureOptions::new(&db),
        Repository::open_local(&repo, true).unwrap(),
    )
    .unwrap();
    w.execute("UPDATE balances SET total_balance = total_balance + 1", [])
        .unwrap();
    cap.step(false).unwrap();
    cap.finish().unwrap();
    drop(w);
    let before = std::fs::read(&db).unwrap();
    let mut o = RestoreOptions::new(&repo, &db, Target::Latest);
    o.staging_dir = dir.path().join("staging");
    let r = restore(&o, progress()).unwrap();
    assert!(!r.success && !r.applied, "{r:?}");
    assert!(r.not_applied_reason.unwrap().contains("validation failed"));
    let v = r.validation.unwrap();
    assert!(
        v.errors.iter().any(|f| f.code == "balance_inconsistent"),
        "{v:?}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(r.recovered_db_path.exists());
}

#[test]
fn a_drill_restores_the_latest_point_and_writes_metrics() {
    let f = captured(3);
    let before = std::fs::read(&f.db).unwrap();
    let mut o = DrillOptions::new(&f.repo, f.dir.path().join("drill"));
    let metrics = f.dir.path().join("textfile/genesis.prom");
    o.metrics_file = Some(metrics.clone());
    let r = drill(&o, progress()).unwrap();
    assert!(r.success && r.validation_pass, "{r:?}");
    assert_eq!(r.restored_txid, f.steps.last().unwrap().0);
    assert!(r.rto_seconds > 0.0 && r.rpo_seconds >= 0.0);
    assert_eq!(r.restored_db_path, None);
    let text = std::fs::read_to_string(&metrics).unwrap();
    for name in [
        "genesis_recovery_drill_rto_seconds ",
        "genesis_recovery_drill_rpo_seconds ",
        "genesis_recovery_drill_validation_pass 1",
        "genesis_recovery_drill_stage_seconds{stage=\"wal-apply\"}",
        "genesis_recovery_drill_last_success_timestamp_seconds ",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert_eq!(std::fs::read(&f.db).unwrap(), before);
}

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines")
}

#[test]
fn the_built_in_pipelines_compile() {
    let reg = registry();
    for (name, _) in genesis_stages::BUILTIN_PIPELINES {
        let path = pipelines_dir().join(format!("{name}.toml"));
        let p =
            compile_file(&path, &reg, &NoPlugins, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.name, *name);
    }
    let err = compile_str(
        "name = \"x\"\n[params]\ntarget = \"txid:abc\"\n[[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n",
        Path::new("x.toml"),
        &reg,
        &NoPlugins,
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("txid:abc"), "{err}");
}

#[test]
fn the_verify_backups_pipeline_stops_after_verify() {
    let f = captured(3);
    let reg = registry();
    let path = pipelines_dir().join("verify-backups.toml");
    let p = compile_file(
        &path,
        &reg,
        &NoPlugins,
        &[("repository".into(), f.repo.display().to_string())],
    )
    .unwrap();
    let outcome = p.run(progress(), CancelToken::default()).unwrap();
    let verified = outcome
        .outputs
        .iter()
        .filter(|a| matches!(a, Artifact::VerifiedObject(_)))
        .count();
    assert!(verified >= 2, "{verified}");
    assert!(f.staged_files().is_empty());
}

/// Collects what wal-apply emits.
struct Collect(Vec<Artifact>);

impl genesis_core::pipeline::Emit for Collect {
    fn emit(&mut self, a: Artifact) -> genesis_core::Result<()> {
        self.0.push(a);
        Ok(())
    }
}

/// wal-apply writes each page once only because the segments come before
/// the snapshot: fed the verified objects in the order fetch sends them it
/// builds the database; fed the snapshot before the segments, or a segment
/// after the snapshot, it fails naming the segment and leaves no staged file.
#[test]
fn wal_apply_needs_the_segments_before_the_snapshot() {
    let f = captured(3);
    let reg = registry();
    let p = compile_file(
        &pipelines_dir().join("verify-backups.toml"),
        &reg,
        &NoPlugins,
        &[("repository".into(), f.repo.display().to_string())],
    )
    .unwrap();
    let outputs = p.run(progress(), CancelToken::default()).unwrap().outputs;
    let plan = outputs
        .iter()
        .find(|a| matches!(a, Artifact::Plan(_)))
        .unwrap();
    let objects: Vec<&Artifact> = outputs
        .iter()
        .filter(|a| matches!(a, Artifact::VerifiedObject(_)))
        .collect();
    let kind = |a: &Artifact| match a {
        Artifact::VerifiedObject(o) => o.manifest.kind,
        _ => unreachable!(),
    };
    let (snap, segs): (Vec<&Artifact>, Vec<&Artifact>) = objects
        .iter()
        .partition(|a| kind(a) == genesis_core::repo::ObjectKind::Snapshot);
    assert!(
        !segs.is_empty() && !snap.is_empty(),
        "a chain with segments"
    );
    assert!(
        kind(objects[objects.len() - 1]) == genesis_core::repo::ObjectKind::Snapshot,
        "fetch sends the snapshot last"
    );

    let staging = f.dir.path().join("order-staging");
    let run = |order: Vec<&Artifact>| -> genesis_core::Result<Vec<Artifact>> {
        let params = genesis_core::pipeline::Params::new();
        let mut config = toml::Table::new();
        config.insert(
            "staging_dir".into(),
            toml::Value::String(staging.display().to_string()),
        );
        let bindings = std::collections::BTreeMap::new();
        let ctx = genesis_core::pipeline::BuildContext {
            pipeline_file: Path::new("test.toml"),
            stage_id: "wal-apply",
            params: &params,
            bindings: &bindings,
            plugins: &NoPlugins,
        };
        let mut stage = reg
            .get("wal-apply")
            .unwrap()
            .build(&config, &ctx)
            .map_err(|e| Error::Failed(format!("{e:?}")))?;
        let sctx = genesis_core::pipeline::StageContext {
            stage_id: "wal-apply".into(),
            params: Arc::new(params.clone()),
            workers: 2,
            cancel: CancelToken::default(),
            progress: progress(),
        };
        let mut out = Collect(Vec::new());
        stage.process(plan.clone(), &sctx, &mut out)?;
        for a in order {
            stage.process(a.clone(), &sctx, &mut out)?;
        }
        stage.finish(&sctx, &mut out)?;
        Ok(out.0)
    };
    let staged_files = || {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };

    let mut wrong: Vec<&Artifact> = snap.clone();
    wrong.extend(segs.iter().copied());
    let err = run(wrong).unwrap_err().to_string();
    assert!(
        err.contains("had not arrived at wal-apply when the snapshot did"),
        "{err}"
    );
    assert_eq!(staged_files(), 0, "a refused build left its file");
    let mut late: Vec<&Artifact> = objects.clone();
    late.push(segs[0]);
    let err = run(late).unwrap_err().to_string();
    assert!(
        err.contains("arrived at wal-apply after the snapshot"),
        "{err}"
    );
    assert_eq!(staged_files(), 0, "a build stopped midway left its file");

    let built = run(objects.clone()).unwrap();
    let staged = built
        .iter()
        .find_map(|a| match a {
            Artifact::StagedDatabase(s) => Some(s),
            _ => None,
        })
        .unwrap();
    let (txid, rows) = f.steps.last().unwrap();
    assert_eq!(staged.txid, *txid);
    assert_eq!(&dump(&staged.path), rows);
}
