//! Printing results: one JSON document with `--json`, a short human summary otherwise.

use std::io::Write;

use serde::Serialize;

use super::Ctx;

/// Prints `value` as JSON when asked, else the human text.
pub fn print<T: Serialize>(
    ctx: &Ctx,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = if ctx.json {
        serde_json::to_string_pretty(value)?
    } else {
        human()
    };
    if !text.is_empty() {
        write_stdout(&text)?;
    }
    Ok(())
}

/// Writes a line to stdout; a closed pipe (`| head`) ends the output quietly
/// instead of panicking.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Human-readable byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
