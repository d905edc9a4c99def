//! The restore pipelines' typed inputs, checked with the real stage types:
//! a target passed typed takes its parameter's place (text still read, and
//! refused, at compile time), and the archived events that event-replay
//! needs must come from a stage before it, or the pipeline is refused; at
//! run time, a staged database that arrives without them is refused too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use genesis_core::pipeline::{
    compile_file_with, compile_str, Artifact, ArtifactKind, BuildContext, CancelToken, Emit,
    NoPlugins, Overrides, ParamValue, Stage, StageContext, StageFactory, StagedDatabase,
};
use genesis_core::plan::Target;
use genesis_core::progress::NoProgress;
use genesis_core::{ConfigIssue, Error};
use genesis_stages::registry;

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines")
}

fn config_issues(e: Error) -> Vec<ConfigIssue> {
    match e {
        Error::Config(issues) => issues,
        other => panic!("expected a configuration error, got {other}"),
    }
}

#[test]
fn a_typed_target_takes_the_parameters_place_in_every_built_in_pipeline() {
    let reg = registry();
    let target = Target::BackupId {
        id: "snap_0001-x".into(),
    };
    for (name, _) in genesis_stages::BUILTIN_PIPELINES {
        let path = pipelines_dir().join(format!("{name}.toml"));
        let overrides = Overrides {
            text: Vec::new(),
            typed: vec![("target".into(), ParamValue::Target(target.clone()))],
        };
        let p = compile_file_with(&path, &reg, &NoPlugins, &overrides)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            p.params.get("target"),
            Some(&ParamValue::Target(target.clone())),
            "{name}"
        );
        // `pipelines check --json` shows it in its text form.
        let shown = serde_json::to_value(p.summary()).unwrap();
        assert_eq!(shown["params"]["target"], "backup:snap_0001-x", "{name}");
    }
}

#[test]
fn a_target_in_text_is_still_read_and_refused_at_compile_time() {
    let reg = registry();
    let path = pipelines_dir().join("restore.toml");
    let set = |text: Vec<(String, String)>, typed: Vec<(String, ParamValue)>| {
        compile_file_with(&path, &reg, &NoPlugins, &Overrides { text, typed })
    };
    let issues =
        config_issues(set(vec![("target".into(), "txid:abc".into())], Vec::new()).unwrap_err());
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "stages[0].config.target");
    assert!(
        issues[0]
            .message
            .contains("bad target \"txid:abc\": `txid:` must be followed by a transaction id"),
        "{}",
        issues[0].message
    );
    // Set both ways, the parameter would silently take one of them.
    let issues = config_issues(
        set(
            vec![("target".into(), "latest".into())],
            vec![(
                "target".into(),
                ParamValue::Target(Target::Txid { txid: 3 }),
            )],
        )
        .unwrap_err(),
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].message.contains("set twice"), "{issues:?}");
    // A typed value for a parameter the pipeline does not declare.
    let issues = config_issues(
        set(
            Vec::new(),
            vec![("when".into(), ParamValue::Target(Target::Latest))],
        )
        .unwrap_err(),
    );
    assert!(
        issues[0]
            .message
            .contains("the pipeline has no parameter `when`"),
        "{issues:?}"
    );
}

/// A stage type that starts a chain with a staged database, claiming (or
/// not) that it also produces the archived events.
struct StagedSource {
    claims_events: bool,
}

impl StageFactory for StagedSource {
    fn type_name(&self) -> &str {
        if self.claims_events {
            "claims-events"
        } else {
            "staged-source"
        }
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Request]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        if self.claims_events {
            &[ArtifactKind::ArchivedEvents, ArtifactKind::StagedDatabase]
        } else {
            &[ArtifactKind::StagedDatabase]
        }
    }
    fn build(
        &self,
        _config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> Result<Box<dyn Stage>, Vec<(String, String)>> {
        Ok(Box::new(EmitsStaged))
    }
}

/// Emits a staged database and nothing else (as a stage that dropped the
/// archived events would leave the stream).
struct EmitsStaged;

impl Stage for EmitsStaged {
    fn process(
        &mut self,
        _input: Artifact,
        _ctx: &StageContext,
        out: &mut dyn Emit,
    ) -> genesis_core::Result<()> {
        out.emit(Artifact::StagedDatabase(Box::new(StagedDatabase {
            path: PathBuf::from("never-opened.db"),
            target_time: Some(chrono::Utc::now()),
            ..StagedDatabase::default()
        })))
    }
}

fn registry_with_sources() -> genesis_core::pipeline::StageRegistry {
    let mut reg = registry();
    for claims_events in [false, true] {
        reg.register(Arc::new(StagedSource { claims_events }))
            .unwrap();
    }
    reg
}

/// Compiles `source` then event-replay, with the test source types registered.
fn source_then_replay(
    source: &str,
) -> genesis_core::Result<genesis_core::pipeline::CompiledPipeline> {
    let text = format!(
        "name = \"replay-only\"\n\n[[stages]]\nid = \"source\"\ntype = \"{source}\"\n\n\
         [[stages]]\nid = \"event-replay\"\ntype = \"event-replay\"\n"
    );
    compile_str(
        &text,
        Path::new("replay-only.toml"),
        &registry_with_sources(),
        &NoPlugins,
        &[],
    )
}

#[test]
fn event_replay_without_an_archived_events_producer_is_refused_at_compile_time() {
    let issues = config_issues(source_then_replay("staged-source").unwrap_err());
    // The chain check alone passes (a staged database reaches it): only
    // the requirement fails, at the stage's type.
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "stages[1].type");
    assert_eq!(issues[0].line, Some(9));
    assert_eq!(
        issues[0].message,
        "type \"event-replay\" needs archived-events, but no stage before it produces that; \
         put it after a stage that does (types that produce it: claims-events, wal-apply)"
    );
}

#[test]
fn event_replay_refuses_a_staged_database_that_arrives_without_its_events() {
    let failure = source_then_replay("claims-events")
        .unwrap()
        .run(Arc::new(NoProgress), CancelToken::default())
        .unwrap_err();
    assert_eq!(failure.stage.as_deref(), Some("event-replay"));
    let message = failure.error.to_string();
    assert!(
        message
            .contains("received the staged database never-opened.db without the archived events"),
        "{message}"
    );
}
