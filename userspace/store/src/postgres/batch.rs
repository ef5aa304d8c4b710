//! Group commit on PostgreSQL, as on SQLite: concurrent single-key writes (put, take, delete,
//! insert) that queue up while every connection is busy go out together, as one transaction on
//! one connection, their statements pipelined (one round trip per round, see below) and one
//! COMMIT (one WAL flush) for all. With few callers a batch is one request and runs exactly as
//! before, in autocommit; with many, a node needs far fewer connections (and the database far
//! fewer commits) for the same throughput, which matters when many edge nodes share one
//! database.
//!
//! Each request keeps its own meaning: requests are ordered by key, and a key that appears
//! more than once in a batch is handled in rounds (its first request in the first round, its
//! second in the next...), so every statement sees the effect of the ones before it on the
//! same key, as if they had run one after the other. Locks are taken in key order, so two
//! batches do not deadlock on each other. If any statement fails (or the database refuses the
//! COMMIT), the transaction is rolled back and every request runs again on its own, so only a
//! request at fault fails. A COMMIT whose answer was lost (the connection broke, or the server
//! went down as it answered) has an unknown outcome: every request of the batch gets
//! `Unavailable`, as a lone statement would.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    task::Poll,
};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{query_opt, take, Conn, Pg, INSERT, LOCKED, PUT, TAKE};
use crate::{
    metrics::StoreMetrics,
    ops::{Inserted, Reply, Request},
    StoreError,
};

/// Requests per batch at most: bounds one transaction's size and the time it holds its locks.
const MAX_BATCH: usize = 128;

/// A write that can share a transaction with others.
#[derive(Debug)]
pub(super) enum Write {
    Put { ns: String, key: String, value: Vec<u8>, ttl_ms: Option<i64> },
    Take { ns: String, key: String },
    Delete { ns: String, key: String },
    Insert { ns: String, key: String, value: Vec<u8>, ttl_ms: Option<i64> },
}

impl Write {
    /// The request as a batchable write, or back unchanged.
    pub(super) fn from_request(req: Request) -> Result<Write, Request> {
        Ok(match req {
            Request::Put { ns, key, value, ttl_ms } => Write::Put { ns, key, value, ttl_ms },
            Request::Take { ns, key } => Write::Take { ns, key },
            Request::Delete { ns, key } => Write::Delete { ns, key },
            Request::Insert { ns, key, value, ttl_ms } => Write::Insert { ns, key, value, ttl_ms },
            other => return Err(other),
        })
    }

    pub(super) fn into_request(self) -> Request {
        match self {
            Write::Put { ns, key, value, ttl_ms } => Request::Put { ns, key, value, ttl_ms },
            Write::Take { ns, key } => Request::Take { ns, key },
            Write::Delete { ns, key } => Request::Delete { ns, key },
            Write::Insert { ns, key, value, ttl_ms } => Request::Insert { ns, key, value, ttl_ms },
        }
    }

    fn key(&self) -> (&str, &str) {
        match self {
            Write::Put { ns, key, .. }
            | Write::Take { ns, key }
            | Write::Delete { ns, key }
            | Write::Insert { ns, key, .. } => (ns, key),
        }
    }
}

pub(super) struct Job {
    pub(super) write: Write,
    pub(super) reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// How a batch transaction failed.
enum Failed {
    /// Rolled back for sure: run each request on its own.
    RolledBack,
    /// The COMMIT's answer was lost: nobody can tell whether it happened.
    Unknown(StoreError),
}

/// A statement's result inside the batch: done, or an insert that wrote nothing and must read
/// the live row it locked.
enum Step {
    Done(Reply),
    ReadLocked,
}

pub(super) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Pg {
    /// Starts the dispatcher on the current runtime: it forms a batch whenever one of
    /// `permits` (the pool size) is free, so batches grow exactly while connections are busy.
    pub(crate) fn start_group_commit(
        self: &Arc<Pg>,
        handle: &tokio::runtime::Handle,
        permits: usize,
        metrics: Arc<StoreMetrics>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.writes.set(tx).is_ok() {
            handle.spawn(dispatch(Arc::downgrade(self), rx, permits, metrics));
        }
    }

    async fn run_batch(&self, mut batch: Vec<Job>) {
        // A caller that gave up would never learn the outcome (and a take would lose its value).
        batch.retain(|j| !j.reply.is_closed());
        // Locks in key order: two batches never wait on each other in a cycle.
        batch.sort_by(|a, b| a.write.key().cmp(&b.write.key()));
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.into_iter().map(|j| (j.write, j.reply)).unzip();
        if writes.is_empty() {
            return;
        }
        // Bounded like any operation: a batch stuck behind a lock is dropped with its
        // connection (closed, see Conn), instead of holding both until the lock is freed.
        let results = match tokio::time::timeout(self.timeout, self.batch(writes)).await {
            Ok(results) => results,
            Err(_) => replies.iter().map(|_| Err(StoreError::Timeout)).collect(),
        };
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }

    /// One result per write, in order.
    async fn batch(&self, writes: Vec<Write>) -> Vec<Result<Reply, StoreError>> {
        let obj = match self.pool.get().await {
            Ok(obj) => obj,
            Err(e) => {
                let e = self.pool_err(e);
                return writes.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut conn = Conn { obj: Some(obj) };
        let results = if writes.len() == 1 {
            let mut results = Vec::with_capacity(1);
            for w in writes {
                results.push(self.run(&mut conn, w.into_request()).await);
            }
            results
        } else {
            match self.in_one_txn(&mut conn, &writes).await {
                Ok(replies) => replies.into_iter().map(Ok).collect(),
                Err(Failed::RolledBack) => {
                    let mut results = Vec::with_capacity(writes.len());
                    for w in writes {
                        results.push(self.run(&mut conn, w.into_request()).await);
                    }
                    results
                }
                Err(Failed::Unknown(e)) => writes.iter().map(|_| Err(e.clone())).collect(),
            }
        };
        conn.release(
            results
                .iter()
                .find_map(|r| r.as_ref().err().filter(|e| matches!(e, StoreError::Unavailable(_)))),
        );
        results
    }

    /// The whole batch in one transaction; one reply per write, in order.
    async fn in_one_txn(&self, conn: &mut Conn, batch: &[Write]) -> Result<Vec<Reply>, Failed> {
        let tx = conn.client().transaction().await.map_err(|_| Failed::RolledBack)?;
        // Prepared up front, so that the pipelined statements go out in key order.
        for sql in [PUT, TAKE, INSERT, LOCKED] {
            tx.prepare_cached(sql).await.map_err(|_| Failed::RolledBack)?;
        }
        // Round r holds each key's r-th request: within a round every key is distinct.
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        let round_of: Vec<usize> = batch
            .iter()
            .map(|j| {
                let n = seen.entry(j.key()).or_insert(0);
                *n += 1;
                *n - 1
            })
            .collect();
        let rounds = round_of.iter().max().map_or(0, |r| r + 1);
        let mut replies: Vec<Option<Reply>> = batch.iter().map(|_| None).collect();
        for round in 0..rounds {
            let idx: Vec<usize> = (0..batch.len()).filter(|&i| round_of[i] == round).collect();
            let steps = join_all(idx.iter().map(|&i| first_statement(&tx, &batch[i]))).await;
            let mut read = Vec::new();
            for (&i, step) in idx.iter().zip(steps) {
                match step {
                    Ok(Step::Done(r)) => replies[i] = Some(r),
                    Ok(Step::ReadLocked) => read.push(i),
                    Err(_) => return Err(Failed::RolledBack),
                }
            }
            // Inserts that met a live row: it is locked by us and no other statement of this
            // round touches its key, so it is still there to read.
            let txr = &tx;
            let values = join_all(read.iter().map(|&i| {
                let (ns, key) = batch[i].key();
                let fut: BoxFut<'_, _> =
                    Box::pin(async move { query_opt(txr, LOCKED, &[&ns, &key]).await });
                fut
            }))
            .await;
            for (&i, row) in read.iter().zip(values) {
                let existing = match row {
                    Ok(Some(row)) => row.try_get(0).map_err(|_| Failed::RolledBack)?,
                    _ => return Err(Failed::RolledBack),
                };
                replies[i] = Some(Reply::Inserted(Inserted::Conflict { existing }));
            }
        }
        match tx.commit().await {
            Ok(()) => {}
            Err(e) if super::commit_unknown(&e) => return Err(Failed::Unknown(self.commit_err(e))),
            // The server answered with an ERROR: it rolled the transaction back.
            Err(_) => return Err(Failed::RolledBack),
        }
        let replies: Vec<Reply> = replies.into_iter().flatten().collect();
        if replies.len() != batch.len() {
            // Every job got a reply above; this is a bug, not the database.
            return Err(Failed::Unknown(StoreError::Other("internal: batch reply missing".into())));
        }
        Ok(replies)
    }
}

fn first_statement<'a, C: deadpool_postgres::GenericClient>(
    tx: &'a C,
    write: &'a Write,
) -> BoxFut<'a, Result<Step, tokio_postgres::Error>> {
    match write {
        Write::Put { ns, key, value, ttl_ms } => Box::pin(async move {
            super::exec(tx, PUT, &[ns, key, value, ttl_ms]).await?;
            Ok(Step::Done(Reply::Done))
        }),
        Write::Take { ns, key } => {
            Box::pin(async move { Ok(Step::Done(Reply::Value(take(tx, ns, key).await?))) })
        }
        Write::Delete { ns, key } => {
            Box::pin(async move { Ok(Step::Done(Reply::Flag(take(tx, ns, key).await?.is_some()))) })
        }
        Write::Insert { ns, key, value, ttl_ms } => Box::pin(async move {
            Ok(match query_opt(tx, INSERT, &[ns, key, value, ttl_ms]).await? {
                Some(_) => Step::Done(Reply::Inserted(Inserted::Done)),
                None => Step::ReadLocked,
            })
        }),
    }
}

/// Polls every future in order on each pass, so their statements are queued on the connection
/// in that order (tokio-postgres pipelines them); all outputs, in order.
pub(super) async fn join_all<'a, T>(futs: impl Iterator<Item = BoxFut<'a, T>>) -> Vec<T> {
    let mut futs: Vec<Option<BoxFut<'a, T>>> = futs.map(Some).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *o = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

async fn dispatch(
    pg: Weak<Pg>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    permits: usize,
    metrics: Arc<StoreMetrics>,
) {
    let permits = Arc::new(Semaphore::new(permits.max(1)));
    loop {
        // Wait for a free connection first: what queues meanwhile becomes the next batch.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Some(pg) = pg.upgrade() else { return };
        metrics.record_batch(batch.len());
        tokio::spawn(async move {
            pg.run_batch(batch).await;
            drop(permit);
        });
    }
}
