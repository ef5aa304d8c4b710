//! The audit log: append-only events (who logged in, what was refused), queried newest last.
//!
//! Appends are committed in groups: events appended while an earlier append is being written
//! wait for it, then go out together as one write (one statement on PostgreSQL, one request
//! for SQLite's writer), so a busy edge writes its audit log in a few large writes instead of
//! one per request. Each caller is still answered only once its own events are durable.

use std::{sync::Mutex, time::SystemTime};

use tokio::sync::oneshot;

use crate::{
    ops::{Reply, Request},
    unexpected, Store, StoreError,
};

/// Events per write at most: bounds one write's time on SQLite's writer.
const MAX_GROUP: usize = 1024;

/// Where one caller's append is answered.
type Answer = oneshot::Sender<Result<(), StoreError>>;

/// Appends waiting for the one in flight.
#[derive(Default)]
pub(crate) struct AuditQueue {
    state: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    /// Each caller's events and where its answer goes, in arrival order.
    jobs: Vec<(Vec<AuditEvent>, Answer)>,
    /// A flusher task is running: it takes what is queued when its write is done.
    flushing: bool,
    /// The store shut down: appends fail at once.
    closed: bool,
}

impl AuditQueue {
    /// The store is shutting down: appends still queued (a flusher's task ends with the
    /// store's runtime, possibly between two writes) are answered with the shutdown's error,
    /// not left waiting, and later ones fail at once.
    pub(crate) fn close(&self) {
        let jobs = {
            let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
            q.closed = true;
            std::mem::take(&mut q.jobs)
        };
        for (_, reply) in jobs {
            let _ = reply.send(Err(crate::shut_down()));
        }
    }
}

/// One audit event: the handler API's type (handlers emit it, the store keeps it), with
/// `time` kept to the millisecond, so events order and filter exactly as written.
pub use outpost_api::AuditEvent;

/// A filter on the audit log. Every set field must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditQuery {
    /// Events at or after this time.
    pub since: Option<SystemTime>,
    pub user: Option<String>,
    pub kind: Option<String>,
    /// At most this many: the newest ones, returned oldest first (newest last).
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> AuditQuery {
        AuditQuery { since: None, user: None, kind: None, limit: 100 }
    }
}

impl Store {
    /// Appends `events` in one transaction (shared with other callers' events: see the module
    /// docs); returns once they are durable.
    pub async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.audit_queue().state.lock().unwrap_or_else(|e| e.into_inner());
            if q.closed {
                return Err(crate::shut_down());
            }
            q.jobs.push((events, tx));
            !std::mem::replace(&mut q.flushing, true)
        };
        if start {
            let store = self.clone();
            self.handle().spawn(async move { store.flush_audit().await });
        }
        rx.await.unwrap_or_else(|_| Err(crate::shut_down()))
    }

    /// Writes what is queued, one group at a time, until the queue is empty.
    async fn flush_audit(&self) {
        loop {
            let jobs = {
                let mut q = self.audit_queue().state.lock().unwrap_or_else(|e| e.into_inner());
                if q.jobs.is_empty() {
                    q.flushing = false;
                    return;
                }
                let mut events = 0;
                let take = q
                    .jobs
                    .iter()
                    .take_while(|(e, _)| {
                        events += e.len();
                        events <= MAX_GROUP
                    })
                    .count()
                    .max(1);
                q.jobs.drain(..take).collect::<Vec<_>>()
            };
            if jobs.len() == 1 {
                let (events, reply) = jobs.into_iter().next().expect("one job");
                let _ = reply.send(self.append_now(events).await);
                continue;
            }
            let all: Vec<AuditEvent> = jobs.iter().flat_map(|(e, _)| e.iter().cloned()).collect();
            match self.append_now(all).await {
                // An event the database refuses (text PostgreSQL cannot store) must not take
                // the others down with it: each caller's events again, on their own.
                Err(StoreError::Other(_)) => {
                    for (events, reply) in jobs {
                        let _ = reply.send(self.append_now(events).await);
                    }
                }
                r => {
                    for (_, reply) in jobs {
                        let _ = reply.send(r.clone());
                    }
                }
            }
        }
    }

    async fn append_now(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        match self.call(Request::AppendAudit(events)).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// The newest `q.limit` events matching `q`, oldest first (newest last).
    pub async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        match self.call(Request::QueryAudit(q.clone())).await? {
            Reply::Audit(events) => Ok(events),
            r => Err(unexpected(r)),
        }
    }
}

/// `t` truncated to the millisecond, as the store keeps it: what comes back compares equal.
pub fn to_ms(t: SystemTime) -> SystemTime {
    crate::ops::from_unix_ms(crate::ops::unix_ms(t))
}

/// The query of `q` with only the filters it sets, parameters numbered `{p}1`, `{p}2`, ... in
/// the order since, user, kind, limit. Not `(? IS NULL OR ...)`: a statement planned once for
/// any filter cannot start at `since` in the time index, and would read a whole log of
/// millions of events to find the last hour's.
pub(crate) fn query_sql(q: &AuditQuery, p: &str) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("{p}{n}")
    };
    let mut conds = Vec::with_capacity(3);
    if q.since.is_some() {
        conds.push(format!("time_ms >= {}", next()));
    }
    if q.user.is_some() {
        conds.push(format!("user_name = {}", next()));
    }
    if q.kind.is_some() {
        conds.push(format!("kind = {}", next()));
    }
    let filter =
        if conds.is_empty() { String::new() } else { format!("WHERE {} ", conds.join(" AND ")) };
    format!(
        "SELECT time_ms, node, client, host, path, user_name, kind, outcome, reason FROM audit \
         {filter}ORDER BY time_ms DESC, id DESC LIMIT {}",
        next()
    )
}
