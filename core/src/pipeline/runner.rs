//! The pipeline runner: one thread per stage, each owning the receiving end
//! of a bounded channel, the artifacts it emits going into the next stage's
//! channel (sending blocks while it is full: back-pressure). Parallel work
//! inside a stage runs on the stage's own rayon pool of `workers` threads.
//!
//! Failure: the first stage error (or panic, caught and named) cancels the
//! run; the other stages stop at their next receive or send (both poll the
//! [`CancelToken`], so a stage blocked on a full channel gets out even when
//! its consumer died) and report `cancelled`. [`CompiledPipeline::run`] then
//! returns that first error in a [`RunFailure`], together with every stage's
//! report, so that a failed restore still says how far each stage got.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::artifact::Artifact;
use crate::pipeline::compile::{CompiledPipeline, CompiledStage, OnError};
use crate::pipeline::stage::{CancelToken, Emit, StageContext};
use crate::progress::Progress;

/// How often a blocked send or receive looks at the cancellation flag.
const POLL: Duration = Duration::from_millis(20);

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// Processed all its input and finished.
    Ok,
    /// Failed (its error is in [`StageReport::error`]).
    Failed,
    /// Stopped because the run was cancelled (by another stage or the caller).
    Cancelled,
}

/// What one stage did in a run (read back from a restore's `--json` by
/// `bench rto`, which runs each restore as a child process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub id: String,
    pub stage_type: String,
    /// Wall-clock seconds from the stage's start to its end.
    pub seconds: f64,
    /// Seconds from the run's start to the stage's first input (its end
    /// when it received none): when it began to work, as stages run
    /// concurrently (the stage timeline of `bench rto --report`).
    pub start_offset_seconds: f64,
    /// Seconds from the run's start to the stage's end.
    pub end_offset_seconds: f64,
    /// Artifacts received and their bytes ([`Artifact::byte_len`]).
    pub items_in: u64,
    pub bytes_in: u64,
    /// Artifacts emitted and their bytes.
    pub items_out: u64,
    pub bytes_out: u64,
    /// Artifacts dropped under `on_error = "skip"`.
    pub items_skipped: u64,
    pub status: StageStatus,
    /// The error, for a failed stage.
    pub error: Option<String>,
}

/// A successful run.
#[derive(Debug)]
pub struct RunOutcome {
    /// What the last stage emitted, in order.
    pub outputs: Vec<Artifact>,
    /// Every stage's report, in chain order.
    pub stages: Vec<StageReport>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

/// A failed run: the first error, the stage it came from, and every stage's
/// report. Converts into [`Error`] (dropping the reports) for `?`.
#[derive(Debug)]
pub struct RunFailure {
    /// The first failure (never a secondary `Cancelled` caused by it).
    /// `Error::Cancelled` only when the caller cancelled the run.
    pub error: Error,
    /// The id of the stage that failed first, if a stage failed.
    pub stage: Option<String>,
    /// Every stage's report, in chain order.
    pub stages: Vec<StageReport>,
    pub seconds: f64,
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stage {
            Some(stage) => write!(f, "stage `{stage}` failed: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for RunFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<RunFailure> for Error {
    fn from(failure: RunFailure) -> Self {
        failure.error
    }
}

impl From<Box<RunFailure>> for Error {
    fn from(failure: Box<RunFailure>) -> Self {
        failure.error
    }
}

/// The first real failure of a run, shared by the stage threads.
#[derive(Default)]
struct FirstFailure(Mutex<Option<(String, Error)>>);

impl FirstFailure {
    fn record(&self, stage: &str, error: Error) {
        let mut slot = match self.0.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            *slot = Some((stage.to_string(), error));
        }
    }

    fn take(self) -> Option<(String, Error)> {
        match self.0.into_inner() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl CompiledPipeline {
    /// Runs the pipeline: sends one `Artifact::Request` with the resolved
    /// parameters to the first stage and collects what the last one emits.
    /// Returns when every stage thread has ended.
    ///
    /// # Errors
    /// A (boxed: it is large) [`RunFailure`] with the first stage's error (or a panic turned into
    /// `Error::Failed` naming the stage), or `Error::Cancelled` when `cancel`
    /// was set by the caller, and the reports of all stages.
    pub fn run(
        self,
        progress: Arc<dyn Progress>,
        cancel: CancelToken,
    ) -> std::result::Result<RunOutcome, Box<RunFailure>> {
        let started = Instant::now();
        let params = Arc::new(self.params);
        let span = tracing::info_span!("pipeline", name = %self.name);
        let _entered = span.enter();

        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for stage in &self.stages {
            let (tx, rx) = bounded::<Artifact>(stage.channel_capacity.max(1));
            senders.push(Some(tx));
            receivers.push(rx);
        }
        if let Some(Some(first)) = senders.first_mut().map(Option::take) {
            // Capacity is at least 1, so this does not block; the sender is
            // dropped right after, which closes the first stage's input.
            if first.send(Artifact::Request(params.clone())).is_err() {
                tracing::debug!("first stage's channel closed before the request");
            }
        }

        let first_failure = FirstFailure::default();
        let count = self.stages.len();
        let mut reports = Vec::with_capacity(count);
        let mut outputs = Vec::new();
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(count);
            for (index, (stage, rx)) in self.stages.into_iter().zip(receivers).enumerate() {
                let output = match senders.get_mut(index + 1).and_then(Option::take) {
                    Some(tx) => Sink::Channel(tx),
                    None => Sink::Collect(Vec::new()),
                };
                let next = if index + 1 < count {
                    Some(index + 1)
                } else {
                    None
                };
                let report = StageReport {
                    id: stage.id.clone(),
                    stage_type: stage.stage_type.clone(),
                    seconds: 0.0,
                    start_offset_seconds: 0.0,
                    end_offset_seconds: 0.0,
                    items_in: 0,
                    bytes_in: 0,
                    items_out: 0,
                    bytes_out: 0,
                    items_skipped: 0,
                    status: StageStatus::Failed,
                    error: None,
                };
                let ctx = StageContext {
                    stage_id: stage.id.clone(),
                    params: params.clone(),
                    workers: stage.workers,
                    cancel: cancel.clone(),
                    progress: progress.clone(),
                };
                let out = Output {
                    sink: output,
                    cancel: cancel.clone(),
                    stage_id: stage.id.clone(),
                    next,
                    items: 0,
                    bytes: 0,
                };
                let failures = &first_failure;
                let parent = span.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("stage-{}", stage.id))
                    .spawn_scoped(scope, move || {
                        let _entered = parent.enter();
                        run_stage(stage, rx, out, ctx, failures, started)
                    });
                match spawned {
                    Ok(handle) => handles.push((report, Some(handle))),
                    Err(e) => {
                        let error = Error::Failed(format!(
                            "cannot start the thread of stage `{}`: {e}",
                            report.id
                        ));
                        let mut report = report;
                        report.error = Some(error.to_string());
                        first_failure.record(&report.id, error);
                        cancel.cancel();
                        handles.push((report, None));
                    }
                }
            }
            for (fallback, handle) in handles {
                let Some(handle) = handle else {
                    reports.push(fallback);
                    continue;
                };
                match handle.join() {
                    Ok((report, collected)) => {
                        outputs = collected;
                        reports.push(report);
                    }
                    Err(payload) => {
                        // run_stage catches stage panics; this is a bug of the runner.
                        let error = Error::Failed(format!(
                            "stage `{}`: runner thread panicked: {}",
                            fallback.id,
                            panic_message(payload.as_ref())
                        ));
                        let mut report = fallback;
                        report.error = Some(error.to_string());
                        first_failure.record(&report.id, error);
                        cancel.cancel();
                        reports.push(report);
                    }
                }
            }
        });

        let seconds = started.elapsed().as_secs_f64();
        if let Some((stage, error)) = first_failure.take() {
            tracing::debug!(stage = %stage, error = %error, "pipeline failed");
            return Err(Box::new(RunFailure {
                error,
                stage: Some(stage),
                stages: reports,
                seconds,
            }));
        }
        if reports.iter().any(|r| r.status != StageStatus::Ok) {
            return Err(Box::new(RunFailure {
                error: Error::Cancelled("the pipeline run was cancelled".to_string()),
                stage: None,
                stages: reports,
                seconds,
            }));
        }
        tracing::info!(seconds, "pipeline finished");
        Ok(RunOutcome {
            outputs,
            stages: reports,
            seconds,
        })
    }
}

/// Runs one stage to its end on the current thread; returns its report and,
/// for the last stage, what it emitted.
fn run_stage(
    mut stage: CompiledStage,
    rx: Receiver<Artifact>,
    mut out: Output,
    ctx: StageContext,
    failures: &FirstFailure,
    run_started: Instant,
) -> (StageReport, Vec<Artifact>) {
    let span = tracing::info_span!("stage", id = %stage.id, r#type = %stage.stage_type);
    let _entered = span.enter();
    let started = Instant::now();
    let mut counters = Counters::default();
    let result = match rayon::ThreadPoolBuilder::new()
        .num_threads(stage.workers.max(1))
        .thread_name({
            let id = stage.id.clone();
            move |i| format!("{id}-worker-{i}")
        })
        .build()
    {
        Ok(pool) => {
            let id = stage.id.clone();
            let on_error = stage.on_error;
            let worker_span = span.clone();
            let body = &mut *stage.stage;
            // The whole loop runs inside the pool, so that rayon calls made
            // by the stage use its `workers` threads.
            pool.install(|| {
                let _entered = worker_span.enter();
                stage_loop(body, &id, on_error, &rx, &mut out, &ctx, &mut counters)
            })
        }
        Err(e) => Err(Error::Failed(format!(
            "stage `{}`: cannot start its {} worker threads: {e}",
            stage.id, stage.workers
        ))),
    };

    let status = match result {
        Ok(()) => StageStatus::Ok,
        Err(error) => {
            let secondary = matches!(error, Error::Cancelled(_)) && ctx.cancel.is_cancelled();
            counters.error = Some(error.to_string());
            if secondary {
                tracing::debug!(error = %error, "stage stopped: run cancelled");
                StageStatus::Cancelled
            } else {
                tracing::debug!(error = %error, "stage failed");
                // Record before cancelling, so that no other stage can see
                // the cancellation and report its secondary error as first.
                failures.record(&stage.id, error);
                ctx.cancel.cancel();
                StageStatus::Failed
            }
        }
    };
    // Closing our input early lets a producer blocked on it get out at once.
    drop(rx);
    let end_offset_seconds = run_started.elapsed().as_secs_f64();
    let report = StageReport {
        id: stage.id.clone(),
        stage_type: stage.stage_type.clone(),
        seconds: started.elapsed().as_secs_f64(),
        start_offset_seconds: counters.first_input.map_or(end_offset_seconds, |t| {
            t.saturating_duration_since(run_started).as_secs_f64()
        }),
        end_offset_seconds,
        items_in: counters.items_in,
        bytes_in: counters.bytes_in,
        items_out: out.items,
        bytes_out: out.bytes,
        items_skipped: counters.skipped,
        status,
        error: if status == StageStatus::Ok {
            None
        } else {
            counters.error
        },
    };
    tracing::info!(
        seconds = report.seconds,
        items_in = report.items_in,
        items_out = report.items_out,
        status = ?report.status,
        "stage ended"
    );
    let collected = match out.sink {
        Sink::Collect(v) => v,
        Sink::Channel(_) => Vec::new(),
    };
    (report, collected)
}

#[derive(Default)]
struct Counters {
    items_in: u64,
    bytes_in: u64,
    skipped: u64,
    error: Option<String>,
    /// When the first input arrived.
    first_input: Option<Instant>,
}

fn stage_loop(
    stage: &mut dyn crate::pipeline::stage::Stage,
    id: &str,
    on_error: OnError,
    rx: &Receiver<Artifact>,
    out: &mut Output,
    ctx: &StageContext,
    counters: &mut Counters,
) -> Result<()> {
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(cancelled(id));
        }
        let input = match rx.recv_timeout(POLL) {
            Ok(input) => input,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        counters.first_input.get_or_insert_with(Instant::now);
        counters.items_in += 1;
        counters.bytes_in += input.byte_len();
        let kind = input.kind();
        match guarded(id, "process", || stage.process(input, ctx, out))? {
            Ok(()) => {}
            Err(e) if on_error == OnError::Skip && !matches!(e, Error::Cancelled(_)) => {
                counters.skipped += 1;
                tracing::warn!(error = %e, kind = kind.name(), "skipping an artifact the stage failed on");
            }
            Err(e) => return Err(e),
        }
    }
    if ctx.cancel.is_cancelled() {
        return Err(cancelled(id));
    }
    guarded(id, "finish", || stage.finish(ctx, out))?
}

fn cancelled(id: &str) -> Error {
    Error::Cancelled(format!(
        "stage `{id}` stopped because the run was cancelled"
    ))
}

/// Calls into the stage, turning a panic into an error naming the stage.
fn guarded(id: &str, what: &str, call: impl FnOnce() -> Result<()>) -> Result<Result<()>> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
        Error::Failed(format!(
            "stage `{id}` panicked in {what}: {}",
            panic_message(payload.as_ref())
        ))
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Where a stage's outputs go: the next stage's channel, or the run's result.
enum Sink {
    Channel(Sender<Artifact>),
    Collect(Vec<Artifact>),
}

/// The [`Emit`] given to a stage.
struct Output {
    sink: Sink,
    cancel: CancelToken,
    stage_id: String,
    next: Option<usize>,
    items: u64,
    bytes: u64,
}

impl Emit for Output {
    fn emit(&mut self, artifact: Artifact) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(&self.stage_id));
        }
        let bytes = artifact.byte_len();
        match &mut self.sink {
            Sink::Collect(outputs) => outputs.push(artifact),
            Sink::Channel(tx) => {
                let mut artifact = artifact;
                loop {
                    match tx.send_timeout(artifact, POLL) {
                        Ok(()) => break,
                        Err(SendTimeoutError::Timeout(back)) => {
                            if self.cancel.is_cancelled() {
                                return Err(cancelled(&self.stage_id));
                            }
                            artifact = back;
                        }
                        Err(SendTimeoutError::Disconnected(_)) => {
                            return Err(Error::Cancelled(format!(
                                "stage `{}`: the next stage (#{}) has stopped",
                                self.stage_id,
                                self.next.map_or(0, |n| n + 1)
                            )));
                        }
                    }
                }
            }
        }
        self.items += 1;
        self.bytes += bytes;
        Ok(())
    }
}
