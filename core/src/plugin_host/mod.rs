//! The plugin host: loads plugin libraries named by pipeline files, checks
//! their declaration before calling anything else, and turns them into
//! pipeline stages ([`PluginStageFactory`]) or event handlers for the
//! event-replay stage ([`describe_event_handler`], [`handle_event`]).
//!
//! The boundary itself (C ABI, documents, memory rules) is defined once, in
//! the `genesis-plugin-sdk` crate; this module is its other side. Policy:
//!
//! * a library is loaded only from the path given, made absolute
//!   (`canonicalize`), never searched for on the system's library path;
//! * the declaration is checked in this order before any other call: the
//!   symbol exists, the ABI version matches, the declaration is at least as
//!   large as this host's, every function is present, the type name is
//!   `[a-z0-9-]`; each refusal says what to do;
//! * libraries are cached by canonical path and never unloaded (their code
//!   may still run in a thread-local destructor or be referenced by a live
//!   instance; unloading Rust cdylibs is not sound in general);
//! * one loader refuses a second library declaring a stage type another
//!   library already declared.
//!
//! Loading a library runs its initializers (`dlopen`), which no check can
//! precede: only name libraries you trust in a pipeline file.

mod events;
mod library;
mod stage;

pub use events::{
    config_json, describe_event_handler, execute_statements, handle_event, EventHandlerPlugin,
};
pub use genesis_plugin_sdk::wire::{
    SqlStatement, SqlValue, StageOutput, StagedDatabaseDoc, WireEvent, WireFinding,
};
pub use genesis_plugin_sdk::{ABI_VERSION, DECLARATION_SYMBOL, SDK_VERSION};
pub use library::{LibraryLoader, LoadError, LoadedLibrary};
pub use stage::PluginStageFactory;

/// The name the lead's glue uses for the statements an event handler returns.
pub type SdkSqlStatement = SqlStatement;
