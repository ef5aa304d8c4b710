//! The audit log: append-only events (who logged in, what was refused), queried newest last.

use std::time::SystemTime;

use crate::{
    ops::{Reply, Request},
    unexpected, Store, StoreError,
};

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
