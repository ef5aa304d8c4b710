//! PostgreSQL shared by edge nodes: a deadpool pool of tokio-postgres connections, living on
//! the store's own runtime.
//!
//! Every decision is one statement or one transaction, so two nodes never both win:
//! - `take` is `DELETE ... RETURNING`: of two concurrent deletes of a row, the second waits for
//!   the row lock, then finds it gone.
//! - a unique insert is `INSERT ... ON CONFLICT DO UPDATE ... WHERE <existing expired>`: it
//!   creates the row, replaces an expired one, or (condition false) leaves a live one alone;
//!   either way the row is locked for the statement, so nothing slips in between. Only when it
//!   wrote nothing do we read the live value back for the `Conflict`.
//! - `claim` picks due rows with `FOR UPDATE SKIP LOCKED`, so concurrent claimers split the
//!   queue instead of waiting on each other; a row leased by a committed claim is rechecked
//!   and skipped.
//!
//! Expiry uses the database's clock (`statement_timestamp()`), never a node's: nodes' clocks
//! may differ, the database has one. Keys are `COLLATE "C"` (bytewise, as on SQLite).
//!
//! Concurrent single-key writes are committed in groups, one transaction per connection, when
//! they queue up behind busy connections (`batch`).
//!
//! A connection whose operation was cut short (timeout) is dropped, not returned to the pool:
//! it may still be in the middle of a transaction. So is one whose operation found it unusable
//! (`Unavailable`: lost, or its server shutting down or now read-only, as a demoted primary
//! is). A connection broken by a restart reports closed and the pool discards it. The next
//! checkout connects afresh, through the URL's host list (`hosts`): after a failover, to the
//! new primary.

mod batch;
mod hosts;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::{config::Host, config::TargetSessionAttrs, error::SqlState};

use crate::{
    audit::{AuditEvent, AuditQuery},
    config::StoreConfig,
    ops::{
        from_unix_ms, millis, Abort, Inserted, Op, Record, Reply, Request, TxnOutcome,
        AUDIT_SWEEP_CHUNK, OUTBOX_KEEP_DONE_MS, SWEEP_CHUNK,
    },
    outbox::{OutboxItem, OutboxStats},
    schema, StoreError,
};

/// "Now" in Unix milliseconds on the database's clock, fixed for one statement.
macro_rules! now {
    () => {
        "(extract(epoch from statement_timestamp()) * 1000)::int8"
    };
}

/// An outbox row not done yet, for the statements that find their rows by id (complete, renew,
/// retry). `done_at` is a time in Unix ms, never 0, so this is `done_at IS NULL`; written so
/// because the planner takes `done_at IS NULL` as a reason to use the partial index
/// `outbox_due` (topic, next_at, id), where `id` is the last column: a scan of the whole queue
/// for every call instead of a primary-key lookup per id. During a reservation spike that
/// made each completion of a batch of mails 0.7 ms of PostgreSQL's time on average, and 28 ms
/// for a batch of 320 (auto_explain, benches/README).
macro_rules! undone {
    () => {
        "coalesce(done_at, 0) = 0"
    };
}

/// Live: no expiry, or expiry still ahead.
macro_rules! live {
    () => {
        concat!("(expires_at IS NULL OR expires_at > ", now!(), ")")
    };
}

mod txn;

const PUT: &str = concat!(
    "INSERT INTO kv (ns, key, value, expires_at) VALUES ($1, $2, $3, ",
    now!(),
    " + $4::int8) ON CONFLICT (ns, key) DO UPDATE
     SET value = excluded.value, expires_at = excluded.expires_at"
);
const GET: &str = concat!("SELECT value FROM kv WHERE ns = $1 AND key = $2 AND ", live!());
const TAKE: &str = concat!("DELETE FROM kv WHERE ns = $1 AND key = $2 RETURNING value, ", live!());
/// Inserts, or replaces an expired row; returns a row only when it wrote.
const INSERT: &str = concat!(
    "INSERT INTO kv (ns, key, value, expires_at) VALUES ($1, $2, $3, ",
    now!(),
    " + $4::int8) ON CONFLICT (ns, key) DO UPDATE
     SET value = excluded.value, expires_at = excluded.expires_at
     WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ",
    now!(),
    " RETURNING 1"
);
/// Inside a transaction, after INSERT wrote nothing: the row it locked.
const LOCKED: &str = "SELECT value FROM kv WHERE ns = $1 AND key = $2";
const SWAP_CURRENT: &str =
    concat!("SELECT value, ", live!(), " FROM kv WHERE ns = $1 AND key = $2 FOR UPDATE");
const SWAP_SET: &str = concat!(
    "UPDATE kv SET value = $3, expires_at = ",
    now!(),
    " + $4::int8 WHERE ns = $1 AND key = $2"
);
const SCAN: &str = concat!(
    "SELECT key, value, expires_at FROM kv WHERE ns = $1 AND ",
    live!(),
    " ORDER BY key LIMIT $2"
);
const SCAN_AFTER: &str = concat!(
    "SELECT key, value, expires_at FROM kv WHERE ns = $1 AND key > $2 AND ",
    live!(),
    " ORDER BY key LIMIT $3"
);
const ENQUEUE: &str = concat!(
    "INSERT INTO outbox (topic, payload, attempts, created_at, next_at) VALUES ($1, $2, 0, ",
    now!(),
    ", ",
    now!(),
    ") RETURNING id"
);
const CLAIM: &str = concat!(
    "UPDATE outbox SET lease_until = ",
    now!(),
    " + $3::int8, owner = $2 WHERE id IN (
         SELECT id FROM outbox
         WHERE topic = $1 AND done_at IS NULL AND next_at <= ",
    now!(),
    " AND (lease_until IS NULL OR ($5::bool AND owner = $2) OR lease_until <= ",
    now!(),
    ") ORDER BY next_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
     RETURNING id, topic, payload, attempts, created_at"
);
const COMPLETE: &str = concat!(
    "UPDATE outbox SET done_at = ",
    now!(),
    ", lease_until = NULL WHERE id = ANY($1) AND owner = $2 AND ",
    undone!()
);
const RETRY: &str = concat!(
    "UPDATE outbox SET attempts = attempts + 1, next_at = ",
    now!(),
    " + $3::int8, lease_until = NULL, owner = NULL, last_error = $4
     WHERE id = $1 AND owner = $2 AND ",
    undone!()
);
const RENEW: &str = concat!(
    "UPDATE outbox SET lease_until = ",
    now!(),
    " + $3::int8 WHERE id = ANY($1) AND owner = $2 AND lease_until IS NOT NULL AND ",
    undone!()
);
const STATS: &str =
    concat!("SELECT count(*), ", now!(), " - min(created_at) FROM outbox WHERE done_at IS NULL");
/// All events in one statement (one round trip, atomic).
const AUDIT_APPEND: &str =
    "INSERT INTO audit (time_ms, node, client, host, path, user_name, kind, outcome, reason)
     SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[],
                          $6::text[], $7::text[], $8::text[], $9::text[])";
/// The outer condition is checked again: a row re-put after the subquery saw it survives.
const SWEEP_VALUES: &str = concat!(
    "DELETE FROM kv WHERE (ns, key) IN (
         SELECT ns, key FROM kv WHERE expires_at <= ",
    now!(),
    " LIMIT $1) AND expires_at <= ",
    now!()
);
const SWEEP_OUTBOX: &str = concat!(
    "DELETE FROM outbox WHERE id IN (
         SELECT id FROM outbox WHERE done_at <= ",
    now!(),
    " - $2::int8 LIMIT $1)"
);
/// Audit events past their retention, oldest first (index `audit_time`).
const SWEEP_AUDIT: &str = concat!(
    "DELETE FROM audit WHERE id IN (
         SELECT id FROM audit WHERE time_ms < ",
    now!(),
    " - $2::int8 ORDER BY time_ms LIMIT $1)"
);
/// Serializes migrations of every node starting at once ("outpost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7574_706f_7374;
/// Attempts of a transaction that PostgreSQL aborted as a deadlock or serialization failure.
const TXN_ATTEMPTS: usize = 5;
/// Rounds of "insert wrote nothing, but the live row vanished before we read it".
const INSERT_ROUNDS: usize = 16;

pub(crate) struct Pg {
    pool: Pool,
    /// Single-key writes go here to be committed in groups (batch.rs), once started.
    writes: OnceLock<tokio::sync::mpsc::UnboundedSender<batch::Job>>,
    /// `timeout_ms`: bounds a batch of writes as it bounds any single operation.
    timeout: Duration,
    /// The password, scrubbed from any driver message before it becomes an error.
    secret: Option<String>,
    describe: String,
    hosts: Arc<hosts::Hosts>,
}

impl Pg {
    /// Connects (bounded by `connect_timeout_ms`) and migrates. Runs on the store runtime.
    pub(crate) async fn open(url: &str, cfg: &StoreConfig) -> Result<Pg, StoreError> {
        let mut pgc = parse_url(url)?;
        let connect_timeout = cfg.connect_timeout();
        pgc.connect_timeout(connect_timeout);
        // A peer that vanished without a FIN (a partition) is noticed, not waited on forever.
        pgc.keepalives_idle(Duration::from_secs(15));
        if pgc.get_application_name().is_none() {
            pgc.application_name("outpost");
        }
        let secret = pgc
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        let describe = describe(&pgc);
        let hosts = Arc::new(hosts::Hosts::new(&pgc, connect_timeout)?);
        // Each host's attempt is bounded inside the walk; this only stops a checkout from
        // waiting longer than a whole walk.
        let walk_limit = hosts.walk_limit();
        let mgr = Manager::from_connect(
            pgc,
            hosts::Walk(hosts.clone()),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.timeout()))
            .create_timeout(Some(walk_limit + Duration::from_millis(100)))
            .recycle_timeout(Some(cfg.timeout()))
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build the PostgreSQL pool: {e}")))?;
        let pg =
            Pg { pool, writes: OnceLock::new(), timeout: cfg.timeout(), secret, describe, hosts };

        // The first connection names the server and what failed, host by host; an unreachable
        // or silent server fails within connect_timeout per host.
        let fail = |why: String| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {}",
                pg.describe,
                pg.scrub(&why)
            ))
        };
        // A little past the walk's own bound, so that its answer (host by host) comes first.
        let obj = match tokio::time::timeout(walk_limit + Duration::from_millis(200), pg.pool.get())
            .await
        {
            Ok(Ok(obj)) => obj,
            Ok(Err(e)) => {
                return Err(fail(match (pg.hosts.last_failure(), e) {
                    (Some(why), PoolError::Backend(_)) => why,
                    (_, PoolError::Backend(e)) => chain(&e),
                    (_, PoolError::Timeout(_)) => format!("no answer within {walk_limit:?}"),
                    (_, other) => other.to_string(),
                }))
            }
            Err(_) => return Err(fail(format!("no answer within {walk_limit:?}"))),
        };
        let mut conn = Conn { obj: Some(obj) };
        pg.migrate(&mut conn).await?;
        conn.finish();
        Ok(pg)
    }

    pub(crate) fn describe(&self) -> &str {
        &self.describe
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn close(&self) {
        self.pool.close();
    }

    async fn migrate(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let client = conn.client();
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.err(e))?;
        let exists: bool = tx
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err(e))?;
        let found: i64 = if exists {
            tx.query_one("SELECT coalesce(max(version), 0)::int8 FROM schema_version", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| self.err(e))?
        } else {
            0
        };
        // Too new: the transaction is dropped (rolled back) having read only.
        let pending: Vec<_> = schema::pending(schema::POSTGRES, found)?.collect();
        if pending.is_empty() {
            return tx.commit().await.map_err(|e| self.err(e));
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version BIGINT PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .await
        .map_err(|e| self.err(e))?;
        for (version, sql) in pending {
            tx.batch_execute(sql).await.map_err(|e| self.err(e))?;
            tx.execute(
                concat!(
                    "INSERT INTO schema_version (version, applied_at) VALUES ($1, ",
                    now!(),
                    ")"
                ),
                &[version],
            )
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Runs one request on a pooled connection. Dropping the future (a timeout) drops the
    /// connection with it.
    pub(crate) async fn exec(&self, req: Request) -> Result<Reply, StoreError> {
        let req = match (self.writes.get(), batch::Write::from_request(req)) {
            (Some(queue), Ok(write)) => {
                let (reply, rx) = tokio::sync::oneshot::channel();
                match queue.send(batch::Job { write, reply }) {
                    Ok(()) => {
                        return rx.await.unwrap_or_else(|_| {
                            Err(StoreError::Unavailable("the store is shut down".into()))
                        })
                    }
                    Err(back) => back.0.write.into_request(),
                }
            }
            (None, Ok(write)) => write.into_request(),
            (_, Err(req)) => req,
        };
        let obj = self.pool.get().await.map_err(|e| self.pool_err(e))?;
        let mut conn = Conn { obj: Some(obj) };
        let r = self.run(&mut conn, req).await;
        conn.release(r.as_ref().err());
        r
    }

    async fn run(&self, conn: &mut Conn, req: Request) -> Result<Reply, StoreError> {
        let e = |e| self.err(e);
        let c = conn.client();
        Ok(match req {
            Request::Put { ns, key, value, ttl_ms } => {
                exec(c, PUT, &[&ns, &key, &value, &ttl_ms]).await.map_err(e)?;
                Reply::Done
            }
            Request::Get { ns, key } => {
                Reply::Value(match query_opt(c, GET, &[&ns, &key]).await.map_err(e)? {
                    Some(row) => Some(row.try_get(0).map_err(e)?),
                    None => None,
                })
            }
            Request::Take { ns, key } => Reply::Value(take(c, &ns, &key).await.map_err(e)?),
            Request::Delete { ns, key } => {
                Reply::Flag(take(c, &ns, &key).await.map_err(e)?.is_some())
            }
            Request::Insert { ns, key, value, ttl_ms } => {
                Reply::Inserted(self.insert(c, &ns, &key, &value, ttl_ms).await?)
            }
            Request::Scan { ns, after, limit } => {
                let rows = match &after {
                    None => query(c, SCAN, &[&ns, &limit]).await,
                    Some(after) => query(c, SCAN_AFTER, &[&ns, after, &limit]).await,
                }
                .map_err(e)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(Record {
                        key: r.try_get(0).map_err(e)?,
                        value: r.try_get(1).map_err(e)?,
                        expires_at: r.try_get::<_, Option<i64>>(2).map_err(e)?.map(from_unix_ms),
                    });
                }
                Reply::Records(out)
            }
            Request::Txn(ops) => Reply::Txn(self.txn(conn, &ops).await?),
            Request::Enqueue { topic, payload } => Reply::Id(
                query_opt(c, ENQUEUE, &[&topic, &payload])
                    .await
                    .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                    .map_err(e)?
                    .ok_or_else(|| StoreError::Other("enqueue returned no id".into()))?,
            ),
            Request::Claim { topic, owner, limit, lease_ms, own } => {
                let rows =
                    query(c, CLAIM, &[&topic, &owner, &lease_ms, &limit, &own]).await.map_err(e)?;
                let mut items = Vec::with_capacity(rows.len());
                for r in rows {
                    let id: i64 = r.try_get(0).map_err(e)?;
                    let attempts: i32 = r.try_get(3).map_err(e)?;
                    items.push(OutboxItem {
                        id,
                        topic: r.try_get(1).map_err(e)?,
                        payload: r.try_get(2).map_err(e)?,
                        attempts: u32::try_from(attempts).map_err(|_| {
                            StoreError::Other(format!("outbox row {id}: bad attempts {attempts}"))
                        })?,
                        created_at: from_unix_ms(r.try_get(4).map_err(e)?),
                    });
                }
                items.sort_by_key(|i| i.id);
                Reply::Claimed(items)
            }
            Request::Complete { ids, owner } => {
                Reply::Id(exec(c, COMPLETE, &[&ids, &owner]).await.map_err(e)? as i64)
            }
            Request::Retry { id, owner, delay_ms, error } => Reply::Flag(
                exec(c, RETRY, &[&id, &owner, &delay_ms, &error]).await.map_err(e)? == 1,
            ),
            Request::Renew { ids, owner, lease_ms } => {
                Reply::Id(exec(c, RENEW, &[&ids, &owner, &lease_ms]).await.map_err(e)? as i64)
            }
            Request::OutboxStats => {
                let row = query_opt(c, STATS, &[]).await.map_err(e)?;
                let (pending, oldest): (i64, Option<i64>) = match row {
                    Some(r) => (r.try_get(0).map_err(e)?, r.try_get(1).map_err(e)?),
                    None => (0, None),
                };
                Reply::Stats(OutboxStats {
                    pending: pending.max(0) as u64,
                    oldest_age: oldest.map(|ms| Duration::from_millis(ms.max(0) as u64)),
                })
            }
            Request::AppendAudit(events) => {
                append_audit(c, &events).await.map_err(e)?;
                Reply::Done
            }
            Request::QueryAudit(q) => Reply::Audit(query_audit(c, &q).await.map_err(e)?),
            Request::Sweep { audit_keep_ms } => {
                let values = exec(c, SWEEP_VALUES, &[&SWEEP_CHUNK]).await.map_err(e)?;
                let outbox = exec(c, SWEEP_OUTBOX, &[&SWEEP_CHUNK, &OUTBOX_KEEP_DONE_MS])
                    .await
                    .map_err(e)?;
                let audit = match audit_keep_ms {
                    Some(keep) => {
                        exec(c, SWEEP_AUDIT, &[&AUDIT_SWEEP_CHUNK, &keep]).await.map_err(e)?
                    }
                    None => 0,
                };
                Reply::Swept { values, outbox, audit }
            }
        })
    }

    /// Autocommit: the INSERT decides; a conflict is then reported with the value live at the
    /// moment we read it (a valid point to place the failed insert at).
    async fn insert<C: GenericClient>(
        &self,
        c: &C,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<i64>,
    ) -> Result<Inserted, StoreError> {
        let e = |e| self.err(e);
        for _ in 0..INSERT_ROUNDS {
            if query_opt(c, INSERT, &[&ns, &key, &value, &ttl_ms]).await.map_err(e)?.is_some() {
                return Ok(Inserted::Done);
            }
            if let Some(row) = query_opt(c, GET, &[&ns, &key]).await.map_err(e)? {
                return Ok(Inserted::Conflict { existing: row.try_get(0).map_err(e)? });
            }
            // The live row was taken or expired between the two statements: try again.
        }
        Err(StoreError::Other(format!("insert {ns}/{key}: the key kept changing hands")))
    }

    /// What the driver says, causes included ("error connecting to server: Connection
    /// refused"), without the password.
    fn message(&self, e: &tokio_postgres::Error) -> String {
        self.scrub(&chain(e))
    }

    /// A failed COMMIT: an ERROR from the server means it rolled back (a plain error);
    /// anything else (the connection lost, the server shutting down or crashing as it
    /// answered) leaves the outcome unknown, and the message says so.
    fn commit_err(&self, e: tokio_postgres::Error) -> StoreError {
        if commit_unknown(&e) {
            StoreError::Unavailable(format!(
                "connection lost during a commit, outcome unknown ({})",
                self.message(&e)
            ))
        } else {
            self.err(e)
        }
    }

    /// A driver error as the store's; the password never survives into the message.
    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        let msg = self.message(&e);
        if e.is_closed() {
            return StoreError::Unavailable(format!("connection to PostgreSQL lost ({msg})"));
        }
        match e.code() {
            Some(code) if unavailable(code) => StoreError::Unavailable(msg),
            Some(&SqlState::QUERY_CANCELED) => StoreError::Timeout,
            Some(_) => StoreError::Other(msg),
            // No SQLSTATE: the socket (io) failed, or a value did not convert.
            None if is_io(&e) => StoreError::Unavailable(msg),
            None => StoreError::Other(msg),
        }
    }

    fn pool_err(&self, e: PoolError) -> StoreError {
        match e {
            PoolError::Backend(e) => match self.err(e) {
                StoreError::Other(m) => StoreError::Unavailable(m),
                other => other,
            },
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => StoreError::Timeout,
            PoolError::Timeout(_) => {
                StoreError::Unavailable(format!("connecting to {} timed out", self.describe))
            }
            PoolError::Closed => StoreError::Unavailable("the store is shut down".into()),
            other => StoreError::Other(self.scrub(&other.to_string())),
        }
    }

    fn scrub(&self, msg: &str) -> String {
        match &self.secret {
            Some(s) => msg.replace(s.as_str(), "***"),
            None => msg.to_owned(),
        }
    }
}

/// A pooled connection that is given back only once its operation finished; dropped early
/// (the operation's future was cancelled) it is detached from the pool and closed.
struct Conn {
    obj: Option<Object>,
}

impl Conn {
    fn client(&mut self) -> &mut Object {
        self.obj.as_mut().expect("a Conn holds its connection until finish")
    }

    fn finish(mut self) {
        // Back to the pool (Object's own Drop); the Drop below then finds nothing.
        drop(self.obj.take());
    }

    /// Back to the pool, unless the operation found the connection unusable: a lost one, or
    /// one to a server that is shutting down or no longer takes writes (a demoted primary, a
    /// standby). Dropped, it is closed, and the next checkout walks the host list again.
    fn release(self, failed: Option<&StoreError>) {
        if !matches!(failed, Some(StoreError::Unavailable(_))) {
            self.finish();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            drop(Object::take(obj));
        }
    }
}

/// Parses a PostgreSQL URL the way [`Pg::open`] does, without connecting: `postgres://host`
/// as written (or `postgres://h1,h2/db`, several hosts), its password hidden in any error.
/// Unless the URL says otherwise, a connection is kept only on a server that takes writes
/// (`target_session_attrs=read-write`): the store writes on every path, so a standby, or a
/// primary demoted since, is passed over for the next host.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut pgc: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::Config(format!(
            "invalid PostgreSQL url {}: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    if !url.contains("target_session_attrs") {
        pgc.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    hosts::Hosts::new(&pgc, Duration::ZERO).map_err(|e| match e {
        StoreError::Config(m) => {
            StoreError::Config(format!("{m}: {}", crate::config::redact_url(url)))
        }
        e => e,
    })?;
    Ok(pgc)
}

/// How many hosts `url` names (1 if it does not parse: opening will say why).
pub(crate) fn host_count(url: &str) -> usize {
    parse_url(url).map(|c| c.get_hosts().len().max(c.get_hostaddrs().len()).max(1)).unwrap_or(1)
}

/// Connects once (each host of the URL within `limit`, as the pool does) and runs `SELECT 1`
/// within `limit`; no pool, no migration, nothing written (for `outpost check --connect`).
/// Returns the server as [`describe`] shows it.
pub(crate) async fn ping(url: &str, limit: Duration) -> Result<String, StoreError> {
    let mut pgc = parse_url(url)?;
    pgc.connect_timeout(limit);
    if pgc.get_application_name().is_none() {
        pgc.application_name("outpost check");
    }
    let shown = describe(&pgc);
    let secret = pgc
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| !p.is_empty());
    let scrub = |msg: String| match &secret {
        Some(s) => msg.replace(s.as_str(), "***"),
        None => msg,
    };
    let fail = |why: String| {
        StoreError::Unavailable(format!("cannot connect to PostgreSQL at {shown}: {}", scrub(why)))
    };
    // The same walk as the pool's: each host within `limit`, the read-write check included.
    let hosts = hosts::Hosts::new(&pgc, limit)?;
    let (client, connection) = hosts.connect().await.map_err(|f| fail(f.summary))?;
    let driver = tokio::spawn(connection);
    let ok = tokio::time::timeout(limit, client.simple_query("SELECT 1")).await;
    drop(client);
    let _ = tokio::time::timeout(limit, driver).await;
    match ok {
        Ok(Ok(_)) => Ok(shown.clone()),
        Ok(Err(e)) => Err(fail(chain(&e))),
        Err(_) => Err(fail(format!("no answer to SELECT 1 within {limit:?}"))),
    }
}

/// A driver error in one line: the server's message, or the error and its causes ("error
/// connecting to server: Connection refused (os error 111)"). Not scrubbed.
fn chain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn describe(c: &tokio_postgres::Config) -> String {
    let user = c.get_user().unwrap_or("");
    let pw = if c.get_password().is_some() { ":***" } else { "" };
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = c.get_dbname().unwrap_or(user);
    let at = if user.is_empty() { String::new() } else { format!("{user}{pw}@") };
    format!("postgres://{at}{}/{db}", hosts.join(","))
}

fn unavailable(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ]
        .contains(code)
}

/// A COMMIT that failed without the server saying it rolled back: the connection broke, or the
/// server was shutting down or crashing (a FATAL may follow a commit already made locally, e.g.
/// while it waited for a synchronous standby).
fn commit_unknown(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => unavailable(code),
        None => true,
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
        || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

async fn exec<C: GenericClient>(
    c: &C,
    sql: &'static str,
    params: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    c.execute(&c.prepare_cached(sql).await?, params).await
}

async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &'static str,
    params: Params<'_>,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    c.query_opt(&c.prepare_cached(sql).await?, params).await
}

async fn query<C: GenericClient>(
    c: &C,
    sql: &'static str,
    params: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    c.query(&c.prepare_cached(sql).await?, params).await
}

/// The live value deleted, if there was one (an expired row is deleted too).
async fn take<C: GenericClient>(
    c: &C,
    ns: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    match query_opt(c, TAKE, &[&ns, &key]).await? {
        Some(row) if row.try_get::<_, bool>(1)? => Ok(Some(row.try_get(0)?)),
        _ => Ok(None),
    }
}

async fn txn_ops<C: GenericClient>(
    tx: &C,
    ops: &[Op],
) -> Result<TxnOutcome, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let abort = |why| Ok(TxnOutcome::Aborted { op: i, why });
        match op {
            Op::Insert { ns, key, value, ttl } => {
                let ttl = ttl.map(millis);
                if query_opt(tx, INSERT, &[ns, key, value, &ttl]).await?.is_none() {
                    // INSERT locked the live row it left alone: it is still there to read.
                    let existing = match query_opt(tx, LOCKED, &[ns, key]).await? {
                        Some(row) => row.try_get(0)?,
                        None => Vec::new(),
                    };
                    return abort(Abort::Conflict(existing));
                }
                out.push(None);
            }
            Op::Put { ns, key, value, ttl } => {
                exec(tx, PUT, &[ns, key, value, &ttl.map(millis)]).await?;
                out.push(None);
            }
            Op::Take { ns, key } => match take(tx, ns, key).await? {
                Some(v) => out.push(Some(v)),
                None => return abort(Abort::Missing),
            },
            Op::Swap { ns, key, expect, new, ttl } => {
                let cur: Option<Vec<u8>> = match query_opt(tx, SWAP_CURRENT, &[ns, key]).await? {
                    Some(row) if row.try_get::<_, bool>(1)? => Some(row.try_get(0)?),
                    _ => None,
                };
                if cur.as_ref() != Some(expect) {
                    return abort(Abort::Mismatch(cur));
                }
                match new {
                    Some(v) => exec(tx, SWAP_SET, &[ns, key, v, &ttl.map(millis)]).await?,
                    None => exec(tx, TAKE, &[ns, key]).await?,
                };
                out.push(None);
            }
            Op::Delete { ns, key } => {
                exec(tx, TAKE, &[ns, key]).await?;
                out.push(None);
            }
            Op::Enqueue { topic, payload } => {
                let id: Option<i64> = match query_opt(tx, ENQUEUE, &[topic, payload]).await? {
                    Some(row) => Some(row.try_get(0)?),
                    None => None,
                };
                out.push(id.map(|id| id.to_le_bytes().to_vec()));
            }
        }
    }
    Ok(TxnOutcome::Committed(out))
}

async fn append_audit<C: GenericClient>(
    c: &C,
    events: &[AuditEvent],
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&AuditEvent) -> Option<&str>| -> Vec<Option<&str>> {
        events.iter().map(f).collect()
    };
    let times: Vec<i64> = events.iter().map(|e| crate::ops::unix_ms(e.time)).collect();
    let node = col(|e| Some(&e.node));
    let client = col(|e| e.client.as_deref());
    let host = col(|e| e.host.as_deref());
    let path = col(|e| e.path.as_deref());
    let user = col(|e| e.user.as_deref());
    let kind = col(|e| Some(&e.kind));
    let outcome = col(|e| Some(&e.outcome));
    let reason = col(|e| e.reason.as_deref());
    exec(c, AUDIT_APPEND, &[&times, &node, &client, &host, &path, &user, &kind, &outcome, &reason])
        .await
        .map(|_| ())
}

async fn query_audit<C: GenericClient>(
    c: &C,
    q: &AuditQuery,
) -> Result<Vec<AuditEvent>, tokio_postgres::Error> {
    let since = q.since.map(crate::ops::unix_ms);
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    // Only the filters that are set, so that the plan starts at `since` in the time index.
    let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::with_capacity(4);
    if let Some(since) = &since {
        args.push(since);
    }
    if let Some(user) = &q.user {
        args.push(user);
    }
    if let Some(kind) = &q.kind {
        args.push(kind);
    }
    args.push(&limit);
    let sql = crate::audit::query_sql(q, "$");
    let rows = c.query(&c.prepare_cached(&sql).await?, &args).await?;
    let mut events = Vec::with_capacity(rows.len());
    for r in rows.iter().rev() {
        events.push(AuditEvent {
            time: from_unix_ms(r.try_get(0)?),
            node: r.try_get(1)?,
            client: r.try_get(2)?,
            host: r.try_get(3)?,
            path: r.try_get(4)?,
            user: r.try_get(5)?,
            kind: r.try_get(6)?,
            outcome: r.try_get(7)?,
            reason: r.try_get(8)?,
        });
    }
    Ok(events)
}
