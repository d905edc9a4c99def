//! `bench rto`: runs the library's benchmark with each restore as a child
//! process of this binary (so that its peak memory, the `peak_rss_bytes` it
//! reports, is the restore's own), prints the table or the JSON, writes the
//! HTML report.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use genesis_core::plan::Target;
use genesis_core::time::parse_duration;
use genesis_core::Error;
use genesis_stages::bench::{self, BenchOptions, BenchReport, RestoreOutcome, RestoreRequest};

use super::args::{BenchCommand, BenchRtoArgs};
use super::output::{bytes, print};
use super::{progress, Ctx, EXIT_FAILED, EXIT_OK};

pub fn bench(ctx: &Ctx, c: BenchCommand) -> anyhow::Result<i32> {
    match c {
        BenchCommand::Rto(a) => rto(ctx, a),
    }
}

/// Waits for `pid` and returns its exit status and peak resident bytes.
fn wait_with_rusage(pid: u32) -> std::io::Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; pid is our own child,
    // which nothing else waits for.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Linux reports ru_maxrss in KiB.
    Ok((status, (ru.ru_maxrss.max(0) as u64) * 1024))
}

/// One restore as a child process: `restore --output ... --json --quiet`.
fn child_restore(req: &RestoreRequest) -> genesis_core::Result<RestoreOutcome> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Failed(format!("cannot find this program's binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--quiet")
        .arg("--json")
        .arg("--repo")
        .arg(&req.repo)
        .arg("--db")
        .arg(&req.db)
        .arg("restore")
        .arg("--output")
        .arg(&req.output)
        .arg("--staging-dir")
        .arg(&req.staging_dir);
    match &req.target {
        Target::Txid { txid } => cmd.arg("--txid").arg(txid.to_string()),
        _ => cmd.arg("--latest"),
    };
    if !req.validate {
        cmd.arg("--no-validate");
    }
    if let Some(p) = &req.pipeline {
        cmd.arg("--pipeline").arg(p);
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start the restore: {e}")))?;
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let (status, rss) = wait_with_rusage(child.id())
        .map_err(|e| Error::Failed(format!("waiting for the restore: {e}")))?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let stderr = errors.join().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(&out).map_err(|_| {
        Error::Failed(format!(
            "the restore (wait status {status}) printed no JSON document: {}",
            stderr.trim()
        ))
    })?;
    // The restore's own peak (`VmHWM`): `wait4`'s `ru_maxrss` also counts
    // the memory of this process, which the child shared until it exec'd.
    let own = result["peak_rss_bytes"].as_u64();
    Ok(RestoreOutcome {
        result,
        wall_seconds,
        peak_rss_bytes: own.or(Some(rss)),
    })
}

fn options(a: &BenchRtoArgs) -> anyhow::Result<(BenchOptions, bool)> {
    let sizes = a
        .size
        .iter()
        .map(|s| bench::parse_size(s))
        .collect::<Result<Vec<_>, _>>()?;
    let history_seconds = parse_duration(&a.history)?.as_secs();
    if history_seconds == 0 {
        return Err(Error::Usage(format!(
            "--history {}: give at least one second (e.g. 2m, 1h)",
            a.history
        ))
        .into());
    }
    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("genesis-bench-rto-{}", std::process::id())),
            true,
        ),
    };
    let opts = BenchOptions {
        sizes,
        history_seconds,
        rate: a.rate,
        dir,
        keep: a.keep,
        pipeline: a.pipeline.clone(),
    };
    Ok((opts, temporary))
}

pub fn rto(ctx: &Ctx, a: BenchRtoArgs) -> anyhow::Result<i32> {
    let (opts, temporary) = options(&a)?;
    let progress = progress::for_terminal(ctx.quiet || ctx.json);
    let report = bench::run(&opts, &child_restore, progress.as_ref());
    if temporary && !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.dir);
    }
    let report = report?;
    if let Some(path) = &a.report {
        std::fs::write(path, bench::html::render(&report))
            .map_err(|e| Error::io("write the report", path, e))?;
    }
    print(ctx, &report, || table(&report, a.report.as_ref()))?;
    Ok(if report.success { EXIT_OK } else { EXIT_FAILED })
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// The human table: one block per size.
fn table(r: &BenchReport, html: Option<&PathBuf>) -> String {
    let mut s = format!(
        "bench rto: {} s of history at {} commits/s, {} CPUs",
        r.history_seconds, r.rate, r.cpus
    );
    for z in &r.sizes {
        let g = &z.generation;
        let c = &z.chain;
        s.push_str(&format!(
            "\n\n== {} database ({} after the history)\n\
             generated {} events in {:.1} s: {}/s (the issue's target: 200 MiB/s)\n\
             captured: snapshot in {:.1} s, {} capture steps ({} commits, {} segments) in {:.1} s \
             (median {:.1} ms, max {:.1} ms); repository {}\n\
             compacted as the default levels would (spans scaled to the steps) in {:.1} s: {:?}\n\n\
             {:<34} {:>9} {:>8}  notes",
            bytes(z.requested_bytes),
            bytes(z.database_bytes),
            g.events,
            g.seconds,
            bytes(g.bytes_per_second as u64),
            c.snapshot_seconds,
            c.steps,
            c.commits,
            c.segments,
            c.capture_seconds,
            c.step_median_ms,
            c.step_max_ms,
            bytes(c.repository_bytes),
            c.compaction_seconds,
            c.compacted_objects,
            "method",
            "seconds",
            "x cp",
        ));
        for b in &z.baselines {
            let note = b.skipped.clone().unwrap_or_else(|| {
                let mut n = b.note.clone();
                if let Some(eq) = b.equals_source {
                    n.push_str(if eq {
                        " (equals the source)"
                    } else {
                        " (DIFFERS from the source)"
                    });
                }
                n
            });
            s.push_str(&format!(
                "\n{:<34} {:>9} {:>8}  {}",
                b.name,
                secs(b.seconds),
                ratio(b.ratio_to_cp),
                note.trim()
            ));
        }
        for m in &z.restores {
            let stages: Vec<String> = m
                .stages
                .iter()
                .map(|st| format!("{} {:.2}", st.id, st.seconds))
                .collect();
            s.push_str(&format!(
                "\n{:<34} {:>9} {:>8}  txid {}{}, read {} in {} objects, peak RSS {}{}\n{:<34} stages (s): {}",
                format!("ours: {}", m.name),
                secs(Some(m.wall_seconds)),
                ratio(m.ratio_to_cp),
                m.restored_txid,
                if m.success { "" } else { " FAILED" },
                bytes(m.bytes_read),
                m.objects_read,
                m.peak_rss_bytes.map_or_else(|| "-".into(), bytes),
                match m.equals_source {
                    Some(true) => ", equals the source",
                    Some(false) => ", DIFFERS from the source",
                    None => "",
                },
                "",
                stages.join(", ")
            ));
        }
        if let Some(t) = &z.targets {
            s.push_str(&format!("\n{}", t.line()));
        }
        if let Some(d) = &z.kept_dir {
            s.push_str(&format!("\nfiles kept in {}", d.display()));
        }
    }
    if let Some(p) = html {
        s.push_str(&format!("\n\nreport written to {}", p.display()));
    }
    s
}
