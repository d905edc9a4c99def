//! Tests of the pipeline engine through small test stage types: malformed
//! pipeline files with every expected issue (`compile`), and runs
//! (`run`): ordering, back-pressure, reports, cancellation, panics.

mod compile;
mod run;
mod typed;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pipeline::{
    decode_config, Artifact, ArtifactKind, BuildContext, Emit, ParamValue, Params, PluginInstance,
    PluginLibrary, PluginLoader, Stage, StageContext, StageFactory, StageRegistry,
};

/// What the test stages observed, shared with the test.
#[derive(Default)]
pub(super) struct Probe {
    /// Artifacts the source emitted so far (counted after `emit` returned).
    pub emitted: AtomicU64,
    /// Largest `emitted - consumed` seen by the consumer.
    pub max_lag: AtomicU64,
    /// Rayon threads seen inside stages, by stage id.
    pub threads: Mutex<Vec<(String, usize)>>,
    /// Order in which stages finished.
    pub finished: Mutex<Vec<String>>,
}

/// The behaviour of the test stage type, from its `[stages.config]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepConfig {
    /// Emit this many artifacts per input (numbered `i` = 0..count), instead of forwarding.
    count: Option<i64>,
    /// Fail (return an error) when processing item number `fail_at`.
    fail_at: Option<i64>,
    /// Panic when processing item number `panic_at`.
    panic_at: Option<i64>,
    /// Sleep this long per item.
    delay_ms: Option<u64>,
    /// Record the lag between the source and this stage.
    measure_lag: Option<bool>,
    /// Fail in `finish`.
    fail_in_finish: Option<bool>,
    /// Only checked: must be `quick` or `full`.
    level: Option<String>,
}

/// A test stage type with chosen artifact kinds.
pub(super) struct Step {
    pub name: String,
    pub inputs: Vec<ArtifactKind>,
    pub outputs: Vec<ArtifactKind>,
    pub probe: Arc<Probe>,
}

impl StageFactory for Step {
    fn type_name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        "a test stage"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &self.inputs
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &self.outputs
    }
    fn build(
        &self,
        config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let config: StepConfig = decode_config(config)?;
        if let Some(level) = &config.level {
            if level != "quick" && level != "full" {
                return Err(vec![(
                    "level".to_string(),
                    format!("unknown level {level:?}; use quick or full"),
                )]);
            }
        }
        Ok(Box::new(StepStage {
            config,
            probe: self.probe.clone(),
            seen: 0,
        }))
    }
}

struct StepStage {
    config: StepConfig,
    probe: Arc<Probe>,
    seen: i64,
}

/// The number carried by a test artifact (`i` in its params).
pub(super) fn item_number(artifact: &Artifact) -> Option<i64> {
    match artifact {
        Artifact::Request(params) => match params.get("i") {
            Some(ParamValue::Int(i)) => Some(*i),
            _ => None,
        },
        _ => None,
    }
}

fn item(i: i64) -> Artifact {
    let mut params = Params::new();
    params.insert("i".to_string(), ParamValue::Int(i));
    Artifact::Request(Arc::new(params))
}

impl Stage for StepStage {
    fn process(&mut self, input: Artifact, ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        let n = self.seen;
        self.seen += 1;
        self.probe
            .threads
            .lock()
            .expect("probe lock")
            .push((ctx.stage_id.clone(), rayon::current_num_threads()));
        if self.config.measure_lag == Some(true) {
            let lag = self
                .probe
                .emitted
                .load(Ordering::SeqCst)
                .saturating_sub(n as u64);
            self.probe.max_lag.fetch_max(lag, Ordering::SeqCst);
        }
        if let Some(ms) = self.config.delay_ms {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if self.config.fail_at == Some(n) {
            return Err(Error::Failed(format!("boom at item {n}")));
        }
        if self.config.panic_at == Some(n) {
            panic!("kaboom at item {n}");
        }
        match self.config.count {
            Some(count) => {
                for i in 0..count {
                    out.emit(item(i))?;
                    self.probe.emitted.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
            None => out.emit(input),
        }
    }

    fn finish(&mut self, ctx: &StageContext, _out: &mut dyn Emit) -> Result<()> {
        self.probe
            .finished
            .lock()
            .expect("probe lock")
            .push(ctx.stage_id.clone());
        if self.config.fail_in_finish == Some(true) {
            return Err(Error::Failed("finish failed".to_string()));
        }
        Ok(())
    }
}

/// The registry of the tests: a chain of kinds like the real restore, plus
/// `step` (request -> request) for runs.
pub(super) fn registry(probe: &Arc<Probe>) -> StageRegistry {
    use ArtifactKind::*;
    let mut registry = StageRegistry::new();
    for (name, inputs, outputs) in [
        ("fetch", vec![Request], vec![FetchedObject]),
        ("decompress", vec![FetchedObject], vec![DecompressedObject]),
        ("verify", vec![DecompressedObject], vec![VerifiedObject]),
        ("apply", vec![VerifiedObject], vec![StagedDatabase]),
        ("check", vec![StagedDatabase], vec![StagedDatabase]),
        ("step", vec![Request], vec![Request]),
    ] {
        registry
            .register(Arc::new(Step {
                name: name.to_string(),
                inputs,
                outputs,
                probe: probe.clone(),
            }))
            .expect("unique test types");
    }
    registry
}

/// A plugin loader that knows a few library file names.
pub(super) struct FakePlugins {
    pub probe: Arc<Probe>,
    pub loaded: Mutex<Vec<PathBuf>>,
}

impl FakePlugins {
    pub fn new() -> Self {
        FakePlugins {
            probe: Arc::default(),
            loaded: Mutex::default(),
        }
    }
}

struct FakeLibrary {
    type_name: String,
    path: PathBuf,
    probe: Arc<Probe>,
}

impl PluginLoader for FakePlugins {
    fn load(&self, path: &Path) -> std::result::Result<Arc<dyn PluginLibrary>, String> {
        self.loaded
            .lock()
            .expect("loaded lock")
            .push(path.to_path_buf());
        let type_name = match path.file_name().and_then(|n| n.to_str()) {
            Some("libaudit.so") | Some("libaudit2.so") => "audit",
            Some("libfetch.so") => "fetch",
            _ => return Err("cannot open shared object file: No such file".to_string()),
        };
        Ok(Arc::new(FakeLibrary {
            type_name: type_name.to_string(),
            path: path.to_path_buf(),
            probe: self.probe.clone(),
        }))
    }
}

impl PluginLibrary for FakeLibrary {
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn instantiate(
        &self,
        _config_json: &[u8],
    ) -> std::result::Result<Box<dyn PluginInstance>, String> {
        Err("not used in these tests".to_string())
    }
    fn into_stage_factory(self: Arc<Self>) -> Arc<dyn StageFactory> {
        Arc::new(Step {
            name: self.type_name.clone(),
            inputs: vec![ArtifactKind::StagedDatabase],
            outputs: vec![ArtifactKind::StagedDatabase],
            probe: self.probe.clone(),
        })
    }
}
