//! The store is awaited from whatever runtime the caller has: a current-thread tokio runtime
//! with a LocalSet (the proxy's workers), no runtime at all, or several at once. And a
//! shutdown still commits and answers what was queued.

mod common;

use std::{
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
    thread::Thread,
    time::Duration,
};

use common::Harness;
use outpost_store::{Inserted, Op, Store, StoreError, TxnOutcome};

/// The smallest executor: poll, park until woken. No tokio anywhere on this thread.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

async fn exercise(store: &Store, tag: &str) {
    store.put("rt", tag, b"v", Some(Duration::from_secs(60))).await.expect("put");
    assert_eq!(store.get("rt", tag).await, Ok(Some(b"v".to_vec())), "{tag}");
    assert_eq!(
        store.insert("rt", tag, b"w", None).await,
        Ok(Inserted::Conflict { existing: b"v".to_vec() })
    );
    let out = store.txn(vec![Op::Take { ns: "rt".into(), key: tag.into() }]).await.expect("txn");
    assert_eq!(out, TxnOutcome::Committed(vec![Some(b"v".to_vec())]), "{tag}");
    let id = store.enqueue(tag, b"m").await.expect("enqueue");
    let claimed = store.claim(tag, tag, 1, Duration::from_secs(5)).await.expect("claim");
    assert_eq!(claimed.first().map(|i| i.id), Some(id));
}

fn from_any_runtime(h: Harness) {
    let store = h.open();
    // A current-thread runtime with a LocalSet, tasks spawned locally (not Send).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let s = store.clone();
        tokio::task::spawn_local(async move { exercise(&s, "local").await })
            .await
            .expect("local task");
    });
    // No runtime at all.
    block_on(exercise(&store, "bare"));
    // Opened and dropped inside a runtime's async context (SQLite: one open at a time).
    rt.block_on(async {
        drop(store);
        let inner = h.open();
        exercise(&inner, "inside").await;
        drop(inner);
    });
}

#[test]
fn sqlite_from_any_runtime() {
    let h = Harness::sqlite();
    from_any_runtime(h);
}

#[test]
fn postgres_from_any_runtime() {
    from_any_runtime(Harness::postgres("runtimes"));
}

#[test]
fn sqlite_shutdown_commits_what_was_queued() {
    let h = Harness::sqlite();
    let store = h.open();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let (s, answered) = (store.clone(), answered.clone());
            rt.spawn(async move {
                let r = s.put("q", &format!("k{i}"), b"v", None).await;
                answered.fetch_add(1, Ordering::SeqCst);
                (i, r)
            })
        })
        .collect();
    // Once the first write is answered the others are queued or on their way: shut down
    // under them.
    while answered.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    store.shutdown();
    let results: Vec<_> = tasks.into_iter().map(|t| rt.block_on(t).unwrap()).collect();
    for (i, r) in &results {
        assert!(
            matches!(r, Ok(()) | Err(StoreError::Unavailable(_))),
            "put k{i} after shutdown: {r:?}"
        );
    }
    drop(store);
    let store = h.open();
    for (i, r) in &results {
        let got = rt.block_on(store.get("q", &format!("k{i}"))).expect("get");
        if r.is_ok() {
            assert_eq!(got, Some(b"v".to_vec()), "acknowledged k{i} lost by shutdown");
        }
    }
    let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
    assert!(ok > 0, "nothing was acknowledged before the shutdown");
    eprintln!("shutdown: {ok} of 300 puts acknowledged, all present after reopen");
}
