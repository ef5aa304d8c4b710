//! One name, many people; one email, many names: 1,000 concurrent reservations through the
//! real edge (TLS, io_uring), on the embedded store, on PostgreSQL, and with two edge nodes
//! sharing one PostgreSQL. The store decides; exactly one reservation wins.

mod support;

use outpost_store::testing::TestPostgres;
use support::*;

const N: usize = 1000;

/// `[store]` for PostgreSQL. The bound on one operation is raised from 2 s: 1,000 transactions
/// arrive at once on a 16-connection pool of an unoptimized build, and this test is about who
/// wins, not about latency (the bench reports that).
fn pg_store(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\ntimeout_ms = 30000\n")
}

fn embedded_store() -> String {
    "[store]\ntimeout_ms = 30000\n".into()
}

/// Asserts exactly one 201 and N-1 409s, and that the store holds the name for the winner.
fn one_winner(statuses: &[u16], what: &str) {
    let created = count(statuses, 201);
    let conflict = count(statuses, 409);
    let other: Vec<_> = statuses.iter().filter(|s| **s != 201 && **s != 409).collect();
    assert_eq!(
        (created, conflict),
        (1, N - 1),
        "{what}: wanted one 201 and {} 409s; other statuses: {other:?}",
        N - 1
    );
}

fn one_name_many_people(edges: &[&Outpost], tag: &str) {
    let clients: Vec<Client> = edges.iter().map(|e| Client::new(e.https)).collect();
    // Across nodes: request i goes to node i % nodes.
    let rt = runtime();
    let statuses = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let c = clients[i % clients.len()].clone();
            set.spawn(async move {
                (i, c.reserve("contended", &format!("person{i}@example.com")).await)
            });
        }
        let mut out = vec![0; N];
        while let Some(r) = set.join_next().await {
            let (i, r) = r.unwrap();
            out[i] = r.unwrap_or_else(|e| panic!("request {i}: {e}")).status;
        }
        out
    });
    one_winner(&statuses, tag);
    // Every node agrees on the one holder.
    let winner = statuses.iter().position(|s| *s == 201).unwrap();
    for c in &clients {
        let r = rt.block_on(c.get("/api/availability?name=contended")).unwrap();
        assert_eq!(r.json()["available"], false, "{}", r.body);
        assert_eq!(r.json()["reason"], "taken", "{}", r.body);
    }
    // The winner's repeat is idempotent (201, mail again); a loser's repeat still 409.
    let r = rt
        .block_on(clients[0].reserve("contended", &format!("person{winner}@example.com")))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let loser = (winner + 1) % N;
    let r = rt
        .block_on(clients[0].reserve("contended", &format!("person{loser}@example.com")))
        .unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("name_taken")), "{}", r.body);
    assert!(!r.body.contains(&format!("person{winner}@")), "never another's email: {}", r.body);
}

fn one_email_many_names(edge: &Outpost, tag: &str) {
    let c = Client::new(edge.https);
    let statuses = concurrent(&c, N, |i| (format!("name-{i}"), "solo@example.com".into()));
    one_winner(&statuses, tag);
    let rt = runtime();
    let winner = statuses.iter().position(|s| *s == 201).unwrap();
    let loser = (winner + 1) % N;
    let r = rt.block_on(c.reserve(&format!("name-{loser}"), "solo@example.com")).unwrap();
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("email_taken")), "{}", r.body);
    // The losers' names were never written.
    let r = rt.block_on(c.get(&format!("/api/availability?name=name-{loser}"))).unwrap();
    assert_eq!(r.json()["available"], true, "{}", r.body);
}

#[test]
fn one_name_many_people_embedded() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-c1");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, &embedded_store());
    one_name_many_people(&[&edge], "embedded");
}

#[test]
fn one_email_many_names_embedded() {
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-c2");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, &embedded_store());
    one_email_many_names(&edge, "embedded");
}

#[test]
fn one_name_many_people_postgres() {
    let pg = TestPostgres::start();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-c3");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, &pg_store(&pg.url()));
    one_name_many_people(&[&edge], "postgres");
}

#[test]
fn one_email_many_names_postgres() {
    let pg = TestPostgres::start();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-c4");
    let edge = start_edge(smtp.port, &secret_file(&dir), NO_LIMITS, &pg_store(&pg.url()));
    one_email_many_names(&edge, "postgres");
}

#[test]
fn one_name_many_people_two_nodes_one_postgres() {
    let pg = TestPostgres::start();
    let smtp = Smtp::start();
    let dir = TempDir::new("reserve-c5");
    let secret = secret_file(&dir);
    let a = start_edge(
        smtp.port,
        &secret,
        NO_LIMITS,
        &format!("node = \"a\"\n{}", pg_store(&pg.url())),
    );
    let b = start_edge(
        smtp.port,
        &secret,
        NO_LIMITS,
        &format!("node = \"b\"\n{}", pg_store(&pg.url())),
    );
    one_name_many_people(&[&a, &b], "two nodes");
    // And one email across both nodes: distinct names, alternating nodes, one winner.
    let (ca, cb) = (Client::new(a.https), Client::new(b.https));
    let rt = runtime();
    let statuses = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            set.spawn(async move {
                c.reserve(&format!("both-{i}"), "both@example.com").await.unwrap().status
            });
        }
        let mut v = Vec::new();
        while let Some(s) = set.join_next().await {
            v.push(s.unwrap());
        }
        v
    });
    one_winner(&statuses, "one email, two nodes");
}
