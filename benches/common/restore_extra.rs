//! What the restore bench adds for compaction (issue 14): level spans
//! scaled to the speed at which the bench made its chain, and the peak RSS
//! of a restore run as a child process of the real binary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The default spans (30 s, 5 min, 1 h) scaled so that one capture step of
/// the bench stands for one second of 1 s syncs: `per_step` is the bench's
/// measured time per step. Level 1 is rounded to a millisecond and the
/// others kept exact multiples of it, so that windows nest.
pub fn scaled_levels(per_step: Duration) -> Vec<Duration> {
    let l1 =
        Duration::from_millis(((per_step.as_secs_f64() * 30.0 * 1000.0).round() as u64).max(1));
    vec![l1, l1 * 10, l1 * 120]
}

/// Runs the binary with `args` and returns (wall seconds, peak RSS in MiB).
pub fn child_peak_rss(bin: &Path, args: &[&str]) -> (f64, f64) {
    let t = std::time::Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the binary");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by the kernel; `pid` is our
    // child, waited for once here (std's `Child` is not waited for after).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 on the restore");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{bin:?} {args:?} failed (status {status})"
    );
    std::mem::forget(child);
    (t.elapsed().as_secs_f64(), usage.ru_maxrss as f64 / 1024.0)
}
