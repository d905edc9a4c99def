//! Printing results: one JSON document with `--json`, a short human summary otherwise.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::Ctx;

/// Set once a command has printed its JSON document.
static DOCUMENT_PRINTED: AtomicBool = AtomicBool::new(false);

/// Whether a JSON document was printed already (so that a failure prints
/// none of its own: `--json` always prints exactly one).
pub fn document_printed() -> bool {
    DOCUMENT_PRINTED.load(Ordering::SeqCst)
}

/// Prints `value` as JSON when asked, else the human text.
pub fn print<T: Serialize>(
    ctx: &Ctx,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = if ctx.json {
        DOCUMENT_PRINTED.store(true, Ordering::SeqCst);
        serde_json::to_string_pretty(value)?
    } else {
        human()
    };
    if !text.is_empty() {
        write_stdout(&text)?;
    }
    Ok(())
}

/// Writes a JSON document (already encoded) on stdout, once.
pub fn write_document(text: &str) -> anyhow::Result<()> {
    DOCUMENT_PRINTED.store(true, Ordering::SeqCst);
    write_stdout(text)
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
