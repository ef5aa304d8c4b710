//! The login flow in real Chromium (Debian's `chromium`, headless, `--no-sandbox`) driven by
//! playwright-core, once with JavaScript on and once with it off: the edge's pages are plain
//! forms and links. Screenshots of the login page, the provider's page and the app page are
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

fn check(s: &Setup, r: &serde_json::Value, out: &Path) {
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
}

#[test]
fn login_flow_in_chromium_with_and_without_javascript() {
    chromium();
    let s = Setup::start("");
    let out = artifacts("javascript-on");
    let r = run_browser(&s, true, &out, "alice@example.test");
    check(&s, &r, &out);
    let out = artifacts("javascript-off");
    let r = run_browser(&s, false, &out, "alice@example.test");
    check(&s, &r, &out);
    eprintln!("screenshots: {}", out.parent().unwrap().display());
    let logins = s.audit("access.login", 2);
    assert_eq!(logins.iter().filter(|e| e["outcome"] == "success").count(), 2, "{logins:#?}");
}
