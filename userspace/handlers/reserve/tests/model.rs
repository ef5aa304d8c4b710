//! The reservation model straight on the store (no edge), on SQLite and on one PostgreSQL
//! shared by two stores (two nodes): a token confirms once however many clicks race; an
//! expiry is reported by exactly one node; a resend cannot pass the hourly bound under races.

use std::{sync::Arc, time::Duration};

use outpost_reserve::{
    email::Email,
    model::{Confirmed, Reservations, Reserved},
    names::Name,
    secret::{hex, Secret},
};
use outpost_store::{
    testing::{TempDir, TestPostgres},
    Store, StoreConfig,
};

const ZONE: &str = "workers.example.test";

fn secret() -> Arc<Secret> {
    Arc::new(Secret::from_bytes(b"model test secret, shared by both nodes"))
}

fn res(store: &Store, hold: Duration, mails_per_hour: u32) -> Reservations {
    Reservations { store: store.clone(), hold, mails_per_hour }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Reserves and returns the confirm token, read back from the outbox row as the sender would.
async fn reserve_and_token(r: &Reservations, s: &Secret, name: &str, email: &str) -> String {
    let n = Name::parse(name, ZONE).unwrap();
    let e = Email::parse(email).unwrap();
    let got = r.reserve(s, &n, &e).await.unwrap();
    assert!(matches!(got, Reserved::Pending { .. } | Reserved::Resent { .. }), "{got:?}");
    // The newest mail row for this name.
    let items =
        r.store.claim("reserve.mail", "model-test", 1000, Duration::from_secs(60)).await.unwrap();
    let job = items
        .iter()
        .rev()
        .map(|i| serde_json::from_slice::<outpost_reserve::model::MailJob>(&i.payload).unwrap())
        .find(|j| j.name == n.as_str())
        .expect("a mail row for the reservation");
    for i in items {
        r.store.complete(i.id, "model-test").await.unwrap();
    }
    hex(&s.open(&job.sealed, &job.name).expect("sealed with this secret"))
}

async fn racing_confirms(a: &Reservations, b: &Reservations, s: &Secret) {
    let token = reserve_and_token(a, s, "clicky", "clicky@example.com").await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (r, t) = (if i % 2 == 0 { a.clone() } else { b.clone() }, token.clone());
        set.spawn(async move { r.confirm(&t).await.unwrap() });
    }
    let mut confirmed = 0;
    let mut already = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Confirmed::Confirmed { .. } => confirmed += 1,
            Confirmed::AlreadyConfirmed { .. } => already += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((confirmed, already), (1, 49), "one click confirms, the others see it done");
    let held = a.holder("clicky").await.unwrap().unwrap();
    assert_eq!(held.state, outpost_reserve::model::State::Confirmed);
    // A forged token of the right shape.
    assert_eq!(a.confirm(&"cd".repeat(32)).await.unwrap(), Confirmed::Invalid);
}

async fn one_expiry_report(a: &Reservations, b: &Reservations, s: &Secret) {
    for i in 0..20 {
        reserve_and_token(a, s, &format!("short-{i}"), &format!("short{i}@example.com")).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (x, y) = tokio::join!(a.sweep_expired(100), b.sweep_expired(100));
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut names: Vec<String> = x.iter().chain(y.iter()).map(|e| e.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(x.len() + y.len(), 20, "every expiry reported once: {x:?} {y:?}");
    assert_eq!(names.len(), 20);
    assert!(a.sweep_expired(100).await.unwrap().is_empty(), "and never again");
    assert!(a.holder("short-3").await.unwrap().is_none(), "freed");
}

async fn racing_resends(a: &Reservations, b: &Reservations, s: &Secret) {
    let n = Name::parse("resend", ZONE).unwrap();
    let e = Email::parse("resend@example.com").unwrap();
    assert!(matches!(a.reserve(s, &n, &e).await.unwrap(), Reserved::Pending { .. }));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (r, s, n, e) =
            (if i % 2 == 0 { a.clone() } else { b.clone() }, secret(), n.clone(), e.clone());
        set.spawn(async move { r.reserve(&s, &n, &e).await.unwrap() });
    }
    let mut resent = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Reserved::Resent { .. } => resent += 1,
            Reserved::MailLimit { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resent, 3, "4 mails an hour: the first and 3 resends, whatever the races");
}

#[test]
fn sqlite_model() {
    let dir = TempDir::new("reserve-model");
    let store = Store::open(&StoreConfig::default(), dir.path()).unwrap();
    let s = secret();
    let a = res(&store, Duration::from_secs(3600), 4);
    let short = res(&store, Duration::from_secs(1), 4);
    let rt = rt();
    rt.block_on(racing_confirms(&a, &a, &s));
    rt.block_on(one_expiry_report(&short, &short, &s));
    rt.block_on(racing_resends(&a, &a, &s));
    store.shutdown();
}

#[test]
fn postgres_model_two_nodes() {
    let pg = TestPostgres::start();
    let cfg = StoreConfig { url: Some(pg.url()), ..StoreConfig::default() };
    let dir = TempDir::new("reserve-model-pg");
    let (sa, sb) = (Store::open(&cfg, dir.path()).unwrap(), Store::open(&cfg, dir.path()).unwrap());
    let s = secret();
    let rt = rt();
    rt.block_on(racing_confirms(
        &res(&sa, Duration::from_secs(3600), 4),
        &res(&sb, Duration::from_secs(3600), 4),
        &s,
    ));
    rt.block_on(one_expiry_report(
        &res(&sa, Duration::from_secs(1), 4),
        &res(&sb, Duration::from_secs(1), 4),
        &s,
    ));
    rt.block_on(racing_resends(
        &res(&sa, Duration::from_secs(3600), 4),
        &res(&sb, Duration::from_secs(3600), 4),
        &s,
    ));
    sa.shutdown();
    sb.shutdown();
}
