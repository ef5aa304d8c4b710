//! The report: tables for stdout, one JSON file, one SVG of latency percentile curves.
//!
//! The plot is drawn by hand: x is the percentile on the usual "nines" scale (log of
//! 1 / (1 − p), so 90, 99, 99.9 and 99.99 are evenly spaced), y is latency in milliseconds on
//! a log scale (a flood's timeouts and a keep-alive GET differ by orders of magnitude).

use std::fmt::Write as _;

use serde_json::Value;

/// A table row: cells, or a system and why it could not be measured, across the width.
#[derive(Clone, Debug)]
enum Row {
    Cells(Vec<String>),
    Unavailable(String, String),
}

/// A table of strings: the first column left-aligned, the others right-aligned.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    rows: Vec<Row>,
    /// Lines printed under the table (ratios, caveats).
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            ..Table::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row::Cells(cells));
    }

    /// A row that says a system could not be measured, across the whole width.
    pub fn unavailable(&mut self, system: &str, why: &str) {
        self.rows.push(Row::Unavailable(system.to_owned(), format!("not available: {why}")));
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        let widen = |width: &mut Vec<usize>, cells: &[String]| {
            for (i, c) in cells.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        };
        widen(&mut width, &self.header);
        for r in &self.rows {
            match r {
                Row::Cells(cells) => widen(&mut width, cells),
                Row::Unavailable(system, _) => widen(&mut width, std::slice::from_ref(system)),
            }
        }
        let line = |cells: &[String]| -> String {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i == 0 {
                    let _ = write!(s, "{c:<w$}", w = width[0]);
                } else {
                    let _ = write!(s, "  {c:>w$}", w = width.get(i).copied().unwrap_or(0));
                }
            }
            s
        };
        let mut out = format!("{}\n", self.title);
        let head = line(&self.header);
        let _ = writeln!(out, "{head}\n{}", "-".repeat(head.chars().count()));
        for r in &self.rows {
            let text = match r {
                Row::Cells(cells) => line(cells),
                Row::Unavailable(system, why) => format!("{system:<w$}  {why}", w = width[0]),
            };
            let _ = writeln!(out, "{}", text.trim_end());
        }
        for n in &self.notes {
            let _ = writeln!(out, "{n}");
        }
        out
    }
}

/// One latency curve: `(percentile, µs)` points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, u64)>,
    /// Index into the palette; curves that belong together (one case alone and under a
    /// flood) share a colour.
    pub color: usize,
    /// Drawn dashed (the "during flood" curve of a pair).
    pub dashed: bool,
}

/// Percentiles below this are left out of the plot (the minimum would set the scale).
const PLOT_FROM: f64 = 10.0;

#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// What one scenario produced.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: String,
    pub tables: Vec<Table>,
    pub json: Value,
    pub panels: Vec<Panel>,
}

const PANEL_W: f64 = 1000.0;
const PANEL_H: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 330.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Where the 100th percentile (the max) is drawn: at 99.999.
const MAX_NINES: f64 = 5.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        MAX_NINES
    } else {
        (100.0 / (100.0 - p)).log10().min(MAX_NINES)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Every panel, stacked, in one SVG document.
pub fn svg(panels: &[Panel], caption: &str) -> String {
    let panels: Vec<&Panel> =
        panels.iter().filter(|p| p.series.iter().any(|s| !s.points.is_empty())).collect();
    let height = 30.0 + PANEL_H * panels.len().max(1) as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="13">{}</text>
"#,
        esc(caption)
    );
    if panels.is_empty() {
        out.push_str("<text x=\"10\" y=\"50\">no latency data</text>\n");
    }
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut out, p, 30.0 + PANEL_H * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, y0: f64) {
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let shown = |s: &Series| -> Vec<(f64, u64)> {
        s.points.iter().copied().filter(|&(p, _)| p >= PLOT_FROM).collect()
    };
    let values = panel.series.iter().flat_map(|s| shown(s).into_iter().map(|(_, us)| us.max(1)));
    let (lo, hi) = values.fold((u64::MAX, 1u64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Decades of milliseconds that cover the data.
    let (ms_lo, ms_hi) = (lo as f64 / 1000.0, hi as f64 / 1000.0);
    let d_lo = ms_lo.log10().floor();
    let d_hi = ms_hi.log10().ceil().max(d_lo + 1.0);
    let n0 = nines(PLOT_FROM);
    let x = |p: f64| LEFT + pw * (nines(p) - n0) / (MAX_NINES - n0);
    let y = |us: u64| {
        let ms = (us.max(1) as f64 / 1000.0).log10();
        y0 + TOP + ph * (1.0 - (ms - d_lo) / (d_hi - d_lo))
    };
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        y0 + 24.0,
        esc(&panel.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##,
        y0 + TOP
    );
    for (p, label) in [
        (50.0, "50%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
        (100.0, "max"),
    ] {
        let xx = x(p);
        let _ = writeln!(
            out,
            r##"<line x1="{xx}" y1="{}" x2="{xx}" y2="{}" stroke="#ddd"/><text x="{xx}" y="{}" text-anchor="middle">{label}</text>"##,
            y0 + TOP,
            y0 + TOP + ph,
            y0 + TOP + ph + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        y0 + TOP + ph + 34.0
    );
    // Gridlines at 1, 2 and 5 of each decade (2 and 5 only when few decades are shown).
    let steps: &[f64] = if d_hi - d_lo <= 2.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let mut d = d_lo;
    while d <= d_hi + 1e-9 {
        for &k in steps {
            let v = k * 10f64.powf(d);
            if v.log10() > d_hi + 1e-9 {
                break;
            }
            let yy = y((v * 1000.0).round() as u64);
            let label = if v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{}", (v * 1000.0).round() / 1000.0)
            };
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                yy + 4.0
            );
        }
        d += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">latency, ms (log)</text>"#,
        y0 + TOP + ph / 2.0,
        y0 + TOP + ph / 2.0
    );
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[s.color % COLORS.len()];
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let pts: Vec<String> =
            shown(s).iter().map(|&(p, us)| format!("{:.1},{:.1}", x(p), y(us))).collect();
        if !pts.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                pts.join(" ")
            );
        }
        let ly = y0 + TOP + 14.0 + 18.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            lx + 22.0,
            ly - 4.0,
            lx + 28.0,
            esc(&s.name)
        );
    }
}

/// Milliseconds with a precision that suits the size.
pub fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A ratio `a / b` as `1.23x`, or `-` when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_spans() {
        let mut t = Table::new("title", &["system", "req/s"]);
        t.row(vec!["nginx".into(), "123".into()]);
        t.unavailable("outpost", "no binary");
        let text = t.render();
        assert!(text.contains("nginx      123"), "{text}");
        assert!(text.contains("outpost  not available: no binary"), "{text}");
    }

    #[test]
    fn svg_draws_each_series() {
        let s = |name: &str, color| Series {
            name: name.into(),
            points: vec![(50.0, 1000), (99.0, 5000), (100.0, 20_000)],
            color,
            dashed: color == 1,
        };
        let svg = svg(&[Panel { title: "p".into(), series: vec![s("a", 0), s("b", 1)] }], "c");
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("stroke-dasharray"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn nines_scale() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }
}
