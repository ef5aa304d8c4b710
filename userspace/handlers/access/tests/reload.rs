//! `[access]` is read again on SIGHUP: a policy change applies at the next request (tokens
//! already issued included), the long-lived parts (provider clients and their discovery cache,
//! edge keys, sessions) carry over, and a broken section keeps the running configuration.

mod support;

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::*;

fn sighup_and_wait(s: &Setup, marker: &str, count: usize) {
    let ok = Command::new("kill").args(["-HUP", &s.edge.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.edge.log().matches(marker).count() < count {
        assert!(Instant::now() < deadline, "no {marker:?} #{count} in the log:\n{}", s.edge.log());
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_access_and_keeps_sessions_keys_and_provider_caches() {
    let s = Setup::start("");
    let alice = s.browser();
    assert_eq!(alice.login(&s.url(DASH, "/"), "alice@example.test").pop().unwrap().status, 200);
    assert_eq!(alice.follow(alice.nav(&s.url(WIKI, "/"))).pop().unwrap().status, 200);
    let discoveries = s.edge.log().matches("discovery document loaded").count();

    // Alice is taken off the dashboard.
    let config = edge_config(s.port, &s.idp, &s.origin, "").replace(
        r#"allow_emails = ["alice@example.test"]"#,
        r#"allow_emails = ["bob@example.test"]"#,
    );
    s.edge.rewrite_config(&config);
    sighup_and_wait(&s, "SIGHUP: reloaded", 1);
    let r = alice.nav(&s.url(DASH, "/"));
    assert_eq!(r.status, 403, "her dashboard token outlived the policy: {}", r.body);
    assert!(r.body.contains("alice@example.test"));
    assert_eq!(alice.api(&s.url(DASH, "/api")).status, 403);
    s.expect_event("access.request", "denied", "not allowed by the application's policy");
    // Her wiki token, her session and the edge key survived the reload.
    assert_eq!(alice.nav(&s.url(WIKI, "/still")).status, 200);
    let bob = s.browser();
    assert_eq!(bob.login(&s.url(DASH, "/"), "bob@example.test").pop().unwrap().status, 200);
    assert_eq!(
        s.edge.log().matches("discovery document loaded").count(),
        discoveries,
        "the provider's discovery was not kept across the reload"
    );

    // A broken [access] (no provider) is refused; the running configuration stays.
    let broken = config.replace("[[access.providers]]", "[[access.ignored]]");
    s.edge.rewrite_config(&broken);
    sighup_and_wait(&s, "reload failed", 1);
    assert!(
        s.edge.log().contains("no identity provider") || s.edge.log().contains("unknown field"),
        "{}",
        s.edge.log()
    );
    assert_eq!(bob.nav(&s.url(DASH, "/")).status, 200);
    assert_eq!(s.browser().nav(&s.url(WIKI, "/")).status, 302);
    // The client secret never reaches the log.
    assert!(!s.edge.log().contains(CLIENT_SECRET), "the client secret is in the log");
}
