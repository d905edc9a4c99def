//! Event-handler plugins: what the event-replay stage needs to ask a plugin
//! which event types it handles, to have it turn an event into SQL, and to
//! run that SQL. The replay itself (ordering, the transaction, reporting)
//! stays in the stage.

use std::path::{Path, PathBuf};

use genesis_plugin_sdk::wire::{
    DescribeResponse, EventHandlerRequest, EventResponse, SqlStatement, SqlValue, WireEvent,
};

use crate::pipeline::stage::{PluginInstance, PluginLibrary};

/// A `[stages.config]` table as the JSON object plugins receive (TOML
/// datetimes become their text, non-finite floats become `null`).
pub fn config_json(table: &toml::Table) -> serde_json::Value {
    fn convert(value: &toml::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match value {
            toml::Value::String(s) => J::String(s.clone()),
            toml::Value::Integer(i) => J::from(*i),
            toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            toml::Value::Boolean(b) => J::Bool(*b),
            toml::Value::Datetime(d) => J::String(d.to_string()),
            toml::Value::Array(a) => J::Array(a.iter().map(convert).collect()),
            toml::Value::Table(t) => {
                J::Object(t.iter().map(|(k, v)| (k.clone(), convert(v))).collect())
            }
        }
    }
    serde_json::Value::Object(table.iter().map(|(k, v)| (k.clone(), convert(v))).collect())
}

/// Creates an instance of an event-handler plugin and asks it which event
/// types it handles (`{"op":"describe"}`).
///
/// # Errors
/// The plugin's message when it refuses the config, fails or panics, or a
/// message when its answer is not a describe response or lists no type.
pub fn describe_event_handler(
    library: &dyn PluginLibrary,
    config: &serde_json::Value,
) -> Result<(Box<dyn PluginInstance>, Vec<String>), String> {
    let name = library.type_name();
    let config =
        serde_json::to_vec(config).map_err(|e| format!("cannot encode the config: {e}"))?;
    let mut instance = library
        .instantiate(&config)
        .map_err(|m| format!("plugin {name:?} refused its config: {m}"))?;
    let request = serde_json::to_vec(&EventHandlerRequest::Describe)
        .map_err(|e| format!("cannot encode the describe request: {e}"))?;
    let answer = instance
        .call(&request)
        .map_err(|m| format!("plugin {name:?} failed to describe itself: {m}"))?;
    let described: DescribeResponse = serde_json::from_slice(&answer).map_err(|e| {
        format!(
            "plugin {name:?} is not an event handler: its answer to {{\"op\":\"describe\"}} \
             is not {{\"event_types\": [...]}} ({e})"
        )
    })?;
    let mut types = described.event_types;
    types.sort();
    types.dedup();
    if types.is_empty() || types.iter().any(|t| t.trim().is_empty()) {
        return Err(format!(
            "plugin {name:?} describes itself as handling no event type (or an empty name)"
        ));
    }
    Ok((instance, types))
}

/// Asks an event-handler instance for the statements that apply `event`
/// (`{"op":"event","event":{...}}`).
///
/// # Errors
/// The plugin's message when it fails or panics, or a message when its
/// answer is not `{"statements": [...]}`.
pub fn handle_event(
    instance: &mut dyn PluginInstance,
    event: &WireEvent,
) -> Result<Vec<SqlStatement>, String> {
    let request = serde_json::to_vec(&EventHandlerRequest::Event {
        event: event.clone(),
    })
    .map_err(|e| format!("cannot encode event {}: {e}", event.event_id))?;
    let answer = instance.call(&request)?;
    let response: EventResponse = serde_json::from_slice(&answer).map_err(|e| {
        format!(
            "the plugin's answer for event {} is not {{\"statements\": [...]}}: {e}",
            event.event_id
        )
    })?;
    Ok(response.statements)
}

/// Runs a plugin's statements, in order, on `conn` (inside the caller's
/// transaction), checking `expect_changes`. Returns the rows changed.
///
/// # Errors
/// A message naming the statement (its index and SQL) when SQLite refuses it
/// or it changes another number of rows than the plugin expected.
pub fn execute_statements(
    conn: &rusqlite::Connection,
    statements: &[SqlStatement],
) -> Result<usize, String> {
    let mut total = 0;
    for (index, statement) in statements.iter().enumerate() {
        let params = statement.params.iter().map(|p| match p {
            SqlValue::Null => rusqlite::types::Value::Null,
            SqlValue::Integer(i) => rusqlite::types::Value::Integer(*i),
            SqlValue::Real(f) => rusqlite::types::Value::Real(*f),
            SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
        });
        let changed = conn
            .prepare_cached(&statement.sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
            .map_err(|e| format!("statement {} ({}) failed: {e}", index + 1, statement.sql))?;
        if let Some(expected) = statement.expect_changes {
            if changed as u64 != expected {
                return Err(format!(
                    "statement {} ({}) changed {changed} row(s), the plugin expected {expected}",
                    index + 1,
                    statement.sql
                ));
            }
        }
        total += changed;
    }
    Ok(total)
}

/// An event-handler plugin ready to use: its instance and the event types
/// it handles.
pub struct EventHandlerPlugin {
    library: PathBuf,
    type_name: String,
    event_types: Vec<String>,
    instance: Box<dyn PluginInstance>,
}

impl EventHandlerPlugin {
    /// Instantiates `library` with `config` and asks for its event types.
    ///
    /// # Errors
    /// As [`describe_event_handler`].
    pub fn new(library: &dyn PluginLibrary, config: &serde_json::Value) -> Result<Self, String> {
        let (instance, event_types) = describe_event_handler(library, config)?;
        Ok(EventHandlerPlugin {
            library: library.path().to_path_buf(),
            type_name: library.type_name().to_string(),
            event_types,
            instance,
        })
    }

    /// The library it was loaded from.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The plugin's declared type name.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The event types it handles, sorted.
    pub fn event_types(&self) -> &[String] {
        &self.event_types
    }

    /// Whether it handles `event_type`.
    pub fn handles(&self, event_type: &str) -> bool {
        self.event_types
            .binary_search_by(|t| t.as_str().cmp(event_type))
            .is_ok()
    }

    /// The statements that apply `event`.
    ///
    /// # Errors
    /// As [`handle_event`].
    pub fn handle(&mut self, event: &WireEvent) -> Result<Vec<SqlStatement>, String> {
        handle_event(self.instance.as_mut(), event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_tables_become_json_objects() {
        let table: toml::Table = toml::from_str(
            "a = 1\nb = 0.5\nc = \"x\"\nd = [true]\ne = { f = 1979-05-27T07:32:00Z }",
        )
        .unwrap();
        assert_eq!(
            config_json(&table),
            serde_json::json!({"a": 1, "b": 0.5, "c": "x", "d": [true], "e": {"f": "1979-05-27T07:32:00Z"}})
        );
    }

    #[test]
    fn statements_run_and_their_changes_are_checked() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v REAL); INSERT INTO t VALUES ('a', 1);",
        )
        .unwrap();
        let update = |key: &str| SqlStatement {
            sql: "UPDATE t SET v = v + ?1 WHERE k = ?2".into(),
            params: vec![SqlValue::Real(0.5), SqlValue::Text(key.into())],
            expect_changes: Some(1),
        };
        assert_eq!(execute_statements(&db, &[update("a")]), Ok(1));
        let v: f64 = db.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 1.5);
        let err = execute_statements(&db, &[update("missing")]).unwrap_err();
        assert!(
            err.contains("changed 0 row(s), the plugin expected 1"),
            "{err}"
        );
        let bad = SqlStatement {
            sql: "UPDATE nope SET x = 1".into(),
            params: vec![],
            expect_changes: None,
        };
        assert!(execute_statements(&db, &[bad])
            .unwrap_err()
            .contains("statement 1"));
    }
}
