//! A captured trading chain for the gap tests: the simulator commits events
//! (one per transaction, DOMAIN.md) on a rusqlite connection while a
//! [`Capturer`] in the same process ships a segment and an event object per
//! step. Every state is recorded by the test itself, reading the live
//! database through SQLite ([`full_state_conn`]), never from the tool's
//! catalog: after each event (with its `created_at`) and after each step
//! (with the txid the step reached).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use genesis_core::capture::{CaptureOptions, Capturer};
use genesis_core::repo::{Manifest, Repository};
use rusqlite::Connection;

use crate::common::{integrity, Env};
use crate::exact_event::{full_state, full_state_conn};

pub struct TradingChain {
    pub env: Env,
    /// `created_at` of each event and the state right after it, in order.
    pub events: Vec<(DateTime<Utc>, String)>,
    /// After each capture step: the txid reached and how many events were
    /// committed by then.
    pub steps: Vec<(u64, usize)>,
    /// The state each capture step captured (when every event is recorded).
    pub step_states: Vec<String>,
    /// The live database's state at the end.
    pub last_state: String,
}

/// Options of [`trading_chain`].
pub struct ChainSpec {
    pub steps: usize,
    pub per_step: usize,
    /// Steps that take a snapshot (besides the first).
    pub snapshots_at: Vec<usize>,
    /// Record the state after every event (small chains), or only at the end.
    pub record_every_event: bool,
    /// Also write a row to a table no event touches at every step.
    pub side_table: bool,
}

impl Default for ChainSpec {
    fn default() -> Self {
        ChainSpec {
            steps: 8,
            per_step: 20,
            snapshots_at: Vec::new(),
            record_every_event: true,
            side_table: false,
        }
    }
}

/// The application's connection to a new database in WAL mode.
pub fn open_writer(env: &Env) -> Connection {
    let conn = Connection::open(env.db()).expect("create the database");
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("WAL");
    // The writer's durability is not under test: no fsync per commit.
    conn.execute_batch("PRAGMA synchronous=OFF")
        .expect("sync off");
    conn
}

/// Builds a chain as `spec` says; the capturer is finished and the writer
/// closed at the end (the repository is then what a restore reads).
pub fn trading_chain(spec: &ChainSpec) -> TradingChain {
    let env = Env::new();
    let mut conn = open_writer(&env);
    if spec.side_table {
        conn.execute_batch("CREATE TABLE notes(n INTEGER PRIMARY KEY, at TEXT)")
            .expect("notes");
    }
    let mut sim = genesis_trading::simulate::Simulator::open(&conn, 7).expect("simulator");
    let repo = Repository::open_local(&env.repo(), true).expect("repo");
    let mut cap = Capturer::open(CaptureOptions::new(env.db()), repo).expect("capturer");
    let mut events = Vec::new();
    let mut steps = Vec::new();
    let mut step_states = Vec::new();
    let mut n_events = 0usize;
    for step in 0..spec.steps {
        for _ in 0..spec.per_step {
            let ev = sim.commit_one(&mut conn).expect("commit");
            n_events += 1;
            if spec.record_every_event {
                let at = genesis_core::time::parse_timestamp(&ev.created_at).expect("created_at");
                events.push((at, full_state_conn(&conn)));
            }
        }
        if spec.side_table {
            conn.execute(
                "INSERT INTO notes(at) VALUES (?1)",
                [Utc::now().to_rfc3339()],
            )
            .expect("note");
        }
        if spec.record_every_event {
            step_states.push(full_state_conn(&conn));
        }
        cap.step(spec.snapshots_at.contains(&step))
            .expect("capture step");
        steps.push((cap.last_txid(), n_events));
    }
    cap.finish().expect("finish");
    let last_state = full_state_conn(&conn);
    drop(conn);
    TradingChain {
        env,
        events,
        steps,
        step_states,
        last_state,
    }
}

impl TradingChain {
    /// Every readable manifest of one kind, in chain order.
    pub fn manifests(&self, kind: genesis_core::repo::ObjectKind) -> Vec<Arc<Manifest>> {
        let catalog = Repository::open_local(&self.env.repo(), false)
            .expect("repo")
            .catalog()
            .expect("catalog");
        assert_eq!(catalog.generations.len(), 1, "the chain lost continuity");
        let mut v: Vec<Arc<Manifest>> = catalog
            .manifests()
            .filter(|m| m.kind == kind)
            .cloned()
            .collect();
        v.sort_by_key(|m| (m.txid_min, m.seq_min));
        v
    }

    /// The segment shipped by capture step `step` (step 0 is the snapshot).
    pub fn segment_of_step(&self, step: usize) -> Arc<Manifest> {
        let (txid, _) = self.steps[step];
        self.manifests(genesis_core::repo::ObjectKind::Segment)
            .into_iter()
            .find(|m| m.txid_max == txid)
            .unwrap_or_else(|| panic!("no segment ends at txid {txid} (step {step})"))
    }

    /// The event object archived by capture step `step`.
    pub fn events_of_step(&self, step: usize) -> Arc<Manifest> {
        let (txid, n) = self.steps[step];
        self.manifests(genesis_core::repo::ObjectKind::Events)
            .into_iter()
            .find(|m| m.txid_max == txid && m.seq_max == Some(n as i64))
            .unwrap_or_else(|| panic!("no event object of step {step}"))
    }

    /// The state after the `i`-th event (0-based) or, for `None`, before any.
    pub fn state_after(&self, events: usize) -> &str {
        &self.events[events - 1].1
    }

    /// The state at the end of capture step `step`.
    pub fn state_at_step(&self, step: usize) -> &str {
        &self.step_states[step]
    }

    /// `created_at` of the `k`-th event (1-based), as the trading system writes it.
    pub fn event_time(&self, k: usize) -> String {
        self.events[k - 1]
            .0
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string()
    }

    /// Restores with `--json` into a fresh `--output`; returns the exit code,
    /// the document and the output path.
    pub fn restore(
        &self,
        name: &str,
        args: &[&str],
    ) -> (i32, serde_json::Value, std::path::PathBuf) {
        let out = self.env.path().join(format!("{name}.db"));
        let _ = std::fs::remove_file(&out);
        let mut all = vec!["restore", "--output", out.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let (code, v) = self.env.json(&all);
        (code, v, out)
    }
}

/// Asserts that a restored database holds exactly `expected` and is whole.
pub fn assert_state(out: &std::path::Path, expected: &str, what: &str, v: &serde_json::Value) {
    assert_eq!(integrity(out), "ok", "{what}: integrity_check");
    assert_eq!(
        full_state(out),
        expected,
        "{what}: the restored state differs from the source's (txid {}, {} events replayed, fallback {})",
        v["restored_txid"],
        v["events_replayed"],
        v["fallback"]
    );
}
