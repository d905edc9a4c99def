//! Bounds of every number the command line takes, checked before any work:
//! a value outside its range is a usage error (exit 2) naming the flag and
//! the range, never a panic deep inside date arithmetic.

use genesis_core::time::parse_duration;
use genesis_core::Error;

use super::args::{BackupCommand, BenchCommand, CaptureFlags, Cli, Command};

/// The longest span any flag may name: 100 years (in days).
pub const MAX_DAYS: u64 = 36_500;
const MAX_SECONDS: f64 = MAX_DAYS as f64 * 86_400.0;
/// The largest rate of the simulator (commits per second).
const MAX_RATE: f64 = 1_000_000.0;
/// The most WAL frames the capturer lets accumulate before checkpointing.
const MAX_CHECKPOINT_FRAMES: u32 = 1 << 30;

fn out_of_range(flag: &str, value: impl std::fmt::Display, range: &str) -> Error {
    Error::Usage(format!(
        "{flag} {value} is out of range: it must be {range}"
    ))
}

fn days(flag: &str, v: Option<u32>) -> Result<(), Error> {
    match v {
        Some(d) if u64::from(d) > MAX_DAYS => Err(out_of_range(
            flag,
            d,
            &format!("between 0 and {MAX_DAYS} (100 years)"),
        )),
        _ => Ok(()),
    }
}

fn duration(flag: &str, v: Option<&str>, min_exclusive_zero: bool) -> Result<(), Error> {
    let Some(text) = v else { return Ok(()) };
    let range = if min_exclusive_zero {
        format!("more than 0 and at most {MAX_DAYS}d (100 years)")
    } else {
        format!("at most {MAX_DAYS}d (100 years)")
    };
    let d = parse_duration(text)
        .map_err(|e| Error::Usage(format!("{flag}: {e}; it must be {range}")))?;
    if d.as_secs_f64() > MAX_SECONDS || (min_exclusive_zero && d.is_zero()) {
        return Err(out_of_range(flag, text, &range));
    }
    Ok(())
}

fn rate(flag: &str, v: f64) -> Result<(), Error> {
    if !(v.is_finite() && (0.0..=MAX_RATE).contains(&v)) {
        return Err(out_of_range(
            flag,
            v,
            &format!("between 0 (as fast as possible) and {MAX_RATE}"),
        ));
    }
    Ok(())
}

fn capture(flags: &CaptureFlags) -> Result<(), Error> {
    match flags.checkpoint_frames {
        Some(n) if n == 0 || n > MAX_CHECKPOINT_FRAMES => Err(out_of_range(
            "--checkpoint-frames",
            n,
            &format!("between 1 and {MAX_CHECKPOINT_FRAMES}"),
        )),
        _ => Ok(()),
    }
}

/// Checks every numeric flag of the command line.
///
/// # Errors
/// `Error::Usage` naming the first flag out of range and its range.
pub fn check(cli: &Cli) -> Result<(), Error> {
    match &cli.command {
        Command::Demo(a) => {
            rate("--rate", a.rate)?;
            duration("--trade-for", Some(&a.trade_for), false)
        }
        Command::Simulate(a) => {
            rate("--rate", a.rate)?;
            duration("--duration", Some(&a.duration), false)
        }
        Command::Backup(BackupCommand::Full(f) | BackupCommand::Sync(f)) => capture(f),
        Command::Backup(BackupCommand::Replicate(a)) => {
            capture(&a.capture)?;
            duration("--interval", a.interval.as_deref(), true)?;
            duration("--snapshot-interval", a.snapshot_interval.as_deref(), true)?;
            duration("--for", a.run_for.as_deref(), false)
        }
        Command::Backup(BackupCommand::Prune(a)) => days("--keep-days", a.keep_days),
        Command::ListBackups(a) => days("--days", a.days),
        Command::Restore(a) => duration("--ago", a.ago.as_deref(), false),
        Command::Bench(BenchCommand::Rto(a)) => {
            rate("--rate", a.rate)?;
            duration("--history", Some(&a.history), false)
        }
        Command::ReconcileOrders(a) => {
            if !(a.tolerance.is_finite() && (0.0..=1.0).contains(&a.tolerance)) {
                return Err(out_of_range(
                    "--tolerance",
                    a.tolerance,
                    "a relative tolerance between 0 and 1",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
