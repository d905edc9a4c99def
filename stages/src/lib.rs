//! genesis-stages: the seven built-in stages of a restore pipeline
//! (fetch → decompress → verify → wal-apply → event-replay → validate →
//! reconcile), one module each, and what drives them: the restore with its
//! safe apply ([`restore`]), the recovery drill with its metrics ([`drill`]),
//! and the validation of any database ([`validate::validate_database`]).
//!
//! `core` knows no concrete stage; this crate registers them in a
//! [`StageRegistry`] (see [`registry`]) that the pipeline compiler looks
//! stage types up in.

use std::sync::Arc;

use genesis_core::pipeline::StageRegistry;

pub mod bench;
pub mod decompress;
pub mod demo;
pub mod drill;
pub mod drill_history;
pub mod event_replay;
pub mod event_stream;
pub mod fetch;
pub mod reconcile;
pub mod report;
mod resolve;
pub mod restore;
mod settings;
pub mod validate;
pub mod verify;
pub mod wal_apply;

pub use drill::{drill, write_textfile, DrillOptions, DrillReport};
pub use fetch::resolve_plan;
pub use restore::{restore, RestoreOptions, RestoreResult};
pub use validate::{validate_database, ValidateOptions};

/// The text of the built-in pipelines, by name (`restore`, `drill`, ...).
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    ("restore", include_str!("../../pipelines/restore.toml")),
    ("drill", include_str!("../../pipelines/drill.toml")),
    (
        "verify-backups",
        include_str!("../../pipelines/verify-backups.toml"),
    ),
    (
        "corruption",
        include_str!("../../pipelines/corruption.toml"),
    ),
    (
        "accidental-deletion",
        include_str!("../../pipelines/accidental-deletion.toml"),
    ),
    (
        "rollback-deployment",
        include_str!("../../pipelines/rollback-deployment.toml"),
    ),
];

/// The text of a built-in pipeline by name.
pub fn builtin_pipeline(name: &str) -> Option<&'static str> {
    BUILTIN_PIPELINES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// A registry holding the seven built-in stage types.
pub fn registry() -> StageRegistry {
    let mut r = StageRegistry::new();
    let factories: [Arc<dyn genesis_core::pipeline::StageFactory>; 7] = [
        Arc::new(fetch::FetchFactory),
        Arc::new(decompress::DecompressFactory),
        Arc::new(verify::VerifyFactory),
        Arc::new(wal_apply::WalApplyFactory),
        Arc::new(event_replay::EventReplayFactory),
        Arc::new(validate::ValidateFactory),
        Arc::new(reconcile::ReconcileFactory),
    ];
    for f in factories {
        // The names are distinct constants; a clash is a bug caught by the tests.
        if let Err(e) = r.register(f) {
            tracing::error!("{e}");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_holds_the_seven_stages() {
        let r = super::registry();
        assert_eq!(
            r.names(),
            vec![
                "decompress",
                "event-replay",
                "fetch",
                "reconcile",
                "validate",
                "verify",
                "wal-apply"
            ]
        );
    }
}
