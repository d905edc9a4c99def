//! The benchmark's HTML report: RTO against database size, the baselines
//! beside ours for each size, and a stage timeline per restore (stages run
//! concurrently: each bar spans from the stage's first input to its end).

use crate::report::svg::{self, Bar, Series, Span, PALETTE};
use crate::report::{escape, page, table};

use super::{BenchReport, RestoreMeasurement, SizeReport};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.2}{unit}"))
}

fn verdict(v: Option<bool>) -> String {
    match v {
        Some(true) => "<span class=\"ok\">yes</span>".into(),
        Some(false) => "<span class=\"bad\">NO</span>".into(),
        None => "-".into(),
    }
}

fn rto_vs_size(r: &BenchReport) -> String {
    let mut series: Vec<Series> = Vec::new();
    let names: Vec<String> = r
        .sizes
        .first()
        .map(|z| z.restores.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        series.push(Series {
            name: format!("ours: {name}"),
            points: r
                .sizes
                .iter()
                .filter_map(|z| {
                    z.restores
                        .iter()
                        .find(|m| &m.name == name)
                        .map(|m| (mib(z.database_bytes), m.wall_seconds))
                })
                .collect(),
            colour: PALETTE[i % PALETTE.len()],
            dashed: false,
        });
    }
    let base_names: Vec<String> = r
        .sizes
        .first()
        .map(|z| {
            z.baselines
                .iter()
                .filter(|b| b.seconds.is_some())
                .map(|b| b.name.clone())
                .collect()
        })
        .unwrap_or_default();
    for (i, name) in base_names.iter().enumerate() {
        series.push(Series {
            name: name.clone(),
            points: r
                .sizes
                .iter()
                .filter_map(|z| {
                    z.baselines
                        .iter()
                        .find(|b| &b.name == name)
                        .and_then(|b| b.seconds)
                        .map(|s| (mib(z.database_bytes), s))
                })
                .collect(),
            colour: PALETTE[(names.len() + i) % PALETTE.len()],
            dashed: true,
        });
    }
    let ticks: Vec<(f64, String)> = r
        .sizes
        .iter()
        .map(|z| {
            (
                mib(z.database_bytes),
                format!("{:.0} MiB", mib(z.database_bytes)),
            )
        })
        .collect();
    let note = if r.sizes.len() < 2 {
        "<p class=\"meta\">One size measured: give several (--size 1GiB,10GiB) for a trend.</p>"
    } else {
        ""
    };
    format!(
        "{note}{}",
        svg::lines(
            &series,
            "database size after the history (MiB)",
            "seconds",
            &[],
            &ticks
        )
    )
}

fn methods(z: &SizeReport) -> String {
    let mut rows = Vec::new();
    for m in &z.restores {
        rows.push(vec![
            (format!("<b>ours: {}</b>", escape(&m.name)), false),
            (format!("{:.2}", m.wall_seconds), true),
            (opt(m.ratio_to_cp, "x"), true),
            (
                format!("{:.1} MiB / {}", mib(m.bytes_read), m.objects_read),
                true,
            ),
            (
                m.peak_rss_bytes
                    .map_or_else(|| "-".into(), |b| format!("{:.0} MiB", mib(b))),
                true,
            ),
            (
                verdict(
                    m.equals_source
                        .or(Some(m.success && m.restored_txid == m.expected_txid)),
                ),
                false,
            ),
            (
                format!("txid {} (expected {})", m.restored_txid, m.expected_txid),
                false,
            ),
        ]);
    }
    for b in &z.baselines {
        rows.push(vec![
            (escape(&b.name), false),
            (opt(b.seconds, ""), true),
            (opt(b.ratio_to_cp, "x"), true),
            ("-".into(), true),
            ("-".into(), true),
            (verdict(b.equals_source), false),
            (escape(b.skipped.as_deref().unwrap_or(&b.note)), false),
        ]);
    }
    table(
        &[
            "method",
            "seconds",
            "x cp",
            "read (objects)",
            "peak RSS",
            "correct",
            "notes",
        ],
        &rows,
    )
}

fn beside(z: &SizeReport) -> String {
    let mut bars: Vec<Bar> = z
        .restores
        .iter()
        .map(|m| Bar {
            label: format!("ours: {}", m.name),
            value: m.wall_seconds,
            note: opt(m.ratio_to_cp, "x cp"),
            colour: "#0969da",
        })
        .collect();
    bars.extend(z.baselines.iter().filter_map(|b| {
        b.seconds.map(|s| Bar {
            label: b.name.clone(),
            value: s,
            note: opt(b.ratio_to_cp, "x cp"),
            colour: "#8c959f",
        })
    }));
    svg::bars(&bars, "s")
}

fn timeline(m: &RestoreMeasurement) -> String {
    let spans: Vec<Span> = m
        .stages
        .iter()
        .map(|s| Span {
            label: s.id.clone(),
            start: s.start_offset_seconds,
            end: s.end_offset_seconds,
            seconds: s.seconds,
        })
        .collect();
    format!(
        "<h3>Stage timeline: {} ({:.2} s wall, {:.2} s in the pipeline)</h3>{}",
        escape(&m.name),
        m.wall_seconds,
        m.recovery_time_seconds,
        svg::timeline(&spans, m.recovery_time_seconds)
    )
}

/// The report as one self-contained HTML document.
pub fn render(r: &BenchReport) -> String {
    let mut body = format!(
        "<p class=\"meta\">{} &middot; {} CPUs &middot; {} s of history at {} commits/s, one capture step per second{}</p>",
        escape(&r.timestamp),
        r.cpus,
        r.history_seconds,
        r.rate,
        r.pipeline
            .as_ref()
            .map(|p| format!(" &middot; pipeline {}", escape(&p.display().to_string())))
            .unwrap_or_default()
    );
    body.push_str(&format!(
        "<p>Result: {}</p><h2>RTO against database size</h2>{}",
        if r.success {
            "<span class=\"ok\">every restore reached its point and equals the source</span>"
        } else {
            "<span class=\"bad\">a restore failed or differs from the source</span>"
        },
        rto_vs_size(r)
    ));
    for z in &r.sizes {
        let g = &z.generation;
        let c = &z.chain;
        body.push_str(&format!(
            "<h2>{:.0} MiB database</h2><p class=\"meta\">generated {} events in {:.1} s ({:.0} MiB/s) &middot; \
             snapshot in {:.1} s, {} capture steps ({} commits, {} segments) in {:.1} s &middot; \
             repository {:.0} MiB &middot; {:.0} MiB after the history</p>{}<h3>Ours beside the baselines</h3>{}",
            mib(z.requested_bytes),
            g.events,
            g.seconds,
            g.bytes_per_second / f64::from(1 << 20),
            c.snapshot_seconds,
            c.steps,
            c.commits,
            c.segments,
            c.capture_seconds,
            mib(c.repository_bytes),
            mib(z.database_bytes),
            methods(z),
            beside(z)
        ));
        for m in &z.restores {
            body.push_str(&timeline(m));
        }
    }
    page("genesis-recovery: RTO benchmark", &body)
}
