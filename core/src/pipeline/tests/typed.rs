//! Typed parameter values (a caller's restore target) and what a stage
//! type requires from the stages before it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{registry, Probe};
use crate::error::{ConfigIssue, Error};
use crate::pipeline::{
    compile_str_with, ArtifactKind, BuildContext, NoPlugins, Overrides, ParamValue, Stage,
    StageFactory, StageRegistry,
};
use crate::plan::Target;

/// Records, when built, the parameter its config key `value` is bound to.
struct Bound {
    seen: Arc<Mutex<Vec<Option<ParamValue>>>>,
}

impl StageFactory for Bound {
    fn type_name(&self) -> &str {
        "bound"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Request]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Request]
    }
    fn build(
        &self,
        _config: &toml::Table,
        ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        self.seen
            .lock()
            .expect("seen lock")
            .push(ctx.bound_param("value").cloned());
        Err(vec![("value".into(), "seen".into())])
    }
}

/// Takes fetched objects or a staged database, and cannot work without the
/// latter (its build always refuses, so that every pipeline reports issues).
struct NeedsStaged;

impl StageFactory for NeedsStaged {
    fn type_name(&self) -> &str {
        "needs-staged"
    }
    fn inputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::FetchedObject, ArtifactKind::StagedDatabase]
    }
    fn outputs(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn requires(&self) -> &[ArtifactKind] {
        &[ArtifactKind::StagedDatabase]
    }
    fn build(
        &self,
        _config: &toml::Table,
        _ctx: &BuildContext<'_>,
    ) -> std::result::Result<Box<dyn Stage>, Vec<(String, String)>> {
        Err(Vec::new())
    }
}

fn test_registry(seen: &Arc<Mutex<Vec<Option<ParamValue>>>>) -> StageRegistry {
    let mut registry = registry(&Arc::new(Probe::default()));
    registry
        .register(Arc::new(Bound { seen: seen.clone() }))
        .expect("unique");
    registry.register(Arc::new(NeedsStaged)).expect("unique");
    registry
}

fn issues(text: &str, overrides: &Overrides) -> Vec<ConfigIssue> {
    let seen = Arc::default();
    match compile_str_with(
        text,
        Path::new("t.toml"),
        &test_registry(&seen),
        &NoPlugins,
        overrides,
    ) {
        Err(Error::Config(issues)) => issues,
        other => panic!("expected configuration issues, got {other:?}"),
    }
}

#[test]
fn a_stage_takes_a_typed_parameter_through_a_whole_reference_only() {
    let text = "name = \"p\"\n[params]\ntarget = \"latest\"\n\
                [[stages]]\nid = \"a\"\ntype = \"bound\"\n[stages.config]\nvalue = \"${target}\"\n\
                [[stages]]\nid = \"b\"\ntype = \"bound\"\n[stages.config]\nvalue = \"to ${target}\"\n";
    let target = Target::Txid { txid: 7 };
    let seen = Arc::default();
    let overrides = Overrides {
        text: Vec::new(),
        typed: vec![("target".into(), ParamValue::Target(target.clone()))],
    };
    let result = compile_str_with(
        text,
        Path::new("t.toml"),
        &test_registry(&seen),
        &NoPlugins,
        &overrides,
    );
    assert!(matches!(result, Err(Error::Config(_))));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(ParamValue::Target(target)), None]
    );
}

#[test]
fn a_required_kind_no_earlier_stage_produces_is_refused() {
    let text = "name = \"p\"\n\
                [[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n\
                [[stages]]\nid = \"x\"\ntype = \"needs-staged\"\n";
    let found = issues(text, &Overrides::default());
    let mine: Vec<&ConfigIssue> = found
        .iter()
        .filter(|i| i.message.contains("needs staged-database"))
        .collect();
    assert_eq!(mine.len(), 1, "{found:?}");
    assert_eq!(mine[0].key, "stages[1].type");
    assert!(
        mine[0]
            .message
            .contains("types that produce it: apply, check, needs-staged"),
        "{}",
        mine[0].message
    );
    // After a stage of unknown type nothing is judged: it may produce anything.
    let text = "name = \"p\"\n\
                [[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n\
                [[stages]]\nid = \"y\"\ntype = \"nope\"\n\
                [[stages]]\nid = \"x\"\ntype = \"needs-staged\"\n";
    let found = issues(text, &Overrides::default());
    assert!(
        found
            .iter()
            .all(|i| !i.message.contains("needs staged-database")),
        "{found:?}"
    );
    // Produced before it, two stages up, the requirement holds.
    let text = "name = \"p\"\n\
                [[stages]]\nid = \"fetch\"\ntype = \"fetch\"\n\
                [[stages]]\nid = \"d\"\ntype = \"decompress\"\n\
                [[stages]]\nid = \"v\"\ntype = \"verify\"\n\
                [[stages]]\nid = \"a\"\ntype = \"apply\"\n\
                [[stages]]\nid = \"x\"\ntype = \"needs-staged\"\n";
    let found = issues(text, &Overrides::default());
    assert!(
        found
            .iter()
            .all(|i| !i.message.contains("needs staged-database")),
        "{found:?}"
    );
}
