//! How a stage reads a setting: its own `[stages.config]` key when the
//! pipeline gives one, otherwise the pipeline parameter of the same name
//! (overridable with `--set`), otherwise a default. Values come either as
//! typed TOML (config) or as parameters, which are typed by their default.

use genesis_core::pipeline::{ParamValue, Params};
use genesis_core::{Error, Result};

/// A text setting: config, then parameter.
pub(crate) fn text(config: &Option<String>, params: &Params, key: &str) -> Option<String> {
    config
        .clone()
        .or_else(|| params.get(key).map(ParamValue::as_text))
}

/// A boolean setting: config, then parameter (`true`/`false` text accepted), then `default`.
pub(crate) fn flag(
    config: Option<bool>,
    params: &Params,
    key: &str,
    default: bool,
) -> Result<bool> {
    if let Some(b) = config {
        return Ok(b);
    }
    match params.get(key) {
        None => Ok(default),
        Some(ParamValue::Bool(b)) => Ok(*b),
        Some(other) => match other.as_text().trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            t => Err(Error::Usage(format!(
                "parameter `{key}` must be true or false, not {t:?}"
            ))),
        },
    }
}

/// A number setting: config, then parameter, then `default`.
pub(crate) fn number(config: Option<f64>, params: &Params, key: &str, default: f64) -> Result<f64> {
    if let Some(x) = config {
        return Ok(x);
    }
    match params.get(key) {
        None => Ok(default),
        Some(ParamValue::Float(f)) => Ok(*f),
        Some(ParamValue::Int(i)) => Ok(*i as f64),
        Some(other) => other.as_text().trim().parse().map_err(|_| {
            Error::Usage(format!(
                "parameter `{key}` must be a number, not {:?}",
                other.as_text()
            ))
        }),
    }
}
