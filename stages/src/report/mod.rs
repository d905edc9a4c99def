//! Reports people look at: one self-contained HTML file with inline SVG
//! charts, no script and nothing fetched from the network, so that it opens
//! offline and can be mailed or archived with a drill's records. [`svg`]
//! draws the charts; `bench::html` and `drill_history` compose pages.

pub mod svg;

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1280px;color:#1b1f24;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}p.meta{color:#57606a;margin:0 0 12px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
svg{display:block;margin:6px 0 14px;font-size:12px}svg text{fill:#1b1f24}
.grid{stroke:#eaeef2}.axis{stroke:#8c959f}.target{stroke:#cf222e;stroke-dasharray:6 4}
";

/// A whole HTML page around `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n{body}\n</body>\n</html>\n",
        escape(title),
        escape(title)
    )
}

/// A table: header cells and rows of (cell HTML, numeric?).
pub fn table(header: &[&str], rows: &[Vec<(String, bool)>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in header {
        s.push_str(&format!("<th>{}</th>", escape(h)));
    }
    s.push_str("</tr>");
    for row in rows {
        s.push_str("<tr>");
        for (cell, num) in row {
            if *num {
                s.push_str(&format!("<td class=\"num\">{cell}</td>"));
            } else {
                s.push_str(&format!("<td>{cell}</td>"));
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}
