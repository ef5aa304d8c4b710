//! Real Chromium (Debian's, driven by playwright-core from tests/browser/reserve.mjs): fill
//! the form, submit, see the result page; open the link from the mail, see the confirmation.
//! The same form without JavaScript. All of it over HTTP/2: every response of the edge as
//! Chromium's network stack reports it, the pages' navigation and resource entries
//! (`nextHopProtocol`, with JavaScript on), and the edge's `outpost_requests_total{proto}`.
//! Screenshots are kept under `<target>/tmp/reserve-browser/` as artifacts.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use outpost_testkit::run_client;
use support::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs the script; its one JSON line.
fn drive(args: &[&str]) -> serde_json::Value {
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "Debian's chromium is missing (apt-get install chromium)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in {}",
        browser_dir().display()
    );
    let out = run_client(
        Command::new("node").arg(browser_dir().join("reserve.mjs")).args(args),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node reserve.mjs {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Every response from `origin` came over h2, and one with each of `statuses`; with JavaScript
/// on, the pages' navigation entries say h2 too. How many responses of the edge there were.
fn check_h2(r: &serde_json::Value, origin: &str, statuses: &[u64], javascript: bool) -> u64 {
    let responses = r["responses"].as_array().unwrap_or_else(|| panic!("no responses: {r}"));
    let from_edge: Vec<&serde_json::Value> =
        responses.iter().filter(|x| x["url"].as_str().unwrap().starts_with(origin)).collect();
    for x in &from_edge {
        assert_eq!(x["protocol"], "h2", "a response of the edge not over h2: {x}\n{r}");
    }
    for status in statuses {
        assert!(from_edge.iter().any(|x| x["status"] == *status), "no {status} from {origin}: {r}");
    }
    if javascript {
        assert_eq!(r["result_protocol"], "h2", "{r}");
    } else {
        assert!(r["result_protocol"].is_null(), "{r}");
    }
    from_edge.len() as u64
}

#[test]
fn chromium_reserves_through_the_form_and_confirms_from_the_mail() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reserve-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let shots_s = shots.to_str().unwrap();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-b1");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let base = format!("https://{HOST}:{}", edge.https);
    let (h2_before, h11_before) = (
        edge.metric("outpost_requests_total{proto=\"h2\"}"),
        edge.metric("outpost_requests_total{proto=\"http/1.1\"}"),
    );

    let r = drive(&["reserve", &base, "My-Site", "browser@example.com", shots_s]);
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(r["availability"], "Available", "{r}");
    assert_eq!(r["full"], format!("my-site.{ZONE}"), "the full name as typed: {r}");
    assert_eq!(r["title"], "Check your mail", "{r}");
    assert_eq!(r["fqdn"], format!("my-site.{ZONE}"), "{r}");
    // The form page, its script and the availability check, then the POST's 201.
    let mut seen = check_h2(&r, &base, &[200, 201], true);
    assert_eq!(r["form_protocol"], "h2", "{r}");
    let resources = r["form_resources"].as_array().unwrap();
    for path in ["/app.js", "/api/availability?name="] {
        assert!(
            resources
                .iter()
                .any(|e| e["name"].as_str().unwrap().starts_with(&format!("{base}{path}"))),
            "no resource entry for {path}: {r}"
        );
    }
    for e in resources {
        assert_eq!(e["nextHopProtocol"], "h2", "{e}");
    }

    let mail = smtp.wait_for("browser@example.com", 1, Duration::from_secs(20));
    let (link, _) = confirm_link(&mail[0]);
    let r = drive(&["confirm", &link, shots_s]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["title"], "Confirmed", "{r}");
    assert_eq!(r["fqdn"], format!("my-site.{ZONE}"), "{r}");
    let link_origin = &link[..link.find("/confirm?").unwrap()];
    seen += check_h2(&r, link_origin, &[200], true);

    // Without JavaScript the form still works.
    let r = drive(&["reserve-nojs", &base, "plain-form", "nojs@example.com", shots_s]);
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(r["fqdn"], format!("plain-form.{ZONE}"), "{r}");
    seen += check_h2(&r, &base, &[200, 201], false);
    // The edge agrees: every request Chromium made was an h2 stream.
    let counted = |n| n >= h2_before + seen;
    let h2 = edge.wait_metric("outpost_requests_total{proto=\"h2\"}", "one per response", counted)
        - h2_before;
    let h11 = edge.metric("outpost_requests_total{proto=\"http/1.1\"}") - h11_before;
    assert!(h2 >= seen, "{seen} responses seen, {h2} h2 requests counted:\n{}", edge.metrics());
    assert_eq!(h11, 0, "HTTP/1.1 requests during the runs:\n{}", edge.metrics());
    for shot in ["reserve-1-form", "reserve-2-result", "confirm", "reserve-nojs-2-result"] {
        let p = shots.join(format!("{shot}.png"));
        assert!(std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000), "screenshot {}", p.display());
    }
    eprintln!("screenshots in {}", shots.display());
}
