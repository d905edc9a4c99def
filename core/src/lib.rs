//! genesis-core: the machinery of genesis-recovery that knows nothing of any
//! concrete stage or of the trading schema: the backup repository, capture
//! (snapshots, WAL replication, the event archive), rebuilding a database at
//! a txid, the restore plan, the pipeline engine, safe apply, reports and
//! metrics.

pub mod capture;
pub mod checksum;
pub mod compact;
pub mod error;
pub mod lock;
pub mod objects;
pub mod pipeline;
pub mod plan;
pub mod plugin_host;
pub mod progress;
pub mod rebuild;
pub mod repo;
pub mod retention;
pub mod settings;
pub mod sqlite_checks;
pub mod target;
pub mod time;
pub mod verify;
pub mod wal;

pub use error::{ConfigIssue, Error, Result};
