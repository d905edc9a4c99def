//! The stage interface: what every built-in or plugin stage implements, and
//! the registry the pipeline compiler looks stage types up in.
//!
//! A stage type is a [`StageFactory`]: it declares the artifact kinds it takes
//! and produces, and builds a [`Stage`] from its `[stages.config]` table at
//! compile time (so bad configuration is found before anything runs). At run
//! time each stage runs on its own thread: the runner calls
//! [`Stage::process`] for every artifact arriving on its bounded channel and
//! [`Stage::finish`] once the channel closes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::pipeline::artifact::{Artifact, ArtifactKind, ParamValue, Params};
use crate::progress::Progress;

/// Shared cancellation flag of one pipeline run.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks every stage to stop as soon as it can.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a stage sees of the run it is part of.
pub struct StageContext {
    /// The stage's id in the pipeline.
    pub stage_id: String,
    /// The resolved pipeline parameters.
    pub params: Arc<Params>,
    /// Worker threads this stage may use for its rayon work.
    pub workers: usize,
    /// Set when the run is cancelled; long loops check it.
    pub cancel: CancelToken,
    /// Progress sink.
    pub progress: Arc<dyn Progress>,
}

impl StageContext {
    /// A string parameter, if set.
    pub fn param_str(&self, key: &str) -> Option<String> {
        self.params.get(key).map(|v| v.as_text())
    }
}

/// Where a stage sends what it produces. Sending blocks while the next stage's
/// channel is full (back-pressure); it fails when the run was cancelled.
pub trait Emit {
    /// Sends one artifact to the next stage.
    ///
    /// # Errors
    /// `Error::Cancelled` when the run was cancelled or the next stage is gone.
    fn emit(&mut self, artifact: Artifact) -> Result<()>;
}

/// A running stage.
pub trait Stage: Send {
    /// Handles one input artifact, emitting zero or more outputs.
    ///
    /// # Errors
    /// Any error fails the stage (and, per `on_error`, the run).
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()>;

    /// Called once after the input channel closed; may emit final outputs.
    ///
    /// # Errors
    /// Any error fails the stage.
    fn finish(&mut self, _ctx: &StageContext, _out: &mut dyn Emit) -> Result<()> {
        Ok(())
    }
}

/// What the compiler gives a factory when it builds a stage.
pub struct BuildContext<'a> {
    /// The pipeline file (plugin library paths are relative to its directory).
    pub pipeline_file: &'a Path,
    /// The stage's id.
    pub stage_id: &'a str,
    /// The pipeline's declared parameters with their defaults and overrides.
    pub params: &'a Params,
    /// The top-level `[stages.config]` keys whose value is exactly one
    /// `${name}`, with the parameter each names (see [`Self::bound_param`]).
    pub bindings: &'a BTreeMap<String, String>,
    /// Loads plugin libraries named by the pipeline (stages of `type = "plugin"`,
    /// and stages such as event-replay that take plugin handlers).
    pub plugins: &'a dyn PluginLoader,
}

impl BuildContext<'_> {
    /// The parameter a config key names whole (`key = "${name}"`), as the
    /// parameter holds it: a value a caller passed typed (a restore target)
    /// is taken from here, not read back from the text substituted into
    /// the config table.
    pub fn bound_param(&self, key: &str) -> Option<&ParamValue> {
        self.params.get(self.bindings.get(key)?)
    }

    /// The directory of the pipeline file.
    pub fn pipeline_dir(&self) -> PathBuf {
        self.pipeline_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// A stage type: declares its artifact kinds and builds stages from config.
pub trait StageFactory: Send + Sync {
    /// The type name used in pipeline files (`fetch`, `wal-apply`, ...).
    fn type_name(&self) -> &str;
    /// One-line description for `pipelines check` and docs.
    fn description(&self) -> &str {
        ""
    }
    /// Artifact kinds this stage consumes (it accepts any of them).
    fn inputs(&self) -> &[ArtifactKind];
    /// Artifact kinds this stage produces.
    fn outputs(&self) -> &[ArtifactKind];
    /// Input kinds the stage cannot work without: each must be produced by
    /// some earlier stage of the chain (the stages between pass on what they
    /// do not take). Checked when the pipeline is compiled.
    fn requires(&self) -> &[ArtifactKind] {
        &[]
    }
    /// Builds a stage from its `[stages.config]` table.
    ///
    /// # Errors
    /// A list of messages, each naming the config key it is about as
    /// `(key, message)`; the compiler adds the file and line.
    fn build(
        &self,
        config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>>;
}

/// The stage types a pipeline may use, by type name.
#[derive(Default, Clone)]
pub struct StageRegistry {
    factories: BTreeMap<String, Arc<dyn StageFactory>>,
}

impl StageRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage type; returns an error message when the name is taken.
    ///
    /// # Errors
    /// The message names the duplicate type.
    pub fn register(&mut self, factory: Arc<dyn StageFactory>) -> std::result::Result<(), String> {
        let name = factory.type_name().to_string();
        if self.factories.contains_key(&name) {
            return Err(format!("stage type {name:?} is already registered"));
        }
        self.factories.insert(name, factory);
        Ok(())
    }

    /// Looks a stage type up.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageFactory>> {
        self.factories.get(name)
    }

    /// All registered type names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }
}

/// Deserializes a stage's `[stages.config]` table into its config type,
/// turning serde's message into `(key, message)` pairs for the compiler.
///
/// # Errors
/// One `(key, message)` per problem serde reports.
pub fn decode_config<T: serde::de::DeserializeOwned>(
    config: &toml::Table,
) -> std::result::Result<T, Vec<(String, String)>> {
    T::deserialize(toml::Value::Table(config.clone()))
        .map_err(|e| vec![("config".to_string(), e.to_string().trim().to_string())])
}

/// One instance of a plugin, created from its config: bytes in, bytes out.
pub trait PluginInstance: Send {
    /// Sends one input document to the plugin and returns its output document.
    ///
    /// # Errors
    /// The plugin's own error message (from `last_error`), or a host-side
    /// message when the call itself failed (a caught panic, a bad buffer).
    fn call(&mut self, input: &[u8]) -> std::result::Result<Vec<u8>, String>;
}

/// A loaded and checked plugin library (never unloaded).
pub trait PluginLibrary: Send + Sync {
    /// The stage type name the library declares.
    fn type_name(&self) -> &str;
    /// The path it was loaded from.
    fn path(&self) -> &Path;
    /// Creates an instance from the stage's config (JSON bytes).
    ///
    /// # Errors
    /// The plugin's message when it refuses the config.
    fn instantiate(
        &self,
        config_json: &[u8],
    ) -> std::result::Result<Box<dyn PluginInstance>, String>;
    /// The library as a pipeline stage type (`type = "plugin"`).
    fn into_stage_factory(self: Arc<Self>) -> Arc<dyn StageFactory>;
}

/// Loads plugin libraries from paths a pipeline names.
pub trait PluginLoader: Send + Sync {
    /// Loads (or returns the already loaded) library at `path` and checks its
    /// declaration (symbol, ABI version, size) before any other call.
    ///
    /// # Errors
    /// A message naming the library and what is wrong with it.
    fn load(&self, path: &Path) -> std::result::Result<Arc<dyn PluginLibrary>, String>;
}

/// A loader that refuses every plugin (for contexts that allow none).
pub struct NoPlugins;

impl PluginLoader for NoPlugins {
    fn load(&self, path: &Path) -> std::result::Result<Arc<dyn PluginLibrary>, String> {
        Err(format!(
            "plugins are not available here (asked for {})",
            path.display()
        ))
    }
}
