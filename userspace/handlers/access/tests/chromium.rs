//! The login flow in real Chromium (Debian's `chromium`, headless, `--no-sandbox`) driven by
//! playwright-core, once with JavaScript on and once with it off: the edge's pages are plain
//! forms and links. Chromium reaches the edge over HTTP/2 (ALPN h2): every response of the edge
//! in the flow, redirects included, must have come over h2 as Chromium's network stack reports
//! it, and with JavaScript on so must the page's navigation and resource entries
//! (`nextHopProtocol`); the edge counts the requests as `proto="h2"`. Screenshots of the login page, the provider's page and the app page are
//! kept under the target directory (`target/tmp/access-chromium/`) as artifacts.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::*;

fn chromium() -> &'static str {
    let path = "/usr/bin/chromium";
    assert!(
        Path::new(path).is_file(),
        "chromium is not installed (apt-get install chromium); this test drives it"
    );
    path
}

fn run_browser(s: &Setup, javascript: bool, out: &Path, user: &str) -> serde_json::Value {
    let cfg = serde_json::json!({
        "chromium": chromium(),
        "app_url": s.url(WIKI, "/chromium/page"),
        "rules": "MAP *.example.test 127.0.0.1, MAP fonts.googleapis.com ~NOTFOUND",
        "out_dir": out,
        "user": user,
        "javascript": javascript,
    });
    let cfg_path = s.idp.dir.0.join(format!("browser-{javascript}.json"));
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(idp_dir().join("browser.mjs")).arg(&cfg_path).current_dir(idp_dir());
    let o = outpost_testkit::run_client(&mut cmd, Duration::from_secs(90));
    assert!(
        o.status.success(),
        "chromium run failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_owned();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn artifacts(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("access-chromium").join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Checks one run; returns how many responses of the edge Chromium saw.
fn check(s: &Setup, r: &serde_json::Value, out: &Path, javascript: bool) -> u64 {
    assert!(
        r["login_url"].as_str().unwrap().starts_with(&s.url(AUTH, "/login?app=wiki.example.test")),
        "{r}"
    );
    assert_eq!(r["login_title"], "Sign in to wiki.example.test");
    assert_eq!(r["final_url"], s.url(WIKI, "/chromium/page"));
    assert_eq!(r["final_status"], 200);
    let body = r["body"].as_str().unwrap().to_ascii_lowercase();
    assert!(body.contains("outpost-access-authenticated-user-email: alice@example.test"), "{body}");
    assert!(body.contains("outpost-access-jwt-assertion: ey"), "{body}");
    // The browser kept the cookies with their flags: host-only, Secure, HttpOnly, Lax.
    let cookies = r["cookies"].as_array().unwrap();
    for name in ["__Host-outpost-token", "__Host-outpost-session"] {
        let c = cookies
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {cookies:?}"));
        assert_eq!(c["secure"], true, "{c}");
        assert_eq!(c["httpOnly"], true, "{c}");
        assert_eq!(c["sameSite"], "Lax", "{c}");
        assert_eq!(c["path"], "/", "{c}");
        assert!(!c["domain"].as_str().unwrap().starts_with('.'), "host-only: {c}");
    }
    assert!(
        !cookies.iter().any(|c| c["name"].as_str().unwrap().starts_with("__Host-outpost-login-")),
        "{cookies:?}"
    );
    for shot in ["login-page.png", "provider-page.png", "app-page.png"] {
        let p = out.join(shot);
        let png = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "{} is not a screenshot",
            p.display()
        );
    }
    check_h2(s, r, javascript)
}

/// Every response of the edge over h2; the flow's hops among them. How many there were.
fn check_h2(s: &Setup, r: &serde_json::Value, javascript: bool) -> u64 {
    let (auth, wiki) = (s.url(AUTH, "/"), s.url(WIKI, "/"));
    let responses = r["responses"].as_array().unwrap();
    let from_edge: Vec<&serde_json::Value> = responses
        .iter()
        .filter(|x| {
            let url = x["url"].as_str().unwrap();
            url.starts_with(&auth) || url.starts_with(&wiki)
        })
        .collect();
    for x in &from_edge {
        assert_eq!(
            x["protocol"], "h2",
            "a response of the edge not over h2: {x}
{responses:#?}"
        );
    }
    let hop = |origin: &str, path: &str, status: std::ops::Range<u64>| {
        from_edge.iter().any(|x| {
            status.contains(&x["status"].as_u64().unwrap())
                && x["url"].as_str().unwrap().starts_with(&format!("{origin}{path}"))
        })
    };
    for (origin, path, status, what) in [
        (&wiki, "chromium/page", 302..303, "the app's redirect to the login page"),
        (&auth, "login?app=", 200..201, "the login page"),
        (&auth, "login", 302..303, "the login form's redirect to the provider"),
        (&auth, "callback?", 300..400, "the callback's redirect"),
        (&wiki, ".outpost/authorized?", 300..400, "the app host's redirect with the cookie"),
        (&wiki, "chromium/page", 200..201, "the app page"),
    ] {
        assert!(
            hop(origin, path, status.clone()),
            "no {what} ({status:?} {origin}{path}):\n{responses:#?}"
        );
    }
    if javascript {
        assert_eq!(r["login_nav_protocol"], "h2", "{r}");
        assert_eq!(r["app_nav_protocol"], "h2", "{r}");
        assert_eq!(r["fetch_status"], 200, "the page's fetch with the cookie: {r}");
        let resources = r["app_resources"].as_array().unwrap();
        assert!(
            resources.iter().any(|e| e["name"] == s.url(WIKI, "/chromium/api")),
            "no resource entry for the fetch: {resources:?}"
        );
        for e in resources.iter().filter(|e| e["name"].as_str().unwrap().starts_with(&wiki)) {
            assert_eq!(e["nextHopProtocol"], "h2", "{e}");
        }
    } else {
        assert!(r["login_nav_protocol"].is_null() && r["app_resources"].is_null(), "{r}");
    }
    from_edge.len() as u64
}

#[test]
fn login_flow_in_chromium_with_and_without_javascript() {
    chromium();
    let s = Setup::start("");
    let (h2_before, h11_before) = (
        s.edge.metric("outpost_requests_total{proto=\"h2\"}"),
        s.edge.metric("outpost_requests_total{proto=\"http/1.1\"}"),
    );
    let out = artifacts("javascript-on");
    let r = run_browser(&s, true, &out, "alice@example.test");
    let mut seen = check(&s, &r, &out, true);
    let out = artifacts("javascript-off");
    let r = run_browser(&s, false, &out, "alice@example.test");
    seen += check(&s, &r, &out, false);
    // The edge agrees: every request Chromium made was an h2 stream.
    let counted = |n| n >= h2_before + seen;
    let h2 =
        s.edge.wait_metric("outpost_requests_total{proto=\"h2\"}", "one per response", counted)
            - h2_before;
    let h11 = s.edge.metric("outpost_requests_total{proto=\"http/1.1\"}") - h11_before;
    assert!(h2 >= seen, "{seen} responses seen, {h2} h2 requests counted:\n{}", s.edge.metrics());
    assert_eq!(h11, 0, "HTTP/1.1 requests during the runs:\n{}", s.edge.metrics());
    eprintln!("screenshots: {}", out.parent().unwrap().display());
    let logins = s.audit("access.login", 2);
    assert_eq!(logins.iter().filter(|e| e["outcome"] == "success").count(), 2, "{logins:#?}");
}
