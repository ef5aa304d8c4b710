//! The proxy's own counters, read from a running `outpost run` through its admin listener,
//! so that `outpost stats` shows the kernel and userspace floors side by side; for
//! `outpost stats --fleet`, also the kernel's counters as that node's `/metrics` shows them.

use std::{
    fmt::{self, Write as _},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use dataplane::{versions_json, versions_since, write_versions, VersionTable};
use outpost_common::{Verdict, Version};
use outpost_proxy::http::{self, Limits};
use serde_json::{json, Map, Value};

/// Negotiated versions the proxy reports (rustls offers only these).
const NEGOTIATED: [&str; 2] = ["TLSv1.2", "TLSv1.3"];
/// What ALPN settled on, as `outpost_tls_alpn_total` labels it (`none`: the client offered no
/// ALPN).
const ALPNS: [&str; 3] = ["h2", "http/1.1", "none"];
/// An admin answer larger than this is not outpost's.
const MAX_ANSWER: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the userspace floor and of rustls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Hellos classified before rustls, by `[Version as usize][Verdict as usize]`.
    pub versions: VersionTable,
    /// Completed handshakes by negotiated version, in the order of [`NEGOTIATED`].
    pub negotiated: [u64; NEGOTIATED.len()],
    /// Completed handshakes by `[negotiated version][ALPN]`, in the orders of [`NEGOTIATED`]
    /// and [`ALPNS`].
    pub alpn: [[u64; ALPNS.len()]; NEGOTIATED.len()],
}

impl UserStats {
    /// Fetches and parses `/metrics` from the admin listener at `admin`.
    pub fn fetch(admin: SocketAddr) -> Result<UserStats> {
        Ok(UserStats::parse(&fetch_metrics(admin)?))
    }

    /// Adds another node's counters.
    pub fn add(&mut self, other: &UserStats) {
        add_versions(&mut self.versions, &other.versions);
        for (c, o) in self.negotiated.iter_mut().zip(&other.negotiated) {
            *c += o;
        }
        for (row, other) in self.alpn.iter_mut().zip(&other.alpn) {
            for (c, o) in row.iter_mut().zip(other) {
                *c += o;
            }
        }
    }

    /// Every row of [`fmt::Display`]'s tables but the versions': (table, row, count), for a
    /// column per node.
    pub fn rows(&self) -> Vec<(&'static str, String, u64)> {
        let mut out = Vec::new();
        for (n, c) in NEGOTIATED.iter().zip(self.negotiated) {
            out.push(("negotiated (rustls)", (*n).to_owned(), c));
        }
        for (n, row) in NEGOTIATED.iter().zip(&self.alpn) {
            for (a, c) in ALPNS.iter().zip(row) {
                out.push(("ALPN (handshakes)", format!("{n} {a}"), *c));
            }
        }
        out
    }

    /// Reads the counters out of Prometheus text; lines it does not know are skipped.
    pub fn parse(text: &str) -> UserStats {
        let mut s = UserStats::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            if let Some(labels) = labels_of(series, "outpost_hellos_total") {
                let version =
                    Version::ALL.into_iter().find(|v| label(labels, "version") == Some(v.name()));
                let verdict =
                    Verdict::ALL.into_iter().find(|d| label(labels, "verdict") == Some(d.name()));
                if let (Some(v), Some(d)) = (version, verdict) {
                    s.versions[v as usize][d as usize] = value;
                }
            } else if let Some(labels) = labels_of(series, "outpost_tls_handshakes_total") {
                if let Some(i) = NEGOTIATED.iter().position(|n| label(labels, "version") == Some(n))
                {
                    s.negotiated[i] = value;
                }
            } else if let Some(labels) = labels_of(series, "outpost_tls_alpn_total") {
                let v = NEGOTIATED.iter().position(|n| label(labels, "version") == Some(n));
                let a = ALPNS.iter().position(|n| label(labels, "alpn") == Some(n));
                if let (Some(v), Some(a)) = (v, a) {
                    s.alpn[v][a] = value;
                }
            }
        }
        s
    }

    /// Counter growth since `earlier`.
    pub fn since(&self, earlier: &UserStats) -> UserStats {
        let mut d = self.clone();
        d.versions = versions_since(&self.versions, &earlier.versions);
        for (c, o) in d.negotiated.iter_mut().zip(&earlier.negotiated) {
            *c = c.saturating_sub(*o);
        }
        for (row, old) in d.alpn.iter_mut().zip(&earlier.alpn) {
            for (c, o) in row.iter_mut().zip(old) {
                *c = c.saturating_sub(*o);
            }
        }
        d
    }

    /// `{"versions": {"TLS1.0": {"pass": n, …}, …}, "negotiated": {"TLSv1.3": n, …},
    /// "alpn": {"TLSv1.3": {"h2": n, "http/1.1": n, "none": n}, …}}`
    pub fn to_json(&self) -> Value {
        let negotiated: Map<String, Value> = NEGOTIATED
            .iter()
            .zip(self.negotiated)
            .map(|(n, c)| ((*n).to_owned(), json!(c)))
            .collect();
        let alpn: Map<String, Value> = NEGOTIATED
            .iter()
            .zip(&self.alpn)
            .map(|(n, row)| {
                let row: Map<String, Value> =
                    ALPNS.iter().zip(row).map(|(a, c)| ((*a).to_owned(), json!(c))).collect();
                ((*n).to_owned(), Value::Object(row))
            })
            .collect();
        json!({
            "versions": versions_json(&self.versions),
            "negotiated": negotiated,
            "alpn": alpn,
        })
    }
}

impl fmt::Display for UserStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_versions(&mut out, &self.versions)?;
        writeln!(out)?;
        writeln!(out, "{:<28} {:>12}", "negotiated (rustls)", "handshakes")?;
        for (n, c) in NEGOTIATED.iter().zip(self.negotiated) {
            writeln!(out, "{n:<28} {c:>12}")?;
        }
        writeln!(out)?;
        write!(out, "{:<28}", "ALPN (handshakes)")?;
        for a in ALPNS {
            write!(out, " {a:>12}")?;
        }
        writeln!(out)?;
        for (n, row) in NEGOTIATED.iter().zip(&self.alpn) {
            write!(out, "{n:<28}")?;
            for c in row {
                write!(out, " {c:>12}")?;
            }
            writeln!(out)?;
        }
        f.write_str(&out)
    }
}

/// `GET /metrics` of the admin listener at `admin` (open: no token), checked to be outpost's.
pub fn fetch_metrics(admin: SocketAddr) -> Result<String> {
    let (status, text) = admin_get(admin, "/metrics", None)?;
    if status != 200 {
        bail!("{admin}/metrics answered {status}");
    }
    if !text.contains("outpost_hellos_total") {
        bail!("{admin} answered /metrics without outpost's counters");
    }
    Ok(text)
}

/// The kernel's hellos as `/metrics` shows them (`outpost_kernel_hellos_total`); `None` when it
/// shows none (`--no-xdp`, or no maps pinned on that node).
pub fn parse_kernel(text: &str) -> Option<VersionTable> {
    let mut t = VersionTable::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some(labels) = labels_of(series, "outpost_kernel_hellos_total") else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        let version = Version::ALL.into_iter().find(|v| label(labels, "version") == Some(v.name()));
        let verdict = Verdict::ALL.into_iter().find(|d| label(labels, "verdict") == Some(d.name()));
        if let (Some(v), Some(d)) = (version, verdict) {
            t[v as usize][d as usize] = value;
            seen = true;
        }
    }
    seen.then_some(t)
}

/// The node name a `/metrics` says it is (`outpost_node_info{node}`).
pub fn parse_node(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let (series, _) = line.rsplit_once(' ')?;
        label(labels_of(series, "outpost_node_info")?, "node")
    })
}

/// Adds a version table to another.
pub fn add_versions(to: &mut VersionTable, t: &VersionTable) {
    for (row, other) in to.iter_mut().zip(t) {
        for (c, o) in row.iter_mut().zip(other) {
            *c += o;
        }
    }
}

/// `name{labels}` → `labels`.
fn labels_of<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    series.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}')
}

/// The value of `key="value"` in a label list (outpost's values hold no commas or quotes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// `GET target` on the admin listener over plain HTTP/1.1, with the admin token when there is
/// one, read to the close: the status and the body.
pub fn admin_get(admin: SocketAddr, target: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, TIMEOUT)
        .with_context(|| format!("no outpost admin listener at {admin}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {target} HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut buf).with_context(|| format!("reading {admin}{target}"))?;
    let Some((resp, head)) = http::parse_response(&buf, &Limits::default())
        .map_err(|e| anyhow::anyhow!("{admin}{target}: {e}"))?
    else {
        bail!("{admin}{target}: the answer ended inside its head");
    };
    Ok((resp.status, String::from_utf8_lossy(&buf[head..]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxy_exposition() {
        let text = "\
# TYPE outpost_kernel_hellos_total counter
outpost_kernel_hellos_total{version=\"TLS1.0\",verdict=\"reject\"} 9
outpost_hellos_total{version=\"TLS1.0\",verdict=\"reject\"} 2
outpost_hellos_total{version=\"TLS1.3\",verdict=\"pass\"} 7
outpost_hellos_total{version=\"bogus\",verdict=\"pass\"} 5
outpost_tls_handshakes_total{version=\"TLSv1.3\"} 6
outpost_tls_handshakes_total{version=\"TLSv1.2\"} 1
outpost_tls_alpn_total{version=\"TLSv1.3\",alpn=\"h2\"} 4
outpost_tls_alpn_total{version=\"TLSv1.3\",alpn=\"none\"} 2
outpost_tls_alpn_total{version=\"TLSv1.2\",alpn=\"http/1.1\"} 1
outpost_tls_alpn_total{version=\"TLSv1.2\",alpn=\"spdy/3\"} 8
outpost_requests_total{class=\"2xx\"} 40
";
        let s = UserStats::parse(text);
        assert_eq!(s.versions[Version::Tls10 as usize][Verdict::Reject as usize], 2);
        assert_eq!(s.versions[Version::Tls13 as usize][Verdict::Pass as usize], 7);
        assert_eq!(s.versions.iter().flatten().sum::<u64>(), 9, "kernel rows are not userspace");
        assert_eq!(s.negotiated, [1, 6]);
        let j = s.to_json();
        assert_eq!(j["versions"]["TLS1.3"]["pass"], 7);
        assert_eq!(j["negotiated"]["TLSv1.3"], 6);
        assert_eq!(s.alpn, [[0, 1, 0], [4, 0, 2]], "unknown ALPN labels are skipped");
        assert_eq!(j["alpn"]["TLSv1.3"]["h2"], 4);
        assert_eq!(j["alpn"]["TLSv1.2"]["http/1.1"], 1);
        let table = s.to_string();
        assert!(table.contains("ALPN (handshakes)"), "{table}");
        assert!(
            table.lines().any(|l| l.split_whitespace().eq(["TLSv1.3", "4", "0", "2"])),
            "{table}"
        );
        assert_eq!(s.since(&s), UserStats::default());
        let k = parse_kernel(text).expect("a kernel row");
        assert_eq!(k[Version::Tls10 as usize][Verdict::Reject as usize], 9);
        assert_eq!(k.iter().flatten().sum::<u64>(), 9);
        assert_eq!(
            parse_kernel("outpost_hellos_total{version=\"TLS1.0\",verdict=\"pass\"} 1"),
            None
        );
        let mut twice = s.clone();
        twice.add(&s);
        assert_eq!(twice.since(&s), s);
        assert!(twice.rows().contains(&("ALPN (handshakes)", "TLSv1.3 h2".into(), 8)));
        assert_eq!(parse_node("outpost_node_info{node=\"edge-2\"} 1\n"), Some("edge-2"));
    }
}
