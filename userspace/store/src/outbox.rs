//! The outbox: messages (mail) written in the same store as the state they belong to, handed
//! to a sender at least once.
//!
//! A row is due when not done, `next_at` has passed and no lease is held (or the lease
//! expired). [`Store::claim`] leases due rows to an owner; the owner delivers, then
//! [`Store::complete`]s the row, or [`Store::retry`]s it later. A worker that dies leaves its
//! lease to expire and the row to be claimed again, so delivery is at least once.

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinSet, time::Instant};

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
    /// holds, the claimer's own leases included.
    pub async fn claim(
        &self,
        topic: &str,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.claim_rows(topic, owner, limit, lease, false).await
    }

    /// [`claim`](Self::claim) by an owner with nothing in hand: rows still leased to `owner`
    /// are due to it again, since such a row is one whose claim it never heard back from (the
    /// store failed over while answering), and need not wait out its lease.
    pub async fn reclaim(
        &self,
        topic: &str,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.claim_rows(topic, owner, limit, lease, true).await
    }

    async fn claim_rows(
        &self,
        topic: &str,
        owner: &str,
        limit: usize,
        lease: Duration,
        own: bool,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let req = Request::Claim {
            topic: topic.into(),
            owner: owner.into(),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            lease_ms: millis(lease),
            own,
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
/// It claims due rows in batches of [`WORKER_BATCH`] under a [`WORKER_LEASE`] as `owner`
/// (the next batch while one is delivering: up to two batches in flight), runs `deliver` on
/// each (concurrently), renews the lease of the rows still in hand every third of
/// it (so a slow delivery is not claimed and sent again by another sender: without a crash,
/// each row is delivered once), completes the rows delivered (together, by one write) on
/// `Ok`, and on `Err` retries it after
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
    stop: watch::Receiver<bool>,
    lease: Duration,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(OutboxItem) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let store = store.clone();
    let topic = topic.to_owned();
    store.background().clone().spawn(async move {
        let worker = Worker { store: &store, topic: &topic, owner: &owner, lease };
        worker.run(deliver, stop).await;
    })
}

/// Rows a worker has in flight at most: one batch delivering while the next is claimed.
const IN_FLIGHT_MAX: usize = 2 * WORKER_BATCH;

type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A completion in flight: the rows it writes, and how the store answered.
type Completion<'a> = StoreFuture<'a, (Vec<i64>, Result<u64, StoreError>)>;

/// One outbox worker's loop (see [`spawn_outbox_worker`]).
///
/// Claims, deliveries and completions overlap: the next batch is claimed once the deliveries
/// in flight leave room for it, and the rows delivered are completed a batch's worth at a time
/// (or once nothing else is in flight) by one write while the deliveries go on, so no batch
/// waits for a store write to start and the store sees about two writes a batch.
struct Worker<'a> {
    store: &'a Store,
    topic: &'a str,
    owner: &'a str,
    lease: Duration,
}

impl<'a> Worker<'a> {
    async fn run<F, Fut>(&self, deliver: F, mut stop: watch::Receiver<bool>)
    where
        F: Fn(OutboxItem) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (store, lease) = (self.store, self.lease);
        // Rows leased to this worker and not yet completed or given back, each with when its
        // lease (as last granted) runs out: delivering, or delivered and awaiting completion.
        let mut held: HashMap<i64, Instant> = HashMap::new();
        let mut running: JoinSet<Result<(), String>> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, (i64, u32)> = HashMap::new();
        // Delivered rows not yet completed.
        let mut delivered: Vec<i64> = Vec::new();
        let mut claiming: Option<StoreFuture<'a, Result<Vec<OutboxItem>, StoreError>>> = None;
        let mut completing: Option<Completion<'a>> = None;
        let (mut claim_at, mut complete_at) = (Instant::now(), Instant::now());
        let (mut claim_failures, mut complete_failures) = (0u32, 0u32);
        // Rows the claim in flight asked for.
        let mut asked = 0;
        let mut renew = tokio::time::interval_at(Instant::now() + lease / 3, lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wake = Box::pin(store.outbox_wake().notified());
        let mut stopping = *stop.borrow();
        loop {
            let now = Instant::now();
            let room = running.len() + WORKER_BATCH <= IN_FLIGHT_MAX;
            if claiming.is_none() && !stopping && room && now >= claim_at {
                // Registered before the claim, so an enqueue committed after the claim looked
                // is not missed.
                wake = Box::pin(store.outbox_wake().notified());
                wake.as_mut().enable();
                // Holding nothing, rows still leased to this owner are claims it never heard
                // back from; holding some, they are in flight.
                let own = held.is_empty();
                asked = IN_FLIGHT_MAX - running.len();
                claiming =
                    Some(Box::pin(store.claim_rows(self.topic, self.owner, asked, lease, own)));
            }
            // Completions wait for a batch's worth, or for the last delivery in flight: each is
            // a write (a commit on PostgreSQL), and one a mail or two would double the store's
            // commits during a spike.
            let complete_ready =
                delivered.len() >= WORKER_BATCH || (!delivered.is_empty() && running.is_empty());
            if completing.is_none() && complete_ready && now >= complete_at {
                let ids = std::mem::take(&mut delivered);
                let owner = self.owner;
                completing = Some(Box::pin(async move {
                    let done = store.complete_all(&ids, owner).await;
                    (ids, done)
                }));
            }
            if stopping && claiming.is_none() && running.is_empty() && completing.is_none() {
                // Delivered rows whose completion failed are left to their leases: sent again
                // after them (at least once).
                return;
            }
            // The next moment something is due without an event: a claim or a completion.
            let claim_due = (claiming.is_none() && !stopping && room).then_some(claim_at);
            let complete_due = (completing.is_none() && complete_ready).then_some(complete_at);
            let due = claim_due.into_iter().chain(complete_due).min();
            tokio::select! {
                claimed = pending_or(&mut claiming) => {
                    claiming = None;
                    let now = Instant::now();
                    match claimed {
                        Ok(items) => {
                            claim_failures = 0;
                            // Fewer than asked for: the due rows are all out; look again
                            // when woken or after the poll.
                            claim_at = if items.len() < asked { now + WORKER_POLL } else { now };
                            for item in items {
                                held.insert(item.id, now + lease);
                                let (id, attempts) = (item.id, item.attempts);
                                let task = running.spawn(deliver(item));
                                tasks.insert(task.id(), (id, attempts));
                            }
                        }
                        Err(_) => {
                            // The store is down or slow: back off, but never long.
                            claim_at = now + store_backoff(claim_failures);
                            claim_failures = claim_failures.saturating_add(1);
                        }
                    }
                }
                (ids, done) = pending_or(&mut completing) => {
                    completing = None;
                    match done {
                        Ok(_) => {
                            complete_failures = 0;
                            for id in &ids {
                                held.remove(id);
                            }
                        }
                        Err(_) => {
                            // The store did not take them (it failed over meanwhile): written
                            // again once it answers, while their leases hold, so they are not
                            // sent twice when a lease ends.
                            let now = Instant::now();
                            complete_at = now + store_backoff(complete_failures);
                            complete_failures = complete_failures.saturating_add(1);
                            for id in ids {
                                match held.get(&id) {
                                    Some(until) if *until > now => delivered.push(id),
                                    _ => {
                                        held.remove(&id);
                                    }
                                }
                            }
                        }
                    }
                }
                Some(done) = running.join_next_with_id() => {
                    // Every delivery that finished meanwhile (while a store write was under
                    // way, under load) joins the next completion: a mail costs the store its
                    // reservation's transaction and a fraction of a write, not a write of its
                    // own.
                    let finished = std::iter::once(done)
                        .chain(std::iter::from_fn(|| running.try_join_next_with_id()))
                        .collect::<Vec<_>>();
                    for done in finished {
                        let (task, result) = match done {
                            Ok((task, result)) => (task, result),
                            // A delivery that panicked is retried like one that failed.
                            Err(e) => (e.id(), Err("the delivery panicked".to_owned())),
                        };
                        let Some((id, attempts)) = tasks.remove(&task) else { continue };
                        match result {
                            Ok(()) => delivered.push(id),
                            Err(e) => {
                                held.remove(&id);
                                let _ = store.retry(id, self.owner, backoff(attempts), &e).await;
                            }
                        }
                    }
                }
                _ = renew.tick(), if !held.is_empty() => {
                    // A failure is counted (`outpost_store_ops_total{op="renew"}`); the next
                    // tick tries again before the lease runs out.
                    let ids: Vec<i64> = held.keys().copied().collect();
                    let renewed = Instant::now();
                    if store.renew(&ids, self.owner, lease).await.is_ok() {
                        for until in held.values_mut() {
                            *until = renewed + lease;
                        }
                    }
                }
                _ = wake.as_mut(), if claim_failures == 0 && claim_due.is_some_and(|at| at > now) => {
                    claim_at = Instant::now();
                }
                _ = tokio::time::sleep_until(due.unwrap_or(now)), if due.is_some_and(|at| at > now) => {}
                changed = stop.changed(), if !stopping => {
                    stopping = changed.is_err() || *stop.borrow();
                }
            }
        }
    }
}

/// The output of the future in `slot`; pending forever when there is none.
async fn pending_or<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The wait before asking a failing store again: 250 ms doubling to [`STORE_BACKOFF_MAX`],
/// jittered into its upper half.
fn store_backoff(failures: u32) -> Duration {
    jitter((Duration::from_millis(250) * (1u32 << failures.min(8))).min(STORE_BACKOFF_MAX))
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
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

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
        // A delivery lasts more than three leases; a lease long enough that a loaded machine's
        // stalls (a writer's fsync, the scheduler) do not outlast it between renewals.
        let lease = Duration::from_millis(600);
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
                            tokio::time::sleep(Duration::from_millis(2000)).await;
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
            let deadline = Instant::now() + Duration::from_secs(20);
            while store.outbox_stats().await.unwrap().pending > 0 {
                assert!(Instant::now() < deadline, "not delivered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Time for a second (wrong) delivery to land, were one under way.
            tokio::time::sleep(Duration::from_millis(2400)).await;
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

    /// One sender, deliveries held until released: it claims the next batch while the first
    /// is delivering (two batches in flight, not one), never claims its own rows in flight
    /// again, and delivers each row once.
    #[test]
    fn the_next_batch_is_claimed_while_one_delivers() {
        let dir = std::env::temp_dir().join(format!("outpost-outbox-roll-{}", std::process::id()));
        let store = Store::open(&crate::StoreConfig::default(), &dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let rows = 3 * IN_FLIGHT_MAX;
        let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (stop_tx, stop) = watch::channel(false);
        rt.block_on(async {
            for n in 0..rows {
                store.enqueue("mail", &n.to_le_bytes()).await.unwrap();
            }
        });
        let worker = {
            let (delivered, in_flight, most, gate) =
                (delivered.clone(), in_flight.clone(), most.clone(), gate.clone());
            spawn_outbox_worker(
                &store,
                "mail",
                "one".into(),
                move |item: OutboxItem| {
                    let (delivered, in_flight, most, gate) =
                        (delivered.clone(), in_flight.clone(), most.clone(), gate.clone());
                    async move {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        gate.acquire().await.unwrap().forget();
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        delivered.lock().unwrap().push(item.id);
                        Ok(())
                    }
                },
                stop,
            )
        };
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            // Let deliveries through one at a time, each only once the sender had the chance
            // to claim more.
            while delivered.lock().unwrap().len() < rows {
                assert!(Instant::now() < deadline, "not delivered");
                tokio::time::sleep(Duration::from_millis(5)).await;
                if in_flight.load(Ordering::SeqCst) > 0 {
                    gate.add_permits(1);
                }
            }
            while store.outbox_stats().await.unwrap().pending > 0 {
                assert!(Instant::now() < deadline, "not completed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop_tx.send_replace(true);
            worker.await.unwrap();
        });
        assert_eq!(most.load(Ordering::SeqCst), IN_FLIGHT_MAX, "deliveries in flight at most");
        let mut ids = delivered.lock().unwrap().clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), rows, "each row delivered once");
        assert_eq!(delivered.lock().unwrap().len(), rows, "a row was delivered twice");
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
