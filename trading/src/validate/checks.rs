//! Rules 2 and 3, the time and unknown-type warnings and the event metrics,
//! checked on the thread that reads the events, as it reads each one (its
//! texts are in that CPU's cache then), beside the fold on the other
//! ([`super::pass`]). Nothing grows with the history but counters and capped
//! lists of findings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::{codes, Sink, ValidateOptions};
use crate::event::Event;

/// Findings kept in event order until the report is assembled.
#[derive(Default)]
pub(super) struct Held {
    kept: Vec<String>,
    more: usize,
}

impl Held {
    pub(super) fn push(&mut self, cap: usize, m: String) {
        if self.kept.len() < cap {
            self.kept.push(m);
        } else {
            self.more += 1;
        }
    }
    pub(super) fn into_sink(self, code: &str, sink: &mut Sink) {
        for m in self.kept {
            sink.push(code, m);
        }
        sink.skip(code, self.more);
    }
}

/// The events of one type: how many, the first one's sequence number, and
/// whether the type has an effect or a handler (else it is warned about).
struct TypeCount {
    count: u64,
    first: i64,
    known: bool,
}

/// The checks of each event, in stream order.
pub(super) struct Checks<'o> {
    opts: &'o ValidateOptions,
    cap: usize,
    // Rule 2.
    expected: i64,
    prev: Option<(i64, String)>,
    pub(super) sequence: Held,
    // Rule 3 and the time warnings.
    pub(super) after_target: Held,
    last_time: Option<(DateTime<Utc>, i64)>,
    /// Per event type: its count, the first event's sequence number, and
    /// whether it is known or handled (looked up once per type, not per event).
    by_type: crate::replay::FxMap<String, TypeCount>,
    count: u64,
    last: Option<(i64, String)>,
    /// The event warnings, in event order, then the unknown types'.
    pub(super) warnings: Sink,
}

impl<'o> Checks<'o> {
    pub(super) fn new(opts: &'o ValidateOptions) -> Checks<'o> {
        Checks {
            opts,
            cap: opts.max_findings_per_rule.max(1),
            expected: 1,
            prev: None,
            sequence: Held::default(),
            after_target: Held::default(),
            last_time: None,
            by_type: Default::default(),
            count: 0,
            last: None,
            warnings: Sink::new(opts.max_findings_per_rule),
        }
    }

    /// The last event's time, for the open-order age warning.
    pub(super) fn last_time(&self) -> Option<&str> {
        self.last.as_ref().map(|(_, t)| t.as_str())
    }

    /// Checks one event (the next in the stream).
    pub(super) fn event(&mut self, ev: &Event) {
        self.count += 1;
        let s = ev.sequence_number;
        // Rule 2: 1, 2, 3, ...
        match &self.prev {
            Some((p, pid)) if *p == s => {
                let m = format!(
                    "sequence number {s} is used twice (events {pid} and {})",
                    ev.event_id
                );
                self.sequence.push(self.cap, m);
            }
            _ if s > self.expected => {
                let gap = if s - 1 == self.expected {
                    format!("{}", self.expected)
                } else {
                    format!("{}..{}", self.expected, s - 1)
                };
                let m = format!(
                    "sequence numbers {gap} are missing (before event #{s}, {})",
                    ev.event_id
                );
                self.sequence.push(self.cap, m);
            }
            _ => {}
        }
        self.expected = self.expected.max(s + 1);
        match &mut self.prev {
            Some((p, pid)) => {
                *p = s;
                pid.clear();
                pid.push_str(&ev.event_id);
            }
            None => self.prev = Some((s, ev.event_id.clone())),
        }
        self.times(ev);
        match self.by_type.get_mut(ev.event_type.as_str()) {
            Some(t) => t.count += 1,
            None => {
                let known = crate::effects::is_known(&ev.event_type)
                    || self.opts.handled_event_types.contains(&ev.event_type);
                let t = TypeCount {
                    count: 1,
                    first: ev.sequence_number,
                    known,
                };
                self.by_type.insert(ev.event_type.clone(), t);
            }
        }
        match &mut self.last {
            Some((ls, lt)) => {
                *ls = s;
                lt.clear();
                lt.push_str(&ev.created_at);
            }
            None => self.last = Some((s, ev.created_at.clone())),
        }
    }

    fn times(&mut self, ev: &Event) {
        match crate::time::parse_opt(&ev.created_at) {
            None => self.warnings.push(
                codes::BAD_TIMESTAMP,
                format!(
                    "event #{} ({}) has created_at {:?}, which is not a timestamp",
                    ev.sequence_number, ev.event_id, ev.created_at
                ),
            ),
            Some(t) => {
                if let Some(target) = self.opts.target.filter(|target| t > *target) {
                    let m = format!(
                        "event #{} ({}, {}) at {} is after the target {}",
                        ev.sequence_number,
                        ev.event_id,
                        ev.event_type,
                        ev.created_at,
                        crate::time::format(target)
                    );
                    self.after_target.push(self.cap, m);
                }
                if let Some((lt, ls)) = self.last_time.filter(|(lt, _)| t < *lt) {
                    self.warnings.push(
                        codes::TIME_BACKWARDS,
                        format!(
                            "event #{} at {} is earlier than event #{ls} at {}",
                            ev.sequence_number,
                            ev.created_at,
                            crate::time::format(lt)
                        ),
                    );
                }
                if self.last_time.is_none_or(|(lt, _)| t >= lt) {
                    self.last_time = Some((t, ev.sequence_number));
                }
            }
        }
    }

    /// Ends the checks: the unknown-type warnings and the event metrics.
    pub(super) fn finish(&mut self, metrics: &mut Map<String, Value>) {
        let by_type: BTreeMap<&String, &TypeCount> = self.by_type.iter().collect();
        for (ty, TypeCount { count, first, .. }) in by_type.iter().filter(|(_, t)| !t.known) {
            self.warnings.push(
                codes::UNKNOWN_EVENT_TYPE,
                format!(
                    "event type {ty} has no effect and no handler ({count} events, first #{first})"
                ),
            );
        }
        metrics.insert("event_count".into(), json!(self.count));
        let counts: BTreeMap<&String, u64> = by_type.iter().map(|(ty, t)| (*ty, t.count)).collect();
        metrics.insert("events_by_type".into(), json!(counts));
        metrics.insert(
            "last_event_sequence".into(),
            json!(self.last.as_ref().map(|l| l.0)),
        );
        metrics.insert(
            "last_event_time".into(),
            json!(self.last.as_ref().map(|l| l.1.clone())),
        );
    }
}
