//! A plugin stage that looks at nothing and reports nothing. It exists to
//! measure what a plugin stage costs a restore (the host's encoding of the
//! staged database, one call across the boundary, decoding the answer), so it
//! does the least possible work: it does not even parse its input.

use genesis_plugin_sdk::{serde_json::Value, PluginStage};

/// The pass-through stage: answers every input with the empty output `{}`.
pub struct Passthrough;

impl PluginStage for Passthrough {
    fn new(config: Value) -> Result<Self, String> {
        match config {
            Value::Object(map) if map.is_empty() => Ok(Passthrough),
            Value::Object(map) => Err(format!(
                "passthrough takes no config, got key(s): {}",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            other => Err(format!("the config must be a table, got {other}")),
        }
    }

    fn process(&mut self, _input: &[u8]) -> Result<Vec<u8>, String> {
        Ok(b"{}".to_vec())
    }
}

genesis_plugin_sdk::export_stage!(Passthrough, "passthrough");
