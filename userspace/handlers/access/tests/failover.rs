//! Two edge nodes on a primary and a synchronous standby (a multi-host `[store] url`), logins
//! running on both while the primary is SIGKILLed and the standby promoted. Both nodes sign
//! people in again within 5 s of the promotion, with no restart; meanwhile a login gets a 503
//! within `timeout_ms` and routes that need no store keep serving; and no login state or
//! one-time code that was used before, during or after the failover is accepted a second time,
//! on either node.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use outpost_store::testing::Replicated;
use reqwest::cookie::Jar;
use support::*;

/// `[store] timeout_ms` of both nodes.
const TIMEOUT: Duration = Duration::from_millis(1000);
/// Beyond `timeout_ms` for one request: a fresh connection to an unoptimized build on a busy
/// machine. Far below what an unbounded wait on a dead server takes (minutes).
const MARGIN: Duration = Duration::from_millis(1500);

/// One request to an edge that needs the store (starting the login, the callback, redeeming
/// the code).
#[derive(Debug)]
struct Hit {
    started: Instant,
    took: Duration,
    status: u16,
}

/// A login that went through: its callback URL (the state, used) and its one-time code URL.
#[derive(Debug)]
struct Used {
    callback: String,
    code: String,
}

#[derive(Debug, Default)]
struct Seen {
    hits: Vec<Hit>,
    used: Vec<Used>,
}

/// `url` with its port replaced: the same request to the other node.
fn on_port(url: &str, port: u16) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

/// One login on the edge at `port` with a browser of its own; None when the edge answered
/// 503 at some step (the store was unavailable). Every other answer is checked.
fn login(port: u16, n: usize, seen: &mut Seen) -> Option<Used> {
    let b = Browser::at([127, 0, 0, 1], port, Arc::new(Jar::default()));
    let timed = |seen: &mut Seen, f: &dyn Fn() -> Resp| {
        let started = Instant::now();
        let r = f();
        seen.hits.push(Hit { started, took: started.elapsed(), status: r.status });
        r
    };
    let app = format!("https://{WIKI}:{port}/n{n}");
    // The redirect to the login page and the page itself need no store.
    let first = b.nav(&app);
    assert_eq!(first.status, 302, "{app} without a token: {}", first.body);
    let page = b.follow(first).pop().unwrap();
    assert_eq!(page.status, 200, "the login page: {}", page.body);
    // From here on every step reads or writes the store.
    let to_idp = timed(seen, &|| b.choose_provider(&page));
    if to_idp.status == 503 {
        return None;
    }
    assert_eq!(to_idp.status, 302, "POST /login: {}", to_idp.body);
    let back = b.sign_in_at_idp(to_idp, "alice@example.test");
    let callback = reqwest::Url::parse(&back.url).unwrap().join(&back.location().unwrap());
    let callback = callback.unwrap().to_string();
    let minted = timed(seen, &|| b.nav(&callback));
    if minted.status == 503 {
        return None;
    }
    assert_eq!(minted.status, 302, "callback: {}", minted.body);
    let code = minted.location().unwrap();
    assert!(code.contains("/.outpost/authorized?code="), "{code}");
    let code = reqwest::Url::parse(&callback).unwrap().join(&code).unwrap().to_string();
    let redeemed = timed(seen, &|| b.nav(&code));
    if redeemed.status == 503 {
        // The code may have been taken before the answer was lost: not a use we count.
        return None;
    }
    assert_eq!(redeemed.status, 302, "{code}: {}", redeemed.body);
    let end = b.follow(redeemed).pop().unwrap();
    assert_eq!(end.status, 200, "the app after the login: {}", end.body);
    Some(Used { callback, code })
}

#[test]
fn logins_on_two_nodes_carry_on_through_a_failover() {
    let pair = Replicated::start();
    let ports = [free_port(), free_port()];
    let idp = Idp::start(&[callback(ports[0]), callback(ports[1])]);
    let origin = Origin::start("app");
    let edges: Vec<Outpost> = ports
        .iter()
        .zip(["a", "b"])
        .map(|(&port, node)| {
            let config = format!(
                "node = \"{node}\"\n[store]\nurl = \"{}\"\ntimeout_ms = {}\n\
                 connect_timeout_ms = 1000\n{}",
                pair.url(),
                TIMEOUT.as_millis(),
                edge_config(port, &idp, &origin, "")
            );
            Outpost::start_at(port, "uring", &config, &[], &["--no-xdp"])
        })
        .collect();
    // One browser per node signed in before the outage: its token is checked by signature.
    let before: Vec<Browser> = ports
        .iter()
        .map(|&port| {
            let b = Browser::at([127, 0, 0, 1], port, Arc::new(Jar::default()));
            let hops = b.login(&format!("https://{WIKI}:{port}/before"), "alice@example.test");
            assert_eq!(hops.last().unwrap().status, 200, "{}", hops.last().unwrap().body);
            b
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = ports
        .iter()
        .map(|&port| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut seen = Seen::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match login(port, n, &mut seen) {
                        Some(used) => seen.used.push(used),
                        None => thread::sleep(Duration::from_millis(50)),
                    }
                }
                seen
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(3000));
    pair.primary.kill();
    let down = Instant::now();
    thread::sleep(Duration::from_millis(500));
    // The outage: what needs no store serves.
    for (i, &port) in ports.iter().enumerate() {
        let r = before[i].nav(&format!("https://{WIKI}:{port}/healthz"));
        assert_eq!(r.status, 200, "node {i}: a bypassed path during the outage: {}", r.body);
        let r = before[i].nav(&format!("https://{WIKI}:{port}/during"));
        assert_eq!(r.status, 200, "node {i}: a valid token during the outage: {}", r.body);
    }
    thread::sleep(Duration::from_millis(1500));
    let promoting = Instant::now();
    pair.promote_standby();
    // A login starts again on each node within 5 s of the promotion.
    let mut back = [Duration::ZERO; 2];
    for (i, &port) in ports.iter().enumerate() {
        back[i] = loop {
            let b = Browser::at([127, 0, 0, 1], port, Arc::new(Jar::default()));
            let page = b.follow(b.nav(&format!("https://{WIKI}:{port}/probe"))).pop().unwrap();
            let r = if page.status == 200 { b.choose_provider(&page) } else { page };
            if r.status == 302 {
                break promoting.elapsed();
            }
            assert_eq!(r.status, 503, "node {i}: starting a login: {}", r.body);
            assert!(
                promoting.elapsed() < Duration::from_secs(5),
                "node {i} did not start a login within 5 s of the promotion"
            );
            thread::sleep(Duration::from_millis(20));
        };
    }
    let recovered = promoting + back[0].max(back[1]);
    thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = loops.into_iter().map(|t| t.join().expect("login loop")).collect();
    let hits: Vec<&Hit> = seen.iter().flat_map(|s| &s.hits).collect();

    let slowest = hits.iter().map(|h| h.took).max().expect("hits");
    assert!(slowest <= TIMEOUT + MARGIN, "a request took {slowest:?} (timeout_ms {TIMEOUT:?})");
    let outage: Vec<_> =
        hits.iter().filter(|h| h.started > down && h.started + h.took < promoting).collect();
    assert!(outage.len() > 5, "only {} requests during the outage", outage.len());
    let served: Vec<_> = outage.iter().filter(|h| h.status != 503).collect();
    assert!(served.is_empty(), "login steps answered with no primary: {served:?}");
    for (i, s) in seen.iter().enumerate() {
        let after = s
            .hits
            .iter()
            .filter(|h| h.started > recovered + Duration::from_millis(300))
            .collect::<Vec<_>>();
        let failed: Vec<_> = after.iter().filter(|h| h.status == 503).collect();
        assert!(after.len() > 3, "node {i}: {} requests after recovery", after.len());
        assert!(failed.is_empty(), "node {i}: 503 after recovery: {failed:?}");
        assert!(!s.used.is_empty(), "node {i}: no login went through");
    }

    // Every state and code used once stays used, on the new primary, from either node.
    let used: Vec<&Used> = seen.iter().flat_map(|s| &s.used).collect();
    for u in &used {
        for &port in &ports {
            let b = Browser::at([127, 0, 0, 1], port, Arc::new(Jar::default()));
            let again = b.nav(&on_port(&u.callback, port));
            assert_eq!(again.status, 400, "callback replayed on :{port}: {}", again.body);
            let again = b.nav(&on_port(&u.code, port));
            assert_ne!(again.status, 302, "code redeemed twice on :{port}: {}", u.code);
            assert!(b.cookie(&on_port(&u.code, port), "__Host-outpost-token").is_none());
        }
    }
    eprintln!(
        "access failover: {} login steps, {} during the outage (all 503), nodes back {:?} and \
         {:?} after the promotion began; slowest {slowest:?}; {} logins, each state and code \
         refused when replayed on both nodes",
        hits.len(),
        outage.len(),
        back[0],
        back[1],
        used.len()
    );
    drop(edges);
}
