//! Inline SVG charts: horizontal bars, lines over points with target lines,
//! and a stage timeline (one bar per stage from its start to its end).

use std::fmt::Write as _;

use super::escape;

/// Colours, cycled.
pub const PALETTE: [&str; 12] = [
    "#0969da", "#bf8700", "#1a7f37", "#8250df", "#cf222e", "#1b7c83", "#953800", "#24292f",
    "#e85aad", "#7d8590", "#a2d729", "#33b3ff",
];

/// A "nice" upper bound of an axis holding `max`.
fn nice_max(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= max {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        // 6.25, 12.5, 2: no more digits than the value has.
        let t = format!("{v:.2}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else if v.abs() >= 0.001 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// Opens an `<svg>` element of the given size.
fn open(width: f64, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\">"
    )
}

/// Five vertical grid lines from `left` over `width`, labelled 0..`max` `unit`.
fn vertical_grid(
    s: &mut String,
    left: f64,
    width: f64,
    top: f64,
    height: f64,
    max: f64,
    unit: &str,
) {
    for i in 0..=4 {
        let x = left + width * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{}\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{} {}</text>",
            height - 22.0,
            height - 6.0,
            fmt_tick(max * f64::from(i) / 4.0),
            escape(unit)
        );
    }
}

/// One horizontal bar.
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// A note after the value (e.g. "2.1x cp").
    pub note: String,
    pub colour: &'static str,
}

/// Horizontal bars, one per row, on a shared axis of `unit`.
pub fn bars(bars: &[Bar], unit: &str) -> String {
    let (left, width, row) = (260.0, 760.0, 26.0);
    let height = 40.0 + row * bars.len() as f64;
    let max = nice_max(bars.iter().map(|b| b.value).fold(0.0, f64::max));
    let mut s = open(left + width + 140.0, height);
    vertical_grid(&mut s, left, width, 10.0, height, max, unit);
    for (i, b) in bars.iter().enumerate() {
        let y = 12.0 + row * i as f64;
        let w = (b.value / max * width).max(1.0);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {} {}</title></rect><text x=\"{:.1}\" y=\"{}\">{} {} &#183; {}</text>",
            left - 8.0,
            y + 14.0,
            escape(&b.label),
            row - 8.0,
            b.colour,
            escape(&b.label),
            fmt_tick(b.value),
            escape(unit),
            left + w + 6.0,
            y + 14.0,
            fmt_tick(b.value),
            escape(unit),
            escape(&b.note)
        );
    }
    s.push_str("</svg>");
    s
}

/// One line of a [`lines`] chart.
pub struct Series {
    pub name: String,
    /// (x, y) points; x in the chart's unit.
    pub points: Vec<(f64, f64)>,
    pub colour: &'static str,
    /// Drawn dashed (e.g. the baselines beside ours).
    pub dashed: bool,
}

/// A horizontal target line.
pub struct TargetLine {
    pub value: f64,
    pub label: String,
}

/// Lines over points (each point a circle of class `point`), x and y from
/// zero, with optional target lines and x tick labels.
pub fn lines(
    series: &[Series],
    x_label: &str,
    y_label: &str,
    targets: &[TargetLine],
    x_ticks: &[(f64, String)],
) -> String {
    let (left, top, width, height) = (70.0, 26.0, 820.0, 260.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_top = all
        .clone()
        .map(|p| p.0)
        .chain(x_ticks.iter().map(|t| t.0))
        .fold(0.0, f64::max);
    // Explicit ticks (sizes, drill numbers) end the axis just past the last.
    let x_max = if x_ticks.is_empty() {
        nice_max(x_top)
    } else {
        (x_top * 1.08).max(1.0)
    };
    let data_max = all.map(|p| p.1).fold(0.0, f64::max);
    // A target far above the data would flatten it to the axis: such a
    // target is named at the top edge instead of drawn to scale.
    let shown = |t: &TargetLine| data_max <= 0.0 || t.value <= data_max * 4.0;
    let y_max = nice_max(
        targets
            .iter()
            .filter(|t| shown(t))
            .map(|t| t.value)
            .fold(data_max, f64::max),
    );
    let px = |x: f64| left + x / x_max * width;
    let py = |y: f64| top + height - y / y_max * height;
    let mut s = open(left + width + 240.0, top + height + 54.0);
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = py(v);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left + width,
            left - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    let ticks: Vec<(f64, String)> = if x_ticks.is_empty() {
        (0..=4)
            .map(|i| {
                let v = x_max * f64::from(i) / 4.0;
                (v, fmt_tick(v))
            })
            .collect()
    } else {
        x_ticks.to_vec()
    };
    for (v, label) in &ticks {
        // A label may have two lines.
        let (first, second) = label.split_once('\n').unwrap_or((label, ""));
        let _ = write!(
            s,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}<tspan x=\"{x}\" dy=\"13\">{}</tspan></text>",
            top + height + 16.0,
            escape(first),
            escape(second),
            x = px(*v),
        );
    }
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/><line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        top + height,
        left + width,
        top + height,
        top + height,
        left + width / 2.0,
        top + height + 48.0,
        escape(x_label),
        top + height / 2.0,
        top + height / 2.0,
        escape(y_label)
    );
    for t in targets {
        if shown(t) {
            let y = py(t.value);
            let _ = write!(
                s,
                "<line class=\"target\" x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/><text x=\"{}\" y=\"{}\" fill=\"#cf222e\">{}</text>",
                left + width,
                left + width + 6.0,
                y + 4.0,
                escape(&t.label)
            );
        } else {
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#cf222e\">{}: far above, every point meets it</text>",
                left + width,
                top - 10.0,
                escape(&t.label)
            );
        }
    }
    for (i, se) in series.iter().enumerate() {
        let path: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if path.len() > 1 {
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"{}\"/>",
                se.colour,
                if se.dashed {
                    " stroke-dasharray=\"5 4\""
                } else {
                    ""
                },
                path.join(" ")
            );
        }
        for &(x, y) in &se.points {
            let _ = write!(
                s,
                "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"><title>{}: {}</title></circle>",
                px(x),
                py(y),
                se.colour,
                escape(&se.name),
                fmt_tick(y)
            );
            if series.len() == 1 {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    px(x),
                    py(y) - 8.0,
                    fmt_tick(y)
                );
            }
        }
        if series.len() == 1 {
            continue;
        }
        let ly = top + 8.0 + 18.0 * i as f64;
        let lx = left + width + 12.0;
        let _ = write!(
            s,
            "<rect x=\"{lx}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            ly + 20.0,
            se.colour,
            lx + 18.0,
            ly + 30.0,
            escape(&se.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// One stage of a timeline: when it started working and when it ended,
/// in seconds from the run's start.
pub struct Span {
    pub label: String,
    pub start: f64,
    pub end: f64,
    pub seconds: f64,
}

/// A stage timeline: one bar (class `stage-bar`) per stage, on a shared
/// time axis of `total` seconds.
pub fn timeline(spans: &[Span], total: f64) -> String {
    let (left, width, row) = (130.0, 820.0, 22.0);
    let height = 36.0 + row * spans.len() as f64;
    let max = nice_max(total.max(spans.iter().map(|s| s.end).fold(0.0, f64::max)));
    let mut s = open(left + width + 120.0, height);
    vertical_grid(&mut s, left, width, 6.0, height, max, "s");
    for (i, sp) in spans.iter().enumerate() {
        let y = 8.0 + row * i as f64;
        let x = left + sp.start.max(0.0) / max * width;
        let w = ((sp.end - sp.start).max(0.0) / max * width).max(2.0);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect class=\"stage-bar\" data-stage=\"{}\" x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {:.3} s to {:.3} s (ran {:.3} s)</title></rect><text x=\"{:.1}\" y=\"{}\">{:.2} s</text>",
            left - 8.0,
            y + 12.0,
            escape(&sp.label),
            escape(&sp.label),
            row - 6.0,
            PALETTE[i % PALETTE.len()],
            escape(&sp.label),
            sp.start,
            sp.end,
            sp.seconds,
            x + w + 6.0,
            y + 12.0,
            sp.end - sp.start
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_has_one_bar_per_stage_placed_by_its_start_and_end() {
        let spans = [
            Span {
                label: "fetch".into(),
                start: 0.0,
                end: 1.0,
                seconds: 1.0,
            },
            Span {
                label: "slow".into(),
                start: 1.0,
                end: 3.0,
                seconds: 3.0,
            },
        ];
        let s = timeline(&spans, 4.0);
        assert_eq!(s.matches("class=\"stage-bar\"").count(), 2);
        // The axis ends at 5 s, 820 px after the 130 px of labels: the slow
        // stage starts 164 px in and is 328 px wide.
        assert!(
            s.contains("data-stage=\"slow\" x=\"294.0\" y=\"30\" width=\"328.0\""),
            "{s}"
        );
        assert!(s.contains("<title>slow: 1.000 s to 3.000 s"), "{s}");
    }

    #[test]
    fn a_target_far_above_the_points_is_named_not_drawn() {
        let series = [Series {
            name: "rto".into(),
            points: vec![(1.0, 0.5), (2.0, 0.7)],
            colour: PALETTE[0],
            dashed: false,
        }];
        let far = lines(
            &series,
            "x",
            "y",
            &[TargetLine {
                value: 900.0,
                label: "t".into(),
            }],
            &[],
        );
        assert!(!far.contains("class=\"target\""));
        assert!(far.contains("far above"));
        let near = lines(
            &series,
            "x",
            "y",
            &[TargetLine {
                value: 1.0,
                label: "t".into(),
            }],
            &[],
        );
        assert!(near.contains("class=\"target\""));
        assert_eq!(near.matches("class=\"point\"").count(), 2);
    }

    #[test]
    fn labels_are_escaped() {
        let b = bars(
            &[Bar {
                label: "<cp & co>".into(),
                value: 1.0,
                note: String::new(),
                colour: PALETTE[0],
            }],
            "s",
        );
        assert!(b.contains("&lt;cp &amp; co&gt;") && !b.contains("<cp"));
    }
}
