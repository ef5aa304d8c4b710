//! Counters and the request latency histogram, rendered as Prometheus text on `/metrics`.
//!
//! Counters are relaxed atomics bumped on the request path. Latency goes into one
//! hdrhistogram per worker (an uncontended lock per request); a scrape merges them into the
//! summary `outpost_request_duration_seconds`. The same latency also goes, by status class, into
//! fixed buckets (relaxed atomics): the histogram `outpost_request_latency_seconds`, which, unlike
//! a summary's quantiles, adds up across the nodes of a fleet (`histogram_quantile` over the sum of
//! the nodes' buckets; deploy/prometheus records it).
//!
//! Counters and histograms go on across an upgrade: the old process sends a [`Snapshot`] to
//! the new one, which [absorbs](Metrics::absorb) it, and later what it counted while draining
//! ([`Snapshot::since`]); see [`crate::upgrade`]. Gauges are each process's own.

use std::{
    borrow::Cow,
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
use serde::{Deserialize, Serialize};

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

/// Why the admin listener refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No bearer token, or a wrong one: 401.
    Token = 0,
    /// A mutating request that could come from a web page: 403.
    Browser = 1,
}

const ADMIN_REFUSALS: [&str; 2] = ["token", "browser"];

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

/// The two histograms' names, as keys of [`Snapshot::histograms`].
const LATENCY: &str = "outpost_request_duration_seconds";
const LEGACY_TIME: &str = "outpost_legacy_page_seconds";
/// Request latency in µs: 1 µs to 1 h, 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Time per legacy page in µs: 1 µs to 1 min.
const LEGACY_MAX_US: u64 = 60_000_000;
/// The histogram by status class, and the prefix of its keys in [`Snapshot::counters`].
const CLASS_LATENCY: &str = "outpost_request_latency_seconds";
/// Upper bounds of its buckets, µs (0.5 ms to 10 s, then +Inf): fixed, the same on every node and
/// build, so the fleet's buckets add up. Below 0.5 ms a proxy's own answers sit; past 10 s only
/// long polls and slow origins, which the summary's 0.999 quantile still shows.
const CLASS_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Status classes, as `outpost_requests_total` and `outpost_request_latency_seconds` label them.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request latency by status class in [`CLASS_BUCKETS_US`].
#[derive(Default)]
struct ClassLatency {
    /// Requests by `[class][bucket]`, each bucket its own count (not cumulative); the last one
    /// is past the largest bound.
    buckets: [[AtomicU64; CLASS_BUCKETS_US.len() + 1]; CLASSES.len()],
    /// Their latency added up, µs, by class.
    sum_us: [AtomicU64; CLASSES.len()],
}

impl ClassLatency {
    fn record(&self, status: u16, us: u64) {
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        let bucket =
            CLASS_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(CLASS_BUCKETS_US.len());
        self.buckets[class][bucket].fetch_add(1, Relaxed);
        self.sum_us[class].fetch_add(us, Relaxed);
    }

    /// Every atomic, by its key in [`Snapshot::counters`]: `<name>_own{class,le}` (a bucket's
    /// own count, not the cumulative one `/metrics` shows) and `<name>_sum_us{class}`.
    fn each(&self, mut f: impl FnMut(&str, &AtomicU64)) {
        for (class, (row, sum)) in CLASSES.iter().zip(self.buckets.iter().zip(&self.sum_us)) {
            for (i, a) in row.iter().enumerate() {
                let le = CLASS_BUCKETS_US.get(i).map_or("+Inf".to_owned(), |&us| seconds(us));
                f(&format!("{CLASS_LATENCY}_own{{class=\"{class}\",le=\"{le}\"}}"), a);
            }
            f(&format!("{CLASS_LATENCY}_sum_us{{class=\"{class}\"}}"), sum);
        }
    }

    fn render(&self, o: &mut String) {
        header(
            o,
            CLASS_LATENCY,
            "histogram",
            "Request latency by status class, in fixed buckets that add up across nodes.",
        );
        for (class, (row, sum)) in CLASSES.iter().zip(self.buckets.iter().zip(&self.sum_us)) {
            let mut cumulative = 0;
            for (i, a) in row.iter().enumerate() {
                cumulative += a.load(Relaxed);
                let le = CLASS_BUCKETS_US.get(i).map_or("+Inf".to_owned(), |&us| seconds(us));
                let _ = writeln!(
                    o,
                    "{CLASS_LATENCY}_bucket{{class=\"{class}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = sum.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "{CLASS_LATENCY}_sum{{class=\"{class}\"}} {sum}");
            let _ = writeln!(o, "{CLASS_LATENCY}_count{{class=\"{class}\"}} {cumulative}");
        }
    }
}

/// µs as Prometheus writes seconds in `le` (`0.0005`, `1`, `2.5`).
fn seconds(us: u64) -> String {
    (us as f64 / 1e6).to_string()
}

#[derive(Default)]
pub struct Metrics {
    hellos: [[AtomicU64; Verdict::COUNT]; Version::COUNT],
    unclassified: [AtomicU64; 3],
    /// Connections closed before a conclusive hello (EOF or handshake timeout).
    hello_incomplete: AtomicU64,
    handshakes: [AtomicU64; 2],
    handshake_failures: AtomicU64,
    /// By negotiated version and cipher suite (owned names only when carried from a
    /// predecessor that knew a suite this build does not name).
    ciphers: Mutex<BTreeMap<(&'static str, Cow<'static, str>), u64>>,
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
    /// One per worker, and one per absorbed snapshot.
    histograms: Mutex<Vec<Hist>>,
    /// The same latencies by status class, in fixed buckets; shared with every [`Latency`].
    class_latency: Arc<ClassLatency>,
    after_started: AtomicU64,
    /// A gauge, apart from the counter: started work carried from a predecessor is not
    /// pending here.
    after_pending: AtomicI64,
    after_dropped: AtomicU64,
    /// Upgraded (spliced) connections: opened (a counter), open now (a gauge), bytes by
    /// [`UPGRADED_DIRECTIONS`].
    upgraded_opened: AtomicU64,
    upgraded_open: AtomicI64,
    upgraded_bytes: [AtomicU64; 2],
    /// Legacy responder: pages by `[Version][PageKind]`, early ends, time per page (µs).
    legacy_pages: [[AtomicU64; PAGE_KINDS.len()]; Version::COUNT],
    legacy_ends: [AtomicU64; LEGACY_ENDS.len()],
    legacy_time: Mutex<Option<Histogram<u64>>>,
    /// Admin listener refusals, by [`ADMIN_REFUSALS`].
    admin_refused: [AtomicU64; ADMIN_REFUSALS.len()],
    /// This node's name, for `outpost_node_info`.
    node: Mutex<String>,
    /// Series from outside the core (the store, applications), appended to every scrape.
    sources: Mutex<Vec<MetricsSource>>,
    /// Set once a successor took over: the counters as sent to it, which scrapes still
    /// answered here show (what the drain counts shows in the successor's when it is done).
    frozen: Mutex<Option<Snapshot>>,
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
        *lock(&self.ciphers).entry((name, Cow::Borrowed(cipher))).or_default() += 1;
    }

    /// The legacy responder answered a client offering `v` with its page, `took` after the
    /// hand-over.
    pub fn legacy_page(&self, v: Version, kind: PageKind, took: Duration) {
        self.legacy_pages[v as usize][kind as usize].fetch_add(1, Relaxed);
        let mut h = lock(&self.legacy_time);
        let h = h.get_or_insert_with(|| histogram(LEGACY_MAX_US));
        let _ = h.record((took.as_micros() as u64).clamp(1, LEGACY_MAX_US));
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
        self.after_pending.fetch_add(1, Relaxed);
    }

    pub fn after_response_finished(&self) {
        self.after_pending.fetch_sub(1, Relaxed);
    }

    pub fn after_response_dropped(&self) {
        self.after_dropped.fetch_add(1, Relaxed);
    }

    pub fn upgraded_opened(&self) {
        self.upgraded_opened.fetch_add(1, Relaxed);
        self.upgraded_open.fetch_add(1, Relaxed);
    }

    pub fn upgraded_closed(&self) {
        self.upgraded_open.fetch_sub(1, Relaxed);
    }

    /// The admin listener refused a request.
    pub fn admin_refused(&self, why: AdminRefusal) {
        self.admin_refused[why as usize].fetch_add(1, Relaxed);
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
        let h = Arc::new(Mutex::new(histogram(LATENCY_MAX_US)));
        lock(&self.histograms).push(h.clone());
        Latency { hist: h, by_class: self.class_latency.clone() }
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
        let frozen = lock(&self.frozen).clone();
        match frozen {
            Some(s) => self.as_of(&s).render_now(kernel),
            None => self.render_now(kernel),
        }
    }

    /// Takes the snapshot for a successor, and shows it from now on instead of the counters,
    /// which go on counting for [`Snapshot::since`]: a scrape this process still answers (on
    /// an admin connection kept alive from before) is never ahead of the successor's.
    pub fn freeze(&self) -> Snapshot {
        let s = self.snapshot();
        *lock(&self.frozen) = Some(s.clone());
        s
    }

    /// The successor failed before it served: show the counters again.
    pub fn thaw(&self) {
        *lock(&self.frozen) = None;
    }

    /// A copy with the counters of `s` and this process's gauges, node and sources.
    fn as_of(&self, s: &Snapshot) -> Metrics {
        let m = Metrics::default();
        m.absorb(s);
        for (to, from) in [
            (&m.connections_active, &self.connections_active),
            (&m.after_pending, &self.after_pending),
            (&m.upgraded_open, &self.upgraded_open),
        ] {
            to.store(from.load(Relaxed), Relaxed);
        }
        m.set_node(&lock(&self.node));
        *lock(&m.sources) = lock(&self.sources).clone();
        m
    }

    fn render_now(&self, kernel: Option<&VersionCounts>) -> String {
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
            let _ = writeln!(o, "{} {n}", cipher_series(version, cipher));
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
        self.class_latency.render(&mut o);
        self.render_legacy(&mut o);
        self.render_after_response(&mut o);
        self.render_upgraded(&mut o);
        header(
            &mut o,
            "outpost_admin_refused_total",
            "counter",
            "Admin listener requests refused: `token` (missing or wrong bearer token, 401), \
             `browser` (a mutating request with an Origin or a form body type, 403).",
        );
        for (i, reason) in ADMIN_REFUSALS.iter().enumerate() {
            let n = self.admin_refused[i].load(Relaxed);
            let _ = writeln!(o, "outpost_admin_refused_total{{reason=\"{reason}\"}} {n}");
        }
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
        for (name, kind, help, v) in [
            (
                "outpost_upgraded_connections_total",
                "counter",
                "Connections upgraded to a WebSocket and spliced to their origin.",
                self.upgraded_opened.load(Relaxed),
            ),
            (
                "outpost_upgraded_connections",
                "gauge",
                "Upgraded connections open now.",
                self.upgraded_open.load(Relaxed).max(0) as u64,
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
        for (name, kind, help, v) in [
            (
                "outpost_after_response_total",
                "counter",
                "Work handlers left for after their response, started.",
                self.after_started.load(Relaxed),
            ),
            (
                "outpost_after_response_pending",
                "gauge",
                "Work left for after the response, not finished yet.",
                self.after_pending.load(Relaxed).max(0) as u64,
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

    /// The workers' latency histograms (and those carried from a predecessor) as one.
    fn latency(&self) -> Histogram<u64> {
        let mut merged = histogram(LATENCY_MAX_US);
        for h in lock(&self.histograms).iter() {
            // Same bounds on both sides: adding cannot fail.
            let _ = merged.add(&*lock(h));
        }
        merged
    }

    fn render_latency(&self, o: &mut String) {
        let merged = self.latency();
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

/// One worker's latency histogram, and the buckets by status class all workers share.
pub struct Latency {
    hist: Hist,
    by_class: Arc<ClassLatency>,
}

impl Latency {
    /// A request answered with `status` took `d`.
    pub fn record(&self, status: u16, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let _ = lock(&self.hist).record(us);
        self.by_class.record(status, us);
    }
}

/// What a process counted, for its successor: every counter series with a value (gauges are
/// each process's own), and each histogram's recorded buckets. Series or histograms one side
/// does not know (another build's) are left out by the other. The fixed buckets of
/// `outpost_request_latency_seconds` travel as counters, under keys of their own (see
/// `ClassLatency::each`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// By series as `/metrics` shows it (`name{labels}`); zeros left out.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// By name: counts by bucket (the bucket's highest value, µs); empty buckets left out.
    #[serde(default)]
    pub histograms: BTreeMap<String, BTreeMap<u64, u64>>,
}

impl Snapshot {
    /// What was counted between `earlier` and this snapshot, both of the same process.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        fn minus<K: Ord + Clone>(
            now: &BTreeMap<K, u64>,
            then: &BTreeMap<K, u64>,
        ) -> BTreeMap<K, u64> {
            now.iter()
                .map(|(k, n)| (k, n.saturating_sub(then.get(k).copied().unwrap_or(0))))
                .filter(|&(_, n)| n > 0)
                .map(|(k, n)| (k.clone(), n))
                .collect()
        }
        let none = BTreeMap::new();
        Snapshot {
            counters: minus(&self.counters, &earlier.counters),
            histograms: self
                .histograms
                .iter()
                .map(|(name, b)| {
                    (name.clone(), minus(b, earlier.histograms.get(name).unwrap_or(&none)))
                })
                .filter(|(_, b)| !b.is_empty())
                .collect(),
        }
    }
}

impl Metrics {
    /// Everything counted so far (including what was absorbed), for a successor.
    pub fn snapshot(&self) -> Snapshot {
        let mut counters = BTreeMap::new();
        self.each_counter(|series, a| {
            let n = a.load(Relaxed);
            if n > 0 {
                counters.insert(series.to_owned(), n);
            }
        });
        for ((version, cipher), &n) in lock(&self.ciphers).iter() {
            counters.insert(cipher_series(version, cipher), n);
        }
        let mut histograms = BTreeMap::new();
        histograms.insert(LATENCY.to_owned(), buckets(&self.latency()));
        if let Some(h) = lock(&self.legacy_time).as_ref() {
            histograms.insert(LEGACY_TIME.to_owned(), buckets(h));
        }
        histograms.retain(|_, b| !b.is_empty());
        Snapshot { counters, histograms }
    }

    /// Adds what another process counted: its snapshot, or what it counted since one.
    pub fn absorb(&self, s: &Snapshot) {
        self.each_counter(|series, a| {
            if let Some(&n) = s.counters.get(series) {
                a.fetch_add(n, Relaxed);
            }
        });
        {
            let mut ciphers = lock(&self.ciphers);
            for (series, &n) in &s.counters {
                if let Some((version, cipher)) = parse_cipher_series(series) {
                    let cipher = Cow::Owned(cipher.to_owned());
                    *ciphers.entry((version, cipher)).or_default() += n;
                }
            }
        }
        if let Some(b) = s.histograms.get(LATENCY) {
            let mut h = histogram(LATENCY_MAX_US);
            record(&mut h, b);
            lock(&self.histograms).push(Arc::new(Mutex::new(h)));
        }
        if let Some(b) = s.histograms.get(LEGACY_TIME) {
            let mut h = lock(&self.legacy_time);
            record(h.get_or_insert_with(|| histogram(LEGACY_MAX_US)), b);
        }
    }

    /// Every counter held in an atomic, by its series as [`Metrics::render`] writes it (the
    /// cipher counts, in a map, are apart), then the class latency buckets by their own keys.
    /// A test checks the two agree.
    fn each_counter(&self, mut f: impl FnMut(&str, &AtomicU64)) {
        self.class_latency.each(&mut f);
        for v in Version::ALL {
            for d in Verdict::ALL {
                let (v, d, a) = (v.name(), d.name(), &self.hellos[v as usize][d as usize]);
                f(&format!("outpost_hellos_total{{version=\"{v}\",verdict=\"{d}\"}}"), a);
            }
        }
        for u in Unclassified::ALL {
            let series = format!("outpost_hellos_unclassified_total{{reason=\"{}\"}}", u.name());
            f(&series, &self.unclassified[u as usize]);
        }
        f("outpost_hellos_incomplete_total", &self.hello_incomplete);
        for (name, a) in NEGOTIATED.iter().zip(&self.handshakes) {
            f(&format!("outpost_tls_handshakes_total{{version=\"{name}\"}}"), a);
        }
        f("outpost_tls_handshake_failures_total", &self.handshake_failures);
        f("outpost_connections_total", &self.connections);
        for (version, row) in NEGOTIATED.iter().zip(&self.alpn) {
            for (alpn, a) in ALPNS.iter().zip(row) {
                let alpn = alpn.name();
                f(&format!("outpost_tls_alpn_total{{version=\"{version}\",alpn=\"{alpn}\"}}"), a);
            }
        }
        for (proto, row) in PROTOS.iter().zip(&self.requests) {
            for (i, a) in row.iter().enumerate() {
                let class = i + 1;
                let series =
                    format!("outpost_requests_total{{class=\"{class}xx\",proto=\"{proto}\"}}");
                f(&series, a);
            }
        }
        for (why, a) in H2_REFUSALS.iter().zip(&self.h2_refused) {
            f(&format!("outpost_h2_refused_total{{reason=\"{why}\"}}"), a);
        }
        f("outpost_requests_malformed_total", &self.malformed);
        for (status, a) in REFUSED.iter().zip(&self.refused) {
            f(&format!("outpost_requests_refused_total{{status=\"{status}\"}}"), a);
        }
        for (why, a) in DROPPED_FIELDS.iter().zip(&self.dropped_fields) {
            f(&format!("outpost_request_fields_dropped_total{{reason=\"{why}\"}}"), a);
        }
        for (kind, a) in UPSTREAM_FAILURES.iter().zip(&self.upstream_failures) {
            f(&format!("outpost_upstream_failures_total{{kind=\"{kind}\"}}"), a);
        }
        for v in Version::ALL {
            for (kind, a) in PAGE_KINDS.iter().zip(&self.legacy_pages[v as usize]) {
                let v = v.name();
                f(&format!("outpost_legacy_pages_total{{version=\"{v}\",type=\"{kind}\"}}"), a);
            }
        }
        for (reason, a) in LEGACY_ENDS.iter().zip(&self.legacy_ends) {
            f(&format!("outpost_legacy_unanswered_total{{reason=\"{reason}\"}}"), a);
        }
        f("outpost_after_response_total", &self.after_started);
        f("outpost_after_response_dropped_total", &self.after_dropped);
        f("outpost_upgraded_connections_total", &self.upgraded_opened);
        for (direction, a) in UPGRADED_DIRECTIONS.iter().zip(&self.upgraded_bytes) {
            f(&format!("outpost_upgraded_bytes_total{{direction=\"{direction}\"}}"), a);
        }
        for (reason, a) in ADMIN_REFUSALS.iter().zip(&self.admin_refused) {
            f(&format!("outpost_admin_refused_total{{reason=\"{reason}\"}}"), a);
        }
    }
}

fn cipher_series(version: &str, cipher: &str) -> String {
    format!("outpost_tls_ciphers_total{{version=\"{version}\",cipher=\"{cipher}\"}}")
}

/// The version (as this build names it) and cipher of a [`cipher_series`].
fn parse_cipher_series(series: &str) -> Option<(&'static str, &str)> {
    let labels =
        series.strip_prefix("outpost_tls_ciphers_total{version=\"")?.strip_suffix("\"}")?;
    let (version, cipher) = labels.split_once("\",cipher=\"")?;
    let version = NEGOTIATED.into_iter().find(|&v| v == version)?;
    Some((version, cipher))
}

/// A histogram of µs from 1 to `max`, 3 significant digits.
fn histogram(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("static bounds are valid")
}

fn buckets(h: &Histogram<u64>) -> BTreeMap<u64, u64> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Adds `buckets` (from a histogram of the same bounds) to `h`.
fn record(h: &mut Histogram<u64>, buckets: &BTreeMap<u64, u64>) {
    for (&value, &n) in buckets {
        // Out of bounds only when another build's bounds were wider: those are dropped.
        let _ = h.record_n(value, n);
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
        l.record(200, Duration::from_millis(2));
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

    /// The class histogram: cumulative buckets, a bucket's bound inclusive, `+Inf` = `_count`,
    /// every class present; the buckets of two nodes add up to those of one that saw both.
    #[test]
    fn latency_by_class_is_a_histogram() {
        let m = Metrics::new();
        let (w1, w2) = (m.latency_recorder(), m.latency_recorder());
        w1.record(200, Duration::from_micros(400));
        w2.record(204, Duration::from_micros(500));
        w1.record(200, Duration::from_millis(30));
        w1.record(503, Duration::from_secs(20));
        w2.record(99, Duration::from_millis(1));
        let text = m.render(None);
        let now = samples(&text, false);
        let name = "outpost_request_latency_seconds";
        for (series, value) in [
            ("_bucket{class=\"2xx\",le=\"0.0005\"}", "2"),
            ("_bucket{class=\"2xx\",le=\"0.025\"}", "2"),
            ("_bucket{class=\"2xx\",le=\"0.05\"}", "3"),
            ("_bucket{class=\"2xx\",le=\"10\"}", "3"),
            ("_bucket{class=\"2xx\",le=\"+Inf\"}", "3"),
            ("_count{class=\"2xx\"}", "3"),
            ("_sum{class=\"2xx\"}", "0.0309"),
            ("_bucket{class=\"5xx\",le=\"10\"}", "0"),
            ("_bucket{class=\"5xx\",le=\"+Inf\"}", "1"),
            ("_count{class=\"1xx\"}", "1"),
            ("_count{class=\"3xx\"}", "0"),
        ] {
            let series = format!("{name}{series}");
            assert_eq!(now.get(&series).map(String::as_str), Some(value), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE outpost_request_latency_seconds histogram"), "{text}");
        let buckets =
            now.keys().filter(|k| k.starts_with("outpost_request_latency_seconds_")).count();
        assert_eq!(buckets, 5 * (CLASS_BUCKETS_US.len() + 1 + 2), "{text}");

        // Two nodes' buckets, added as Prometheus adds them, are the buckets of both.
        let (a, b, both) = (Metrics::new(), Metrics::new(), Metrics::new());
        for (i, us) in [300, 700, 4_000, 90_000, 2_000_000, 30_000_000].into_iter().enumerate() {
            let node = if i % 2 == 0 { &a } else { &b };
            node.latency_recorder().record(200, Duration::from_micros(us));
            both.latency_recorder().record(200, Duration::from_micros(us));
        }
        let (ta, tb, tboth) = (a.render(None), b.render(None), both.render(None));
        let (sa, sb, sboth) = (samples(&ta, false), samples(&tb, false), samples(&tboth, false));
        for (series, v) in sboth.iter().filter(|(k, _)| k.contains("_bucket{class=\"2xx\"")) {
            let sum: u64 = [&sa, &sb].iter().map(|s| s[series].parse::<u64>().unwrap()).sum();
            assert_eq!(sum.to_string(), *v, "{series}:\n{ta}\n{tb}");
        }
    }

    /// The sample lines of `text`, by series; with `counters`, only those of counter families.
    fn samples(text: &str, counters: bool) -> BTreeMap<String, String> {
        let mut kinds = BTreeMap::new();
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                kinds.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                if !counters || kinds.get(name).map(String::as_str) == Some("counter") {
                    out.insert(series.to_owned(), value.to_owned());
                }
            }
        }
        out
    }

    fn counted(old: &Metrics) {
        old.request(Proto::Http11, 200, false);
        old.request(Proto::H2, 404, false);
        old.connection_opened();
        old.handshake(
            rustls::ProtocolVersion::TLSv1_3,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        );
        old.admin_refused(AdminRefusal::Token);
        old.upgraded_opened();
        old.after_response_started();
        old.latency_recorder().record(404, Duration::from_millis(3));
        old.legacy_page(Version::Tls10, PageKind::Text, Duration::from_millis(40));
    }

    /// `each_counter` and `render` name the same series: with every atomic counter bumped,
    /// each counter line rendered is non-zero and is in the snapshot with the same value.
    #[test]
    fn the_snapshot_holds_every_rendered_counter() {
        let m = Metrics::new();
        let mut n = 0;
        m.each_counter(|_, a| {
            n += 1;
            a.store(n, Relaxed);
        });
        m.handshake(rustls::ProtocolVersion::TLSv1_2, rustls::CipherSuite::Unknown(0x1234));
        let text = m.render(None);
        let snap = m.snapshot();
        let rendered = samples(&text, true);
        assert!(rendered.len() > 50, "{text}");
        for (series, value) in &rendered {
            let got = snap.counters.get(series).map(u64::to_string);
            assert_eq!(got.as_deref(), Some(value.as_str()), "{series} in\n{text}\n{snap:?}");
        }
        // The class histogram travels under keys of its own: its buckets' own counts.
        let (class, plain): (Vec<_>, Vec<_>) =
            snap.counters.iter().partition(|(k, _)| k.starts_with(CLASS_LATENCY));
        assert_eq!(plain.len(), rendered.len(), "{snap:?}");
        assert_eq!(class.len(), CLASSES.len() * (CLASS_BUCKETS_US.len() + 2), "{snap:?}");
        let now = samples(&text, false);
        let own =
            |le: &str| snap.counters[&format!("{CLASS_LATENCY}_own{{class=\"3xx\",le=\"{le}\"}}")];
        let cumulative: u64 = own("0.0005") + own("0.001");
        assert_eq!(
            now["outpost_request_latency_seconds_bucket{class=\"3xx\",le=\"0.001\"}"],
            cumulative.to_string(),
            "{text}"
        );
    }

    /// Old process: snapshot at the hand-over, counts on while draining, sends the rest. The
    /// new one shows at least the snapshot at once, and old-final + its own at the end; its
    /// gauges are its own.
    #[test]
    fn a_snapshot_and_the_rest_carry_counters_and_histograms() {
        let old = Metrics::new();
        counted(&old);
        let wire = serde_json::to_string(&old.snapshot()).unwrap();
        let at_handover: Snapshot = serde_json::from_str(&wire).unwrap();
        assert_eq!(at_handover, old.snapshot());

        let new = Metrics::new();
        new.request(Proto::Http11, 200, false);
        new.absorb(&at_handover);
        let text = new.render(None);
        let now = samples(&text, false);
        for (series, value) in [
            ("outpost_requests_total{class=\"2xx\",proto=\"http/1.1\"}", "2"),
            ("outpost_requests_total{class=\"4xx\",proto=\"h2\"}", "1"),
            ("outpost_connections_total", "1"),
            ("outpost_connections_active", "0"),
            ("outpost_tls_ciphers_total{version=\"TLSv1.3\",cipher=\"TLS13_AES_128_GCM_SHA256\"}", "1"),
            ("outpost_admin_refused_total{reason=\"token\"}", "1"),
            ("outpost_upgraded_connections_total", "1"),
            ("outpost_upgraded_connections", "0"),
            ("outpost_after_response_total", "1"),
            ("outpost_after_response_pending", "0"),
            ("outpost_request_duration_seconds_count", "1"),
            ("outpost_request_latency_seconds_count{class=\"4xx\"}", "1"),
            ("outpost_request_latency_seconds_bucket{class=\"4xx\",le=\"0.005\"}", "1"),
            ("outpost_legacy_page_seconds_count", "1"),
        ] {
            assert_eq!(now.get(series).map(String::as_str), Some(value), "{series} in\n{text}");
        }

        // The drain counts on in the old process; then it sends what it counted since.
        counted(&old);
        old.request(Proto::H2, 503, false);
        let rest = old.snapshot().since(&at_handover);
        assert_eq!(rest.counters["outpost_requests_total{class=\"2xx\",proto=\"http/1.1\"}"], 1);
        assert_eq!(
            rest.counters.get("outpost_hellos_total{version=\"TLS1.0\",verdict=\"pass\"}"),
            None
        );
        new.absorb(&rest);

        let (old_final, new_final) = (old.snapshot(), new.snapshot());
        let mut want = old_final.counters.clone();
        *want
            .entry("outpost_requests_total{class=\"2xx\",proto=\"http/1.1\"}".into())
            .or_default() += 1;
        assert_eq!(new_final.counters, want);
        assert_eq!(new_final.histograms, old_final.histograms);
        let text = new.render(None);
        let now = samples(&text, false);
        assert_eq!(now["outpost_request_duration_seconds_count"], "2", "{text}");
        assert_eq!(now["outpost_request_latency_seconds_count{class=\"4xx\"}"], "2", "{text}");
        let old_text = old.render(None);
        let sum = "outpost_request_duration_seconds_sum";
        assert_eq!(now[sum], samples(&old_text, false)[sum], "{text}\n{old_text}");
        assert_eq!(now["outpost_legacy_page_seconds_count"], "2", "{text}");
        assert_eq!(now["outpost_connections_active"], "0", "{text}");
    }

    /// After the hand-over the old process shows its counters as sent (its gauges live), so
    /// a scrape it still answers is never ahead of its successor; a failed upgrade thaws them.
    #[test]
    fn a_frozen_process_shows_its_snapshot() {
        let m = Metrics::new();
        counted(&m);
        let sent = m.freeze();
        counted(&m);
        m.connection_opened();
        let text = m.render(None);
        let now = samples(&text, false);
        assert_eq!(now["outpost_connections_total"], "1", "{text}");
        assert_eq!(now["outpost_connections_active"], "3", "{text}");
        assert_eq!(now["outpost_request_duration_seconds_count"], "1", "{text}");
        assert_eq!(m.snapshot().since(&sent).counters["outpost_connections_total"], 2);
        m.thaw();
        let text = m.render(None);
        assert_eq!(samples(&text, false)["outpost_connections_total"], "3", "{text}");
    }

    /// Series another build counts and this one does not know are left out, not misfiled.
    #[test]
    fn unknown_series_are_left_out() {
        let m = Metrics::new();
        let mut s = Snapshot::default();
        s.counters.insert("outpost_future_total{kind=\"x\"}".into(), 5);
        s.counters.insert("outpost_tls_ciphers_total{version=\"TLSv1.4\",cipher=\"X\"}".into(), 5);
        s.counters.insert("outpost_connections_active".into(), 5);
        s.histograms.insert("outpost_future_seconds".into(), BTreeMap::from([(10, 1)]));
        m.absorb(&s);
        assert_eq!(m.snapshot(), Snapshot::default());
        let text = m.render(None);
        assert!(!text.contains("future") && !text.contains("TLSv1.4"), "{text}");
        assert!(text.lines().any(|l| l == "outpost_connections_active 0"), "{text}");
    }
}
