//! Helpers: a temporary directory per test, running the binary in it, the
//! hostile writer, and reading restored databases.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The kind of repository a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A local directory (`backups/` in the test's directory).
    Local,
    /// A fresh prefix in the moto S3 server's bucket (`crate::s3_server`).
    S3,
}

/// A test's working directory with the default layout.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The `s3://` repository when the test runs against the S3 server.
    pub repo_url: Option<String>,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("genesis-it-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        Env {
            dir,
            repo_url: None,
        }
    }
    /// A test directory whose repository is `store`.
    pub fn on(store: Store) -> Env {
        let mut env = Env::new();
        if store == Store::S3 {
            let name = std::thread::current()
                .name()
                .unwrap_or("test")
                .rsplit("::")
                .next()
                .unwrap_or("test")
                .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
            env.repo_url = Some(crate::s3_server::server().new_repo_url(&name));
        }
        env
    }
    /// The repository, opened with the library.
    pub fn open_repo(&self) -> genesis_core::repo::Repository {
        genesis_core::repo::Repository::open_path(&self.repo(), false).expect("open repository")
    }
    /// Adds the S3 server's environment when the repository is there.
    fn with_store_env(&self, c: &mut Command) {
        if self.repo_url.is_some() {
            for (k, v) in crate::s3_server::server().env() {
                c.env(k, v);
            }
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn db(&self) -> PathBuf {
        self.path().join("data/genesis.db")
    }
    pub fn repo(&self) -> PathBuf {
        match &self.repo_url {
            Some(url) => PathBuf::from(url),
            None => self.path().join("backups"),
        }
    }
    /// The binary with --db and --repo pointing into this directory.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_genesis-recovery"));
        c.current_dir(self.path())
            .arg("--db")
            .arg(self.db())
            .arg("--repo")
            .arg(self.repo());
        c.env_remove("RUST_LOG");
        self.with_store_env(&mut c);
        c
    }
    /// The binary with --db into this directory and the given --repo.
    pub fn cmd_with_repo(&self, repo: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_genesis-recovery"));
        c.current_dir(self.path())
            .arg("--db")
            .arg(self.db())
            .arg("--repo")
            .arg(repo);
        self.with_store_env(&mut c);
        c
    }
    /// Runs the binary with args; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .expect("run genesis-recovery")
    }
    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let out = self
            .cmd()
            .arg("--json")
            .args(args)
            .output()
            .expect("run genesis-recovery");
        let code = out.status.code().unwrap_or(-1);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {args:?} is not JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, v)
    }
    /// Spawns the binary in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn genesis-recovery")
    }
    /// Runs the hostile writer to completion.
    pub fn hostile_writer(
        &self,
        record: &Path,
        commits: u64,
        seed: u64,
        pause_every: u64,
        pause_ms: u64,
    ) -> Child {
        Command::new("python3")
            .arg(fixture("hostile_writer.py"))
            .arg(self.db())
            .arg(record)
            .arg(commits.to_string())
            .arg(seed.to_string())
            .arg(pause_every.to_string())
            .arg(pause_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 must be installed (scripts/setup.sh installs it)")
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Scale factor for soak runs.
pub fn soak() -> bool {
    std::env::var("GENESIS_SOAK").is_ok_and(|v| v == "1")
}

/// The writer's record: commit number -> table hash.
pub fn read_record(path: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(path).expect("record file");
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let n = it.next()?.parse().ok()?;
            let _t = it.next()?;
            Some((n, it.next()?.to_string()))
        })
        .collect()
}

/// The same hash the writer computes (`table_hash` of hostile_writer.py,
/// over every byte of every column of `kv` and `log`), of a database, with
/// the commit number (max `log.n`). It runs the writer's own code, so the
/// writer and the tests cannot disagree on what a state is.
pub fn kv_hash(db: &Path) -> (u64, String) {
    writer_digest(db, false)
}

fn writer_digest(db: &Path, read_only: bool) -> (u64, String) {
    let mut c = Command::new("python3");
    c.arg(fixture("hostile_writer.py")).arg("--digest");
    if read_only {
        c.arg("--read-only");
    }
    let out = c.arg(db).output().expect("python3");
    assert!(
        out.status.success(),
        "digest of {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace();
    let n = it.next().and_then(|n| n.parse().ok()).expect("n");
    let h = it.next().expect("hash").to_string();
    (n, h)
}

/// Sends SIGTERM (or SIGKILL) to a child.
pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// Waits for a child and returns its output, failing the test on timeout.
pub fn wait_output(child: Child, what: &str) -> Output {
    child.wait_with_output().expect(what)
}

/// Rebuilds the database at `txid` with the library and returns its path.
pub fn rebuild_at(repo: &Path, txid: u64, out: &Path) -> genesis_core::rebuild::RebuildResult {
    let repo = genesis_core::repo::Repository::open_path(repo, false).expect("repo");
    let catalog = repo.catalog().expect("catalog");
    let point = catalog.point_for_txid(txid).expect("point");
    let chain = catalog.chain_to(&point).expect("chain");
    genesis_core::rebuild::rebuild(&repo, &chain, &point, out).expect("rebuild")
}

// ---- Helpers of the restore tests ----

/// The text of a process's stderr.
pub fn stderr_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Opens a database read-only (nothing in it or beside it is changed).
pub fn open_ro(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()))
}

/// `PRAGMA integrity_check` of a database opened read-only: "ok" when whole.
pub fn integrity(db: &Path) -> String {
    let c = open_ro(db);
    let mut s = c
        .prepare("PRAGMA integrity_check")
        .expect("integrity_check");
    let rows: Vec<String> = s
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|r| r.collect())
        .unwrap_or_else(|e| vec![format!("integrity_check failed to run: {e}")]);
    rows.join("; ")
}

/// [`kv_hash`] through a read-only connection (nothing in the database or
/// beside it is changed).
pub fn kv_hash_ro(db: &Path) -> (u64, String) {
    writer_digest(db, true)
}

/// A hash of every row of every table of a database (opened read-only), for
/// comparing two databases' content whatever their schema or page layout.
pub fn state_hash(db: &Path) -> String {
    let c = open_ro(db);
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("tables");
    let mut h = blake3::Hasher::new();
    for t in tables {
        h.update(t.as_bytes());
        let mut s = c
            .prepare(&format!("SELECT * FROM \"{}\"", t.replace('"', "\"\"")))
            .expect("select");
        let cols = s.column_count();
        let mut rows: Vec<String> = s
            .query_map([], |r| {
                let mut line = String::new();
                for i in 0..cols {
                    line.push_str(&format!("{:?}|", r.get::<_, rusqlite::types::Value>(i)?));
                }
                Ok(line)
            })
            .and_then(|r| r.collect())
            .expect("rows");
        rows.sort();
        for r in rows {
            h.update(r.as_bytes());
            h.update(b"\n");
        }
    }
    h.finalize().to_hex().to_string()
}

/// BLAKE3 of a file's bytes (`None` when it does not exist).
pub fn file_hash(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| blake3::hash(&b).to_hex().to_string())
}

/// A small deterministic generator (xorshift64*) for random test choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed from the clock, printed so that a failure can be replayed with
/// `GENESIS_TEST_SEED`.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("GENESIS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    eprintln!("{what}: GENESIS_TEST_SEED={seed}");
    seed
}

/// A kv database (the hostile writer's schema) captured in two states by
/// `backup full`: state A (`rows` rows of `pad` random bytes, log n = 1), then
/// state B (every other row rewritten, log n = 2).
pub struct TwoStates {
    pub a_id: String,
    pub b_id: String,
    /// `kv_hash` of each state.
    pub a: (u64, String),
    pub b: (u64, String),
}

/// Builds [`TwoStates`] at the environment's database and repository. The
/// live database is left in state B, with no WAL content.
pub fn two_state_kv_repo(env: &Env, rows: u64, pad: u64) -> TwoStates {
    let full = |what: &str| -> String {
        let (code, v) = env.json(&["backup", "full"]);
        assert_eq!(code, 0, "backup full of {what}: {v}");
        v["backup_id"].as_str().expect("backup_id").to_string()
    };
    {
        let c = rusqlite::Connection::open(env.db()).expect("create db");
        c.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE kv(k INTEGER PRIMARY KEY, v INTEGER, pad BLOB);
             CREATE TABLE log(n INTEGER PRIMARY KEY, at REAL);
             BEGIN;
             WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < {rows})
             INSERT INTO kv SELECT k, 1, randomblob({pad}) FROM s;
             INSERT INTO log VALUES (1, 0);
             COMMIT;"
        ))
        .expect("state A");
    }
    let a = kv_hash(&env.db());
    let a_id = full("state A");
    {
        let c = rusqlite::Connection::open(env.db()).expect("open db");
        c.execute_batch(&format!(
            "BEGIN;
             UPDATE kv SET v = v + 1, pad = randomblob({pad} / 2) WHERE k % 2 = 0;
             INSERT INTO log VALUES (2, 0);
             COMMIT;
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))
        .expect("state B");
    }
    let b = kv_hash(&env.db());
    let b_id = full("state B");
    assert_ne!(a.1, b.1);
    TwoStates { a_id, b_id, a, b }
}

/// Files in `dir` whose name starts with `prefix`.
pub fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits (up to a minute) until a capturer holds the database's capture lock.
pub fn wait_for_capture_lock(env: &Env) {
    let lock = genesis_core::capture::capture_lock_path(&env.db());
    let t0 = std::time::Instant::now();
    while genesis_core::lock::LockFile::holder(&lock).is_none() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "replicate never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
