//! Pipeline parameters: applying `--set key=value` overrides to the declared
//! defaults, and substituting `${name}` references in string values (of
//! `[params]` and `[stages.config]`). Every problem is recorded, none stops
//! the others.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::pipeline::artifact::{ParamValue, Params};
use crate::pipeline::config::{closest, Issues, ParamDecl};

/// A string after substitution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Substituted {
    /// The string was exactly one `${name}`: the parameter's value, typed.
    Whole(ParamValue),
    /// Text with every reference replaced.
    Text(String),
}

/// Replaces every `${name}` in `text` using `lookup`; `$${` is a literal `${`.
///
/// # Errors
/// One message per unknown name or unterminated reference.
pub(crate) fn substitute(
    text: &str,
    lookup: &mut dyn FnMut(&str) -> Option<ParamValue>,
) -> Result<Substituted, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut whole = None;
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            errors.push(format!(
                "unterminated `${{` in {text:?}; write `${{name}}`, or `$${{` for a literal `${{`"
            ));
            rest = "";
            break;
        };
        let name = &after[..end];
        match lookup(name) {
            Some(value) => {
                if at == 0 && end + 3 == rest.len() && out.is_empty() && rest.len() == text.len() {
                    whole = Some(value.clone());
                }
                out.push_str(&value.as_text());
            }
            None => errors.push(format!("unknown parameter `${{{name}}}`")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(match whole {
        Some(value) => Substituted::Whole(value),
        None => Substituted::Text(out),
    })
}

/// What a caller sets on a pipeline's declared parameters.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set key=value`: text, read as the type of the parameter's default.
    pub text: Vec<(String, String)>,
    /// Values the caller holds typed already (a restore's target from the
    /// command line's flags): each takes its parameter's place as it is,
    /// never through text. A parameter may not be set both ways.
    pub typed: Vec<(String, ParamValue)>,
}

impl Overrides {
    /// Text overrides only.
    pub fn text(text: &[(String, String)]) -> Self {
        Overrides {
            text: text.to_vec(),
            typed: Vec::new(),
        }
    }
}

/// The parameters of a pipeline after overrides and references.
pub(crate) struct Resolved {
    /// Every parameter that resolved.
    pub values: Params,
    /// Declared parameters that did not (already reported).
    pub failed: BTreeSet<String>,
}

impl Resolved {
    /// Every declared name, sorted.
    pub fn declared(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .values
            .keys()
            .chain(self.failed.iter())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }
}

/// The declared parameters with overrides applied and references resolved.
/// Problems go to `issues`.
pub(crate) fn resolve(decls: &[ParamDecl], overrides: &Overrides, issues: &mut Issues) -> Resolved {
    let mut raw: BTreeMap<String, (ParamValue, Option<Range<usize>>)> = decls
        .iter()
        .map(|d| {
            (
                d.name.get_ref().clone(),
                (d.value.get_ref().clone(), Some(d.value.span())),
            )
        })
        .collect();
    let mut known: Vec<&str> = decls.iter().map(|d| d.name.get_ref().as_str()).collect();
    known.sort_unstable();
    let undeclared = |key: &str, issues: &mut Issues| {
        let hint = closest(key, &known)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        issues.push(
            None,
            format!("--set {key}"),
            format!(
                "the pipeline has no parameter `{key}`{hint}; declared parameters: {}",
                list_or_none(&known)
            ),
        );
    };
    for (key, value) in &overrides.text {
        if overrides.typed.iter().any(|(k, _)| k == key) {
            issues.push(
                None,
                format!("--set {key}"),
                format!(
                    "`{key}` is set twice, by --set {key}={value} and by the command's own option; give one of them"
                ),
            );
            continue;
        }
        let Some((current, _)) = raw.get(key) else {
            undeclared(key, issues);
            continue;
        };
        match parse_like(current, value) {
            Ok(parsed) => {
                raw.insert(key.clone(), (parsed, None));
            }
            Err(expected) => issues.push(
                None,
                format!("--set {key}"),
                format!(
                    "{value:?} is not {expected}; the parameter's default ({}) sets its type",
                    current.as_text()
                ),
            ),
        }
    }

    for (key, value) in &overrides.typed {
        if !raw.contains_key(key) {
            undeclared(key, issues);
            continue;
        }
        raw.insert(key.clone(), (value.clone(), None));
    }

    let mut resolver = Resolver {
        raw: &raw,
        done: Params::new(),
        failed: Default::default(),
        visiting: Vec::new(),
        known: &known,
        issues,
    };
    for name in raw.keys() {
        resolver.resolve(name);
    }
    Resolved {
        values: resolver.done,
        failed: resolver.failed,
    }
}

/// Parses an override to the type of the current value; on failure returns
/// what was expected.
fn parse_like(current: &ParamValue, text: &str) -> Result<ParamValue, &'static str> {
    let text_trimmed = text.trim();
    match current {
        ParamValue::Str(_) => Ok(ParamValue::Str(text.to_string())),
        ParamValue::Int(_) => text_trimmed
            .parse()
            .map(ParamValue::Int)
            .map_err(|_| "an integer"),
        ParamValue::Float(_) => text_trimmed
            .parse()
            .map(ParamValue::Float)
            .map_err(|_| "a number"),
        ParamValue::Bool(_) => match text_trimmed {
            "true" => Ok(ParamValue::Bool(true)),
            "false" => Ok(ParamValue::Bool(false)),
            _ => Err("a boolean (`true` or `false`)"),
        },
        ParamValue::Target(_) => crate::plan::Target::parse(text)
            .map(ParamValue::Target)
            .map_err(|_| "a target (`latest`, `txid:N`, `backup:ID` or a time)"),
    }
}

pub(crate) fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

struct Resolver<'a> {
    raw: &'a BTreeMap<String, (ParamValue, Option<Range<usize>>)>,
    done: Params,
    failed: BTreeSet<String>,
    visiting: Vec<String>,
    known: &'a [&'a str],
    issues: &'a mut Issues,
}

impl Resolver<'_> {
    /// Resolves one parameter; `None` when it (or what it references) failed.
    fn resolve(&mut self, name: &str) -> Option<ParamValue> {
        if let Some(value) = self.done.get(name) {
            return Some(value.clone());
        }
        if self.failed.contains(name) {
            return None;
        }
        let (value, span) = self.raw.get(name)?.clone();
        if let Some(at) = self.visiting.iter().position(|n| n == name) {
            let mut cycle = self.visiting[at..].to_vec();
            cycle.push(name.to_string());
            self.issues.push(
                span,
                format!("params.{name}"),
                format!(
                    "parameters reference each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            );
            self.failed.insert(name.to_string());
            return None;
        }
        let ParamValue::Str(text) = &value else {
            self.done.insert(name.to_string(), value.clone());
            return Some(value);
        };
        self.visiting.push(name.to_string());
        let mut unresolved_dependency = false;
        let result = substitute(text, &mut |reference| {
            if !self.raw.contains_key(reference) {
                return None;
            }
            let value = self.resolve(reference);
            if value.is_none() {
                unresolved_dependency = true;
                // Reported where it failed; substitute something to go on.
                return Some(ParamValue::Str(String::new()));
            }
            value
        });
        self.visiting.pop();
        let result = match result {
            Ok(_) if unresolved_dependency => None,
            // A parameter keeps the type of its default: text stays text.
            Ok(Substituted::Whole(v)) => Some(ParamValue::Str(v.as_text())),
            Ok(Substituted::Text(t)) => Some(ParamValue::Str(t)),
            Err(errors) => {
                for e in errors {
                    let message = if span.is_some() {
                        format!("{e}; declared parameters: {}", list_or_none(self.known))
                    } else {
                        format!(
                            "{e} (in the --set value); declared parameters: {}",
                            list_or_none(self.known)
                        )
                    };
                    self.issues
                        .push(span.clone(), format!("params.{name}"), message);
                }
                None
            }
        };
        match &result {
            Some(v) => {
                self.done.insert(name.to_string(), v.clone());
            }
            None => {
                self.failed.insert(name.to_string());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<ParamValue> {
        match name {
            "a" => Some(ParamValue::Str("x".into())),
            "n" => Some(ParamValue::Int(4)),
            _ => None,
        }
    }

    #[test]
    fn substitutes_text_and_whole_values() {
        assert_eq!(
            substitute("p/${a}/${n}", &mut lookup),
            Ok(Substituted::Text("p/x/4".into()))
        );
        assert_eq!(
            substitute("${n}", &mut lookup),
            Ok(Substituted::Whole(ParamValue::Int(4)))
        );
        assert_eq!(
            substitute("$${a} ${a}", &mut lookup),
            Ok(Substituted::Text("${a} x".into()))
        );
        assert_eq!(
            substitute("no refs $ {", &mut lookup),
            Ok(Substituted::Text("no refs $ {".into()))
        );
    }

    #[test]
    fn reports_every_unknown_reference() {
        let errors = substitute("${zz}/${a}/${yy}", &mut lookup).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("${zz}"));
        assert!(errors[1].contains("${yy}"));
        assert!(substitute("${a", &mut lookup).unwrap_err()[0].contains("unterminated"));
    }

    #[test]
    fn overrides_parse_to_the_default_type() {
        assert_eq!(
            parse_like(&ParamValue::Int(1), " 12 "),
            Ok(ParamValue::Int(12))
        );
        assert!(parse_like(&ParamValue::Int(1), "abc").is_err());
        assert_eq!(
            parse_like(&ParamValue::Float(1.0), "2"),
            Ok(ParamValue::Float(2.0))
        );
        assert_eq!(
            parse_like(&ParamValue::Bool(false), "true"),
            Ok(ParamValue::Bool(true))
        );
        assert!(parse_like(&ParamValue::Bool(false), "yes").is_err());
    }
}
