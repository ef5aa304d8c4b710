//! outpost's store: state that every edge node shares — single-use login nonces, unique
//! reservations, an outbox for mail, an audit log — behind one API with two backends:
//! embedded SQLite (the default: one node, nothing to install) and PostgreSQL (many edge nodes,
//! one database).
//!
//! # Layout
//! - [`config`]: `[store]` in outpost.toml ([`StoreConfig`]) and password redaction.
//! - [`error`]: [`StoreError`], one line, no secrets.
//! - `ops`: [`Op`], [`TxnOutcome`], [`Inserted`], [`Record`]; the internal request both
//!   backends execute.
//! - `sqlite`: the embedded backend: one writer thread with group commit, a syncer thread that
//!   fsyncs the WAL for every batch committed since its last sync before answering them, reader
//!   threads, a checkpoint thread, the data directory's lock.
//! - `postgres`: the shared backend: a connection pool on the store's runtime, the database's
//!   clock, `SKIP LOCKED` claims, advisory-locked migrations; `postgres/batch.rs` commits
//!   single-key writes that queue behind busy connections in groups, one pipelined
//!   transaction each; `postgres/txn.rs` runs a [`Store::txn`] in two round trips (its
//!   statements pipelined); `postgres/hosts.rs` picks, among the URL's hosts, the one that takes
//!   writes (the primary, again after a failover).
//! - `schema`: versioned migrations; a database newer than the binary is refused untouched.
//! - [`outbox`]: at-least-once delivery ([`OutboxItem`], [`spawn_outbox_worker`]).
//! - [`audit`]: the append-only audit log ([`AuditEvent`], [`AuditQuery`]).
//! - [`metrics`]: [`StoreMetrics`], rendered as Prometheus text.
//! - `runtime`: the store's own tokio runtime, so callers on any runtime can await it.
//! - `testing` (feature `testing`): a real PostgreSQL started by a test, temp directories.
//!
//! # Guarantees
//! - An operation that returned `Ok` is durable: SQLite answers only once the WAL holding its
//!   commit is fsynced (an acknowledged write survives SIGKILL and power loss), PostgreSQL
//!   commits before answering.
//! - Every decision that must not be lost or made twice — [`Store::take`], [`Store::insert`],
//!   [`Store::txn`], [`Store::claim`] — is made by the database in one statement or one
//!   transaction, never as check-then-write in the caller. A key taken on one node is gone for
//!   every node.
//! - Expired values are never returned; the sweeper deletes them later. On PostgreSQL expiry
//!   is measured on the database's clock, so nodes whose clocks differ still agree.
//! - Every operation is bounded by `timeout_ms`: past it, [`StoreError::Timeout`] (outcome
//!   unknown). A PostgreSQL that went away gives [`StoreError::Unavailable`] quickly, and the
//!   pool reconnects by itself once it is back, or, with several hosts in the URL, once one of
//!   them takes writes (a promoted standby). A write whose commit was cut off is reported as
//!   Unavailable or Timeout (outcome unknown), never as done.
//! - The methods are `async`, their futures are `Send`, and they can be awaited from any
//!   runtime (tokio-uring workers, a current-thread runtime with a LocalSet, plain tokio): the
//!   work runs on the store's own threads and runtime.
//!
//! # The outbox delivers at least once
//! A row added with [`Store::enqueue`] (or [`Op::Enqueue`] inside a transaction, so it exists
//! only if the transaction commits) is claimed under a lease, delivered, then completed. If a
//! worker dies or stalls past its lease, the row is claimed again by someone else, so a
//! message can be delivered twice; it is never lost. Receivers that care deduplicate, e.g. on
//! the row id. Failed deliveries are retried with exponential backoff.

pub mod audit;
pub mod config;
pub mod error;
pub mod metrics;
mod ops;
pub mod outbox;
mod postgres;
mod runtime;
mod schema;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{sync::Notify, task::JoinHandle};

pub use crate::{
    audit::{AuditEvent, AuditQuery},
    config::StoreConfig,
    error::StoreError,
    metrics::StoreMetrics,
    ops::{Abort, Inserted, Op, Record, TxnOutcome},
    outbox::{spawn_outbox_worker, OutboxItem, OutboxStats},
    schema::SCHEMA_VERSION,
};
use crate::{
    metrics::Outcome,
    ops::{millis, Reply, Request},
    postgres::Pg,
    runtime::StoreRuntime,
    sqlite::Sqlite,
};

/// Which database a [`Store`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, `<data_dir>/outpost.db`.
    Sqlite,
    /// Shared, from `[store] url`.
    Postgres,
}

/// The store. Cheap to clone (two `Arc`s); `Send + Sync`. The last clone dropped shuts it
/// down (see [`Store::shutdown`]) before the drop returns, whatever the store's own background
/// work is doing: the embedded store's directory lock is free again then.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Shared by every clone handed out; `None` in the store's own background work (the
    /// sweeper), which never keeps a dropped store open.
    _handle: Option<Arc<Handle>>,
}

/// Shuts the store down when the last clone handed out goes, even while the sweeper holds it
/// for a sweep.
struct Handle(Weak<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.shutdown();
        }
    }
}

struct Inner {
    backend: BackendImpl,
    metrics: Arc<StoreMetrics>,
    timeout: Duration,
    describe: String,
    closed: AtomicBool,
    /// Audit events older than this many milliseconds are pruned by the sweeper; 0: kept.
    audit_keep_ms: AtomicI64,
    /// Woken after a local enqueue, so this node's outbox workers need not wait for a poll.
    outbox_wake: Notify,
    /// Audit appends waiting to be written together.
    audit_queue: audit::AuditQueue,
    /// The outbox workers' runtime ([`StoreRuntime::start_background`]), started with the
    /// first worker.
    background: std::sync::OnceLock<Option<StoreRuntime>>,
    /// Last: dropped after the backend has stopped using it.
    rt: StoreRuntime,
}

enum BackendImpl {
    Sqlite(Sqlite),
    Postgres(Arc<Pg>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Store").field(&self.inner.describe).finish()
    }
}

impl Store {
    /// Opens the store `cfg` names: SQLite in `data_dir` when `cfg` has no URL, otherwise
    /// PostgreSQL. Applies pending migrations. Blocks the calling thread (up to
    /// `connect_timeout_ms` to reach PostgreSQL); fine to call from inside a runtime.
    ///
    /// Fails with a one-line error naming the path or the URL (password hidden): directory
    /// not writable ([`StoreError::Unavailable`]), held by another process
    /// ([`StoreError::Locked`]), not a database ([`StoreError::Corrupt`]), written by a newer
    /// outpost ([`StoreError::SchemaTooNew`]), PostgreSQL unreachable
    /// ([`StoreError::Unavailable`]).
    pub fn open(cfg: &StoreConfig, data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_as(cfg, data_dir, true)
    }

    /// As [`open`](Self::open), for an operator's command (`outpost reservations list`) that
    /// may run beside an edge: the embedded store is shared through SQLite's own locking
    /// instead of the directory lock that keeps a second edge out.
    pub fn open_tool(cfg: &StoreConfig, data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_as(cfg, data_dir, false)
    }

    /// As [`open`](Self::open), for an edge taking over from the one running on the same data
    /// directory (`outpost run --upgrade`): the two share the embedded store through SQLite's
    /// locking while the old one drains, and the directory lock passes to this process when
    /// the old one lets go of it.
    pub fn open_successor(cfg: &StoreConfig, data_dir: &Path) -> Result<Store, StoreError> {
        let store = Store::open_as(cfg, data_dir, false)?;
        if cfg.resolve_url()?.is_none() {
            sqlite::lock_when_free(data_dir)?;
        }
        Ok(store)
    }

    fn open_as(cfg: &StoreConfig, data_dir: &Path, edge: bool) -> Result<Store, StoreError> {
        let inner = match cfg.resolve_url()? {
            None => {
                let metrics = Arc::new(StoreMetrics::new(Backend::Sqlite));
                let sqlite = Sqlite::open(data_dir, cfg.timeout(), metrics.clone(), edge)?;
                let describe = format!("sqlite {}", sqlite.path().display());
                // The runtime only runs timers, the sweeper and outbox workers here.
                let rt = StoreRuntime::start(1)?;
                Inner::new(BackendImpl::Sqlite(sqlite), metrics, cfg, describe, rt)
            }
            Some(url) => {
                // One worker: an operation's task and its connection's task share a thread,
                // so a query costs no cross-thread wakeup; the database is the limit, and on a
                // small edge the proxy's workers need the other cores.
                let rt = StoreRuntime::start(1)?;
                let redacted = config::redact_url(&url);
                let task_cfg = cfg.clone();
                // The connect itself is bounded by connect_timeout per host inside; the margin
                // covers migrations waiting on another node's migration lock.
                let hosts = u32::try_from(postgres::host_count(&url)).unwrap_or(u32::MAX);
                let limit = cfg.connect_timeout() * hosts + cfg.timeout() + Duration::from_secs(30);
                let pg = match rt.block_on(limit, async move { Pg::open(&url, &task_cfg).await }) {
                    Ok(pg) => pg,
                    Err(e) => {
                        rt.stop();
                        return Err(match e {
                            StoreError::Timeout => StoreError::Unavailable(format!(
                                "opening PostgreSQL at {redacted} took longer than {limit:?}"
                            )),
                            e => e,
                        });
                    }
                };
                let metrics = Arc::new(StoreMetrics::new(Backend::Postgres));
                metrics.set_pool(pg.pool().clone());
                let describe = pg.describe().to_owned();
                let pg = Arc::new(pg);
                pg.start_group_commit(rt.handle(), cfg.pool_size, metrics.clone());
                Inner::new(BackendImpl::Postgres(pg), metrics, cfg, describe, rt)
            }
        };
        let inner = Arc::new(inner);
        let store = Store { _handle: Some(Arc::new(Handle(Arc::downgrade(&inner)))), inner };
        store.spawn_sweeper(Duration::from_millis(cfg.sweep_interval_ms));
        Ok(store)
    }

    /// `sqlite /abs/path/outpost.db` or `postgres://user:***@host:port/db`.
    pub fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    pub fn backend(&self) -> Backend {
        match self.inner.backend {
            BackendImpl::Sqlite(_) => Backend::Sqlite,
            BackendImpl::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// Stops the store: new operations fail with [`StoreError::Unavailable`], writes already
    /// queued are committed and answered, then the store's threads stop. Also happens when
    /// the last clone is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Creates or overwrites `ns/key`; with `ttl` it stops being returned after that long.
    pub async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let req = Request::Put {
            ns: ns.into(),
            key: key.into(),
            value: value.to_vec(),
            ttl_ms: ttl.map(millis),
        };
        match self.call(req).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// The live value of `ns/key`.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(Request::Get { ns: ns.into(), key: key.into() }).await? {
            Reply::Value(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    /// Deletes `ns/key` and returns its live value, atomically: of any number of concurrent
    /// takes, on any number of nodes, exactly one gets the value.
    pub async fn take(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(Request::Take { ns: ns.into(), key: key.into() }).await? {
            Reply::Value(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    /// Deletes `ns/key`; true if a live value was there.
    pub async fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        match self.call(Request::Delete { ns: ns.into(), key: key.into() }).await? {
            Reply::Flag(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// Creates `ns/key` only if no live value holds it (an expired one is replaced): of any
    /// number of concurrent inserts, exactly one is [`Inserted::Done`]; the others get
    /// [`Inserted::Conflict`] with the value that holds the key.
    pub async fn insert(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Inserted, StoreError> {
        let req = Request::Insert {
            ns: ns.into(),
            key: key.into(),
            value: value.to_vec(),
            ttl_ms: ttl.map(millis),
        };
        match self.call(req).await? {
            Reply::Inserted(i) => Ok(i),
            r => Err(unexpected(r)),
        }
    }

    /// Live values of `ns` in key order (bytewise), starting after `after`, at most `limit`.
    pub async fn scan(
        &self,
        ns: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let req = Request::Scan {
            ns: ns.into(),
            after: after.map(str::to_owned),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        match self.call(req).await? {
            Reply::Records(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    /// Several operations in one transaction, all or nothing: the first op whose precondition
    /// fails aborts the whole transaction ([`TxnOutcome::Aborted`]) and nothing is applied.
    pub async fn txn(&self, ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        if ops.is_empty() {
            return Ok(TxnOutcome::Committed(Vec::new()));
        }
        match self.call(Request::Txn(ops)).await? {
            Reply::Txn(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }

    /// Runs `req` on the store's threads and waits, from whatever runtime the caller is on;
    /// counts it in the metrics.
    pub(crate) async fn call(&self, req: Request) -> Result<Reply, StoreError> {
        let started = Instant::now();
        let op = req.index();
        let wakes = req.enqueues();
        let result = match self.inner.dispatch(req) {
            Ok(Pending::Sqlite(bounded)) => bounded.await,
            Ok(Pending::Task(task)) => task.await.unwrap_or_else(|_| Err(shut_down())),
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(Reply::Inserted(Inserted::Conflict { .. })) => Outcome::Conflict,
            Ok(Reply::Txn(TxnOutcome::Aborted { .. })) => Outcome::Aborted,
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        };
        self.inner.metrics.record(op, outcome, started.elapsed());
        if wakes && result.is_ok() {
            self.inner.outbox_wake.notify_waiters();
        }
        result
    }

    pub(crate) fn outbox_wake(&self) -> &Notify {
        &self.inner.outbox_wake
    }

    pub(crate) fn audit_queue(&self) -> &audit::AuditQueue {
        &self.inner.audit_queue
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.inner.rt.handle()
    }

    /// The runtime for the outbox workers: lower priority, started on first use (the store's
    /// own runtime if it cannot be).
    pub(crate) fn background(&self) -> &tokio::runtime::Handle {
        let bg = self.inner.background.get_or_init(|| StoreRuntime::start_background().ok());
        bg.as_ref().map_or_else(|| self.handle(), StoreRuntime::handle)
    }

    /// Deletes expired values and old finished outbox rows every `every`, and refreshes the
    /// outbox gauges. Holds the store weakly: it never keeps a dropped store alive.
    fn spawn_sweeper(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        self.handle().spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner, _handle: None };
                store.sweep().await;
            }
        });
    }

    /// Audit events older than `keep` are deleted by the sweeper, a bounded batch at a time
    /// (`[audit] keep_days`); `None` keeps them all (the default).
    pub fn set_audit_retention(&self, keep: Option<Duration>) {
        let ms = keep.map_or(0, |k| millis(k).max(1));
        self.inner.audit_keep_ms.store(ms, Ordering::Relaxed);
    }

    /// One sweep: rounds of bounded deletes until a round comes back short, then the gauges.
    /// Each round is one short write, and the next waits as long as it took, so a long prune
    /// (a million old audit events) takes at most half of the writer (SQLite) or of a
    /// connection (PostgreSQL) however much there is to delete: writers queue behind one
    /// round at most.
    async fn sweep(&self) {
        let keep = self.inner.audit_keep_ms.load(Ordering::Relaxed);
        let audit_keep_ms = (keep > 0).then_some(keep);
        for _ in 0..1000 {
            let started = Instant::now();
            match self.call(Request::Sweep { audit_keep_ms }).await {
                Ok(Reply::Swept { values, outbox, audit })
                    if values as i64 >= ops::SWEEP_CHUNK
                        || outbox as i64 >= ops::SWEEP_CHUNK
                        || audit as i64 >= ops::AUDIT_SWEEP_CHUNK => {}
                _ => break,
            }
            tokio::time::sleep(started.elapsed().max(Duration::from_millis(5))).await;
        }
        // outbox_stats refreshes the gauges as a side effect.
        let _ = self.outbox_stats().await;
    }
}

impl Inner {
    fn new(
        backend: BackendImpl,
        metrics: Arc<StoreMetrics>,
        cfg: &StoreConfig,
        describe: String,
        rt: StoreRuntime,
    ) -> Inner {
        Inner {
            backend,
            metrics,
            timeout: cfg.timeout(),
            describe,
            closed: AtomicBool::new(false),
            audit_keep_ms: AtomicI64::new(0),
            outbox_wake: Notify::new(),
            audit_queue: audit::AuditQueue::default(),
            background: std::sync::OnceLock::new(),
            rt,
        }
    }

    fn dispatch(&self, req: Request) -> Result<Pending, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(shut_down());
        }
        let timeout = self.timeout;
        match &self.backend {
            BackendImpl::Sqlite(s) => {
                let reply = s.submit(req)?;
                // The Sleep is made inside the task: the caller's thread may have no timer.
                let timer =
                    self.rt.handle().spawn(async move { tokio::time::sleep(timeout).await });
                Ok(Pending::Sqlite(Bounded { reply, timer }))
            }
            BackendImpl::Postgres(pg) => {
                let pg = pg.clone();
                Ok(Pending::Task(self.rt.handle().spawn(async move {
                    tokio::time::timeout(timeout, pg.exec(req))
                        .await
                        .unwrap_or(Err(StoreError::Timeout))
                })))
            }
        }
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.backend {
            // Commits and answers what is queued before the threads exit.
            BackendImpl::Sqlite(s) => s.shutdown(),
            BackendImpl::Postgres(pg) => pg.close(),
        }
        if let Some(Some(bg)) = self.background.get() {
            bg.stop();
        }
        self.rt.stop();
        self.audit_queue.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Pending {
    /// SQLite: the writer's (or a reader's) answer, raced against a timer on the store
    /// runtime. The answer is polled first, so one that arrived is never reported as a
    /// timeout.
    Sqlite(Bounded),
    /// PostgreSQL: the whole operation runs as a task on the store runtime, timeout inside.
    Task(JoinHandle<Result<Reply, StoreError>>),
}

struct Bounded {
    reply: tokio::sync::oneshot::Receiver<Result<Reply, StoreError>>,
    timer: JoinHandle<()>,
}

impl Future for Bounded {
    type Output = Result<Reply, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = Pin::new(&mut self.reply).poll(cx) {
            return Poll::Ready(r.unwrap_or_else(|_| Err(shut_down())));
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(StoreError::Timeout)),
            // The runtime stopped under us: the store is shutting down.
            Poll::Ready(Err(_)) => Poll::Ready(Err(shut_down())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

pub(crate) fn shut_down() -> StoreError {
    StoreError::Unavailable("the store is shut down".into())
}

fn unexpected(r: Reply) -> StoreError {
    let kind = format!("{r:?}");
    let kind = kind.split(['(', ' ', '{']).next().unwrap_or("");
    StoreError::Other(format!("internal: unexpected reply {kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn store_and_futures_are_send() {
        assert_send_sync::<Store>();
        let dir = std::env::temp_dir().join(format!("outpost-store-send-{}", std::process::id()));
        let store = Store::open(&StoreConfig::default(), &dir).expect("open");
        assert_send(&store.put("n", "k", b"v", None));
        assert_send(&store.get("n", "k"));
        assert_send(&store.take("n", "k"));
        assert_send(&store.txn(Vec::new()));
        assert_send(&store.claim("t", "o", 1, Duration::from_secs(1)));
        assert_send(&store.query_audit(&AuditQuery::default()));
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
