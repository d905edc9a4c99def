//! What the restore bench adds for compaction (issue 14): level spans
//! scaled to the speed at which the bench made its chain, and the peak RSS
//! of a restore run as a child process of the real binary.

use std::path::Path;
use std::process::{Command, Stdio};

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
