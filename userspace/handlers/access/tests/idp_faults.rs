//! Identity provider faults: down, slower than the 5 s bound, an error answer, and its signing
//! key rotated between two logins. Each ends in a clear page (within the bound) or a clean
//! login, and each failure is audited.

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use support::*;

/// Runs a login up to the provider's answer that sends the browser back to /callback.
fn to_callback(b: &Browser, s: &Setup, path: &str, user: &str) -> String {
    let page = b.follow(b.nav(&s.url(WIKI, path))).pop().unwrap();
    let to_idp = b.choose_provider(&page);
    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
    let back = b.sign_in_at_idp(to_idp, user);
    reqwest::Url::parse(&back.url).unwrap().join(&back.location().unwrap()).unwrap().to_string()
}

fn assert_clear_page(r: &Resp, status: u16, words: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains(words), "{words:?} not in {}", r.body);
    assert!(r.body.contains("Try again"), "no way to try again: {}", r.body);
}

#[test]
fn provider_down_slow_or_refusing_gives_a_clear_page_within_the_bound() {
    let mut s = Setup::start("");
    let b = s.browser();

    // Slower than 5 s at the token endpoint: a 502 page within the bound, not a hang.
    s.idp.fault("token_delay_ms=8000");
    let cb = to_callback(&b, &s, "/slow", "alice@example.test");
    let t = Instant::now();
    let r = b.nav(&cb);
    let took = t.elapsed();
    assert_clear_page(&r, 502, "not answering");
    // The bound, not the provider's 8 s: the page came before the provider would have answered
    // (with room for a loaded machine's handshake and request around it).
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_millis(7800),
        "took {took:?}"
    );
    s.expect_event("access.login", "error", "did not answer in time");

    // An error answer from the token endpoint.
    s.idp.fault("clear=1&token_error=invalid_grant");
    let cb = to_callback(&b, &s, "/refused", "alice@example.test");
    let r = b.nav(&cb);
    assert_clear_page(&r, 502, "invalid_grant");
    s.expect_event("access.login", "error", "invalid_grant");
    s.idp.fault("clear=1");

    // The user cancels at the provider (a browser with no session there yet): it sends back
    // error=access_denied.
    let c = s.browser();
    let page = c.follow(c.nav(&s.url(WIKI, "/cancel"))).pop().unwrap();
    let to_idp = c.choose_provider(&page);
    let form = c.follow(to_idp).pop().unwrap();
    assert!(form.url.contains("/interaction/"), "{}", form.url);
    let form_url = reqwest::Url::parse(&form.url).unwrap();
    let abort = form_url.join(&format!("{}/abort", form_url.path())).unwrap();
    let back = c.nav(abort.as_str());
    let end = c.follow(back).pop().unwrap();
    assert!(end.url.contains("/callback?error=access_denied"), "{}", end.url);
    assert_clear_page(&end, 403, "access_denied");
    s.expect_event("access.login", "error", "access_denied");

    // Down: the provider's process is gone when the browser comes back with its code.
    let cb = to_callback(&b, &s, "/down", "alice@example.test");
    s.idp.stop();
    let t = Instant::now();
    let r = b.nav(&cb);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_clear_page(&r, 502, "not answering");
    s.expect_event("access.login", "error", "unreachable");
    // Nothing of the failed logins let anyone in.
    assert!(b.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").is_none());
    assert!(b.cookie(&s.url(AUTH, "/"), "__Host-outpost-session").is_none());
}

#[test]
fn provider_down_before_the_first_login_gives_a_502_page() {
    let port = free_port();
    let mut idp = Idp::start(&[callback(port)]);
    let origin = Origin::start("app");
    idp.stop();
    let edge =
        Outpost::start_at(port, "uring", &edge_config(port, &idp, &origin, ""), &[], &["--no-xdp"]);
    let b = Browser::new(port);
    let page = b.follow(b.nav(&format!("https://{WIKI}:{port}/"))).pop().unwrap();
    assert_eq!(page.status, 200, "the login page needs no provider: {}", page.body);
    let t = Instant::now();
    let r = b.choose_provider(&page);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_clear_page(&r, 502, "not answering");
    wait_event(&edge, "access.login", "error", "provider testidp");
}

#[test]
fn provider_key_rotated_between_two_logins() {
    // Keys fetched again at most every 10 s: long enough that the third login below surely
    // falls within it, even on a slow machine.
    const REFETCH: Duration = Duration::from_secs(10);
    let mut s = Setup::start("jwks_refetch_min_secs = 10");
    let first = s.browser();
    assert_eq!(first.login(&s.url(WIKI, "/"), "alice@example.test").pop().unwrap().status, 200);

    // The provider signs with a new key; the edge learns it from the unknown kid.
    s.idp.restart_with_key("idp-key-2");
    thread::sleep(REFETCH);
    let second = s.browser();
    let end = second.login(&s.url(WIKI, "/"), "bob@example.test").pop().unwrap();
    let refetched = Instant::now();
    assert_eq!(end.status, 200, "login after the provider's key rotation: {}", end.body);
    assert!(s.edge.log().contains("signing keys fetched again"), "{}", s.edge.log());

    // Rotated again at once: the keys were fetched less than jwks_refetch_min_secs ago, so the
    // edge does not fetch them again; the user gets a clear page, not a hang...
    s.idp.restart_with_key("idp-key-3");
    let third = s.browser();
    let end = third.login(&s.url(WIKI, "/"), "carol@example.test").pop().unwrap();
    assert!(refetched.elapsed() < REFETCH, "the third login came too late to test the limit");
    assert_clear_page(&end, 502, "could not be verified");
    s.expect_event("access.login", "error", "ID token invalid");
    // ...and once the interval has passed, a clean login.
    thread::sleep(REFETCH.saturating_sub(refetched.elapsed()) + Duration::from_millis(500));
    let fourth = s.browser();
    let end = fourth.login(&s.url(WIKI, "/"), "dave@example.test").pop().unwrap();
    assert_eq!(end.status, 200, "{}", end.body);
    // The first user was never asked again.
    assert_eq!(first.nav(&s.url(WIKI, "/again")).status, 200);
}
