//! One size of the benchmark: generate, capture, then every restore and
//! every baseline on the same files.

use std::fs;
use std::path::Path;

use genesis_core::pipeline::StageReport;
use genesis_core::plan::Target;
use genesis_core::progress::Progress;
use genesis_core::{Error, Result};

use super::baselines::{self, Inputs};
use super::fingerprint::{fingerprint, Fingerprint};
use super::tools::{file_len, remove_db, sync_all, warm};
use super::{chain, generate, litestream};
use super::{BenchOptions, RestoreMeasurement, RestoreRequest, RestoreRunner, SizeReport};

/// The generator's workload seed.
const SEED: u64 = 42;

/// Reads a restore's `--json` document into a measurement.
fn measurement(
    name: String,
    req: &RestoreRequest,
    expected_txid: u64,
    out: super::RestoreOutcome,
) -> Result<RestoreMeasurement> {
    let v = &out.result;
    let stages: Vec<StageReport> = serde_json::from_value(v["stages"].clone()).map_err(|e| {
        Error::Failed(format!(
            "the restore's JSON has no readable `stages` ({e}): {v}"
        ))
    })?;
    let fetch = stages.iter().find(|s| s.stage_type == "fetch");
    Ok(RestoreMeasurement {
        name,
        target: req.target.to_string(),
        validate: req.validate,
        success: v["success"].as_bool().unwrap_or(false),
        wall_seconds: out.wall_seconds,
        recovery_time_seconds: v["recovery_time_seconds"].as_f64().unwrap_or(0.0),
        ratio_to_cp: None,
        expected_txid,
        restored_txid: v["restored_txid"].as_u64().unwrap_or(0),
        equals_source: None,
        bytes_read: fetch.map_or(0, |f| f.bytes_out),
        // The fetch stage emits the plan, then one artifact per object.
        objects_read: fetch.map_or(0, |f| f.items_out.saturating_sub(1)),
        peak_rss_bytes: out.peak_rss_bytes,
        stages,
    })
}

fn restore_all(
    opts: &BenchOptions,
    dir: &Path,
    repo: &Path,
    chain: &chain::Chain,
    source: &Fingerprint,
    runner: &RestoreRunner<'_>,
    progress: &dyn Progress,
) -> Result<Vec<RestoreMeasurement>> {
    let out_dir = dir.join("out");
    fs::create_dir_all(&out_dir).map_err(|e| Error::io("create", &out_dir, e))?;
    let mut v = Vec::new();
    let points = [
        ("latest", Target::Latest, chain.last_txid),
        (
            "middle",
            Target::Txid {
                txid: chain.middle_txid,
            },
            chain.middle_txid,
        ),
    ];
    for (point, target, expected) in points {
        for validate in [false, true] {
            let name = format!(
                "{point}, {}",
                if validate {
                    "validated"
                } else {
                    "no validation"
                }
            );
            let req = RestoreRequest {
                repo: repo.to_path_buf(),
                db: dir.join("live.db"),
                staging_dir: dir.join("staging"),
                output: out_dir.join("restored.db"),
                target: target.clone(),
                validate,
                pipeline: opts.pipeline.clone(),
            };
            remove_db(&req.output);
            warm(repo);
            sync_all();
            progress.start(&format!("restore {name}"), None);
            let outcome = runner(&req);
            progress.finish(&format!("restore {name}"));
            let mut m = measurement(name, &req, expected, outcome?)?;
            if point == "latest" && m.success {
                m.equals_source = Some(fingerprint(&req.output)? == *source);
            }
            remove_db(&req.output);
            v.push(m);
        }
    }
    Ok(v)
}

/// Benchmarks one size in `dir` (empty).
///
/// # Errors
/// See [`super::run`].
pub fn one_size(
    opts: &BenchOptions,
    size: u64,
    dir: &Path,
    runner: &RestoreRunner<'_>,
    progress: &dyn Progress,
) -> Result<SizeReport> {
    let live = dir.join("live.db");
    let repo = dir.join("repo");
    let generation = generate::generate(&live, size, SEED, progress)?;
    tracing::info!(
        mib_per_s = generation.bytes_per_second / f64::from(1 << 20),
        "generated"
    );
    let with_litestream = litestream::available();
    let chain = chain::build_chain(
        &live,
        &repo,
        dir,
        opts.history_seconds,
        opts.rate,
        with_litestream,
        progress,
    )?;
    let source = fingerprint(&live)?;
    let base_zst = baselines::compress_base(&chain.base, &dir.join("base.db.zst"))?;
    let replica = if with_litestream {
        progress.start("litestream replicate", None);
        let r = litestream::replicate(&chain.base, &chain.events, &dir.join("litestream"));
        progress.finish("litestream replicate");
        if let Err(e) = &r {
            tracing::warn!("the Litestream baseline is left out: {e}");
        }
        Some(r)
    } else {
        None
    };
    let mut restores = restore_all(opts, dir, &repo, &chain, &source, runner, progress)?;
    progress.start("baselines", None);
    let baselines = baselines::run_all(&Inputs {
        live: &live,
        live_fingerprint: &source,
        base: &chain.base,
        base_zst: base_zst.as_deref(),
        wals: &chain.wals,
        litestream: replica.as_ref(),
        out: &dir.join("out"),
    });
    progress.finish("baselines");
    let baselines = baselines?;
    if let Some(cp) = baselines.first().and_then(|b| b.seconds) {
        for r in &mut restores {
            r.ratio_to_cp = (cp > 0.0).then(|| r.wall_seconds / cp);
        }
    }
    Ok(SizeReport {
        targets: super::targets::targets(&baselines, &restores),
        requested_bytes: size,
        generation,
        database_bytes: file_len(&live),
        chain,
        restores,
        baselines,
        kept_dir: None,
    })
}
