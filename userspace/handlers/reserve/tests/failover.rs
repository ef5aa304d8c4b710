//! Two edge nodes on a primary and a synchronous standby (a multi-host `[store] url`): the
//! primary is SIGKILLed while both nodes take reservations, the standby is promoted. The nodes
//! serve again within 5 s of the promotion with no restart; meanwhile what needs the store gets
//! a 503 JSON answer within `timeout_ms` and the page that does not keeps serving; afterwards
//! every acknowledged reservation is held, by its own email only, and every one got its mail.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use outpost_store::testing::Replicated;
use support::*;

/// `[store] timeout_ms` of both nodes.
const TIMEOUT: Duration = Duration::from_millis(1000);
/// Beyond `timeout_ms` for a whole request: a fresh TLS connection to an unoptimized build on
/// a busy machine. Far below what an unbounded wait on a dead server takes (minutes).
const MARGIN: Duration = Duration::from_millis(1500);

/// One request as a load task saw it.
#[derive(Debug)]
struct Attempt {
    node: usize,
    started: Instant,
    took: Duration,
    status: u16,
}

#[derive(Debug, Default)]
struct Seen {
    attempts: Vec<Attempt>,
    /// (name, email) the edge acknowledged: 201, or 429 `mail_limit` (that email holds it).
    held: Vec<(String, String)>,
    /// Names refused as taken.
    refused: Vec<String>,
}

/// Task `t` reserves `f<t/2>-<seq>` on node `t % 2` for its own email, racing task `t ^ 1` on
/// the other node for the same name; a 503 is retried (same name, same email) until the edge
/// gives a definite answer.
async fn reserver(
    clients: [Client; 2],
    t: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let node = t % 2;
    let mut seq = 0u64;
    'names: while !*stop.borrow() {
        seq += 1;
        let name = format!("f{}-{seq}", t / 2);
        let email = format!("t{t}-{seq}@example.com");
        loop {
            let started = Instant::now();
            let r = clients[node]
                .reserve(&name, &email)
                .await
                .unwrap_or_else(|e| panic!("reserve {name} for {email} on node {node}: {e}"));
            seen.attempts.push(Attempt {
                node,
                started,
                took: started.elapsed(),
                status: r.status,
            });
            let code = r.json()["code"].as_str().unwrap_or("").to_owned();
            match (r.status, code.as_str()) {
                (201, _) | (429, "mail_limit") => seen.held.push((name.clone(), email.clone())),
                (409, "name_taken") => seen.refused.push(name.clone()),
                (503, "unavailable") => {
                    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                    if *stop.borrow() {
                        break 'names;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                _ => panic!("reserve {name} for {email} on node {node}: {} {}", r.status, r.body),
            }
            break;
        }
    }
    seen
}

#[test]
fn two_nodes_carry_on_through_a_failover() {
    let pair = Replicated::start();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-failover");
    let secret = secret_file(&dir);
    let store = |node: &str| {
        format!(
            "node = \"{node}\"\n[store]\nurl = \"{}\"\ntimeout_ms = {}\nconnect_timeout_ms = 1000\n",
            pair.url(),
            TIMEOUT.as_millis()
        )
    };
    let edges = [
        start_edge(smtp.port, &secret, NO_LIMITS, &store("a")),
        start_edge(smtp.port, &secret, NO_LIMITS, &store("b")),
    ];
    let clients = [Client::new(edges[0].https), Client::new(edges[1].https)];
    let rt = runtime();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> =
        (0..6).map(|t| rt.spawn(reserver(clients.clone(), t, stopped.clone()))).collect();
    std::thread::sleep(Duration::from_millis(2000));
    pair.primary.kill();
    let down = Instant::now();
    // The outage: the store's routes answer 503 JSON, the page that needs no store serves.
    std::thread::sleep(Duration::from_millis(500));
    for (i, c) in clients.iter().enumerate() {
        let started = Instant::now();
        let r = rt.block_on(c.get("/")).expect("GET / during the outage");
        assert_eq!(r.status, 200, "node {i}: the form during the outage: {}", r.body);
        let r = rt.block_on(c.get("/api/availability?name=outage")).expect("availability");
        let took = started.elapsed();
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (503, Some("unavailable")),
            "node {i}: availability during the outage: {}",
            r.body
        );
        assert!(took <= TIMEOUT + MARGIN, "node {i}: answered after {took:?}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let promoting = Instant::now();
    pair.promote_standby();
    // Each node serves a new reservation within 5 s of the promotion.
    let mut back = [Duration::ZERO; 2];
    for (i, c) in clients.iter().enumerate() {
        back[i] = loop {
            let r = rt.block_on(c.reserve(&format!("probe{i}"), &format!("probe{i}@example.com")));
            let r = r.expect("probe");
            if r.status == 201 {
                break promoting.elapsed();
            }
            assert_eq!(r.status, 503, "node {i}: probe: {}", r.body);
            assert!(
                promoting.elapsed() < Duration::from_secs(5),
                "node {i} did not serve within 5 s of the promotion: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(20));
        };
    }
    let recovered = promoting + back[0].max(back[1]);
    std::thread::sleep(Duration::from_millis(2000));
    stop.send(true).unwrap();
    let seen: Vec<Seen> = tasks
        .into_iter()
        .map(|t| {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await })
                .expect("a load task did not stop within 30 s")
                .expect("load task")
        })
        .collect();
    let attempts: Vec<&Attempt> = seen.iter().flat_map(|s| &s.attempts).collect();

    let slowest = attempts.iter().map(|a| a.took).max().expect("attempts");
    assert!(slowest <= TIMEOUT + MARGIN, "a request took {slowest:?} (timeout_ms {TIMEOUT:?})");
    let outage: Vec<_> =
        attempts.iter().filter(|a| a.started > down && a.started + a.took < promoting).collect();
    assert!(outage.len() > 10, "only {} requests during the outage", outage.len());
    let served: Vec<_> = outage.iter().filter(|a| a.status != 503).collect();
    assert!(served.is_empty(), "answered with no primary: {served:?}");
    for node in 0..2 {
        let after = attempts
            .iter()
            .filter(|a| a.node == node && a.started > recovered + Duration::from_millis(300))
            .collect::<Vec<_>>();
        let failed: Vec<_> = after.iter().filter(|a| a.status == 503).collect();
        assert!(after.len() > 10, "node {node}: {} requests after recovery", after.len());
        assert!(failed.is_empty(), "node {node}: 503 after recovery: {failed:?}");
    }

    // The new primary holds every acknowledged reservation for its own email; no name has two.
    let rows = pair.standby.psql(
        "outpost",
        "SELECT key, convert_from(value, 'UTF8') FROM kv WHERE ns = 'reserve.name'",
    );
    let holders: BTreeMap<&str, String> = rows
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('|').unwrap_or_else(|| panic!("not key|value: {l:?}"));
            let row: serde_json::Value = serde_json::from_str(v).expect("name row is JSON");
            (k, row["email"].as_str().expect("email").to_owned())
        })
        .collect();
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, email) in seen.iter().flat_map(|s| &s.held) {
        by_name.entry(name).or_default().insert(email);
        assert_eq!(
            holders.get(name.as_str()),
            Some(email),
            "acknowledged reservation of {name} for {email} is not on the new primary"
        );
    }
    let twice: Vec<_> = by_name.iter().filter(|(_, e)| e.len() > 1).collect();
    assert!(twice.is_empty(), "names acknowledged to two emails: {twice:?}");
    // Every acknowledged reservation gets its mail, sent after the failover if need be.
    let held: Vec<&(String, String)> = seen.iter().flat_map(|s| &s.held).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let to: Vec<String> = smtp
            .mails()
            .iter()
            .filter_map(|m| m.lines().find(|l| l.starts_with("To: ")).map(str::to_owned))
            .collect();
        let mailed = |email: &str| to.iter().any(|l| l.contains(email));
        let missing: Vec<_> = held.iter().filter(|(_, e)| !mailed(e)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged reservations got no mail within 30 s, e.g. {:?}",
            missing.len(),
            held.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused: usize = seen.iter().map(|s| s.refused.len()).sum();
    assert!(held.len() > 20 && refused > 0, "{} held, {refused} refused", held.len());
    eprintln!(
        "reserve failover: {} requests, {} during the outage (all 503), nodes back {:?} and \
         {:?} after the promotion began; slowest {slowest:?}; {} reservations acknowledged \
         ({refused} refused as taken), all held and mailed",
        attempts.len(),
        outage.len(),
        back[0],
        back[1],
        held.len(),
    );
}
