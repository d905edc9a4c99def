//! The pipeline compiler: turns a pipeline file (its loose form, see
//! [`super::config`]) into a [`CompiledPipeline`] whose stages are built and
//! whose chain is checked, or into `Error::Config` listing every problem
//! found (file, line, key, what to do), never only the first.
//!
//! Checks, in one pass that does not stop: TOML syntax; unknown keys and
//! wrong types; a `name` and at least one stage; parameters and `--set`
//! overrides; `${param}` references; stage ids (present, `[a-z0-9_-]`,
//! unique); stage types (registered, or `plugin` with a loadable `library`
//! whose declared type clashes with nothing); `workers`,
//! `channel_capacity`, `on_error`; each factory's own check of its
//! `[stages.config]`; and the chain (the first stage takes `request`, each
//! later stage takes something its predecessor produces, and what a stage
//! [requires](StageFactory::requires) is produced by some stage before it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::error::{ConfigIssue, Error, Result};
use crate::pipeline::artifact::{ArtifactKind, ParamValue, Params};
use crate::pipeline::config::{self, ConfigDecl, Issues, PipelineFile, StageDecl};
use crate::pipeline::params::{self, Overrides, Resolved, Substituted};
use crate::pipeline::stage::{BuildContext, PluginLoader, Stage, StageFactory, StageRegistry};

/// The stage type that names a plugin library instead of a registered type.
pub const PLUGIN_TYPE: &str = "plugin";
/// Default capacity of a stage's input channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4;
/// Upper bound of `workers` (a guard against typos such as `workers = 40000`).
pub const MAX_WORKERS: i64 = 1024;
/// Upper bound of `channel_capacity` (channels allocate their capacity up front).
pub const MAX_CHANNEL_CAPACITY: i64 = 65536;

/// What a stage does when processing one artifact fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The run fails with this error (the default).
    #[default]
    Fail,
    /// The error is logged, the artifact dropped, and the stage goes on.
    /// Errors of `finish`, panics and cancellation still fail the run.
    Skip,
}

impl OnError {
    /// The spelling in pipeline files.
    pub const NAMES: &'static [&'static str] = &["fail", "skip"];

    fn parse(text: &str) -> Option<Self> {
        match text {
            "fail" => Some(OnError::Fail),
            "skip" => Some(OnError::Skip),
            _ => None,
        }
    }
}

/// One built stage of a compiled pipeline.
pub struct CompiledStage {
    /// The stage's id (unique in the pipeline).
    pub id: String,
    /// The stage type: a registered name, or the type a plugin declares.
    pub stage_type: String,
    /// The plugin library, for `type = "plugin"` stages (resolved path).
    pub library: Option<PathBuf>,
    /// The type's one-line description.
    pub description: String,
    /// Worker threads of the stage's rayon pool.
    pub workers: usize,
    /// Capacity of the stage's input channel.
    pub channel_capacity: usize,
    pub on_error: OnError,
    /// Artifact kinds the stage takes and produces.
    pub inputs: Vec<ArtifactKind>,
    pub outputs: Vec<ArtifactKind>,
    /// The stage itself, built from its `[stages.config]`.
    pub stage: Box<dyn Stage>,
}

impl std::fmt::Debug for CompiledStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledStage")
            .field("id", &self.id)
            .field("stage_type", &self.stage_type)
            .field("library", &self.library)
            .field("workers", &self.workers)
            .field("channel_capacity", &self.channel_capacity)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// A checked pipeline, ready to run (see [`CompiledPipeline::run`]).
#[derive(Debug)]
pub struct CompiledPipeline {
    pub name: String,
    pub description: Option<String>,
    /// The file it was compiled from (for built-in pipelines, the name given).
    pub file: PathBuf,
    /// The resolved parameters (defaults, overrides, references substituted).
    pub params: Params,
    /// The stages, in chain order.
    pub stages: Vec<CompiledStage>,
}

/// What `pipelines check` shows of a compiled pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineSummary {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    pub params: Params,
    pub stages: Vec<StageSummary>,
}

/// One stage in a [`PipelineSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub id: String,
    pub stage_type: String,
    pub library: Option<PathBuf>,
    pub description: String,
    pub workers: usize,
    pub channel_capacity: usize,
    pub on_error: OnError,
    pub inputs: Vec<ArtifactKind>,
    pub outputs: Vec<ArtifactKind>,
}

impl CompiledPipeline {
    /// The summary shown by `pipelines check`.
    pub fn summary(&self) -> PipelineSummary {
        PipelineSummary {
            name: self.name.clone(),
            description: self.description.clone(),
            file: self.file.clone(),
            params: self.params.clone(),
            stages: self
                .stages
                .iter()
                .map(|s| StageSummary {
                    id: s.id.clone(),
                    stage_type: s.stage_type.clone(),
                    library: s.library.clone(),
                    description: s.description.clone(),
                    workers: s.workers,
                    channel_capacity: s.channel_capacity,
                    on_error: s.on_error,
                    inputs: s.inputs.clone(),
                    outputs: s.outputs.clone(),
                })
                .collect(),
        }
    }
}

/// Reads and compiles a pipeline file.
///
/// # Errors
/// `Error::Io` when the file cannot be read; `Error::Config` with every
/// problem found in it (see the module documentation).
pub fn compile_file(
    path: &Path,
    registry: &StageRegistry,
    plugins: &dyn PluginLoader,
    overrides: &[(String, String)],
) -> Result<CompiledPipeline> {
    compile_file_with(path, registry, plugins, &Overrides::text(overrides))
}

/// [`compile_file`] with typed overrides as well as text ones.
///
/// # Errors
/// As [`compile_file`].
pub fn compile_file_with(
    path: &Path,
    registry: &StageRegistry,
    plugins: &dyn PluginLoader,
    overrides: &Overrides,
) -> Result<CompiledPipeline> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading pipeline file", path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Config(vec![ConfigIssue {
            file: path.to_path_buf(),
            line: None,
            key: "(file)".to_string(),
            message: format!("the file is not UTF-8 text: {e}"),
        }])
    })?;
    compile_str_with(&text, path, registry, plugins, overrides)
}

/// Compiles a pipeline from its text. `file` is used in messages and to
/// resolve plugin library paths (relative to its directory); pipelines built
/// into the binary pass a descriptive name.
///
/// # Errors
/// `Error::Config` with every problem found (see the module documentation).
pub fn compile_str(
    text: &str,
    file: &Path,
    registry: &StageRegistry,
    plugins: &dyn PluginLoader,
    overrides: &[(String, String)],
) -> Result<CompiledPipeline> {
    compile_str_with(text, file, registry, plugins, &Overrides::text(overrides))
}

/// [`compile_str`] with typed overrides as well as text ones.
///
/// # Errors
/// As [`compile_str`].
pub fn compile_str_with(
    text: &str,
    file: &Path,
    registry: &StageRegistry,
    plugins: &dyn PluginLoader,
    overrides: &Overrides,
) -> Result<CompiledPipeline> {
    let mut issues = Issues::new(file, text);
    let Some(parsed) = config::parse(text, &mut issues) else {
        return Err(Error::Config(issues.into_sorted()));
    };
    let compiled = Compiler {
        file,
        registry,
        plugins,
        issues: &mut issues,
    }
    .compile(parsed, overrides);
    if issues.list.is_empty() {
        if let Some(compiled) = compiled {
            return Ok(compiled);
        }
    }
    Err(Error::Config(issues.into_sorted()))
}

struct Compiler<'a> {
    file: &'a Path,
    registry: &'a StageRegistry,
    plugins: &'a dyn PluginLoader,
    issues: &'a mut Issues,
}

/// A stage whose type is known, before the chain check.
struct Typed {
    factory: Arc<dyn StageFactory>,
    library: Option<PathBuf>,
}

impl Compiler<'_> {
    fn compile(mut self, file: PipelineFile, overrides: &Overrides) -> Option<CompiledPipeline> {
        let name = file.name.as_ref().map(|n| n.get_ref().clone());
        match &file.name {
            None => self.issues.push(
                None,
                "name",
                "the pipeline has no `name`; add `name = \"...\"` at the top of the file",
            ),
            Some(n) if n.get_ref().trim().is_empty() => {
                self.issues
                    .push(Some(n.span()), "name", "the pipeline name is empty")
            }
            Some(_) => {}
        }
        let resolved = params::resolve(&file.params, overrides, self.issues);
        if file.stages.is_empty() {
            self.issues.push(
                None,
                "stages",
                "the pipeline has no stages; add at least one `[[stages]]` table",
            );
        }

        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut plugin_types: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut typed = Vec::new();
        let mut built = Vec::new();
        for (index, decl) in file.stages.iter().enumerate() {
            let prefix = format!("stages[{index}]");
            let id = self.check_id(decl, &prefix, &mut ids);
            let stage_type = self.stage_type(decl, &prefix, &mut plugin_types);
            let workers = self.workers(decl, &prefix);
            let channel_capacity = self.channel_capacity(decl, &prefix);
            let on_error = self.on_error(decl, &prefix);
            let config = self.substitute_config(&decl.config, &resolved, &prefix);
            let stage = match (&stage_type, config) {
                (Some(t), Some((config, bindings))) => {
                    let stage_id = id.clone().unwrap_or_else(|| prefix.clone());
                    self.build(
                        &t.factory,
                        &config,
                        decl,
                        (&stage_id, &bindings),
                        &resolved.values,
                        &prefix,
                    )
                }
                _ => None,
            };
            typed.push(stage_type.as_ref().map(|t| t.factory.clone()));
            built.push((id, stage_type, workers, channel_capacity, on_error, stage));
        }
        self.check_chain(&file.stages, &typed);

        let mut stages = Vec::new();
        for (id, stage_type, workers, channel_capacity, on_error, stage) in built {
            let (Some(id), Some(t), Some(w), Some(c), Some(o), Some(stage)) =
                (id, stage_type, workers, channel_capacity, on_error, stage)
            else {
                continue;
            };
            stages.push(CompiledStage {
                id,
                stage_type: t.factory.type_name().to_string(),
                library: t.library,
                description: t.factory.description().to_string(),
                workers: w,
                channel_capacity: c,
                on_error: o,
                inputs: t.factory.inputs().to_vec(),
                outputs: t.factory.outputs().to_vec(),
                stage,
            });
        }
        Some(CompiledPipeline {
            name: name?,
            description: file.description.map(|d| d.into_inner()),
            file: self.file.to_path_buf(),
            params: resolved.values,
            stages,
        })
    }

    fn check_id(
        &mut self,
        decl: &StageDecl,
        prefix: &str,
        ids: &mut BTreeMap<String, usize>,
    ) -> Option<String> {
        let key = format!("{prefix}.id");
        let Some(id) = &decl.id else {
            self.issues.push(
                Some(decl.span.clone()),
                key,
                "the stage has no `id`; add `id = \"...\"` (letters a-z, digits, `_`, `-`)",
            );
            return None;
        };
        let text = id.get_ref();
        let valid = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            self.issues.push(
                Some(id.span()),
                key,
                format!("invalid stage id {text:?}: use only a-z, 0-9, `_` and `-`"),
            );
            return None;
        }
        let line = self.issues.line_of(id.span().start);
        if let Some(first) = ids.get(text) {
            self.issues.push(
                Some(id.span()),
                key,
                format!("duplicate stage id {text:?} (first used on line {first}); stage ids must be unique"),
            );
            return None;
        }
        ids.insert(text.clone(), line);
        Some(text.clone())
    }

    fn stage_type(
        &mut self,
        decl: &StageDecl,
        prefix: &str,
        plugin_types: &mut BTreeMap<String, PathBuf>,
    ) -> Option<Typed> {
        let key = format!("{prefix}.type");
        let Some(type_name) = &decl.stage_type else {
            self.issues.push(
                Some(decl.span.clone()),
                key,
                format!(
                    "the stage has no `type`; known types: {}",
                    self.known_types()
                ),
            );
            return None;
        };
        if type_name.get_ref() != PLUGIN_TYPE {
            if let Some(library) = &decl.library {
                self.issues.push(
                    Some(library.span()),
                    format!("{prefix}.library"),
                    format!(
                        "`library` is only for stages of `type = \"{PLUGIN_TYPE}\"`; remove it or change the type"
                    ),
                );
            }
            return match self.registry.get(type_name.get_ref()) {
                Some(factory) => Some(Typed {
                    factory: factory.clone(),
                    library: None,
                }),
                None => {
                    let mut names = self.registry.names();
                    names.push(PLUGIN_TYPE);
                    let hint = config::closest(type_name.get_ref(), &names)
                        .map(|n| format!(" (did you mean `{n}`?)"))
                        .unwrap_or_default();
                    self.issues.push(
                        Some(type_name.span()),
                        key,
                        format!(
                            "unknown stage type {:?}{hint}; known types: {}",
                            type_name.get_ref(),
                            self.known_types()
                        ),
                    );
                    None
                }
            };
        }
        let lib_key = format!("{prefix}.library");
        let Some(library) = &decl.library else {
            self.issues.push(
                Some(type_name.span()),
                lib_key,
                "a `type = \"plugin\"` stage needs `library = \"path/to/lib\"` (relative to the pipeline file)",
            );
            return None;
        };
        let path = {
            let p = Path::new(library.get_ref());
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.file.parent().unwrap_or(Path::new("")).join(p)
            }
        };
        let lib = match self.plugins.load(&path) {
            Ok(lib) => lib,
            Err(message) => {
                self.issues.push(
                    Some(library.span()),
                    lib_key,
                    format!("cannot load plugin {}: {message}", path.display()),
                );
                return None;
            }
        };
        let declared = lib.type_name().to_string();
        if self.registry.get(&declared).is_some() {
            self.issues.push(
                Some(library.span()),
                lib_key,
                format!(
                    "plugin {} declares stage type {declared:?}, which is a built-in type; the plugin must use another name",
                    path.display()
                ),
            );
            return None;
        }
        match plugin_types.get(&declared) {
            Some(other) if other != &path => {
                self.issues.push(
                    Some(library.span()),
                    lib_key,
                    format!(
                        "plugin {} declares stage type {declared:?}, already declared by plugin {}",
                        path.display(),
                        other.display()
                    ),
                );
                return None;
            }
            Some(_) => {}
            None => {
                plugin_types.insert(declared, path.clone());
            }
        }
        Some(Typed {
            factory: lib.into_stage_factory(),
            library: Some(path),
        })
    }

    fn known_types(&self) -> String {
        let mut names = self.registry.names();
        names.push(PLUGIN_TYPE);
        names.join(", ")
    }

    fn workers(&mut self, decl: &StageDecl, prefix: &str) -> Option<usize> {
        match &decl.workers {
            None if decl_has_bad_value(self.issues, &format!("{prefix}.workers")) => None,
            None => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
            Some(w) => self.bounded(w, 1, MAX_WORKERS, &format!("{prefix}.workers")),
        }
    }

    fn channel_capacity(&mut self, decl: &StageDecl, prefix: &str) -> Option<usize> {
        let key = format!("{prefix}.channel_capacity");
        match &decl.channel_capacity {
            None if decl_has_bad_value(self.issues, &key) => None,
            None => Some(DEFAULT_CHANNEL_CAPACITY),
            Some(c) => self.bounded(c, 1, MAX_CHANNEL_CAPACITY, &key),
        }
    }

    fn bounded(
        &mut self,
        value: &toml::Spanned<i64>,
        min: i64,
        max: i64,
        key: &str,
    ) -> Option<usize> {
        let v = *value.get_ref();
        if (min..=max).contains(&v) {
            usize::try_from(v).ok()
        } else {
            self.issues.push(
                Some(value.span()),
                key,
                format!("must be between {min} and {max}, not {v}"),
            );
            None
        }
    }

    fn on_error(&mut self, decl: &StageDecl, prefix: &str) -> Option<OnError> {
        let key = format!("{prefix}.on_error");
        match &decl.on_error {
            None if decl_has_bad_value(self.issues, &key) => None,
            None => Some(OnError::default()),
            Some(text) => match OnError::parse(text.get_ref()) {
                Some(o) => Some(o),
                None => {
                    self.issues.push(
                        Some(text.span()),
                        key,
                        format!(
                            "unknown on_error policy {:?}; use one of: {} (fail stops the run, skip drops the failing artifact)",
                            text.get_ref(),
                            OnError::NAMES.join(", ")
                        ),
                    );
                    None
                }
            },
        }
    }

    /// The config table with `${param}` references substituted, and the
    /// top-level keys whose value was exactly one reference with the
    /// parameter each names (so that a stage can take a typed parameter as
    /// it is); `None` when some reference is bad (each reported at its
    /// value's line).
    fn substitute_config(
        &mut self,
        config: &ConfigDecl,
        params: &Resolved,
        prefix: &str,
    ) -> Option<(toml::Table, BTreeMap<String, String>)> {
        let mut table = config.table.clone();
        let mut bindings = BTreeMap::new();
        let mut ok = true;
        for (key, value) in table.iter_mut() {
            if let Some(name) = value.as_str().and_then(whole_reference) {
                bindings.insert(key.clone(), name.to_string());
            }
            ok &= self.substitute_value(value, key, config, params, prefix);
        }
        ok.then_some((table, bindings))
    }

    fn substitute_value(
        &mut self,
        value: &mut toml::Value,
        path: &str,
        config: &ConfigDecl,
        params: &Resolved,
        prefix: &str,
    ) -> bool {
        match value {
            toml::Value::String(text) => {
                let mut failed_reference = false;
                let result = params::substitute(text, &mut |name| {
                    if params.failed.contains(name) {
                        // Declared but broken: reported with the parameter.
                        failed_reference = true;
                        return Some(ParamValue::Str(String::new()));
                    }
                    params.values.get(name).cloned()
                });
                match result {
                    Ok(_) if failed_reference => return false,
                    Ok(Substituted::Text(t)) => *text = t,
                    Ok(Substituted::Whole(v)) => *value = param_to_toml(v),
                    Err(errors) => {
                        let declared = params.declared();
                        for e in errors {
                            self.issues.push(
                                config.span_of(path),
                                format!("{prefix}.config.{path}"),
                                format!(
                                    "{e}; declared parameters: {}",
                                    params::list_or_none(&declared)
                                ),
                            );
                        }
                        return false;
                    }
                }
                true
            }
            toml::Value::Array(items) => {
                let mut ok = true;
                for (i, item) in items.iter_mut().enumerate() {
                    ok &= self.substitute_value(
                        item,
                        &format!("{path}[{i}]"),
                        config,
                        params,
                        prefix,
                    );
                }
                ok
            }
            toml::Value::Table(table) => {
                let mut ok = true;
                for (key, item) in table.iter_mut() {
                    ok &= self.substitute_value(
                        item,
                        &format!("{path}.{key}"),
                        config,
                        params,
                        prefix,
                    );
                }
                ok
            }
            _ => true,
        }
    }

    fn build(
        &mut self,
        factory: &Arc<dyn StageFactory>,
        config: &toml::Table,
        stage_decl: &StageDecl,
        (stage_id, bindings): (&str, &BTreeMap<String, String>),
        params: &Params,
        prefix: &str,
    ) -> Option<Box<dyn Stage>> {
        let ctx = BuildContext {
            pipeline_file: self.file,
            stage_id,
            params,
            bindings,
            plugins: self.plugins,
        };
        let decl = &stage_decl.config;
        let table_span = decl.span.clone().or(Some(stage_decl.span.clone()));
        match factory.build(config, &ctx) {
            Ok(stage) => Some(stage),
            Err(problems) => {
                if problems.is_empty() {
                    // A factory that refuses without saying why.
                    self.issues.push(
                        table_span.clone(),
                        format!("{prefix}.config"),
                        format!(
                            "stage type {:?} refused its configuration",
                            factory.type_name()
                        ),
                    );
                }
                for (key, message) in problems {
                    let (key, message) = locate_serde_path(key, message);
                    let (full, span) = match key.trim() {
                        "" | "config" => (format!("{prefix}.config"), table_span.clone()),
                        k => {
                            let k = k.strip_prefix("config.").unwrap_or(k);
                            let span = decl.span_of(k).or(table_span.clone());
                            (format!("{prefix}.config.{k}"), span)
                        }
                    };
                    self.issues.push(span, full, message);
                }
                None
            }
        }
    }

    fn check_chain(&mut self, decls: &[StageDecl], typed: &[Option<Arc<dyn StageFactory>>]) {
        // What reaches each stage: the run's request, and every kind an
        // earlier stage produces (a stage passes on what it does not take).
        let mut upstream = vec![ArtifactKind::Request];
        for (index, factory) in typed.iter().enumerate() {
            let Some(factory) = factory else { continue };
            let span = decls[index]
                .stage_type
                .as_ref()
                .map_or(decls[index].span.clone(), |t| t.span());
            let key = format!("stages[{index}].type");
            let linked = self.check_link(decls, typed, index, factory.as_ref(), &span);
            // A stage whose type is unknown may produce anything: no
            // requirement is judged after it (its error is reported), nor
            // for a stage that nothing reaches (said once, above).
            let judged = linked && typed[..index].iter().all(Option::is_some);
            for needed in factory.requires() {
                if judged && !upstream.contains(needed) {
                    let producers = self.types_producing(*needed);
                    self.issues.push(
                        Some(span.clone()),
                        key.clone(),
                        format!(
                            "type {:?} needs {}, but no stage before it produces that; put it after a stage that does ({producers})",
                            factory.type_name(),
                            needed.name()
                        ),
                    );
                }
            }
            upstream.extend(factory.outputs().iter().copied());
        }
    }

    /// Whether something reaches stage `index`: the first stage takes the
    /// request, a later one something its predecessor produces. Reports
    /// the issue and returns false otherwise (true when the predecessor's
    /// type is unknown: that is its own issue).
    fn check_link(
        &mut self,
        decls: &[StageDecl],
        typed: &[Option<Arc<dyn StageFactory>>],
        index: usize,
        factory: &dyn StageFactory,
        span: &std::ops::Range<usize>,
    ) -> bool {
        let key = format!("stages[{index}].type");
        let takes = kinds(factory.inputs());
        if index == 0 {
            if factory.inputs().contains(&ArtifactKind::Request) {
                return true;
            }
            let suggest = self.types_taking(&[ArtifactKind::Request]);
            self.issues.push(
                Some(span.clone()),
                key,
                format!(
                    "the first stage receives the run's `request`, but type {:?} takes only {takes}; start the pipeline with a stage that takes request ({suggest})",
                    factory.type_name()
                ),
            );
            return false;
        }
        let Some(previous) = &typed[index - 1] else {
            return true;
        };
        let produced = previous.outputs();
        if factory.inputs().iter().any(|k| produced.contains(k)) {
            return true;
        }
        let suggest = self.types_taking(produced);
        let prev_id = decls[index - 1]
            .id
            .as_ref()
            .map_or(format!("stages[{}]", index - 1), |i| i.get_ref().clone());
        self.issues.push(
            Some(span.clone()),
            key,
            format!(
                "type {:?} takes {takes}, but the stage before it ({prev_id:?}, type {:?}) produces only {}; nothing would reach this stage (types that take those: {suggest})",
                factory.type_name(),
                previous.type_name(),
                kinds(produced)
            ),
        );
        false
    }

    fn types_producing(&self, kind: ArtifactKind) -> String {
        let names = self.types_where(|f| f.outputs().contains(&kind));
        format!("types that produce it: {names}")
    }

    fn types_taking(&self, kinds_given: &[ArtifactKind]) -> String {
        self.types_where(|f| f.inputs().iter().any(|k| kinds_given.contains(k)))
    }

    /// The registered type names whose factory satisfies `keep`, listed.
    fn types_where(&self, keep: impl Fn(&dyn StageFactory) -> bool) -> String {
        let names: Vec<&str> = self
            .registry
            .names()
            .into_iter()
            .filter(|n| self.registry.get(n).is_some_and(|f| keep(f.as_ref())))
            .collect();
        params::list_or_none(&names)
    }
}

/// serde's messages for a whole config table end in ``\nin `path` ``: turn
/// that into the key, so that the issue gets the line of the value.
fn locate_serde_path(key: String, message: String) -> (String, String) {
    if key == "config" {
        if let Some((text, path)) = message.rsplit_once("\nin `") {
            if let Some(path) = path.strip_suffix('`') {
                if !path.is_empty() && !path.contains('\n') {
                    return (path.to_string(), text.trim().to_string());
                }
            }
        }
    }
    (key, message.replace('\n', " "))
}

/// Whether the parser already reported `key` (a value of the wrong type),
/// so that no default is assumed for it.
fn decl_has_bad_value(issues: &Issues, key: &str) -> bool {
    issues.list.iter().any(|i| i.key == key)
}

fn kinds(kinds: &[ArtifactKind]) -> String {
    if kinds.is_empty() {
        return "nothing".to_string();
    }
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The parameter name of a string that is exactly one `${name}`.
fn whole_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix("${")?.strip_suffix('}')?;
    (!name.contains('}')).then_some(name)
}

fn param_to_toml(value: ParamValue) -> toml::Value {
    match value {
        ParamValue::Bool(b) => toml::Value::Boolean(b),
        ParamValue::Int(i) => toml::Value::Integer(i),
        ParamValue::Float(f) => toml::Value::Float(f),
        ParamValue::Str(s) => toml::Value::String(s),
        // Shown as text in the table; a stage that takes the typed value
        // finds it through `BuildContext::bound_param`.
        ParamValue::Target(t) => toml::Value::String(t.to_string()),
    }
}
