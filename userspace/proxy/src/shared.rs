//! State shared by every thread: the current configuration generation ([`Live`], replaced
//! whole by a reload), the metrics, and the drain signal.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Result;
use outpost_api::{Background, BuildEnv};
use tokio::sync::watch;

use crate::{
    admin::KernelStats,
    config::ms,
    config::Config,
    floor::{Budget, Rules},
    http::Limits,
    legacy::Responder,
    metrics::Metrics,
    registry::Registry,
    router::Router,
};

/// Everything a reload can change. Connections take the current one when they start (TLS
/// configuration, floor) and again for each request (routes), so a reload never touches an
/// open connection.
pub struct Live {
    pub tls: crate::tls::ServerConfigs,
    pub router: Router,
    pub floor: Rules,
    /// The legacy responder, with the same certificates as `tls`.
    pub legacy: Arc<Responder>,
    pub limits: Limits,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// `[http] upgraded_idle_timeout_ms`.
    pub upgraded_idle_timeout: Duration,
    /// Most after-response tasks pending per worker.
    pub after_max_pending: usize,
    /// `[http] underscores_in_headers`.
    pub underscores_in_headers: bool,
    /// `[http] trusted_proxies`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `[http] h2_max_concurrent_streams`.
    pub h2_max_streams: u32,
}

impl Live {
    /// How requests from `client` are normalised (see [`crate::http::normalise`]).
    pub fn rules<'a>(&'a self, client: &'a outpost_api::ClientInfo) -> crate::http::Rules<'a> {
        crate::http::Rules {
            sni: client.tls.sni.as_deref(),
            underscores_in_headers: self.underscores_in_headers,
            asserted: &self.router.asserted,
            trusted_proxy: self.trusted_proxies.contains(&client.addr.ip()),
        }
    }
}

impl Live {
    /// Builds a generation, and the background work its handlers asked for.
    pub fn build(
        config: &Config,
        registry: &Registry,
        env: &BuildEnv,
    ) -> Result<(Live, Vec<Background>)> {
        let tls = crate::tls::server_config(&config.tls, &config.data_dir(), config.http.h2)?;
        let tls = crate::tls::ServerConfigs::new(tls);
        let legacy = Arc::new(Responder::new(config)?);
        let (router, background) = Router::build(config, registry, env)?;
        let h = &config.http;
        let live = Live {
            tls,
            router,
            floor: Rules {
                policy: config.floor.policy(),
                port_modes: config.floor.port_modes(),
                max_hello_bytes: config.floor.max_hello_bytes.max(1),
            },
            legacy,
            limits: h.limits(),
            handshake_timeout: ms(h.handshake_timeout_ms),
            header_timeout: ms(h.header_timeout_ms),
            idle_timeout: ms(h.idle_timeout_ms),
            body_timeout: ms(h.body_timeout_ms),
            upgraded_idle_timeout: ms(h.upgraded_idle_timeout_ms),
            after_max_pending: config.after_response.max_pending,
            underscores_in_headers: h.underscores_in_headers,
            trusted_proxies: h.trusted_proxies.clone(),
            h2_max_streams: h.h2_max_concurrent_streams.max(1),
        };
        Ok((live, background))
    }
}

pub struct Shared {
    live: RwLock<Arc<Live>>,
    pub metrics: Arc<Metrics>,
    /// The XDP program in front, when there is one: its counters, and which connections it
    /// passed on to the legacy responder.
    pub kernel: Option<Arc<dyn KernelStats>>,
    /// The userspace floor's redirect budget (kept across reloads; the rates are the live
    /// policy's).
    pub budget: Budget,
    /// The fleet's floor policy, when one is set (see [`crate::floor::Override`]).
    pub floor: Arc<crate::floor::Override>,
    /// Where the userspace floor records the hellos it reads, when it does.
    pub hellos: Option<Arc<dyn crate::floor::HelloSink>>,
    drain: watch::Sender<bool>,
    /// The listening sockets went to a new process (see `upgrade`): the drain must not shut
    /// them down.
    handed_over: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(
        live: Live,
        metrics: Arc<Metrics>,
        kernel: Option<Arc<dyn KernelStats>>,
        floor: Arc<crate::floor::Override>,
        hellos: Option<Arc<dyn crate::floor::HelloSink>>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            live: RwLock::new(Arc::new(live)),
            metrics,
            kernel,
            budget: Budget::default(),
            floor,
            hellos,
            drain: watch::Sender::new(false),
            handed_over: Default::default(),
        })
    }

    /// The current generation.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs a new generation; connections pick it up at their next request.
    pub fn replace(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }

    /// Starts draining: stop accepting, finish in-flight requests, close idle connections.
    pub fn start_drain(&self) {
        self.drain.send_replace(true);
    }

    /// A new process serves from our listening sockets: drain, leaving the sockets listening.
    pub fn hand_over(&self) {
        self.handed_over.store(true, std::sync::atomic::Ordering::SeqCst);
        self.start_drain();
    }

    pub fn handed_over(&self) -> bool {
        self.handed_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }
}

/// Resolves when `rx` says draining (or its sender is gone).
pub async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
