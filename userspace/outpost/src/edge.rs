//! What `outpost run` adds around the proxy core: the store (`[store]`), the audit log
//! (`[audit]`) and its admin endpoint, the handlers this build ships, and the node's own audit
//! events (start, stop).

use std::{
    fs::{File, OpenOptions},
    future::Future,
    io::Write as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use outpost_api::{AdminEndpoint, Audit, AuditEvent, AuditSink, Reply};
use outpost_proxy::{config::Config, http::Request, metrics::MetricsSource, Registry};
use outpost_store::{AuditQuery, Store, StoreConfig, StoreError};
use serde::Deserialize;

/// `[audit]`: where audit events go besides the store.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Also append every event as one JSON line to this file (created `0600`). Default none.
    pub file: Option<PathBuf>,
    /// Delete events from the store once they are this many days old, in bounded batches by
    /// the store's sweeper. Default 0: kept for ever.
    pub keep_days: u32,
}

impl AuditConfig {
    /// How long events stay in the store (None: for ever).
    pub fn retention(&self) -> Option<Duration> {
        (self.keep_days > 0).then(|| Duration::from_secs(u64::from(self.keep_days) * 86_400))
    }
}

/// The sections this binary reads itself.
pub const SECTIONS: [&str; 4] = ["store", "audit", "fleet", "clients"];

/// Reads a top-level section into `T`, defaults when absent.
pub fn section<T: serde::de::DeserializeOwned + Default>(config: &Config, name: &str) -> Result<T> {
    match config.section(name) {
        Some(v) => v.clone().try_into().with_context(|| format!("in [{name}]")),
        None => Ok(T::default()),
    }
}

/// Opens the store the configuration names (SQLite in the data directory by default), for
/// `outpost run`.
pub fn open_store(config: &Config, successor: bool) -> Result<Store> {
    let store_config: StoreConfig = section(config, "store")?;
    Ok(match successor {
        true => Store::open_successor(&store_config, &config.data_dir())?,
        false => Store::open(&store_config, &config.data_dir())?,
    })
}

/// The same store for an operator's command, which may run beside the edge.
pub fn open_tool_store(config: &Config) -> Result<Store> {
    let store_config: StoreConfig = section(config, "store")?;
    Ok(Store::open_tool(&store_config, &config.data_dir())?)
}

/// The handlers this binary ships, and the sections it reads itself.
/// Also the series the applications render into `/metrics`.
pub fn registry(store: &Store) -> (Registry, Vec<MetricsSource>) {
    let access = outpost_access::AccessApp::new(store.clone());
    let metrics = vec![access.metrics_source()];
    let mut r = Registry::new()
        .route(outpost_origin::OriginFactory::default())
        .app(access)
        .app(outpost_reserve::ReserveApp::new(store.clone()));
    for s in SECTIONS {
        r = r.section(s);
    }
    (r, metrics)
}

/// Audit events into the store (so every node sharing PostgreSQL writes one log) and,
/// optionally, a JSON-lines file written by a thread of its own.
pub struct StoreAudit {
    store: Store,
    file: Mutex<Option<FileWriter>>,
    failed: Arc<AtomicU64>,
}

/// The JSON-lines file's writer thread and the queue to it.
struct FileWriter {
    queue: mpsc::SyncSender<AuditEvent>,
    thread: thread::JoinHandle<()>,
}

/// Events waiting for the file writer; past this they are dropped and counted.
const FILE_QUEUE: usize = 4096;

impl StoreAudit {
    pub fn new(store: Store, c: &AuditConfig) -> Result<StoreAudit> {
        let failed = Arc::new(AtomicU64::new(0));
        let file = match &c.file {
            Some(path) => Some(file_writer(path, failed.clone())?),
            None => None,
        };
        Ok(StoreAudit { store, file: Mutex::new(file), failed })
    }

    /// Writes what the file's queue still holds, syncs the file and stops its thread. Events
    /// after this go to the store only.
    pub fn close(&self) {
        let writer = self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(FileWriter { queue, thread }) = writer {
            drop(queue);
            let _ = thread.join();
        }
    }

    /// `outpost_audit_write_failures_total`.
    pub fn metrics(self: &Arc<Self>) -> MetricsSource {
        let me = self.clone();
        Arc::new(move |o: &mut String| {
            o.push_str(
                "# HELP outpost_audit_write_failures_total Audit events that could not be \
                 written (store or file).\n# TYPE outpost_audit_write_failures_total counter\n",
            );
            o.push_str(&format!(
                "outpost_audit_write_failures_total {}\n",
                me.failed.load(Relaxed)
            ));
        })
    }
}

fn file_writer(path: &Path, failed: Arc<AtomicU64>) -> Result<FileWriter> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f: File = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the audit file {}", path.display()))?;
    let (tx, rx) = mpsc::sync_channel::<AuditEvent>(FILE_QUEUE);
    let shown = path.display().to_string();
    let thread = thread::Builder::new().name("outpost-audit-file".into()).spawn(move || {
        for e in rx {
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            if let Err(err) = f.write_all(&line) {
                failed.fetch_add(1, Relaxed);
                tracing::warn!(file = %shown, error = %err, "audit file write failed");
            }
        }
        let _ = f.sync_all();
    })?;
    Ok(FileWriter { queue: tx, thread })
}

impl AuditSink for StoreAudit {
    fn write(&self, event: AuditEvent) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if let Some(w) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if w.queue.try_send(event.clone()).is_err() {
                self.failed.fetch_add(1, Relaxed);
                tracing::warn!("audit file queue full; event not written to the file");
            }
        }
        let store = self.store.clone();
        let failed = self.failed.clone();
        Box::pin(async move {
            let kind = event.kind.clone();
            if let Err(e) = store.append_audit(vec![event]).await {
                failed.fetch_add(1, Relaxed);
                tracing::warn!(%kind, error = %e, "audit event not written to the store");
            }
        })
    }
}

/// Admin endpoints of the binary: `GET /audit?since=1h&user=…&kind=…&limit=…` (JSON).
pub fn admin(store: &Store) -> Vec<(String, AdminEndpoint)> {
    let store = store.clone();
    let audit: AdminEndpoint = Arc::new(move |req: Request<'static>| {
        let store = store.clone();
        Box::pin(async move { audit_endpoint(&store, &req).await })
    });
    vec![("/audit".into(), audit)]
}

async fn audit_endpoint(store: &Store, req: &Request<'_>) -> Reply {
    if req.method != "GET" && req.method != "HEAD" {
        return Reply::json_error(405, "use GET").header("Allow", "GET, HEAD");
    }
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let q = match AuditParams::parse(query) {
        Ok(q) => q,
        Err(e) => return Reply::json_error(400, &e),
    };
    match store.query_audit(&q.query()).await {
        Ok(events) => {
            let body = serde_json::to_vec(&events).unwrap_or_default();
            Reply::new(200, "application/json", body)
        }
        Err(e) => store_error_reply(&e),
    }
}

/// 503 while the store cannot answer; 500 for anything else. Never the URL or a secret.
pub fn store_error_reply(e: &StoreError) -> Reply {
    match e {
        StoreError::Unavailable(_) | StoreError::Timeout => {
            Reply::json_error(503, "the store is unavailable; try again").header("Retry-After", "1")
        }
        _ => Reply::json_error(500, "store error"),
    }
}

/// The filters of `outpost audit` and `GET /audit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditParams {
    /// How far back, e.g. `1h`, `30m`, `2d`.
    pub since: Option<Duration>,
    pub user: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<usize>,
}

/// The most events one query returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

impl AuditParams {
    /// From a query string (`since=1h&user=a%40b.test`).
    pub fn parse(query: &str) -> Result<AuditParams, String> {
        let mut p = AuditParams::default();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("bad percent-encoding in {k}"))?;
            match k {
                "since" => p.since = Some(parse_age(&v)?),
                "user" => p.user = Some(v),
                "kind" => p.kind = Some(v),
                "limit" => {
                    p.limit = Some(v.parse().map_err(|_| format!("limit {v:?} is not a number"))?)
                }
                _ => return Err(format!("unknown parameter {k:?}: use since, user, kind, limit")),
            }
        }
        Ok(p)
    }

    /// As a query string for `GET /audit`.
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.since {
            parts.push(format!("since={}s", s.as_secs()));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={}", percent_encode(u)));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind={}", percent_encode(k)));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        parts.join("&")
    }

    pub fn query(&self) -> AuditQuery {
        AuditQuery {
            since: self.since.map(|d| SystemTime::now() - d),
            user: self.user.clone(),
            kind: self.kind.clone(),
            limit: self.limit.unwrap_or(1000).min(MAX_AUDIT_LIMIT),
        }
    }
}

/// `90s`, `30m`, `1h`, `2d` (humantime's forms).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("since {s:?}: {e} (try 30m, 1h, 2d)"))
}

pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Writes one of the node's own events (`node.start`, `node.stop`) and waits for it: outside
/// any runtime of the proxy, so a throwaway one waits (the store works on threads of its own).
pub fn node_event(audit: &Audit, kind: &str, reason: Option<String>) {
    let mut e = audit.event(kind, "success");
    e.reason = reason;
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(audit.write(e)),
        Err(err) => tracing::warn!(error = %err, "{kind}: audit event not written"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_params_round_trip() {
        let p = AuditParams::parse("since=1h&user=alice%40example.test&kind=access.login&limit=5")
            .unwrap();
        assert_eq!(p.since, Some(Duration::from_secs(3600)));
        assert_eq!(p.user.as_deref(), Some("alice@example.test"));
        assert_eq!(p.kind.as_deref(), Some("access.login"));
        assert_eq!(p.limit, Some(5));
        assert_eq!(AuditParams::parse(&p.to_query()).unwrap(), p);
        for bad in ["since=yesterday", "limit=x", "who=me", "user=%zz"] {
            assert!(AuditParams::parse(bad).is_err(), "accepted {bad}");
        }
    }
}
