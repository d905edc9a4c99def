//! What the restore bench adds for compaction (issue 14): the peak RSS of a
//! restore run as a child process of the real binary, as the restore itself
//! reports it (`peak_rss_bytes`, its `VmHWM`: `wait4`'s `ru_maxrss` would
//! also count this bench's own memory, which the child shares until exec).

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs the binary with `--json` and `args`; returns (wall seconds, peak RSS in MiB).
pub fn child_peak_rss(bin: &Path, args: &[&str]) -> (f64, f64) {
    let t = std::time::Instant::now();
    let v = child_json(bin, args).expect("run the binary");
    let secs = t.elapsed().as_secs_f64();
    let rss = v["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
    (secs, rss)
}

/// Runs the binary with `--json` and `args` to success; returns its JSON document.
///
/// # Errors
/// The binary cannot start, exits with a failure (its stderr's last line
/// and its document, if any) or prints no JSON document.
pub fn child_json(bin: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(bin)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let doc = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} {args:?} failed ({}): {} {}",
            bin.display(),
            out.status,
            err.lines().last().unwrap_or("no output on stderr"),
            doc.trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{} {args:?} printed no JSON document ({e}): {doc}",
            bin.display()
        )
    })
}
