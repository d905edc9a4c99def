//! The StateReconstructor: DOMAIN.md's validation rules 2–10, its warnings and
//! its metrics, over a database with the trading schema. (Rule 1, SQLite's own
//! checks, belongs to `core`.)
//!
//! Each rule has one error code, so a report can be read (and tested) rule by
//! rule; the message names the row: order id, position id, asset or sequence
//! number.
//!
//! Time is linear in the events and memory bounded by the state: the events
//! are read once ([`stream`]), rules 2 and 3 checked as they go, and their
//! effects folded in memory ([`fold`]); rule 9 compares the folded positions,
//! orders and balances with the tables, rule 10 the `blake3:` checkpoints it
//! rehashes with the folded state at them (which ones: [`pass`]). Nothing is
//! written to any database.

mod checks;
mod fold;
mod hash;
mod pass;
mod raw;
mod render;
mod rows;
mod stream;
mod tables;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Error codes, one per rule.
pub mod codes {
    pub const EVENT_SEQUENCE: &str = "event_sequence";
    pub const EVENT_AFTER_TARGET: &str = "event_after_target";
    pub const BALANCE: &str = "balance_inconsistent";
    pub const ORDER_INVALID: &str = "order_invalid";
    pub const ORDER_FILL_STATE: &str = "order_fill_state";
    pub const POSITION_INVALID: &str = "position_invalid";
    pub const ORDER_POSITION_MISSING: &str = "order_position_missing";
    pub const REPLAY_MISMATCH: &str = "replay_mismatch";
    pub const CHECKPOINT_HASH: &str = "checkpoint_hash_mismatch";
    // Warnings.
    pub const USER_VERSION: &str = "user_version_zero";
    pub const UNKNOWN_EVENT_TYPE: &str = "unknown_event_type";
    pub const TIME_BACKWARDS: &str = "created_at_backwards";
    pub const STALE_OPEN_ORDER: &str = "stale_open_order";
    pub const LOCKED_BALANCE_SHORT: &str = "locked_balance_short";
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
}

/// The order statuses DOMAIN.md allows.
pub const ORDER_STATUSES: [&str; 6] = [
    "new",
    "partially_filled",
    "filled",
    "cancelled",
    "rejected",
    "expired",
];

/// A finding: a stable code and a message naming the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub message: String,
}

impl Finding {
    /// A finding with this code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Finding {
        Finding {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The validation report (same field names as core's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub is_consistent: bool,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub metrics: Map<String, Value>,
}

/// How to validate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The restore target: events after it are errors (rule 3).
    pub target: Option<DateTime<Utc>>,
    /// Open orders older than this (before the last event, or the target) are warned about.
    pub max_open_order_age: TimeDelta,
    /// Rule 9 (replay comparison); default true.
    pub check_replay: bool,
    /// Rule 10 (checkpoint hashes); default true.
    pub check_checkpoints: bool,
    /// Rule 10 for every `blake3:` checkpoint (`validate --full`); by default
    /// only the newest and those after [`ValidateOptions::checkpoints_after`]
    /// are rehashed (see the module `pass` for why), and the metrics
    /// (`checkpoint_hashes`) say which were not.
    pub all_checkpoints: bool,
    /// Rehash every checkpoint with a sequence number above this one (a
    /// restore passes the last sequence number of the restored database, so
    /// that every checkpoint it replayed is checked); default none.
    pub checkpoints_after: Option<i64>,
    /// Event types handled elsewhere (plugins): not warned about.
    pub handled_event_types: BTreeSet<String>,
    /// Findings listed per rule before a summary line; default 50.
    pub max_findings_per_rule: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            target: None,
            max_open_order_age: TimeDelta::hours(24),
            check_replay: true,
            check_checkpoints: true,
            all_checkpoints: false,
            checkpoints_after: None,
            handled_event_types: BTreeSet::new(),
            max_findings_per_rule: 50,
        }
    }
}

/// Collects findings per code, capped, with a summary of what was left out.
struct Sink {
    cap: usize,
    found: Vec<Finding>,
    counts: BTreeMap<String, usize>,
}

impl Sink {
    fn new(cap: usize) -> Sink {
        Sink {
            cap: cap.max(1),
            found: Vec::new(),
            counts: BTreeMap::new(),
        }
    }
    fn push(&mut self, code: &str, message: impl Into<String>) {
        let n = self.counts.entry(code.to_string()).or_default();
        *n += 1;
        if *n <= self.cap {
            self.found.push(Finding::new(code, message));
        }
    }
    /// Adds another sink's findings after this one's.
    fn append(&mut self, other: Sink) {
        self.found.extend(other.found);
        for (code, n) in other.counts {
            *self.counts.entry(code).or_default() += n;
        }
    }
    /// Pushes another sink's findings as if pushed here one by one (each
    /// code's cap counted across both).
    fn push_all(&mut self, other: Sink) {
        let mut kept: BTreeMap<String, usize> = BTreeMap::new();
        for f in other.found {
            *kept.entry(f.code.clone()).or_default() += 1;
            self.push(&f.code, f.message);
        }
        for (code, n) in other.counts {
            self.skip(
                &code,
                n.saturating_sub(kept.get(&code).copied().unwrap_or(0)),
            );
        }
    }
    /// Counts `n` findings of `code` that are not kept.
    fn skip(&mut self, code: &str, n: usize) {
        if n > 0 {
            *self.counts.entry(code.to_string()).or_default() += n;
        }
    }
    fn finish(mut self) -> Vec<Finding> {
        for (code, n) in &self.counts {
            if *n > self.cap {
                self.found.push(Finding::new(
                    code,
                    format!("... and {} more {code} findings", n - self.cap),
                ));
            }
        }
        self.found
    }
}

fn q(action: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        action: action.to_string(),
        source,
    }
}

fn num(v: &SqlValue) -> Option<f64> {
    match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        SqlValue::Text(t) => t.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::Text(t) => Some(t.clone()),
        SqlValue::Integer(i) => Some(i.to_string()),
        SqlValue::Real(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Calls `f` on each row of `sql`, one buffer reused (its texts' allocations
/// too): a table is never held whole, and a row costs no allocation.
fn each_row(
    conn: &Connection,
    sql: &str,
    mut f: impl FnMut(&[SqlValue]) -> Result<()>,
) -> Result<()> {
    use rusqlite::types::ValueRef;
    let mut row = raw::Query::prepare(conn, sql).map_err(q(sql))?;
    let mut buf = vec![SqlValue::Null; row.column_count()];
    while row.step().map_err(q(sql))? {
        for (i, slot) in buf.iter_mut().enumerate() {
            let v = row.value_ref(i).map_err(q(sql))?;
            match (v, &mut *slot) {
                (ValueRef::Text(t), SqlValue::Text(s)) if std::str::from_utf8(t).is_ok() => {
                    s.clear();
                    s.push_str(std::str::from_utf8(t).unwrap_or_default());
                }
                // Anything else as rusqlite's `get` gives it (and its error,
                // for text that is not UTF-8).
                (v, slot) => {
                    *slot = rusqlite::types::FromSql::column_result(v)
                        .map_err(|e| from_sql_error(i, v, e))
                        .map_err(q(sql))?
                }
            }
        }
        f(&buf)?;
    }
    Ok(())
}

/// A value rusqlite's `get` could not convert, as its `get` reports it (for
/// a [`SqlValue`], only text that is not UTF-8).
fn from_sql_error(
    i: usize,
    v: rusqlite::types::ValueRef<'_>,
    e: rusqlite::types::FromSqlError,
) -> rusqlite::Error {
    match e {
        rusqlite::types::FromSqlError::Utf8Error(err) => rusqlite::Error::Utf8Error(i, err),
        other => rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(other)),
    }
}

fn rows(conn: &Connection, sql: &str) -> Result<Vec<Vec<SqlValue>>> {
    let mut stmt = conn.prepare(sql).map_err(q(sql))?;
    let n = stmt.column_count();
    let out = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, SqlValue>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(q(sql))?;
    Ok(out)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Validates the database's trading state; see the module documentation.
///
/// # Errors
/// [`Error::Schema`] without the trading schema, [`Error::Sqlite`] when a table
/// cannot be read. Inconsistencies are findings in the report, not errors.
pub fn validate_state(conn: &Connection, opts: &ValidateOptions) -> Result<ValidationReport> {
    let _span = tracing::info_span!("validate").entered();
    crate::schema::require_trading_schema(conn)?;
    let mut errors = Sink::new(opts.max_findings_per_rule);
    let mut warnings = Sink::new(opts.max_findings_per_rule);
    let mut metrics = Map::new();

    let user_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(q("reading user_version"))?;
    if user_version == 0 {
        warnings.push(
            codes::USER_VERSION,
            "PRAGMA user_version is 0 (the trading system sets 1)",
        );
    }

    // The table rules (4-8) read only the projections: on a database file
    // they run on a second connection beside the pass over the events.
    let second = conn
        .path()
        .filter(|p| !p.is_empty())
        .and_then(|p| Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY).ok());
    let t0 = std::time::Instant::now();
    let (events, tables) = std::thread::scope(|s| {
        let beside = second.map(|c| s.spawn(move || tables::table_rules(&c, opts)));
        let events = events_pass(conn, opts, t0);
        let tables = match beside {
            Some(h) => h
                .join()
                .unwrap_or_else(|p| Err(Error::internal("the table rules", p.as_ref()))),
            None => tables::table_rules(conn, opts),
        };
        (events, tables)
    });
    let (mut pass, checks, diffs) = events?;
    let tables = tables?;
    metrics.extend(std::mem::take(&mut pass.metrics));
    // Open orders older than the age before the last event (or the target).
    let reference = checks
        .last_time()
        .and_then(crate::time::parse_opt)
        .map(|t| opts.target.map_or(t, |target| target.min(t)));

    tracing::debug!("events and tables checked in {:?}", t0.elapsed());
    let checks::Checks {
        sequence,
        after_target,
        warnings: event_warnings,
        ..
    } = checks;
    warnings.append(event_warnings);
    sequence.into_sink(codes::EVENT_SEQUENCE, &mut errors);
    let mut tables = tables;
    errors.push_all(std::mem::replace(&mut tables.duplicates, Sink::new(1)));
    after_target.into_sink(codes::EVENT_AFTER_TARGET, &mut errors);
    errors.append(tables.errors);
    if let Some(reference) = reference {
        for (id, created, t) in &tables.open_since {
            if reference - *t > opts.max_open_order_age {
                warnings.push(
                    codes::STALE_OPEN_ORDER,
                    format!(
                        "order {id} has been open since {created} (more than {} hours before {})",
                        opts.max_open_order_age.num_hours(),
                        crate::time::format(reference)
                    ),
                );
            }
        }
    }
    warnings.append(tables.warnings);
    metrics.extend(tables.metrics);
    pass.checkpoint_errors
        .into_sink(codes::CHECKPOINT_HASH, &mut errors);
    if let Some(m) = pass.replay_failed {
        errors.push(codes::REPLAY_MISMATCH, m);
    } else {
        for d in diffs {
            errors.push(codes::REPLAY_MISMATCH, d);
        }
    }
    let errors = errors.finish();
    Ok(ValidationReport {
        is_consistent: errors.is_empty(),
        errors,
        warnings: warnings.finish(),
        metrics,
    })
}

/// The pass over the events (rules 2, 3, 9, 10, the event warnings and
/// metrics): in rowid order, again through SQLite's sorter only when the
/// table is not in sequence order.
fn events_pass<'o>(
    conn: &Connection,
    opts: &'o ValidateOptions,
    t0: std::time::Instant,
) -> Result<(pass::Pass<'o>, checks::Checks<'o>, Vec<String>)> {
    // One read transaction for the search of the newest checkpoint, the pass
    // and the comparison with the tables, so that all see the same database
    // (a live one is written to meanwhile).
    let txn = conn.is_autocommit();
    if txn {
        conn.execute_batch("BEGIN")
            .map_err(q("starting the read transaction of the pass"))?;
    }
    let read = (|| {
        let newest = if opts.check_checkpoints && !opts.all_checkpoints {
            pass::newest_checkpoint(conn)?
        } else {
            None
        };
        let mut pass = pass::Pass::new(opts, newest)?;
        let mut checks = checks::Checks::new(opts);
        let read = stream::each_event(
            conn,
            stream::Order::Rowid,
            |ev| checks.event(ev),
            |batch| pass.events(batch),
        )?;
        if read == stream::Streamed::OutOfOrder {
            tracing::debug!("events are not in sequence order by rowid: reading them sorted");
            pass = pass::Pass::new(opts, None)?;
            checks = checks::Checks::new(opts);
            stream::each_event(
                conn,
                stream::Order::Sorted,
                |ev| checks.event(ev),
                |batch| pass.events(batch),
            )?;
        }
        tracing::debug!("events read and folded in {:?}", t0.elapsed());
        let mut metrics = Map::new();
        checks.finish(&mut metrics);
        let (mut pass, diffs) = pass.finish(conn, &mut metrics)?;
        pass.metrics = metrics;
        tracing::debug!(
            "replay comparison and newest checkpoint done in {:?}",
            t0.elapsed()
        );
        Ok((pass, checks, diffs))
    })();
    if txn {
        // A read transaction: ending it cannot lose anything.
        let _ = conn.execute_batch("COMMIT");
    }
    read
}
