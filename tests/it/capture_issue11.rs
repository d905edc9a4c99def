//! Regressions of issue 11 items 2 to 5, each named after its item: an idle
//! database, a repository deleted under a running capturer, a full
//! repository disk, and events rewritten in place. The kv writer's record is
//! the oracle (see `kv_oracle`), and every restore point a test looks at is
//! rebuilt and checked with `integrity_check` (`capture_matrix::check_capture`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::capture_matrix::{check_capture, Cell, CellReport};
use crate::common::{test_seed, Env};
use crate::kv_oracle::{
    describe_one, json_try, kv_writer, read_kv_record, run_kv_writer, wait_kv_writer, KvOpts,
    Logged,
};

/// A 4 KiB kv database with a few commits, and the application's connection
/// kept open (so the WAL stays).
fn kv_database(env: &Env, record: &Path, seed: u64) -> rusqlite::Connection {
    run_kv_writer(env, record, &KvOpts::new(4096, "full", 10, seed));
    let app = rusqlite::Connection::open(env.db()).expect("open db");
    app.query_row("SELECT count(*) FROM kv", [], |_| Ok(()))
        .expect("read kv");
    app
}

fn wait_for_capturer(env: &Env) {
    crate::common::wait_for_capture_lock(env);
    let t0 = Instant::now();
    // And its first step: a restore point exists.
    while !env.repo().join("manifests").is_dir() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "replicate never wrote a manifest"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The snapshot request file a `backup full` leaves for a running capturer,
/// and anything else beside the database named like it.
fn snapshot_request_files(db: &Path) -> Vec<PathBuf> {
    let req = genesis_core::capture::snapshot_request_path(db);
    let name = req.file_name().unwrap().to_string_lossy().to_string();
    crate::common::files_starting(db.parent().unwrap(), &name)
}

/// Lines of a capturer's log that are warnings or errors.
fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("error"))
        .collect()
}

// ---- item 2 ----

/// Issue 11 item 2: when a snapshot falls due on an idle database, the
/// snapshot id was reused and every step failed ("already exists ...
/// objects are immutable") until replicate exited 1.
#[test]
fn item2_idle_database_replicate_with_due_snapshots_exits_0() {
    let env = Env::new();
    let record = env.path().join("record.txt");
    let _app = kv_database(&env, &record, test_seed("item2 idle"));
    let o = env.run(&["backup", "sync"]);
    assert!(
        o.status.success(),
        "backup sync: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.run(&[
        "backup",
        "replicate",
        "--interval",
        "200ms",
        "--snapshot-interval",
        "3s",
        "--for",
        "12s",
    ]);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        o.status.success(),
        "replicate on an idle database exited {:?}:\n{log}",
        o.status
    );
    assert!(
        !log.contains("already exists"),
        "replicate on an idle database reused an object id:\n{log}"
    );
    assert!(
        complaints(&log).iter().all(|l| !l.contains("failed")),
        "replicate on an idle database had failing steps:\n{log}"
    );
    // Still restorable, and still the writer's last commit.
    let rec = read_kv_record(&record);
    let out = env.path().join("latest.db");
    let (code, v) = env.json(&["restore", "--latest", "--output", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    let d = describe_one(&out).expect("restored database");
    assert_eq!(d.integrity, "ok");
    assert_eq!(
        d.digest,
        rec.last().1.digest,
        "restore --latest is not the last commit"
    );
}

/// Issue 11 item 2: `backup full` on an unchanged database failed with the
/// same "already exists", alone and when handed to a running capturer; the
/// second case left a snapshot request file that crashed every later
/// replicate until the application wrote.
#[test]
fn item2_backup_full_on_an_unchanged_database_succeeds_alone_and_through_replicate() {
    let env = Env::new();
    let record = env.path().join("record.txt");
    let _app = kv_database(&env, &record, test_seed("item2 full"));
    for i in 0..2 {
        let (code, v) = json_try(&env, &["backup", "full"]);
        assert_eq!(code, 0, "backup full #{i} of an unchanged database: {v}");
    }
    let rep = Logged::spawn(&env, &["backup", "replicate", "--interval", "100ms"]);
    wait_for_capturer(&env);
    std::thread::sleep(Duration::from_millis(300));
    let (code, v) = json_try(&env, &["backup", "full"]);
    // Let the capturer run a few more steps with whatever it was left.
    std::thread::sleep(Duration::from_millis(800));
    let mut rep = rep;
    let alive = rep.running();
    rep.signal("TERM");
    let (st, _, log) = rep.finish();
    assert_eq!(
        code, 0,
        "backup full handed to a running capturer, unchanged database: {v}"
    );
    assert!(
        alive,
        "replicate died after `backup full` asked it for a snapshot:\n{log}"
    );
    assert!(st.success(), "replicate exited {st:?}:\n{log}");
    assert!(
        snapshot_request_files(&env.db()).is_empty(),
        "a snapshot request was left behind: {:?}",
        snapshot_request_files(&env.db())
    );
    // A later replicate on the still unchanged database runs and exits 0.
    let o = env.run(&["backup", "replicate", "--interval", "100ms", "--for", "2s"]);
    assert!(
        o.status.success(),
        "a later replicate exited {:?}:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(snapshot_request_files(&env.db()).is_empty());
}

// ---- item 3 ----

/// Issue 11 item 3: with the repository deleted under it, replicate
/// recreated the folders and went on shipping segments and events without a
/// snapshot, and exited 0: nothing was restorable. It must notice (say so in
/// its log), repair itself with a new generation that begins with a
/// snapshot, and the writer's later commits must restore, every one of them.
#[test]
fn item3_repository_deleted_under_a_running_capturer_is_repaired_with_a_new_generation() {
    let env = Env::new();
    let seed = test_seed("item3");
    let record = env.path().join("record.txt");
    let app = kv_database(&env, &record, seed);
    let rep = Logged::spawn(
        &env,
        &[
            "--json",
            "backup",
            "replicate",
            "--interval",
            "100ms",
            "--checkpoint-frames",
            "50",
        ],
    );
    wait_for_capturer(&env);
    let mut wo = KvOpts::new(4096, "full", 30, seed + 1);
    wo.vacuum_prob = 0.0;
    run_kv_writer(&env, &record, &wo);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_dir_all(env.repo()).expect("delete the repository");
    std::thread::sleep(Duration::from_millis(500));
    let mut wo = KvOpts::new(4096, "full", 80, seed + 2);
    wo.pause_every = 10;
    wo.pause_ms = 50;
    run_kv_writer(&env, &record, &wo);
    std::thread::sleep(Duration::from_millis(800));
    rep.signal("TERM");
    let (st, summary, log) = rep.finish();
    drop(app);
    let mut report = CellReport::default();
    let p = &mut report.problems;
    if !st.success() {
        p.push(format!("replicate exited {st:?}"));
    }
    if complaints(&log).is_empty() {
        p.push(
            "replicate said nothing (no warning, no error) about its repository disappearing"
                .into(),
        );
    }
    match serde_json::from_str::<serde_json::Value>(&summary) {
        Ok(sum) => {
            // The first generation is this replicate's own (the repository
            // was empty); the repair is a second one.
            if sum["generations_started"]
                .as_array()
                .is_none_or(|a| a.len() < 2)
            {
                p.push(format!(
                    "replicate did not start a new generation after its repository was deleted: {sum}"
                ));
            }
        }
        Err(e) => p.push(format!(
            "replicate --json printed no summary ({e}): {summary}"
        )),
    }
    // The repaired repository: generations that begin with a snapshot,
    // every txid the writer's, and the latest the writer's last commit.
    let rec = read_kv_record(&record);
    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).expect("repo");
    let catalog = repo.catalog().expect("catalog");
    for g in &catalog.generations {
        let Some((start, _)) = g.span() else { continue };
        if !g.snapshots.iter().any(|s| s.txid_max == start.txid) {
            p.push(format!(
                "generation {} does not begin with a snapshot: {} segment(s) and {} event object(s) shipped with nothing under them",
                g.id,
                g.segments.len(),
                g.events.len()
            ));
        }
    }
    let cell = Cell::new(4096, "full", 0);
    check_capture(&env, &cell, &rec, None, seed, &mut report, &summary);
    report.replicate_log = log;
    report.assert_clean("after the repository was deleted");
}

// ---- item 4 ----

/// A small tmpfs the test mounts, unmounted on drop.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); the full-disk test needs root or CAP_SYS_ADMIN",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
    /// Fills the filesystem with a file until ENOSPC.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0xa5u8; 4096];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Issue 11 item 4: on a full repository disk replicate gave up after 10
/// failed steps; the restart began a new generation and the outage's restore
/// points were gone. Now: it must not exit during the outage, must not start
/// a new generation because of it, and every commit, those of the outage
/// included, must restore once space returns.
#[test]
fn item4_full_repository_disk_is_waited_out_and_nothing_is_lost() {
    let env = Env::new();
    let seed = test_seed("item4");
    let Some(fs) = Tmpfs::mount(&env.path().join("backups"), "6m") else {
        return;
    };
    let record = env.path().join("record.txt");
    let app = kv_database(&env, &record, seed);
    let rep = Logged::spawn(
        &env,
        &[
            "backup",
            "replicate",
            "--interval",
            "50ms",
            "--checkpoint-frames",
            "400",
        ],
    );
    wait_for_capturer(&env);
    let mut wo = KvOpts::new(4096, "full", 40, seed + 1);
    wo.vacuum_prob = 0.0;
    run_kv_writer(&env, &record, &wo);
    std::thread::sleep(Duration::from_millis(400));
    // The disk fills; the application goes on committing for a while
    // (several times the capturer's former limit of 10 failed steps).
    let filler = fs.fill();
    let mut wo = KvOpts::new(4096, "full", 60, seed + 2);
    wo.vacuum_prob = 0.0;
    wo.pause_every = 5;
    wo.pause_ms = 40;
    let w = kv_writer(&env, &record, &wo);
    wait_kv_writer(w);
    std::thread::sleep(Duration::from_millis(1500));
    let mut rep = rep;
    let alive_in_outage = rep.running();
    std::fs::remove_file(&filler).expect("free the space");
    let mut wo = KvOpts::new(4096, "full", 40, seed + 3);
    wo.vacuum_prob = 0.0;
    run_kv_writer(&env, &record, &wo);
    std::thread::sleep(Duration::from_millis(1500));
    rep.signal("TERM");
    let (st, summary, log) = rep.finish();
    drop(app);
    let rec = read_kv_record(&record);
    let cell = Cell::new(4096, "full", 0);
    let mut report = CellReport::default();
    if !alive_in_outage {
        report.problems.push(format!(
            "replicate exited while the repository's disk was full ({st:?})"
        ));
    } else if !st.success() {
        report
            .problems
            .push(format!("replicate exited {st:?} after the outage"));
    }
    // One generation: the outage must not cost continuity; and every
    // commit, the outage's included, restores.
    check_capture(&env, &cell, &rec, Some(1), seed, &mut report, &summary);
    report.replicate_log = log;
    report.assert_clean("after a full repository disk");
    drop(fs);
}

// ---- item 5 ----

/// Issue 11 item 5: the application deletes its last 50 events and writes
/// new ones that reuse their rowids and sequence numbers. The new rows never
/// reached the archive, `verify-backups` said ok, and a restore in that
/// window failed with a sequence gap. The divergence must be seen (by
/// `verify-backups` or in the capturer's log), and restores to instants
/// among the new events must succeed: exact to the event once the new
/// generation began, and never a state the application did not have before
/// that (the archive cannot bridge events that were rewritten).
#[test]
fn item5_events_rewritten_in_place_are_archived_or_reported_and_restores_stay_exact() {
    use chrono::{DateTime, SecondsFormat, Utc};

    use crate::exact_event::{full_state, full_state_conn};

    let env = Env::new();
    let o = env.run(&["simulate", "--rate", "0", "--max-commits", "300"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep = Logged::spawn(&env, &["backup", "replicate", "--interval", "300ms"]);
    wait_for_capturer(&env);
    std::thread::sleep(Duration::from_millis(900));

    let mut conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let (max_seq, max_rowid): (i64, i64) = conn
        .query_row(
            "SELECT max(sequence_number), max(rowid) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // The old events are archived by now (the capturer ran ~3 steps).
    conn.execute(
        "DELETE FROM events WHERE sequence_number > ?1",
        [max_seq - 50],
    )
    .unwrap();
    let mut states: Vec<(DateTime<Utc>, String)> = vec![(Utc::now(), full_state_conn(&conn))];
    let mut sim = genesis_trading::simulate::Simulator::open(&conn, 4242).unwrap();
    let mut reused = 0;
    for n in 0..120u32 {
        let ev = sim.commit_one(&mut conn).unwrap();
        if ev.sequence_number <= max_seq {
            reused += 1;
        }
        let at = genesis_core::time::parse_timestamp(&ev.created_at).unwrap();
        states.push((at, full_state_conn(&conn)));
        std::thread::sleep(Duration::from_millis(if n % 20 == 19 { 200 } else { 8 }));
    }
    let new_rowids: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE rowid > ?1 - 50 AND rowid <= ?1",
            [max_rowid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        reused, 50,
        "the new events must reuse the deleted sequence numbers"
    );
    assert_eq!(
        new_rowids, 50,
        "the new events must reuse the deleted rowids"
    );
    std::thread::sleep(Duration::from_millis(900));
    rep.signal("TERM");
    let (st, _, log) = rep.finish();
    drop(conn);
    assert!(st.success(), "replicate exited {st:?}:\n{log}");

    let (vcode, v) = env.json(&["verify-backups"]);
    let reported = vcode != 0
        && v["problems"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.to_string().contains("event")));
    let logged = complaints(&log).iter().any(|l| l.contains("event"));
    let mut failures: Vec<String> = Vec::new();
    if !(reported || logged) {
        failures.push(format!(
            "events rewritten in place went unnoticed: verify-backups exited {vcode} ({v}) and replicate logged no complaint about events"
        ));
    }
    // Restores among the new events: exact to the event, from the first
    // capture after the rewrite on (before it, the newest restore point still
    // holds the deleted events, and a DELETE is no event to replay).
    let deleted_at = states[0].0;
    let repo = genesis_core::repo::Repository::open_path(&env.repo(), false).expect("repo");
    let after = repo
        .catalog()
        .expect("catalog")
        .restore_points()
        .into_iter()
        .map(|p| p.time)
        .filter(|t| *t > deleted_at)
        .min();
    let Some(first) = after else {
        panic!("no restore point after the rewrite: nothing captured it\n{log}");
    };
    // Exact to the event once the capturer has noticed the rewrite and
    // started a new generation (before that, see below).
    let repaired_at = repo
        .catalog()
        .expect("catalog")
        .generations
        .last()
        .and_then(|g| g.span())
        .map(|(first, _)| first.time)
        .expect("a generation");
    let last = states.last().unwrap().0;
    assert!(
        first < last,
        "the first capture after the rewrite came after the last event"
    );
    let span = (last - first).num_microseconds().unwrap().max(1) as u64;
    let mut x = test_seed("item5") | 1;
    for i in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = first + chrono::Duration::microseconds((x % span) as i64);
        let want = &states.iter().rev().find(|(at, _)| *at <= t).unwrap().1;
        let out = env.path().join(format!("item5-{i}.db"));
        let tss = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let (code, v) = env.json(&[
            "restore",
            "--timestamp",
            &tss,
            "--output",
            out.to_str().unwrap(),
            "--no-validate",
        ]);
        if code != 0 {
            failures.push(format!("restore to {tss} exited {code}: {}", v["error"]));
            continue;
        }
        let got = full_state(&out);
        if t >= repaired_at {
            if &got != want {
                failures.push(format!(
                    "restore to {tss} (txid {}, {} events replayed), after the new generation began, differs from the application's state",
                    v["restored_txid"], v["events_replayed"]
                ));
            }
        } else if !states.iter().any(|(at, st)| *at <= t && *st == got) {
            // Between the rewrite and the new generation's snapshot the
            // archive cannot bridge (its events were rewritten): a restore
            // is at the last captured commit, never a state the application
            // did not have by then.
            failures.push(format!(
                "restore to {tss} (txid {}, {} events replayed), inside the rewrite window, is a state the application never had by then",
                v["restored_txid"], v["events_replayed"]
            ));
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with events rewritten in place (12 restores among the new events):\n  {}\n--- replicate's log ---\n{log}",
        failures.len(),
        failures.join("\n  ")
    );
}
