//! The admin listener obeys only its operator: without the token of the data directory it
//! answers 401 and changes nothing; a mutating request a web page could make (an `Origin`, a
//! form body type) is refused even with the token; real Chromium on another site, submitting
//! forms and a fetch at the listener, releases nothing. The reservation release is the
//! mutating endpoint under test: its effect (a name freed) is easy to see.

mod support;

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use outpost_testkit::{curl, http_get, http_request, run_client, stdout};
use support::*;

const VICTIM: &str = "victim";

/// An edge with `[reserve]` holding one reservation, `victim`.
fn edge_with_a_reservation(tag: &str) -> (Outpost, Smtp, TempDir) {
    let smtp = Smtp::start();
    let dir = TempDir::new(tag);
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let r = runtime().block_on(Client::new(edge.https).reserve(VICTIM, "victim@example.com"));
    assert_eq!(r.unwrap().status, 201);
    assert!(reserved(&edge), "the reservation is there to begin with");
    (edge, smtp, dir)
}

fn reserved(edge: &Outpost) -> bool {
    match edge.admin_get(&format!("/reservations/show?name={VICTIM}")) {
        Some((200, body)) => body.contains("victim@example.com"),
        Some((404, _)) => false,
        other => panic!("/reservations/show answered {other:?}"),
    }
}

/// `curl -s -o /dev/null -w %{http_code} ARGS URL` on the admin listener: the status.
fn curl_status(edge: &Outpost, path: &str, args: &[&str]) -> u16 {
    let url = format!("http://127.0.0.1:{}{path}", edge.admin);
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend(args);
    all.push(&url);
    let out = curl(&all);
    stdout(&out).trim().parse().unwrap_or_else(|e| panic!("curl {all:?}: {e}: {out:?}"))
}

#[test]
fn without_the_token_nothing_but_health_and_metrics_and_nothing_changes() {
    let (edge, _smtp, _dir) = edge_with_a_reservation("admin-token");
    let release = format!("/reservations/release?name={VICTIM}");

    // The token: created at first start in the data directory, 0600, 32 random bytes as hex.
    let file = edge.admin_token_file();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} mode {mode:o}", file.display());
    let token = edge.admin_token();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "not 32 bytes");

    // Open: the load balancer's health check and Prometheus.
    assert_eq!(http_get(edge.admin, "/healthz").map(|a| a.0), Some(200));
    assert_eq!(http_get(edge.admin, "/metrics").map(|a| a.0), Some(200));

    // No token, or a wrong one: 401 with a JSON error and `WWW-Authenticate: Bearer`.
    let wrong = format!("Bearer {}", "0".repeat(64));
    let truncated = format!("Bearer {}", &token[..63]);
    for (path, auth) in [
        ("/audit", None),
        ("/audit", Some(wrong.as_str())),
        ("/audit", Some(truncated.as_str())),
        ("/reservations/export", None),
        ("/nothing-here", None),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let a = http_request(edge.admin, "GET", path, &headers, "").expect("admin answers");
        assert_eq!(a.status, 401, "GET {path} with {auth:?}: {a:?}");
        assert!(a.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{a:?}");
        assert!(a.body.contains("\"error\""), "{a:?}");
        assert!(!a.body.contains("victim@example.com"), "{a:?}");
    }
    assert_eq!(curl_status(&edge, "/audit", &[]), 401);
    assert_eq!(curl_status(&edge, &release, &["-X", "POST"]), 401);
    let wrong_header = format!("Authorization: {wrong}");
    assert_eq!(curl_status(&edge, &release, &["-X", "POST", "-H", &wrong_header]), 401);
    assert!(reserved(&edge), "released without the token");

    // With the token, but as a web page would send it: 403, nothing released.
    let auth = format!("Authorization: Bearer {token}");
    for extra in [
        ["-H", "Origin: http://attacker.test"],
        ["-H", "Origin: null"],
        ["-H", "Content-Type: application/x-www-form-urlencoded"],
        ["-H", "Content-Type: multipart/form-data; boundary=x"],
        ["-H", "Content-Type: text/plain;charset=UTF-8"],
    ] {
        let mut args = vec!["-X", "POST", "-H", &auth, "--data", "name=victim"];
        args.extend(extra);
        // curl's --data sets a form type itself; an explicit -H replaces it.
        if extra[1].starts_with("Origin") {
            args.extend(["-H", "Content-Type: application/json"]);
        }
        assert_eq!(curl_status(&edge, &release, &args), 403, "{args:?}");
        assert!(reserved(&edge), "released by {args:?}");
    }
    // A GET with the token reads, Origin or not (a browser cannot attach the token).
    let (status, show) = edge.admin_get(&format!("/reservations/show?name={VICTIM}")).unwrap();
    assert_eq!(status, 200, "{show}");
    assert_eq!(curl_status(&edge, "/audit", &["-H", &auth, "-H", "Origin: null"]), 200);

    // The operator, as the docs say: curl with the token.
    assert_eq!(curl_status(&edge, &release, &["-X", "POST", "-H", &auth]), 200);
    assert!(!reserved(&edge), "the operator's release did not free the name");

    // Refusals are counted; the token is in no log and no answer.
    edge.expect_metric("outpost_admin_refused_total{reason=\"token\"}", 8);
    edge.expect_metric("outpost_admin_refused_total{reason=\"browser\"}", 5);
    assert!(!edge.log().contains(&token), "the admin token reached the log");
}

fn browser_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[test]
fn chromium_on_another_site_releases_nothing() {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "Debian's chromium is missing (apt-get install chromium)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in {}",
        browser_dir().display()
    );
    let (edge, _smtp, _dir) = edge_with_a_reservation("admin-chromium");
    let admin = format!("http://127.0.0.1:{}", edge.admin);
    let out = run_client(
        Command::new("node").arg(browser_dir().join("admin.mjs")).args([&admin, VICTIM]),
        Duration::from_secs(90),
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "node admin.mjs failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    // Every attempt reached the listener and was refused; Chromium sent an Origin with each
    // POST, so the browser rule answered (403) before the token rule would have (401).
    // (Playwright does not show the fetch's headers as sent; the 403 says it had an Origin.)
    for attempt in ["urlencoded", "multipart", "text", "fetch", "file"] {
        assert_eq!(r[attempt]["status"], 403, "{attempt}: {r}");
    }
    for attempt in ["urlencoded", "multipart", "text"] {
        assert!(r[attempt]["origin"].as_str().is_some_and(|o| o.contains("attacker.test")), "{r}");
    }
    assert_eq!(r["file"]["origin"], "null", "{r}");
    assert_eq!(r["export"]["status"], 401, "a navigation to the export: {r}");
    assert!(reserved(&edge), "a web page released the name: {r}");
    edge.expect_metric("outpost_admin_refused_total{reason=\"browser\"}", 5);
}
