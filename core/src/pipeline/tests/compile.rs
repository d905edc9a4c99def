//! Malformed pipeline files, each with every issue it must report (line and
//! key), and the compiled form of good ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{registry, FakePlugins, Probe};
use crate::error::{ConfigIssue, Error, Result};
use crate::pipeline::{
    compile_str, ArtifactKind, CompiledPipeline, NoPlugins, OnError, ParamValue,
};

const FILE: &str = "/etc/genesis/pipelines/restore.toml";

fn compile_with(
    text: &str,
    overrides: &[(&str, &str)],
    plugins: &dyn crate::pipeline::PluginLoader,
) -> Result<CompiledPipeline> {
    let probe = Arc::new(Probe::default());
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    compile_str(
        text,
        Path::new(FILE),
        &registry(&probe),
        plugins,
        &overrides,
    )
}

fn issues_with(
    text: &str,
    overrides: &[(&str, &str)],
    plugins: &dyn crate::pipeline::PluginLoader,
) -> Vec<ConfigIssue> {
    match compile_with(text, overrides, plugins) {
        Err(Error::Config(issues)) => {
            for issue in &issues {
                assert_eq!(issue.file, PathBuf::from(FILE));
                assert!(!issue.message.is_empty());
            }
            issues
        }
        Err(other) => panic!("expected configuration issues, got {other}"),
        Ok(p) => panic!("expected configuration issues, compiled {p:?}"),
    }
}

fn issues(text: &str) -> Vec<ConfigIssue> {
    issues_with(text, &[], &NoPlugins)
}

/// The (line, key) of every issue, in reported order.
fn places(issues: &[ConfigIssue]) -> Vec<(Option<usize>, &str)> {
    issues.iter().map(|i| (i.line, i.key.as_str())).collect()
}

fn message<'a>(issues: &'a [ConfigIssue], key: &str) -> &'a str {
    issues
        .iter()
        .find(|i| i.key == key)
        .map(|i| i.message.as_str())
        .unwrap_or_else(|| panic!("no issue for {key} in {issues:#?}"))
}

const GOOD: &str = r#"name = "restore"
description = "Point-in-time restore"
[params]
target = "latest"
repository = "/backups"
staging_dir = "${repository}/staging"
workers = 3
strict = false
[[stages]]
id = "fetch"
type = "fetch"
workers = 2
[stages.config]
count = "${workers}"
[[stages]]
id = "decompress"
type = "decompress"
channel_capacity = 8
on_error = "skip"
[[stages]]
id = "verify"
type = "verify"
[[stages]]
id = "apply"
type = "apply"
[[stages]]
id = "check"
type = "check"
[stages.config]
level = "quick"
"#;

#[test]
fn pipeline_good_file_compiles_with_params_and_summary() {
    let compiled =
        compile_with(GOOD, &[("target", "2024-05-01T12:00:00Z")], &NoPlugins).expect("compiles");
    assert_eq!(compiled.name, "restore");
    assert_eq!(
        compiled.description.as_deref(),
        Some("Point-in-time restore")
    );
    assert_eq!(
        compiled.params.get("target"),
        Some(&ParamValue::Str("2024-05-01T12:00:00Z".into()))
    );
    assert_eq!(
        compiled.params.get("staging_dir"),
        Some(&ParamValue::Str("/backups/staging".into()))
    );
    let summary = compiled.summary();
    let ids: Vec<_> = summary.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["fetch", "decompress", "verify", "apply", "check"]);
    assert_eq!(summary.stages[0].workers, 2);
    assert_eq!(summary.stages[0].inputs, vec![ArtifactKind::Request]);
    assert_eq!(summary.stages[0].outputs, vec![ArtifactKind::FetchedObject]);
    assert_eq!(summary.stages[1].channel_capacity, 8);
    assert_eq!(summary.stages[1].on_error, OnError::Skip);
    assert_eq!(summary.stages[2].channel_capacity, 4);
    assert!(summary.stages[2].workers >= 1);
    let json = serde_json::to_value(&summary).expect("serializes");
    assert_eq!(json["stages"][0]["inputs"][0], "request");
    assert_eq!(json["stages"][1]["on_error"], "skip");
}

#[test]
fn pipeline_bad_toml_reports_its_line() {
    let text = "name = \"restore\"\n[[stages]]\nid = \"fetch\nt = 1\n";
    let found = issues(text);
    assert!(!found.is_empty());
    assert!(found.iter().all(|i| i.key == "(toml)"), "{found:#?}");
    assert_eq!(found[0].line, Some(3));
    assert!(found[0].message.starts_with("invalid TOML"), "{found:#?}");

    let found = issues("name = \"x\"\nname = \"y\"\n");
    assert_eq!(places(&found), [(Some(2), "(toml)")]);
    assert!(found[0].message.contains("duplicate key"));
}

#[test]
fn pipeline_unknown_stage_type_lists_known_types() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fecth"
[[stages]]
id = "other"
type = "teleport"
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [(Some(4), "stages[0].type"), (Some(7), "stages[1].type")]
    );
    let m = &found[0].message;
    assert!(m.contains("did you mean `fetch`"), "{m}");
    assert!(
        m.contains("known types: apply, check, decompress, fetch, step, verify, plugin"),
        "{m}"
    );
    assert!(!found[1].message.contains("did you mean"));
}

#[test]
fn pipeline_duplicate_and_invalid_ids() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fetch"
[[stages]]
id = "fetch"
type = "decompress"
[[stages]]
id = "Verify Me"
type = "verify"
[[stages]]
type = "apply"
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (Some(6), "stages[1].id"),
            (Some(9), "stages[2].id"),
            (Some(11), "stages[3].id"),
        ]
    );
    assert!(
        found[0].message.contains("first used on line 3"),
        "{found:#?}"
    );
    assert!(found[1].message.contains("a-z, 0-9"));
    assert!(found[2].message.contains("no `id`"));
}

#[test]
fn pipeline_unknown_keys_everywhere_and_missing_name() {
    let text = r#"nmae = "restore"
[[stages]]
id = "fetch"
type = "fetch"
worker = 2
[stages.config]
cuont = 3
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (None, "name"),
            (Some(1), "nmae"),
            (Some(5), "stages[0].worker"),
            (Some(6), "stages[0].config"),
        ]
    );
    assert!(message(&found, "nmae").contains("did you mean `name`"));
    assert!(message(&found, "stages[0].worker").contains("did you mean `workers`"));
    // The stage type's own check of its table (serde's deny_unknown_fields).
    assert!(message(&found, "stages[0].config").contains("cuont"));
}

#[test]
fn pipeline_inputs_nobody_produces() {
    let text = r#"name = "restore"
[[stages]]
id = "decompress"
type = "decompress"
[[stages]]
id = "apply"
type = "apply"
[[stages]]
id = "bogus"
type = "nonesuch"
[[stages]]
id = "check"
type = "check"
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (Some(4), "stages[0].type"),
            (Some(7), "stages[1].type"),
            (Some(10), "stages[2].type"),
        ]
    );
    let first = &found[0].message;
    assert!(
        first.contains("first stage receives the run's `request`"),
        "{first}"
    );
    assert!(first.contains("fetch, step"), "{first}");
    let second = &found[1].message;
    assert!(second.contains("takes verified-object"), "{second}");
    assert!(
        second.contains("produces only decompressed-object"),
        "{second}"
    );
    assert!(second.contains("types that take those: verify"), "{second}");
    // The stage after an unknown type is not checked against it.
    assert!(found[2].message.contains("unknown stage type"));
}

#[test]
fn pipeline_bad_parameter_values_and_overrides() {
    let text = r#"name = "restore"
[params]
target = "latest"
batch = 100
ratio = 0.5
strict = false
list = [1, 2]
when = 1979-05-27
[[stages]]
id = "fetch"
type = "fetch"
"#;
    let found = issues_with(
        text,
        &[
            ("batch", "abc"),
            ("ratio", "half"),
            ("strict", "yes"),
            ("tagret", "2024-01-01"),
            ("target", "fine"),
        ],
        &NoPlugins,
    );
    assert_eq!(
        places(&found),
        [
            (None, "--set batch"),
            (None, "--set ratio"),
            (None, "--set strict"),
            (None, "--set tagret"),
            (Some(7), "params.list"),
            (Some(8), "params.when"),
        ]
    );
    assert!(message(&found, "--set batch").contains("\"abc\" is not an integer"));
    assert!(message(&found, "--set strict").contains("true"));
    let unknown = message(&found, "--set tagret");
    assert!(unknown.contains("did you mean `target`"), "{unknown}");
    assert!(
        unknown.contains("declared parameters: batch, ratio, strict, target"),
        "{unknown}"
    );
    assert!(message(&found, "params.list").contains("not array"));
}

#[test]
fn pipeline_bad_workers_capacity_and_on_error() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fetch"
workers = 0
channel_capacity = -1
on_error = "ignore"
[[stages]]
id = "decompress"
type = "decompress"
workers = "two"
channel_capacity = 1000000
on_error = 3
[[stages]]
id = "verify"
type = "verify"
workers = 1.5
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (Some(5), "stages[0].workers"),
            (Some(6), "stages[0].channel_capacity"),
            (Some(7), "stages[0].on_error"),
            (Some(11), "stages[1].workers"),
            (Some(12), "stages[1].channel_capacity"),
            (Some(13), "stages[1].on_error"),
            (Some(17), "stages[2].workers"),
        ]
    );
    assert!(message(&found, "stages[0].workers").contains("between 1 and 1024, not 0"));
    assert!(message(&found, "stages[0].on_error").contains("fail, skip"));
    assert!(message(&found, "stages[1].workers").contains("the string \"two\""));
    assert!(message(&found, "stages[1].channel_capacity").contains("65536"));
    assert!(message(&found, "stages[1].on_error").contains("must be a string"));
}

#[test]
fn pipeline_missing_name_and_no_stages() {
    let found = issues("description = \"nothing here\"\n[params]\nx = 1\n");
    assert_eq!(places(&found), [(None, "name"), (None, "stages")]);
    assert!(message(&found, "stages").contains("[[stages]]"));

    let found = issues("name = \"  \"\nstages = 3\n");
    assert_eq!(
        places(&found),
        [(None, "stages"), (Some(1), "name"), (Some(2), "stages")]
    );
}

#[test]
fn pipeline_plugin_stages_need_a_library_and_only_they() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fetch"
library = "libx.so"
[[stages]]
id = "audit"
type = "plugin"
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (Some(5), "stages[0].library"),
            (Some(8), "stages[1].library")
        ]
    );
    assert!(found[0]
        .message
        .contains("only for stages of `type = \"plugin\"`"));
    assert!(found[1].message.contains("needs `library"));
}

#[test]
fn pipeline_plugin_load_failures_and_clashing_types() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fetch"
[[stages]]
id = "decompress"
type = "decompress"
[[stages]]
id = "verify"
type = "verify"
[[stages]]
id = "apply"
type = "apply"
[[stages]]
id = "audit"
type = "plugin"
library = "../plugins/libaudit.so"
[[stages]]
id = "audit-again"
type = "plugin"
library = "../plugins/libaudit.so"
[[stages]]
id = "audit2"
type = "plugin"
library = "/opt/libaudit2.so"
[[stages]]
id = "shadow"
type = "plugin"
library = "libfetch.so"
[[stages]]
id = "missing"
type = "plugin"
library = "libmissing.so"
"#;
    let plugins = FakePlugins::new();
    let found = issues_with(text, &[], &plugins);
    assert_eq!(
        places(&found),
        [
            (Some(25), "stages[6].library"),
            (Some(29), "stages[7].library"),
            (Some(33), "stages[8].library"),
        ]
    );
    assert!(found[0].message.contains("already declared by plugin"));
    assert!(found[1].message.contains("which is a built-in type"));
    assert!(found[2].message.contains("cannot load plugin"));
    assert!(found[2].message.contains("No such file"));
    let loaded = plugins.loaded.lock().expect("lock").clone();
    assert_eq!(
        loaded[0],
        PathBuf::from("/etc/genesis/pipelines/../plugins/libaudit.so")
    );
    assert_eq!(loaded[2], PathBuf::from("/opt/libaudit2.so"));
}

#[test]
fn pipeline_plugin_stage_compiles() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fetch"
[[stages]]
id = "decompress"
type = "decompress"
[[stages]]
id = "verify"
type = "verify"
[[stages]]
id = "apply"
type = "apply"
[[stages]]
id = "audit"
type = "plugin"
library = "libaudit.so"
"#;
    let compiled = compile_with(text, &[], &FakePlugins::new()).expect("compiles");
    let audit = &compiled.summary().stages[4];
    assert_eq!(audit.stage_type, "audit");
    assert_eq!(
        audit.library.as_deref(),
        Some(Path::new("/etc/genesis/pipelines/libaudit.so"))
    );
}

#[test]
fn pipeline_unknown_param_references() {
    let text = r#"name = "restore"
[params]
repository = "/backups"
staging = "${repo}/staging"
a = "${b}"
b = "x${a}"
[[stages]]
id = "fetch"
type = "fetch"
[stages.config]
level = "${levle}"
[[stages]]
id = "decompress"
type = "decompress"
[stages.config.nested]
list = ["ok ${repository}", "${nope} and ${nope2}"]
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (Some(4), "params.staging"),
            (Some(5), "params.a"),
            (Some(11), "stages[0].config.level"),
            (Some(16), "stages[1].config.nested.list[1]"),
            (Some(16), "stages[1].config.nested.list[1]"),
        ]
    );
    assert!(found[0].message.contains("unknown parameter `${repo}`"));
    assert!(
        found[1].message.contains("cycle: a -> b -> a"),
        "{}",
        found[1].message
    );
    assert!(found[2].message.contains("`${levle}`"));
    assert!(
        found[2]
            .message
            .contains("declared parameters: a, b, repository, staging"),
        "{}",
        found[2].message
    );
    assert!(found[3].message.contains("`${nope}`"));
    assert!(found[4].message.contains("`${nope2}`"));
}

#[test]
fn pipeline_override_can_reference_and_fail() {
    let text = r#"name = "restore"
[params]
repository = "/backups"
staging = "/tmp"
[[stages]]
id = "fetch"
type = "fetch"
"#;
    let compiled =
        compile_with(text, &[("staging", "${repository}/s")], &NoPlugins).expect("compiles");
    assert_eq!(
        compiled.params.get("staging"),
        Some(&ParamValue::Str("/backups/s".into()))
    );
    let found = issues_with(text, &[("staging", "${nothing}")], &NoPlugins);
    assert_eq!(places(&found), [(None, "params.staging")]);
    assert!(found[0].message.contains("in the --set value"));
}

#[test]
fn pipeline_factory_config_errors_carry_key_and_line() {
    let text = r#"name = "restore"
[[stages]]
id = "fetch"
type = "fetch"
[stages.config]
count = "many"
[[stages]]
id = "decompress"
type = "decompress"
[[stages]]
id = "verify"
type = "verify"
[[stages]]
id = "apply"
type = "apply"
[[stages]]
id = "check"
type = "check"

[stages.config]
level = "deep"
"#;
    let found = issues(text);
    assert_eq!(
        places(&found),
        [
            (Some(6), "stages[0].config.count"),
            (Some(21), "stages[4].config.level")
        ]
    );
    assert_eq!(
        found[0].message,
        "invalid type: string \"many\", expected i64"
    );
    assert!(found[1].message.contains("use quick or full"));
}

#[test]
fn pipeline_file_with_many_problems_reports_them_all() {
    let text = r#"description = "broken in every way"
colour = "blue"
[params]
batch = 10
[[stages]]
id = "decompress"
type = "decompress"
workers = 0
[[stages]]
id = "decompress"
type = "telport"
[[stages]]
id = "x"
type = "plugin"
[[stages]]
id = "check"
type = "check"
on_error = "retry"
[stages.config]
level = "${lvl}"
"#;
    let found = issues_with(text, &[("batch", "ten"), ("bacth", "1")], &NoPlugins);
    assert_eq!(
        places(&found),
        [
            (None, "name"),
            (None, "--set batch"),
            (None, "--set bacth"),
            (Some(2), "colour"),
            (Some(7), "stages[0].type"),
            (Some(8), "stages[0].workers"),
            (Some(10), "stages[1].id"),
            (Some(11), "stages[1].type"),
            (Some(14), "stages[2].library"),
            (Some(18), "stages[3].on_error"),
            (Some(20), "stages[3].config.level"),
        ]
    );
    let rendered = Error::Config(found).to_string();
    assert!(
        rendered.starts_with("11 configuration error(s):"),
        "{rendered}"
    );
    assert!(rendered
        .contains("/etc/genesis/pipelines/restore.toml:11: stages[1].type: unknown stage type"));
}

#[test]
fn pipeline_compile_file_reads_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.toml");
    let probe = Arc::new(Probe::default());
    let missing = crate::pipeline::compile_file(&path, &registry(&probe), &NoPlugins, &[]);
    assert!(matches!(missing, Err(Error::Io { .. })));
    std::fs::write(
        &path,
        "name = \"p\"\n[[stages]]\nid = \"a\"\ntype = \"nope\"\n",
    )
    .expect("write");
    match crate::pipeline::compile_file(&path, &registry(&probe), &NoPlugins, &[]) {
        Err(Error::Config(found)) => {
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].file, path);
            assert_eq!(found[0].line, Some(4));
        }
        other => panic!("unexpected {other:?}"),
    }
}
