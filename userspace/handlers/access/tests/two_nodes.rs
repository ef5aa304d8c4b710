//! Two edge nodes sharing one PostgreSQL: a login started on node 1 finishes on node 2, the
//! one-time code minted on node 2 is redeemed on node 1, and the app token node 2 signed is
//! accepted by node 1. The nodes listen on the same port of two loopback addresses (127.0.0.1
//! and 127.0.0.2), as two nodes behind one name would; the browser is one cookie jar whose
//! requests are sent to one node or the other.

mod support;

use std::sync::Arc;

use outpost_store::testing::TestPostgres;
use support::*;

#[test]
fn login_on_node_1_callback_on_node_2_token_accepted_on_node_1() {
    let pg = TestPostgres::start();
    let port = free_port();
    let idp = Idp::start(&[callback(port)]);
    let origin = Origin::start("app");
    let node = |ip: &str, name: &str| {
        let config = format!(
            "listen = [\"{ip}:{port}\"]\nnode = \"{name}\"\n[store]\nurl = \"{}\"\n{}",
            pg.url(),
            edge_config(port, &idp, &origin, "")
        );
        Outpost::start_at(port, "uring", &config, &[], &["--no-xdp"])
    };
    let node1 = node("127.0.0.1", "edge-1");
    let node2 = node("127.0.0.2", "edge-2");
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let on1 = Browser::at([127, 0, 0, 1], port, jar.clone());
    let on2 = Browser::at([127, 0, 0, 2], port, jar);
    let app = format!("https://{WIKI}:{port}/travel");

    // /login on node 1, off to the provider.
    let page = on1.follow(on1.nav(&app)).pop().unwrap();
    assert_eq!(page.status, 200);
    let to_idp = on1.choose_provider(&page);
    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
    let back = on1.sign_in_at_idp(to_idp, "alice@example.test");
    let cb = reqwest::Url::parse(&back.url).unwrap().join(&back.location().unwrap()).unwrap();
    // /callback on node 2: it takes the state node 1 stored, and mints the session, the token
    // and the one-time code.
    let minted = on2.nav(cb.as_str());
    assert_eq!(minted.status, 302, "callback on node 2: {}", minted.body);
    let code_url = minted.location().unwrap();
    assert!(code_url.contains("/.outpost/authorized?code="), "{code_url}");
    // The replay on node 1 finds the state gone.
    assert_eq!(on1.nav(cb.as_str()).status, 400, "the state was taken on node 2");
    // Node 1 redeems node 2's code and accepts the token node 2 signed.
    let hops = on1.follow(on1.nav(&code_url));
    let end = hops.last().unwrap();
    assert_eq!(end.status, 200, "{}", end.body);
    assert!(end.body.contains("target /travel\n"), "{}", end.body);
    assert_eq!(
        end.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("alice@example.test")
    );
    let token = on1.cookie(&app, "__Host-outpost-token").unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    // Both nodes publish the key node 2 signed with.
    for (b, name) in [(&on1, "node 1"), (&on2, "node 2")] {
        let keys = b.api(&format!("https://{AUTH}:{port}/keys")).body;
        assert!(keys.contains(&kid), "{name} does not publish {kid}: {keys}");
    }
    // Node 2 accepts it too, and node 2's session serves node 1's next app without the
    // provider.
    assert_eq!(on2.nav(&app).status, 200);
    let dash = on1.follow(on1.nav(&format!("https://{DASH}:{port}/")));
    assert!(dash.iter().all(|h| h.url.contains(".example.test")));
    assert_eq!(dash.last().unwrap().status, 200);

    // Logout on node 2 revokes the session for node 1 as well.
    let out = on2.follow(on2.nav(&format!("https://{WIKI}:{port}/.outpost/logout")));
    assert_eq!(out.last().unwrap().status, 200);
    let again = on1.follow(on1.nav(&app));
    assert!(
        again.last().unwrap().body.contains("Sign in with Test IdP"),
        "{}",
        again.last().unwrap().body
    );

    // One audit log: the login on node 2, the logout on node 2, seen from node 1's admin.
    let logins = wait_event(node1.admin, "access.login", "success", "provider testidp");
    assert!(
        logins.iter().any(|e| e["node"] == "edge-2" && e["user"] == "alice@example.test"),
        "{logins:#?}"
    );
    assert!(logins.iter().any(|e| e["node"] == "edge-1"), "node 1's session login: {logins:#?}");
    let replays = wait_event(node2.admin, "access.login", "denied", "state replayed");
    assert!(replays.iter().any(|e| e["node"] == "edge-1"), "{replays:#?}");
}
