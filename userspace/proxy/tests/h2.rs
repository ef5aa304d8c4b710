//! HTTP/2 to clients, end to end on loopback: curl and nghttp through the real `outpost run`
//! to the echo origin (which stays HTTP/1.1) on every I/O backend, and the known HTTP/2 attacks
//! written frame by frame with the h2 project's hyperframe and hpack (`tests/h2/attacks.py`),
//! each refused within its limit and counted, with the edge still serving afterwards.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use outpost_testkit::*;
use serde_json::Value;

each_backend!(curl_and_nghttp_reach_the_origin_over_h2);

/// Runs one case of `attacks.py` against the edge: what the server did, as JSON.
fn attack(o: &Outpost, case: &str, n: usize) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2/attacks.py");
    let out = run_client(
        Command::new(python()).arg(&script).args([
            "--port",
            &o.https.to_string(),
            "--n",
            &n.to_string(),
            case,
        ]),
        Duration::from_secs(40),
    );
    let text = stdout(&out);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("{case}: {e}: {text:?} {}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(v.get("error").is_none(), "{case}: {v}");
    v
}

/// The edge answers an ordinary HTTP/2 request.
fn still_serves(o: &Outpost, what: &str) {
    let out = curl(&["--http2", "-w", "\n%{http_version} %{http_code}", &o.url("/still")]);
    let text = stdout(&out);
    assert!(text.ends_with("\n2 200"), "after {what}: {text}");
}

const ENHANCE_YOUR_CALM: u64 = 0xb;

fn curl_and_nghttp_reach_the_origin_over_h2(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    // A GET: the same forwarding headers and Host as HTTP/1.1, from :authority.
    let out = curl(&["--http2", "-H", "X-Forwarded-For: 6.6.6.6", &o.url("/hello?x=1")]);
    let body = stdout(&out);
    for want in [
        "origin a\n",
        "method GET\n",
        "target /hello?x=1\n",
        &format!("header host: 127.0.0.1:{}\n", o.https),
        "header X-Forwarded-For: 127.0.0.1\n",
        "header X-Forwarded-Proto: https\n",
        "header X-Outpost-TLS-Version: TLSv1.3\n",
    ] {
        assert!(body.contains(want), "no {want:?} in\n{body}");
    }
    assert!(!body.contains("6.6.6.6"), "{body}");
    // HEAD: the origin's length, no body.
    let out = curl(&["--http2", "-I", &o.url("/head")]);
    let text = stdout(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200") && text.contains("content-length: "), "{text}");
    // A request body one way, its checksum back the other.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = o.dir.0.join("body.bin");
    std::fs::write(&file, &data).unwrap();
    let at = format!("@{}", file.display());
    let out = curl(&["--http2", "--data-binary", &at, &o.url("/upload")]);
    let body = stdout(&out);
    assert!(body.contains("method POST\n"), "{body}");
    assert!(body.contains(&format!("body-sum {}\n", checksum(&data))), "{body}");
    // A large streamed response (chunked from the origin: no length on h2), past the client's
    // initial window of 64 KiB: flow control both ways.
    // (Into a file: `run_client` reads stdout only once curl exits, and a pipe holds 64 KiB.)
    let got = o.dir.0.join("chunks.txt");
    let to = got.to_str().unwrap();
    let out = curl(&["--http2", "-o", to, "-w", "%{http_version}", &o.url("/chunks/30000/0")]);
    assert_eq!(stdout(&out), "2", "{out:?}");
    let text = std::fs::read_to_string(&got).unwrap();
    assert_eq!(text.matches("chunk ").count(), 30000, "a response cut short");
    assert!(text.ends_with("chunk 29999\n"));
    // Many streams at once on one connection: 40 requests of 300 ms each, in far less than
    // 40 × 300 ms.
    let started = Instant::now();
    let out = run_client(
        Command::new(tool("nghttp")).args(["-n", "-s", "-m", "40", &o.url("/delay/300")]),
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    let text = stdout(&out);
    assert!(out.status.success(), "nghttp: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches(" 200 ").count(), 40, "{text}");
    assert!(took < Duration::from_secs(6), "40 streams took {took:?}: not concurrent");
    o.expect_metric("outpost_requests_total{class=\"2xx\",proto=\"h2\"}", 44);
    o.expect_metric("outpost_requests_total{class=\"2xx\",proto=\"http/1.1\"}", 0);
    o.expect_metric("outpost_tls_alpn_total{version=\"TLSv1.3\",alpn=\"h2\"}", 5);
    // HTTP/1.1 still, when the client asks for it.
    let out = curl(&["-w", "\n%{http_version}", &o.url("/one")]);
    assert!(stdout(&out).ends_with("\n1.1"), "{}", stdout(&out));
    o.expect_metric("outpost_tls_alpn_total{version=\"TLSv1.3\",alpn=\"http/1.1\"}", 1);
}

/// An edge (uring, the default backend) in front of one origin, with `[http]` settings.
fn edge_with(http: &str) -> (Origin, Outpost) {
    let origin = Origin::start("a");
    let extra = format!("[http]\n{http}\n{}", route("*", "/", &[origin.addr()], ""));
    let o = Outpost::start("uring", &extra);
    (origin, o)
}

/// One edge for the attack tests, with small limits so each attack is quick: 10 streams at
/// once, a 1 s body timeout.
fn attack_edge() -> (Origin, Outpost) {
    edge_with("h2_max_concurrent_streams = 10\nbody_timeout_ms = 1000")
}

#[test]
fn rapid_reset_is_a_goaway_after_bounded_work() {
    let (origin, o) = attack_edge();
    let v = attack(&o, "rapid_reset", 1000);
    assert_eq!(v["goaway"], ENHANCE_YOUR_CALM, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"rapid_reset\"}", 1);
    // Bounded work: far fewer origin requests than streams opened.
    let reached = origin.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(reached < 500, "{reached} requests reached the origin: {v}");
    still_serves(&o, "rapid reset");
}

#[test]
fn continuation_flood_is_a_goaway() {
    let (_origin, o) = attack_edge();
    let v = attack(&o, "continuation", 1000);
    assert_eq!(v["goaway"], ENHANCE_YOUR_CALM, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"continuation_flood\"}", 1);
    still_serves(&o, "CONTINUATION flood");
}

#[test]
fn hpack_bomb_is_a_goaway_and_a_big_head_is_431() {
    let (origin, o) = attack_edge();
    let v = attack(&o, "hpack_bomb", 8000);
    assert_eq!(v["goaway"], ENHANCE_YOUR_CALM, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"header_list_too_large\"}", 1);
    // Over max_head_bytes as HTTP/1.1 counts a head, under h2's own limit: our 431, counted as
    // HTTP/1.1's are; the connection goes on.
    let v = attack(&o, "big_head", 0);
    assert_eq!(v["status"], 431, "{v}");
    assert_eq!(v["after"], 200, "{v}");
    o.expect_metric("outpost_requests_refused_total{status=\"431\"}", 1);
    o.expect_metric("outpost_requests_total{class=\"4xx\",proto=\"h2\"}", 1);
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Over the advertised SETTINGS_MAX_HEADER_LIST_SIZE (2 × 16 KiB + 32 × 100 bytes), under
    // four times it (~85 KB decoded): h2 answers 431 on the stream itself; counted all the same.
    let v = attack(&o, "hpack_bomb", 20);
    assert_eq!(v["status"], 431, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"header_list_over_limit\"}", 1);
    o.expect_metric("outpost_h2_refused_total{reason=\"header_list_too_large\"}", 1);
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn ping_and_settings_floods_are_goaways() {
    let (_origin, o) = attack_edge();
    let v = attack(&o, "ping_flood", 1000);
    assert_eq!(v["goaway"], ENHANCE_YOUR_CALM, "{v}");
    let v = attack(&o, "settings_flood", 1000);
    assert_eq!(v["goaway"], ENHANCE_YOUR_CALM, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"control_flood\"}", 2);
    still_serves(&o, "PING and SETTINGS floods");
}

#[test]
fn streams_over_the_limit_are_refused() {
    let (_origin, o) = attack_edge();
    let v = attack(&o, "streams", 30);
    assert_eq!(v["done"], 10, "{v}");
    assert_eq!(v["refused"], 20, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"too_many_streams\"}", 20);
    still_serves(&o, "too many streams");
}

#[test]
fn a_shut_window_resets_its_stream_within_the_body_timeout() {
    let (_origin, o) = attack_edge();
    let v = attack(&o, "zero_window", 0);
    assert_eq!(v["reset"], 0x8, "{v}");
    assert_eq!(v["data"], 0, "{v}");
    let took = v["seconds"].as_f64().unwrap();
    assert!((0.9..4.0).contains(&took), "reset after {took} s: {v}");
    assert_eq!(v["after"], 200, "{v}");
    o.expect_metric("outpost_h2_refused_total{reason=\"send_stalled\"}", 1);
}

/// A connection without a stream in flight is closed as HTTP/1.1's is: after `header_timeout`
/// before its first request, after `idle_timeout` once one was answered, with a GOAWAY (NO_ERROR)
/// first, and closed soon after even if the client never answers h2's closing PING. While a
/// stream is in flight neither applies (the stream has its own limits).
#[test]
fn an_idle_connection_gets_a_goaway_after_its_timeout() {
    let (_origin, o) = edge_with("header_timeout_ms = 1000\nidle_timeout_ms = 2500");
    for (n, limit) in [(0, 1.0), (1, 2.5)] {
        let v = attack(&o, "idle", n);
        assert_eq!(v["goaway"], 0, "after {n} requests: {v}");
        let took = v["seconds"].as_f64().unwrap();
        assert!((limit - 0.1..limit + 1.5).contains(&took), "after {n} requests: {took} s: {v}");
        // Closed even though the client never answers the PING of h2's graceful close.
        assert_eq!(v["closed"], true, "after {n} requests: {v}");
        assert!(v["close_seconds"].as_f64().unwrap() < 3.0, "after {n} requests: {v}");
    }
    // A stream that outlasts both limits is answered, and its connection then idles again.
    let out = curl(&["--http2", "-w", "\n%{http_version} %{http_code}", &o.url("/delay/3000")]);
    assert!(stdout(&out).ends_with("\n2 200"), "{}", stdout(&out));
}

/// A client that asks for more than the socket buffers hold and never reads: its streams end
/// (h2 buffers each response), the connection idles out, and the edge closes it within its
/// lingering, not after the body timeout its last write would otherwise wait for.
#[test]
fn a_client_that_never_reads_is_closed_after_its_idle_timeout() {
    let (origin, o) = edge_with("idle_timeout_ms = 1000\nbody_timeout_ms = 30000");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2/attacks.py");
    let mut client = Command::new(python())
        .arg(&script)
        .args(["--port", &o.https.to_string(), "--n", "20", "no_read"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("attacks.py");
    let start = Instant::now();
    let mut open_seen = false;
    let closed = loop {
        let active = o.metric("outpost_connections_active");
        open_seen |= active > 0;
        if open_seen && active == 0 {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(18) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = client.kill();
    let _ = client.wait();
    let took = closed.expect("the connection was still open after 18 s");
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::Relaxed), 100);
}

#[test]
fn expect_100_continue_gets_its_100_before_the_body() {
    let origin = Origin::start("a");
    let o = Outpost::start("uring", &route("*", "/", &[origin.addr()], ""));
    let v = attack(&o, "expect", 0);
    assert_eq!(v["first"], 100, "{v}");
    assert!(v["waited"].as_f64().unwrap() < 1.0, "{v}");
    assert_eq!(v["status"], 200, "{v}");
    let body = v["body"].as_str().unwrap();
    assert!(
        body.contains("method POST\ntarget /upload\n") && body.contains("body-length 5"),
        "{v}"
    );
    // The origin gets no `expect`: the edge answered it.
    assert!(!body.to_ascii_lowercase().contains("expect"), "{v}");
    // The 100 is ours, not a refusal.
    o.expect_metric("outpost_h2_refused_total{reason=\"header_list_over_limit\"}", 0);
}

#[test]
fn cookies_are_joined_and_authority_must_match_host() {
    let (_origin, o) = attack_edge();
    let v = attack(&o, "cookies", 0);
    assert_eq!(v["status"], 200, "{v}");
    let body = v["body"].as_str().unwrap();
    assert!(body.contains("header cookie: a=1; b=2; c=3\n"), "{body}");
    assert_eq!(body.matches("header cookie").count(), 1, "{body}");
    assert_eq!(body.matches("header host").count(), 1, "{body}");
    assert_eq!(v["mismatch"], 400, "{v}");
    o.expect_metric("outpost_requests_malformed_total", 1);
}

const PROTOCOL_ERROR: u64 = 0x1;

/// A WebSocket handshake over HTTP/2 switches nothing: `Connection` and `Upgrade` make a
/// request malformed there (RFC 9113 §8.2.2: h2 resets its stream), RFC 8441's extended CONNECT
/// is not offered (nor accepted), and the handshake's other fields make an ordinary request.
#[test]
fn a_websocket_handshake_over_h2_is_not_upgraded() {
    let (_origin, o) = attack_edge();
    let v = attack(&o, "websocket", 0);
    assert_eq!(v["upgrade_reset"], PROTOCOL_ERROR, "{v}");
    assert!(v["connect_protocol_setting"].is_null(), "SETTINGS_ENABLE_CONNECT_PROTOCOL: {v}");
    assert_eq!(v["connect_reset"], PROTOCOL_ERROR, "{v}");
    assert!(v["connect_status"].is_null(), "{v}");
    assert_eq!(v["plain_status"], 200, "{v}");
    let body = v["plain_body"].as_str().unwrap();
    assert!(body.contains("header sec-websocket-version: 13\n"), "{body}");
    assert!(!body.contains("header upgrade") && !body.contains("header connection: upgrade"));
    o.expect_metric("outpost_upgraded_connections_total", 0);
    still_serves(&o, "a WebSocket handshake");
}
