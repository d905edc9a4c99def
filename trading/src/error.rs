//! The one error type of the trading crate.
//!
//! Policy: bad data never panics; every error names what it is about — the event
//! (id, type, sequence number), the file or source and array index, the field.
//! Findings of validation and reconciliation are reports, not errors.

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
    /// A staging replay could not put the database back into its journal mode.
    #[error("staging replay: {0}")]
    Staging(String),
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
    },
    /// An I/O operation on a named path failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
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

    /// The sequence number of the event an error is about, if any.
    pub fn sequence(&self) -> Option<i64> {
        match self {
            Error::Event { sequence, .. } | Error::Extension { sequence, .. } => Some(*sequence),
            _ => None,
        }
    }
}
