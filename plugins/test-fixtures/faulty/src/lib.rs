//! Test fixture for the plugin host: a stage that misbehaves on request, so
//! the tests can check that errors and panics of a plugin fail the stage with
//! the plugin's message and leave the host running.
//!
//! Config keys (all optional): `panic_on_create`, `fail_on_create`,
//! `panic_on_process`, `fail_on_process` (booleans), and `sleep_ms` (an
//! integer: sleep that long on every input, a planted slow stage). Without
//! them it answers every input with `{}`.

use genesis_plugin_sdk::{serde_json::Value, PluginStage};

/// The misbehaving stage.
pub struct Faulty {
    panic_on_process: bool,
    fail_on_process: bool,
    sleep_ms: u64,
}

fn flag(config: &Value, key: &str) -> bool {
    config.get(key).and_then(Value::as_bool).unwrap_or(false)
}

impl PluginStage for Faulty {
    fn new(config: Value) -> Result<Self, String> {
        if flag(&config, "panic_on_create") {
            panic!("faulty fixture: panic_on_create was set");
        }
        if flag(&config, "fail_on_create") {
            return Err("faulty fixture: fail_on_create was set".into());
        }
        Ok(Faulty {
            panic_on_process: flag(&config, "panic_on_process"),
            fail_on_process: flag(&config, "fail_on_process"),
            sleep_ms: config.get("sleep_ms").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    fn process(&mut self, _input: &[u8]) -> Result<Vec<u8>, String> {
        if self.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.sleep_ms));
        }
        if self.panic_on_process {
            panic!("faulty fixture: panic_on_process was set");
        }
        if self.fail_on_process {
            return Err("faulty fixture: fail_on_process was set".into());
        }
        Ok(b"{}".to_vec())
    }
}

genesis_plugin_sdk::export_stage!(Faulty, "test-faulty");
