//! A [`crate::Store::txn`] on PostgreSQL in two round trips, whatever its length: `BEGIN` and
//! every operation's statement go out pipelined (tokio-postgres sends the requests of futures
//! polled together back to back, and the server runs them in order), then `COMMIT`. Sent one
//! by one, a reservation (two unique inserts, two upserts, an outbox row) took seven.
//!
//! Pipelining needs every decision to be made by the statement itself, so each operation is
//! one statement that writes only when its precondition holds and says whether it did: a unique
//! insert is `INSERT ... ON CONFLICT DO UPDATE ... WHERE <expired> RETURNING`, a
//! compare-and-set is `UPDATE ... WHERE value = <expected> RETURNING`. The statements after
//! one whose precondition failed still run; the transaction is then rolled back, so none of
//! them counts. The value an abort reports (the live row of a conflict, the current value of
//! a mismatch) is read inside the transaction before the rollback: the conflicting row is
//! locked by the insert that met it. If anything failed after the first abort (the
//! transaction is then unusable for that read), the transaction is run again one statement at
//! a time ([`super::txn_ops`]), as it was before pipelining.

use deadpool_postgres::Object;
use tokio_postgres::{Row, Statement};

use super::{
    batch::{join_all, BoxFut},
    commit_unknown, query_opt, retryable, Conn, Pg, ENQUEUE, GET, INSERT, LOCKED, PUT, TAKE,
    TXN_ATTEMPTS,
};
use crate::{
    ops::{millis, Abort, Op, TxnOutcome},
    StoreError,
};

/// Compare-and-set to a new value: writes (and returns a row) only over the expected live one.
const SWAP_IF: &str = concat!(
    "UPDATE kv SET value = $3, expires_at = ",
    now!(),
    " + $4::int8 WHERE ns = $1 AND key = $2 AND value = $5 AND ",
    live!(),
    " RETURNING 1"
);
/// Compare-and-delete.
const DELETE_IF: &str = concat!(
    "DELETE FROM kv WHERE ns = $1 AND key = $2 AND value = $3 AND ",
    live!(),
    " RETURNING 1"
);

fn sql(op: &Op) -> &'static str {
    match op {
        Op::Insert { .. } => INSERT,
        Op::Put { .. } => PUT,
        Op::Take { .. } | Op::Delete { .. } => TAKE,
        Op::Swap { new: Some(_), .. } => SWAP_IF,
        Op::Swap { new: None, .. } => DELETE_IF,
        Op::Enqueue { .. } => ENQUEUE,
    }
}

/// How one pipelined attempt ended.
enum Attempt {
    Done(TxnOutcome),
    /// Rolled back by a deadlock or serialization failure: worth another attempt.
    Retry(StoreError),
    /// An operation aborted and a later statement failed: run it again one statement at a time.
    Sequential,
}

impl Pg {
    pub(super) async fn txn(&self, conn: &mut Conn, ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let c = conn.client();
        // Prepared before anything is sent (once per connection: the cache answers at once
        // afterwards), so that nothing waits for a round trip inside the pipeline.
        let stmts: Vec<Statement> = join_all(ops.iter().map(|op| {
            let fut: BoxFut<'_, _> = Box::pin(c.prepare_cached(sql(op)));
            fut
        }))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| self.err(e))?;
        let ttls: Vec<Option<i64>> = ops
            .iter()
            .map(|op| match op {
                Op::Insert { ttl, .. } | Op::Put { ttl, .. } | Op::Swap { ttl, .. } => {
                    ttl.map(millis)
                }
                _ => None,
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.pipelined(c, ops, &stmts, &ttls).await? {
                Attempt::Done(out) => return Ok(out),
                Attempt::Retry(e) if attempt >= TXN_ATTEMPTS => return Err(e),
                Attempt::Retry(_) => {}
                Attempt::Sequential => return self.txn_sequential(conn, ops).await,
            }
        }
    }

    async fn pipelined(
        &self,
        c: &Object,
        ops: &[Op],
        stmts: &[Statement],
        ttls: &[Option<i64>],
    ) -> Result<Attempt, StoreError> {
        let begin: BoxFut<'_, Result<Vec<Row>, tokio_postgres::Error>> =
            Box::pin(async move { c.batch_execute("BEGIN").await.map(|()| Vec::new()) });
        let statements = ops.iter().zip(stmts).zip(ttls).map(|((op, st), ttl)| {
            let fut: BoxFut<'_, _> = match op {
                Op::Insert { ns, key, value, .. } | Op::Put { ns, key, value, .. } => {
                    Box::pin(async move { c.query(st, &[ns, key, value, ttl]).await })
                }
                Op::Take { ns, key } | Op::Delete { ns, key } => {
                    Box::pin(async move { c.query(st, &[ns, key]).await })
                }
                Op::Swap { ns, key, expect, new: Some(new), .. } => {
                    Box::pin(async move { c.query(st, &[ns, key, new, ttl, expect]).await })
                }
                Op::Swap { ns, key, expect, new: None, .. } => {
                    Box::pin(async move { c.query(st, &[ns, key, expect]).await })
                }
                Op::Enqueue { topic, payload } => {
                    Box::pin(async move { c.query(st, &[topic, payload]).await })
                }
            };
            fut
        });
        let mut results = join_all(std::iter::once(begin).chain(statements)).await.into_iter();
        if let Some(Err(e)) = results.next() {
            // BEGIN failed: nothing after it ran in a transaction of ours.
            return Err(self.rolled_back(c, e).await);
        }
        let mut out = Vec::with_capacity(ops.len());
        let mut aborted = None;
        for (i, (op, r)) in ops.iter().zip(results.by_ref()).enumerate() {
            let rows = match r {
                Ok(rows) => rows,
                Err(e) if retryable(&e) => {
                    self.rollback(c).await?;
                    return Ok(Attempt::Retry(self.err(e)));
                }
                Err(e) => return Err(self.rolled_back(c, e).await),
            };
            let step = (|| -> Result<Option<Option<Vec<u8>>>, tokio_postgres::Error> {
                Ok(match op {
                    Op::Insert { .. } | Op::Swap { .. } if rows.is_empty() => None,
                    Op::Take { .. } => match rows.first() {
                        Some(row) if row.try_get::<_, bool>(1)? => Some(Some(row.try_get(0)?)),
                        _ => None,
                    },
                    Op::Enqueue { .. } => Some(match rows.first() {
                        Some(row) => Some(row.try_get::<_, i64>(0)?.to_le_bytes().to_vec()),
                        None => None,
                    }),
                    _ => Some(None),
                })
            })();
            match step {
                Ok(Some(v)) => out.push(v),
                Ok(None) => {
                    aborted = Some(i);
                    break;
                }
                Err(e) => return Err(self.rolled_back(c, e).await),
            }
        }
        let Some(i) = aborted else {
            return match c.batch_execute("COMMIT").await {
                Ok(()) => Ok(Attempt::Done(TxnOutcome::Committed(out))),
                Err(e) if commit_unknown(&e) => Err(self.commit_err(e)),
                // The server answered with an ERROR: it rolled the transaction back.
                Err(e) if retryable(&e) => Ok(Attempt::Retry(self.err(e))),
                Err(e) => Err(self.err(e)),
            };
        };
        // Statements after the abort ran too; one that failed leaves the transaction unable
        // to read the value the abort reports.
        if results.any(|r| r.is_err()) {
            self.rollback(c).await?;
            return Ok(Attempt::Sequential);
        }
        let why = match &ops[i] {
            Op::Insert { ns, key, .. } => match query_opt(c, LOCKED, &[ns, key]).await {
                // The insert that met the row locked it: it is still there to read.
                Ok(Some(row)) => row.try_get(0).map(Abort::Conflict),
                Ok(None) => Ok(Abort::Conflict(Vec::new())),
                Err(e) => Err(e),
            },
            Op::Swap { ns, key, .. } => query_opt(c, GET, &[ns, key])
                .await
                .and_then(|row| row.map(|r| r.try_get(0)).transpose())
                .map(Abort::Mismatch),
            _ => Ok(Abort::Missing),
        };
        let why = match why {
            Ok(why) => why,
            Err(e) => return Err(self.rolled_back(c, e).await),
        };
        self.rollback(c).await?;
        Ok(Attempt::Done(TxnOutcome::Aborted { op: i, why }))
    }

    /// Ends the transaction. A connection that cannot is unusable: reported `Unavailable`, so
    /// it is closed instead of going back to the pool inside a transaction.
    async fn rollback(&self, c: &Object) -> Result<(), StoreError> {
        c.batch_execute("ROLLBACK").await.map_err(|e| match self.err(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Unavailable(format!("rolling back failed: {other}")),
        })
    }

    /// `e` as the store's error, once the transaction is rolled back.
    async fn rolled_back(&self, c: &Object, e: tokio_postgres::Error) -> StoreError {
        match self.rollback(c).await {
            Ok(()) => self.err(e),
            Err(lost) => lost,
        }
    }

    /// One statement at a time, stopping at the first abort.
    async fn txn_sequential(&self, conn: &mut Conn, ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tx = conn.client().transaction().await.map_err(|e| self.err(e))?;
            match super::txn_ops(&tx, ops).await {
                Ok(TxnOutcome::Committed(out)) => match tx.commit().await {
                    Ok(()) => return Ok(TxnOutcome::Committed(out)),
                    Err(e) if retryable(&e) && attempt < TXN_ATTEMPTS => continue,
                    Err(e) => return Err(self.commit_err(e)),
                },
                Ok(aborted) => {
                    tx.rollback().await.map_err(|e| self.err(e))?;
                    return Ok(aborted);
                }
                // Dropping `tx` rolls back.
                Err(e) if retryable(&e) && attempt < TXN_ATTEMPTS => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
    }
}
