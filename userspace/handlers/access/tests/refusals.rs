//! The refusal table: every forged, replayed, misdirected or stale input gets the right status
//! and an audit event. The edge runs on a PostgreSQL of the test's own, so the test can sign
//! tokens with the edge's real key (expired, not yet valid, for another app) and with keys the
//! edge does not know.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use outpost_access::{
    keys::{EdgeKey, KeyRing},
    token::Claims,
};
use outpost_store::testing::TestPostgres;
use support::*;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A navigation and an API call carrying `token`: (navigation, api).
fn present(s: &Setup, host: &str, token: &str) -> (Resp, Resp) {
    let b = s.browser();
    let cookie = format!("__Host-outpost-token={token}");
    let nav = b.get_with(&s.url(host, "/page"), &[("Cookie", &cookie)]);
    let api = b
        .client
        .get(s.url(host, "/api"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    let api = Resp {
        url: api.url().to_string(),
        status: api.status().as_u16(),
        headers: api.headers().clone(),
        body: api.text().unwrap(),
    };
    (nav, api)
}

/// Refused: a 302 to the login page that clears the cookie, and a 401 for the API call.
fn assert_refused(case: &str, s: &Setup, host: &str, token: &str) {
    let (nav, api) = present(s, host, token);
    assert_eq!(nav.status, 302, "{case}: navigation answered {} {}", nav.status, nav.body);
    assert!(
        nav.location().unwrap().contains(&format!("/login?app={host}")),
        "{case}: {:?}",
        nav.location()
    );
    assert!(
        nav.set_cookies()
            .iter()
            .any(|c| c.starts_with("__Host-outpost-token=;") && c.contains("Max-Age=0")),
        "{case}: the refused cookie is not cleared: {:?}",
        nav.set_cookies()
    );
    for c in nav.set_cookies() {
        assert_cookie_flags(&nav.url, &c);
    }
    assert_eq!(api.status, 401, "{case}: API call answered {} {}", api.status, api.body);
    assert!(nav.echoed("Outpost-Access-Authenticated-User-Email").is_none());
}

#[test]
fn refusal_table() {
    let pg = TestPostgres::start();
    let s = Setup::start_with("", Some(&pg.url()));
    let (store, _store_dir) = store(&pg.url());

    // Alice logs in to the wiki; her token and the flow's one-time URLs are kept.
    let alice = s.browser();
    let hops = alice.login(&s.url(WIKI, "/"), "alice@example.test");
    assert_eq!(hops.last().unwrap().status, 200, "{}", hops.last().unwrap().body);
    let token = alice.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").unwrap();
    let callback_url = hops.iter().find(|h| h.url.contains("/callback?")).unwrap().url.clone();
    let authorized_url =
        hops.iter().find(|h| h.url.contains("/.outpost/authorized?")).unwrap().url.clone();
    let good = claims_of(&token);
    let (nav, _) = present(&s, WIKI, &token);
    assert_eq!(nav.status, 200, "the genuine token: {}", nav.body);

    let parts: Vec<&str> = token.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();

    // Tampered payload (email changed, signature kept).
    let mut c = good.clone();
    c["email"] = "mallory@example.test".into();
    let forged = format!("{}.{}.{}", parts[0], B64.encode(c.to_string()), parts[2]);
    assert_refused("tampered payload", &s, WIKI, &forged);
    // Tampered signature.
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[5] ^= 0x40;
    assert_refused(
        "tampered signature",
        &s,
        WIKI,
        &format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig)),
    );
    // The wiki's token presented to the dashboard (Alice may use both).
    assert_refused("token for another app", &s, DASH, &token);
    // alg none.
    let none = format!(
        "{}.{}.",
        B64.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#)),
        parts[1]
    );
    assert_refused("alg none", &s, WIKI, &none);
    // HS256 signed with the public key (as the raw point, and as the JWK's JSON).
    let jwks: serde_json::Value =
        serde_json::from_str(&s.browser().api(&s.url(AUTH, "/keys")).body).unwrap();
    let jwk =
        jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap().clone();
    let mut point = vec![4u8];
    point.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
    for secret in [point.clone(), jwk.to_string().into_bytes()] {
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some(kid.clone()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            },
            &good,
            &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        assert_refused("HS256 with the public key", &s, WIKI, &hs);
    }
    // A key the edge never had (its own kid), and a known kid on a foreign key.
    let stranger = EdgeKey::generate().unwrap();
    let mut claims: Claims = serde_json::from_value(good.clone()).unwrap();
    claims.exp = now() + 600;
    assert_refused("unknown kid", &s, WIKI, &stranger.sign(&claims).unwrap());
    let foreign = stranger.sign(&claims).unwrap();
    let fp: Vec<&str> = foreign.split('.').collect();
    let relabeled = format!("{}.{}.{}", parts[0], fp[1], fp[2]);
    assert_refused("known kid, foreign key", &s, WIKI, &relabeled);

    // Tokens signed with the edge's own key, through the test's store client.
    let ring = KeyRing::new(store.clone());
    let key = block_on(ring.signing_key()).unwrap();
    assert_eq!(key.kid, kid);
    let sign = |edit: &dyn Fn(&mut Claims)| {
        let mut c: Claims = serde_json::from_value(good.clone()).unwrap();
        edit(&mut c);
        key.sign(&c).unwrap()
    };
    // Not yet valid (beyond the 60 s leeway); within the leeway it passes.
    assert_refused("nbf in the future", &s, WIKI, &sign(&|c| c.nbf = now() + 600));
    let (nav, _) = present(&s, WIKI, &sign(&|c| c.nbf = now() + 30));
    assert_eq!(nav.status, 200, "nbf within the leeway");
    // Another issuer.
    assert_refused("another issuer", &s, WIKI, &sign(&|c| c.iss = "auth.evil.test".into()));
    // Expired, with a live session: renewed in place, no trip anywhere.
    let expired = sign(&|c| {
        c.iat = now() - 2000;
        c.nbf = c.iat;
        c.exp = now() - 1000;
    });
    let (nav, api) = present(&s, WIKI, &expired);
    assert_eq!(nav.status, 200, "expired token with a live session: {}", nav.body);
    assert_eq!(api.status, 200, "expired token with a live session (API): {}", api.body);
    let renewed: Vec<String> =
        nav.set_cookies().into_iter().filter(|c| c.starts_with("__Host-outpost-token=")).collect();
    assert_eq!(renewed.len(), 1, "{:?}", nav.set_cookies());
    assert_cookie_flags(&nav.url, &renewed[0]);
    let fresh = renewed[0].trim_start_matches("__Host-outpost-token=").split(';').next().unwrap();
    assert!(claims_of(fresh)["exp"].as_u64().unwrap() > now() + 800);
    assert_eq!(nav.echoed("Outpost-Access-Jwt-Assertion").as_deref(), Some(fresh));
    // Expired, after the session was revoked (logout): refused as revoked.
    let out = alice.follow(alice.nav(&s.url(WIKI, "/.outpost/logout")));
    assert_eq!(out.last().unwrap().status, 200);
    assert_refused("expired, session revoked", &s, WIKI, &expired);

    // One-time values: a replayed state, a replayed code, a code for another app, a state
    // from another browser.
    let replay = alice.nav(&callback_url);
    assert_eq!(replay.status, 400, "replayed state: {}", replay.body);
    assert!(replay.body.contains("already used or has expired"), "{}", replay.body);
    let replay = alice.nav(&authorized_url);
    assert_eq!(replay.status, 400, "replayed code: {}", replay.body);

    let bob = s.browser();
    let first = bob.follow(bob.nav(&s.url(WIKI, "/")));
    let to_idp = bob.choose_provider(first.last().unwrap());
    let back = bob.sign_in_at_idp(to_idp, "bob@example.test");
    let cb = reqwest::Url::parse(&back.url).unwrap().join(&back.location().unwrap()).unwrap();
    let thief = s.browser();
    let stolen = thief.nav(cb.as_str());
    assert_eq!(stolen.status, 400, "state from another browser: {}", stolen.body);
    assert!(stolen.body.contains("another browser"), "{}", stolen.body);
    assert!(thief.cookie(&s.url(AUTH, "/"), "__Host-outpost-session").is_none());
    // The refusal spent nothing: Bob's own browser completes the login afterwards.
    let hops = bob.follow(bob.nav(cb.as_str()));
    let end = hops.last().unwrap();
    assert_eq!(end.status, 200, "the rightful browser after the thief: {}", end.body);
    assert_eq!(
        end.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("bob@example.test")
    );
    // Now it is spent, for both.
    assert_eq!(thief.nav(cb.as_str()).status, 400);
    assert_eq!(bob.nav(cb.as_str()).status, 400);

    let carol = s.browser();
    let first = carol.follow(carol.nav(&s.url(WIKI, "/")));
    let to_idp = carol.choose_provider(first.last().unwrap());
    let back = carol.sign_in_at_idp(to_idp, "alice@example.test");
    let cb = reqwest::Url::parse(&back.url).unwrap().join(&back.location().unwrap()).unwrap();
    let to_app = carol.nav(cb.as_str());
    assert_eq!(to_app.status, 302);
    let code_url = to_app.location().unwrap().replace(WIKI, DASH);
    let misdirected = carol.nav(&code_url);
    assert_eq!(misdirected.status, 400, "a wiki code at the dashboard: {}", misdirected.body);
    assert!(carol.cookie(&s.url(DASH, "/"), "__Host-outpost-token").is_none());

    // Every open-redirect form at /login.
    for rd in [
        "//evil.test",
        "///evil.test",
        "https:evil.test",
        "https://evil.test/",
        "evil.test",
        "/\\evil.test",
        "\\\\evil.test",
        "/%2F%2Fevil.test",
        "%2F%2Fevil.test",
        "/%5Cevil.test",
        "/%255Cevil.test",
        "/%09/evil.test",
        "/\t/evil.test",
    ] {
        let q = serde_urlencoded::to_string([("app", WIKI), ("rd", rd)]).unwrap();
        let r = s.browser().nav(&s.url(AUTH, &format!("/login?{q}")));
        assert_eq!(r.status, 400, "rd {rd:?} answered {}", r.status);
        let p = s.browser().post_form(
            &s.url(AUTH, "/login"),
            &[("app", WIKI), ("rd", rd), ("provider", "testidp")],
        );
        assert_eq!(p.status, 400, "POST rd {rd:?} answered {}", p.status);
    }
    // Unknown apps, and the auth host itself, are no destination either.
    for app in ["evil.test", AUTH, "wiki.example.test.evil.test", ""] {
        let r = s.browser().nav(&s.url(AUTH, &format!("/login?app={app}&rd=/")));
        assert_eq!(r.status, 400, "app {app:?}");
    }
    // A protected path that itself looks like another host (`//evil.test/x`) is a local path
    // once the core merged its slashes: the login returns there, on the app's own host.
    let r = s.browser().nav(&format!("https://{WIKI}:{}//evil.test/x", s.port));
    assert_eq!(r.status, 302);
    let location = r.location().unwrap();
    assert!(location.ends_with(&format!("app={WIKI}&rd=%2Fevil.test%2Fx")), "{location}");

    // Identity headers from the client never reach the origin, in any spelling; the core
    // drops them before Access runs, and counts them.
    let b = s.browser();
    b.login(&s.url(WIKI, "/"), "bob@example.test");
    let r = b.get_with(
        &s.url(WIKI, "/x"),
        &[
            ("outpost-access-authenticated-user-email", "alice@example.test"),
            ("Outpost_Access_Authenticated_User_Email", "mallory@example.test"),
        ],
    );
    assert_eq!(
        r.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("bob@example.test"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("mallory@") && !r.body.contains("alice@"), "{}", r.body);
    let dropped = "outpost_request_fields_dropped_total{reason=\"asserted\"}";
    assert_eq!(s.edge.metric(dropped), 2, "{}", s.edge.metrics());

    // Every refusal is in the audit log, with its reason.
    for reason in [
        "token signature invalid",
        "token for another application",
        "token algorithm not allowed",
        "token signed with an unknown key",
        "token not yet valid",
        "token from another issuer",
        "session revoked",
        "no token",
    ] {
        s.expect_event("access.request", "denied", reason);
    }
    let requests = s.expect_event("access.request", "denied", "another application");
    for reason in [
        "state replayed or unknown",
        "state from another browser",
        "return path refused",
        "unknown application",
    ] {
        s.expect_event("access.login", "denied", reason);
    }
    s.expect_event("access.authorized", "denied", "code replayed");
    s.expect_event("access.authorized", "denied", "presented to dash.example.test");
    // Events carry who, when, where.
    let e = requests
        .iter()
        .find(|e| e["reason"].as_str().unwrap_or("").contains("another application"))
        .unwrap();
    assert_eq!(e["host"], DASH);
    assert!(e["client"].as_str().is_some() && e["node"].as_str().is_some());
}
