//! Access over HTTP/2 with a client that is not a browser: Debian's curl with `--http2` (ALPN
//! h2 through nghttp2). Without a token an API call gets the 401 JSON and a navigation the 302
//! to the login page; with the token cookie a login left in a browser's jar, the origin sees
//! the identity header the edge set, and only that one. Every answer must have come over h2.

mod support;

use std::{process::Command, time::Duration};

use support::*;

/// One response as curl saw it.
struct Curl {
    status: u16,
    /// `%{http_version}`: `2` over HTTP/2.
    version: String,
    /// Header lines of the final response, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The echo origin's line for request header `name` (it echoes `header NAME: value`).
    fn echoed(&self, name: &str) -> Vec<String> {
        let prefix = format!("header {}:", name.to_ascii_lowercase());
        self.body
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
            .collect()
    }
}

/// `curl --http2 GET url` with the test host resolved to the edge and `headers` added.
fn curl_h2(s: &Setup, url: &str, headers: &[&str]) -> Curl {
    let dir = &s.idp.dir.0;
    let (head_file, body_file) = (dir.join("curl-head"), dir.join("curl-body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--http2", "--max-time", "10"])
        .arg("--resolve")
        .arg(format!("{WIKI}:{}:127.0.0.1", s.port))
        .arg("-D")
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code} %{http_version}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = outpost_testkit::run_client(&mut cmd, Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl --http2 {url} {headers:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, version) =
        stdout.split_once(' ').unwrap_or_else(|| panic!("curl -w printed {stdout:?}"));
    let head = std::fs::read_to_string(&head_file).unwrap();
    let headers = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curl {
        status: status.parse().unwrap_or_else(|e| panic!("{stdout:?}: {e}")),
        version: version.to_owned(),
        headers,
        body: std::fs::read_to_string(&body_file).unwrap(),
    }
}

#[test]
fn curl_over_h2_is_refused_without_a_token_and_let_through_with_one() {
    let v = Command::new("curl").arg("-V").output().expect("curl is not installed");
    let features = String::from_utf8_lossy(&v.stdout);
    assert!(features.contains("HTTP2"), "this curl has no HTTP/2 (nghttp2): {features}");
    let s = Setup::start("");
    let url = s.url(WIKI, "/h2/data?q=1");
    let h2_before = s.edge.metric("outpost_requests_total{proto=\"h2\"}");

    // No token, an API call: 401 with the JSON that names the login page.
    let r = curl_h2(&s, &url, &["Accept: application/json"]);
    assert_eq!((r.status, r.version.as_str()), (401, "2"), "{}", r.body);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    assert_eq!(v["error"], "authentication required", "{v}");
    assert!(v["login"].as_str().unwrap().contains("/login?app=wiki.example.test"), "{v}");

    // No token, a navigation: 302 to the login page on the auth host.
    let r = curl_h2(&s, &url, &["Accept: text/html"]);
    assert_eq!((r.status, r.version.as_str()), (302, "2"), "{}", r.body);
    let location = r.header("location").unwrap_or_else(|| panic!("302 without Location: {r:?}"));
    assert!(location.starts_with(&s.url(AUTH, "/login?app=wiki.example.test")), "{location}");

    // A token the edge did not sign: refused the same way.
    let r = curl_h2(&s, &url, &["Accept: application/json", "Cookie: __Host-outpost-token=ey.x.y"]);
    assert_eq!((r.status, r.version.as_str()), (401, "2"), "{}", r.body);

    // A real token, from a login in a browser's jar.
    let b = s.browser();
    let hops = b.login(&s.url(WIKI, "/h2/page"), "alice@example.test");
    assert_eq!(hops.last().unwrap().status, 200, "{:?}", hops.last());
    let token = b
        .cookie(&s.url(WIKI, "/"), "__Host-outpost-token")
        .unwrap_or_else(|| panic!("no token after the login: {:?}", b.all_set_cookies()));
    let cookie = format!("Cookie: __Host-outpost-token={token}");
    // A forged identity header beside it never reaches the origin.
    let r = curl_h2(
        &s,
        &url,
        &[
            "Accept: application/json",
            &cookie,
            "Outpost-Access-Authenticated-User-Email: mallory@evil.test",
        ],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.body);
    assert_eq!(
        r.echoed("Outpost-Access-Authenticated-User-Email"),
        ["alice@example.test"],
        "{}",
        r.body
    );
    assert!(r.body.contains("\ntarget /h2/data?q=1\n"), "the origin got the target: {}", r.body);
    let assertion = r.echoed("Outpost-Access-Jwt-Assertion");
    assert!(assertion.len() == 1 && assertion[0].starts_with("ey"), "{}", r.body);

    // The edge counted them as h2 requests: at least the four above.
    s.edge.wait_metric("outpost_requests_total{proto=\"h2\"}", "4 more", |n| n >= h2_before + 4);
    assert!(s.edge.metric("outpost_tls_alpn_total{alpn=\"h2\"}") >= 4, "{}", s.edge.metrics());
}

impl std::fmt::Debug for Curl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} HTTP/{} {:?}\n{}", self.status, self.version, self.headers, self.body)
    }
}
