//! The oracle of the capture matrix: the hostile kv writer
//! (`tests/fixtures/hostile_writer_kv.py`, Python's sqlite3) records the
//! digest of every commit, and `tests/fixtures/kv_digest.py` (the same
//! Python code) digests every database the tool restores. Nothing here reads
//! the tool's catalog to decide what is right.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use chrono::{DateTime, Utc};

use crate::common::{fixture, Env};

/// How the kv writer runs.
#[derive(Debug, Clone)]
pub struct KvOpts {
    pub commits: u64,
    pub seed: u64,
    pub page_size: u32,
    /// `none`, `full` or `incremental`.
    pub auto_vacuum: &'static str,
    pub autocheckpoint: u32,
    pub keys: u32,
    pub vacuum_prob: f64,
    /// No VACUUM before this commit number.
    pub no_vacuum_before: u64,
    pub pause_every: u64,
    pub pause_ms: u64,
    /// Chance of a TRUNCATE checkpoint after a commit.
    pub truncate_prob: f64,
}

impl KvOpts {
    pub fn new(page_size: u32, auto_vacuum: &'static str, commits: u64, seed: u64) -> KvOpts {
        KvOpts {
            commits,
            seed,
            page_size,
            auto_vacuum,
            autocheckpoint: 10,
            keys: 60,
            vacuum_prob: 0.01,
            no_vacuum_before: 0,
            pause_every: 0,
            pause_ms: 0,
            truncate_prob: 0.01,
        }
    }
}

/// Starts the kv writer on the environment's database.
pub fn kv_writer(env: &Env, record: &Path, o: &KvOpts) -> Child {
    Command::new("python3")
        .arg(fixture("hostile_writer_kv.py"))
        .arg(env.db())
        .arg(record)
        .args(["--commits", &o.commits.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .args(["--page-size", &o.page_size.to_string()])
        .args(["--auto-vacuum", o.auto_vacuum])
        .args(["--autocheckpoint", &o.autocheckpoint.to_string()])
        .args(["--keys", &o.keys.to_string()])
        .args(["--vacuum-prob", &o.vacuum_prob.to_string()])
        .args(["--no-vacuum-before", &o.no_vacuum_before.to_string()])
        .args(["--pause-every", &o.pause_every.to_string()])
        .args(["--pause-ms", &o.pause_ms.to_string()])
        .args(["--truncate-prob", &o.truncate_prob.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/setup.sh installs it)")
}

/// Runs the kv writer to completion, failing the test when it fails.
pub fn run_kv_writer(env: &Env, record: &Path, o: &KvOpts) {
    let out = kv_writer(env, record, o)
        .wait_with_output()
        .expect("kv writer");
    assert!(
        out.status.success(),
        "the kv writer failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a running kv writer, failing the test when it failed.
pub fn wait_kv_writer(w: Child) {
    let out = w.wait_with_output().expect("kv writer");
    assert!(
        out.status.success(),
        "the kv writer failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One committed state the writer recorded.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Before BEGIN: the commit happened after this.
    pub begin: DateTime<Utc>,
    /// After COMMIT returned: the commit happened before this.
    pub end: DateTime<Utc>,
    pub digest: String,
}

/// The writer's record.
#[derive(Debug, Clone, Default)]
pub struct KvRecord {
    pub commits: BTreeMap<i64, Commit>,
    /// Commit number -> VACUUMs run right after it (each its own
    /// transaction with the same content).
    pub vacuums: BTreeMap<i64, u32>,
    /// What each finished writer run did (its `S` line): kind -> count.
    pub runs: Vec<BTreeMap<String, u64>>,
}

impl KvRecord {
    pub fn last(&self) -> (i64, &Commit) {
        let (n, c) = self.commits.iter().next_back().expect("a commit");
        (*n, c)
    }
    /// The last commit that had certainly happened by `t` (COMMIT returned).
    pub fn last_ended_before(&self, t: DateTime<Utc>) -> Option<i64> {
        self.commits
            .iter()
            .filter(|(_, c)| c.end < t)
            .map(|(n, _)| *n)
            .max()
    }
}

fn secs(s: &str) -> DateTime<Utc> {
    let t: f64 = s.parse().expect("a time in the record");
    DateTime::from_timestamp_micros((t * 1e6).round() as i64).expect("time")
}

pub fn read_kv_record(path: &Path) -> KvRecord {
    let text = std::fs::read_to_string(path).expect("record file");
    let mut r = KvRecord::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"S") {
            r.runs.push(
                f[1..]
                    .iter()
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.parse().ok()?))
                    })
                    .collect(),
            );
            continue;
        }
        if f.len() != 5 {
            continue;
        }
        let n: i64 = f[1].parse().expect("commit number");
        match f[0] {
            "C" => {
                let prev = r.commits.insert(
                    n,
                    Commit {
                        begin: secs(f[2]),
                        end: secs(f[3]),
                        digest: f[4].to_string(),
                    },
                );
                assert!(prev.is_none(), "commit {n} recorded twice");
            }
            "V" => *r.vacuums.entry(n).or_default() += 1,
            _ => {}
        }
    }
    r
}

/// What `kv_digest.py` says of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub digest: String,
    /// The writer's commit number (meta.n), -1 when absent.
    pub n: i64,
    /// `PRAGMA integrity_check(5)`, "ok" when whole.
    pub integrity: String,
    pub page_size: u32,
    pub auto_vacuum: u32,
}

/// Digests and checks databases with the writer's own code, in one Python
/// process. `Err` carries why a database could not be read at all.
pub fn describe(paths: &[PathBuf]) -> Vec<Result<Described, String>> {
    if paths.is_empty() {
        return Vec::new();
    }
    let out = Command::new("python3")
        .arg(fixture("kv_digest.py"))
        .args(paths)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "kv_digest.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), paths.len(), "kv_digest.py output: {text}");
    lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f[0] == "ERROR" {
                return Err(f[1..].join(" "));
            }
            Ok(Described {
                digest: f[0].to_string(),
                n: f[1].parse().unwrap(),
                integrity: f[2].replace('_', " "),
                page_size: f[3].parse().unwrap(),
                auto_vacuum: f[4].parse().unwrap(),
            })
        })
        .collect()
}

pub fn describe_one(path: &Path) -> Result<Described, String> {
    describe(&[path.to_path_buf()]).pop().unwrap()
}

/// `auto_vacuum` as SQLite numbers it.
pub fn auto_vacuum_number(mode: &str) -> u32 {
    match mode {
        "none" => 0,
        "full" => 1,
        "incremental" => 2,
        other => panic!("unknown auto_vacuum mode {other}"),
    }
}

/// Rebuilds `txid` with the library (the same code as a restore's
/// wal-apply), returning the error text instead of panicking.
pub fn try_rebuild(
    repo: &genesis_core::repo::Repository,
    catalog: &genesis_core::repo::Catalog,
    txid: u64,
    out: &Path,
) -> Result<genesis_core::rebuild::RebuildResult, String> {
    let _ = std::fs::remove_file(out);
    let point = catalog.point_for_txid(txid).map_err(|e| e.to_string())?;
    let chain = catalog.chain_to(&point).map_err(|e| e.to_string())?;
    genesis_core::rebuild::rebuild(repo, &chain, &point, out).map_err(|e| e.to_string())
}

/// Collapses sorted numbers into ranges ("2-45, 50").
pub fn ranges(v: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// A background run of the binary whose stdout and stderr are drained as it
/// runs (a chatty capturer cannot block on a full pipe).
pub struct Logged {
    pub child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Logged {
    pub fn spawn(env: &Env, args: &[&str]) -> Logged {
        let mut child = env.spawn(args);
        let mut so = child.stdout.take().expect("stdout");
        let mut se = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut so, &mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut se, &mut s);
            s
        });
        Logged {
            child,
            out: Some(out),
            err: Some(err),
        }
    }
    pub fn signal(&self, sig: &str) {
        crate::common::signal(&self.child, sig);
    }
    pub fn id(&self) -> u32 {
        self.child.id()
    }
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Waits; returns the exit status, stdout and stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let st = self.child.wait().expect("wait");
        let out = self.out.take().unwrap().join().unwrap_or_default();
        let err = self.err.take().unwrap().join().unwrap_or_default();
        (st, out, err)
    }
}

/// Runs the binary with `--json`; returns the exit code and the parsed
/// stdout, or, when stdout is not JSON (an error exit), `{"error": stderr}`.
/// Unlike `Env::json` it never panics, so that a test can collect every
/// problem before it fails.
pub fn json_try(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let out = env
        .cmd()
        .arg("--json")
        .args(args)
        .output()
        .expect("run genesis-recovery");
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(
        |_| serde_json::json!({ "error": String::from_utf8_lossy(&out.stderr).trim() }),
    );
    (code, v)
}
