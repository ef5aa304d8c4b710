//! Access cannot be bypassed by the shape of a request. Raw requests (exact bytes over TLS)
//! to an edge whose protected apps share their origin with a public host and a `*` route, as
//! one backend serving several names does: whatever the shape, the origin never sees a
//! protected host (in `Host` or `X-Forwarded-Host`) without a valid login, and never an
//! identity header the edge did not put there.

mod support;

use std::time::Duration;

use outpost_testkit::tls::{exchange, status_of};
use outpost_testkit::{free_port, Origin, Outpost};
use support::*;

const PUBLIC: &str = "public.example.test";
const TOKEN: &str = "__Host-outpost-token";

/// The edge of [`Setup`], plus a public host and a catch-all route to the same origin.
fn setup() -> Setup {
    let port = free_port();
    let idp = Idp::start(&[callback(port)]);
    let origin = Origin::start("app");
    let a = origin.addr();
    let config = format!(
        "{}\n[[routes]]\nhost = \"{PUBLIC}\"\npath = \"/\"\nhandler = \"origin\"\n\
         [routes.origin]\nservers = [\"{a}\"]\nhealth_check = {{ interval_ms = 0 }}\n\
         [[routes]]\nhost = \"*\"\npath = \"/\"\nhandler = \"origin\"\n\
         [routes.origin]\nservers = [\"{a}\"]\nhealth_check = {{ interval_ms = 0 }}\n",
        edge_config(port, &idp, &origin, "")
    );
    let edge = Outpost::start_at(port, "uring", &config, &[], &["--no-xdp"]);
    Setup { idp, origin, edge, port }
}

/// What the origin saw of one request, from its echo.
struct Seen {
    status: u16,
    text: String,
}

impl Seen {
    fn reached_origin(&self) -> bool {
        self.status == 200 && self.text.contains("\norigin app\n")
    }

    fn echoed(&self, name: &str) -> Vec<String> {
        let prefix = format!("header {}:", name.to_ascii_lowercase());
        self.text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_ascii_lowercase())
            .collect()
    }
}

fn send(s: &Setup, sni: Option<&str>, head: &str, cookie: Option<&str>) -> Seen {
    let cookie = cookie.map_or(String::new(), |t| format!("Cookie: {TOKEN}={t}\r\n"));
    let request = format!("{head}{cookie}Accept: text/html\r\nConnection: close\r\n\r\n");
    let response = exchange(s.port, sni, request.as_bytes(), Duration::from_secs(5));
    Seen { status: status_of(&response), text: String::from_utf8_lossy(&response).into_owned() }
}

/// Request shapes an attacker writes to reach the wiki (protected) without a login.
fn shapes() -> Vec<(&'static str, Option<&'static str>, String)> {
    vec![
        ("plain", Some(WIKI), format!("GET /x HTTP/1.1\r\nHost: {WIKI}\r\n")),
        (
            "absolute-form naming the public host",
            Some(WIKI),
            format!("GET https://{PUBLIC}/x HTTP/1.1\r\nHost: {WIKI}\r\n"),
        ),
        (
            "absolute-form naming the wiki",
            Some(PUBLIC),
            format!("GET https://{WIKI}/x HTTP/1.1\r\nHost: {PUBLIC}\r\n"),
        ),
        ("trailing dot", None, format!("GET /x HTTP/1.1\r\nHost: {WIKI}.\r\n")),
        ("upper case", None, "GET /x HTTP/1.1\r\nHost: WIKI.Example.TEST\r\n".into()),
        ("port", None, format!("GET /x HTTP/1.1\r\nHost: {WIKI}:443\r\n")),
        ("trailing dot and port", None, format!("GET /x HTTP/1.1\r\nHost: {WIKI}.:8443\r\n")),
        ("percent-encoded host", None, "GET /x HTTP/1.1\r\nHost: wiki.example.%74est\r\n".into()),
        ("empty Host", Some(WIKI), "GET /x HTTP/1.1\r\nHost:\r\n".into()),
        ("HTTP/1.0 without Host", Some(WIKI), "GET /x HTTP/1.0\r\n".into()),
        ("two Host fields", None, format!("GET /x HTTP/1.1\r\nHost: {PUBLIC}\r\nHost: {WIKI}\r\n")),
        ("CONNECT", None, format!("CONNECT {WIKI}:443 HTTP/1.1\r\nHost: {PUBLIC}\r\n")),
        (
            "forwarding fields naming the wiki",
            None,
            format!(
                "GET /x HTTP/1.1\r\nHost: {PUBLIC}\r\nForwarded: host={WIKI};for=1.2.3.4\r\n\
                 X-Forwarded-Host: {WIKI}\r\nX_Forwarded_Host: {WIKI}\r\n"
            ),
        ),
        (
            "a dot segment out of the bypass path",
            None,
            format!("GET /healthz/../secret HTTP/1.1\r\nHost: {WIKI}\r\n"),
        ),
        (
            "an encoded slash out of the bypass path",
            None,
            format!("GET /healthz%2F..%2Fsecret HTTP/1.1\r\nHost: {WIKI}\r\n"),
        ),
        (
            "identity header look-alikes",
            None,
            format!(
                "GET /x HTTP/1.1\r\nHost: {PUBLIC}\r\n\
                 Outpost_Access_Authenticated_User_Email: mallory@example.test\r\n\
                 outpost-access-authenticated-user-email: mallory@example.test\r\n"
            ),
        ),
    ]
}

#[test]
fn no_request_shape_reaches_a_protected_app_without_a_login() {
    let s = setup();
    let b = s.browser();
    b.login(&s.url(WIKI, "/"), "bob@example.test");
    let token = b.cookie(&s.url(WIKI, "/"), TOKEN).expect("a token after the login");
    let mut failures = Vec::new();
    for (what, sni, head) in shapes() {
        for cookie in [None, Some(token.as_str())] {
            let seen = send(&s, sni, &head, cookie);
            let hosts: Vec<String> =
                [seen.echoed("host"), seen.echoed("x-forwarded-host")].concat();
            let to_wiki = hosts.iter().any(|h| {
                h.trim_end_matches(|c: char| c == '.' || c.is_ascii_digit() || c == ':') == WIKI
            });
            let identity = seen.echoed("outpost-access-authenticated-user-email");
            let with = if cookie.is_some() { "with a token" } else { "without a token" };
            if seen.reached_origin() && to_wiki && cookie.is_none() {
                failures
                    .push(format!("{what} ({with}): reached the wiki's origin:\n{}", seen.text));
            }
            if seen.reached_origin() && !to_wiki && !identity.is_empty() {
                failures.push(format!("{what} ({with}): identity {identity:?} for another host"));
            }
            if identity.iter().any(|e| e.contains("mallory")) {
                failures.push(format!("{what} ({with}): the client's identity header got through"));
            }
            if seen.reached_origin() && to_wiki && identity != ["bob@example.test"] {
                failures
                    .push(format!("{what} ({with}): the wiki without its identity: {identity:?}"));
            }
            if !seen.reached_origin() && ![302, 400, 401, 405].contains(&seen.status) {
                failures.push(format!("{what} ({with}): status {}:\n{}", seen.status, seen.text));
            }
        }
    }
    assert!(failures.is_empty(), "{}\n\nedge log:\n{}", failures.join("\n\n"), s.edge.log());

    // The same token on the same shapes that name the wiki does reach it: the shapes above
    // were refused for being unauthenticated, not for being odd.
    for head in [
        format!("GET /x HTTP/1.1\r\nHost: {WIKI}.\r\n"),
        format!("GET https://{WIKI}/x HTTP/1.1\r\nHost: {PUBLIC}\r\n"),
        "GET /x HTTP/1.1\r\nHost: WIKI.Example.TEST\r\n".into(),
    ] {
        let seen = send(&s, None, &head, Some(&token));
        assert!(seen.reached_origin(), "{head}: {}", seen.text);
        assert_eq!(seen.echoed("host"), [WIKI], "{}", seen.text);
        assert_eq!(seen.echoed("outpost-access-authenticated-user-email"), ["bob@example.test"]);
    }
}
