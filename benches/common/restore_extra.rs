//! What the restore bench adds for compaction (issue 14): the peak RSS of a
//! restore run as a child process of the real binary, as the restore itself
//! reports it (`peak_rss_bytes`, its `VmHWM`: `wait4`'s `ru_maxrss` would
//! also count this bench's own memory, which the child shares until exec).

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs the binary with `--json` and `args`; returns (wall seconds, peak RSS in MiB).
pub fn child_peak_rss(bin: &Path, args: &[&str]) -> (f64, f64) {
    let t = std::time::Instant::now();
    let out = Command::new(bin)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run the binary");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{bin:?} {args:?} failed ({})",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON result");
    let rss = v["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
    (secs, rss)
}
