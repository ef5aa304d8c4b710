//! The login flow end to end: a real OpenID provider (node-oidc-provider), the real outpost
//! binary, an echo origin, and a cookie-jar HTTPS client that follows every hop.

mod support;

use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
use support::*;

#[test]
fn login_flow_end_to_end_to_the_origin_with_identity_headers() {
    let s = Setup::start("");
    let b = s.browser();
    let app = s.url(WIKI, "/docs/page?x=1&y=%2F");

    // 1. A navigation without a token: 302 to the auth host's /login with app and return path.
    let first = b.nav(&app);
    assert_eq!(first.status, 302, "{}", first.body);
    let login_url = first.location().unwrap();
    assert_eq!(
        login_url,
        format!("https://{AUTH}:{}/login?app={WIKI}&rd=%2Fdocs%2Fpage%3Fx%3D1%26y%3D%252F", s.port)
    );
    // 2. The login page: providers listed, a plain form, no script.
    let page = b.nav(&login_url);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign in with Test IdP"), "{}", page.body);
    assert!(!page.body.to_ascii_lowercase().contains("<script"), "{}", page.body);
    assert!(page.header("content-security-policy").is_some());
    // 3. To the provider: code flow with PKCE S256, state and nonce.
    let to_idp = b.choose_provider(&page);
    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
    let auth_url = reqwest::Url::parse(&to_idp.location().unwrap()).unwrap();
    assert!(auth_url.as_str().starts_with(&s.idp.issuer()), "{auth_url}");
    let q: std::collections::HashMap<_, _> = auth_url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], callback(s.port));
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43, "{q:?}");
    assert!(q["scope"].split(' ').any(|x| x == "openid") && q["scope"].contains("email"));
    assert!(to_idp.set_cookies().iter().any(|c| c.starts_with("__Host-outpost-login-")));
    // 4-6. The provider's login form, back to /callback, the one-time code on the app host, the
    // original page.
    let back = b.sign_in_at_idp(to_idp, "alice@example.test");
    let hops = b.follow(back);
    // The first hop is the provider's answer that sends the browser back.
    let urls: Vec<&str> = hops.iter().skip(1).map(|h| h.url.as_str()).collect();
    assert!(urls[0].starts_with(&format!("https://{AUTH}:{}/callback?", s.port)), "{urls:?}");
    assert!(
        urls[1].starts_with(&format!("https://{WIKI}:{}/.outpost/authorized?code=", s.port)),
        "{urls:?}"
    );
    assert_eq!(urls[2], app, "{urls:?}");
    let done = hops.last().unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("target /docs/page?x=1&y=%2F"), "{}", done.body);
    assert_eq!(
        done.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("alice@example.test")
    );
    let assertion =
        done.echoed("Outpost-Access-Jwt-Assertion").expect("assertion header at the origin");
    // No token in any URL.
    for h in b.seen.lock().unwrap().iter() {
        assert!(!h.url.contains(&assertion), "token in URL {}", h.url);
        assert!(
            !h.location().unwrap_or_default().contains(&assertion),
            "token in Location of {}",
            h.url
        );
    }
    // Every Set-Cookie of the flow carries the flags.
    let set = b.all_set_cookies();
    assert!(set.iter().any(|(_, c)| c.starts_with("__Host-outpost-token=")), "{set:?}");
    assert!(set.iter().any(|(_, c)| c.starts_with("__Host-outpost-session=")), "{set:?}");
    let edge_host =
        |u: &str| reqwest::Url::parse(u).unwrap().host_str().unwrap().ends_with(".example.test");
    for (url, c) in set.iter().filter(|(u, _)| edge_host(u)) {
        assert_cookie_flags(url, c);
    }

    // The assertion verifies against the JWKS the auth host publishes.
    let keys = b.api(&s.url(AUTH, "/keys"));
    assert_eq!(keys.status, 200);
    let jwks: JwkSet = serde_json::from_str(&keys.body).unwrap();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the token's kid is published");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[WIKI]);
    v.set_issuer(&[AUTH]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &assertion,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["sub"], "testidp:alice@example.test");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 900);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    assert!(!keys.body.contains("\"d\""), "private key material in the JWKS: {}", keys.body);

    // Later requests: in-process check; client copies of the identity headers are replaced.
    let again = b.get_with(
        &s.url(WIKI, "/other"),
        &[
            ("Outpost-Access-Authenticated-User-Email", "mallory@evil.test"),
            ("Outpost-Access-Jwt-Assertion", "forged"),
        ],
    );
    assert_eq!(again.status, 200);
    assert_eq!(
        again.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(again.echoed("Outpost-Access-Jwt-Assertion").as_deref(), Some(assertion.as_str()));
    assert_eq!(
        again.body.matches("header outpost-access").count()
            + again.body.matches("header Outpost-Access").count(),
        2,
        "{}",
        again.body
    );
    let api = b.api(&s.url(WIKI, "/api/x"));
    assert_eq!(api.status, 200, "{}", api.body);

    // A second app in the same browser: the live auth-host session skips the provider.
    let dash = b.follow(b.nav(&s.url(DASH, "/")));
    assert!(
        dash.iter().all(|h| h.url.contains(".example.test")),
        "the provider was visited: {:?}",
        dash.iter().map(|h| &h.url).collect::<Vec<_>>()
    );
    let end = dash.last().unwrap();
    assert_eq!(end.status, 200, "{}", end.body);
    assert_eq!(
        end.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("alice@example.test")
    );

    // Each endpoint has its own series.
    let (status, metrics) = s.edge.admin_get("/access/metrics").unwrap();
    assert_eq!(status, 200);
    for series in [
        r#"outpost_access_requests_total{endpoint="check",outcome="redirect"}"#,
        r#"outpost_access_requests_total{endpoint="check",outcome="pass"}"#,
        r#"outpost_access_requests_total{endpoint="login",outcome="page"}"#,
        r#"outpost_access_requests_total{endpoint="login",outcome="to_provider"}"#,
        r#"outpost_access_requests_total{endpoint="login",outcome="session"}"#,
        r#"outpost_access_requests_total{endpoint="callback",outcome="success"} 1"#,
        r#"outpost_access_requests_total{endpoint="authorized",outcome="success"} 2"#,
        r#"outpost_access_requests_total{endpoint="keys",outcome="served"} 1"#,
        r#"outpost_access_seconds{endpoint="callback",quantile="0.99"}"#,
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }

    let logins = s.audit("access.login", 2);
    assert!(
        logins
            .iter()
            .filter(|e| e["outcome"] == "success" && e["user"] == "alice@example.test")
            .count()
            >= 2,
        "{logins:?}"
    );
    assert!(has_event(&logins, "success", "existing session"), "{logins:?}");

    // Logout on the app: cookies cleared, session revoked; the next visit goes to the provider.
    let out = b.follow(b.nav(&s.url(WIKI, "/.outpost/logout")));
    assert_eq!(out.last().unwrap().status, 200);
    assert!(out.last().unwrap().body.contains("signed out"), "{}", out.last().unwrap().body);
    assert!(b.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").is_none());
    assert!(b.cookie(&s.url(AUTH, "/"), "__Host-outpost-session").is_none());
    let relogin = b.follow(b.nav(&s.url(DASH, "/")));
    // The dash token is still in the jar (a logout on the wiki clears the wiki's cookie), but
    // it can no longer be renewed; a fresh navigation to the wiki needs the login page.
    let wiki_again = b.follow(b.nav(&s.url(WIKI, "/")));
    let last = wiki_again.last().unwrap();
    assert!(
        last.url.contains("/login?"),
        "{:?}",
        wiki_again.iter().map(|h| &h.url).collect::<Vec<_>>()
    );
    assert!(last.body.contains("Sign in with Test IdP"));
    drop(relogin);
    // `outpost audit --user` shows who used which app, and when.
    let o = std::process::Command::new(outpost_testkit::outpost_bin())
        .args([
            "audit",
            "--user",
            "alice@example.test",
            "--json",
            "--admin",
            &format!("127.0.0.1:{}", s.edge.admin),
            "--config",
            s.edge.dir.0.join("outpost.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = String::from_utf8_lossy(&o.stdout);
    for want in ["access.login", "access.logout", "wiki.example.test", "auth.example.test"] {
        assert!(shown.contains(want), "{want} not in `outpost audit --user`: {shown}");
    }
    let logouts = s.audit("access.logout", 2);
    assert!(logouts.iter().any(|e| e["user"] == "alice@example.test"), "{logouts:?}");
}

#[test]
fn non_navigation_gets_401_json_and_bypass_paths_pass() {
    let s = Setup::start("");
    let b = s.browser();
    let r = b.api(&s.url(WIKI, "/api/data"));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "authentication required");
    assert!(v["login"].as_str().unwrap().contains("/login?app=wiki.example.test"), "{v}");
    // POST is never a navigation.
    let p = b.post_form(&s.url(WIKI, "/form"), &[("a", "b")]);
    assert_eq!(p.status, 401);
    // Bypass: no token needed, and forged identity headers never reach the origin.
    let h = b.get_with(
        &s.url(WIKI, "/healthz"),
        &[("Outpost-Access-Authenticated-User-Email", "mallory@evil.test")],
    );
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.echoed("Outpost-Access-Authenticated-User-Email"), None, "{}", h.body);
    let h = b.nav(&s.url(WIKI, "/healthzz"));
    assert_eq!(h.status, 302, "a bypass path covers whole segments only");
    let denied = s.audit("access.request", 3);
    assert!(has_event(&denied, "denied", "no token"), "{denied:?}");
}

#[test]
fn a_denied_user_gets_a_403_page_naming_the_account() {
    let s = Setup::start("");
    let b = s.browser();
    // bob@example.test may use the wiki (by domain) but not the dashboard (by email).
    let hops = b.login(&s.url(DASH, "/"), "bob@example.test");
    let last = hops.last().unwrap();
    assert_eq!(last.status, 403, "{}", last.body);
    assert!(last.body.contains("bob@example.test"), "{}", last.body);
    assert!(last.body.contains("Sign in as someone else"), "{}", last.body);
    assert!(last.body.contains("switch=1"), "{}", last.body);
    let events = s.audit("access.login", 1);
    assert!(
        events.iter().any(|e| e["outcome"] == "denied" && e["user"] == "bob@example.test"),
        "{events:?}"
    );
    // Another domain entirely; and an unverified email where the policy is by email.
    let b2 = s.browser();
    let last = b2.login(&s.url(WIKI, "/"), "carol@other.test").pop().unwrap();
    assert_eq!(last.status, 403, "{}", last.body);
    let b3 = s.browser();
    let last = b3.login(&s.url(WIKI, "/"), "unverified@example.test").pop().unwrap();
    assert_eq!(last.status, 403, "{}", last.body);
    let events = s.audit("access.login", 3);
    assert!(has_event(&events, "denied", "email not verified"), "{events:?}");
    // No email at all (the provider knows only a subject): named by it, let in nowhere here.
    let b4 = s.browser();
    let last = b4.login(&s.url(WIKI, "/"), "robot").pop().unwrap();
    assert_eq!(last.status, 403, "{}", last.body);
    assert!(last.body.contains("robot"), "{}", last.body);
    // "Sign in as someone else" asks the provider to authenticate again.
    let switch = b3.nav(&format!("{}&switch=1", s.url(AUTH, &format!("/login?app={WIKI}&rd=%2F"))));
    assert_eq!(switch.status, 200);
    let to_idp = b3.choose_provider(&switch);
    assert!(to_idp.location().unwrap().contains("prompt=login"), "{:?}", to_idp.location());
}
