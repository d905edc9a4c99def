//! The benchmark's HTML report (placeholder, filled next).

use super::BenchReport;

/// The report as one self-contained HTML document.
pub fn render(report: &BenchReport) -> String {
    format!(
        "<!DOCTYPE html><html><body>{}</body></html>",
        report.sizes.len()
    )
}
