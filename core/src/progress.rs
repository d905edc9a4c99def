//! Progress reporting as a trait of the library; the CLI supplies a terminal
//! implementation (indicatif), tests and quiet runs use [`NoProgress`].

/// Receives progress of long work (restore stages, verification, benchmarks).
pub trait Progress: Send + Sync {
    /// A unit of work named `what` starts, with `total` items (bytes, pages...) when known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `n` more items of the current unit are done.
    fn advance(&self, n: u64);
    /// The current unit is done.
    fn finish(&self, what: &str);
}

/// A progress sink that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self, _what: &str) {}
}
