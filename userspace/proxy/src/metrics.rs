//! Counters and the request latency histogram, rendered as Prometheus text on `/metrics`.
//!
//! Counters are relaxed atomics bumped on the request path. Latency goes into one
//! hdrhistogram per worker (an uncontended lock per request); a scrape merges them.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use outpost_common::{Verdict, Version};

/// Hellos by `[Version as usize][Verdict as usize]`, as the kernel counts them.
pub type VersionCounts = [[u64; Verdict::COUNT]; Version::COUNT];

/// Why the userspace floor let a first flight through without a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclassified {
    /// Not a TLS ClientHello (plain HTTP, another protocol).
    NotHello = 0,
    /// Started like a ClientHello and broke a framing rule.
    Malformed = 1,
    /// Still inconclusive after `max_hello_bytes`.
    TooLong = 2,
}

impl Unclassified {
    const ALL: [Unclassified; 3] =
        [Unclassified::NotHello, Unclassified::Malformed, Unclassified::TooLong];
    fn name(self) -> &'static str {
        match self {
            Unclassified::NotHello => "not_hello",
            Unclassified::Malformed => "malformed",
            Unclassified::TooLong => "too_long",
        }
    }
}

/// Which 403 page the legacy responder served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// HTML, for browsers.
    Html = 0,
    /// `text/plain`, for other clients.
    Text = 1,
}

const PAGE_KINDS: [&str; 2] = ["html", "text"];

/// How a legacy connection ended without its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyEnd {
    /// OpenSSL refused the handshake (or the client's records).
    HandshakeFailed = 0,
    /// The client closed or reset the connection before its answer.
    Closed = 1,
    /// The time limit (2 s from the hand-over) ran out.
    TimedOut = 2,
}

const LEGACY_ENDS: [&str; 3] = ["handshake_failed", "closed", "timed_out"];

/// Statuses the proxy itself answers a broken request with.
const REFUSED: [u16; 6] = [400, 405, 408, 413, 431, 501];
/// Why client header fields were dropped before any handler saw them.
const DROPPED_FIELDS: [&str; 3] = ["underscore", "asserted", "forwarding"];
/// Negotiated versions, in counter order.
const NEGOTIATED: [&str; 2] = ["TLSv1.2", "TLSv1.3"];

/// The protocol a request came in on: the `proto` label of `outpost_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http11 = 0,
    H2 = 1,
}

const PROTOS: [&str; 2] = ["http/1.1", "h2"];
/// ALPN outcomes, in the order of [`crate::tls::Alpn`]'s variants.
const ALPNS: [crate::tls::Alpn; 3] =
    [crate::tls::Alpn::None, crate::tls::Alpn::Http11, crate::tls::Alpn::H2];

/// Why an HTTP/2 connection or stream was refused (each limit of `crate::h2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Refusal {
    /// Streams reset by the client faster than its reset budget (CVE-2023-44487), or more
    /// reset before they were accepted than h2 keeps: GOAWAY.
    RapidReset = 0,
    /// A header block in more CONTINUATION frames than its size needs (CVE-2024-27316):
    /// GOAWAY.
    ContinuationFlood = 1,
    /// A decoded header list over four times the advertised limit (an HPACK bomb): GOAWAY.
    HeaderListTooLarge = 2,
    /// PING, SETTINGS or PRIORITY frames faster than the control budget: GOAWAY.
    ControlFlood = 3,
    /// Other abuse h2 itself answered with GOAWAY ENHANCE_YOUR_CALM (floods of empty DATA
    /// frames, too many stream errors caused by the client).
    OtherAbuse = 4,
    /// A response the client's flow-control window held up for longer than `body_timeout`:
    /// the stream is reset.
    SendStalled = 5,
    /// A stream over `h2_max_concurrent_streams`: RST_STREAM(REFUSED_STREAM) from h2.
    TooManyStreams = 6,
    /// A header list over SETTINGS_MAX_HEADER_LIST_SIZE, under the HPACK bomb's bound: h2
    /// answers 431 on that stream itself.
    HeaderListOverLimit = 7,
}

const H2_REFUSALS: [&str; 8] = [
    "rapid_reset",
    "continuation_flood",
    "header_list_too_large",
    "control_flood",
    "other_abuse",
    "send_stalled",
    "too_many_streams",
    "header_list_over_limit",
];

/// Upstream failures.
#[derive(Clone, Copy, Debug)]
pub enum UpstreamFailure {
    Connect = 0,
    Timeout = 1,
    Io = 2,
    InvalidResponse = 3,
    NoHealthy = 4,
}

/// Directions of `outpost_upgraded_bytes_total`.
const UPGRADED_DIRECTIONS: [&str; 2] = ["client_to_origin", "origin_to_client"];

const UPSTREAM_FAILURES: [&str; 5] = ["connect", "timeout", "io", "invalid_response", "no_healthy"];

type Hist = Arc<Mutex<Histogram<u64>>>;

#[derive(Default)]
pub struct Metrics {
    hellos: [[AtomicU64; Verdict::COUNT]; Version::COUNT],
    unclassified: [AtomicU64; 3],
    /// Connections closed before a conclusive hello (EOF or handshake timeout).
    hello_incomplete: AtomicU64,
    handshakes: [AtomicU64; 2],
    handshake_failures: AtomicU64,
    ciphers: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    connections: AtomicU64,
    connections_active: AtomicI64,
    requests: [[AtomicU64; 5]; PROTOS.len()],
    /// Handshakes by `[negotiated version][ALPN outcome]`.
    alpn: [[AtomicU64; ALPNS.len()]; 2],
    h2_refused: [AtomicU64; H2_REFUSALS.len()],
    refused: [AtomicU64; REFUSED.len()],
    malformed: AtomicU64,
    /// Client header fields dropped by normalisation, by [`DROPPED_FIELDS`].
    dropped_fields: [AtomicU64; DROPPED_FIELDS.len()],
    upstream_failures: [AtomicU64; 5],
    histograms: Mutex<Vec<Hist>>,
    after_started: AtomicU64,
    after_finished: AtomicU64,
    after_dropped: AtomicU64,
    /// Upgraded (spliced) connections: opened, closed, bytes by [`UPGRADED_DIRECTIONS`].
    upgraded_opened: AtomicU64,
    upgraded_closed: AtomicU64,
    upgraded_bytes: [AtomicU64; 2],
    /// Legacy responder: pages by `[Version][PageKind]`, early ends, time per page (µs).
    legacy_pages: [[AtomicU64; PAGE_KINDS.len()]; Version::COUNT],
    legacy_ends: [AtomicU64; LEGACY_ENDS.len()],
    legacy_time: Mutex<Option<Histogram<u64>>>,
    /// This node's name, for `outpost_node_info`.
    node: Mutex<String>,
    /// Series from outside the core (the store, applications), appended to every scrape.
    sources: Mutex<Vec<MetricsSource>>,
}

/// Renders more series into a scrape (Prometheus text, with its own HELP and TYPE lines).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn hello(&self, v: Version, d: Verdict) {
        self.hellos[v as usize][d as usize].fetch_add(1, Relaxed);
    }

    pub fn hello_unclassified(&self, why: Unclassified) {
        self.unclassified[why as usize].fetch_add(1, Relaxed);
    }

    pub fn hello_incomplete(&self) {
        self.hello_incomplete.fetch_add(1, Relaxed);
    }

    /// A finished handshake; `version` as rustls names it (`TLSv1_3`).
    pub fn handshake(&self, version: rustls::ProtocolVersion, cipher: rustls::CipherSuite) {
        let (i, name) = match version {
            rustls::ProtocolVersion::TLSv1_3 => (1, NEGOTIATED[1]),
            _ => (0, NEGOTIATED[0]),
        };
        self.handshakes[i].fetch_add(1, Relaxed);
        let cipher = cipher.as_str().unwrap_or("other");
        *lock(&self.ciphers).entry((name, cipher)).or_default() += 1;
    }

    /// The legacy responder answered a client offering `v` with its page, `took` after the
    /// hand-over.
    pub fn legacy_page(&self, v: Version, kind: PageKind, took: Duration) {
        self.legacy_pages[v as usize][kind as usize].fetch_add(1, Relaxed);
        let mut h = lock(&self.legacy_time);
        let h = h.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
        });
        let _ = h.record((took.as_micros() as u64).clamp(1, 60_000_000));
    }

    /// A legacy connection ended without its page.
    pub fn legacy_end(&self, end: LegacyEnd) {
        self.legacy_ends[end as usize].fetch_add(1, Relaxed);
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    /// What ALPN settled on in a handshake of `version`.
    pub fn alpn(&self, version: rustls::ProtocolVersion, alpn: crate::tls::Alpn) {
        let v = usize::from(version == rustls::ProtocolVersion::TLSv1_3);
        self.alpn[v][alpn as usize].fetch_add(1, Relaxed);
    }

    /// An HTTP/2 limit refused a connection or stream.
    pub fn h2_refused(&self, why: H2Refusal) {
        self.h2_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// A request over `proto` answered with `status`; `malformed` when it was refused as
    /// broken.
    pub fn request(&self, proto: Proto, status: u16, malformed: bool) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[proto as usize][class].fetch_add(1, Relaxed);
        if let Some(i) = REFUSED.iter().position(|&s| s == status) {
            self.refused[i].fetch_add(1, Relaxed);
        }
        if malformed {
            self.malformed.fetch_add(1, Relaxed);
        }
    }

    /// Client header fields the request's normalisation dropped.
    pub fn dropped_fields(&self, d: &outpost_api::http::Dropped) {
        for (i, n) in [d.underscore, d.asserted, d.forwarding].into_iter().enumerate() {
            if n > 0 {
                self.dropped_fields[i].fetch_add(u64::from(n), Relaxed);
            }
        }
    }

    pub fn after_response_started(&self) {
        self.after_started.fetch_add(1, Relaxed);
    }

    pub fn after_response_finished(&self) {
        self.after_finished.fetch_add(1, Relaxed);
    }

    pub fn after_response_dropped(&self) {
        self.after_dropped.fetch_add(1, Relaxed);
    }

    pub fn upgraded_opened(&self) {
        self.upgraded_opened.fetch_add(1, Relaxed);
    }

    pub fn upgraded_closed(&self) {
        self.upgraded_closed.fetch_add(1, Relaxed);
    }

    /// Bytes an upgraded connection carried one way.
    pub fn upgraded_bytes(&self, d: crate::splice::Direction, n: u64) {
        let i = match d {
            crate::splice::Direction::ClientToServer => 0,
            crate::splice::Direction::ServerToClient => 1,
        };
        self.upgraded_bytes[i].fetch_add(n, Relaxed);
    }

    pub fn set_node(&self, node: &str) {
        *lock(&self.node) = node.to_owned();
    }

    /// Adds series rendered by someone else to every scrape.
    pub fn add_source(&self, source: MetricsSource) {
        lock(&self.sources).push(source);
    }

    pub fn upstream_failure(&self, f: UpstreamFailure) {
        self.upstream_failures[f as usize].fetch_add(1, Relaxed);
    }

    /// A histogram for one worker's request latencies, in microseconds (1 µs to 1 h, 3
    /// significant digits).
    pub fn latency_recorder(&self) -> Latency {
        let h = Arc::new(Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid"),
        ));
        lock(&self.histograms).push(h.clone());
        Latency(h)
    }

    /// Hellos counted by the userspace floor.
    pub fn hello_counts(&self) -> VersionCounts {
        let mut out = [[0; Verdict::COUNT]; Version::COUNT];
        for (row, counters) in out.iter_mut().zip(&self.hellos) {
            for (c, a) in row.iter_mut().zip(counters) {
                *c = a.load(Relaxed);
            }
        }
        out
    }

    /// Prometheus text exposition; `kernel` holds the XDP program's counters when its maps are
    /// pinned and readable.
    pub fn render(&self, kernel: Option<&VersionCounts>) -> String {
        let mut o = String::with_capacity(8192);
        if let Some(k) = kernel {
            header(
                &mut o,
                "outpost_kernel_hellos_total",
                "counter",
                "ClientHellos seen by the XDP program, by offered version and verdict.",
            );
            version_rows(&mut o, "outpost_kernel_hellos_total", k);
        }
        header(
            &mut o,
            "outpost_hellos_total",
            "counter",
            "ClientHellos classified by the userspace floor, by offered version and verdict.",
        );
        version_rows(&mut o, "outpost_hellos_total", &self.hello_counts());
        header(
            &mut o,
            "outpost_hellos_unclassified_total",
            "counter",
            "First flights passed on to rustls without a version, by reason.",
        );
        for u in Unclassified::ALL {
            let v = self.unclassified[u as usize].load(Relaxed);
            let _ = writeln!(o, "outpost_hellos_unclassified_total{{reason=\"{}\"}} {v}", u.name());
        }
        header(
            &mut o,
            "outpost_hellos_incomplete_total",
            "counter",
            "Connections closed or timed out before a conclusive ClientHello.",
        );
        let _ =
            writeln!(o, "outpost_hellos_incomplete_total {}", self.hello_incomplete.load(Relaxed));
        header(
            &mut o,
            "outpost_tls_handshakes_total",
            "counter",
            "Completed TLS handshakes by negotiated version.",
        );
        for (i, name) in NEGOTIATED.iter().enumerate() {
            let v = self.handshakes[i].load(Relaxed);
            let _ = writeln!(o, "outpost_tls_handshakes_total{{version=\"{name}\"}} {v}");
        }
        header(
            &mut o,
            "outpost_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
        );
        let _ = writeln!(
            o,
            "outpost_tls_handshake_failures_total {}",
            self.handshake_failures.load(Relaxed)
        );
        header(
            &mut o,
            "outpost_tls_ciphers_total",
            "counter",
            "Completed TLS handshakes by negotiated version and cipher suite.",
        );
        for ((version, cipher), n) in lock(&self.ciphers).iter() {
            let _ = writeln!(
                o,
                "outpost_tls_ciphers_total{{version=\"{version}\",cipher=\"{cipher}\"}} {n}"
            );
        }
        header(&mut o, "outpost_connections_total", "counter", "Accepted client connections.");
        let _ = writeln!(o, "outpost_connections_total {}", self.connections.load(Relaxed));
        header(&mut o, "outpost_connections_active", "gauge", "Open client connections.");
        let _ = writeln!(o, "outpost_connections_active {}", self.connections_active.load(Relaxed));
        header(
            &mut o,
            "outpost_tls_alpn_total",
            "counter",
            "Completed TLS handshakes by negotiated version and the protocol ALPN chose (none: \
             the client offered no ALPN).",
        );
        for (v, version) in NEGOTIATED.iter().enumerate() {
            for (a, alpn) in ALPNS.iter().enumerate() {
                let n = self.alpn[v][a].load(Relaxed);
                let alpn = alpn.name();
                let _ = writeln!(
                    o,
                    "outpost_tls_alpn_total{{version=\"{version}\",alpn=\"{alpn}\"}} {n}"
                );
            }
        }
        header(
            &mut o,
            "outpost_requests_total",
            "counter",
            "Requests answered, by status class and protocol (http/1.1, h2).",
        );
        for (p, proto) in PROTOS.iter().enumerate() {
            for (i, c) in self.requests[p].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "outpost_requests_total{{class=\"{}xx\",proto=\"{proto}\"}} {}",
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        header(
            &mut o,
            "outpost_h2_refused_total",
            "counter",
            "HTTP/2 connections (GOAWAY) and streams (reset) refused by a limit, by reason: \
             rapid_reset, continuation_flood, header_list_too_large, control_flood, other_abuse, \
             send_stalled, too_many_streams, header_list_over_limit.",
        );
        for (i, why) in H2_REFUSALS.iter().enumerate() {
            let n = self.h2_refused[i].load(Relaxed);
            let _ = writeln!(o, "outpost_h2_refused_total{{reason=\"{why}\"}} {n}");
        }
        header(
            &mut o,
            "outpost_requests_malformed_total",
            "counter",
            "Requests refused as malformed (400).",
        );
        let _ = writeln!(o, "outpost_requests_malformed_total {}", self.malformed.load(Relaxed));
        header(
            &mut o,
            "outpost_requests_refused_total",
            "counter",
            "Requests the proxy itself refused, by status (400 malformed, 405 CONNECT, 408 slow \
             head, 413 body too large, 431 head too large, 501 transfer coding).",
        );
        for (i, s) in REFUSED.iter().enumerate() {
            let _ = writeln!(
                o,
                "outpost_requests_refused_total{{status=\"{s}\"}} {}",
                self.refused[i].load(Relaxed)
            );
        }
        header(
            &mut o,
            "outpost_request_fields_dropped_total",
            "counter",
            "Client header fields removed before any handler saw them: names with `_` \
             (underscores_in_headers off), look-alikes of edge-asserted fields, client \
             forwarding fields.",
        );
        for (i, why) in DROPPED_FIELDS.iter().enumerate() {
            let v = self.dropped_fields[i].load(Relaxed);
            let _ = writeln!(o, "outpost_request_fields_dropped_total{{reason=\"{why}\"}} {v}");
        }
        header(
            &mut o,
            "outpost_upstream_failures_total",
            "counter",
            "Failed origin attempts, by kind.",
        );
        for (i, name) in UPSTREAM_FAILURES.iter().enumerate() {
            let v = self.upstream_failures[i].load(Relaxed);
            let _ = writeln!(o, "outpost_upstream_failures_total{{kind=\"{name}\"}} {v}");
        }
        self.render_latency(&mut o);
        self.render_legacy(&mut o);
        self.render_after_response(&mut o);
        self.render_upgraded(&mut o);
        header(&mut o, "outpost_node_info", "gauge", "This edge node's name.");
        let node = lock(&self.node).replace(['"', '\\', '\n'], "_");
        let _ = writeln!(o, "outpost_node_info{{node=\"{node}\"}} 1");
        for source in lock(&self.sources).iter() {
            source(&mut o);
        }
        o
    }

    fn render_legacy(&self, o: &mut String) {
        header(
            o,
            "outpost_legacy_pages_total",
            "counter",
            "403 pages the legacy responder served, by the version the client offered and the \
             page's type (html for browsers, text for other clients).",
        );
        for v in Version::ALL {
            for (i, kind) in PAGE_KINDS.iter().enumerate() {
                let n = self.legacy_pages[v as usize][i].load(Relaxed);
                let _ = writeln!(
                    o,
                    "outpost_legacy_pages_total{{version=\"{}\",type=\"{kind}\"}} {n}",
                    v.name()
                );
            }
        }
        header(
            o,
            "outpost_legacy_unanswered_total",
            "counter",
            "Legacy connections that ended without their page: the handshake failed, the client \
             closed, or the 2 s limit ran out.",
        );
        for (i, reason) in LEGACY_ENDS.iter().enumerate() {
            let n = self.legacy_ends[i].load(Relaxed);
            let _ = writeln!(o, "outpost_legacy_unanswered_total{{reason=\"{reason}\"}} {n}");
        }
        header(
            o,
            "outpost_legacy_page_seconds",
            "summary",
            "Time the legacy responder took per page: handshake, request and answer.",
        );
        let h = lock(&self.legacy_time);
        let (count, sum) = match h.as_ref() {
            Some(h) => {
                for q in [0.5, 0.9, 0.99] {
                    let secs = h.value_at_quantile(q) as f64 / 1e6;
                    let _ = writeln!(o, "outpost_legacy_page_seconds{{quantile=\"{q}\"}} {secs}");
                }
                let sum: f64 = h
                    .iter_recorded()
                    .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                    .sum();
                (h.len(), sum / 1e6)
            }
            None => (0, 0.0),
        };
        let _ = writeln!(o, "outpost_legacy_page_seconds_sum {sum}");
        let _ = writeln!(o, "outpost_legacy_page_seconds_count {count}");
    }

    fn render_upgraded(&self, o: &mut String) {
        let opened = self.upgraded_opened.load(Relaxed);
        let closed = self.upgraded_closed.load(Relaxed);
        for (name, kind, help, v) in [
            (
                "outpost_upgraded_connections_total",
                "counter",
                "Connections upgraded to a WebSocket and spliced to their origin.",
                opened,
            ),
            (
                "outpost_upgraded_connections",
                "gauge",
                "Upgraded connections open now.",
                opened.saturating_sub(closed),
            ),
        ] {
            header(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
        header(
            o,
            "outpost_upgraded_bytes_total",
            "counter",
            "Bytes carried by upgraded connections, by direction.",
        );
        for (i, direction) in UPGRADED_DIRECTIONS.iter().enumerate() {
            let v = self.upgraded_bytes[i].load(Relaxed);
            let _ = writeln!(o, "outpost_upgraded_bytes_total{{direction=\"{direction}\"}} {v}");
        }
    }

    fn render_after_response(&self, o: &mut String) {
        let started = self.after_started.load(Relaxed);
        let finished = self.after_finished.load(Relaxed);
        for (name, kind, help, v) in [
            (
                "outpost_after_response_total",
                "counter",
                "Work handlers left for after their response, started.",
                started,
            ),
            (
                "outpost_after_response_pending",
                "gauge",
                "Work left for after the response, not finished yet.",
                started.saturating_sub(finished),
            ),
            (
                "outpost_after_response_dropped_total",
                "counter",
                "Work left for after the response that was dropped: the queue was full.",
                self.after_dropped.load(Relaxed),
            ),
        ] {
            header(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
    }

    fn render_latency(&self, o: &mut String) {
        let mut merged = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("static bounds are valid");
        for h in lock(&self.histograms).iter() {
            // Same bounds on both sides: adding cannot fail.
            let _ = merged.add(&*lock(h));
        }
        header(
            o,
            "outpost_request_duration_seconds",
            "summary",
            "Request latency from the end of the request head to the end of the response.",
        );
        for q in [0.5, 0.9, 0.99, 0.999] {
            let secs = merged.value_at_quantile(q) as f64 / 1e6;
            let _ = writeln!(o, "outpost_request_duration_seconds{{quantile=\"{q}\"}} {secs}");
        }
        let sum: f64 = merged
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum::<f64>()
            / 1e6;
        let _ = writeln!(o, "outpost_request_duration_seconds_sum {sum}");
        let _ = writeln!(o, "outpost_request_duration_seconds_count {}", merged.len());
    }
}

/// One worker's latency histogram.
pub struct Latency(Hist);

impl Latency {
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = lock(&self.0).record(us);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding a counter lock leaves the counters usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn version_rows(o: &mut String, name: &str, counts: &VersionCounts) {
    for v in Version::ALL {
        for d in Verdict::ALL {
            let n = counts[v as usize][d as usize];
            let _ = writeln!(o, "{name}{{version=\"{}\",verdict=\"{}\"}} {n}", v.name(), d.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.hello(Version::Tls10, Verdict::Reject);
        m.request(Proto::Http11, 431, false);
        m.request(Proto::H2, 400, true);
        m.request(Proto::Http11, 200, false);
        m.alpn(rustls::ProtocolVersion::TLSv1_3, crate::tls::Alpn::H2);
        m.h2_refused(H2Refusal::RapidReset);
        let l = m.latency_recorder();
        l.record(Duration::from_millis(2));
        m.hello(Version::Tls11, Verdict::Redirect);
        m.legacy_page(Version::Tls11, PageKind::Html, Duration::from_millis(3));
        m.legacy_end(LegacyEnd::TimedOut);
        m.upgraded_opened();
        m.upgraded_opened();
        m.upgraded_closed();
        m.upgraded_bytes(crate::splice::Direction::ServerToClient, 5);
        let mut k = [[0; Verdict::COUNT]; Version::COUNT];
        k[Version::Tls13 as usize][0] = 7;
        let text = m.render(Some(&k));
        for line in [
            "outpost_kernel_hellos_total{version=\"TLS1.3\",verdict=\"pass\"} 7",
            "outpost_hellos_total{version=\"TLS1.0\",verdict=\"reject\"} 1",
            "outpost_requests_total{class=\"4xx\",proto=\"http/1.1\"} 1",
            "outpost_requests_total{class=\"4xx\",proto=\"h2\"} 1",
            "outpost_requests_total{class=\"2xx\",proto=\"http/1.1\"} 1",
            "outpost_tls_alpn_total{version=\"TLSv1.3\",alpn=\"h2\"} 1",
            "outpost_tls_alpn_total{version=\"TLSv1.2\",alpn=\"none\"} 0",
            "outpost_h2_refused_total{reason=\"rapid_reset\"} 1",
            "outpost_requests_refused_total{status=\"431\"} 1",
            "outpost_requests_malformed_total 1",
            "outpost_request_duration_seconds_count 1",
            "outpost_hellos_total{version=\"TLS1.1\",verdict=\"redirect\"} 1",
            "outpost_kernel_hellos_total{version=\"TLS1.0\",verdict=\"redirect\"} 0",
            "outpost_legacy_pages_total{version=\"TLS1.1\",type=\"html\"} 1",
            "outpost_legacy_pages_total{version=\"TLS1.0\",type=\"text\"} 0",
            "outpost_legacy_unanswered_total{reason=\"timed_out\"} 1",
            "outpost_legacy_page_seconds_count 1",
            "outpost_upgraded_connections_total 2",
            "outpost_upgraded_connections 1",
            "outpost_upgraded_bytes_total{direction=\"origin_to_client\"} 5",
            "outpost_upgraded_bytes_total{direction=\"client_to_origin\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains("outpost_request_duration_seconds{quantile=\"0.999\"} 0.002"),
            "{text}"
        );
    }
}
