//! The client table as Prometheus text, for `/metrics` (a `MetricsSource` of the proxy).
//!
//! `outpost_client_hellos_total{version,verdict,ja4}` has one series per (JA4, version,
//! verdict) of the top rows only, and one `ja4="other"` series per version and verdict for the
//! rest (lower rows and evicted ones): at most `top` + 28 series, whatever the clients do. The
//! series of one version and verdict add up to its exact count; a single JA4's series can move
//! into `other` (and back) as the ranking changes, which `rate()` sees as a reset, so alert on
//! sums by version and verdict, read JA4s as a breakdown.

use std::collections::HashMap;
use std::fmt::Write as _;

use outpost_common::{Verdict, Version};

use crate::table::{ClientTable, Fingerprint};

/// JA4 series rendered by [`render_metrics`].
pub const DEFAULT_SERIES: usize = 50;

/// [`render_metrics_top`] with [`DEFAULT_SERIES`].
pub fn render_metrics(table: &ClientTable, o: &mut String) {
    render_metrics_top(table, DEFAULT_SERIES, o);
}

/// Appends the table's series to `o`: the `top` (JA4, version, verdict) by count, the rest as
/// `ja4="other"`, and the table's own counters.
pub fn render_metrics_top(table: &ClientTable, top: usize, o: &mut String) {
    let mut series: HashMap<(Fingerprint, Version, Verdict), u64> = HashMap::new();
    for (f, v, d, n) in table.counts() {
        *series.entry((f, v, d)).or_default() += n;
    }
    let mut series: Vec<_> = series.into_iter().collect();
    // Ties in a stable order, so a scrape does not flip between equal series.
    series.sort_unstable_by(|((fa, va, da), na), ((fb, vb, db), nb)| {
        nb.cmp(na).then(fa.cmp(fb)).then(va.cmp(vb)).then((*da as u8).cmp(&(*db as u8)))
    });
    let mut other = table.other_counts();
    for ((_, v, d), n) in series.iter().skip(top) {
        other[*v as usize][*d as usize] += n;
    }

    header(
        o,
        "outpost_client_hellos_total",
        "counter",
        "ClientHellos by offered version, verdict and JA4 fingerprint (top fingerprints; the \
         rest as ja4=\"other\").",
    );
    for ((f, v, d), n) in series.iter().take(top) {
        hello_line(o, v.name(), d.name(), f.as_str(), *n);
    }
    for v in Version::ALL {
        for d in Verdict::ALL {
            let n = other[v as usize][d as usize];
            if n > 0 {
                hello_line(o, v.name(), d.name(), "other", n);
            }
        }
    }
    header(o, "outpost_client_table_rows", "gauge", "Rows in the client table (other included).");
    let _ = writeln!(o, "outpost_client_table_rows {}", table.len());
    header(
        o,
        "outpost_client_table_evictions_total",
        "counter",
        "Client table rows evicted into other to make room.",
    );
    let _ = writeln!(o, "outpost_client_table_evictions_total {}", table.evictions());
    header(
        o,
        "outpost_client_hello_parse_errors_total",
        "counter",
        "First flights or hello records that gave no client table entry.",
    );
    let _ = writeln!(o, "outpost_client_hello_parse_errors_total {}", table.parse_errors());
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn hello_line(o: &mut String, version: &str, verdict: &str, ja4: &str, n: u64) {
    let _ = writeln!(
        o,
        "outpost_client_hellos_total{{version=\"{}\",verdict=\"{}\",ja4=\"{}\"}} {n}",
        escape_label(version),
        escape_label(verdict),
        escape_label(ja4)
    );
}

/// A label value per the text exposition format: `\`, `"` and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_common::record::HelloRecord;

    fn hello(seed: u16, version: Version, verdict: Verdict) -> HelloRecord {
        let mut r = HelloRecord::new();
        (r.version, r.verdict, r.legacy_version) = (version as u8, verdict as u8, 0x0303);
        r.n_ciphers = 1;
        r.ciphers[0] = seed;
        r
    }

    fn value(text: &str, prefix: &str) -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
    }

    #[test]
    fn top_series_then_other_and_the_table_counters() {
        let mut t = ClientTable::new(5);
        for seed in 0..8u16 {
            for i in 0..=seed {
                t.observe(&hello(seed, Version::Tls12, Verdict::Pass), u64::from(i));
            }
        }
        t.observe(&hello(100, Version::Tls10, Verdict::Reject), 1);
        t.parse_error();
        let mut o = String::new();
        render_metrics_top(&t, 2, &mut o);
        let hellos: Vec<&str> =
            o.lines().filter(|l| l.starts_with("outpost_client_hellos_total{")).collect();
        // 2 top series + other for TLS1.2/pass + other for TLS1.0/reject.
        assert_eq!(hellos.len(), 4, "{o}");
        assert!(hellos[0].ends_with("} 8") && hellos[1].ends_with("} 7"), "{o}");
        let other =
            "outpost_client_hellos_total{version=\"TLS1.2\",verdict=\"pass\",ja4=\"other\"}";
        assert_eq!(value(&o, other), Some(36 - 15), "{o}");
        let sum: u64 =
            hellos.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum();
        assert_eq!(sum, t.total());
        assert_eq!(value(&o, "outpost_client_table_rows "), Some(6));
        assert_eq!(value(&o, "outpost_client_table_evictions_total "), Some(4));
        assert_eq!(value(&o, "outpost_client_hello_parse_errors_total "), Some(1));
        for name in [
            "outpost_client_hellos_total counter",
            "outpost_client_table_rows gauge",
            "outpost_client_table_evictions_total counter",
            "outpost_client_hello_parse_errors_total counter",
        ] {
            assert!(o.contains(&format!("# TYPE {name}\n")), "{name}: {o}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(
            escape_label("t13d1516h2_8daaf6152771_e5627efa2ab1"),
            "t13d1516h2_8daaf6152771_e5627efa2ab1"
        );
    }
}
