//! End to end on loopback: the real `outpost run` binary between real clients (curl, openssl
//! s_client) and a small origin started by each test. Every test runs once per I/O backend.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use outpost_testkit::*;

each_backend!(
    modern_clients_reach_the_origin_with_forwarding_headers,
    legacy_clients_are_refused_by_the_userspace_floor,
    origin_down_is_502_within_a_second,
    one_origin_down_every_request_succeeds,
    an_origin_that_stops_fails_no_request,
    slow_origin_is_504,
    limits_answer_431_413_400,
    slowloris_is_cut_off,
    idle_keepalive_connections_are_closed,
    idle_pooled_origin_connections_are_closed,
    chunked_bodies_stream_both_ways,
    large_response_heads_and_bodies_arrive_whole,
    sighup_reload_keeps_an_open_keepalive_connection,
    sigterm_finishes_the_request_in_flight,
    no_config_serves_the_builtin_page,
    ipv4_and_ipv6_listeners,
    unclassified_first_flights_are_counted,
    a_burst_of_first_flights_is_read_on_every_connection,
    sni_selects_the_certificate_and_reload_replaces_it,
    active_health_checks_steer_traffic,
    blackholed_origin_is_502_within_a_second,
    pooled_connections_the_origin_closed_or_soiled_are_not_used,
    a_returning_client_resumes_its_session,
);

fn modern_clients_reach_the_origin_with_forwarding_headers(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    for (flag, version) in [("--tlsv1.2", "TLSv1.2"), ("--tlsv1.3", "TLSv1.3")] {
        let max = if version == "TLSv1.2" { "1.2" } else { "1.3" };
        // A client's own forwarding headers are replaced, never trusted.
        let spoof = "X-Forwarded-For: 6.6.6.6";
        let out = curl(&[flag, "--tls-max", max, "-H", spoof, &o.url("/hello?x=1")]);
        let body = stdout(&out);
        assert!(out.status.success(), "curl {flag}: {out:?}");
        for want in [
            "origin a\n",
            "target /hello?x=1\n",
            "header X-Forwarded-For: 127.0.0.1\n",
            "header X-Forwarded-Proto: https\n",
            &format!("header X-Forwarded-Host: 127.0.0.1:{}\n", o.https),
            &format!("header X-Outpost-TLS-Version: {version}\n"),
        ] {
            assert!(body.contains(want), "curl {flag}: no {want:?} in\n{body}");
        }
        assert!(!body.contains("6.6.6.6"), "{body}");
        // Hop-by-hop fields never reach the origin.
        assert!(!body.to_ascii_lowercase().contains("header connection"), "{body}");
    }
    // HEAD: the origin's Content-Length comes through, and no body (the test origin wrongly
    // sends one; outpost must not forward it nor reuse that connection).
    let out = curl(&["-I", &o.url("/head")]);
    let text = stdout(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200") && text.contains("content-length: "), "{text}");
    // Keep-alive: several requests over one connection (curl reuses it), an origin connection
    // reused from the pool.
    let u = o.url("/k");
    let out = curl(&["-w", "%{num_connects}\n", &u, &u, &u]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.matches("origin a").count(), 3);
    let connects: Vec<&str> = text.lines().filter(|l| l.len() == 1).collect();
    assert_eq!(connects, ["1", "0", "0"], "the connection was not kept alive: {text}");
    o.expect_metric("outpost_tls_handshakes_total{version=\"TLSv1.2\"}", 1);
    o.expect_metric("outpost_tls_handshakes_total{version=\"TLSv1.3\"}", 3);
    o.expect_metric("outpost_hellos_total{version=\"TLS1.3\",verdict=\"pass\"}", 3);
    o.expect_metric("outpost_requests_total{class=\"2xx\"}", 6);
    assert_eq!(origin.requests.load(Ordering::Relaxed), 6);
}

fn legacy_clients_are_refused_by_the_userspace_floor(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    let (code, text) =
        s_client(o.https, &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], b"", Duration::from_secs(5));
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("alert protocol version"), "openssl -tls1 saw:\n{text}");
    let (code, text) = s_client(
        o.https,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        b"",
        Duration::from_secs(5),
    );
    assert!(
        code != Some(0) && text.contains("alert protocol version"),
        "openssl -tls1_1 saw:\n{text}"
    );
    let out = curl(&[&CURL_TLS1_0[..], &["--connect-timeout", "3", &o.url("/")]].concat());
    assert_eq!(out.status.code(), Some(35), "curl TLS 1.0: {out:?}");
    o.expect_metric("outpost_hellos_total{version=\"TLS1.0\",verdict=\"reject\"}", 2);
    o.expect_metric("outpost_hellos_total{version=\"TLS1.1\",verdict=\"reject\"}", 1);
    o.expect_metric("outpost_tls_handshakes_total{version=\"TLSv1.2\"}", 0);
    assert_eq!(origin.requests.load(Ordering::Relaxed), 0);

    // Drop mode: closed without a word. Observe mode: counted as passed, and rustls (TLS
    // 1.2+ only) refuses the handshake itself (with a handshake_failure alert).
    o.rewrite_config(&format!(
        "[floor]\nmode = \"drop\"\n{}",
        route("*", "/", &[origin.addr()], "")
    ));
    o.signal(libc::SIGHUP);
    wait_for_log(&o, "reloaded", 1);
    let (code, text) =
        s_client(o.https, &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], b"", Duration::from_secs(5));
    assert!(code != Some(0) && !text.contains("alert protocol version"), "drop mode:\n{text}");
    o.expect_metric("outpost_hellos_total{version=\"TLS1.0\",verdict=\"drop\"}", 1);
    o.rewrite_config(&format!(
        "[floor]\nmode = \"observe\"\n{}",
        route("*", "/", &[origin.addr()], "")
    ));
    o.signal(libc::SIGHUP);
    wait_for_log(&o, "reloaded", 2);
    let (code, text) =
        s_client(o.https, &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], b"", Duration::from_secs(5));
    assert!(code != Some(0) && text.contains("alert handshake failure"), "observe mode:\n{text}");
    o.expect_metric("outpost_hellos_total{version=\"TLS1.0\",verdict=\"pass\"}", 1);
    o.expect_metric("outpost_tls_handshake_failures_total", 1);
}

fn origin_down_is_502_within_a_second(io: &str) {
    let dead = format!("127.0.0.1:{}", free_port());
    let o = Outpost::start(io, &route("*", "/", &[dead], ""));
    for _ in 0..3 {
        let (body, status, took) = get_timed(&o.url("/"));
        assert_eq!(status, 502, "{body}");
        assert!(body.starts_with("{\"error\": "), "not a JSON error: {body}");
        assert!(took < Duration::from_secs(1), "502 took {took:?}");
    }
    o.expect_metric("outpost_requests_total{class=\"5xx\"}", 3);
}

fn one_origin_down_every_request_succeeds(io: &str) {
    let up = Origin::start("up");
    let dead = format!("127.0.0.1:{}", free_port());
    let o = Outpost::start(
        io,
        &route("*", "/", &[dead, up.addr()], "health_check = { interval_ms = 60000 }"),
    );
    for i in 0..20 {
        // A new connection each time: round robin is per request, not per connection.
        let out = curl(&["-w", "\n%{http_code}", &o.url(&format!("/r{i}"))]);
        let text = stdout(&out);
        assert!(text.ends_with("\n200") && text.contains("origin up"), "request {i}: {text}");
    }
    o.expect_metric("outpost_requests_total{class=\"2xx\"}", 20);
    // The dead server was tried at most once, then marked down (passive health), unless the
    // first active health check got there first.
    assert!(o.metric("outpost_upstream_failures_total{kind=\"connect\"}") <= 1);
}

/// An origin stops while the pools hold connections to it (closed with it): the requests that
/// would reuse them go to the other origin, as any request to a server that refuses does.
fn an_origin_that_stops_fails_no_request(io: &str) {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let o = Outpost::start(
        io,
        &route("*", "/", &[a.addr(), b.addr()], "health_check = { interval_ms = 60000 }"),
    );
    let get = |i: usize| stdout(&curl(&["-w", "\n%{http_code}", &o.url(&format!("/s{i}"))]));
    let answers: Vec<String> = (0..8).map(get).collect();
    assert!(answers.iter().any(|t| t.contains("origin b")), "b never answered: {answers:?}");
    drop(b);
    for i in 0..20 {
        let text = get(i);
        assert!(text.ends_with("\n200") && text.contains("origin a"), "request {i}: {text}");
    }
}

fn slow_origin_is_504(io: &str) {
    let origin = Origin::start("slow");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], "response_timeout_ms = 300"));
    let started = Instant::now();
    // The origin would answer after 6 s: a 504 well before that came from the 300 ms timeout
    // (the margin is for a loaded machine, not a measure of the timeout).
    let out = curl(&["-w", "\n%{http_code}", &o.url("/delay/6000")]);
    assert!(stdout(&out).ends_with("\n504"), "{out:?}");
    assert!(started.elapsed() < Duration::from_millis(4500), "504 after {:?}", started.elapsed());
    // The same connection pool still works for a fast request.
    let out = curl(&["-w", "\n%{http_code}", &o.url("/delay/10")]);
    assert!(stdout(&out).ends_with("\n200"), "{out:?}");
}

fn limits_answer_431_413_400(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(
        io,
        &format!(
            "[http]\nmax_body_bytes = 10000\nmax_head_bytes = 4096\n{}",
            route("*", "/", &[origin.addr()], "")
        ),
    );
    let big = format!("X-Big: {}", "a".repeat(5000));
    let out = curl(&["-w", "\n%{http_code}", "-H", &big, &o.url("/")]);
    assert!(stdout(&out).ends_with("\n431"), "{out:?}");
    let body = "b".repeat(20_000);
    let out = curl(&["-w", "\n%{http_code}", "--data-binary", &body, &o.url("/")]);
    assert!(stdout(&out).ends_with("\n413"), "413 by Content-Length: {out:?}");
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        &o.url("/"),
    ]);
    assert!(stdout(&out).ends_with("\n413"), "413 by chunked body: {out:?}");
    // Malformed: Content-Length with Transfer-Encoding (a smuggling attempt).
    let (_, text) = s_client(
        o.https,
        &[],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(text.starts_with("HTTP/1.1 400 ") && text.contains("{\"error\": "), "{text}");
    let (_, text) = s_client(o.https, &[], b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 400 "), "no Host: {text}");
    o.expect_metric("outpost_requests_refused_total{status=\"431\"}", 1);
    o.expect_metric("outpost_requests_refused_total{status=\"413\"}", 2);
    o.expect_metric("outpost_requests_malformed_total", 2);
    assert_eq!(origin.requests.load(Ordering::Relaxed), 0, "a refused request reached the origin");
}

/// Responses read from the origin in more than one read: a head larger than the first read,
/// a body many reads long, and both in the same segments. Each arrives whole and in order, on
/// HTTP/1.1 and HTTP/2, on a fresh and on a pooled origin connection.
fn large_response_heads_and_bodies_arrive_whole(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    for proto in ["--http1.1", "--http2"] {
        for (head, body) in [(100, 100), (900, 500), (3000, 10), (20_000, 0), (5000, 300_000)] {
            let path = format!("/large/{head}/{body}");
            let out = curl(&[proto, "-D", "-", &o.url(&path)]);
            assert!(out.status.success(), "{proto} {path}: {out:?}");
            let text = &out.stdout;
            let split = text.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
            let (h, b) = (String::from_utf8_lossy(&text[..split]), &text[split + 4..]);
            assert!(h.contains(" 200"), "{proto} {path}: {h}");
            let pad = format!("x-pad: {}", "p".repeat(head));
            assert!(h.to_ascii_lowercase().contains(&pad), "{proto} {path}: no whole X-Pad");
            assert!(b == large_body(body).as_slice(), "{proto} {path}: body of {}", b.len());
        }
    }
}

fn slowloris_is_cut_off(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(
        io,
        &format!("[http]\nheader_timeout_ms = 1000\n{}", route("*", "/", &[origin.addr()], "")),
    );
    let mut s = TlsSession::connect(o.https);
    assert!(s.send(b"GET / HTTP/1.1\r\nHost: a\r\n"));
    // Keep trickling header bytes, a field every 300 ms (well within any per-read timeout), for
    // far longer than the head's timeout: only a bound on the whole head cuts this client off,
    // and it must do so while the client is still trickling. No wall-clock bound: a loaded
    // machine delays the close, not the verdict.
    let mut cut_while_trickling = false;
    for i in 0..30 {
        thread::sleep(Duration::from_millis(300));
        if s.closed_within(Duration::ZERO) || !s.send(format!("X-{i}: y\r\n").as_bytes()) {
            cut_while_trickling = true;
            break;
        }
    }
    assert!(cut_while_trickling, "a 9 s trickle was not cut off: {}", s.text());
    assert!(s.closed_within(Duration::from_secs(3)), "still open: {}", s.text());
    assert!(s.text().starts_with("HTTP/1.1 408 "), "{}", s.text());
    o.expect_metric("outpost_requests_refused_total{status=\"408\"}", 1);
    assert_eq!(origin.requests.load(Ordering::Relaxed), 0);
}

fn idle_keepalive_connections_are_closed(io: &str) {
    let origin = Origin::start("a");
    let extra = format!("[http]\nidle_timeout_ms = 500\n{}", route("*", "/", &[origin.addr()], ""));
    let o = Outpost::start(io, &extra);
    let mut s = TlsSession::connect(o.https);
    assert!(s.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(s.read_until("target /1", Duration::from_secs(5)), "{}", s.text());
    let started = Instant::now();
    assert!(s.closed_within(Duration::from_secs(3)), "idle connection still open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "closed after {took:?}, before the idle timeout");
    // The worker closes the socket, then counts the connection gone: the client may see the
    // close first. The gauge must come down all the same.
    let deadline = Instant::now() + Duration::from_secs(3);
    while o.metric("outpost_connections_active") != 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    o.expect_metric("outpost_connections_active", 0);
}

/// A pooled origin connection is closed once `pool_idle_ms` runs out, though no request comes
/// for its origin again to find it expired.
fn idle_pooled_origin_connections_are_closed(io: &str) {
    let origin = Origin::start("a");
    let extra = "pool_idle_ms = 500\nhealth_check = { interval_ms = 0 }";
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], extra));
    for i in 0..3 {
        let out = curl(&[&o.url(&format!("/{i}"))]);
        assert!(stdout(&out).contains(&format!("target /{i}")), "{}", stdout(&out));
    }
    assert!(origin.open.load(Ordering::Relaxed) >= 1, "no pooled connection to the origin");
    let started = Instant::now();
    while origin.open.load(Ordering::Relaxed) != 0 && started.elapsed() < Duration::from_secs(6) {
        thread::sleep(Duration::from_millis(50));
    }
    let open = origin.open.load(Ordering::Relaxed);
    assert_eq!(open, 0, "{open} pooled connections still open after {:?}", started.elapsed());
    // The origin is reached again on a fresh connection.
    let out = curl(&[&o.url("/again")]);
    assert!(stdout(&out).contains("target /again"), "{}", stdout(&out));
}

fn chunked_bodies_stream_both_ways(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    // Request body: chunked by curl, dechunked and rechunked by outpost.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = o.dir.0.join("body.bin");
    std::fs::write(&file, &body).unwrap();
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &o.url("/upload"),
    ]);
    let text = stdout(&out);
    assert!(text.contains("framing chunked\n"), "{text}");
    assert!(text.contains(&format!("body-length {}\n", body.len())), "{text}");
    assert!(text.contains(&format!("body-sum {}\n", checksum(&body))), "{text}");
    // Content-Length request bodies keep their length framing.
    let out = curl(&["--data-binary", &format!("@{}", file.display()), &o.url("/upload")]);
    let text = stdout(&out);
    assert!(
        text.contains("framing length\n")
            && text.contains(&format!("body-sum {}\n", checksum(&body))),
        "{text}"
    );
    // Expect: 100-continue is answered by outpost (curl, told to, would wait 5 s for it).
    let started = Instant::now();
    let out = curl(&[
        "--expect100-timeout",
        "5",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file.display()),
        &o.url("/upload"),
    ]);
    let text = stdout(&out);
    assert!(text.contains(&format!("body-sum {}\n", checksum(&body))), "{text}");
    assert!(!text.to_ascii_lowercase().contains("header expect"), "Expect was forwarded: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "100 Continue not sent: {:?}",
        started.elapsed()
    );
    // Response body: chunked from the origin, streamed: the head and first chunk arrive long
    // before the origin finished (4 chunks, 400 ms apart).
    let out = curl(&[
        "-D",
        "-",
        "-w",
        "\nsince %{time_appconnect} ttfb %{time_starttransfer} total %{time_total}",
        &o.url("/chunks/4/400"),
    ]);
    let text = stdout(&out);
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
    for i in 0..4 {
        assert!(text.contains(&format!("chunk {i}\n")), "{text}");
    }
    // From the end of the handshake: curl's start and the handshake are not the edge's.
    let times: Vec<f64> = text
        .rsplit_once("since ")
        .unwrap()
        .1
        .split(|c: char| c.is_ascii_alphabetic() || c == ' ')
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(times.len(), 3, "curl's times: {text}");
    let (first, last) = (times[1] - times[0], times[2] - times[0]);
    assert!(last >= 1.1, "origin pauses were not waited for: {text}");
    assert!(first < 0.6, "first byte only after {first}s: the response was buffered");
}

fn sighup_reload_keeps_an_open_keepalive_connection(io: &str) {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let o = Outpost::start(io, &route("*", "/", &[a.addr()], ""));
    let mut s = TlsSession::connect(o.https);
    assert!(s.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(s.read_until("origin a", Duration::from_secs(5)), "{}", s.text());
    o.rewrite_config(&route("*", "/", &[b.addr()], ""));
    o.signal(libc::SIGHUP);
    wait_for_log(&o, "reloaded", 1);
    // Same TLS connection: still open, and its next request follows the new routes.
    assert!(s.send(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(s.read_until("origin b", Duration::from_secs(5)), "{}", s.text());
    assert!(!s.closed_within(Duration::ZERO));
    o.expect_metric("outpost_connections_total", 1);
    // A broken config is refused and the running one kept.
    o.rewrite_config("[[routes]]\nbogus = 1\n");
    o.signal(libc::SIGHUP);
    wait_for_log(&o, "reload failed", 1);
    assert!(s.send(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(s.read_until("target /three", Duration::from_secs(5)), "{}", s.text());
}

fn sigterm_finishes_the_request_in_flight(io: &str) {
    let origin = Origin::start("a");
    let mut o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    // An idle keep-alive connection must not hold the drain up.
    let mut idle = TlsSession::connect(o.https);
    assert!(idle.send(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(idle.read_until("target /idle", Duration::from_secs(5)), "{}", idle.text());
    let url = o.url("/delay/1000");
    let client = thread::spawn(move || curl(&["-w", "\n%{http_code}", &url]));
    // SIGTERM once the request is at the origin (curl's start and handshake take their time).
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.requests.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the request never reached the origin");
        thread::sleep(Duration::from_millis(10));
    }
    o.signal(libc::SIGTERM);
    // No new connections once draining: the listeners close (within a moment of the signal).
    let deadline = Instant::now() + Duration::from_secs(3);
    while TcpStream::connect(("127.0.0.1", o.https)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
    let out = curl(&["--connect-timeout", "2", &o.url("/")]);
    assert_eq!(out.status.code(), Some(7), "a new connection was accepted while draining: {out:?}");
    let out = client.join().unwrap();
    let text = stdout(&out);
    assert!(text.ends_with("\n200") && text.contains("delayed 1000"), "in-flight request: {out:?}");
    assert!(idle.closed_within(Duration::from_secs(1)), "the idle connection was not closed");
    // Well before the 5 s grace period: nothing was left to wait for.
    let status = o.wait_exit(Duration::from_secs(2)).expect("outpost did not exit after the drain");
    assert!(status.success(), "exit status {status}; log:\n{}", o.log());
}

fn no_config_serves_the_builtin_page(io: &str) {
    // The defaults, with only the ports and data directory moved.
    let o = Outpost::start(io, "");
    let out = curl(&["-w", "\n%{http_code}", &o.url("/")]);
    let text = stdout(&out);
    assert!(text.ends_with("\n200") && text.contains("outpost is running"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    // The self-signed certificate was generated into the data directory and is reused.
    let cert = o.dir.0.join("data/tls/self-signed.crt");
    assert!(cert.is_file());
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "--resolve",
        &format!("localhost:{}:127.0.0.1", o.https),
        "--cacert",
        cert.to_str().unwrap(),
        &format!("https://localhost:{}/", o.https),
    ]);
    assert!(
        stdout(&out).ends_with("\n200"),
        "verified against the self-signed certificate: {out:?}"
    );
    // The backend asked for is the one running (io_uring did not fall back here).
    assert!(o.log().contains(&format!("io=\"{io}\"")), "{}", o.log());
    let (status, body) = http_get(o.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("outpost_request_duration_seconds{quantile=\"0.999\"}"), "{body}");
}

fn ipv4_and_ipv6_listeners(io: &str) {
    let origin = Origin::start("a");
    let port = free_port();
    let _outpost = Outpost::start(
        io,
        &format!(
            "listen = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\n{}",
            route("*", "/", &[origin.addr()], "")
        ),
    );
    for url in [format!("https://127.0.0.1:{port}/v4"), format!("https://[::1]:{port}/v6")] {
        let out = curl(&["-g", "-w", "\n%{http_code}", &url]);
        let text = stdout(&out);
        assert!(text.ends_with("\n200") && text.contains("origin a"), "{url}: {out:?}");
    }
    let out = curl(&["-g", &format!("https://[::1]:{port}/v6")]);
    assert!(stdout(&out).contains("header X-Forwarded-For: ::1\n"), "{out:?}");
}

fn unclassified_first_flights_are_counted(io: &str) {
    let o = Outpost::start(io, "");
    // A ClientHello whose length is shorter than its fixed fields, then plain HTTP: both go on
    // to rustls, which refuses them.
    let malformed = [0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00];
    for bytes in [&malformed[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"] {
        let mut s = TcpStream::connect(("127.0.0.1", o.https)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        // Whatever came back is a TLS alert record, never HTTP.
        assert!(answer.is_empty() || answer[0] == 0x15, "{bytes:?} got {answer:?}");
    }
    o.expect_metric("outpost_hellos_unclassified_total{reason=\"malformed\"}", 1);
    o.expect_metric("outpost_hellos_unclassified_total{reason=\"not_hello\"}", 1);
    o.expect_metric("outpost_tls_handshake_failures_total", 2);
}

fn a_burst_of_first_flights_is_read_on_every_connection(io: &str) {
    // More connections than compio's ring has provided buffers (256), each sending its first
    // flight while the edge is stopped, so that all of them arrive together when it resumes:
    // the receives that find no buffer left must still read theirs.
    const N: u64 = 800;
    let o = Outpost::start(io, "");
    let mut conns: Vec<TcpStream> =
        (0..N).map(|_| TcpStream::connect(("127.0.0.1", o.https)).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = o.metric("outpost_connections_active");
        if active == N {
            break;
        }
        assert!(Instant::now() < deadline, "{active} of {N} connections accepted");
        thread::sleep(Duration::from_millis(20));
    }
    o.signal(libc::SIGSTOP);
    for s in &mut conns {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    }
    o.signal(libc::SIGCONT);
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    // Every first flight is read and classified.
    o.expect_metric("outpost_hellos_unclassified_total{reason=\"not_hello\"}", N);
}

fn sni_selects_the_certificate_and_reload_replaces_it(io: &str) {
    let origin = Origin::start("a");
    let dir = TempDir::new("certs");
    let cert = |name: &str, san: &str| {
        let (c, k) = (dir.0.join(format!("{name}.crt")), dir.0.join(format!("{name}.key")));
        let out = run_client(
            Command::new(tool("openssl"))
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-addext",
                    &format!("subjectAltName={san}"),
                ])
                .arg("-keyout")
                .arg(&k)
                .arg("-out")
                .arg(&c),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "openssl req: {out:?}");
        (c, k)
    };
    let (a, a_key) = cert("a", "DNS:a.test");
    let (b, b_key) = cert("b", "DNS:*.b.test");
    let (a2, a2_key) = cert("a2", "DNS:a.test");
    let tls = |list: &[(&std::path::PathBuf, &std::path::PathBuf, &str)]| {
        list.iter()
            .map(|(c, k, n)| {
                format!(
                    "[[tls.certs]]\nnames = [\"{n}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
                    c.display(),
                    k.display()
                )
            })
            .collect::<String>()
            + &route("*", "/", &[origin.addr()], "")
    };
    let o = Outpost::start(io, &tls(&[(&a, &a_key, "a.test"), (&b, &b_key, "*.b.test")]));
    let get = |host: &str, ca: &std::path::Path| {
        let out = Command::new(tool("curl"))
            .args([
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--resolve",
                &format!("{host}:{}:127.0.0.1", o.https),
                "--cacert",
            ])
            .arg(ca)
            .arg(format!("https://{host}:{}/", o.https))
            .output()
            .unwrap();
        stdout(&out)
    };
    assert_eq!(get("a.test", &a), "200");
    assert_eq!(get("x.b.test", &b), "200");
    assert_eq!(get("x.b.test", &a), "000", "a.test's certificate served for x.b.test");
    o.rewrite_config(&tls(&[(&a2, &a2_key, "a.test")]));
    o.signal(libc::SIGHUP);
    wait_for_log(&o, "reloaded", 1);
    assert_eq!(get("a.test", &a2), "200", "the reloaded certificate is not served");
    assert_eq!(get("a.test", &a), "000", "the old certificate is still served");
}

/// OpenSSL's client saves its session and comes back with it: resumed, on TLS 1.3 (a ticket
/// sent after the handshake) and TLS 1.2 (RFC 5077), and the request still served.
fn a_returning_client_resumes_its_session(io: &str) {
    let origin = Origin::start("a");
    let o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    let dir = TempDir::new("sessions");
    let request = b"GET / HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n";
    for version in ["-tls1_3", "-tls1_2"] {
        let file = dir.0.join(version);
        let file = file.to_str().unwrap();
        let limit = Duration::from_secs(10);
        let (_, first) = s_client_summary(o.https, &[version, "-sess_out", file], request, limit);
        assert!(first.contains("\nNew, TLSv1."), "{version}, first: {first}");
        let (_, again) = s_client_summary(o.https, &[version, "-sess_in", file], request, limit);
        assert!(again.contains("\nReused, TLSv1."), "{version}, not resumed: {again}");
        assert!(again.contains("HTTP/1.1 200 OK") && again.contains("origin a"), "{again}");
    }
}

fn active_health_checks_steer_traffic(io: &str) {
    let sick = Origin::start("sick");
    let well = Origin::start("well");
    let hc = "health_check = { path = \"/health\", interval_ms = 100, timeout_ms = 500 }";
    let o = Outpost::start(io, &route("*", "/", &[sick.addr(), well.addr()], hc));
    let origins_of = |n: usize| {
        let urls: Vec<String> = (0..n).map(|i| o.url(&format!("/h{i}"))).collect();
        let mut args = vec!["-w", "\n"];
        args.extend(urls.iter().map(String::as_str));
        stdout(&curl(&args))
    };
    sick.health.store(503, Ordering::Relaxed);
    // The edge logs each change of a server's state once it has made it.
    wait_for_log(&o, "failed its health check", 1);
    let text = origins_of(10);
    assert_eq!(
        text.matches("origin well").count(),
        10,
        "traffic went to a server failing its checks:\n{text}"
    );
    sick.health.store(200, Ordering::Relaxed);
    wait_for_log(&o, "origin server healthy", 1);
    let text = origins_of(10);
    assert!(
        text.matches("origin sick").count() >= 4,
        "the recovered server got no traffic:\n{text}"
    );
}

fn blackholed_origin_is_502_within_a_second(io: &str) {
    // A listener that never accepts, its queue full: further SYNs are dropped, so connecting
    // to it times out, as with a host that is down.
    let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hole.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    hole.listen(0).unwrap();
    let addr = hole.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    let full =
        (0..16).any(|_| match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => {
                queued.push(s);
                false
            }
            Err(_) => true,
        });
    assert!(full, "could not fill the accept queue of {addr}");
    let o = Outpost::start(
        io,
        &route("*", "/", &[addr.to_string()], "health_check = { interval_ms = 0 }"),
    );
    let (body, status, took) = get_timed(&o.url("/"));
    assert_eq!(status, 502, "{body}");
    assert!(took < Duration::from_secs(1), "502 took {took:?}");
    assert!(took >= Duration::from_millis(700), "not a connect timeout ({took:?})");
}

/// One request by curl: its body, its status and the edge's time ([`status_and_edge_time`]).
fn get_timed(url: &str) -> (String, u16, Duration) {
    let text = stdout(&curl(&["-w", STATUS_AND_TIME, url]));
    let (body, status, took) = status_and_edge_time(&text);
    (body.to_owned(), status, took)
}

/// Waits until the log has `count` lines containing `needle`.
fn wait_for_log(o: &Outpost, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while o.log().matches(needle).count() < count {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", o.log());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Origin connections that went bad while idle in the pool: one the origin closed without
/// saying so (as an origin's idle timeout does), and one on which it sent stray bytes after a
/// response without a body (a body after HEAD, here shaped as a whole response). A request
/// never fails for the first, and never gets the second's bytes as its response. Each client
/// sends its requests over one connection, a quarter of a second apart (`--rate`), so that they
/// reach the same worker and its pool, after the origin's close or stray bytes arrived.
fn pooled_connections_the_origin_closed_or_soiled_are_not_used(io: &str) {
    let (addr, connections) = fickle_origin();
    let o = Outpost::start(io, &route("*", "/", &[addr], ""));
    let (close, other) = (o.url("/close"), o.url("/other"));
    // Closed while pooled: a GET goes again on a fresh connection; a POST with a body, which
    // cannot go twice, is sent on a connection checked first.
    // `--next` starts a new set of options (the connection stays): each repeats them.
    let each = ["--next", "-sk", "--http1.1", "--rate", "4/s", "-w", " %{http_code}\n"];
    let mut args = each[1..].to_vec();
    args.extend([close.as_str(), close.as_str()]);
    args.extend(each);
    args.extend(["-d", "payload", close.as_str()]);
    args.extend(each);
    args.push(close.as_str());
    let out = curl(&args);
    let text = stdout(&out);
    assert_eq!(text.matches(" 200\n").count(), 4, "{text}");
    assert_eq!(text.matches("answer ").count(), 4, "{text}");
    assert!(text.contains("body 7"), "the POST's body did not arrive: {text}");
    assert!(connections.load(Ordering::Relaxed) >= 4, "each request needed its own connection");
    // Stray bytes after a HEAD response: the next request's answer comes from the origin, on
    // another connection, never from those bytes.
    let head = o.url("/stray");
    let mut args = each[1..].to_vec();
    args.extend(["-I", head.as_str()]);
    args.extend(each);
    args.extend([other.as_str(), other.as_str()]);
    let out = curl(&args);
    let text = stdout(&out);
    assert!(!text.contains("stray"), "a stray response reached the client: {text}");
    assert_eq!(text.matches("answer ").count(), 2, "{text}");
}

/// An origin on a free loopback port (its address, and how many connections it accepted) that
/// answers `answer <connection> body <n>` to any request (n: the body's length), except that it
/// closes the connection 30 ms after answering `/close`, and 30 ms after answering a HEAD to
/// `/stray` sends, unasked, a whole response whose body is `stray`.
fn fickle_origin() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_ascii_lowercase());
                    }
                    let length = head
                        .iter()
                        .find_map(|h| h.strip_prefix("content-length: "))
                        .map_or(0, |v| v.parse::<usize>().unwrap());
                    let mut body = vec![0; length];
                    r.read_exact(&mut body).unwrap();
                    let answer = format!("answer {n} body {length}\n");
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                        answer.len(),
                        if head[0].starts_with("head ") { "" } else { &answer }
                    );
                    if head[0].starts_with("get /close") || head[0].starts_with("post /close") {
                        thread::sleep(Duration::from_millis(30));
                        return;
                    }
                    if head[0].starts_with("head /stray") {
                        thread::sleep(Duration::from_millis(30));
                        let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstray\n");
                    }
                }
            });
        }
    });
    (addr, connections)
}
