//! Revocation: a logout refuses the old app token, `outpost access revoke --user` and
//! `--session` (through the CLI binary) refuse every token of the user or the session. On one
//! node with the embedded store; and a node cut off from its PostgreSQL, which keeps honouring
//! tokens until their expiry, says so, and applies what it missed once it is back.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use outpost_store::testing::TestPostgres;
use support::*;

const TOKEN: &str = "__Host-outpost-token";

/// Logs `user` in with a browser of its own; that browser and its app token for the wiki.
fn logged_in(s: &Setup, user: &str) -> (Browser, String) {
    let b = s.browser();
    let hops = b.login(&s.url(WIKI, "/"), user);
    assert_eq!(hops.last().unwrap().status, 200, "{}", hops.last().unwrap().body);
    let token = b.cookie(&s.url(WIKI, "/"), TOKEN).expect("an app token after the login");
    (b, token)
}

/// Asserts that `token` reaches the origin as `user`, through a browser that has nothing else.
fn assert_accepted(s: &Setup, token: &str, user: &str) {
    let (nav, api) = present_token(&s.browser(), &s.url(WIKI, "/page"), token);
    assert_eq!((nav.status, api.status), (200, 200), "{}\n{}", nav.body, api.body);
    assert_eq!(nav.echoed("Outpost-Access-Authenticated-User-Email").as_deref(), Some(user));
}

#[test]
fn revocation_on_one_sqlite_node() {
    let s = Setup::start("");
    let page = s.url(WIKI, "/page");
    let admin = format!("127.0.0.1:{}", s.edge.admin);

    // Logout: the token it was signed in with is refused at once, though it has not expired.
    let (alice, old) = logged_in(&s, "alice@example.test");
    assert_accepted(&s, &old, "alice@example.test");
    let out = alice.follow(alice.nav(&s.url(WIKI, "/.outpost/logout")));
    assert_eq!(out.last().unwrap().status, 200, "{}", out.last().unwrap().body);
    let (nav, api) = present_token(&s.browser(), &page, &old);
    assert!(
        refused(&nav, &api),
        "old token after logout: {} {}\n{}",
        nav.status,
        api.status,
        nav.body
    );
    s.expect_event("access.request", "denied", "session revoked");
    let m = s.edge.metrics();
    assert!(m.contains("outpost_access_revocations_stale 0"), "{m}");
    assert!(s.edge.metric("outpost_access_revoked_tokens_total") >= 1, "{m}");

    // revoke --user through the CLI (the edge's admin listener): every token of the user,
    // from every session, at once; other users untouched.
    let (_a1, t1) = logged_in(&s, "alice@example.test");
    let (_a2, t2) = logged_in(&s, "alice@example.test");
    let (_bob, bob) = logged_in(&s, "bob@example.test");
    for t in [&t1, &t2] {
        assert_accepted(&s, t, "alice@example.test");
    }
    // The admin token from an explicit file this time (`--admin-token-file`).
    let token = s.edge.admin_token_file();
    let said = outpost_cli(&[
        "access",
        "revoke",
        "--user",
        "alice@example.test",
        "--admin",
        &admin,
        "--admin-token-file",
        token.to_str().unwrap(),
    ]);
    assert!(said.contains("revoked alice@example.test: 2 session(s) ended"), "{said}");
    for t in [&t1, &t2] {
        let (nav, api) = present_token(&s.browser(), &page, t);
        assert!(
            refused(&nav, &api),
            "after revoke --user: {} {}\n{}",
            nav.status,
            api.status,
            nav.body
        );
    }
    assert_accepted(&s, &bob, "bob@example.test");
    let events = s.expect_event("access.revoke", "success", "revoked alice@example.test");
    let e = events.iter().find(|e| e["user"] == "alice@example.test").expect("the user");
    assert!(e["node"].as_str().is_some_and(|n| !n.is_empty()), "{e}");
    // Alice can sign in again afterwards (tokens issued within the second of the revocation
    // count as issued before it).
    thread::sleep(Duration::from_millis(1100));
    let (_a3, t3) = logged_in(&s, "alice@example.test");
    assert_accepted(&s, &t3, "alice@example.test");

    // revoke --session straight on the store (no edge answers at --admin): the running edge
    // reads it from the data directory it holds within 2 s.
    let sid = claims_of(&bob)["sid"].as_str().unwrap().to_owned();
    let config = s.edge.dir.0.join("outpost.toml");
    let said = outpost_cli(&[
        "access",
        "revoke",
        "--session",
        &sid,
        "--admin",
        "127.0.0.1:1",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(said.contains("of bob@example.test"), "{said}");
    let took = wait_refused(&s.browser(), &page, &bob, Duration::from_secs(2));
    eprintln!("revoke --session on the store: refused after {took:?}");
    assert_accepted(&s, &t3, "alice@example.test");
}

/// A TCP forwarder to a local port that the test can cut (every connection reset, new ones
/// closed at once) and restore: a network partition between one node and its database.
struct Cut {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cut {
    fn to(target: u16) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                {
                    let mut c = c.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Cut { port, up, conns }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Waits up to `limit` for `/metrics` to contain `line`.
fn wait_metric(s: &Setup, line: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let m = s.edge.metrics();
        if m.lines().any(|l| l == line) {
            return;
        }
        assert!(started.elapsed() < limit, "no {line:?} in /metrics after {limit:?}:\n{m}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_cut_off_from_the_store_catches_up() {
    let pg = TestPostgres::start();
    let cut = Cut::to(pg.port());
    let url = pg.url().replace(&format!(":{}/", pg.port()), &format!(":{}/", cut.port));
    let s = Setup::start_with("", Some(&url));
    let page = s.url(WIKI, "/page");
    let (_alice, token) = logged_in(&s, "alice@example.test");
    assert_accepted(&s, &token, "alice@example.test");
    wait_metric(&s, "outpost_access_revocations_stale 0", Duration::from_secs(3));

    // Cut off: the node says so, and honours the token it knows (until its expiry).
    cut.down();
    wait_metric(&s, "outpost_access_revocations_stale 1", Duration::from_secs(10));
    assert!(s.edge.log().contains("revocations cannot be read from the store"), "{}", s.edge.log());
    assert!(s.edge.metric("outpost_access_revocation_read_failures_total") >= 1);
    // Another node (here the test, on the same database) revokes alice meanwhile.
    let (store, _dir) = store(&pg.url());
    let n = block_on(outpost_access::revocation::revoke_user(
        &store,
        None,
        "alice@example.test",
        "elsewhere",
        &outpost_access::revocation::Lifetimes::default(),
    ))
    .expect("revoking on the database");
    assert_eq!(n, 1, "alice's one session");
    assert_accepted(&s, &token, "alice@example.test");

    // Back: the missed revocation applies at once.
    cut.restore();
    let took = wait_refused(&s.browser(), &page, &token, Duration::from_secs(8));
    eprintln!("refused {took:?} after the store came back");
    wait_metric(&s, "outpost_access_revocations_stale 0", Duration::from_secs(3));
    assert!(s.edge.log().contains("store reachable again"), "{}", s.edge.log());
    store.shutdown();
}
