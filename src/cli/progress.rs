//! The terminal implementation of the library's `Progress` trait (indicatif).
//! Shown only when stderr is a terminal and `--quiet` is not given.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use genesis_core::progress::{NoProgress, Progress};
use indicatif::{ProgressBar, ProgressStyle};

struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn start(&self, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => {
                let b = ProgressBar::new(n);
                // Units of work named "... steps" are counted, the rest are bytes.
                let template = if what.ends_with("steps") {
                    "{spinner} {msg:<14} [{bar:30}] {pos}/{len} ({eta})"
                } else {
                    "{spinner} {msg:<14} [{bar:30}] {bytes}/{total_bytes} ({eta})"
                };
                b.set_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            }
        };
        bar.set_message(what.to_string());
        if let Ok(mut g) = self.bar.lock() {
            if let Some(old) = g.replace(bar) {
                old.finish_and_clear();
            }
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(g) = self.bar.lock() {
            if let Some(b) = g.as_ref() {
                b.inc(n);
            }
        }
    }
    fn finish(&self, _what: &str) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
            }
        }
    }
}

/// A progress bar on a terminal, nothing otherwise.
pub fn for_terminal(quiet: bool) -> Arc<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        Arc::new(NoProgress)
    } else {
        Arc::new(Bar {
            bar: Mutex::new(None),
        })
    }
}
