//! The outbox: messages (mail) written in the same store as the state they belong to, handed
//! to a sender at least once.
//!
//! A row is due when not done, `next_at` has passed and no lease is held (or the lease
//! expired). [`Store::claim`] leases due rows to an owner; the owner delivers, then
//! [`Store::complete`]s the row, or [`Store::retry`]s it later. A worker that dies leaves its
//! lease to expire and the row to be claimed again, so delivery is at least once.

use std::{
    future::Future,
    hash::{BuildHasher, Hasher},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinSet};

use crate::{
    ops::{millis, Reply, Request},
    unexpected, Store, StoreError,
};

/// A claimed outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub topic: String,
    pub payload: Vec<u8>,
    /// Failed deliveries so far.
    pub attempts: u32,
    pub created_at: SystemTime,
}

/// What the outbox holds that is not delivered yet.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OutboxStats {
    pub pending: u64,
    /// Age of the oldest row not delivered yet.
    pub oldest_age: Option<Duration>,
}

/// Lease a worker takes on each row it claims: longer than any sane delivery. A delivery still
/// running past it may be repeated by another worker (at least once).
pub const WORKER_LEASE: Duration = Duration::from_secs(60);
/// Rows a worker claims at once; their deliveries run concurrently.
pub const WORKER_BATCH: usize = 16;
/// How long an idle worker waits before looking again (a local enqueue wakes it at once).
pub const WORKER_POLL: Duration = Duration::from_millis(500);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The longest a worker waits before asking a store that failed again: a store that is back
/// (a promoted standby, a restarted primary) is used within this, not after a mail's backoff.
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(4);

impl Store {
    /// Adds a row for `topic`; returns its id.
    pub async fn enqueue(&self, topic: &str, payload: &[u8]) -> Result<i64, StoreError> {
        let req = Request::Enqueue { topic: topic.into(), payload: payload.to_vec() };
        match self.call(req).await? {
            Reply::Id(id) => Ok(id),
            r => Err(unexpected(r)),
        }
    }

    /// Leases up to `limit` due rows of `topic` to `owner` for `lease`, oldest due first.
    /// Concurrent claimers (other workers, other nodes) never get the same row while a lease
    /// holds. Rows still leased to `owner` itself are due to it again: an owner claims only
    /// with nothing in hand, so such a row is one whose claim it never heard back from (the
    /// store failed over while answering), and it need not wait out its lease.
    pub async fn claim(
        &self,
        topic: &str,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let req = Request::Claim {
            topic: topic.into(),
            owner: owner.into(),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            lease_ms: millis(lease),
        };
        match self.call(req).await? {
            Reply::Claimed(items) => Ok(items),
            r => Err(unexpected(r)),
        }
    }

    /// Marks row `id` delivered, if `owner` still holds it: true then. False when the row was
    /// claimed by someone else since (the lease expired), retried, or already done.
    pub async fn complete(&self, id: i64, owner: &str) -> Result<bool, StoreError> {
        Ok(self.complete_all(&[id], owner).await? == 1)
    }

    /// [`complete`](Self::complete) for several rows in one write; how many it completed.
    pub async fn complete_all(&self, ids: &[i64], owner: &str) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        match self.call(Request::Complete { ids: ids.to_vec(), owner: owner.into() }).await? {
            Reply::Id(n) => Ok(n.max(0) as u64),
            r => Err(unexpected(r)),
        }
    }

    /// Gives row `id` back after a failed delivery: one more attempt counted, due again after
    /// `delay`, lease released, `error` kept on the row. Same ownership rule as `complete`.
    pub async fn retry(
        &self,
        id: i64,
        owner: &str,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError> {
        let req = Request::Retry {
            id,
            owner: owner.into(),
            delay_ms: millis(delay),
            error: error.into(),
        };
        match self.call(req).await? {
            Reply::Flag(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// Extends to `lease` from now the lease of those of `ids` that `owner` still holds (not
    /// completed, retried, or claimed by someone else since); how many it extended. A sender
    /// whose delivery outlasts a lease renews it, so no other sender claims a row it is still
    /// delivering.
    pub async fn renew(
        &self,
        ids: &[i64],
        owner: &str,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let req =
            Request::Renew { ids: ids.to_vec(), owner: owner.into(), lease_ms: millis(lease) };
        match self.call(req).await? {
            Reply::Id(n) => Ok(n.max(0) as u64),
            r => Err(unexpected(r)),
        }
    }

    /// Rows not delivered yet and the age of the oldest. Also refreshes the outbox gauges.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        match self.call(Request::OutboxStats).await? {
            Reply::Stats(s) => {
                self.metrics().set_outbox(s.pending, s.oldest_age);
                Ok(s)
            }
            r => Err(unexpected(r)),
        }
    }
}

/// Starts a background sender for `topic` on the store's runtime and returns its tokio
/// JoinHandle (awaitable from any runtime).
///
/// It claims up to [`WORKER_BATCH`] due rows under a [`WORKER_LEASE`] as `owner`, runs
/// `deliver` on each (concurrently), renews the lease of the rows still in hand every third of
/// it (so a slow delivery is not claimed and sent again by another sender: without a crash,
/// each row is delivered once), completes the row on `Ok`, and on `Err` retries it after
/// an exponential backoff: 1 s doubling per attempt up to 5 min, each delay jittered down to
/// half so failing rows of many nodes do not retry in step. Idle, it waits [`WORKER_POLL`] or
/// until this node enqueues. It stops when `stop` becomes true or its sender is dropped,
/// after finishing the deliveries in hand. Several workers, on one node or many, can serve
/// one topic: a row is never leased to two at once. Give each a distinct `owner`.
pub fn spawn_outbox_worker<F, Fut>(
    store: &Store,
    topic: &str,
    owner: String,
    deliver: F,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(OutboxItem) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    spawn_worker(store, topic, owner, deliver, stop, WORKER_LEASE)
}

/// [`spawn_outbox_worker`] with a lease of `lease`.
fn spawn_worker<F, Fut>(
    store: &Store,
    topic: &str,
    owner: String,
    deliver: F,
    mut stop: watch::Receiver<bool>,
    lease: Duration,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(OutboxItem) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let store = store.clone();
    let topic = topic.to_owned();
    let deliver = Arc::new(deliver);
    store.handle().clone().spawn(async move {
        let mut store_errors = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            // Registered before the claim, so an enqueue committed after the claim looked is
            // not missed.
            let wake = store.outbox_wake().notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let items = match store.claim(&topic, &owner, WORKER_BATCH, lease).await {
                Ok(items) => {
                    store_errors = 0;
                    items
                }
                Err(_) => {
                    // The store is down or slow: back off, but never long.
                    store_errors = store_errors.saturating_add(1);
                    if wait(&mut stop, store_backoff(store_errors - 1), None).await {
                        return;
                    }
                    continue;
                }
            };
            if items.is_empty() {
                if wait(&mut stop, WORKER_POLL, Some(wake)).await {
                    return;
                }
                continue;
            }
            let claimed = tokio::time::Instant::now();
            let mut in_hand: Vec<i64> = items.iter().map(|i| i.id).collect();
            // Delivered rows whose completion the store did not take (it failed over meanwhile):
            // completed again once it answers, so they are not sent twice when the lease ends.
            let mut unconfirmed: Vec<i64> = Vec::new();
            let mut running = JoinSet::new();
            for item in items {
                let (id, attempts) = (item.id, item.attempts);
                let fut = deliver(item);
                running.spawn(async move { (id, attempts, fut.await) });
            }
            let mut renew =
                tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
            loop {
                let done = tokio::select! {
                    done = running.join_next() => done,
                    _ = renew.tick() => {
                        // A failure is counted (`outpost_store_ops_total{op="renew"}`); the
                        // next tick tries again before the lease runs out.
                        let _ = store.renew(&in_hand, &owner, lease).await;
                        continue;
                    }
                };
                let Some(done) = done else { break };
                // Every delivery that finished meanwhile (while the last completion was being
                // written, under load) is completed by one write: a mail costs the store its
                // reservation's transaction and a fraction of a write, not a write of its own.
                let mut delivered = Vec::new();
                let finished = std::iter::once(done)
                    .chain(std::iter::from_fn(|| running.try_join_next()))
                    .collect::<Vec<_>>();
                for done in finished {
                    // A delivery that panicked is retried like one that failed; its row's
                    // lease otherwise runs out and it is claimed again anyway.
                    let Ok((id, attempts, result)) = done else { continue };
                    in_hand.retain(|i| *i != id);
                    match result {
                        Ok(()) => delivered.push(id),
                        Err(e) => {
                            let _ = store.retry(id, &owner, backoff(attempts), &e).await;
                        }
                    }
                }
                if store.complete_all(&delivered, &owner).await.is_err() {
                    unconfirmed.extend(delivered);
                }
            }
            let mut attempt = 0;
            while !unconfirmed.is_empty() && claimed.elapsed() < lease {
                if wait(&mut stop, store_backoff(attempt), None).await {
                    return;
                }
                attempt = attempt.saturating_add(1);
                if store.complete_all(&unconfirmed, &owner).await.is_ok() {
                    unconfirmed.clear();
                }
            }
        }
    })
}

/// The wait before asking a failing store again: 250 ms doubling to [`STORE_BACKOFF_MAX`],
/// jittered into its upper half.
fn store_backoff(failures: u32) -> Duration {
    jitter((Duration::from_millis(250) * (1u32 << failures.min(8))).min(STORE_BACKOFF_MAX))
}

/// Sleeps `d`, or until woken or told to stop; true when told to stop.
async fn wait(
    stop: &mut watch::Receiver<bool>,
    d: Duration,
    wake: Option<std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>>,
) -> bool {
    let woken = async {
        match wake {
            Some(w) => w.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = woken => false,
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// 1 s × 2^attempts, capped at 5 min, jittered uniformly into its upper half.
pub fn backoff(attempts: u32) -> Duration {
    jitter(BACKOFF_FIRST.saturating_mul(1u32 << attempts.min(16)).min(BACKOFF_MAX))
}

/// `full` scaled by a uniform factor in [0.5, 1].
fn jitter(full: Duration) -> Duration {
    // RandomState is seeded per instance: a cheap random source without a dependency.
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let frac = 0.5 + (r % 1_000_000) as f64 / 2_000_000.0;
    full.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two senders on one topic, deliveries five leases long: each row is delivered once, as
    /// the sender holding it renews its lease; without renewal the other claims it again.
    #[test]
    fn a_slow_delivery_keeps_its_lease() {
        let dir = std::env::temp_dir().join(format!("outpost-outbox-renew-{}", std::process::id()));
        let store = Store::open(&crate::StoreConfig::default(), &dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop_tx, stop) = watch::channel(false);
        let lease = Duration::from_millis(200);
        let workers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|owner| {
                let delivered = delivered.clone();
                spawn_worker(
                    &store,
                    "mail",
                    owner.into(),
                    move |item: OutboxItem| {
                        let delivered = delivered.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(1000)).await;
                            delivered.lock().unwrap().push(item.id);
                            Ok(())
                        }
                    },
                    stop.clone(),
                    lease,
                )
            })
            .collect();
        rt.block_on(async {
            for n in 0..3u8 {
                store.enqueue("mail", &[n]).await.unwrap();
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while store.outbox_stats().await.unwrap().pending > 0 {
                assert!(tokio::time::Instant::now() < deadline, "not delivered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Time for a second (wrong) delivery to land, were one under way.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            stop_tx.send_replace(true);
            for w in workers {
                w.await.unwrap();
            }
        });
        let mut ids = delivered.lock().unwrap().clone();
        ids.sort_unstable();
        assert_eq!(ids.len(), 3, "each of 3 rows delivered once: {ids:?}");
        ids.dedup();
        assert_eq!(ids.len(), 3, "a row was delivered twice");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failing_store_is_asked_again_within_seconds() {
        for (failures, full) in [(0, 250), (1, 500), (3, 2000), (4, 4000), (30, 4000)] {
            let d = store_backoff(failures);
            let full = Duration::from_millis(full);
            assert!(d >= full / 2 && d <= full, "failures {failures}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_five_minutes_with_jitter() {
        for (attempts, full) in [(0, 1), (1, 2), (2, 4), (8, 256), (9, 300), (40, 300)] {
            let d = backoff(attempts);
            let full = Duration::from_secs(full);
            assert!(
                d >= full / 2 && d <= full,
                "attempts {attempts}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
