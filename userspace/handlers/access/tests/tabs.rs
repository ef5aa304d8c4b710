//! Several tabs of one browser logging in at once: each login has its own state and its own
//! binding cookie, so none of them spoils another's (oauth2-proxy's well-known multi-tab
//! failure), and a tab that comes back after its state expired passes on the session another
//! tab opened.

mod support;

use std::{thread, time::Duration};

use support::*;

#[test]
fn ten_tabs_logging_in_at_once_all_end_on_the_app() {
    let s = Setup::start("");
    let b = s.browser();
    // Every tab is at the login page before any goes on.
    let pages: Vec<Resp> = (0..10)
        .map(|i| {
            let hops = b.follow(b.nav(&s.url(WIKI, &format!("/tab/{i}"))));
            let page = hops.last().unwrap().clone();
            assert_eq!(page.status, 200, "tab {i}: {}", page.body);
            page
        })
        .collect();
    // Then all ten at once: the provider, the callback, the app.
    let ends: Vec<Resp> = thread::scope(|scope| {
        let handles: Vec<_> = pages
            .iter()
            .map(|page| {
                let b = &b;
                scope.spawn(move || {
                    let to_idp = b.choose_provider(page);
                    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
                    let back = b.sign_in_at_idp(to_idp, "alice@example.test");
                    b.follow(back).pop().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, end) in ends.iter().enumerate() {
        assert_eq!(end.status, 200, "tab {i} ended at {} {}: {}", end.status, end.url, end.body);
        assert!(end.body.contains(&format!("target /tab/{i}\n")), "tab {i}: {}", end.body);
        assert_eq!(
            end.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
            Some("alice@example.test")
        );
    }
    let events = s.audit("access.login", 10);
    let ok = events.iter().filter(|e| e["outcome"] == "success").count();
    assert_eq!(ok, 10, "{events:#?}");
    // No binding cookie is left behind.
    assert!(
        b.jar_cookies(&s.url(AUTH, "/"))
            .iter()
            .all(|(n, _)| !n.starts_with("__Host-outpost-login-")),
        "{:?}",
        b.jar_cookies(&s.url(AUTH, "/"))
    );
}

#[test]
fn a_tab_whose_state_expired_passes_on_the_live_session() {
    let s = Setup::start("state_lifetime_secs = 5");
    let b = s.browser();
    // Two tabs start logins and both reach the provider's form.
    let at_idp = |path: &str| {
        let page = b.follow(b.nav(&s.url(WIKI, path))).pop().unwrap();
        let to_idp = b.choose_provider(&page);
        assert_eq!(to_idp.status, 302);
        to_idp
    };
    let tab1 = at_idp("/one");
    let tab2 = at_idp("/two");
    // Tab 1 completes.
    let end1 = b.follow(b.sign_in_at_idp(tab1, "alice@example.test")).pop().unwrap();
    assert_eq!(end1.status, 200, "{}", end1.body);
    assert!(end1.body.contains("target /one\n"));
    // Tab 2's state expires; then it goes on (its provider form is submitted and the provider
    // sends it back): the edge passes it on the session tab 1 opened.
    thread::sleep(Duration::from_millis(5500));
    let back2 = b.sign_in_at_idp(tab2, "alice@example.test");
    // Its callback URL opened in another browser first: refused, and tab 2's intent is left.
    let cb2 = reqwest::Url::parse(&back2.url).unwrap().join(&back2.location().unwrap()).unwrap();
    let thief = s.browser().nav(cb2.as_str());
    assert_eq!(thief.status, 400, "{}", thief.body);
    assert!(!thief.body.contains("Sign in again"), "no way into the login: {}", thief.body);
    let end2 = b.follow(back2).pop().unwrap();
    assert_eq!(end2.status, 200, "tab 2 after its state expired: {} {}", end2.url, end2.body);
    assert!(end2.body.contains("target /two\n"), "{}", end2.body);
    s.expect_event("access.login", "success", "login state expired; existing session");

    // Without a live session, an expired state is a clear 400 page with a way to start again.
    let other = s.browser();
    let page = other.follow(other.nav(&s.url(WIKI, "/three"))).pop().unwrap();
    let to_idp = other.choose_provider(&page);
    thread::sleep(Duration::from_millis(5500));
    let back = other.sign_in_at_idp(to_idp, "bob@example.test");
    let end = other.follow(back).pop().unwrap();
    assert_eq!(end.status, 400, "{}", end.body);
    assert!(end.body.contains("Sign in again"), "{}", end.body);
    assert!(end.body.contains("/login?app=wiki.example.test"), "{}", end.body);
    s.expect_event("access.login", "denied", "state expired");
}
