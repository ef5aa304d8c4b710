//! Two edge nodes, each in a network namespace of its own, sharing one PostgreSQL over the
//! network (root: namespaces): a login started on node 1 finishes on node 2, the one-time code
//! minted on node 2 is redeemed on node 1, and the app token node 2 signed is accepted by
//! node 1. A logout on node 2, and `outpost access revoke --user` on node 1, refuse the old
//! app tokens on the other node within 2 s.
//!
//! The topology is the fleet's ([`outpost_tests::fleet`]): a hub namespace with the LAN's
//! bridge, the database, an echo origin and here the OpenID provider; the edges at
//! 198.18.20.11 and .12; a client namespace where the browser (one cookie jar, sending each
//! request to the node the test picks, as two nodes behind one name would get them) lives.

mod support;

use std::{sync::Arc, time::Duration};

use outpost_tests::{
    fleet::{Fleet, CLIENT_V4, HUB_V4, ORIGIN_PORT},
    netns,
};
use support::*;

/// The edges serve the standard port, as deployed.
const PORT: u16 = 443;

/// `GET /audit` of `kind` on node `i`'s admin listener (in its namespace), waiting up to 5 s
/// for an event with `outcome` and a reason containing `reason`.
fn wait_event_on(
    fleet: &Fleet,
    i: usize,
    kind: &str,
    outcome: &str,
    reason: &str,
) -> Vec<serde_json::Value> {
    let fetch = || {
        let body = fleet.admin(i, &format!("/audit?kind={kind}&limit=1000"));
        serde_json::from_str(&body).expect("/audit is JSON")
    };
    wait_event_from(fetch, kind, outcome, reason)
}

#[test]
fn login_on_node_1_callback_on_node_2_token_accepted_on_node_1() {
    let mut idp = Idp::configured(HUB_V4, &[callback(PORT)]);
    let access = edge_config_to(PORT, &idp, &format!("{HUB_V4}:{ORIGIN_PORT}"), "");
    let fleet = Fleet::new(2, &access);
    idp.spawn_in(&fleet.hub_ns);
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = |i: usize| {
        let ip: std::net::Ipv4Addr = fleet.nodes[i].addr.parse().unwrap();
        let jar = jar.clone();
        netns::on_thread_in(&fleet.client_ns, move || Browser::at(ip.octets(), PORT, jar))
    };
    let (on1, on2) = (browser(0), browser(1));
    // Browsers with nothing in their jar, presenting a token the test hands them.
    let bare = |i: usize| {
        let ip: std::net::Ipv4Addr = fleet.nodes[i].addr.parse().unwrap();
        let jar = Arc::new(reqwest::cookie::Jar::default());
        netns::on_thread_in(&fleet.client_ns, move || Browser::at(ip.octets(), PORT, jar))
    };
    let (bare1, bare2) = (bare(0), bare(1));
    let app = format!("https://{WIKI}/travel");

    // /login on node 1, off to the provider (in the hub, across the LAN).
    let page = on1.follow(on1.nav(&app)).pop().unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let to_idp = on1.choose_provider(&page);
    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
    let back = on1.sign_in_at_idp(to_idp, "alice@example.test");
    let cb = reqwest::Url::parse(&back.url).unwrap().join(&back.location().unwrap()).unwrap();
    // /callback on node 2: it takes the state node 1 stored, exchanges the code with the
    // provider, and mints the session, the token and the one-time code.
    let minted = on2.nav(cb.as_str());
    assert_eq!(minted.status, 302, "callback on node 2: {}\n{}", minted.body, fleet.log(1));
    let code_url = minted.location().unwrap();
    assert!(code_url.contains("/.outpost/authorized?code="), "{code_url}");
    // The replay on node 1 finds the state gone.
    assert_eq!(on1.nav(cb.as_str()).status, 400, "the state was taken on node 2");
    // Node 1 redeems node 2's code and accepts the token node 2 signed; the request reaches
    // the origin from node 1's address with the identity node 1 vouches for.
    let hops = on1.follow(on1.nav(&code_url));
    let end = hops.last().unwrap();
    assert_eq!(end.status, 200, "{}", end.body);
    assert!(end.body.contains("target /travel\n"), "{}", end.body);
    let peer = end.body.lines().find_map(|l| l.strip_prefix("peer ")).unwrap_or_default();
    assert!(peer.ends_with(&fleet.nodes[0].addr), "the origin saw {peer:?}:\n{}", end.body);
    assert_eq!(
        end.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("alice@example.test")
    );
    let token = on1.cookie(&app, "__Host-outpost-token").unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    // Both nodes publish the key node 2 signed with.
    for (b, name) in [(&on1, "node 1"), (&on2, "node 2")] {
        let keys = b.api(&format!("https://{AUTH}/keys")).body;
        assert!(keys.contains(&kid), "{name} does not publish {kid}: {keys}");
    }
    // Node 2 accepts it too, and node 2's session serves node 1's next app without the
    // provider.
    assert_eq!(on2.nav(&app).status, 200);
    let dash = on1.follow(on1.nav(&format!("https://{DASH}/")));
    assert!(dash.iter().all(|h| h.url.contains(".example.test")), "{dash:#?}");
    assert_eq!(dash.last().unwrap().status, 200);

    // Logout on node 2 revokes the session for node 1 as well, and the token minted from it:
    // node 1 has it among its verified tokens, yet refuses it within 2 s.
    let (nav, api) = present_token(&bare1, &app, &token);
    assert_eq!((nav.status, api.status), (200, 200), "{}", nav.body);
    let out = on2.follow(on2.nav(&format!("https://{WIKI}/.outpost/logout")));
    assert_eq!(out.last().unwrap().status, 200);
    let (nav, api) = present_token(&bare2, &app, &token);
    assert!(refused(&nav, &api), "node 2, which logged out: {} {}", nav.status, api.status);
    let took = wait_refused(&bare1, &app, &token, Duration::from_secs(2));
    eprintln!("logout on node 2: the old token refused on node 1 after {took:?}");
    let again = on1.follow(on1.nav(&app));
    assert!(
        again.last().unwrap().body.contains("Sign in with Test IdP"),
        "{}",
        again.last().unwrap().body
    );

    // One audit log: the login on node 2, the logout on node 2, seen from node 1's admin,
    // with the client's address as the network saw it.
    let logins = wait_event_on(&fleet, 0, "access.login", "success", "provider testidp");
    assert!(
        logins.iter().any(|e| e["node"] == "edge-2" && e["user"] == "alice@example.test"),
        "{logins:#?}"
    );
    assert!(logins.iter().any(|e| e["node"] == "edge-1"), "node 1's session login: {logins:#?}");
    assert!(logins.iter().any(|e| e["client"] == CLIENT_V4), "{logins:#?}");
    let replays = wait_event_on(&fleet, 1, "access.login", "denied", "state replayed");
    assert!(replays.iter().any(|e| e["node"] == "edge-1"), "{replays:#?}");

    // The kill switch: alice signs in again (node 1), her token works on both nodes; the
    // operator runs `outpost access revoke --user` on node 1; node 2 refuses it within 2 s.
    let hops = on1.login(&app, "alice@example.test");
    assert_eq!(hops.last().unwrap().status, 200, "{}", hops.last().unwrap().body);
    let token = on1.cookie(&app, "__Host-outpost-token").unwrap();
    for b in [&bare1, &bare2] {
        let (nav, api) = present_token(b, &app, &token);
        assert_eq!((nav.status, api.status), (200, 200), "{}", nav.body);
    }
    let out = fleet.outpost_cli(0, &["access", "revoke", "--user", "alice@example.test"]).ok();
    assert!(out.stdout.contains("revoked alice@example.test"), "{out}");
    let (nav, api) = present_token(&bare1, &app, &token);
    assert!(refused(&nav, &api), "node 1, which revoked: {} {}", nav.status, api.status);
    let took = wait_refused(&bare2, &app, &token, Duration::from_secs(2));
    eprintln!("revoke --user on node 1: the token refused on node 2 after {took:?}");
    // Her session ended too: the auth host sends her to the provider again.
    let again = on2.follow(on2.nav(&app));
    assert!(
        again.last().unwrap().body.contains("Sign in with Test IdP"),
        "{}",
        again.last().unwrap().body
    );
    let revokes =
        wait_event_on(&fleet, 1, "access.revoke", "success", "revoked alice@example.test");
    assert!(
        revokes.iter().any(|e| e["node"] == "edge-1" && e["user"] == "alice@example.test"),
        "{revokes:#?}"
    );
}
