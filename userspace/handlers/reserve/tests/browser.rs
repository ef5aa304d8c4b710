//! Real Chromium (Debian's, driven by playwright-core from tests/browser/reserve.mjs): fill
//! the form, submit, see the result page; open the link from the mail, see the confirmation.
//! The same form without JavaScript. Screenshots are kept under
//! `<target>/tmp/reserve-browser/` as artifacts.

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

#[test]
fn chromium_reserves_through_the_form_and_confirms_from_the_mail() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reserve-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let shots_s = shots.to_str().unwrap();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-b1");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, "");
    let base = format!("https://{HOST}:{}", edge.https);

    let r = drive(&["reserve", &base, "My-Site", "browser@example.com", shots_s]);
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(r["availability"], "Available", "{r}");
    assert_eq!(r["full"], format!("my-site.{ZONE}"), "the full name as typed: {r}");
    assert_eq!(r["title"], "Check your mail", "{r}");
    assert_eq!(r["fqdn"], format!("my-site.{ZONE}"), "{r}");

    let mail = smtp.wait_for("browser@example.com", 1, Duration::from_secs(20));
    let (link, _) = confirm_link(&mail[0]);
    let r = drive(&["confirm", &link, shots_s]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["title"], "Confirmed", "{r}");
    assert_eq!(r["fqdn"], format!("my-site.{ZONE}"), "{r}");

    // Without JavaScript the form still works.
    let r = drive(&["reserve-nojs", &base, "plain-form", "nojs@example.com", shots_s]);
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(r["fqdn"], format!("plain-form.{ZONE}"), "{r}");
    for shot in ["reserve-1-form", "reserve-2-result", "confirm", "reserve-nojs-2-result"] {
        let p = shots.join(format!("{shot}.png"));
        assert!(std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000), "screenshot {}", p.display());
    }
    eprintln!("screenshots in {}", shots.display());
}
