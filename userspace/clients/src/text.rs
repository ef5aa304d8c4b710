//! Showing attacker-controlled bytes (server names, ALPN ends) and the CLI table.
//!
//! A server name is whatever the client put in its hello: control characters, escape sequences
//! for the operator's terminal, bytes that are not UTF-8. Printable ASCII is shown as is, every
//! other byte, and the backslash, as `\xNN`, so what is shown maps back to one byte string.

use core::fmt::Write as _;

use crate::table::ClientRow;

/// `bytes` with everything but printable ASCII (and `\`) as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        push_escaped(&mut s, b);
    }
    s
}

pub(crate) fn push_escaped(s: &mut String, b: u8) {
    if (0x20..0x7f).contains(&b) && b != b'\\' {
        s.push(char::from(b));
    } else {
        let _ = write!(s, "\\x{b:02x}");
    }
}

/// `s` cut to at most `width` characters, with `…` at the end when cut. Cuts only between
/// escapes: `\x1b` is never shown as `\x1`.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let unit = if rest.starts_with("\\x") && rest.len() >= 4 { 4 } else { c.len_utf8() };
        let unit_chars = rest[..unit].chars().count();
        if used + unit_chars + 1 > width {
            break;
        }
        out.push_str(&rest[..unit]);
        used += unit_chars;
        rest = &rest[unit..];
    }
    out.push('…');
    out
}

/// How long ago `then` was, from `now` (unix ms): `4s`, `12m`, `3h`, `2d`; `-` for 0.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".to_owned();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Widest server name shown in the CLI table (longer ones end in `…`).
const SNI_WIDTH: usize = 40;
/// Widest client name shown.
const NAME_WIDTH: usize = 44;

/// The CLI table: count, share of `total`, version, verdict, JA4, name, SNI, ALPN, last seen
/// (relative to `now_ms`). Rows come as given (already sorted and cut by the query).
pub fn render_table(rows: &[ClientRow], total: u64, now_ms: u64) -> String {
    const HEAD: [&str; 9] =
        ["COUNT", "SHARE", "VERSION", "VERDICT", "JA4", "NAME", "SNI", "ALPN", "LAST SEEN"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.count.to_string(),
                share(r.count, total),
                r.version.to_owned(),
                r.verdict.to_owned(),
                r.ja4.clone(),
                fit(r.name.unwrap_or("-"), NAME_WIDTH),
                r.sni.as_deref().map_or_else(|| "-".to_owned(), |s| fit(s, SNI_WIDTH)),
                r.alpn.clone().unwrap_or_else(|| "-".to_owned()),
                ago(now_ms, r.last_seen),
            ]
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            // Numbers right-aligned, text left-aligned; no trailing blanks.
            if i < 2 {
                out.extend(core::iter::repeat_n(' ', pad));
                out.push_str(c);
            } else if i + 1 == cols.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.extend(core::iter::repeat_n(' ', pad));
            }
            if i + 1 < cols.len() {
                out.push_str("  ");
            }
        }
        out.push('\n');
    };
    line(&HEAD);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// `count` as a percentage of `total`, one decimal.
pub fn share(count: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", count as f64 * 100.0 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_not_printable() {
        assert_eq!(escape_bytes(b"example.com"), "example.com");
        assert_eq!(escape_bytes(b"a\x1b[31mb\n\\\xff\x00"), "a\\x1b[31mb\\x0a\\x5c\\xff\\x00");
    }

    #[test]
    fn fit_never_splits_an_escape() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("ab\\x1bcd", 5), "ab…");
        assert_eq!(fit("ab\\x1bcd", 7), "ab\\x1b…");
    }

    #[test]
    fn ages() {
        assert_eq!(ago(10_000, 0), "-");
        assert_eq!(ago(10_000, 6_000), "4s");
        assert_eq!(ago(3_000_000, 1_000), "49m");
        assert_eq!(ago(4_000_000, 1_000), "1h");
        assert_eq!(ago(1_000, 5_000), "0s");
        assert_eq!(ago(3 * 86_400_000, 1), "2d");
    }
}
