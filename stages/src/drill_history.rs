//! The drill history: every drill appends its result as one JSON line to a
//! file (by default `state/drills.jsonl` in the repository), and
//! [`render`] draws the trend of past drills against the guide's targets:
//! RTO under 15 minutes, RPO under 5 minutes, validation passing, and
//! reconciliation above 99.9 %.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use genesis_core::{Error, Result};

use crate::drill::DrillReport;
use crate::report::svg::{self, Series, TargetLine, PALETTE};
use crate::report::{escape, page, table};

/// The guide's targets.
pub const RTO_TARGET_SECONDS: f64 = 15.0 * 60.0;
pub const RPO_TARGET_SECONDS: f64 = 5.0 * 60.0;
pub const RECONCILIATION_TARGET: f64 = 0.999;

/// One drill, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub timestamp: String,
    pub success: bool,
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
    pub validation_pass: bool,
    pub reconciliation_accuracy: Option<f64>,
    pub restored_txid: u64,
    pub restore_point_timestamp: String,
    /// Seconds of each stage, in pipeline order.
    pub stages: Vec<StageSeconds>,
}

/// One stage's seconds in a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    pub id: String,
    pub seconds: f64,
}

impl From<&DrillReport> for DrillRecord {
    fn from(r: &DrillReport) -> Self {
        DrillRecord {
            timestamp: r.timestamp.clone(),
            success: r.success,
            rto_seconds: r.rto_seconds,
            rpo_seconds: r.rpo_seconds,
            validation_pass: r.validation_pass,
            reconciliation_accuracy: r.reconciliation_accuracy,
            restored_txid: r.restored_txid,
            restore_point_timestamp: r.restore_point_timestamp.clone(),
            stages: r
                .stages
                .iter()
                .map(|s| StageSeconds {
                    id: s.id.clone(),
                    seconds: s.seconds,
                })
                .collect(),
        }
    }
}

/// The default history file of a repository: `state/drills.jsonl` in it.
pub fn default_path(repo: &Path) -> PathBuf {
    repo.join("state").join("drills.jsonl")
}

/// Appends one drill to the history file (created with its directory), one
/// line written whole and fsynced.
///
/// # Errors
/// I/O failures naming the file.
pub fn append(path: &Path, record: &DrillRecord) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create the directory of", path, e))?;
    }
    let mut line = serde_json::to_string(record)
        .map_err(|e| Error::Failed(format!("encoding a drill record: {e}")))?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open the drill history", path, e))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("append to the drill history", path, e))
}

/// Reads every drill of the history file, oldest first (none when missing).
///
/// # Errors
/// I/O failures; a line that is not a drill record, named by its number.
pub fn read(path: &Path) -> Result<Vec<DrillRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read the drill history", path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::Usage(format!(
                    "{} line {}: not a drill record ({e}); remove or repair the line",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

fn chart(
    id: &str,
    title: &str,
    records: &[DrillRecord],
    y_label: &str,
    value: impl Fn(&DrillRecord) -> Option<f64>,
    target: TargetLine,
) -> String {
    let points: Vec<(f64, f64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| value(r).map(|v| ((i + 1) as f64, v)))
        .collect();
    if points.is_empty() {
        return format!(
            "<section id=\"{id}\"><h2>{}</h2><p class=\"meta\">no drill measured this yet</p></section>",
            escape(title)
        );
    }
    // At most about six labelled drills, the last always.
    let every = records.len().div_ceil(6).max(1);
    let ticks: Vec<(f64, String)> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % every == 0 || i + 1 == records.len())
        .map(|(i, r)| {
            // Month, day and time: the year would crowd the axis.
            let when = r.timestamp.get(5..19).unwrap_or(&r.timestamp);
            (
                (i + 1) as f64,
                format!("#{}\n{}", i + 1, when.replace('T', " ")),
            )
        })
        .collect();
    format!(
        "<section id=\"{id}\"><h2>{}</h2>{}</section>",
        escape(title),
        svg::lines(
            &[Series {
                name: title.to_string(),
                points,
                colour: PALETTE[0],
                dashed: false,
            }],
            "drill",
            y_label,
            &[target],
            &ticks,
        )
    )
}

fn mark(ok: bool) -> String {
    if ok {
        "<span class=\"ok\">yes</span>".into()
    } else {
        "<span class=\"bad\">NO</span>".into()
    }
}

/// The drill history as one self-contained HTML document.
pub fn render(records: &[DrillRecord], source: &Path) -> String {
    let mut body = format!(
        "<p class=\"meta\">{} drills from {} &middot; targets from the recovery guide: RTO &lt; 15 min, RPO &lt; 5 min, validation 100 %, reconciliation &gt; 99.9 %</p>",
        records.len(),
        escape(&source.display().to_string())
    );
    body.push_str(&chart(
        "rto",
        "RTO (seconds)",
        records,
        "seconds",
        |r| Some(r.rto_seconds),
        TargetLine {
            value: RTO_TARGET_SECONDS,
            label: "target 15 min".into(),
        },
    ));
    body.push_str(&chart(
        "rpo",
        "RPO (seconds)",
        records,
        "seconds",
        |r| Some(r.rpo_seconds),
        TargetLine {
            value: RPO_TARGET_SECONDS,
            label: "target 5 min".into(),
        },
    ));
    body.push_str(&chart(
        "validation",
        "Validation passed (%)",
        records,
        "%",
        |r| Some(if r.validation_pass { 100.0 } else { 0.0 }),
        TargetLine {
            value: 100.0,
            label: "target 100 %".into(),
        },
    ));
    body.push_str(&chart(
        "reconciliation",
        "Reconciliation accuracy (%)",
        records,
        "%",
        |r| r.reconciliation_accuracy.map(|a| a * 100.0),
        TargetLine {
            value: RECONCILIATION_TARGET * 100.0,
            label: "target 99.9 %".into(),
        },
    ));
    let rows: Vec<Vec<(String, bool)>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                ((i + 1).to_string(), true),
                (escape(&r.timestamp), false),
                (format!("{:.2}", r.rto_seconds), true),
                (format!("{:.2}", r.rpo_seconds), true),
                (mark(r.validation_pass), false),
                (
                    r.reconciliation_accuracy
                        .map_or_else(|| "-".into(), |a| format!("{:.3} %", a * 100.0)),
                    true,
                ),
                (r.restored_txid.to_string(), true),
                (escape(&r.restore_point_timestamp), false),
                (
                    escape(
                        &r.stages
                            .iter()
                            .map(|s| format!("{} {:.2}", s.id, s.seconds))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    false,
                ),
            ]
        })
        .collect();
    body.push_str("<h2>Every drill</h2>");
    body.push_str(&table(
        &[
            "#",
            "when",
            "RTO s",
            "RPO s",
            "validation",
            "reconciliation",
            "txid",
            "restore point",
            "stages (s)",
        ],
        &rows,
    ));
    page("genesis-recovery: recovery drills", &body)
}
