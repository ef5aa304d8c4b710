//! Races the store must win: many concurrent takes of one key, many concurrent unique inserts,
//! several outbox workers on one outbox. On PostgreSQL, two Store instances stand for two edge
//! nodes sharing the database. (Two processes on one SQLite directory are refused by its lock:
//! see `faults.rs`.)

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::Harness;
use outpost_store::{spawn_outbox_worker, Inserted, Store};
use tokio::sync::Barrier;

/// `per_store` concurrent calls of `f` on each store, released together by a barrier.
async fn race<T, F, Fut>(stores: &[Store], per_store: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Store, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(stores.len() * per_store));
    let mut set = tokio::task::JoinSet::new();
    for (n, store) in stores.iter().enumerate() {
        for i in 0..per_store {
            let (barrier, fut) = (barrier.clone(), f(store.clone(), n * per_store + i));
            set.spawn(async move {
                barrier.wait().await;
                fut.await
            });
        }
    }
    let mut out = Vec::with_capacity(stores.len() * per_store);
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task panicked"));
    }
    out
}

async fn takes_exactly_once(stores: &[Store], per_store: usize, what: &str) {
    for round in 0..3 {
        let key = format!("nonce-{round}");
        stores[0].put("login", &key, b"secret", Some(Duration::from_secs(60))).await.expect("put");
        let results = race(stores, per_store, |s, _| {
            let key = key.clone();
            async move { s.take("login", &key).await }
        })
        .await;
        let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(errors.is_empty(), "{what}: takes failed: {errors:?}");
        let winners = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert_eq!(
            winners,
            1,
            "{what} round {round}: {winners} of {} takes got the value",
            results.len()
        );
    }
}

async fn inserts_exactly_once(stores: &[Store], per_store: usize, what: &str) {
    let results = race(stores, per_store, |s, i| async move {
        let value = format!("caller-{i}");
        (value.clone(), s.insert("reserve", "blue.example", value.as_bytes(), None).await)
    })
    .await;
    let winners: Vec<&String> =
        results.iter().filter(|(_, r)| r == &Ok(Inserted::Done)).map(|(v, _)| v).collect();
    assert_eq!(winners.len(), 1, "{what}: {} inserts won: {winners:?}", winners.len());
    for (v, r) in &results {
        match r {
            Ok(Inserted::Done) => {}
            Ok(Inserted::Conflict { existing }) => {
                assert_eq!(
                    existing,
                    winners[0].as_bytes(),
                    "{what}: {v} saw a conflict with a loser"
                )
            }
            Err(e) => panic!("{what}: insert by {v} failed: {e}"),
        }
    }
    let held = stores[0].get("reserve", "blue.example").await.expect("get");
    assert_eq!(held.as_deref(), Some(winners[0].as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_1000_takes_one_winner() {
    let h = Harness::sqlite();
    takes_exactly_once(&[h.open()], 1000, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_1000_inserts_one_winner() {
    let h = Harness::sqlite();
    inserts_exactly_once(&[h.open()], 1000, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_500_takes_each_one_winner() {
    let h = Harness::postgres("takes");
    takes_exactly_once(&[h.open(), h.open()], 500, "postgres, 2 nodes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_1000_inserts_one_winner() {
    let h = Harness::postgres("inserts");
    inserts_exactly_once(&[h.open(), h.open()], 500, "postgres, 2 nodes").await;
}

/// Who holds each row while `deliver` runs, and every violation seen.
#[derive(Default)]
struct Holders {
    now: HashMap<i64, String>,
    delivered: HashMap<i64, u32>,
    both: Vec<String>,
}

/// `workers` outbox workers (spread over `stores`) drain `rows` rows; no row is ever held by
/// two at once, and every row is delivered and done.
async fn workers_share_an_outbox(stores: &[Store], workers: usize, rows: usize, what: &str) {
    for i in 0..rows {
        stores[i % stores.len()]
            .enqueue("mail", format!("m{i}").as_bytes())
            .await
            .expect("enqueue");
    }
    let holders = Arc::new(Mutex::new(Holders::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for w in 0..workers {
        let owner = format!("node{}-w{w}", w % stores.len());
        let holders = holders.clone();
        let me = owner.clone();
        let deliver = move |item: outpost_store::OutboxItem| {
            let (holders, me) = (holders.clone(), me.clone());
            async move {
                {
                    let mut h = holders.lock().unwrap();
                    if let Some(other) = h.now.insert(item.id, me.clone()) {
                        h.both.push(format!("row {} held by {other} and {me}", item.id));
                    }
                }
                // Deliveries take a little while, so claims overlap them.
                tokio::time::sleep(Duration::from_millis(1 + (item.id % 5) as u64)).await;
                let mut h = holders.lock().unwrap();
                h.now.remove(&item.id);
                *h.delivered.entry(item.id).or_default() += 1;
                // One in seven fails once: retried later, by whichever worker claims it.
                if item.id % 7 == 0 && item.attempts == 0 {
                    return Err("smtp 451 try later".to_owned());
                }
                Ok(())
            }
        };
        handles.push(spawn_outbox_worker(
            &stores[w % stores.len()],
            "mail",
            owner,
            deliver,
            stopped.clone(),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = stores[0].outbox_stats().await.expect("stats");
        if stats.pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} rows still pending after 60 s",
            stats.pending
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop workers");
    for h in handles {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .unwrap_or_else(|_| panic!("{what}: a worker did not stop"))
            .expect("worker panicked");
    }
    let h = holders.lock().unwrap();
    assert!(h.both.is_empty(), "{what}: rows held twice at once: {:?}", h.both);
    assert_eq!(h.delivered.len(), rows, "{what}: rows delivered");
    let retried = h.delivered.values().filter(|n| **n > 1).count();
    assert_eq!(retried, h.delivered.keys().filter(|id| *id % 7 == 0).count(), "{what}: retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_outbox_workers_never_share_a_row() {
    let h = Harness::postgres("outbox");
    workers_share_an_outbox(&[h.open(), h.open()], 4, 300, "postgres, 2 nodes x 2 workers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_workers_never_share_a_row() {
    let h = Harness::sqlite();
    workers_share_an_outbox(&[h.open()], 3, 300, "sqlite, 3 workers").await;
}

#[test]
fn postgres_nodes_starting_at_once_migrate_once() {
    let h = Harness::postgres("migrate");
    // Eight nodes open a fresh database at the same moment: the migration lock lets one
    // create the schema; the others wait, then find it current.
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|scope| {
        let opened: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    Store::open(&h.cfg(), h.dir.path())
                })
            })
            .collect();
        for t in opened {
            if let Err(e) = t.join().expect("open thread") {
                panic!("a node starting beside others failed: {e}");
            }
        }
    });
    let applied = h.scalar("SELECT count(*) FROM schema_version");
    assert_eq!(applied, outpost_store::SCHEMA_VERSION, "each migration recorded once");
}

/// Hot keys in mixed batches: each caller inserts its own value under one of a few keys and,
/// when that insert is Done, takes the key back. Nobody else takes a key they did not win, so
/// the take must return exactly the caller's own value; an insert that conflicts must report
/// a value some other caller inserted. Many callers at once put inserts and takes of the same
/// key into one batch (PostgreSQL) or one group commit (SQLite).
async fn hot_keys_insert_then_take(store: Store, what: &str) {
    let results = race(std::slice::from_ref(&store), 200, |s, i| async move {
        let mut wins = 0;
        for n in 0..20 {
            let key = format!("hot-{}", (i + n) % 16);
            let me = format!("caller-{i}-{n}");
            match s.insert("hot", &key, me.as_bytes(), None).await {
                Ok(Inserted::Done) => {
                    wins += 1;
                    let got = s.take("hot", &key).await;
                    if got != Ok(Some(me.clone().into_bytes())) {
                        return Err(format!("{me} won {key} but took back {got:?}"));
                    }
                }
                Ok(Inserted::Conflict { existing }) => {
                    if !existing.starts_with(b"caller-") || existing == me.as_bytes() {
                        return Err(format!("{me}: conflict with {existing:?}"));
                    }
                }
                Err(e) => return Err(format!("{me}: {e}")),
            }
        }
        Ok(wins)
    })
    .await;
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{what}: {} failures, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let wins: usize = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    assert!(wins > 0, "{what}: nobody ever won a key");
    let mean = store.metrics().commit_batch_mean().unwrap_or(0.0);
    eprintln!("{what}: {wins} wins of 4000 inserts, {mean:.1} requests per commit");
    assert!(mean > 1.5, "{what}: writes were not grouped ({mean:.1} per commit)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hot_keys_insert_then_take() {
    let h = Harness::sqlite();
    hot_keys_insert_then_take(h.open(), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hot_keys_insert_then_take() {
    let h = Harness::postgres("hot");
    // A small pool, so writes queue and batches form.
    let store = h.open_with(outpost_store::StoreConfig { pool_size: 4, ..h.cfg() });
    hot_keys_insert_then_take(store, "postgres").await;
}
