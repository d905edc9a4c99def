//! Command-line flags (clap derive). Parsing only: every command's work is in
//! the libraries.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Point-in-time recovery for the SQLite database of a trading system.
#[derive(Debug, Parser)]
#[command(name = "genesis-recovery", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The live database (default .genesis/data/genesis.db, or `database` in the settings file).
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The backup repository: a directory or s3://BUCKET/PREFIX (default .genesis/backups, or `repository` in the settings file).
    #[arg(long, global = true, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Settings file (default ./genesis-recovery.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars, warnings only on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole recovery story on a generated trading database: capture, incident, recovery.
    Demo(DemoArgs),
    /// Generate trading activity into a database (creates the schema when missing).
    Simulate(SimulateArgs),
    /// Capture the database: snapshots, continuous replication, retention.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// List available backups, newest first.
    ListBackups(ListArgs),
    /// Re-read every object and check checksums, chains and the event archive.
    VerifyBackups(VerifyArgs),
    /// Restore the database to an instant, a txid or a named backup.
    Restore(Box<RestoreArgs>),
    /// Validate a database (the live one by default): integrity and the trading rules.
    Validate(ValidateArgs),
    /// Rebuild positions from the events alone.
    RecoverPositions(PositionsArgs),
    /// Compare the database's open orders with the exchange's.
    ReconcileOrders(ReconcileArgs),
    /// Restore the latest point into a scratch directory, prove and validate it, record RTO/RPO.
    Drill(DrillArgs),
    /// Run a pipeline file.
    Run(RunArgs),
    /// Benchmarks for operators.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Pipeline files.
    #[command(subcommand)]
    Pipelines(PipelinesCommand),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory to work in (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds of trading while replication runs.
    #[arg(long, default_value = "6s")]
    pub trade_for: String,
    /// Commits per second of the simulated trading.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Keep the demo directory afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Commits per second (0: as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to run, e.g. 30s, 5m.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Stop after this many commits.
    #[arg(long)]
    pub max_commits: Option<u64>,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write a CHECKPOINT event every N commits (0: never).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a snapshot at an exact txid (asks a running `replicate` to take it when one runs).
    Full(CaptureFlags),
    /// One capture step (new WAL pages, new events), then exit.
    Sync(CaptureFlags),
    /// Capture continuously until --for elapses or SIGINT/SIGTERM.
    Replicate(ReplicateArgs),
    /// Remove whole chains older than the retention.
    Prune(PruneArgs),
    /// Compact every complete window of every level once (replicate does it as it goes).
    Compact(CompactArgs),
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Level spans, comma-separated (default: compaction.levels of the settings file, else 30s,5m,1h).
    #[arg(long, value_name = "LIST")]
    pub levels: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct CaptureFlags {
    /// Switch a rollback-journal database to WAL mode instead of refusing it.
    #[arg(long)]
    pub enable_wal: bool,
    /// Checkpoint the WAL when it holds more frames than this.
    #[arg(long)]
    pub checkpoint_frames: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    #[command(flatten)]
    pub capture: CaptureFlags,
    /// Time between capture steps.
    #[arg(long)]
    pub interval: Option<String>,
    /// Take a snapshot when the last one is older than this.
    #[arg(long)]
    pub snapshot_interval: Option<String>,
    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long = "for", value_name = "DUR")]
    pub run_for: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Compaction level spans while capturing, comma-separated (default:
    /// compaction.levels of the settings file, else 30s,5m,1h; "none": off).
    #[arg(long, value_name = "LIST")]
    pub compaction_levels: Option<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep every restore point newer than this many days.
    #[arg(long)]
    pub keep_days: Option<u32>,
    /// Keep at least this many full backups (with their chains).
    #[arg(long)]
    pub keep_full: Option<usize>,
    /// Keep every level-0 segment (each transaction a restore point) newer
    /// than this; older ones go once a verified compacted object covers them
    /// (default: compaction.l0_retention of the settings file, else 24h).
    #[arg(long, value_name = "DUR")]
    pub keep_l0: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only backups reaching the last N days.
    #[arg(long)]
    pub days: Option<u32>,
    /// Also list event archive objects.
    #[arg(long)]
    pub all: bool,
    /// At most this many rows (text output).
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify only the chain that restores this backup.
    #[arg(long)]
    pub backup_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Restore to this instant (2025-01-15T12:00:00 is UTC; RFC 3339 offsets accepted).
    #[arg(long, group = "target")]
    pub timestamp: Option<String>,
    /// Restore to this long ago, e.g. 1h, 15m.
    #[arg(long, group = "target")]
    pub ago: Option<String>,
    /// Restore to a named backup (see list-backups).
    #[arg(long, group = "target")]
    pub backup_id: Option<String>,
    /// Restore to the newest restore point.
    #[arg(long, group = "target")]
    pub latest: bool,
    /// Restore to an exact txid.
    #[arg(long, group = "target")]
    pub txid: Option<u64>,
    /// Build and validate the database in the staging directory, apply nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Validate the recovered state (the default).
    #[arg(long, overrides_with = "no_validate")]
    pub validate: bool,
    /// Skip validation (faster but risky).
    #[arg(long)]
    pub no_validate: bool,
    /// Use SQLite's full integrity_check instead of quick_check.
    #[arg(long)]
    pub integrity_check: bool,
    /// Reconcile the recovered open orders with the exchange's.
    #[arg(long)]
    pub reconcile: bool,
    /// The exchange's open orders (Binance openOrders or CCXT JSON).
    #[arg(long, value_name = "FILE")]
    pub exchange_orders: Option<PathBuf>,
    /// Where to build the database (default .genesis/recovery).
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Write the restored database here and leave the live one alone.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The pipeline to run (default: the built-in restore pipeline).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Override a pipeline parameter, key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Fail instead of falling back when incremental backups are missing.
    #[arg(long)]
    pub strict: bool,
    /// Keep the objects read from an s3:// repository here and read them from here next time.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Use SQLite's full integrity_check instead of quick_check.
    #[arg(long)]
    pub full: bool,
    /// Check rule 3 (no event after this instant).
    #[arg(long)]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct PositionsArgs {
    /// Rebuild up to this instant (default: all events).
    #[arg(long)]
    pub timestamp: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The exchange's open orders (Binance openOrders or CCXT JSON).
    #[arg(long, value_name = "FILE")]
    pub exchange_orders: PathBuf,
    /// Relative tolerance for quantities and prices.
    #[arg(long, default_value_t = 1e-9)]
    pub tolerance: f64,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The drill pipeline (default: the built-in drill pipeline).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Write Prometheus metrics here (node_exporter textfile collector).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Scratch directory (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// The exchange's open orders, to reconcile the drill's database.
    #[arg(long, value_name = "FILE")]
    pub exchange_orders: Option<PathBuf>,
    /// Append the drill's result to this JSON-lines file (default: drills.jsonl in the repository's state/).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Draw the drill history against the guide's targets into this HTML file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Keep the objects read from an s3:// repository here and read them from here next time.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// RTO on generated databases: our restore beside cp, zstd, SQLite's backup API, WAL-by-WAL, Litestream.
    Rto(BenchRtoArgs),
}

#[derive(Debug, Args)]
pub struct BenchRtoArgs {
    /// Database sizes, comma-separated (e.g. 1GiB,10GiB).
    #[arg(long, value_delimiter = ',', default_value = "1GiB")]
    pub size: Vec<String>,
    /// History after the snapshot: one capture step per second of it.
    #[arg(long, default_value = "1h")]
    pub history: String,
    /// Commits per second of history.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Directory for the generated files (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the generated files afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Write an HTML report here (one self-contained file).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Restore with this pipeline instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Override a pipeline parameter, key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Keep the objects read from an s3:// repository here and read them from here next time.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PipelinesCommand {
    /// Compile pipeline files and report every problem; run nothing.
    Check {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a pipeline parameter, key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}
