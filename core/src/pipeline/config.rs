//! The loose form of a pipeline file: what the TOML says, with the place
//! (byte span) of every value, before anything is checked against the stage
//! registry. The compiler ([`super::compile`]) turns it into a checked
//! [`super::CompiledPipeline`]; this module only reads the document's shape
//! (which keys exist, of which TOML type) and reports every unknown key and
//! every value of the wrong type, without stopping at the first.
//!
//! # The pipeline file format
//!
//! ```toml
//! name = "restore"                       # required, a string
//! description = "Point-in-time restore"  # optional
//!
//! [params]                               # optional; parameters and their defaults
//! target = "latest"                      # values: string, integer, float or bool
//! repository = ".genesis/backups"
//! staging_dir = "${repository}/staging"  # strings may reference other parameters
//!
//! [[stages]]                             # at least one; they run as a linear chain
//! id = "fetch"                # required, unique, made of [a-z0-9_-]
//! type = "fetch"              # a registered stage type, or "plugin"
//! workers = 2                 # optional, 1..=1024 (default: number of CPUs)
//! channel_capacity = 4        # optional, 1..=65536 (default 4)
//! on_error = "fail"           # optional, "fail" (default) or "skip"
//! [stages.config]             # optional free table the stage type reads itself
//! repository = "${repository}"
//!
//! [[stages]]
//! id = "audit"
//! type = "plugin"
//! library = "../plugins/libaudit.so"  # only with type = "plugin"; relative to this file
//! ```
//!
//! * **Unknown keys** at the top level or in a `[[stages]]` table are errors.
//!   `[stages.config]` is free: the stage type checks it when it is built.
//! * **Parameters** are overridden from the command line with
//!   `--set key=value`; the key must be declared in `[params]` and the value
//!   is parsed to the type of the default (`true`/`false` for booleans).
//! * **References**: string values in `[params]` and `[stages.config]` may
//!   contain `${name}`, replaced at compile time by the parameter's value
//!   (after overrides). In `[stages.config]`, a string that is exactly one
//!   reference (`"${workers}"`) takes the parameter's type, so an integer
//!   parameter can feed an integer setting; elsewhere the value is inserted
//!   as text. `$${` stands for a literal `${`. An unknown name is an error.
//! * **The chain**: the runner sends one `request` artifact (the resolved
//!   parameters) to the first stage; every later stage receives what the
//!   stage before it emits. The compiler checks that the first stage takes
//!   `request` and that each stage takes at least one kind its predecessor
//!   produces.
//! * **`on_error`**: `fail` stops the whole run at the stage's first error
//!   (the run's error is that one); `skip` logs an error returned by
//!   processing one artifact, drops that artifact and goes on (the report
//!   counts the skipped items). Errors from the stage's final step, panics
//!   and cancellations always fail the run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::ConfigIssue;
use crate::pipeline::artifact::ParamValue;

/// Keys allowed at the top level of a pipeline file.
pub const TOP_LEVEL_KEYS: &[&str] = &["name", "description", "params", "stages"];
/// Keys allowed in a `[[stages]]` table.
pub const STAGE_KEYS: &[&str] = &[
    "id",
    "type",
    "library",
    "workers",
    "channel_capacity",
    "on_error",
    "config",
];

/// A pipeline file as written, every value with its byte span.
#[derive(Debug, Clone, Default)]
pub struct PipelineFile {
    pub name: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    /// Declared parameters, in file order.
    pub params: Vec<ParamDecl>,
    /// The `[[stages]]` tables, in file order.
    pub stages: Vec<StageDecl>,
}

/// One `[params]` entry.
#[derive(Debug, Clone)]
pub struct ParamDecl {
    pub name: Spanned<String>,
    pub value: Spanned<ParamValue>,
}

/// One `[[stages]]` table. Fields of the wrong TOML type are reported while
/// parsing and left `None` here.
#[derive(Debug, Clone)]
pub struct StageDecl {
    /// Span of the table (its `[[stages]]` header).
    pub span: Range<usize>,
    pub id: Option<Spanned<String>>,
    pub stage_type: Option<Spanned<String>>,
    pub library: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    pub channel_capacity: Option<Spanned<i64>>,
    pub on_error: Option<Spanned<String>>,
    pub config: ConfigDecl,
}

/// A stage's `[stages.config]` table and the span of each value in it.
#[derive(Debug, Clone, Default)]
pub struct ConfigDecl {
    pub table: toml::Table,
    /// Span of the table itself, when present in the file.
    pub span: Option<Range<usize>>,
    /// Span of every value, by path relative to the table (`a.b`, `list[2]`).
    pub spans: BTreeMap<String, Range<usize>>,
}

impl ConfigDecl {
    /// The span of the value at `path`, or of its nearest enclosing value.
    pub fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut path = path;
        loop {
            if let Some(span) = self.spans.get(path) {
                return Some(span.clone());
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.span.clone(),
            }
        }
    }
}

/// Collects configuration issues of one file, turning byte offsets into lines.
pub(crate) struct Issues {
    file: std::path::PathBuf,
    line_starts: Vec<usize>,
    pub(crate) list: Vec<ConfigIssue>,
}

impl Issues {
    pub(crate) fn new(file: &Path, text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Issues {
            file: file.to_path_buf(),
            line_starts,
            list: Vec::new(),
        }
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// Records one issue; `span` gives its line when known.
    pub(crate) fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.list.push(ConfigIssue {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// The issues, document-level ones first, then by line.
    pub(crate) fn into_sorted(mut self) -> Vec<ConfigIssue> {
        self.list.sort_by_key(|i| i.line);
        self.list
    }
}

/// Parses the text of a pipeline file into its loose form, recording every
/// problem of shape (unknown keys, wrong types) in `issues`. Returns `None`
/// when the text is not valid TOML (each syntax error is then recorded with
/// its line, and nothing else is checked: the rest would be guesswork).
pub(crate) fn parse(text: &str, issues: &mut Issues) -> Option<PipelineFile> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let near = e
                .span()
                .and_then(|span| text.get(span))
                .filter(|t| !t.trim().is_empty() && t.len() <= 40 && !t.contains('\n'))
                .map(|t| format!(" (at `{}`)", t.trim()))
                .unwrap_or_default();
            issues.push(
                e.span(),
                "(toml)",
                format!("invalid TOML: {}{near}", e.message().trim()),
            );
        }
        return None;
    }
    let mut file = PipelineFile::default();
    for (key, value) in doc.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "name" => file.name = string(&value, "name", issues),
            "description" => file.description = string(&value, "description", issues),
            "params" => file.params = params(value, issues),
            "stages" => file.stages = stages(value, issues),
            other => unknown_key(other, "", TOP_LEVEL_KEYS, key_span, issues),
        }
    }
    Some(file)
}

fn params(value: Spanned<DeValue<'_>>, issues: &mut Issues) -> Vec<ParamDecl> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        issues.push(
            Some(span),
            "params",
            "must be a table of parameters (`[params]` followed by `name = value` lines)",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in table {
        let name = key.get_ref().to_string();
        let key_path = format!("params.{name}");
        if !is_param_name(&name) {
            issues.push(
                Some(key.span()),
                &key_path,
                "parameter names are made of letters, digits, `_` and `-`",
            );
            continue;
        }
        let value_span = value.span();
        let parsed = match value.get_ref() {
            DeValue::String(s) => Some(ParamValue::Str(s.to_string())),
            DeValue::Boolean(b) => Some(ParamValue::Bool(*b)),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(i) => Some(ParamValue::Int(i)),
                Err(_) => {
                    issues.push(
                        Some(value_span.clone()),
                        &key_path,
                        "integer out of range (a 64-bit signed integer is expected)",
                    );
                    None
                }
            },
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(f) => Some(ParamValue::Float(f)),
                Err(_) => {
                    issues.push(Some(value_span.clone()), &key_path, "invalid float");
                    None
                }
            },
            other => {
                issues.push(
                    Some(value_span.clone()),
                    &key_path,
                    format!(
                        "a parameter is a string, integer, float or boolean, not {}",
                        other.type_str()
                    ),
                );
                None
            }
        };
        if let Some(parsed) = parsed {
            out.push(ParamDecl {
                name: Spanned::new(key.span(), name),
                value: Spanned::new(value_span, parsed),
            });
        }
    }
    out
}

/// Whether `name` can be a parameter name (and thus appear in `${name}`).
pub fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn stages(value: Spanned<DeValue<'_>>, issues: &mut Issues) -> Vec<StageDecl> {
    let span = value.span();
    let DeValue::Array(array) = value.into_inner() else {
        issues.push(
            Some(span),
            "stages",
            "must be an array of tables: write each stage as a `[[stages]]` table",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (index, element) in array.iter().enumerate() {
        let prefix = format!("stages[{index}]");
        let DeValue::Table(table) = element.get_ref() else {
            issues.push(
                Some(element.span()),
                &prefix,
                "a stage must be a table: write it as a `[[stages]]` table",
            );
            continue;
        };
        out.push(stage(table, element.span(), &prefix, issues));
    }
    out
}

fn stage(table: &DeTable<'_>, span: Range<usize>, prefix: &str, issues: &mut Issues) -> StageDecl {
    let mut decl = StageDecl {
        span,
        id: None,
        stage_type: None,
        library: None,
        workers: None,
        channel_capacity: None,
        on_error: None,
        config: ConfigDecl::default(),
    };
    for (key, value) in table {
        let name = key.get_ref().as_ref();
        let path = format!("{prefix}.{name}");
        match name {
            "id" => decl.id = string(value, &path, issues),
            "type" => decl.stage_type = string(value, &path, issues),
            "library" => decl.library = string(value, &path, issues),
            "on_error" => decl.on_error = string(value, &path, issues),
            "workers" => decl.workers = integer(value, &path, issues),
            "channel_capacity" => decl.channel_capacity = integer(value, &path, issues),
            "config" => decl.config = config(value, &path, issues),
            other => unknown_key(other, prefix, STAGE_KEYS, key.span(), issues),
        }
    }
    decl
}

fn config(value: &Spanned<DeValue<'_>>, path: &str, issues: &mut Issues) -> ConfigDecl {
    if !value.get_ref().is_table() {
        issues.push(
            Some(value.span()),
            path,
            format!(
                "must be a table (`[stages.config]`), not {}",
                value.get_ref().type_str()
            ),
        );
        return ConfigDecl::default();
    }
    let mut spans = BTreeMap::new();
    record_spans(value.get_ref(), "", &mut spans);
    match toml::Table::deserialize(value.clone().into_deserializer()) {
        Ok(table) => ConfigDecl {
            table,
            span: Some(value.span()),
            spans,
        },
        Err(e) => {
            issues.push(
                e.span().or(Some(value.span())),
                path,
                e.message().trim().to_string(),
            );
            ConfigDecl::default()
        }
    }
}

fn record_spans(value: &DeValue<'_>, path: &str, spans: &mut BTreeMap<String, Range<usize>>) {
    match value {
        DeValue::Table(table) => {
            for (key, value) in table {
                let child = if path.is_empty() {
                    key.get_ref().to_string()
                } else {
                    format!("{path}.{}", key.get_ref())
                };
                spans.insert(child.clone(), value.span());
                record_spans(value.get_ref(), &child, spans);
            }
        }
        DeValue::Array(array) => {
            for (i, value) in array.iter().enumerate() {
                let child = format!("{path}[{i}]");
                spans.insert(child.clone(), value.span());
                record_spans(value.get_ref(), &child, spans);
            }
        }
        _ => {}
    }
}

fn string(
    value: &Spanned<DeValue<'_>>,
    path: &str,
    issues: &mut Issues,
) -> Option<Spanned<String>> {
    match value.get_ref() {
        DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
        other => {
            issues.push(
                Some(value.span()),
                path,
                format!("must be a string, not {}", other.type_str()),
            );
            None
        }
    }
}

fn integer(value: &Spanned<DeValue<'_>>, path: &str, issues: &mut Issues) -> Option<Spanned<i64>> {
    let parsed = match value.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    };
    if parsed.is_none() {
        issues.push(
            Some(value.span()),
            path,
            format!(
                "must be a positive integer, not {}",
                describe(value.get_ref())
            ),
        );
    }
    parsed.map(|i| Spanned::new(value.span(), i))
}

fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("{i} (out of range)"),
        other => other.type_str().to_string(),
    }
}

fn unknown_key(key: &str, prefix: &str, allowed: &[&str], span: Range<usize>, issues: &mut Issues) {
    let path = if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    };
    let hint = match closest(key, allowed) {
        Some(near) => format!(" (did you mean `{near}`?)"),
        None => String::new(),
    };
    let place = if prefix.is_empty() {
        "at the top level".to_string()
    } else {
        "in a stage".to_string()
    };
    issues.push(
        Some(span),
        path,
        format!(
            "unknown key `{key}` {place}{hint}; allowed keys: {}",
            allowed.join(", ")
        ),
    );
}

/// The candidate closest to `word` (edit distance at most 2), if any.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Option<PipelineFile>, Vec<ConfigIssue>) {
        let mut issues = Issues::new(Path::new("p.toml"), text);
        let file = parse(text, &mut issues);
        (file, issues.into_sorted())
    }

    #[test]
    fn lines_are_one_based() {
        let issues = Issues::new(Path::new("p.toml"), "a\nb\n\nc");
        assert_eq!(issues.line_of(0), 1);
        assert_eq!(issues.line_of(2), 2);
        assert_eq!(issues.line_of(4), 3);
        assert_eq!(issues.line_of(5), 4);
    }

    #[test]
    fn reads_stages_and_config_spans() {
        let text = "name = \"x\"\n[params]\nn = 3\n[[stages]]\nid = \"a\"\ntype = \"t\"\n[stages.config]\nk = { deep = [1, \"x\"] }\n";
        let (file, issues) = parse_text(text);
        assert!(issues.is_empty(), "{issues:?}");
        let file = file.expect("parsed");
        assert_eq!(file.params[0].value.get_ref(), &ParamValue::Int(3));
        let stage = &file.stages[0];
        assert_eq!(stage.id.as_ref().map(|s| s.get_ref().as_str()), Some("a"));
        let lines = Issues::new(Path::new("p.toml"), text);
        let span = stage.config.span_of("k.deep[1]").expect("span");
        assert_eq!(lines.line_of(span.start), 8);
        assert!(stage.config.table.contains_key("k"));
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(closest("worker", STAGE_KEYS), Some("workers"));
        assert_eq!(closest("zzzzzz", STAGE_KEYS), None);
    }

    #[test]
    fn wrong_types_are_all_reported() {
        let text = "name = 1\n[[stages]]\nid = 2\nworkers = \"many\"\nconfig = 3\n";
        let (_, issues) = parse_text(text);
        let got: Vec<_> = issues.iter().map(|i| (i.line, i.key.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "name"),
                (Some(3), "stages[0].id"),
                (Some(4), "stages[0].workers"),
                (Some(5), "stages[0].config"),
            ]
        );
    }
}
