//! Runs through test stages: ordering, back-pressure, reports, the first
//! failure cancelling the rest, panics, and no deadlock (every run has a
//! watchdog).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{item_number, registry, Probe};
use crate::error::Error;
use crate::pipeline::{compile_str, CancelToken, NoPlugins, RunFailure, RunOutcome, StageStatus};
use crate::progress::NoProgress;

/// A pipeline of `step` stages: `(id, extra lines of the stage table)`.
fn pipeline(stages: &[(&str, &str)]) -> String {
    let mut text = String::from("name = \"test\"\n");
    for (id, extra) in stages {
        text.push_str(&format!(
            "[[stages]]\nid = \"{id}\"\ntype = \"step\"\n{extra}\n"
        ));
    }
    text
}

/// Compiles and runs `text` on another thread; panics if it does not end
/// within 20 seconds (a deadlock).
fn run(text: &str, probe: &Arc<Probe>, cancel: CancelToken) -> Result<RunOutcome, Box<RunFailure>> {
    let compiled = compile_str(
        text,
        Path::new("test.toml"),
        &registry(probe),
        &NoPlugins,
        &[],
    )
    .unwrap_or_else(|e| panic!("test pipeline does not compile: {e}"));
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let result = compiled.run(Arc::new(NoProgress), cancel);
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the run did not end within 20 s: deadlock")
}

fn numbers(outcome: &RunOutcome) -> Vec<i64> {
    outcome
        .outputs
        .iter()
        .map(|a| item_number(a).expect("numbered item"))
        .collect()
}

fn statuses(reports: &[crate::pipeline::StageReport]) -> Vec<(&str, StageStatus)> {
    reports.iter().map(|r| (r.id.as_str(), r.status)).collect()
}

#[test]
fn pipeline_run_keeps_order_and_reports_every_stage() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 200"),
        ("middle", "channel_capacity = 1"),
        ("last", "channel_capacity = 2"),
    ]);
    let outcome = run(&text, &probe, CancelToken::default()).expect("runs");
    assert_eq!(numbers(&outcome), (0..200).collect::<Vec<_>>());
    let r = &outcome.stages;
    assert_eq!(
        statuses(r),
        [
            ("source", StageStatus::Ok),
            ("middle", StageStatus::Ok),
            ("last", StageStatus::Ok)
        ]
    );
    assert_eq!((r[0].items_in, r[0].items_out), (1, 200));
    assert_eq!((r[1].items_in, r[1].items_out), (200, 200));
    assert_eq!((r[2].items_in, r[2].items_out), (200, 200));
    assert!(r
        .iter()
        .all(|r| r.error.is_none() && r.stage_type == "step"));
    assert!(r
        .iter()
        .all(|r| r.seconds >= 0.0 && r.seconds <= outcome.seconds));
    assert_eq!(
        *probe.finished.lock().expect("lock"),
        ["source", "middle", "last"]
    );
    let json = serde_json::to_value(&outcome.stages[0]).expect("serializes");
    assert_eq!(json["status"], "ok");
    assert_eq!(json["items_out"], 200);
}

#[test]
fn pipeline_run_back_pressure_with_capacity_one() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 40"),
        (
            "slow",
            "channel_capacity = 1\n[stages.config]\ndelay_ms = 3\nmeasure_lag = true",
        ),
    ]);
    let outcome = run(&text, &probe, CancelToken::default()).expect("runs");
    assert_eq!(outcome.outputs.len(), 40);
    // The consumer holds one item, the channel one more, and the producer
    // may have just handed over the next: never further ahead than that.
    let lag = probe.max_lag.load(Ordering::SeqCst);
    assert!((1..=3).contains(&lag), "producer ran {lag} items ahead");
}

#[test]
fn pipeline_run_gives_each_stage_its_workers() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[("one", "workers = 1"), ("three", "workers = 3")]);
    run(&text, &probe, CancelToken::default()).expect("runs");
    let threads = probe.threads.lock().expect("lock").clone();
    assert_eq!(threads, [("one".to_string(), 1), ("three".to_string(), 3)]);
}

#[test]
fn pipeline_run_first_failure_cancels_the_rest() {
    let probe = Arc::new(Probe::default());
    // The source could emit a million items into a channel of one: it is
    // blocked on it when the middle stage fails, and must get out.
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 1000000"),
        (
            "middle",
            "channel_capacity = 1\n[stages.config]\nfail_at = 3",
        ),
        ("last", "channel_capacity = 1"),
    ]);
    let failure = run(&text, &probe, CancelToken::default()).expect_err("fails");
    assert!(
        matches!(&failure.error, Error::Failed(m) if m == "boom at item 3"),
        "{failure}"
    );
    assert_eq!(failure.stage.as_deref(), Some("middle"));
    assert_eq!(failure.to_string(), "stage `middle` failed: boom at item 3");
    assert_eq!(
        statuses(&failure.stages),
        [
            ("source", StageStatus::Cancelled),
            ("middle", StageStatus::Failed),
            ("last", StageStatus::Cancelled)
        ]
    );
    assert_eq!(failure.stages[1].error.as_deref(), Some("boom at item 3"));
    assert_eq!(failure.stages[1].items_in, 4);
    assert!(failure.stages[2].items_in <= 3);
    assert!(failure.stages[0].items_out < 1000);
    // `?` in callers keeps the original error.
    let as_error: Error = failure.into();
    assert!(matches!(as_error, Error::Failed(_)));
}

#[test]
fn pipeline_run_failure_of_the_last_stage_releases_blocked_producers() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[
        (
            "source",
            "channel_capacity = 1\n[stages.config]\ncount = 1000000",
        ),
        ("middle", "channel_capacity = 1"),
        (
            "last",
            "channel_capacity = 1\n[stages.config]\nfail_at = 0\ndelay_ms = 50",
        ),
    ]);
    let failure = run(&text, &probe, CancelToken::default()).expect_err("fails");
    assert_eq!(failure.stage.as_deref(), Some("last"));
    assert!(matches!(&failure.error, Error::Failed(m) if m == "boom at item 0"));
    assert_eq!(
        statuses(&failure.stages),
        [
            ("source", StageStatus::Cancelled),
            ("middle", StageStatus::Cancelled),
            ("last", StageStatus::Failed)
        ]
    );
}

#[test]
fn pipeline_run_panicking_stage_becomes_an_error_naming_it() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 100"),
        ("middle", "[stages.config]\npanic_at = 1"),
        ("last", ""),
    ]);
    let failure = run(&text, &probe, CancelToken::default()).expect_err("fails");
    assert_eq!(failure.stage.as_deref(), Some("middle"));
    match &failure.error {
        Error::Failed(m) => assert_eq!(m, "stage `middle` panicked in process: kaboom at item 1"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(failure.stages[1].status, StageStatus::Failed);
}

#[test]
fn pipeline_run_skip_drops_the_failing_artifact() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 6"),
        (
            "middle",
            "on_error = \"skip\"\n[stages.config]\nfail_at = 2",
        ),
    ]);
    let outcome = run(&text, &probe, CancelToken::default()).expect("runs");
    assert_eq!(numbers(&outcome), [0, 1, 3, 4, 5]);
    assert_eq!(outcome.stages[1].items_skipped, 1);
    assert_eq!(outcome.stages[1].status, StageStatus::Ok);

    // A panic is never skipped.
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 6"),
        (
            "middle",
            "on_error = \"skip\"\n[stages.config]\npanic_at = 2",
        ),
    ]);
    let failure = run(&text, &probe, CancelToken::default()).expect_err("fails");
    assert_eq!(failure.stage.as_deref(), Some("middle"));
}

#[test]
fn pipeline_run_finish_failure_fails_the_run() {
    let probe = Arc::new(Probe::default());
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 3"),
        (
            "last",
            "on_error = \"skip\"\n[stages.config]\nfail_in_finish = true",
        ),
    ]);
    let failure = run(&text, &probe, CancelToken::default()).expect_err("fails");
    assert_eq!(failure.stage.as_deref(), Some("last"));
    assert!(matches!(&failure.error, Error::Failed(m) if m == "finish failed"));
    assert_eq!(failure.stages[0].status, StageStatus::Ok);
}

#[test]
fn pipeline_run_cancelled_by_the_caller() {
    let probe = Arc::new(Probe::default());
    let cancel = CancelToken::default();
    cancel.cancel();
    let text = pipeline(&[("source", "[stages.config]\ncount = 3"), ("last", "")]);
    let failure = run(&text, &probe, cancel).expect_err("cancelled");
    assert!(matches!(failure.error, Error::Cancelled(_)));
    assert_eq!(failure.stage, None);
    assert!(failure
        .stages
        .iter()
        .all(|r| r.status == StageStatus::Cancelled));

    // Cancelled while running: a slow stage with a full input.
    let cancel = CancelToken::default();
    let text = pipeline(&[
        ("source", "[stages.config]\ncount = 1000000"),
        (
            "slow",
            "channel_capacity = 1\n[stages.config]\ndelay_ms = 5",
        ),
    ]);
    let trigger = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        trigger.cancel();
    });
    let failure = run(&text, &probe, cancel).expect_err("cancelled");
    assert!(matches!(failure.error, Error::Cancelled(_)), "{failure}");
    assert_eq!(failure.stage, None);
}
