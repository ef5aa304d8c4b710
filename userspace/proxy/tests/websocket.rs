//! WebSockets through the edge, end to end on loopback: a real WebSocket origin and a real
//! client (Python `websockets`, `tests/websocket/ws.py`) on either side of the real `outpost
//! run` binary, over TLS. Every test runs once per I/O backend.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use outpost_api::{erase, BuildEnv, Built, Flow, Handler, Peer, RouteFactory, RouteSpec, Session};
use outpost_proxy::{io::Backend, Registry, RunOptions};
use outpost_testkit::*;
use serde_json::Value;
use tokio::sync::watch;

each_backend!(
    messages_pings_and_close_codes_pass_through,
    the_origin_closing_passes_its_code,
    a_refused_handshake_is_an_ordinary_response,
    only_websocket_upgrades_without_a_body_are_forwarded,
    an_origin_dying_mid_stream_closes_the_client,
    a_silent_upgraded_connection_is_closed_when_idle,
    sigterm_closes_upgraded_connections_after_the_grace_period,
);

/// Chromium's own WebSocket, in a page the Python origin serves through the edge (on the
/// default backend and epoll: a browser is the costly part).
mod chromium {
    #[test]
    fn uring() {
        super::a_browser_page_speaks_websocket_through_the_edge("uring")
    }
    #[test]
    fn epoll() {
        super::a_browser_page_speaks_websocket_through_the_edge("epoll")
    }
}

/// A filter's `close_upgraded_when` ends a live WebSocket (the seam for revocation), on an edge
/// run in-process with a handler of the test's own.
mod close_when {
    #[test]
    fn uring() {
        super::a_filter_can_close_an_upgraded_connection(outpost_proxy::io::Backend::Uring)
    }
    #[test]
    fn epoll() {
        super::a_filter_can_close_an_upgraded_connection(outpost_proxy::io::Backend::Epoll)
    }
    #[test]
    fn compio() {
        super::a_filter_can_close_an_upgraded_connection(outpost_proxy::io::Backend::Compio)
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/websocket/ws.py")
}

/// The Python WebSocket origin on a loopback port, killed (by its PID) on drop.
struct WsOrigin {
    child: Child,
    port: u16,
}

impl WsOrigin {
    fn start() -> WsOrigin {
        let port = free_port();
        let mut child = Command::new(python())
            .arg(script())
            .args(["origin", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the WebSocket origin");
        let stdout = child.stdout.take().expect("piped");
        let lines = lines_of(stdout);
        let origin = WsOrigin { child, port };
        match lines.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l == "listening" => origin,
            other => panic!("the WebSocket origin did not start: {other:?}"),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the process exited within `limit`.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `r` as they come, on a channel (a reader thread; it ends with the stream).
fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().take(10_000) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `ws.py client drain`: an open WebSocket echoing a message every 100 ms until the edge
/// closes it; started and connected (its first line, `open`), then its report.
struct DrainClient {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl DrainClient {
    fn start(port: u16) -> DrainClient {
        let mut child = Command::new(python())
            .arg(script())
            .args(["client", "drain", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the client");
        let lines = lines_of(child.stdout.take().expect("piped"));
        let first = lines.recv_timeout(Duration::from_secs(15));
        if first.as_deref() != Ok("open") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the client did not connect: {first:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        DrainClient { child, lines }
    }

    /// Its report, once it ends (within `limit`), as JSON.
    fn finish(mut self, limit: Duration) -> Value {
        let last = self.lines.recv_timeout(limit);
        let _ = self.child.kill();
        let out = self.child.wait_with_output().unwrap();
        report("drain", &last.unwrap_or_default(), &String::from_utf8_lossy(&out.stderr))
    }
}

/// Runs a client scenario of `ws.py` against the edge; its JSON report.
fn client(edge: &Outpost, scenario: &str) -> Value {
    let out = run_client(
        Command::new(python()).arg(script()).args([
            "client",
            "--port",
            &edge.https.to_string(),
            scenario,
        ]),
        Duration::from_secs(60),
    );
    report(scenario, &String::from_utf8_lossy(&out.stdout), &String::from_utf8_lossy(&out.stderr))
}

fn report(scenario: &str, stdout: &str, stderr: &str) -> Value {
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("client {scenario}: no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(v.get("error").is_none(), "client {scenario} failed: {v}\nstderr:\n{stderr}");
    v
}

fn edge(io: &str, origin: &WsOrigin, http: &str) -> Outpost {
    Outpost::start(io, &format!("[http]\n{http}\n{}", route("*", "/", &[origin.addr()], "")))
}

/// Waits until no upgraded connection is open; panics with the metrics after 5 s.
fn upgraded_closed(edge: &Outpost) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metric("outpost_upgraded_connections") != 0 {
        assert!(Instant::now() < deadline, "upgraded connections still open:\n{}", edge.metrics());
        thread::sleep(Duration::from_millis(50));
    }
}

fn secs(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn messages_pings_and_close_codes_pass_through(io: &str) {
    let origin = WsOrigin::start();
    let o = edge(io, &origin, "");
    let v = client(&o, "echo");
    // Handshake fields end to end, both ways: the origin saw the upgrade and the client's
    // Sec-WebSocket-* fields, and the client validated the origin's accept key, chose the
    // subprotocol it offered and got the extension the origin agreed to.
    let req = &v["request_fields"];
    let field = |name: &str| req[name][0].as_str().unwrap_or_else(|| panic!("no {name}: {v}"));
    assert_eq!(field("upgrade"), "websocket", "{v}");
    assert_eq!(field("connection").to_ascii_lowercase(), "upgrade", "{v}");
    assert_eq!(field("sec-websocket-version"), "13", "{v}");
    assert_eq!(field("sec-websocket-key").len(), 24, "{v}");
    assert_eq!(field("sec-websocket-protocol"), "chat", "{v}");
    assert!(field("sec-websocket-extensions").contains("permessage-deflate"), "{v}");
    assert_eq!(field("x-forwarded-proto"), "https", "{v}");
    assert_eq!(v["subprotocol"], "chat", "{v}");
    let resp = v["response_fields"].to_string();
    for name in ["sec-websocket-accept", "sec-websocket-extensions", "upgrade", "connection"] {
        assert!(resp.contains(name), "no {name} in the 101: {v}");
    }
    assert_eq!(v["text"], "hello", "{v}");
    assert_eq!(v["binary"], serde_json::json!([0, 1, 254, 255]), "{v}");
    assert_eq!(v["big_text"], true, "a 1 MiB text message came back different: {v}");
    assert_eq!(v["big_binary"], true, "a 1 MiB binary message came back different: {v}");
    assert_eq!(v["burst"], true, "{v}");
    assert!(secs(&v, "client_ping") < 5.0, "{v}");
    assert!(v["origin_ping"].as_str().is_some_and(|p| p.starts_with("pong ")), "{v}");
    // The client closed with 4000: the origin got it and answered with the same code.
    assert_eq!(v["close_code"], 4000, "{v}");
    assert_eq!(v["close_reason"], "client done", "{v}");
    upgraded_closed(&o);
    o.expect_metric("outpost_upgraded_connections_total", 2);
    // 2 MiB of random bytes at least each way (compressed text shrinks; random bytes do not).
    for direction in ["client_to_origin", "origin_to_client"] {
        let n = o.metric(&format!("outpost_upgraded_bytes_total{{direction=\"{direction}\"}}"));
        assert!(n > 1 << 20, "{direction}: {n} bytes");
    }
    o.expect_metric("outpost_requests_total{class=\"1xx\"}", 2);
}

fn the_origin_closing_passes_its_code(io: &str) {
    let origin = WsOrigin::start();
    let o = edge(io, &origin, "");
    let v = client(&o, "close");
    assert_eq!(v["code"], 4321, "{v}");
    assert_eq!(v["reason"], "the origin says goodbye", "{v}");
    upgraded_closed(&o);
}

fn a_refused_handshake_is_an_ordinary_response(io: &str) {
    let origin = WsOrigin::start();
    let o = edge(io, &origin, "");
    let v = client(&o, "refuse");
    assert_eq!(v["status"], 403, "{v}");
    assert_eq!(v["body"], "refused by the origin\n", "{v}");
    // The connection stays an HTTP one: another request follows on it.
    let mut s = TlsSession::connect(o.https);
    let handshake = "GET /refuse HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert!(s.send(handshake.as_bytes()));
    assert!(s.read_until("refused by the origin", Duration::from_secs(5)), "{}", s.text());
    assert!(s.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(s.read_until("plain /after", Duration::from_secs(5)), "{}", s.text());
    let text = s.text();
    assert!(text.starts_with("HTTP/1.1 403 "), "{text}");
    assert!(!text.contains("101"), "{text}");
    o.expect_metric("outpost_upgraded_connections_total", 0);
}

/// Against the echo origin, which shows what it received and never switches: a WebSocket
/// handshake reaches it with its upgrade fields, and its 200 is an ordinary response on a
/// connection that stays open; other upgrades, and an upgrade request with a body, reach it
/// without them (RFC 9110 §7.8: a server may ignore `Upgrade`).
fn only_websocket_upgrades_without_a_body_are_forwarded(io: &str) {
    let origin = Origin::start("echo");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    let mut s = TlsSession::connect(o.https);
    let ws = "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    // (request, what the echo shows of it, whether the upgrade went through)
    let requests = [
        (format!("GET /ws HTTP/1.1\r\nHost: a\r\n{ws}\r\n"), "target /ws\n", true),
        (
            "GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".into(),
            "target /h2c\n",
            false,
        ),
        (
            format!("POST /post HTTP/1.1\r\nHost: a\r\n{ws}Content-Length: 2\r\n\r\nhi"),
            "target /post\n",
            false,
        ),
        (
            format!("GET /body HTTP/1.1\r\nHost: a\r\n{ws}Content-Length: 2\r\n\r\nhi"),
            "target /body\n",
            false,
        ),
    ];
    for (request, seen, upgrade) in &requests {
        s.received.clear();
        assert!(s.send(request.as_bytes()));
        // The echo ends with the body's checksum line.
        let done = s.read_until(seen, Duration::from_secs(5))
            && s.read_until("body-sum", Duration::from_secs(5));
        let answer = s.text().to_ascii_lowercase();
        assert!(done && answer.starts_with("http/1.1 200"), "{request:?}: {answer}");
        assert_eq!(answer.contains("header upgrade: websocket"), *upgrade, "{request:?}: {answer}");
        assert_eq!(answer.contains("header connection: upgrade"), *upgrade, "{answer}");
        assert!(!answer.contains("header upgrade: h2c"), "{answer}");
        // Not hop-by-hop: it goes through either way.
        assert_eq!(answer.contains("header sec-websocket-key: "), request.contains("Sec-"));
    }
    o.expect_metric("outpost_upgraded_connections_total", 0);
    // Counted once the response is out: the last one may be read before it is counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while o.metric("outpost_requests_total{class=\"2xx\"}") < requests.len() as u64 {
        assert!(Instant::now() < deadline, "requests not counted:\n{}", o.metrics());
        thread::sleep(Duration::from_millis(20));
    }
    o.expect_metric("outpost_requests_total{class=\"2xx\"}", requests.len() as u64);
}

fn an_origin_dying_mid_stream_closes_the_client(io: &str) {
    let mut origin = WsOrigin::start();
    let o = edge(io, &origin, "");
    let v = client(&o, "die");
    assert_eq!(v["echo"], "last words", "{v}");
    assert_eq!(v["end"], "closed", "{v}");
    assert!(secs(&v, "seconds") < 3.0, "the client waited for the close: {v}");
    assert!(origin.exited_within(Duration::from_secs(5)), "the origin did not die");
    upgraded_closed(&o);
    o.expect_metric("outpost_upgraded_connections_total", 1);
    // Counted gone just after the socket closes: wait for the gauge to come down.
    let deadline = Instant::now() + Duration::from_secs(3);
    while o.metric("outpost_connections_active") != 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(o.metric("outpost_connections_active"), 0, "{}", o.metrics());
}

fn a_silent_upgraded_connection_is_closed_when_idle(io: &str) {
    let origin = WsOrigin::start();
    let o = edge(io, &origin, "upgraded_idle_timeout_ms = 1000");
    let v = client(&o, "idle");
    assert_eq!(v["echo"], "then silence", "{v}");
    assert_eq!(v["end"], "closed", "{v}");
    let waited = secs(&v, "seconds");
    assert!((0.8..5.0).contains(&waited), "closed after {waited} s, idle limit 1 s: {v}");
    upgraded_closed(&o);
}

/// The edge's drain (shutdown_grace_ms = 5000 in every test config) lets an upgraded
/// connection run on through the grace period, then closes it, and exits.
fn sigterm_closes_upgraded_connections_after_the_grace_period(io: &str) {
    let origin = WsOrigin::start();
    let mut o = edge(io, &origin, "");
    let client = DrainClient::start(o.https);
    let sigterm = Instant::now();
    o.signal(libc::SIGTERM);
    let v = client.finish(Duration::from_secs(20));
    let closed = sigterm.elapsed().as_secs_f64();
    assert_eq!(v["end"], "closed", "{v}");
    assert!((4.5..9.0).contains(&closed), "closed {closed} s after SIGTERM, grace 5 s: {v}");
    // Echoes every 100 ms went on during the grace period (a third of what 5 s hold at most:
    // the client's round trips are slower on a loaded machine).
    assert!(v["echoes"].as_u64().is_some_and(|n| n >= 10), "{v}");
    let status = o.wait_exit(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "outpost did not exit cleanly: {status:?}");
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/websocket/browser")
}

fn a_browser_page_speaks_websocket_through_the_edge(io: &str) {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "chromium is not installed (apt-get install chromium); this test drives it"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing in {}: run `cargo xtask setup` (npm ci there)",
        browser_dir().display()
    );
    let origin = WsOrigin::start();
    let o = edge(io, &origin, "");
    let out = run_client(
        Command::new(tool("node")).arg(browser_dir().join("chromium.mjs")).arg(o.url("/page")),
        Duration::from_secs(60),
    );
    let v = report(
        "chromium",
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["seen"], serde_json::json!(["hello from the page", "1,2,3,255"]), "{v}");
    // The page closed with 4001; the origin's answer carried it back.
    assert_eq!(v["code"], 4001, "{v}");
    assert_eq!(v["reason"], "page done", "{v}");
    upgraded_closed(&o);
    o.expect_metric("outpost_upgraded_connections_total", 1);
    // The page came over HTTP/2; the WebSocket took an HTTP/1.1 connection of its own (no
    // RFC 8441), its 101 counted there.
    let m = o.metrics();
    assert!(o.metric("outpost_requests_total{class=\"2xx\",proto=\"h2\"}") >= 1, "{m}");
    o.expect_metric("outpost_requests_total{class=\"1xx\",proto=\"http/1.1\"}", 1);
}

/// Proxies to one server, and asks the core to end each upgraded connection once `revoke`
/// says so: what a revocation filter would do with its own signal.
struct Revocable {
    server: std::net::SocketAddr,
    revoke: watch::Receiver<bool>,
}

impl Handler for Revocable {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _: &mut ()) -> outpost_api::Result<Flow> {
        if s.req.websocket_upgrade() {
            let mut revoke = self.revoke.clone();
            s.close_upgraded_when(async move {
                let _ = revoke.wait_for(|r| *r).await;
            });
        }
        Ok(Flow::Continue)
    }

    async fn upstream_peer(&self, _: &mut Session<'_>, _: &mut ()) -> outpost_api::Result<Peer> {
        Ok(Peer {
            addr: self.server,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            pool_size: 0,
            pool_idle: Duration::from_secs(1),
        })
    }
}

struct RevocableFactory {
    server: std::net::SocketAddr,
    revoke: watch::Receiver<bool>,
}

impl RouteFactory for RevocableFactory {
    fn name(&self) -> &'static str {
        "revocable"
    }
    fn build(&self, _: &RouteSpec<'_>, _: &BuildEnv) -> anyhow::Result<Built> {
        let h = Revocable { server: self.server, revoke: self.revoke.clone() };
        Ok(Built { handler: erase("revocable", h), background: Vec::new() })
    }
}

fn a_filter_can_close_an_upgraded_connection(io: Backend) {
    let origin = WsOrigin::start();
    let (revoke, rx) = watch::channel(false);
    let dir = TempDir::new("ws-close-when");
    let InProcessConfig { path: config, https, admin } =
        InProcessConfig::write(&dir, "[[routes]]\nhandler = \"revocable\"\n");
    let server = origin.addr().parse().unwrap();
    // The edge runs until the test process ends (it is not stopped), on a thread of its own.
    thread::spawn(move || {
        let _dir = dir;
        let options = RunOptions {
            config: Some(config),
            io: Some(io),
            registry: Registry::new().route(RevocableFactory { server, revoke: rx }),
            ..Default::default()
        };
        if let Err(e) = outpost_proxy::run(options) {
            eprintln!("the edge on {io:?} stopped: {e:#}");
        }
    });
    wait_for_admin(admin);
    let client = DrainClient::start(https);
    let metrics = || http_get(admin, "/metrics").map(|(_, body)| body).unwrap_or_default();
    // Echoes go on until the filter's signal, once the socket is open (the client's start
    // takes its time).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics().lines().any(|l| l == "outpost_upgraded_connections 1") {
        assert!(Instant::now() < deadline, "never upgraded:\n{}", metrics());
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    let revoked = Instant::now();
    revoke.send_replace(true);
    let v = client.finish(Duration::from_secs(10));
    assert_eq!(v["end"], "closed", "{v}");
    assert!(revoked.elapsed() < Duration::from_secs(3), "closed late: {v}");
    assert!(v["echoes"].as_u64().is_some_and(|n| n >= 1), "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !metrics().lines().any(|l| l == "outpost_upgraded_connections 0") {
        assert!(Instant::now() < deadline, "still open:\n{}", metrics());
        thread::sleep(Duration::from_millis(50));
    }
}
