//! The trading domain of genesis-recovery (DOMAIN.md): the schema, the events and
//! their effects, the fast replay, the canonical state hash, the StateReconstructor
//! validation, the position rebuild, reconciliation with the exchange, and the
//! workload simulator used by tests, benches and drills.
//!
//! The crate knows nothing about backups or pipelines; `core` and `stages` call it.

pub mod effects;
pub mod error;
pub mod event;
mod json;
pub mod positions;
pub mod reconcile;
pub mod replay;
pub mod schema;
pub mod simulate;
pub mod statehash;
mod stmt;
pub mod time;
pub mod validate;

pub use error::{Error, Result};
pub use event::{read_events, Event};
pub use positions::{recover_positions, PositionView, PositionsReport};
pub use reconcile::{
    parse_exchange_orders, reconcile, ExchangeOrder, ReconcileOptions, ReconciliationReport,
};
pub use replay::replay_with_extensions;
pub use replay::{replay, EventExtension, ReplayOptions, ReplayReport, SqlStatement, UnknownType};
pub use schema::{ensure_schema, has_trading_schema, SCHEMA_SQL};
pub use simulate::{
    exchange_open_orders_binance, random_events, simulate, SimulateOptions, SimulateReport,
    Simulator,
};
pub use statehash::state_hash;
pub use validate::{validate_state, Finding, ValidateOptions, ValidationReport};
