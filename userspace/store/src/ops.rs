//! What callers ask for ([`Op`] in a [`crate::Store::txn`]) and what comes back; and the one
//! internal request type both backends execute, so metrics, timeouts and dispatch exist once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    audit::{AuditEvent, AuditQuery},
    outbox::{OutboxItem, OutboxStats},
};

/// One operation of a [`crate::Store::txn`]. The first op whose precondition fails aborts the
/// whole transaction: nothing of it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create `key`; aborts with [`Abort::Conflict`] (carrying the existing value) if a live
    /// row exists. An expired row is replaced.
    Insert { ns: String, key: String, value: Vec<u8>, ttl: Option<Duration> },
    /// Create or overwrite `key`.
    Put { ns: String, key: String, value: Vec<u8>, ttl: Option<Duration> },
    /// Delete `key` and return its value; aborts with [`Abort::Missing`] if no live row.
    Take { ns: String, key: String },
    /// Compare-and-set: if the live value equals `expect`, set it to `new` (with `ttl`), or
    /// delete it when `new` is None; otherwise abort with [`Abort::Mismatch`] carrying the
    /// current value (None: no live row).
    Swap { ns: String, key: String, expect: Vec<u8>, new: Option<Vec<u8>>, ttl: Option<Duration> },
    /// Delete `key` if present; never aborts.
    Delete { ns: String, key: String },
    /// Add an outbox row, delivered only if the transaction commits.
    Enqueue { topic: String, payload: Vec<u8> },
}

/// How a [`crate::Store::txn`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every op applied. One entry per op: `Take` → the value taken, `Enqueue` → the new row's
    /// id as 8 little-endian bytes, every other op → None.
    Committed(Vec<Option<Vec<u8>>>),
    /// Op number `op` (0-based) failed its precondition; nothing was applied.
    Aborted { op: usize, why: Abort },
}

/// Why a transaction aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abort {
    /// `Insert` met a live row: its value.
    Conflict(Vec<u8>),
    /// `Take` found no live row.
    Missing,
    /// `Swap` found another value (None: no live row).
    Mismatch(Option<Vec<u8>>),
}

/// The result of a unique [`crate::Store::insert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The row is ours.
    Done,
    /// A live row already held the key; nothing was written.
    Conflict { existing: Vec<u8> },
}

/// A live value, as [`crate::Store::scan`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    /// When the value stops being returned (None: never). On PostgreSQL this is the database's
    /// clock.
    pub expires_at: Option<SystemTime>,
}

/// Everything a backend executes. TTLs and delays are whole milliseconds, added to the
/// backend's own clock (the database's, on PostgreSQL).
#[derive(Debug)]
pub(crate) enum Request {
    Put {
        ns: String,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
    },
    Get {
        ns: String,
        key: String,
    },
    Take {
        ns: String,
        key: String,
    },
    Delete {
        ns: String,
        key: String,
    },
    Insert {
        ns: String,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<i64>,
    },
    Scan {
        ns: String,
        after: Option<String>,
        limit: i64,
    },
    Txn(Vec<Op>),
    Enqueue {
        topic: String,
        payload: Vec<u8>,
    },
    /// Leases due rows to `owner`; with `own`, rows still leased to `owner` are due too.
    Claim {
        topic: String,
        owner: String,
        limit: i64,
        lease_ms: i64,
        own: bool,
    },
    /// Marks delivered those of `ids` that `owner` still holds; how many.
    Complete {
        ids: Vec<i64>,
        owner: String,
    },
    Retry {
        id: i64,
        owner: String,
        delay_ms: i64,
        error: String,
    },
    /// Extends the lease of rows `owner` still holds (claimed, not completed or retried).
    Renew {
        ids: Vec<i64>,
        owner: String,
        lease_ms: i64,
    },
    OutboxStats,
    AppendAudit(Vec<AuditEvent>),
    QueryAudit(AuditQuery),
    /// One round of the sweeper: at most [`SWEEP_CHUNK`] expired values and finished outbox
    /// rows; at most [`AUDIT_SWEEP_CHUNK`] audit events older than `audit_keep_ms`, when set.
    Sweep {
        audit_keep_ms: Option<i64>,
    },
}

/// Rows the sweeper deletes per request, so one sweep never holds the SQLite writer (or a
/// PostgreSQL lock) for long; it repeats while a round comes back full.
pub(crate) const SWEEP_CHUNK: i64 = 5000;
/// Audit events the sweeper deletes per request: each is a row and three index entries, and
/// the writer's other requests wait for the batch it is in. A million-event prune made of
/// 5,000-event rounds back to back held SQLite writers for seconds; rounds of 1,000 with a
/// pause as long as the round (see `Store::sweep`) leave them at least half the writer.
pub(crate) const AUDIT_SWEEP_CHUNK: i64 = 1000;
/// Finished outbox rows are kept this long (for inspection) before the sweeper deletes them.
pub(crate) const OUTBOX_KEEP_DONE_MS: i64 = 24 * 3600 * 1000;

/// Names for `outpost_store_ops_total{op}`, in [`Request::index`] order.
pub(crate) const OP_NAMES: [&str; 16] = [
    "put",
    "get",
    "take",
    "delete",
    "insert",
    "scan",
    "txn",
    "enqueue",
    "claim",
    "complete",
    "retry",
    "outbox_stats",
    "append_audit",
    "query_audit",
    "sweep",
    "renew",
];

impl Request {
    pub(crate) fn index(&self) -> usize {
        match self {
            Request::Put { .. } => 0,
            Request::Get { .. } => 1,
            Request::Take { .. } => 2,
            Request::Delete { .. } => 3,
            Request::Insert { .. } => 4,
            Request::Scan { .. } => 5,
            Request::Txn(_) => 6,
            Request::Enqueue { .. } => 7,
            Request::Claim { .. } => 8,
            Request::Complete { .. } => 9,
            Request::Retry { .. } => 10,
            Request::OutboxStats => 11,
            Request::AppendAudit(_) => 12,
            Request::QueryAudit(_) => 13,
            Request::Sweep { .. } => 14,
            Request::Renew { .. } => 15,
        }
    }

    /// Reads go to SQLite's reader connection and never enter the group commit.
    pub(crate) fn is_read(&self) -> bool {
        matches!(
            self,
            Request::Get { .. }
                | Request::Scan { .. }
                | Request::OutboxStats
                | Request::QueryAudit(_)
        )
    }

    /// Whether it may add outbox rows (local outbox workers are woken after it).
    pub(crate) fn enqueues(&self) -> bool {
        match self {
            Request::Enqueue { .. } => true,
            Request::Txn(ops) => ops.iter().any(|o| matches!(o, Op::Enqueue { .. })),
            _ => false,
        }
    }
}

/// What a backend answers; [`crate::Store`]'s typed methods unpack it.
#[derive(Debug)]
pub(crate) enum Reply {
    Done,
    Value(Option<Vec<u8>>),
    Flag(bool),
    Inserted(Inserted),
    Records(Vec<Record>),
    Txn(TxnOutcome),
    Id(i64),
    Claimed(Vec<OutboxItem>),
    Stats(OutboxStats),
    Audit(Vec<AuditEvent>),
    /// Rows deleted by one sweep round: expired values, old finished outbox rows, audit events
    /// past their retention.
    Swept {
        values: u64,
        outbox: u64,
        audit: u64,
    },
}

/// A duration as whole milliseconds for the database, saturating (a TTL of years is fine).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Milliseconds since the Unix epoch; times before it (a broken clock) are negative.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => millis(d),
        Err(e) => -millis(e.duration()),
    }
}

/// The inverse of [`unix_ms`].
pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// The local clock in Unix milliseconds (SQLite's expiry clock: one node, one clock).
pub(crate) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}
