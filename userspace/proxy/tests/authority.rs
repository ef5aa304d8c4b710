//! One authority per request, end to end: request shapes a client can write, through the real
//! `outpost run` to echo origins, one per route. For every shape: the status, the route the
//! edge chose (the origin that answered), and the `Host` and `X-Forwarded-Host` that origin
//! received, which must both be the authority the route was chosen by.

use std::time::Duration;

use outpost_testkit::{
    tls::{exchange, status_of},
    *,
};

/// What a request shape must give.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    /// Answered by the origin of route `origin`, which saw `Host` and `X-Forwarded-Host`
    /// equal to `authority` and the origin-form target `target`.
    Reached { origin: &'static str, authority: &'static str, target: &'static str },
    /// Refused by the edge with this status; no origin saw it.
    Refused(u16),
}

use Want::*;

const fn to(origin: &'static str, authority: &'static str, target: &'static str) -> Want {
    Reached { origin, authority, target }
}

/// (what, request bytes, TLS server name, expected)
const SHAPES: &[(&str, &str, Option<&str>, Want)] = &[
    (
        "origin-form",
        "GET /x HTTP/1.1\r\nHost: app.example.test\r\n",
        Some("app.example.test"),
        to("app", "app.example.test", "/x"),
    ),
    (
        "absolute-form naming the public host, Host naming the app",
        "GET https://public.example.test/x HTTP/1.1\r\nHost: app.example.test\r\n",
        Some("app.example.test"),
        to("public", "public.example.test", "/x"),
    ),
    (
        "absolute-form naming the app, Host naming the public host",
        "GET http://app.example.test/y?z=1 HTTP/1.1\r\nHost: public.example.test\r\n",
        Some("public.example.test"),
        to("app", "app.example.test", "/y?z=1"),
    ),
    (
        "trailing dot",
        "GET /x HTTP/1.1\r\nHost: app.example.test.\r\n",
        None,
        to("app", "app.example.test", "/x"),
    ),
    (
        "upper case",
        "GET /x HTTP/1.1\r\nHost: APP.Example.TEST\r\n",
        None,
        to("app", "app.example.test", "/x"),
    ),
    (
        "trailing dot in an absolute-form target",
        "GET https://APP.example.test./x HTTP/1.1\r\nHost: public.example.test\r\n",
        None,
        to("app", "app.example.test", "/x"),
    ),
    (
        "port 443",
        "GET /x HTTP/1.1\r\nHost: app.example.test:443\r\n",
        None,
        to("app", "app.example.test:443", "/x"),
    ),
    (
        "another port, with a trailing dot",
        "GET /x HTTP/1.1\r\nHost: app.example.test.:8443\r\n",
        None,
        to("app", "app.example.test:8443", "/x"),
    ),
    (
        "empty port",
        "GET /x HTTP/1.1\r\nHost: app.example.test:\r\n",
        None,
        to("app", "app.example.test", "/x"),
    ),
    (
        "unknown host goes to the catch-all",
        "GET /x HTTP/1.1\r\nHost: other.example.test\r\n",
        None,
        to("star", "other.example.test", "/x"),
    ),
    (
        "two Host fields, app first",
        "GET /x HTTP/1.1\r\nHost: app.example.test\r\nHost: public.example.test\r\n",
        None,
        Refused(400),
    ),
    (
        "two Host fields, app second",
        "GET /x HTTP/1.1\r\nHost: public.example.test\r\nHost: app.example.test\r\n",
        None,
        Refused(400),
    ),
    ("no Host on HTTP/1.1", "GET /x HTTP/1.1\r\n", Some("app.example.test"), Refused(400)),
    (
        "empty Host on HTTP/1.1",
        "GET /x HTTP/1.1\r\nHost:\r\n",
        Some("app.example.test"),
        Refused(400),
    ),
    (
        "HTTP/1.0 without Host takes the server name",
        "GET /x HTTP/1.0\r\n",
        Some("app.example.test"),
        to("app", "app.example.test", "/x"),
    ),
    ("HTTP/1.0 without Host or server name", "GET /x HTTP/1.0\r\n", None, Refused(400)),
    ("userinfo in Host", "GET /x HTTP/1.1\r\nHost: user@app.example.test\r\n", None, Refused(400)),
    (
        "userinfo in the target",
        "GET https://user@public.example.test/x HTTP/1.1\r\nHost: public.example.test\r\n",
        None,
        Refused(400),
    ),
    (
        "percent-encoding in Host",
        "GET /x HTTP/1.1\r\nHost: app.example.%74est\r\n",
        None,
        Refused(400),
    ),
    ("an empty label", "GET /x HTTP/1.1\r\nHost: app..example.test\r\n", None, Refused(400)),
    (
        "a scheme other than http(s)",
        "GET ftp://app.example.test/x HTTP/1.1\r\nHost: app.example.test\r\n",
        None,
        Refused(400),
    ),
    (
        "CONNECT naming the app",
        "CONNECT app.example.test:443 HTTP/1.1\r\nHost: other.example.test\r\n",
        None,
        Refused(405),
    ),
    (
        "asterisk-form outside OPTIONS",
        "GET * HTTP/1.1\r\nHost: app.example.test\r\n",
        None,
        Refused(400),
    ),
    (
        "OPTIONS *",
        "OPTIONS * HTTP/1.1\r\nHost: App.example.test.\r\n",
        None,
        to("app", "app.example.test", "*"),
    ),
    (
        "dot segments",
        "GET /public/../admin HTTP/1.1\r\nHost: app.example.test\r\n",
        None,
        to("app", "app.example.test", "/admin"),
    ),
    (
        "encoded unreserved characters and a double slash",
        "GET //%61dmin/%2e/x HTTP/1.1\r\nHost: app.example.test\r\n",
        None,
        to("app", "app.example.test", "/admin/x"),
    ),
    (
        "an encoded slash",
        "GET /x%2F..%2Fadmin HTTP/1.1\r\nHost: app.example.test\r\n",
        None,
        Refused(400),
    ),
];

#[test]
fn request_shapes_have_one_authority() {
    let (app, public, star) =
        (Origin::start("app"), Origin::start("public"), Origin::start("star"));
    let routes = [
        route("app.example.test", "/", &[app.addr()], ""),
        route("public.example.test", "/", &[public.addr()], ""),
        route("*", "/", &[star.addr()], ""),
    ]
    .concat();
    let o = Outpost::start("uring", &routes);
    let mut failures = Vec::new();
    for (what, head, sni, want) in SHAPES {
        let before = app.requests.load(std::sync::atomic::Ordering::Relaxed)
            + public.requests.load(std::sync::atomic::Ordering::Relaxed)
            + star.requests.load(std::sync::atomic::Ordering::Relaxed);
        let request = format!("{head}Connection: close\r\n\r\n");
        let response = exchange(o.https, *sni, request.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&response).into_owned();
        let got = match status_of(&response) {
            200 => {
                let line = |prefix: &str| {
                    text.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or("").to_owned()
                };
                let hosts: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("header "))
                    .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
                    .collect();
                let host = line("header Host: ");
                let xfh = line("header X-Forwarded-Host: ");
                if hosts.len() != 1 || host != xfh {
                    failures
                        .push(format!("{what}: Host fields {hosts:?}, X-Forwarded-Host {xfh:?}"));
                }
                let origin = match line("origin ").as_str() {
                    "app" => "app",
                    "public" => "public",
                    "star" => "star",
                    _ => "?",
                };
                let (authority, target) = (leak(host), leak(line("target ")));
                Reached { origin, authority, target }
            }
            status => {
                let after = app.requests.load(std::sync::atomic::Ordering::Relaxed)
                    + public.requests.load(std::sync::atomic::Ordering::Relaxed)
                    + star.requests.load(std::sync::atomic::Ordering::Relaxed);
                if after != before {
                    failures.push(format!("{what}: refused with {status}, yet an origin saw it"));
                }
                if status != 0 && !text.contains("{\"error\": ") {
                    failures.push(format!("{what}: {status} without a JSON error:\n{text}"));
                }
                Refused(status)
            }
        };
        if got != *want {
            failures.push(format!("{what}: want {want:?}, got {got:?}\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}\n\nedge log:\n{}", failures.join("\n"), o.log());
    o.expect_metric("outpost_requests_refused_total{status=\"405\"}", 1);
}

/// Client fields the edge owns never reach an origin, whatever their spelling; with
/// `underscores_in_headers` off (the default) no field with `_` does, and each is counted.
#[test]
fn client_copies_of_edge_fields_are_dropped() {
    let origin = Origin::start("o");
    let o = Outpost::start("uring", &route("*", "/", &[origin.addr()], ""));
    let request = "GET /x HTTP/1.1\r\nHost: app.example.test\r\n\
                   X-Forwarded-For: 6.6.6.6\r\nX_Forwarded_Host: evil.example.test\r\n\
                   Forwarded: host=evil.example.test;for=6.6.6.6\r\n\
                   X-Forwarded-Proto: http\r\nx-outpost-tls_version: TLSv1.0\r\n\
                   X-Custom_Name: 1\r\nX-Kept: yes\r\nX-Real-IP: 6.6.6.6\r\n\
                   X-Original-URL: /evil\r\nConnection: close\r\n\r\n";
    let response = exchange(o.https, None, request.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&response);
    assert_eq!(status_of(&response), 200, "{text}");
    for gone in ["6.6.6.6", "evil", "TLSv1.0", "X-Custom_Name", "Forwarded: host"] {
        assert!(!text.contains(gone), "{gone:?} reached the origin:\n{text}");
    }
    for kept in [
        "header X-Kept: yes",
        "header X-Forwarded-For: 127.0.0.1",
        "header X-Forwarded-Proto: https",
        "header X-Forwarded-Host: app.example.test",
    ] {
        assert!(text.contains(kept), "no {kept:?} at the origin:\n{text}");
    }
    let dropped =
        |why: &str| o.metric(&format!("outpost_request_fields_dropped_total{{reason=\"{why}\"}}"));
    // X_Forwarded_Host is a forwarding field in any spelling; x-outpost-tls_version a look-alike
    // of one the edge asserts.
    assert_eq!((dropped("forwarding"), dropped("asserted"), dropped("underscore")), (6, 1, 1));
}

/// A trusted proxy's forwarding fields are kept, and the client's address is appended.
#[test]
fn trusted_proxies_keep_their_forwarding_fields() {
    let origin = Origin::start("o");
    let extra = format!(
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n{}",
        route("*", "/", &[origin.addr()], "")
    );
    let o = Outpost::start("uring", &extra);
    let request = "GET /x HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 198.18.0.7\r\n\
                   Connection: close\r\n\r\n";
    let response = exchange(o.https, None, request.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("header X-Forwarded-For: 198.18.0.7, 127.0.0.1"), "{text}");
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
