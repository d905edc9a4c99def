//! The pipeline engine: the TOML format, the compiler that checks a pipeline
//! before anything runs, and the runner (one thread per stage, bounded
//! channels between them, cancellation on the first failure).

pub mod artifact;
pub mod compile;
pub mod config;
mod params;
pub mod runner;
pub mod stage;
#[cfg(test)]
mod tests;

pub use artifact::{
    ArchivedEvents, Artifact, ArtifactKind, DecompressedObject, EncodedEvents, FetchedObject,
    Finding, FramePart, ParamValue, Params, StagedDatabase, ValidationReport,
};
pub use compile::{
    compile_file, compile_file_with, compile_str, compile_str_with, CompiledPipeline,
    CompiledStage, OnError, PipelineSummary, StageSummary,
};
pub use params::Overrides;
pub use runner::{RunFailure, RunOutcome, StageReport, StageStatus};
pub use stage::{
    decode_config, BuildContext, CancelToken, Emit, NoPlugins, PluginInstance, PluginLibrary,
    PluginLoader, Stage, StageContext, StageFactory, StageRegistry,
};
