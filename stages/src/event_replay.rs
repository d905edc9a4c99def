//! The `event-replay` stage: makes a restore exact to the event between two
//! captured commits (DOMAIN.md). When the staged database has the trading
//! schema and the restore target is a time, it applies the archived events
//! with a sequence number above the database's highest and `created_at` at or
//! before the target, in sequence order, in one transaction, through
//! `genesis_trading::replay` (which inserts each event row and applies its
//! effect). The replay report (with unknown event types: count and first
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
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Deserialize;

use genesis_core::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, Emit, Stage, StageContext, StageFactory,
    StagedDatabase,
};
use genesis_core::plugin_host::{self, EventHandlerPlugin, SqlValue, WireEvent};
use genesis_core::repo::formats::EventRow;
use genesis_core::{Error, Result};
use genesis_trading::replay::replay_with_extensions;
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
        &[ArtifactKind::StagedDatabase]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
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
        Ok(Box::new(EventReplay { handlers }))
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
}

/// Converts an archived row (bytes, verbatim) into an event, moving its bytes.
fn to_event(row: EventRow) -> Result<Event> {
    let seq = row.sequence_number;
    let text = |field: &str, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| {
            Error::Failed(format!(
                "archived event #{seq} has a {field} that is not UTF-8 text"
            ))
        })
    };
    Ok(Event {
        event_id: text("event_id", row.event_id)?,
        event_type: text("event_type", row.event_type)?,
        aggregate_id: text("aggregate_id", row.aggregate_id)?,
        event_data: text("event_data", row.event_data)?,
        sequence_number: seq,
        created_at: text("created_at", row.created_at)?,
    })
}

/// The archived events to replay from the decoded event objects: above
/// `after_seq`, in sequence order, up to the first whose `created_at` is after
/// `until` (so always a prefix). Rows are converted and their times read in
/// parallel; an archived row after that prefix is never an error.
///
/// # Errors
/// [`Error::Failed`] naming an archived event of the prefix that is not UTF-8
/// text or whose `created_at` is not a time.
pub fn select_events(
    objects: Vec<Arc<Vec<EventRow>>>,
    after_seq: i64,
    until: DateTime<Utc>,
) -> Result<Vec<Event>> {
    let total: usize = objects.iter().map(|o| o.len()).sum();
    let mut rows: Vec<EventRow> = Vec::with_capacity(total);
    for object in objects {
        let object = Arc::try_unwrap(object).unwrap_or_else(|shared| (*shared).clone());
        rows.extend(object.into_iter().filter(|r| r.sequence_number > after_seq));
    }
    // Capture archives in sequence order: usually there is nothing to sort.
    if !rows.is_sorted_by(|a, b| a.sequence_number < b.sequence_number) {
        rows.sort_by_key(|r| r.sequence_number);
        rows.dedup_by_key(|r| r.sequence_number);
    }
    // None: after the target (the prefix ends there; the row is not converted).
    let converted: Vec<Result<Option<Event>>> = rows
        .into_par_iter()
        .with_min_len(4096)
        .map(|row| {
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
        })
        .collect();
    let mut out = Vec::with_capacity(converted.len());
    for c in converted {
        match c? {
            Some(ev) => out.push(ev),
            None => break,
        }
    }
    Ok(out)
}

fn trading_error(path: &Path) -> impl Fn(genesis_trading::Error) -> Error + '_ {
    move |e| Error::Failed(format!("event replay on {}: {e}", path.display()))
}

impl EventReplay {
    fn replay(&mut self, staged: &mut StagedDatabase) -> Result<()> {
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
        let events = select_events(std::mem::take(&mut staged.events), after, until)?;
        let mut extensions: Vec<Box<dyn EventExtension + Send>> = Vec::new();
        for h in self.handlers.drain(..) {
            extensions.push(Box::new(h));
        }
        // The staged file is this restore's private copy, discarded on any
        // failure: replay it without a journal and syncs, then back to WAL
        // and one fsync (ReplayOptions::staging).
        let opts = ReplayOptions {
            staging: true,
            after_sequence: Some(after),
            ..ReplayOptions::default()
        };
        let result = replay_with_extensions(&mut conn, &events, &opts, &mut extensions);
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                // Without a journal the failed transaction may have left rows
                // behind: the file must not be used. Remove it now.
                drop(conn);
                let removed = match crate::wal_apply::remove_staged(&path) {
                    Ok(()) => "it has been removed".to_string(),
                    Err(r) => format!("removing it failed: {r}"),
                };
                return Err(Error::Failed(format!(
                    "event replay on {}: {e}; the staged database was being written without a journal and is unusable: {removed}",
                    path.display()
                )));
            }
        };
        // Fold the WAL back into the file: the staged database must be one file.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| Error::sqlite("checkpoint", &path, e))?;
        drop(conn);
        staged.events_replayed = report.applied;
        staged.replayed_until = events.last().and_then(|e| e.time().ok());
        let mut value = serde_json::to_value(&report)
            .map_err(|e| Error::Failed(format!("encode the replay report: {e}")))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("after_sequence".into(), after.into());
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
            Artifact::StagedDatabase(mut staged) => {
                self.replay(&mut staged)?;
                // Rows already applied are of no further use downstream.
                staged.events.clear();
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
}
