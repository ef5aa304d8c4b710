//! Audit events: who used what, when, and how it ended. Handlers emit typed events; the binary
//! decides where they go (the store, so every node sharing PostgreSQL writes to one log, and
//! optionally a JSON-lines file) by giving the core an [`AuditSink`].
//!
//! Events of a request are written after its response ([`Audit::record`] goes through
//! [`Session::after_response`]), so users never wait for logging. On SIGTERM the drain waits for
//! them; on SIGKILL the events still in memory are lost.

use std::{future::Future, pin::Pin, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::handler::Session;

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened (unix milliseconds in JSON).
    #[serde(with = "unix_ms")]
    pub time: SystemTime,
    /// The edge node that saw it.
    pub node: String,
    /// The client's address, when a request caused it.
    pub client: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    /// The user's email (or subject) when known.
    pub user: Option<String>,
    /// What happened, `<application>.<event>`: `access.login`, `reserve.confirm`.
    pub kind: String,
    /// How it ended: `success`, `denied`, `error`, ...
    pub outcome: String,
    /// Why, in a few words, when it did not simply succeed.
    pub reason: Option<String>,
}

impl AuditEvent {
    pub fn user(mut self, user: impl Into<String>) -> AuditEvent {
        self.user = Some(user.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> AuditEvent {
        self.reason = Some(reason.into());
        self
    }
}

/// Where events go. Implemented by the binary.
pub trait AuditSink: Send + Sync {
    /// Writes one event; the future ends once it is durable (or has failed, which the sink
    /// logs and counts).
    fn write(&self, event: AuditEvent) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A handler's way to the audit log: this node's name and the sink.
#[derive(Clone)]
pub struct Audit {
    node: String,
    sink: Option<Arc<dyn AuditSink>>,
}

impl Audit {
    pub fn new(node: impl Into<String>, sink: Option<Arc<dyn AuditSink>>) -> Audit {
        Audit { node: node.into(), sink }
    }

    /// An event of this node, now, with nothing else known yet.
    pub fn event(&self, kind: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            node: self.node.clone(),
            client: None,
            host: None,
            path: None,
            user: None,
            kind: kind.into(),
            outcome: outcome.into(),
            reason: None,
        }
    }

    /// An event about the request of `s`: client, host and path filled in.
    pub fn request_event(&self, s: &Session<'_>, kind: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            client: Some(s.client.addr.ip().to_string()),
            host: s.host(),
            path: Some(s.path().to_owned()),
            ..self.event(kind, outcome)
        }
    }

    /// Writes `event` after the response of `s`.
    pub fn record(&self, s: &mut Session<'_>, event: AuditEvent) {
        if let Some(sink) = &self.sink {
            s.after_response(sink.write(event));
        }
    }

    /// Writes `event` now (for events outside a request: a key rotation, an expiry sweep).
    pub async fn write(&self, event: AuditEvent) {
        if let Some(sink) = &self.sink {
            sink.write(event).await;
        }
    }
}

mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        s.serialize_u64(ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}
