//! Printing results: one JSON document with `--json`, a short human summary otherwise.

use std::cell::{Cell, RefCell};
use std::io::Write;

use serde::Serialize;

use super::Ctx;

thread_local! {
    /// Set once a command has printed its JSON document. Per thread and
    /// reset by each run: the Python extension runs many commands in one
    /// process, on whichever thread calls.
    static DOCUMENT_PRINTED: Cell<bool> = const { Cell::new(false) };
    /// While set, stdout text is kept here instead of printed (the Python
    /// API's calls: the document becomes the call's return value).
    static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether a JSON document was printed already (so that a failure prints
/// none of its own: `--json` always prints exactly one).
pub fn document_printed() -> bool {
    DOCUMENT_PRINTED.get()
}

/// Forgets the previous command's document and any capture left on by a
/// run that did not finish (a new run starts).
pub fn reset() {
    DOCUMENT_PRINTED.set(false);
    CAPTURED.set(None);
}

/// Starts keeping this thread's stdout text (`on`), or stops and returns
/// what was kept.
pub fn capture(on: bool) -> Option<String> {
    CAPTURED.with_borrow_mut(|c| {
        let kept = c.take();
        if on {
            *c = Some(String::new());
        }
        kept.filter(|t| !t.is_empty())
    })
}

/// Prints `value` as JSON when asked, else the human text.
pub fn print<T: Serialize>(
    ctx: &Ctx,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = if ctx.json {
        DOCUMENT_PRINTED.set(true);
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
    DOCUMENT_PRINTED.set(true);
    write_stdout(text)
}

/// Writes a line to stdout; a closed pipe (`| head`) ends the output quietly
/// instead of panicking.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let kept = CAPTURED.with_borrow_mut(|c| {
        c.as_mut().map(|buf| {
            buf.push_str(text);
            buf.push('\n');
        })
    });
    if kept.is_some() {
        return Ok(());
    }
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
