//! Pipeline files: `compile_str` (TOML parse into the loose form, then the
//! compile against the built-in stage registry: parameters, `--set`
//! overrides, references, every stage's config) and the summary
//! `pipelines check` prints. Plugins are never loaded (`NoPlugins`).
#![no_main]

use std::path::Path;

use genesis_core::pipeline::{compile_str, NoPlugins, StageRegistry};
use genesis_fuzz::split_at_nul;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static REGISTRY: StageRegistry = genesis_stages::registry();
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = split_at_nul(data);
    let (sets, toml) = match rest {
        Some(toml) => (first, toml),
        None => (&b""[..], first),
    };
    let Ok(text) = std::str::from_utf8(toml) else {
        return;
    };
    let overrides: Vec<(String, String)> = String::from_utf8_lossy(sets)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    REGISTRY.with(|registry| {
        if let Ok(p) = compile_str(
            text,
            Path::new("fuzz.toml"),
            registry,
            &NoPlugins,
            &overrides,
        ) {
            let _ = serde_json::to_string(&p.summary());
        } else if let Err(e) = compile_str(text, Path::new("fuzz.toml"), registry, &NoPlugins, &[])
        {
            let _ = e.to_string();
        }
    });
});
