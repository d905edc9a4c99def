//! `bench rto`: the RTO benchmark for operators. For each database size it
//! generates a trading database ([`generate`]), captures it into a chain of
//! one-second capture steps ([`chain`]), then, in one run on the same files,
//! measures our restore to the latest point and to the middle of the
//! history, with and without validation, beside what a user would pick
//! instead ([`baselines`]). Each restore runs through a [`RestoreRunner`]
//! the caller supplies: the CLI runs it as a child process, so that its
//! peak memory is its own. [`html`] draws the result.

pub mod baselines;
pub mod chain;
pub mod fingerprint;
pub mod generate;
pub mod html;
pub mod litestream;
pub mod targets;
pub mod tools;

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use genesis_core::pipeline::StageReport;
use genesis_core::plan::Target;
use genesis_core::progress::Progress;
use genesis_core::{Error, Result};

pub use chain::compact_as_defaults;

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Database sizes in bytes, each benchmarked in turn.
    pub sizes: Vec<u64>,
    /// Seconds of history: one capture step each.
    pub history_seconds: u64,
    /// Commits per second of history.
    pub rate: f64,
    /// Where the files go (one subdirectory per size).
    pub dir: PathBuf,
    /// Keep the files afterwards.
    pub keep: bool,
    /// A pipeline file to restore with instead of the built-in one.
    pub pipeline: Option<PathBuf>,
}

/// One restore the runner must make, into `output`, leaving the live
/// database alone.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub repo: PathBuf,
    pub db: PathBuf,
    pub staging_dir: PathBuf,
    pub output: PathBuf,
    pub target: Target,
    pub validate: bool,
    pub pipeline: Option<PathBuf>,
}

/// What the runner measured: the restore's `--json` document, its wall
/// time and the restoring process's peak resident memory.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    pub result: serde_json::Value,
    pub wall_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Runs one restore (the CLI: a child process of the binary).
pub type RestoreRunner<'a> = dyn Fn(&RestoreRequest) -> Result<RestoreOutcome> + 'a;

/// One measured restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreMeasurement {
    /// `latest` or `middle`, and whether validation ran.
    pub name: String,
    pub target: String,
    pub validate: bool,
    pub success: bool,
    pub wall_seconds: f64,
    /// The restore's own `recovery_time_seconds`.
    pub recovery_time_seconds: f64,
    pub ratio_to_cp: Option<f64>,
    pub expected_txid: u64,
    pub restored_txid: u64,
    /// Whether the result equals the source (for `latest`; None for `middle`).
    pub equals_source: Option<bool>,
    /// Compressed bytes and objects the fetch stage read.
    pub bytes_read: u64,
    pub objects_read: u64,
    pub peak_rss_bytes: Option<u64>,
    /// Every stage with its seconds and its start and end in the run.
    pub stages: Vec<StageReport>,
}

/// One size's results.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub requested_bytes: u64,
    pub generation: generate::Generated,
    pub chain: chain::Chain,
    /// The final database's size.
    pub database_bytes: u64,
    pub restores: Vec<RestoreMeasurement>,
    pub baselines: Vec<baselines::Baseline>,
    /// Restore `--latest` against the floor and Litestream (issue 14).
    pub targets: Option<targets::Targets>,
    /// The directory, when kept.
    pub kept_dir: Option<PathBuf>,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub success: bool,
    pub timestamp: String,
    pub cpus: usize,
    pub history_seconds: u64,
    pub rate: f64,
    pub pipeline: Option<PathBuf>,
    /// Free bytes needed, and free when it started.
    pub needed_bytes: u64,
    pub free_bytes: u64,
    pub sizes: Vec<SizeReport>,
}

/// Pages a commit of the workload writes, on average, rounded up (for the
/// free-space estimate of the saved WAL files).
const PAGES_PER_COMMIT: u64 = 8;

/// Free bytes one size needs: the live database, its base copy, the
/// compressed snapshot and repository, a restored copy and a staged one,
/// the WAL files the naive baseline replays, and with Litestream its copy of
/// the database, its replica and its local files (measured: 3.3x the size).
pub fn needed_for(size: u64, history_seconds: u64, rate: f64, litestream: bool) -> u64 {
    let wal = (history_seconds as f64 * rate.max(0.0)) as u64 * PAGES_PER_COMMIT * 4096;
    let ours = size.saturating_mul(5).saturating_add(wal.saturating_mul(3));
    if litestream {
        ours.saturating_add(size.saturating_mul(7) / 2)
    } else {
        ours
    }
}

/// Parses a size such as `64MiB`, `1GiB`, `10GB`, `500M` (binary units).
///
/// # Errors
/// `Error::Usage` naming the text.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad_size(text))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad_size(text)),
    };
    let bytes = (n * mult as f64) as u64;
    if bytes < 1 << 20 {
        return Err(Error::Usage(format!(
            "--size {text}: give at least 1MiB (e.g. 64MiB, 1GiB)"
        )));
    }
    Ok(bytes)
}

fn bad_size(text: &str) -> Error {
    Error::Usage(format!(
        "--size {text:?}: write a size such as 64MiB, 1GiB or 10GiB"
    ))
}

/// Refuses to start when `dir` lacks the space the run needs.
///
/// # Errors
/// `Error::Usage` saying how much is needed and how much is free.
pub fn check_free_space(opts: &BenchOptions) -> Result<(u64, u64)> {
    let per: Vec<u64> = opts
        .sizes
        .iter()
        .map(|s| needed_for(*s, opts.history_seconds, opts.rate, litestream::available()))
        .collect();
    let needed = if opts.keep {
        per.iter().sum()
    } else {
        per.iter().copied().max().unwrap_or(0)
    };
    let free = tools::free_bytes(&opts.dir)?;
    if free < needed {
        return Err(Error::Usage(format!(
            "{}: the benchmark needs {:.1} GiB free there and {:.1} GiB are: free some space, \
             give --dir on a larger filesystem, or a smaller --size",
            opts.dir.display(),
            needed as f64 / f64::from(1 << 30),
            free as f64 / f64::from(1 << 30)
        )));
    }
    Ok((needed, free))
}

/// Runs the benchmark; see the module documentation.
///
/// # Errors
/// Too little free space (before anything is written), generation, capture,
/// restore and baseline failures. The directory of a failed size is kept.
pub fn run(
    opts: &BenchOptions,
    runner: &RestoreRunner<'_>,
    progress: &dyn Progress,
) -> Result<BenchReport> {
    fs::create_dir_all(&opts.dir).map_err(|e| Error::io("create", &opts.dir, e))?;
    let (needed_bytes, free_bytes) = check_free_space(opts)?;
    let mut sizes = Vec::new();
    for &size in &opts.sizes {
        let dir = opts.dir.join(format!("rto-{}MiB", size >> 20));
        if dir.exists() {
            return Err(Error::Usage(format!(
                "{} exists (a kept run?): remove it or give another --dir",
                dir.display()
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let mut r = measure::one_size(opts, size, &dir, runner, progress)?;
        if opts.keep {
            r.kept_dir = Some(dir);
        } else {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
        }
        sizes.push(r);
    }
    let success = sizes.iter().all(|s| {
        s.restores.iter().all(|r| {
            r.success && r.restored_txid == r.expected_txid && r.equals_source != Some(false)
        }) && s.baselines.iter().all(|b| b.equals_source != Some(false))
    });
    Ok(BenchReport {
        success,
        timestamp: genesis_core::time::format_rfc3339(chrono::Utc::now()),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        history_seconds: opts.history_seconds,
        rate: opts.rate,
        pipeline: opts.pipeline.clone(),
        needed_bytes,
        free_bytes,
        sizes,
    })
}

mod measure;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_bad_ones_are_named() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("12parsecs")
            .unwrap_err()
            .to_string()
            .contains("12parsecs"));
        assert!(parse_size("10KiB")
            .unwrap_err()
            .to_string()
            .contains("at least"));
    }

    #[test]
    fn the_space_check_names_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BenchOptions {
            sizes: vec![1 << 60],
            history_seconds: 1,
            rate: 1.0,
            dir: dir.path().to_path_buf(),
            keep: false,
            pipeline: None,
        };
        let e = check_free_space(&opts).unwrap_err().to_string();
        assert!(e.contains("GiB free there"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }
}
