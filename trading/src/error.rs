//! The one error type of the trading crate.
//!
//! Policy: bad data never panics; every error names what it is about — the event
//! (id, type, sequence number), the file or source and array index, the field —
//! and keeps the error it comes from as its `source`. Each variant is one kind
//! the caller can match on ([`Error::is_bad_input`] sorts them for exit codes);
//! no caller needs to read the text. A panic caught inside the crate is
//! [`Error::Internal`], never a kind that blames the input. Findings of
//! validation and reconciliation are reports, not errors.

/// Convenience alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error of the trading crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused an operation.
    #[error("{action}: {source}")]
    Sqlite {
        /// What was being done, e.g. `reading events`.
        action: String,
        #[source]
        source: rusqlite::Error,
    },
    /// An event could not be applied (replay) or read.
    #[error("event #{sequence} ({event_id}, {event_type}): {reason}")]
    Event {
        sequence: i64,
        event_id: String,
        event_type: String,
        reason: String,
    },
    /// An extension (plugin) failed on an event.
    #[error("extension failed on event #{sequence} ({event_id}, {event_type}): {message}")]
    Extension {
        sequence: i64,
        event_id: String,
        event_type: String,
        message: String,
    },
    /// The events to replay could not be read (a streamed replay's source).
    #[error("reading the events to replay: {0}")]
    EventSource(String),
    /// A staging replay could not put the database back into its journal mode.
    #[error("staging replay: {action}: {source}")]
    Staging {
        /// The statement or step, e.g. `PRAGMA journal_mode=wal`.
        action: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A staging replay's journal mode did not come back.
    #[error("staging replay: {statement} left the database in journal mode {mode}; discard the staged copy and restore again")]
    JournalMode { statement: String, mode: String },
    /// A database lacks the trading schema.
    #[error("the database has no trading schema: {0}")]
    Schema(String),
    /// A timestamp could not be read.
    #[error("cannot read the timestamp {value:?} ({context}): expected ISO 8601 UTC such as 2025-01-15T14:30:00.123456, optionally with Z or +00:00")]
    Timestamp { context: String, value: String },
    /// An exchange orders file (or plugin output) is not one of the accepted shapes.
    #[error("{source_name}: {message}")]
    ExchangeFile {
        /// The file path or plugin name the bytes came from.
        source_name: String,
        message: String,
        /// The JSON error, when the bytes are not JSON.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// An I/O operation on a named path failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bug: a thread of the crate panicked (the panic's message is kept).
    #[error("internal error: {what} panicked ({message}); this is a bug in genesis-recovery, please report it")]
    Internal { what: &'static str, message: String },
}

impl Error {
    /// Builds an [`Error::Sqlite`] with the action as context.
    pub fn sqlite(action: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let action = action.into();
        move |source| Error::Sqlite { action, source }
    }

    /// Builds an [`Error::Event`] for an event.
    pub fn event(ev: &crate::Event, reason: impl Into<String>) -> Error {
        Error::Event {
            sequence: ev.sequence_number,
            event_id: ev.event_id.clone(),
            event_type: ev.event_type.clone(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Internal`] from a caught panic's payload.
    pub fn internal(what: &'static str, payload: &(dyn std::any::Any + Send)) -> Error {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Error::Internal { what, message }
    }

    /// The sequence number of the event an error is about, if any.
    pub fn sequence(&self) -> Option<i64> {
        match self {
            Error::Event { sequence, .. } | Error::Extension { sequence, .. } => Some(*sequence),
            _ => None,
        }
    }

    /// Whether the error is the user's input being wrong (a database without
    /// the trading schema, a timestamp that is not one, an exchange file of an
    /// unknown shape): a usage error, where everything else is an operation
    /// that failed (SQLite, I/O, an event that cannot apply, a bug).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Schema(_) | Error::Timestamp { .. } | Error::ExchangeFile { .. } => true,
            Error::Sqlite { .. }
            | Error::Event { .. }
            | Error::Extension { .. }
            | Error::EventSource(_)
            | Error::Staging { .. }
            | Error::JournalMode { .. }
            | Error::Io { .. }
            | Error::Internal { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_internal_and_not_bad_input() {
        let payload = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        let e = Error::internal("the replay fold", payload.as_ref());
        assert!(!e.is_bad_input());
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(e.to_string().contains("bug"), "{e}");
    }

    #[test]
    fn kinds_keep_their_source() {
        use std::error::Error as _;
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = Error::ExchangeFile {
            source_name: "orders.json".into(),
            message: "not JSON".into(),
            source: Some(json),
        };
        assert!(e.is_bad_input());
        assert!(e.source().is_some());
        let e = Error::Sqlite {
            action: "reading events".into(),
            source: rusqlite::Error::InvalidQuery,
        };
        assert!(!e.is_bad_input());
        assert!(e.source().is_some());
    }
}
