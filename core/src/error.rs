//! The one error type of the core library, and its mapping to exit codes.
//!
//! Policy: every error names the thing it is about (a file, an object id, a
//! pipeline key) and, where the user can do something, says what. Errors that
//! come from the user's input (paths, flags, pipeline files) are `Usage` or
//! `Config` and map to exit code 2; damaged or missing backups and failed I/O are
//! operation failures (exit code 1). Validation and reconciliation outcomes are
//! not errors: commands turn those reports into exit codes 3 and 4 themselves.

use std::path::PathBuf;

/// Convenience alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One configuration problem found while compiling a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigIssue {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key (dotted path) the problem is about, e.g. `stages[2].type`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                line,
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// Every error of the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused an operation on a named database.
    #[error("{action} on {path}: {source}")]
    Sqlite {
        action: String,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The user asked for something that cannot be done as asked (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A pipeline (or settings) file has problems; all of them are listed (exit 2).
    #[error("{} configuration error(s):\n{}", .0.len(), .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigIssue>),
    /// A backup object is damaged, missing or foreign.
    #[error("backup object {object}: {detail}")]
    Corrupt { object: String, detail: String },
    /// Something is held by another process (a capturer, a restore).
    #[error("{0}")]
    Locked(String),
    /// The run was cancelled (a signal, or another stage failed first).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A plugin library failed to load or returned an error.
    #[error("plugin {library}: {detail}")]
    Plugin { library: PathBuf, detail: String },
    /// Any other failure of the operation, described.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The process exit code for this error: 2 for usage and configuration
    /// errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) => 2,
            _ => 1,
        }
    }

    /// Wraps an I/O error with the action and path it concerns.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Wraps a SQLite error with the action and database it concerns.
    pub fn sqlite(
        action: impl Into<String>,
        path: impl Into<PathBuf>,
        source: rusqlite::Error,
    ) -> Self {
        Error::Sqlite {
            action: action.into(),
            path: path.into(),
            source,
        }
    }

    /// A damaged or inconsistent backup object.
    pub fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            detail: detail.into(),
        }
    }
}
