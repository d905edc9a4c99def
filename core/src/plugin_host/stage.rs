//! A plugin library as a pipeline stage: the staged database goes in as JSON,
//! the plugin's findings come back and are merged into its validation report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use genesis_plugin_sdk::wire::StageOutput;

use crate::error::{Error, Result};
use crate::pipeline::artifact::{
    Artifact, ArtifactKind, Finding, StagedDatabase, ValidationReport,
};
use crate::pipeline::stage::{
    BuildContext, Emit, PluginInstance, PluginLibrary, Stage, StageContext, StageFactory,
};
use crate::plugin_host::events::config_json;

const KINDS: &[ArtifactKind] = &[ArtifactKind::StagedDatabase];

/// The stage type of one plugin library: takes and produces the staged
/// database. Its config table is sent to the plugin's `create` as JSON.
pub struct PluginStageFactory {
    library: Arc<dyn PluginLibrary>,
    description: String,
}

impl PluginStageFactory {
    /// The stage type of `library`.
    pub fn new(library: Arc<dyn PluginLibrary>) -> Self {
        let description = format!(
            "plugin stage {:?} from {}",
            library.type_name(),
            library.path().display()
        );
        PluginStageFactory {
            library,
            description,
        }
    }
}

impl StageFactory for PluginStageFactory {
    fn type_name(&self) -> &str {
        self.library.type_name()
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn inputs(&self) -> &[ArtifactKind] {
        KINDS
    }

    fn outputs(&self) -> &[ArtifactKind] {
        KINDS
    }

    fn build(
        &self,
        config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        let json = serde_json::to_vec(&config_json(config)).map_err(|e| {
            vec![(
                "config".to_string(),
                format!("cannot encode the config as JSON: {e}"),
            )]
        })?;
        let instance = self.library.instantiate(&json).map_err(|message| {
            vec![(
                "config".to_string(),
                format!(
                    "plugin {:?} refused its config: {message}",
                    self.library.type_name()
                ),
            )]
        })?;
        Ok(Box::new(PluginStage {
            stage_id: ctx.stage_id.to_string(),
            library: self.library.path().to_path_buf(),
            instance,
        }))
    }
}

/// A running plugin stage.
struct PluginStage {
    stage_id: String,
    library: PathBuf,
    instance: Box<dyn PluginInstance>,
}

impl PluginStage {
    /// The runner's report names the stage; the error names the library.
    fn plugin_error(&self, detail: String) -> Error {
        Error::Plugin {
            library: self.library.clone(),
            detail,
        }
    }

    /// Sends the staged database to the plugin and merges its answer.
    fn check(&mut self, staged: &mut StagedDatabase) -> Result<()> {
        let input = serde_json::to_vec(staged)
            .map_err(|e| self.plugin_error(format!("cannot encode the staged database: {e}")))?;
        let started = Instant::now();
        let answer = self
            .instance
            .call(&input)
            .map_err(|message| self.plugin_error(message))?;
        tracing::debug!(stage = %self.stage_id, seconds = started.elapsed().as_secs_f64(), "plugin call");
        // An empty answer means no findings.
        let output: StageOutput = if answer.iter().all(u8::is_ascii_whitespace) {
            StageOutput::default()
        } else {
            serde_json::from_slice(&answer).map_err(|e| {
                self.plugin_error(format!(
                    "the plugin's answer is not a stage output document \
                     ({{\"errors\", \"warnings\", \"metrics\", \"report\"}}): {e}"
                ))
            })?
        };
        merge(&self.stage_id, staged, output);
        Ok(())
    }
}

/// Adds a plugin's output to the staged database (see the SDK's documentation).
/// An output without findings or metrics leaves the validation as it is (a
/// plugin that looked at nothing must not make a database look validated).
fn merge(stage_id: &str, staged: &mut StagedDatabase, output: StageOutput) {
    if let Some(value) = output.report {
        staged.plugin_reports.insert(stage_id.to_string(), value);
    }
    if output.errors.is_empty() && output.warnings.is_empty() && output.metrics.is_empty() {
        return;
    }
    let finding = |f: genesis_plugin_sdk::wire::WireFinding| Finding {
        code: f.code,
        message: f.message,
    };
    let report = staged.validation.get_or_insert_with(|| ValidationReport {
        is_consistent: true,
        ..ValidationReport::default()
    });
    report.is_consistent &= output.errors.is_empty();
    report.errors.extend(output.errors.into_iter().map(finding));
    report
        .warnings
        .extend(output.warnings.into_iter().map(finding));
    if !output.metrics.is_empty() {
        report.metrics.insert(
            stage_id.to_string(),
            serde_json::Value::Object(output.metrics),
        );
    }
}

impl Stage for PluginStage {
    fn process(&mut self, input: Artifact, _ctx: &StageContext, out: &mut dyn Emit) -> Result<()> {
        match input {
            Artifact::StagedDatabase(mut staged) => {
                self.check(&mut staged)?;
                out.emit(Artifact::StagedDatabase(staged))
            }
            // Not ours to look at: pass it on unchanged.
            other => out.emit(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genesis_plugin_sdk::wire::WireFinding;
    use serde_json::json;

    fn staged() -> StagedDatabase {
        serde_json::from_value(json!({
            "path": "/tmp/x.db", "txid": 1, "generation": "g", "checksum": "00",
            "pages": 1, "page_size": 4096, "events_replayed": 0, "plugin_reports": {},
        }))
        .unwrap()
    }

    #[test]
    fn merging_creates_and_extends_the_validation() {
        let mut db = staged();
        merge(
            "w",
            &mut db,
            StageOutput {
                warnings: vec![WireFinding::new("near", "close")],
                ..Default::default()
            },
        );
        let v = db.validation.as_ref().unwrap();
        assert!(v.is_consistent);
        assert_eq!(v.warnings.len(), 1);
        assert!(db.plugin_reports.is_empty());

        let mut metrics = serde_json::Map::new();
        metrics.insert("n".into(), json!(2));
        merge(
            "risk",
            &mut db,
            StageOutput {
                errors: vec![WireFinding::new("over", "too much")],
                metrics,
                report: Some(json!({"a": 1})),
                ..Default::default()
            },
        );
        let v = db.validation.as_ref().unwrap();
        assert!(!v.is_consistent);
        assert_eq!(v.errors[0].code, "over");
        assert_eq!(v.metrics["risk"], json!({"n": 2}));
        assert_eq!(db.plugin_reports["risk"], json!({"a": 1}));
    }

    #[test]
    fn an_empty_output_changes_nothing() {
        let mut db = staged();
        merge("p", &mut db, StageOutput::default());
        assert!(db.validation.is_none());
        assert!(db.plugin_reports.is_empty());
    }

    #[test]
    fn an_inconsistent_report_stays_inconsistent() {
        let mut db = staged();
        db.validation = Some(ValidationReport {
            is_consistent: false,
            ..Default::default()
        });
        merge(
            "p",
            &mut db,
            StageOutput {
                warnings: vec![WireFinding::new("w", "w")],
                ..Default::default()
            },
        );
        assert!(!db.validation.unwrap().is_consistent);
    }
}
