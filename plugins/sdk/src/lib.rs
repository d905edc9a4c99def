//! genesis-plugin-sdk: everything a plugin stage of genesis-recovery needs,
//! and the one definition of the boundary that the host shares with it.
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) exporting one
//! symbol, [`DECLARATION_SYMBOL`] (`genesis_stage_declaration`), a C function
//! returning a pointer to a static [`GenesisStageDecl`]. The host checks the
//! declaration's ABI version and size before it calls anything else, then
//! creates instances and sends them documents. The [`export_stage!`] macro
//! generates that symbol and every C function from a Rust type implementing
//! [`PluginStage`]; a plugin never writes `unsafe` code itself.
//!
//! # What crosses the boundary
//!
//! Only bytes, always UTF-8 JSON documents (the types in [`wire`]):
//!
//! * **Config** (`create`): the stage's `[stages.config]` table as a JSON
//!   object (TOML datetimes become strings; the host's own key `library` is
//!   removed). An empty buffer means `{}`.
//! * **Pipeline plugin stage** (`type = "plugin"`, consumes and produces the
//!   staged database): the input is the JSON of the host's staged database,
//!   read as [`wire::StagedDatabaseDoc`] (`path`, `txid`, `generation`,
//!   `checksum`, `pages`, `page_size`, `events_replayed`, `replay`,
//!   `validation`, `reconciliation`, `reconciled`, `plugin_reports`; unknown
//!   fields must be ignored). The output is a [`wire::StageOutput`]:
//!   `{"errors":[{"code","message"}], "warnings":[...], "metrics":{...},
//!   "report":{...}}`, every field optional. The host adds the errors and
//!   warnings to the database's validation report (errors make it
//!   inconsistent), stores `metrics` under the stage id in the report's
//!   metrics, and `report` under the stage id in `plugin_reports`. Every
//!   other artifact (the archived events on their way to event-replay, for
//!   one) passes the plugin stage unchanged and is never sent to it.
//! * **Event-handler plugin** (named in the event-replay stage's `plugins`):
//!   a [`wire::EventHandlerRequest`]: `{"op":"describe"}` is answered with a
//!   [`wire::DescribeResponse`] `{"event_types":["FUNDING_PAYMENT"]}`;
//!   `{"op":"event","event":{event_id, event_type, aggregate_id, event_data,
//!   sequence_number, created_at}}` is answered with a
//!   [`wire::EventResponse`] `{"statements":[{"sql":"...","params":[...]}]}`,
//!   the SQL the replay runs, in order, inside its transaction.
//!   `event_data` is the stored JSON object (parsed), `created_at` the stored
//!   text verbatim.
//!
//! # Memory and failure rules
//!
//! Input buffers belong to the host and are only borrowed for the duration of
//! one call. Every buffer a plugin returns ([`GenesisBuf`]) was allocated by
//! the plugin and is given back to the plugin's `free_buf`. Every exported
//! function catches panics (`catch_unwind`) and turns them into an error
//! status with the panic message; an instance that panicked refuses further
//! work. Plugins must therefore not be built with `panic = "abort"`.
//!
//! The [`adapters`] module offers typed traits ([`adapters::DatabaseCheck`],
//! [`adapters::EventHandler`]) for the two document protocols above.

pub mod abi;
pub mod adapters;
#[doc(hidden)]
pub mod export;
pub mod wire;

pub use abi::{
    GenesisBuf, GenesisStageDecl, ABI_VERSION, DECLARATION_SYMBOL, STATUS_ERROR, STATUS_INVALID,
    STATUS_OK, STATUS_PANIC,
};
pub use adapters::{CheckStage, DatabaseCheck, EventHandler, EventHandlerStage};
pub use serde_json;

/// The SDK's version (the `sdk_version` a plugin declares).
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// [`SDK_VERSION`] with a terminating NUL, for the declaration.
#[doc(hidden)]
pub const SDK_VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// Longest stage type name a plugin may declare.
pub const MAX_TYPE_NAME_LEN: usize = 64;

/// Whether `name` is a valid stage type name: 1 to [`MAX_TYPE_NAME_LEN`]
/// bytes of `a-z`, `0-9` and `-`, not starting or ending with `-`.
/// A `const fn` so that [`export_stage!`] checks the name at compile time.
pub const fn is_valid_type_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TYPE_NAME_LEN {
        return false;
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return false;
        }
        i += 1;
    }
    true
}

/// A plugin stage: created from its config, then fed one input document at a
/// time. Implement this (or one of the [`adapters`]) and export it with
/// [`export_stage!`].
pub trait PluginStage: Sized + Send + 'static {
    /// Creates the stage from its config (a JSON object).
    ///
    /// # Errors
    /// A message for the user saying which config key is wrong and why.
    fn new(config: serde_json::Value) -> Result<Self, String>;

    /// Handles one input document and returns the output document.
    ///
    /// # Errors
    /// A message for the user; the host fails the stage with it.
    fn process(&mut self, input: &[u8]) -> Result<Vec<u8>, String>;
}

/// Exports a [`PluginStage`] type as a plugin library: generates the
/// `genesis_stage_declaration` symbol and the C functions behind it.
/// Use it once per cdylib crate:
///
/// ```ignore
/// genesis_plugin_sdk::export_stage!(MyStage, "my-stage");
/// ```
///
/// The type name must be 1-64 characters of `a-z`, `0-9` and `-`; a bad name
/// is a compile error.
#[macro_export]
macro_rules! export_stage {
    ($ty:ty, $name:literal) => {
        const _: () = ::core::assert!(
            $crate::is_valid_type_name($name),
            "a stage type name must be 1-64 characters of a-z, 0-9 and '-'"
        );

        /// The plugin's declaration, read by genesis-recovery.
        #[no_mangle]
        pub extern "C" fn genesis_stage_declaration() -> *const $crate::GenesisStageDecl {
            static DECLARATION: $crate::GenesisStageDecl = $crate::GenesisStageDecl {
                abi_version: $crate::ABI_VERSION,
                decl_size: ::core::mem::size_of::<$crate::GenesisStageDecl>() as u32,
                type_name: ::core::concat!($name, "\0").as_ptr().cast(),
                sdk_version: $crate::SDK_VERSION_NUL.as_ptr().cast(),
                create: ::core::option::Option::Some($crate::export::create::<$ty>),
                process: ::core::option::Option::Some($crate::export::process::<$ty>),
                free_buf: ::core::option::Option::Some($crate::export::free_buf),
                destroy: ::core::option::Option::Some($crate::export::destroy::<$ty>),
                last_error: ::core::option::Option::Some($crate::export::last_error::<$ty>),
            };
            &DECLARATION
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert!(is_valid_type_name("risk-limits"));
        assert!(is_valid_type_name("a1"));
        assert!(!is_valid_type_name(""));
        assert!(!is_valid_type_name("Risk"));
        assert!(!is_valid_type_name("risk_limits"));
        assert!(!is_valid_type_name("-x"));
        assert!(!is_valid_type_name("x-"));
        assert!(!is_valid_type_name(&"a".repeat(65)));
    }
}
