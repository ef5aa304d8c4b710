//! The `origin` handler: proxy to a set of origin servers, round robin over the healthy ones.
//!
//! Health has two inputs. Active checks (`GET health_check.path` every interval, from the
//! control thread) set a server up or down. Passive marking: a failed connect or a broken
//! exchange takes a server out of rotation for `down_for_ms`, or until the next successful
//! active check, whichever comes first; the request moves on to the next healthy server.
//!
//! State is shared by every worker thread (atomics); connection pools are per worker and live
//! in the core. Health survives a reload for servers that stay: [`OriginFactory`] remembers the
//! sets it built.
//!
//! ```toml
//! [[routes]]
//! host = "example.com"
//! handler = "origin"
//! [routes.origin]
//! servers = ["10.0.0.5:8080", "10.0.0.6:8080"]
//! health_check = { path = "/healthz", interval_ms = 2000 }
//! ```

use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use outpost_api::{
    erase,
    handler::set_header,
    http::{self, Request},
    BuildEnv, Built, Error, ErrorKind, ErrorSource, Handler, Peer, Result as PResult, RouteFactory,
    RouteSpec, Session,
};
use serde::Deserialize;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The origin name that stands for the built-in page.
pub const BUILTIN: &str = "builtin";

/// `[routes.origin]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Origin servers (`"host:port"` addresses, or `"builtin"` for the page served in-process),
    /// used round robin while healthy. Plain HTTP/1.1. Default `["builtin"]`.
    pub servers: Vec<String>,
    /// Connect timeout per attempt, in milliseconds. A refused or timed-out connection marks
    /// the server down and the next healthy one is tried. Default 800: a route whose only
    /// server is down answers 502 within a second.
    pub connect_timeout_ms: u64,
    /// Time for the origin's response head after the request was sent; past it the client gets
    /// 504. Default 30000.
    pub response_timeout_ms: u64,
    /// How long a server marked down by a failed request stays out of rotation when no active
    /// health check brings it back sooner, in milliseconds. Default 10000.
    pub down_for_ms: u64,
    /// Idle keep-alive connections kept per server and worker. Default 32.
    pub pool_size: usize,
    /// How long an idle pooled connection is kept, in milliseconds. Default 30000.
    pub pool_idle_ms: u64,
    /// Active health checks.
    pub health_check: HealthCheckConfig,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            servers: vec![BUILTIN.into()],
            connect_timeout_ms: 800,
            response_timeout_ms: 30_000,
            down_for_ms: 10_000,
            pool_size: 32,
            pool_idle_ms: 30_000,
            health_check: HealthCheckConfig::default(),
        }
    }
}

impl OriginConfig {
    /// Reads and checks a route's `[routes.origin]` table.
    pub fn from_settings(settings: &toml::Value) -> Result<OriginConfig> {
        let c: OriginConfig = settings.clone().try_into()?;
        if c.servers.is_empty() {
            bail!("`servers` is empty");
        }
        for s in &c.servers {
            if s != BUILTIN {
                resolve(s).with_context(|| format!("origin server {s:?}"))?;
            }
        }
        Ok(c)
    }
}

/// `health_check = { ... }`: `GET path` on every server; 2xx/3xx is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested. Default `/`.
    pub path: String,
    /// Milliseconds between checks; 0 turns active checks off. Default 5000.
    pub interval_ms: u64,
    /// Time for a check's connect and response head, in milliseconds. Default 1000.
    pub timeout_ms: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig { path: "/".into(), interval_ms: 5000, timeout_ms: 1000 }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Builds `origin` routes; remembers the server sets of earlier generations so that a reload
/// keeps the health of servers that stay.
#[derive(Default)]
pub struct OriginFactory {
    built: Mutex<Vec<Weak<Servers>>>,
}

impl RouteFactory for OriginFactory {
    fn name(&self) -> &'static str {
        "origin"
    }

    fn build(&self, route: &RouteSpec<'_>, env: &BuildEnv) -> Result<Built> {
        let c = OriginConfig::from_settings(route.settings)?;
        let servers = Servers::new(&c, env.builtin)?;
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built.retain(|w| w.strong_count() > 0);
        for old in built.iter().filter_map(Weak::upgrade) {
            servers.inherit_health(&old);
        }
        let servers = Arc::new(servers);
        built.push(Arc::downgrade(&servers));
        Ok(Built {
            handler: erase("origin", OriginHandler::new(servers.clone())),
            background: vec![Box::pin(health_loop(Arc::downgrade(&servers)))],
        })
    }
}

/// Resolves `"host:port"` to its first address (once, at configuration time).
pub fn resolve(s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("{s:?} is not a host:port address"))?
        .next()
        .ok_or_else(|| anyhow!("{s:?} resolves to no address"))
}

/// One origin server and its health.
pub struct Server {
    pub addr: SocketAddr,
    /// Last active check passed (true until the first check, and when checks are off).
    active_ok: AtomicBool,
    /// Out of rotation until this many ms after [`epoch`] (passive marking); 0 for none.
    down_until: AtomicU64,
}

impl Server {
    /// In rotation: its health check passes and it is not marked down. `now` is read only for
    /// a server that was marked down: a request that finds none reads no clock here.
    fn healthy(&self, now: impl FnOnce() -> u64) -> bool {
        if !self.active_ok.load(Relaxed) {
            return false;
        }
        let until = self.down_until.load(Relaxed);
        until == 0 || now() >= until
    }
}

/// One route's origin servers and settings.
pub struct Servers {
    pub servers: Vec<Server>,
    next: AtomicUsize,
    connect_timeout: Duration,
    response_timeout: Duration,
    down_for: Duration,
    pool_size: usize,
    pool_idle: Duration,
    health_path: String,
    health_interval: Duration,
    health_timeout: Duration,
}

impl Servers {
    pub fn new(c: &OriginConfig, builtin: Option<SocketAddr>) -> Result<Servers> {
        let servers = c
            .servers
            .iter()
            .map(|s| {
                let addr = if s == BUILTIN {
                    builtin.ok_or_else(|| anyhow!("the built-in page is not running"))?
                } else {
                    resolve(s)?
                };
                Ok(Server { addr, active_ok: AtomicBool::new(true), down_until: AtomicU64::new(0) })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Servers {
            servers,
            next: AtomicUsize::new(0),
            connect_timeout: ms(c.connect_timeout_ms),
            response_timeout: ms(c.response_timeout_ms),
            down_for: ms(c.down_for_ms),
            pool_size: c.pool_size,
            pool_idle: ms(c.pool_idle_ms),
            health_path: c.health_check.path.clone(),
            health_interval: ms(c.health_check.interval_ms),
            health_timeout: ms(c.health_check.timeout_ms),
        })
    }

    /// Takes over the health of servers with the same address in `old` (a reload).
    pub fn inherit_health(&self, old: &Servers) {
        for s in &self.servers {
            if let Some(o) = old.servers.iter().find(|o| o.addr == s.addr) {
                s.active_ok.store(o.active_ok.load(Relaxed), Relaxed);
                s.down_until.store(o.down_until.load(Relaxed), Relaxed);
            }
        }
    }

    /// The next healthy server in round-robin order that is not in `tried`.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.servers.len();
        let mut now = None;
        let start = self.next.fetch_add(1, Relaxed);
        (0..n).map(|i| (start + i) % n).find(|i| {
            !tried.contains(i) && self.servers[*i].healthy(|| *now.get_or_insert_with(now_ms))
        })
    }

    fn mark_down(&self, i: usize) {
        let s = &self.servers[i];
        let until = now_ms() + self.down_for.as_millis() as u64;
        if s.down_until.swap(until, Relaxed) < now_ms() {
            let for_ms = self.down_for.as_millis() as u64;
            tracing::warn!(server = %s.addr, for_ms, "origin server marked down");
        }
    }

    fn peer(&self, i: usize) -> Peer {
        Peer {
            addr: self.servers[i].addr,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            pool_size: self.pool_size,
            pool_idle: self.pool_idle,
        }
    }

    /// Whether server `i` is in rotation now.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.servers[i].healthy(now_ms)
    }
}

/// Milliseconds since the first call: a monotonic clock atomics can hold.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The handler.
pub struct OriginHandler {
    servers: Arc<Servers>,
}

impl OriginHandler {
    pub fn new(servers: Arc<Servers>) -> OriginHandler {
        OriginHandler { servers }
    }

    fn index(&self, peer: &Peer) -> Option<usize> {
        self.servers.servers.iter().position(|s| s.addr == peer.addr)
    }
}

/// Per request: the servers tried so far (inline: a request tries few, and most just one).
#[derive(Default)]
pub struct OriginCtx {
    tried: SmallVec<[usize; 4]>,
}

impl Handler for OriginHandler {
    type Ctx = OriginCtx;

    fn new_ctx(&self) -> OriginCtx {
        OriginCtx::default()
    }

    async fn upstream_peer(&self, _s: &mut Session<'_>, ctx: &mut OriginCtx) -> PResult<Peer> {
        let i = self.servers.pick(&ctx.tried).ok_or_else(|| {
            Error::new(ErrorKind::NoUpstream, ErrorSource::Upstream, "no healthy origin server")
        })?;
        ctx.tried.push(i);
        Ok(self.servers.peer(i))
    }

    fn fail_to_connect(
        &self,
        _s: &Session<'_>,
        peer: &Peer,
        ctx: &mut OriginCtx,
        e: &Error,
    ) -> bool {
        tracing::debug!(server = %peer.addr, error = %e, "connect to origin failed");
        if let Some(i) = self.index(peer) {
            self.servers.mark_down(i);
        }
        self.servers.pick(&ctx.tried).is_some()
    }

    fn upstream_failed(&self, peer: &Peer, _ctx: &mut OriginCtx, e: &Error) {
        // A slow answer is the request's problem, not the server's; a broken one is the
        // server's.
        if e.kind != ErrorKind::UpstreamTimeout {
            if let Some(i) = self.index(peer) {
                self.servers.mark_down(i);
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        s: &mut Session<'_>,
        up: &mut Request<'_>,
        _ctx: &mut OriginCtx,
    ) -> PResult<()> {
        // The core removed the forwarding fields of clients it does not trust
        // (`[http] trusted_proxies`), so any left came from a trusted proxy: the client's
        // address is appended to its `X-Forwarded-For`, otherwise it is the whole field.
        let ip = http::HeaderValue::ip(s.client.addr.ip());
        match up.headers.iter_mut().find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
            Some(h) => {
                let joined = [&h.value[..], b", ", &ip[..]].concat();
                h.value = http::HeaderValue::copied(&joined);
            }
            None => up.headers.push(http::Header { name: "X-Forwarded-For".into(), value: ip }),
        }
        set_header(&mut up.headers, "X-Forwarded-Proto", "https");
        // The authority the router matched, with the port the client named.
        set_header(&mut up.headers, "X-Forwarded-Host", s.authority().host_port());
        set_header(&mut up.headers, "X-Outpost-TLS-Version", s.client.tls.version);
        Ok(())
    }
}

/// Runs active health checks for `servers` until it is dropped (replaced by a reload and no
/// longer used). On the control thread (a tokio runtime).
pub async fn health_loop(servers: Weak<Servers>) {
    loop {
        let Some(set) = servers.upgrade() else { return };
        if set.health_interval.is_zero() {
            return;
        }
        let interval = set.health_interval;
        let checks: Vec<_> = (0..set.servers.len())
            .map(|i| {
                let set = set.clone();
                tokio::spawn(async move {
                    let ok = check(&set, set.servers[i].addr).await;
                    let s = &set.servers[i];
                    let was = s.active_ok.swap(ok, Relaxed);
                    if ok {
                        s.down_until.store(0, Relaxed);
                    }
                    if was != ok {
                        if ok {
                            tracing::info!(server = %s.addr, "origin server healthy");
                        } else {
                            let server = s.addr;
                            tracing::warn!(%server, "origin server failed its health check");
                        }
                    }
                })
            })
            .collect();
        drop(set);
        for c in checks {
            let _ = c.await;
        }
        tokio::time::sleep(interval).await;
    }
}

/// One check: 2xx or 3xx to `GET path` within the timeout.
async fn check(set: &Servers, addr: SocketAddr) -> bool {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut req = Vec::new();
        let headers = [
            http::Header::new("Host", addr.to_string()),
            http::Header::new("User-Agent", "outpost-health-check"),
            http::Header::new("Connection", "close"),
        ];
        http::write_request_head("GET", &set.health_path, &headers, &mut req);
        s.write_all(&req).await.ok()?;
        let mut buf = Vec::with_capacity(4096);
        for _ in 0..64 {
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            if let Some((resp, _)) = http::parse_response(&buf, &http::Limits::default()).ok()? {
                return Some((200..400).contains(&resp.status));
            }
        }
        None
    };
    matches!(tokio::time::timeout(set.health_timeout, fut).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> Servers {
        let c = OriginConfig {
            servers: (1..=n).map(|i| format!("127.0.0.1:{i}")).collect(),
            ..OriginConfig::default()
        };
        Servers::new(&c, None).unwrap()
    }

    #[test]
    fn round_robin_skips_unhealthy_and_tried() {
        let s = set(3);
        let picks: Vec<_> = (0..6).map(|_| s.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        s.mark_down(1);
        let picks: Vec<_> = (0..4).map(|_| s.pick(&[]).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(s.pick(&[0, 2]), None);
        s.servers[0].active_ok.store(false, Relaxed);
        assert_eq!(s.pick(&[]), Some(2));
        s.servers[2].active_ok.store(false, Relaxed);
        assert_eq!(s.pick(&[]), None);
    }

    #[test]
    fn settings_are_checked() {
        let parse =
            |t: &str| OriginConfig::from_settings(&toml::from_str::<toml::Value>(t).unwrap());
        assert_eq!(parse("").unwrap(), OriginConfig::default());
        assert_eq!(parse("servers = [\"127.0.0.1:9\"]").unwrap().servers, ["127.0.0.1:9"]);
        for bad in ["servers = []", "servers = [\"nohost\"]", "server = [\"127.0.0.1:1\"]"] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn reload_keeps_health() {
        let old = set(2);
        old.mark_down(0);
        let new = set(3);
        new.inherit_health(&old);
        assert!(!new.is_healthy(0));
        assert!(new.is_healthy(1) && new.is_healthy(2));
    }
}
