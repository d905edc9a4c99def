//! The capture matrix (issue 11): every page size SQLite allows that the
//! matrix names, {512, 1024, 4096, 8192, 65536}, times every auto_vacuum
//! mode, {NONE, FULL, INCREMENTAL}, each captured while the hostile kv writer
//! (a separate Python process: overflow blobs, updates, range deletes,
//! CREATE INDEX, ALTER TABLE, CREATE/DROP TABLE, VACUUM, incremental_vacuum,
//! a 10-page autocheckpoint, TRUNCATE and PASSIVE checkpoints, a concurrent
//! reader) commits.
//!
//! Each cell: `backup full`, then `backup replicate --interval 50ms
//! --checkpoint-frames 40` while the writer runs, SIGTERM; then
//! - `restore --latest --output` is the writer's final commit, byte for byte;
//! - EVERY captured txid is rebuilt (with the library's rebuild, the code a
//!   restore's wal-apply runs; the first, the last and a few others also
//!   through `restore --txid`), passes `PRAGMA integrity_check`, has the
//!   cell's page size and auto_vacuum mode, and is exactly the content the
//!   writer recorded for its commit; txids walk the writer's commits one by
//!   one (a repeat only where the writer ran a VACUUM, which is a transaction
//!   that changes no content);
//! - instants restored with `restore --timestamp` are the restore point the
//!   capturer observed last by then, whose content is a commit that began
//!   before the instant and is no older than what the previous capture had
//!   certainly seen, and pass `integrity_check`.
//!
//! The writer's record is the oracle (`kv_oracle`): the catalog decides only
//! which txid a timestamp picks, and that txid's content is then checked
//! against the writer.
//!
//! Default run: the five cells of the diagonal with 250 commits, the ten
//! others with 60; `GENESIS_SOAK=1`: every cell with 3,000 commits.
//! Items 0 and 1 of the issue have their own regression tests below.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::common::{soak, test_seed, Env, Rng};
use crate::kv_oracle::{
    auto_vacuum_number, describe, describe_one, json_try, kv_writer, ranges, read_kv_record,
    run_kv_writer, try_rebuild, wait_kv_writer, Described, KvOpts, KvRecord, Logged,
};

/// One cell's capture, with the knobs the regression tests turn.
#[derive(Debug, Clone)]
pub struct Cell {
    pub page_size: u32,
    pub auto_vacuum: &'static str,
    /// Commits before `backup full` (the writer also creates the database).
    pub setup_commits: u64,
    /// Commits while `replicate` runs.
    pub commits: u64,
    pub interval: &'static str,
    pub checkpoint_frames: u32,
    pub autocheckpoint: u32,
    pub vacuum_prob: f64,
    pub no_vacuum_before: u64,
    pub pause_every: u64,
    pub pause_ms: u64,
    /// Instants restored through `restore --timestamp`.
    pub instants: usize,
    /// Txids also restored through `restore --txid` (besides first and last).
    pub cli_txids: usize,
    /// The writer already commits while `backup full` runs and until
    /// `replicate` has started (otherwise it starts after `replicate`).
    pub write_during_full: bool,
    /// The application keeps a connection open between its runs, so that
    /// its last close does not checkpoint and delete the WAL before the
    /// capture starts.
    pub hold_app: bool,
    /// Compaction level spans `replicate` runs with, then `backup compact`
    /// once more after it (short, so that a cell's seconds of capture make
    /// objects of every level, which the checks below then restore through).
    pub compaction: &'static str,
}

/// The compaction spans of the matrix: 150 ms, 600 ms, 1.8 s.
pub const SHORT_LEVELS: &str = "150ms,600ms,1800ms";

impl Cell {
    pub fn new(page_size: u32, auto_vacuum: &'static str, commits: u64) -> Cell {
        Cell {
            page_size,
            auto_vacuum,
            setup_commits: 8,
            commits,
            interval: "50ms",
            checkpoint_frames: 40,
            autocheckpoint: 10,
            vacuum_prob: 0.01,
            no_vacuum_before: 0,
            pause_every: 25,
            pause_ms: 40,
            instants: 12,
            cli_txids: 3,
            write_during_full: false,
            hold_app: true,
            compaction: SHORT_LEVELS,
        }
    }
    fn name(&self) -> String {
        format!(
            "page_size={} auto_vacuum={}",
            self.page_size, self.auto_vacuum
        )
    }
}

/// What a cell's run found: every problem, named, and a few counts.
#[derive(Debug, Default)]
pub struct CellReport {
    pub problems: Vec<String>,
    pub txids: u64,
    pub first_txid: u64,
    pub last_txid: u64,
    pub shipped: u64,
    pub replicate_log: String,
}

impl CellReport {
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.problems.is_empty(),
            "{what}: {} problem(s) over txids {}..={} ({} restore points):\n  {}\n--- replicate's log (tail) ---\n{}",
            self.problems.len(),
            self.first_txid,
            self.last_txid,
            self.txids,
            self.problems.join("\n  "),
            tail(&self.replicate_log, 3000)
        );
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Checks one restored database against the writer: integrity, layout, and
/// content equal to the commit it claims to be (meta.n).
fn check_described(
    what: &str,
    d: &Result<Described, String>,
    cell: &Cell,
    rec: &KvRecord,
    problems: &mut Vec<String>,
) -> Option<i64> {
    let d = match d {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("{what}: unreadable database: {e}"));
            return None;
        }
    };
    let mut ok = true;
    if d.integrity != "ok" {
        problems.push(format!("{what}: integrity_check: {}", d.integrity));
        ok = false;
    }
    if d.page_size != cell.page_size || d.auto_vacuum != auto_vacuum_number(cell.auto_vacuum) {
        problems.push(format!(
            "{what}: page_size {} auto_vacuum {}, the source has {} and {}",
            d.page_size,
            d.auto_vacuum,
            cell.page_size,
            auto_vacuum_number(cell.auto_vacuum)
        ));
        ok = false;
    }
    match rec.commits.get(&d.n) {
        Some(c) if c.digest == d.digest => {}
        Some(_) => {
            problems.push(format!(
                "{what}: says it is commit {} but its content differs from what the writer committed",
                d.n
            ));
            ok = false;
        }
        None => {
            problems.push(format!("{what}: commit {} was never recorded", d.n));
            ok = false;
        }
    }
    ok.then_some(d.n)
}

/// Runs one cell and returns everything it found.
pub fn run_cell(cell: &Cell, seed: u64) -> CellReport {
    let env = Env::new();
    let mut report = CellReport::default();
    let record = env.path().join("record.txt");
    let mut wo = KvOpts::new(cell.page_size, cell.auto_vacuum, cell.setup_commits, seed);
    wo.autocheckpoint = cell.autocheckpoint;
    wo.vacuum_prob = 0.0;
    // The application keeps a connection open, so the WAL is not removed by
    // the writer's last close between the setup and the capture.
    run_kv_writer(&env, &record, &wo);
    let app = cell.hold_app.then(|| {
        let app = rusqlite::Connection::open(env.db()).expect("open db");
        app.query_row("SELECT count(*) FROM kv", [], |_| Ok(()))
            .expect("read kv");
        app
    });
    let mut wo = KvOpts::new(cell.page_size, cell.auto_vacuum, cell.commits, seed + 1);
    wo.autocheckpoint = cell.autocheckpoint;
    wo.vacuum_prob = cell.vacuum_prob;
    wo.no_vacuum_before = cell.no_vacuum_before;
    wo.pause_every = cell.pause_every;
    wo.pause_ms = cell.pause_ms;
    let early = cell.write_during_full.then(|| {
        let w = kv_writer(&env, &record, &wo);
        std::thread::sleep(Duration::from_millis(150));
        w
    });
    let (code, v) = env.json(&["backup", "full"]);
    assert_eq!(code, 0, "{}: backup full: {v}", cell.name());
    let rep = Logged::spawn(
        &env,
        &[
            "backup",
            "replicate",
            "--interval",
            cell.interval,
            "--checkpoint-frames",
            &cell.checkpoint_frames.to_string(),
            "--compaction-levels",
            cell.compaction,
        ],
    );
    let writer = early.unwrap_or_else(|| {
        // The writer starts once the capturer has resumed (commits made
        // before that are the write_during_full variant's subject).
        crate::common::wait_for_capture_lock(&env);
        std::thread::sleep(Duration::from_millis(300));
        kv_writer(&env, &record, &wo)
    });
    wait_kv_writer(writer);
    std::thread::sleep(Duration::from_millis(400));
    rep.signal("TERM");
    let (status, summary, log) = rep.finish();
    report.replicate_log = log;
    drop(app);
    if !status.success() {
        report
            .problems
            .push(format!("replicate exited with {status:?}"));
    }
    let rec = read_kv_record(&record);
    assert_eq!(
        rec.last().0 as u64,
        cell.setup_commits + cell.commits,
        "the writer's record is incomplete"
    );
    // The premise: the run did make every kind of change it is meant to.
    if cell.commits >= 30 {
        let stats = rec.runs.last().cloned().unwrap_or_default();
        let mut want = vec![
            "create",
            "drop",
            "alter",
            "index",
            "range_delete",
            "truncate",
        ];
        if cell.vacuum_prob > 0.0 {
            want.push("vacuum");
        }
        if cell.auto_vacuum == "incremental" {
            want.push("incremental_vacuum");
        }
        if cell.auto_vacuum != "none" {
            want.push("shrink");
        }
        for k in want {
            assert!(
                stats.get(k).copied().unwrap_or(0) > 0,
                "{}: the writer's run made no {k} ({stats:?}): the test did not test it",
                cell.name()
            );
        }
    }
    // Commits made while no capturer ran (between `backup full` and
    // `replicate`) can only be resumed while the WAL still holds them: when
    // the application restarted it meanwhile, a new generation is the right
    // answer (its snapshot holds those commits; they are not points of their
    // own). Only then may there be more than one generation.
    let log = &report.replicate_log;
    let restarted_unwatched = cell.write_during_full
        && (log.contains("the WAL was restarted while continuity was not held")
            || log.contains("no saved capture state could be proven continuous"));
    let generations = (!restarted_unwatched).then_some(1);
    compact_and_verify(&env, cell, &mut report);
    check_capture(&env, cell, &rec, generations, seed, &mut report, &summary);
    report
}

/// `backup compact` after the capture (the windows `replicate` left
/// incomplete), then `verify-backups`, which compares each compacted
/// object with the objects it merged.
pub fn compact_and_verify(env: &Env, cell: &Cell, report: &mut CellReport) {
    if cell.compaction == "none" {
        return;
    }
    std::thread::sleep(Duration::from_millis(300));
    let (code, v) = json_try(env, &["backup", "compact", "--levels", cell.compaction]);
    if code != 0 {
        report
            .problems
            .push(format!("backup compact exited {code}: {v}"));
    }
    let repo = genesis_core::repo::Repository::open_local(&env.repo(), false).expect("repo");
    let catalog = repo.catalog().expect("catalog");
    let levels: std::collections::BTreeSet<u32> = catalog
        .generations
        .iter()
        .flat_map(|g| g.compacted.iter().map(|m| m.level))
        .collect();
    if cell.commits >= 30 && !levels.contains(&1) {
        report.problems.push(format!(
            "no compacted object after the capture (levels {levels:?}): the test did not test compaction"
        ));
    }
    let (code, v) = json_try(env, &["verify-backups"]);
    if code != 0 {
        report.problems.push(format!(
            "verify-backups exited {code} after compaction: {v}"
        ));
    }
}

/// Checks a finished capture of the kv writer's database against the
/// writer's record: `restore --latest`, the generation count (when given),
/// every txid rebuilt, some through `restore --txid`, and instants.
pub fn check_capture(
    env: &Env,
    cell: &Cell,
    rec: &KvRecord,
    generations: Option<usize>,
    seed: u64,
    report: &mut CellReport,
    summary: &str,
) {
    let rec = rec.clone();
    let (last_n, last_commit) = rec.last();

    // restore --latest through the binary: the writer's final state.
    let latest = env.path().join("latest.db");
    let (code, v) = json_try(
        env,
        &["restore", "--latest", "--output", latest.to_str().unwrap()],
    );
    if code != 0 {
        report
            .problems
            .push(format!("restore --latest exited {code}: {v}"));
    } else {
        let d = describe_one(&latest);
        match check_described("restore --latest", &d, cell, &rec, &mut report.problems) {
            Some(n) if n == last_n => {}
            Some(n) => report.problems.push(format!(
                "restore --latest is commit {n}, the writer's last is {last_n} (replicate said: {})",
                summary.trim()
            )),
            None => {}
        }
        if d.as_ref().is_ok_and(|d| d.digest != last_commit.digest) {
            report
                .problems
                .push("restore --latest differs from the writer's final content".into());
        }
    }

    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).expect("repo");
    let catalog = repo.catalog().expect("catalog");
    if generations.is_some_and(|g| g != catalog.generations.len()) {
        report.problems.push(format!(
            "{} generations: `replicate` did not resume the generation of `backup full`: {:?}",
            catalog.generations.len(),
            catalog
                .generations
                .iter()
                .map(|g| &g.id)
                .collect::<Vec<_>>()
        ));
    }
    let points = catalog.restore_points();
    let mut txids: Vec<u64> = points.iter().map(|p| p.txid).collect();
    txids.sort();
    txids.dedup();
    report.txids = txids.len() as u64;
    report.first_txid = *txids.first().unwrap_or(&0);
    report.last_txid = *txids.last().unwrap_or(&0);
    report.shipped = report.last_txid - report.first_txid;
    if txids.len() as u64 != report.last_txid - report.first_txid + 1 {
        report.problems.push(format!(
            "the restore points' txids are not contiguous: {}",
            ranges(&txids)
        ));
    }

    // Every captured txid, rebuilt and checked.
    let mut n_of: BTreeMap<u64, i64> = BTreeMap::new();
    let mut bad_integrity: Vec<u64> = Vec::new();
    let mut bad_content: Vec<u64> = Vec::new();
    let mut unbuildable: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for chunk in txids.chunks(40) {
        let mut paths: Vec<(u64, PathBuf)> = Vec::new();
        for &txid in chunk {
            let out = env.path().join(format!("txid-{txid}.db"));
            match try_rebuild(&repo, &catalog, txid, &out) {
                Ok(_) => paths.push((txid, out)),
                Err(e) => unbuildable
                    .entry(e.replace(&format!("txid {txid}"), "txid N"))
                    .or_default()
                    .push(txid),
            }
        }
        let ds = describe(&paths.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
        for ((txid, path), d) in paths.iter().zip(ds) {
            let before = report.problems.len();
            if let Some(n) = check_described(
                &format!("txid {txid}"),
                &d,
                cell,
                &rec,
                &mut report.problems,
            ) {
                n_of.insert(*txid, n);
            } else if let Ok(d) = &d {
                if d.integrity != "ok" {
                    bad_integrity.push(*txid);
                } else {
                    bad_content.push(*txid);
                }
            }
            if report.problems.len() - before > 0 && report.problems.len() > 60 {
                report.problems.truncate(60);
            }
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(path.with_extension("db-wal"));
            let _ = std::fs::remove_file(path.with_extension("db-shm"));
        }
    }
    for (why, t) in &unbuildable {
        report.problems.insert(
            0,
            format!(
                "{} of {} txids cannot be rebuilt ({why}): txids {}",
                t.len(),
                txids.len(),
                ranges(t)
            ),
        );
    }
    if !bad_integrity.is_empty() {
        report.problems.insert(
            0,
            format!(
                "{} of {} txids fail integrity_check (each rebuilt with its checksum proven): txids {}",
                bad_integrity.len(),
                txids.len(),
                ranges(&bad_integrity)
            ),
        );
    }
    if !bad_content.is_empty() {
        report.problems.insert(
            0,
            format!(
                "{} of {} txids have content the writer never committed: txids {}",
                bad_content.len(),
                txids.len(),
                ranges(&bad_content)
            ),
        );
    }
    // Txids walk the commits one by one: none skipped, none invented (but
    // for the start of a generation that a test allowed, see `generations`).
    let boundaries: std::collections::BTreeSet<u64> = if generations.is_none() {
        catalog
            .generations
            .iter()
            .skip(1)
            .filter_map(|g| g.span().map(|(first, _)| first.txid))
            .collect()
    } else {
        Default::default()
    };
    let seq: Vec<(u64, i64)> = n_of.iter().map(|(t, n)| (*t, *n)).collect();
    let mut repeats: BTreeMap<i64, u32> = BTreeMap::new();
    for w in seq.windows(2) {
        let ((ta, na), (tb, nb)) = (w[0], w[1]);
        if tb != ta + 1 || (boundaries.contains(&tb) && nb > na) {
            continue; // a txid between them is already reported
        }
        match nb - na {
            1 => {}
            0 => *repeats.entry(na).or_default() += 1,
            d => report.problems.push(format!(
                "txid {ta} is commit {na} and txid {tb} is commit {nb}: {}",
                if d > 1 {
                    format!("{} commit(s) between them were never captured", d - 1)
                } else {
                    "the txids go back in time".to_string()
                }
            )),
        }
    }
    for (n, r) in repeats {
        let v = rec.vacuums.get(&n).copied().unwrap_or(0);
        if r > v {
            report.problems.push(format!(
                "{r} more txid(s) hold commit {n} unchanged, but the writer ran {v} VACUUM(s) after it"
            ));
        }
    }
    if let Some((&t, &n)) = n_of.iter().next_back() {
        if t == report.last_txid && n != last_n {
            report.problems.push(format!(
                "the last txid {t} is commit {n}; commits {}..={last_n} were never captured",
                n + 1
            ));
        }
    }

    // A few txids through the binary too: the same content as the rebuild.
    let mut rng = Rng(seed | 1);
    let mut cli: Vec<u64> = vec![report.first_txid, report.last_txid];
    for _ in 0..cell.cli_txids {
        if !txids.is_empty() {
            cli.push(txids[rng.below(txids.len() as u64) as usize]);
        }
    }
    cli.sort();
    cli.dedup();
    for txid in cli {
        if txid == 0 {
            continue;
        }
        let out = env.path().join(format!("cli-{txid}.db"));
        let (code, v) = json_try(
            env,
            &[
                "restore",
                "--txid",
                &txid.to_string(),
                "--output",
                out.to_str().unwrap(),
            ],
        );
        if code != 0 {
            report
                .problems
                .push(format!("restore --txid {txid} exited {code}: {v}"));
            continue;
        }
        let d = describe_one(&out);
        let n = check_described(
            &format!("restore --txid {txid}"),
            &d,
            cell,
            &rec,
            &mut report.problems,
        );
        if let (Some(n), Some(want)) = (n, n_of.get(&txid)) {
            if n != *want {
                report.problems.push(format!(
                    "restore --txid {txid} is commit {n}, the rebuild of that txid is commit {want}"
                ));
            }
        }
        let _ = std::fs::remove_file(&out);
    }

    // Instants: the restore point observed last by then; its content a commit
    // that had begun by then and that the previous capture could not have missed.
    let mut times: Vec<DateTime<Utc>> = points.iter().map(|p| p.time).collect();
    times.sort();
    times.dedup();
    if times.len() >= 2 {
        let (t0, t1) = (times[0], *times.last().unwrap());
        let span = (t1 - t0).num_nanoseconds().unwrap_or(0).max(1);
        let mut targets: Vec<DateTime<Utc>> = Vec::new();
        for i in 0..cell.instants {
            let t = if i % 3 == 2 {
                times[rng.below(times.len() as u64) as usize]
            } else {
                t0 + chrono::Duration::nanoseconds((rng.unit() * span as f64) as i64)
            };
            targets.push(t);
        }
        for t in targets {
            let want = points
                .iter()
                .filter(|p| p.time <= t)
                .max_by_key(|p| (p.time, p.txid))
                .cloned()
                .expect("a point at or before");
            let out = env.path().join("instant.db");
            let _ = std::fs::remove_file(&out);
            let (code, v) = json_try(
                env,
                &[
                    "restore",
                    "--timestamp",
                    &ts(t),
                    "--output",
                    out.to_str().unwrap(),
                ],
            );
            let what = format!("restore --timestamp {}", ts(t));
            if code != 0 {
                report.problems.push(format!("{what} exited {code}: {v}"));
                continue;
            }
            if v["restored_txid"].as_u64() != Some(want.txid) {
                report.problems.push(format!(
                    "{what} reached txid {}, the last point observed by then is txid {}",
                    v["restored_txid"], want.txid
                ));
            }
            let d = describe_one(&out);
            let Some(n) = check_described(&what, &d, cell, &rec, &mut report.problems) else {
                continue;
            };
            let c = &rec.commits[&n];
            if c.begin > t {
                report.problems.push(format!(
                    "{what} is commit {n}, which began at {} after the instant",
                    ts(c.begin)
                ));
            }
            // The capture before the one that made this point read the WAL
            // after the one before it stamped its time; commits that had
            // returned by then are certainly in.
            let pos = times.iter().position(|x| *x == want.time).unwrap_or(0);
            if pos >= 1 {
                if let Some(floor) = rec.last_ended_before(times[pos - 1]) {
                    if n < floor {
                        report.problems.push(format!(
                            "{what} is commit {n}, older than commit {floor} that had returned before the capture at {}",
                            ts(times[pos - 1])
                        ));
                    }
                }
            }
        }
    }
}

fn default_commits(page_size: u32, diagonal: bool) -> u64 {
    // 64 KiB pages make every commit write up to a megabyte: fewer of them.
    let scale = if page_size >= 65536 { 2 } else { 1 };
    if soak() {
        3_000 / scale
    } else if diagonal {
        250 / scale
    } else {
        60
    }
}

macro_rules! cell_test {
    ($name:ident, $ps:expr, $mode:expr, $diagonal:expr $(, #[$attr:meta])?) => {
        #[test]
        $(#[$attr])?
        fn $name() {
            let mut cell = Cell::new($ps, $mode, default_commits($ps, $diagonal));
            if soak() {
                cell.instants = 40;
                cell.cli_txids = 10;
            } else if !$diagonal {
                cell.instants = 4;
                cell.cli_txids = 1;
            }
            let seed = test_seed(stringify!($name));
            run_cell(&cell, seed).assert_clean(&cell.name());
        }
    };
}

cell_test!(matrix_512_none, 512, "none", false);
cell_test!(matrix_512_full, 512, "full", false);
cell_test!(matrix_512_incremental, 512, "incremental", true);
cell_test!(matrix_1024_none, 1024, "none", false);
cell_test!(matrix_1024_full, 1024, "full", true);
cell_test!(matrix_1024_incremental, 1024, "incremental", false);
cell_test!(matrix_4096_none, 4096, "none", true);
cell_test!(matrix_4096_full, 4096, "full", false);
cell_test!(matrix_4096_incremental, 4096, "incremental", false);
cell_test!(matrix_8192_none, 8192, "none", false);
cell_test!(matrix_8192_full, 8192, "full", false);
cell_test!(matrix_8192_incremental, 8192, "incremental", true);
cell_test!(matrix_65536_none, 65536, "none", false);
cell_test!(matrix_65536_full, 65536, "full", true);
cell_test!(matrix_65536_incremental, 65536, "incremental", false);

/// Issue 11 item 0: a 4 KiB database with auto_vacuum=FULL, captured with
/// `backup full` and then `backup replicate` resuming its generation, gave
/// restores of early txids (2 to 45 of 365) that fail integrity_check while
/// reporting their checksum proven; the first VACUUM healed the chain. Timing
/// decided (2 of 5 runs), so the scenario runs several times, with the first
/// VACUUM late so that the window before it is long, and every txid of every
/// run is rebuilt and checked. The variants with the writer committing
/// during `backup full` once showed, in 1 of 3 CI runs, a commit "without a
/// restore point of its own": the new generation that `replicate` starts
/// when the WAL was restarted meanwhile was taken for the first one (the
/// catalog ordered generations by id, which sorts by start time only to the
/// second), so its first txid was not allowed as a generation's start.
#[test]
fn item0_backup_full_then_replicate_4k_auto_vacuum_full_restores_are_sound_at_every_txid() {
    let runs = if soak() { 12 } else { 4 };
    let seed = test_seed("item0");
    let mut failed: Vec<String> = Vec::new();
    for run in 0..runs {
        let mut cell = Cell::new(4096, "full", if soak() { 600 } else { 150 });
        cell.autocheckpoint = 20;
        cell.no_vacuum_before = cell.setup_commits + cell.commits / 2;
        cell.vacuum_prob = 0.02;
        cell.instants = 8;
        cell.cli_txids = 2;
        // Vary the timing between runs: how long the writer pauses, and how
        // often the capturer checkpoints.
        cell.pause_every = [10, 25, 7, 40][run % 4];
        cell.pause_ms = [30, 60, 15, 80][run % 4];
        cell.checkpoint_frames = [40, 200, 25, 1000][run % 4];
        cell.write_during_full = run % 2 == 0;
        cell.hold_app = run % 4 >= 2;
        let r = run_cell(&cell, seed.wrapping_add(run as u64 * 7919));
        if !r.problems.is_empty() {
            failed.push(format!(
                "run {run} (txids {}..={}): {}",
                r.first_txid,
                r.last_txid,
                r.problems
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {runs} runs restored databases that are not the writer's:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

/// Issue 11 item 1: with `PRAGMA page_size=65536` nothing after the snapshot
/// was captured (0 transactions shipped while the WAL grew, replicate exited
/// 0). The commits must be shipped, and `restore --latest` be the last one.
#[test]
fn item1_page_size_65536_is_captured() {
    let seed = test_seed("item1");
    for mode in ["none", "full"] {
        let mut cell = Cell::new(65536, mode, 40);
        cell.interval = "200ms";
        cell.checkpoint_frames = 1000;
        cell.instants = 3;
        cell.cli_txids = 1;
        let r = run_cell(&cell, seed);
        assert!(
            r.shipped >= 40,
            "{}: {} transactions shipped after the snapshot for 40 commits (txids {}..={}); replicate: {}",
            cell.name(),
            r.shipped,
            r.first_txid,
            r.last_txid,
            tail(&r.replicate_log, 1500)
        );
        r.assert_clean(&cell.name());
    }
}

/// Issue 11 item 0, the snapshot alone: `backup full` into a fresh
/// repository (a new generation, so the snapshot is read from the database
/// file overlaid with the WAL) many times while the writer commits with a
/// 20-page autocheckpoint and frequent TRUNCATE checkpoints, so that the WAL
/// is restarted under the reading capturer again and again. Every snapshot
/// must restore to a commit the writer made, whole. On the code of issue 11
/// about 2% of such snapshots were corrupt ("file is not a database",
/// "malformed") while their rebuild reported the checksum proven, and about
/// 3% of the `backup full` runs failed reading a WAL truncated under them;
/// 150 runs (`GENESIS_ITEM0_FULLS` to change it) miss both with a
/// probability well under 1%.
#[test]
fn item0_snapshots_taken_while_the_application_restarts_the_wal_are_sound() {
    let env = Env::new();
    let seed = test_seed("item0 snapshots");
    let record = env.path().join("record.txt");
    let mut wo = KvOpts::new(4096, "full", 10, seed);
    wo.vacuum_prob = 0.0;
    run_kv_writer(&env, &record, &wo);
    let fulls = std::env::var("GENESIS_ITEM0_FULLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak() { 600 } else { 150 });
    let mut wo = KvOpts::new(4096, "full", 100_000, seed + 1);
    wo.autocheckpoint = 20;
    wo.truncate_prob = 0.1;
    wo.vacuum_prob = 0.0;
    wo.pause_every = 3;
    wo.pause_ms = 1;
    let mut w = kv_writer(&env, &record, &wo);
    let mut repos: Vec<(PathBuf, String)> = Vec::new();
    let mut failed_fulls: Vec<String> = Vec::new();
    for i in 0..fulls {
        let repo = env.path().join(format!("repo-{i}"));
        let out = env
            .cmd_with_repo(&repo)
            .args(["--json", "backup", "full"])
            .output()
            .expect("backup full");
        if !out.status.success() {
            // The application's checkpoints are its right: a snapshot must
            // not fail because of them.
            failed_fulls.push(format!(
                "backup full #{i} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        repos.push((
            repo,
            v["backup_id"].as_str().unwrap_or_default().to_string(),
        ));
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::common::signal(&w, "TERM");
    let _ = w.wait();
    let rec = read_kv_record(&record);
    let cell = Cell::new(4096, "full", 0);
    let mut problems: Vec<String> = failed_fulls;
    let mut outs: Vec<PathBuf> = Vec::new();
    let mut which: Vec<usize> = Vec::new();
    for (i, (repo, id)) in repos.iter().enumerate() {
        let r = genesis_core::repo::Repository::open_local(repo, false).expect("repo");
        let catalog = r.catalog().expect("catalog");
        let snap = catalog.find(id).unwrap_or_else(|| panic!("snapshot {id}"));
        let out = env.path().join(format!("snap-{i}.db"));
        match try_rebuild(&r, &catalog, snap.txid_max, &out) {
            Ok(_) => {
                outs.push(out);
                which.push(i);
            }
            Err(e) => problems.push(format!("snapshot {id}: rebuild failed: {e}")),
        }
    }
    for (i, d) in which.iter().zip(describe(&outs).iter()) {
        check_described(
            &format!("backup full #{i} ({})", repos[*i].1),
            d,
            &cell,
            &rec,
            &mut problems,
        );
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) with {fulls} snapshots taken under a restarting WAL (a failed backup full, or a snapshot that is not a whole state the writer committed):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
