//! The `event-replay` stage: makes a restore exact to the event between two
//! captured commits (DOMAIN.md). It takes the `archived-events` artifact
//! (which wal-apply emits ahead of the staged database) and the staged
//! database. When the database has the trading schema and the restore
//! target is a time, it applies the archived events
//! with a sequence number above the database's highest and `created_at` at or
//! before the target, in sequence order, in one transaction, through
//! `genesis_trading::replay` (which inserts each event row and applies its
//! effect), the event objects decoded beside the replay
//! ([`crate::event_stream`]). The replay report (with unknown event types: count and first
//! sequence number each), the number replayed and the instant reached are
//! recorded on the staged database. Otherwise the stage passes the database on
//! unchanged, saying why in the report. The replay runs in trading's staging
//! mode (no journal, no syncs, back to WAL and one fsync at the end); a failed
//! replay removes the staged file, which is then unusable.
//!
//! Config: `plugins = ["path/to/libhandler.so", ...]` (relative to the pipeline
//! file) names event-handler plugins, loaded and asked which event types they
//! handle when the pipeline is compiled; `plugin_config = { ... }` is the
//! config table each of them receives.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Deserialize;

use genesis_core::pipeline::{
    decode_config, ArchivedEvents, Artifact, ArtifactKind, BuildContext, Emit, Stage, StageContext,
    StageFactory, StagedDatabase,
};
use genesis_core::plugin_host::{self, EventHandlerPlugin, SqlValue, WireEvent};
use genesis_core::repo::formats::EventRow;
use genesis_core::{Error, Result};

use crate::event_stream::{replay_archive, ArchiveReplayError};
use genesis_trading::{Event, EventExtension, ReplayOptions};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventReplayConfig {
    #[serde(default)]
    plugins: Vec<String>,
    #[serde(default)]
    plugin_config: toml::Table,
}

/// The `event-replay` stage type.
pub struct EventReplayFactory;

impl StageFactory for EventReplayFactory {
    fn type_name(&self) -> &str {
        "event-replay"
    }
    fn description(&self) -> &str {
        "replays archived events after the restore point up to the target time, in one transaction"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::ArchivedEvents, ArtifactKind::StagedDatabase]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn requires(&self) -> &[ArtifactKind] {
        &[ArtifactKind::ArchivedEvents, ArtifactKind::StagedDatabase]
    }
    fn build(
        &self,
        config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let config: EventReplayConfig = decode_config(config)?;
        let plugin_config = plugin_host::config_json(&config.plugin_config);
        let mut handlers = Vec::new();
        let mut problems = Vec::new();
        for (i, p) in config.plugins.iter().enumerate() {
            let path = {
                let p = Path::new(p);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    ctx.pipeline_dir().join(p)
                }
            };
            let key = format!("plugins[{i}]");
            let library = match ctx.plugins.load(&path) {
                Ok(l) => l,
                Err(m) => {
                    problems.push((key, format!("cannot load plugin {}: {m}", path.display())));
                    continue;
                }
            };
            match EventHandlerPlugin::new(library.as_ref(), &plugin_config) {
                Ok(h) => handlers.push(PluginExtension(h)),
                Err(m) => problems.push((key, m)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Box::new(EventReplay {
            handlers,
            archived: None,
        }))
    }
}

/// An event-handler plugin as the trading replay's extension.
struct PluginExtension(EventHandlerPlugin);

impl EventExtension for PluginExtension {
    fn handles(&self, event_type: &str) -> bool {
        self.0.handles(event_type)
    }

    fn effects(
        &mut self,
        ev: &Event,
    ) -> std::result::Result<Vec<genesis_trading::SqlStatement>, String> {
        let wire = WireEvent {
            event_id: ev.event_id.clone(),
            event_type: ev.event_type.clone(),
            aggregate_id: ev.aggregate_id.clone(),
            event_data: WireEvent::parse_data(&ev.event_data),
            sequence_number: ev.sequence_number,
            created_at: ev.created_at.clone(),
        };
        let statements = self
            .0
            .handle(&wire)
            .map_err(|m| format!("plugin {}: {m}", self.0.library().display()))?;
        let mut out = Vec::with_capacity(statements.len() * 2 + 1);
        if statements.iter().any(|s| s.expect_changes.is_some()) {
            out.push(create_expect_table());
        }
        for s in statements {
            let expect = s.expect_changes;
            out.push(genesis_trading::SqlStatement {
                sql: s.sql,
                params: s.params.into_iter().map(sql_value_to_json).collect(),
            });
            if let Some(n) = expect {
                out.push(expect_changes_check(n));
            }
        }
        Ok(out)
    }
}

/// The temporary table whose CHECK enforces a plugin statement's
/// `expect_changes` (see [`expect_changes_check`]).
const EXPECT_TABLE: &str = "genesis_expect_changes";

fn create_expect_table() -> genesis_trading::SqlStatement {
    genesis_trading::SqlStatement {
        sql: format!(
            "CREATE TEMP TABLE IF NOT EXISTS {EXPECT_TABLE} \
             (expected INTEGER NOT NULL, changed INTEGER NOT NULL, \
             CONSTRAINT plugin_statement_changed_another_number_of_rows CHECK (expected = changed))"
        ),
        params: Vec::new(),
    }
}

/// Trading's replay runs extension statements itself and has no notion of
/// the SDK's `expect_changes`; this statement, run right after the plugin's,
/// fails (naming the constraint) when `changes()` differs from `expected`, so
/// an update of a missing row fails the replay instead of passing silently.
/// It writes only to the connection's temporary database, never to the
/// restored file.
fn expect_changes_check(expected: u64) -> genesis_trading::SqlStatement {
    genesis_trading::SqlStatement {
        sql: format!("INSERT INTO temp.{EXPECT_TABLE} (expected, changed) VALUES (?1, changes())"),
        params: vec![serde_json::Value::from(expected)],
    }
}

fn sql_value_to_json(v: SqlValue) -> serde_json::Value {
    match v {
        SqlValue::Null => serde_json::Value::Null,
        SqlValue::Integer(i) => serde_json::Value::from(i),
        SqlValue::Real(f) => serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        SqlValue::Text(t) => serde_json::Value::String(t),
    }
}

struct EventReplay {
    handlers: Vec<PluginExtension>,
    /// The archived events, from their arrival until the staged database's.
    archived: Option<ArchivedEvents>,
}

/// Converts an archived row (bytes, verbatim) into an event, taking its bytes
/// (the row is left with empty fields).
fn to_event(row: &mut EventRow) -> Result<Event> {
    let seq = row.sequence_number;
    let text = |field: &str, bytes: &mut Vec<u8>| {
        String::from_utf8(std::mem::take(bytes)).map_err(|_| {
            Error::Failed(format!(
                "archived event #{seq} has a {field} that is not UTF-8 text"
            ))
        })
    };
    Ok(Event {
        event_id: text("event_id", &mut row.event_id)?,
        event_type: text("event_type", &mut row.event_type)?,
        aggregate_id: text("aggregate_id", &mut row.aggregate_id)?,
        event_data: text("event_data", &mut row.event_data)?,
        sequence_number: seq,
        created_at: text("created_at", &mut row.created_at)?,
    })
}

/// The event of an archived row, or `None` when its `created_at` is after
/// `until` (the row is then left as it is).
pub(crate) fn select_event(row: &mut EventRow, until: DateTime<Utc>) -> Result<Option<Event>> {
    let seq = row.sequence_number;
    let at = std::str::from_utf8(&row.created_at).map_err(|_| {
        Error::Failed(format!(
            "archived event #{seq} has a created_at that is not UTF-8 text"
        ))
    })?;
    let t = genesis_trading::time::parse(at, || format!("created_at of event #{seq}"))
        .map_err(|e| Error::Failed(e.to_string()))?;
    if t > until {
        return Ok(None);
    }
    to_event(row).map(Some)
}

/// What stands in the output for a row that is not part of the result (after
/// the target, or failed); it allocates nothing and is truncated away.
fn placeholder() -> Event {
    Event {
        event_id: String::new(),
        event_type: String::new(),
        aggregate_id: String::new(),
        event_data: String::new(),
        sequence_number: 0,
        created_at: String::new(),
    }
}

/// The archived events to replay from the decoded event objects: above
/// `after_seq`, in sequence order (the first of rows with the same sequence
/// number), up to the first whose `created_at` is after `until` (so always a
/// prefix). An archived row after that prefix is never an error.
///
/// A million rows go through here on a large restore, so no row is moved
/// about: the rows are put in order as references, then each is converted
/// (its time read, its bytes moved into the event) in parallel, straight
/// into its place in the result. A row that ends the prefix (after the
/// target, or failed) records its index; rows beyond the lowest such index
/// are skipped, and the result is cut there, or the failure of that row
/// returned.
///
/// # Errors
/// [`Error::Failed`] naming an archived event of the prefix that is not UTF-8
/// text or whose `created_at` is not a time.
pub fn select_events(
    objects: Vec<Arc<Vec<EventRow>>>,
    after_seq: i64,
    until: DateTime<Utc>,
) -> Result<Vec<Event>> {
    let mut objects: Vec<Vec<EventRow>> = objects
        .into_par_iter()
        .map(|object| Arc::try_unwrap(object).unwrap_or_else(|shared| (*shared).clone()))
        .collect();
    // Each object's rows above `after_seq`, and whether they are in order;
    // in parallel, as this reads every row.
    let parts: Vec<(Vec<&mut EventRow>, bool)> = objects
        .par_iter_mut()
        .map(|object| {
            let rows: Vec<&mut EventRow> = object
                .iter_mut()
                .filter(|r| r.sequence_number > after_seq)
                .collect();
            let sorted = rows.is_sorted_by(|a, b| a.sequence_number < b.sequence_number);
            (rows, sorted)
        })
        .collect();
    let mut sorted = parts.iter().all(|(_, sorted)| *sorted);
    let mut rows: Vec<&mut EventRow> = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    for (part, _) in parts {
        if let (Some(last), Some(first)) = (rows.last(), part.first()) {
            sorted &= last.sequence_number < first.sequence_number;
        }
        rows.extend(part);
    }
    // Capture archives in sequence order: usually there is nothing to sort.
    if !sorted {
        rows.sort_by_key(|r| r.sequence_number);
        rows.dedup_by_key(|r| r.sequence_number);
    }
    // The index of the first row that ends the prefix (only ever lowered;
    // read for certain after the parallel loop has joined).
    let end = AtomicUsize::new(usize::MAX);
    let failures: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    let mut events = Vec::new();
    rows.into_par_iter()
        .with_min_len(4096)
        .enumerate()
        .map(|(i, row)| {
            if i > end.load(Ordering::Relaxed) {
                return placeholder();
            }
            let failed = match select_event(row, until) {
                Ok(Some(ev)) => return ev,
                Ok(None) => None,
                Err(e) => Some(e),
            };
            end.fetch_min(i, Ordering::Relaxed);
            if let Some(e) = failed {
                failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((i, e));
            }
            placeholder()
        })
        .collect_into_vec(&mut events);
    // What is left of the rows: mostly emptied, but every one is looked at.
    objects.into_par_iter().for_each(drop);
    let end = end.into_inner();
    let failures = failures
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((_, e)) = failures.into_iter().find(|(i, _)| *i == end) {
        return Err(e);
    }
    events.truncate(end);
    Ok(events)
}

/// Cuts `events` at the first sequence number that does not follow the one
/// before it (starting after `after`); returns `(expected, found)` there.
pub(crate) fn contiguous_prefix(events: &mut Vec<Event>, after: i64) -> Option<(i64, i64)> {
    let (i, expected, found) = (after + 1..)
        .zip(events.iter())
        .enumerate()
        .find(|(_, (expected, ev))| ev.sequence_number != *expected)
        .map(|(i, (expected, ev))| (i, expected, ev.sequence_number))?;
    tracing::warn!(
        expected,
        found,
        "the event archive has a gap: replay stops before it"
    );
    events.truncate(i);
    Some((expected, found))
}

fn trading_error(path: &Path) -> impl Fn(genesis_trading::Error) -> Error + '_ {
    move |e| Error::Failed(format!("event replay on {}: {e}", path.display()))
}

impl EventReplay {
    fn replay(&mut self, staged: &mut StagedDatabase, archived: ArchivedEvents) -> Result<()> {
        let path: PathBuf = staged.path.clone();
        let Some(until) = staged.target_time else {
            staged.replay = Some(serde_json::json!({
                "skipped": "the restore target is not a time; the restore point is exact"
            }));
            return Ok(());
        };
        let mut conn = Connection::open(&path).map_err(|e| Error::sqlite("open", &path, e))?;
        let has_schema =
            genesis_trading::schema::has_trading_schema(&conn).map_err(trading_error(&path))?;
        if !has_schema {
            staged.replay = Some(serde_json::json!({
                "skipped": "the database has no trading schema (no `events` table)"
            }));
            return Ok(());
        }
        let after = genesis_trading::event::max_sequence(&conn).map_err(trading_error(&path))?;
        let mut extensions: Vec<Box<dyn EventExtension + Send>> = Vec::new();
        for h in self.handlers.drain(..) {
            extensions.push(Box::new(h));
        }
        // The staged file is this restore's private copy, discarded on any
        // failure: replay it without a journal and syncs, then back to WAL
        // and one fsync (ReplayOptions::staging). Only a run without a hole
        // in its sequence numbers is replayed: a lost event object ends the
        // replay there (the restore reports the gap and the RPO it costs).
        let opts = ReplayOptions {
            staging: true,
            after_sequence: Some(after),
            ..ReplayOptions::default()
        };
        let result = replay_archive(
            &mut conn,
            &archived.objects,
            after,
            until,
            &opts,
            &mut extensions,
        );
        drop(archived);
        let replayed = match result {
            Ok(r) => r,
            Err(e) => {
                // Without a journal the failed transaction may have left rows
                // behind (and the archive is read while the replay writes):
                // the file must not be used. Remove it now.
                drop(conn);
                let removed = match crate::wal_apply::remove_staged(&path) {
                    Ok(()) => "it has been removed".to_string(),
                    Err(r) => format!("removing it failed: {r}"),
                };
                return Err(match e {
                    ArchiveReplayError::Archive(e) => {
                        tracing::warn!(path = %path.display(), "the staged database was being written without a journal and is unusable: {removed}");
                        e
                    }
                    ArchiveReplayError::Replay(e) => Error::Failed(format!(
                        "event replay on {}: {e}; the staged database was being written without a journal and is unusable: {removed}",
                        path.display()
                    )),
                });
            }
        };
        let (report, archive_gap) = (replayed.report, replayed.archive_gap);
        // A million events are five million strings (about 0.1 s to free):
        // freed beside the rest of the restore, not before it.
        let events = replayed.events;
        std::thread::spawn(move || drop(events));
        // Fold the WAL back into the file: the staged database must be one file.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| Error::sqlite("checkpoint", &path, e))?;
        drop(conn);
        staged.events_replayed = report.applied;
        staged.replayed_until = report
            .last_created_at
            .as_deref()
            .and_then(genesis_trading::time::parse_opt);
        let mut value = serde_json::to_value(&report)
            .map_err(|e| Error::Failed(format!("encode the replay report: {e}")))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("after_sequence".into(), after.into());
            if let Some((expected, found)) = archive_gap {
                map.insert(
                    "archive_gap".into(),
                    serde_json::json!({ "expected_sequence": expected, "found_sequence": found }),
                );
            }
            map.insert(
                "target_time".into(),
                genesis_core::time::format_rfc3339(until).into(),
            );
        }
        staged.replay = Some(value);
        tracing::info!(
            events = report.applied,
            unknown = report.unknown.len(),
            "events replayed"
        );
        Ok(())
    }
}

impl Stage for EventReplay {
    fn process(&mut self, input: Artifact, _ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::ArchivedEvents(archived) => {
                if self.archived.replace(archived).is_some() {
                    return Err(Error::Failed(
                        "event-replay received two archived-events artifacts for one restore; \
                         a pipeline has one wal-apply"
                            .into(),
                    ));
                }
                Ok(())
            }
            Artifact::StagedDatabase(mut staged) => {
                // Never replay "nothing" for want of the events: a database
                // without them would look exact to the target.
                let archived = self.archived.take().ok_or_else(|| {
                    Error::Failed(format!(
                        "event-replay received the staged database {} without the archived events \
                         (wal-apply emits them first); a stage before event-replay dropped them",
                        staged.path.display()
                    ))
                })?;
                self.replay(&mut staged, archived)?;
                // The rows (consumed here) go no further down the pipeline.
                out.emit(Artifact::StagedDatabase(staged))
            }
            other => out.emit(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, at: &str) -> EventRow {
        EventRow {
            sequence_number: seq,
            event_id: format!("e{seq}").into_bytes(),
            event_type: b"CHECKPOINT".to_vec(),
            aggregate_id: format!("k{seq}").into_bytes(),
            event_data: b"{}".to_vec(),
            created_at: at.as_bytes().to_vec(),
        }
    }

    fn time(s: &str) -> DateTime<Utc> {
        genesis_trading::time::parse(s, || s.to_string()).unwrap()
    }

    #[test]
    fn selects_the_prefix_after_the_database_in_sequence_order() {
        // Objects out of order and overlapping, as a resumed capture can leave them.
        let a = Arc::new(vec![
            row(4, "2025-01-15T10:00:04"),
            row(5, "2025-01-15T10:00:05"),
        ]);
        let b = Arc::new(vec![
            row(1, "2025-01-15T10:00:01"),
            row(2, "2025-01-15T10:00:02"),
            row(3, "2025-01-15T10:00:03"),
            row(4, "2025-01-15T10:00:04"),
        ]);
        let kept = Arc::clone(&a);
        let events = select_events(vec![a, b], 1, time("2025-01-15T10:00:04.5")).unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.sequence_number).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(kept.len(), 2, "a shared object is copied, not taken");
    }

    #[test]
    fn a_bad_row_is_an_error_only_inside_the_prefix() {
        let mut bad = row(3, "2025-01-15T10:00:03");
        bad.event_data = vec![0xff, 0xfe];
        let objects = || {
            vec![Arc::new(vec![
                row(1, "2025-01-15T10:00:01"),
                row(2, "2025-01-15T10:00:02"),
                bad.clone(),
            ])]
        };
        let events = select_events(objects(), 0, time("2025-01-15T10:00:02.5")).unwrap();
        assert_eq!(events.len(), 2);
        let err = select_events(objects(), 0, time("2025-01-15T10:00:09"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("archived event #3 has a event_data that is not UTF-8"),
            "{err}"
        );
    }

    /// The documented semantics, one row at a time: what `select_events`
    /// must return (events, or the error's text) whatever the parallel split.
    fn reference(
        objects: &[Vec<EventRow>],
        after_seq: i64,
        until: DateTime<Utc>,
    ) -> std::result::Result<Vec<Event>, String> {
        let mut rows: Vec<EventRow> = objects
            .iter()
            .flatten()
            .filter(|r| r.sequence_number > after_seq)
            .cloned()
            .collect();
        // Stable: of rows with the same sequence number, the first read stays.
        rows.sort_by_key(|r| r.sequence_number);
        rows.dedup_by_key(|r| r.sequence_number);
        let mut out = Vec::new();
        for r in rows {
            let seq = r.sequence_number;
            let text = |field: &str, bytes: Vec<u8>| {
                String::from_utf8(bytes).map_err(|_| {
                    format!("archived event #{seq} has a {field} that is not UTF-8 text")
                })
            };
            let at = text("created_at", r.created_at.clone())?;
            let t = genesis_trading::time::parse(&at, || format!("created_at of event #{seq}"))
                .map_err(|e| e.to_string())?;
            if t > until {
                break;
            }
            out.push(Event {
                event_id: text("event_id", r.event_id)?,
                event_type: text("event_type", r.event_type)?,
                aggregate_id: text("aggregate_id", r.aggregate_id)?,
                event_data: text("event_data", r.event_data)?,
                sequence_number: seq,
                created_at: at,
            });
        }
        Ok(out)
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Archives of several objects, large enough to be split across threads:
    /// in order or not (shuffled, overlapping, duplicated sequence numbers),
    /// with the odd bad row (not UTF-8, not a time) before or after the cut.
    #[test]
    fn matches_the_one_row_at_a_time_semantics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let start = time("2025-01-15T10:00:00");
        for case in 0..48 {
            // No bad rows, a few, or one every few thousand.
            let bad_one_in = [u64::MAX, 40_000, 4_000][case / 4 % 3];
            let n_objects = 1 + rng.below(5) as usize;
            let per_object = 1 + rng.below(6000) as usize;
            let mut seq = rng.below(3) as i64;
            let mut objects: Vec<Vec<EventRow>> = Vec::new();
            for _ in 0..n_objects {
                let mut rows = Vec::new();
                for _ in 0..per_object {
                    seq += 1;
                    let at = start + chrono::Duration::milliseconds(seq * 10);
                    let mut r = row(seq, &genesis_trading::time::format(at));
                    r.event_id = format!("e{seq}-{}", objects.len()).into_bytes();
                    match rng.below(bad_one_in) {
                        0 => r.event_data = vec![b'{', 0xff, b'}'],
                        1 => r.created_at = vec![0xc3],
                        2 => r.created_at = b"not a time".to_vec(),
                        3 => r.created_at = b"2025-01-15T10:00:00Z".to_vec(),
                        _ => {}
                    }
                    rows.push(r);
                }
                objects.push(rows);
            }
            match case % 4 {
                // Overlap: the next object starts again a little earlier.
                1 => {
                    let back = rng.below(50) as i64;
                    for r in objects.iter_mut().skip(1).flatten() {
                        r.sequence_number -= back;
                    }
                }
                // Objects in reverse order.
                2 => objects.reverse(),
                // A few rows swapped inside an object.
                3 => {
                    for o in &mut objects {
                        for _ in 0..3 {
                            let (i, j) = (rng.below(o.len() as u64), rng.below(o.len() as u64));
                            o.swap(i as usize, j as usize);
                        }
                    }
                }
                _ => {}
            }
            let total = (n_objects * per_object) as i64;
            let after_seq = rng.below(total as u64 / 2 + 1) as i64;
            // The target: anywhere from before the first row selected to after the last.
            let until_ms = (after_seq + rng.below((total - after_seq) as u64 + 50) as i64) * 10;
            let until = start + chrono::Duration::milliseconds(until_ms + rng.below(10) as i64);
            let expected = reference(&objects, after_seq, until);
            let shared: Vec<Arc<Vec<EventRow>>> = objects.into_iter().map(Arc::new).collect();
            let got = select_events(shared, after_seq, until).map_err(|e| e.to_string());
            eprintln!(
                "case {case}: {} rows, {:?}",
                total,
                expected
                    .as_ref()
                    .map(Vec::len)
                    .map_err(|e| e.chars().take(40).collect::<String>())
            );
            assert_eq!(got, expected, "case {case}");
        }
    }

    /// Bad rows far apart, so that threads find a later one first: the first
    /// in sequence order still decides, and the cut before it still wins.
    #[test]
    fn with_bad_rows_across_threads_the_first_in_order_decides() {
        let start = time("2025-01-15T10:00:00");
        let objects = |late: Option<i64>| {
            let rows: Vec<EventRow> = (1..=20_000)
                .map(|seq| {
                    let at = start + chrono::Duration::milliseconds(seq * 10);
                    let mut r = row(seq, &genesis_trading::time::format(at));
                    if late == Some(seq) {
                        r.created_at = b"2030-01-01T00:00:00".to_vec();
                    }
                    if [4_900, 10_100, 10_200, 15_100, 19_000].contains(&seq) {
                        r.event_data = vec![0xff];
                    }
                    r
                })
                .collect();
            rows.chunks(4_000)
                .map(|c| c.to_vec())
                .collect::<Vec<Vec<EventRow>>>()
        };
        let until = start + chrono::Duration::seconds(1_000);
        for _ in 0..8 {
            let err = select_events(objects(None).into_iter().map(Arc::new).collect(), 0, until)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("archived event #4900 has a event_data"),
                "{err}"
            );
            let events = select_events(
                objects(Some(4_800)).into_iter().map(Arc::new).collect(),
                0,
                until,
            )
            .unwrap();
            assert_eq!(events.len(), 4_799);
        }
        assert_eq!(
            select_events(objects(None).into_iter().map(Arc::new).collect(), 0, until)
                .map_err(|e| e.to_string()),
            reference(&objects(None), 0, until)
        );
    }

    #[test]
    fn a_bad_row_after_the_cut_is_never_an_error() {
        let mut not_text = row(3, "2025-01-15T10:00:03");
        not_text.created_at = vec![0xff];
        let mut not_a_time = row(4, "2025-01-15T10:00:04");
        not_a_time.created_at = b"soon".to_vec();
        let objects = vec![
            Arc::new(vec![
                row(1, "2025-01-15T10:00:01"),
                row(2, "2025-01-15T10:00:09"),
            ]),
            Arc::new(vec![not_text, not_a_time]),
        ];
        let events = select_events(objects, 0, time("2025-01-15T10:00:05")).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_id, "e1");
    }

    #[test]
    fn the_first_bad_row_in_sequence_order_is_named() {
        let mut not_text = row(3, "2025-01-15T10:00:03");
        not_text.created_at = vec![0xff];
        let mut not_a_time = row(2, "2025-01-15T10:00:02");
        not_a_time.created_at = b"soon".to_vec();
        // Out of order: #3 is read first, #2 comes first in sequence order.
        let objects = vec![
            Arc::new(vec![not_text]),
            Arc::new(vec![row(1, "2025-01-15T10:00:01"), not_a_time]),
        ];
        let err = select_events(objects, 0, time("2025-01-15T10:00:09"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("created_at of event #2"), "{err}");
        assert!(err.contains("soon"), "{err}");
        let mut first = row(1, "2025-01-15T10:00:01");
        first.created_at = vec![0xff];
        let err = select_events(vec![Arc::new(vec![first])], 0, time("2025-01-15T10:00:09"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("archived event #1 has a created_at that is not UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn of_rows_with_the_same_sequence_number_the_first_read_is_kept() {
        let mut again = row(2, "2025-01-15T10:00:02");
        again.event_id = b"again".to_vec();
        let objects = vec![
            Arc::new(vec![
                row(1, "2025-01-15T10:00:01"),
                row(2, "2025-01-15T10:00:02"),
            ]),
            Arc::new(vec![again, row(3, "2025-01-15T10:00:03")]),
        ];
        let events = select_events(objects, 0, time("2025-01-15T10:00:09")).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2", "e3"]);
    }

    #[test]
    fn nothing_after_the_database_selects_nothing() {
        let objects = vec![
            Arc::new(Vec::new()),
            Arc::new(vec![
                row(1, "2025-01-15T10:00:01"),
                row(2, "2025-01-15T10:00:02"),
            ]),
        ];
        assert!(select_events(objects, 2, time("2025-01-15T10:00:09"))
            .unwrap()
            .is_empty());
        assert!(select_events(Vec::new(), 0, time("2025-01-15T10:00:09"))
            .unwrap()
            .is_empty());
    }
}
