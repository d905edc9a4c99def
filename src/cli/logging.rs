//! Logs go to stderr through `tracing`; `-v`/`-vv` or RUST_LOG raise the level.

use tracing_subscriber::EnvFilter;

use super::args::Global;

/// Installs the stderr subscriber.
pub fn init(g: &Global) {
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
