//! The pipeline engine: the TOML format, the compiler that checks a pipeline
//! before anything runs, and the runner (one thread per stage, bounded
//! channels between them, cancellation on the first failure).

pub mod artifact;
pub mod stage;

pub use artifact::{
    Artifact, ArtifactKind, DecompressedObject, FetchedObject, Finding, ParamValue, Params,
    StagedDatabase, ValidationReport,
};
pub use stage::{
    decode_config, BuildContext, CancelToken, Emit, NoPlugins, PluginInstance, PluginLibrary,
    PluginLoader, Stage, StageContext, StageFactory, StageRegistry,
};
