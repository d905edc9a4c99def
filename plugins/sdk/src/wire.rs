//! The JSON documents that cross the plugin boundary, as serde types shared
//! by the host and the plugins (see the crate documentation for when each is
//! sent). Readers ignore fields they do not know, so either side may add
//! optional fields without breaking the other.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The staged database as a pipeline plugin stage receives it: the host's
/// staged-database artifact, serialized.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagedDatabaseDoc {
    /// Path of the staged SQLite file (open it read-only).
    pub path: PathBuf,
    /// The txid the database was rebuilt at.
    #[serde(default)]
    pub txid: u64,
    /// The backup generation it belongs to.
    #[serde(default)]
    pub generation: String,
    /// The database checksum (hex) proven after wal-apply.
    #[serde(default)]
    pub checksum: String,
    /// Pages and page size of the rebuilt file.
    #[serde(default)]
    pub pages: u64,
    #[serde(default)]
    pub page_size: u32,
    /// Events replayed on top of the rebuilt database.
    #[serde(default)]
    pub events_replayed: u64,
    /// The event-replay stage's report, when it ran.
    #[serde(default)]
    pub replay: Option<Value>,
    /// The validation report so far, when a validating stage ran.
    #[serde(default)]
    pub validation: Option<Value>,
    /// The reconciliation report, when it ran.
    #[serde(default)]
    pub reconciliation: Option<Value>,
    #[serde(default)]
    pub reconciled: Option<bool>,
    /// Reports of earlier plugin stages, by stage id.
    #[serde(default)]
    pub plugin_reports: Map<String, Value>,
    /// Commit time (RFC 3339, UTC) of the restore point, when known.
    #[serde(default)]
    pub point_time: Option<String>,
    /// The restore target when it is a time (RFC 3339, UTC).
    #[serde(default)]
    pub target_time: Option<String>,
    /// `created_at` of the last event replayed (RFC 3339, UTC).
    #[serde(default)]
    pub replayed_until: Option<String>,
}

/// A finding of a plugin stage: a stable short code and a message naming the
/// row or object concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFinding {
    pub code: String,
    pub message: String,
}

impl WireFinding {
    /// A finding with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        WireFinding {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a pipeline plugin stage answers for one staged database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageOutput {
    /// The state is wrong: the database's validation becomes inconsistent.
    #[serde(default)]
    pub errors: Vec<WireFinding>,
    /// Worth a look, not wrong.
    #[serde(default)]
    pub warnings: Vec<WireFinding>,
    /// Aggregate numbers, stored under the stage id in the validation metrics.
    #[serde(default)]
    pub metrics: Map<String, Value>,
    /// A free-form report, stored under the stage id in `plugin_reports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

/// A request to an event-handler plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EventHandlerRequest {
    /// Which event types do you handle? Answered by [`DescribeResponse`].
    Describe,
    /// Apply this event. Answered by [`EventResponse`].
    Event { event: WireEvent },
}

/// One row of the `events` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub event_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    /// The stored `event_data` parsed as JSON (a JSON string holding the
    /// stored text when it is not valid JSON; see [`WireEvent::parse_data`]).
    pub event_data: Value,
    pub sequence_number: i64,
    /// The stored text, verbatim (copy it into rows as it is).
    pub created_at: String,
}

impl WireEvent {
    /// The `event_data` value for stored text: the parsed JSON, or the text
    /// itself as a JSON string when it does not parse.
    pub fn parse_data(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
    }
}

/// The answer to [`EventHandlerRequest::Describe`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeResponse {
    /// Event types the plugin handles, e.g. `FUNDING_PAYMENT`.
    pub event_types: Vec<String>,
}

/// The answer to [`EventHandlerRequest::Event`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventResponse {
    /// Statements to run, in order, in the replay's transaction.
    #[serde(default)]
    pub statements: Vec<SqlStatement>,
}

/// One SQL statement with positional parameters (`?1`, `?2`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlStatement {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<SqlValue>,
    /// When set, the number of rows the statement must change; the host fails
    /// the event (naming it) when it changes another number, e.g. an update of
    /// a row that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_changes: Option<u64>,
}

/// A SQL parameter value: JSON `null`, an integer, a float or a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_have_the_documented_shape() {
        let describe: EventHandlerRequest =
            serde_json::from_value(json!({"op": "describe"})).unwrap();
        assert_eq!(describe, EventHandlerRequest::Describe);
        let event = EventHandlerRequest::Event {
            event: WireEvent {
                event_id: "e1".into(),
                event_type: "FUNDING_PAYMENT".into(),
                aggregate_id: "USDT".into(),
                event_data: json!({"asset": "USDT", "amount": -1.25}),
                sequence_number: 7,
                created_at: "2025-01-15T14:30:00.123456".into(),
            },
        };
        let v = serde_json::to_value(&event).unwrap();
        assert_eq!(v["op"], "event");
        assert_eq!(v["event"]["sequence_number"], 7);
        assert_eq!(
            serde_json::from_value::<EventHandlerRequest>(v).unwrap(),
            event
        );
    }

    #[test]
    fn sql_values_keep_their_types() {
        let params: Vec<SqlValue> =
            serde_json::from_value(json!([null, 3, -1.25, "USDT"])).unwrap();
        assert_eq!(
            params,
            vec![
                SqlValue::Null,
                SqlValue::Integer(3),
                SqlValue::Real(-1.25),
                SqlValue::Text("USDT".into())
            ]
        );
    }

    #[test]
    fn stage_output_fields_are_optional() {
        let out: StageOutput = serde_json::from_slice(b"{}").unwrap();
        assert_eq!(out, StageOutput::default());
        let doc: StagedDatabaseDoc =
            serde_json::from_value(json!({"path": "/x.db", "txid": 3, "future_field": 1})).unwrap();
        assert_eq!(doc.txid, 3);
    }

    #[test]
    fn unparsable_event_data_stays_text() {
        assert_eq!(WireEvent::parse_data("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(WireEvent::parse_data("not json"), json!("not json"));
    }
}
