//! Edge key rotation while users are logged in: nobody is logged out. The old key keeps
//! verifying (and stays published) until the tokens it signed have expired, new tokens carry
//! the new key, renewals move users onto it, and a key past its time is dropped.

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use outpost_access::{
    cli::{Command, KeysAction},
    keys::KeyRing,
    state,
};
use outpost_store::testing::TestPostgres;
use support::*;

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn published(s: &Setup) -> Vec<String> {
    let body = s.browser().api(&s.url(AUTH, "/keys")).body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

/// Waits until `f` holds, up to `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn edge_key_rotation_while_users_are_logged_in() {
    let pg = TestPostgres::start();
    let s = Setup::start_with("", Some(&pg.url()));
    let (store, _dir) = store(&pg.url());

    let alice = s.browser();
    assert_eq!(alice.login(&s.url(WIKI, "/"), "alice@example.test").pop().unwrap().status, 200);
    let alice_token = alice.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").unwrap();
    let old = kid_of(&alice_token);
    assert_eq!(published(&s), vec![old.clone()]);

    // `outpost access keys rotate`, from another machine sharing the store.
    let tool = outpost_access::cli::Tool::from_config("keys-test".into(), None);
    outpost_access::cli::run(Command::Keys { action: KeysAction::Rotate }, &store, &tool).unwrap();
    let keys = block_on(KeyRing::list(&store)).unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let new = keys.iter().find(|k| k.retired_ms.is_none()).unwrap().kid.clone();
    assert!(keys.iter().any(|k| k.kid == old && k.retired_ms.is_some()), "{keys:?}");

    // Alice is not logged out: her token (old key) still passes, at once and later.
    assert_eq!(alice.nav(&s.url(WIKI, "/after-rotation")).status, 200);
    // Within the refresh interval the edge signs with the new key, and publishes both.
    eventually(Duration::from_secs(15), "the edge publishes the new key", || {
        published(&s).contains(&new)
    });
    assert_eq!(published(&s)[0], new, "newest first");
    assert!(published(&s).contains(&old), "the old key is still published");
    let bob = s.browser();
    assert_eq!(bob.login(&s.url(WIKI, "/"), "bob@example.test").pop().unwrap().status, 200);
    let bob_token = bob.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").unwrap();
    assert_eq!(kid_of(&bob_token), new);
    assert_eq!(alice.nav(&s.url(WIKI, "/still")).status, 200);
    // Alice, on another app of the edge: the live session mints a new-key token.
    let dash = alice.follow(alice.nav(&s.url(DASH, "/")));
    assert_eq!(dash.last().unwrap().status, 200);
    let dash_token = alice.cookie(&s.url(DASH, "/"), "__Host-outpost-token").unwrap();
    assert_eq!(kid_of(&dash_token), new);

    // Her old-key token, once expired, is renewed onto the new key from her session.
    let ring = KeyRing::new(store.clone());
    block_on(ring.refresh()).unwrap();
    let mut claims: outpost_access::token::Claims =
        serde_json::from_value(claims_of(&alice_token)).unwrap();
    claims.iat -= 3600;
    claims.nbf -= 3600;
    claims.exp = claims.iat + 900;
    // Signed with the retired key, as it was before the rotation.
    let retired_key = {
        let rec = block_on(store.get("access.keys", &old)).unwrap().unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
        v["retired_ms"] = serde_json::Value::Null;
        // A throwaway store holding just that key, active, to sign with it.
        let tmp = TestStore::with_key(&v);
        block_on(KeyRing::new(tmp.store.clone()).signing_key()).unwrap()
    };
    assert_eq!(retired_key.kid, old);
    let expired_old = retired_key.sign(&claims).unwrap();
    alice.set_cookie(&s.url(WIKI, "/"), "__Host-outpost-token", &expired_old);
    let r = alice.nav(&s.url(WIKI, "/renew"));
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed = r.echoed("Outpost-Access-Jwt-Assertion").unwrap();
    assert_eq!(kid_of(&renewed), new);

    // A retired key past its time (retired longer ago than a token lives) is dropped by the
    // nodes: no longer published, and its tokens no longer verify.
    let raw = block_on(store.get("access.keys", &old)).unwrap().unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["retired_ms"] = (v["created_ms"].as_u64().unwrap() - 3_600_000).into();
    block_on(store.put("access.keys", &old, &state::encode(&v), None)).unwrap();
    eventually(Duration::from_secs(15), "the old key is dropped", || !published(&s).contains(&old));
    assert!(block_on(store.get("access.keys", &old)).unwrap().is_none(), "deleted from the store");
    // Even then nobody is logged out: the old token is refused, and the browser goes through
    // /login, where the live session sends it straight back with a new-key token.
    alice.set_cookie(&s.url(WIKI, "/"), "__Host-outpost-token", &alice_token);
    let hops = alice.follow(alice.nav(&s.url(WIKI, "/late")));
    assert!(
        hops.iter().all(|h| h.url.contains(".example.test")),
        "{:?}",
        hops.iter().map(|h| &h.url).collect::<Vec<_>>()
    );
    assert_eq!(hops.last().unwrap().status, 200);

    // Private keys never reach the log.
    for k in block_on(store.scan("access.keys", None, 100)).unwrap() {
        let v: serde_json::Value = serde_json::from_slice(&k.value).unwrap();
        let private = v["private_pkcs8"].as_str().unwrap();
        assert!(private.len() > 100);
        assert!(!s.edge.log().contains(&private[..40]), "a private key is in the log");
    }

    let rotations = s.audit("access.keys.rotate", 1);
    assert!(has_event(&rotations, "success", &new), "{rotations:#?}");
}

#[test]
fn rotation_through_the_admin_listener_of_an_embedded_store_edge() {
    let s = Setup::start("");
    let b = s.browser();
    assert_eq!(b.login(&s.url(WIKI, "/"), "alice@example.test").pop().unwrap().status, 200);
    let token = b.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").unwrap();
    let old = kid_of(&token);
    // Without the admin token, or with it as a web page would send it: refused, no key added.
    let rotate = |headers: &[(&str, &str)]| {
        let a =
            outpost_testkit::http_request(s.edge.admin, "POST", "/access/keys/rotate", headers, "");
        a.expect("the admin listener answers").status
    };
    assert_eq!(rotate(&[]), 401);
    let auth = format!("Bearer {}", s.edge.admin_token());
    assert_eq!(rotate(&[("Authorization", &auth), ("Origin", &s.url(WIKI, ""))]), 403);
    assert_eq!(rotate(&[("Authorization", &auth), ("Content-Type", "text/plain")]), 403);
    let no_token = TempDir::new("keys-no-token");
    let o = std::process::Command::new(outpost_testkit::outpost_bin())
        .args(["access", "keys", "rotate", "--admin", &format!("127.0.0.1:{}", s.edge.admin)])
        .current_dir(&no_token.0)
        .env_remove("OUTPOST_DATA")
        .env_remove("OUTPOST_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("401") && err.contains("admin-token"), "{err}");
    assert_eq!(published(&s), vec![old.clone()], "a refused rotation added a key");

    // `outpost access keys rotate`, the real command, through the running edge; it finds the
    // admin token in the data directory of the edge's config.
    let admin = format!("127.0.0.1:{}", s.edge.admin);
    let config = s.edge.dir.0.join("outpost.toml");
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(outpost_testkit::outpost_bin())
            .args(["access", "keys"])
            .args(args)
            .args(["--admin", &admin])
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "outpost access keys {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let said = cli(&["rotate"]);
    assert!(said.contains("new signing key") && said.contains(&format!("retired {old}")), "{said}");
    // The rotating node signs with the new key at once.
    let keys = published(&s);
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], old);
    let dash = b.follow(b.nav(&s.url(DASH, "/")));
    assert_eq!(dash.last().unwrap().status, 200);
    assert_eq!(kid_of(&b.cookie(&s.url(DASH, "/"), "__Host-outpost-token").unwrap()), keys[0]);
    assert_eq!(b.nav(&s.url(WIKI, "/")).status, 200, "the old token still passes");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&cli(&["list", "--json"])).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().any(|k| k["kid"] == old.as_str() && k["retired_ms"].is_u64()),
        "{listed:?}"
    );
    let (status, body) = s.edge.admin_get("/access/keys").unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains("private"), "{body}");
    s.expect_event("access.keys.rotate", "success", &keys[0]);
    // At rest, the keys (in the embedded store) are readable by the outpost user only.
    use std::os::unix::fs::PermissionsExt as _;
    let data = s.edge.dir.0.join("data");
    for f in ["outpost.db", "outpost.db-wal"] {
        let mode = std::fs::metadata(data.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    assert!(!s.edge.log().contains("private_pkcs8"), "a key record is in the log");
}

/// A store of the test's own with one given key record in it (to sign with a key as it was).
struct TestStore {
    store: outpost_store::Store,
    _dir: TempDir,
}

impl TestStore {
    fn with_key(record: &serde_json::Value) -> TestStore {
        let dir = TempDir::new("key-store");
        let store = outpost_store::Store::open(&Default::default(), &dir.0).unwrap();
        let kid = record["kid"].as_str().unwrap().to_owned();
        block_on(store.put("access.keys", &kid, &state::encode(record), None)).unwrap();
        TestStore { store, _dir: dir }
    }
}
