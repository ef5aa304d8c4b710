//! The audit log: append-only events (who logged in, what was refused), queried newest last.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    ops::{Reply, Request},
    unexpected, Store, StoreError,
};

/// One audit event. Serialized with `time` as Unix milliseconds (an integer, UTC by
/// definition), which is also how the store keeps it: events order and filter exactly as
/// written, to the millisecond.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened (the caller's clock), kept to the millisecond.
    #[serde(serialize_with = "ser_ms", deserialize_with = "de_ms")]
    pub time: SystemTime,
    /// The edge node that recorded it.
    pub node: String,
    /// The client's address.
    pub client: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    /// The user it concerns, once known.
    pub user: Option<String>,
    /// What happened, e.g. `login`, `reserve`.
    pub kind: String,
    /// e.g. `ok`, `denied`.
    pub outcome: String,
    /// Why, for a refusal.
    pub reason: Option<String>,
}

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

fn ser_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(crate::ops::unix_ms(*t))
}

fn de_ms<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    Ok(crate::ops::from_unix_ms(i64::deserialize(d)?))
}

impl Store {
    /// Appends `events` in one transaction.
    pub async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
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
