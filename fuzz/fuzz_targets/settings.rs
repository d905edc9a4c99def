//! The settings file (`genesis-recovery.toml`): `Settings::load` on a file
//! holding the bytes, then the durations in it read as the capture reads
//! them (`parse_duration`); and the input's first line read as the values
//! of `--ago`/`--interval` and `--timestamp` are.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use genesis_core::settings::Settings;
use genesis_core::time::{parse_duration, parse_timestamp};
use libfuzzer_sys::fuzz_target;

fn settings_file() -> &'static PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory for the fuzzed settings");
        let path = dir.path().join("genesis-recovery.toml");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let line = text.lines().next().unwrap_or_default();
        let _ = parse_duration(line);
        let _ = parse_timestamp(line);
    }
    let path = settings_file();
    std::fs::write(path, data).expect("write the fuzzed settings");
    if let Ok(s) = Settings::load(Some(path)) {
        for d in [&s.capture.interval, &s.capture.snapshot_interval]
            .into_iter()
            .flatten()
        {
            let _ = parse_duration(d);
        }
    }
});
