//! `outpost run`: threads, signals, reloads and the drain.
//!
//! Threads: N workers (one runtime and, with io_uring, one ring each; their own SO_REUSEPORT
//! sockets) and one control thread (tokio on epoll) for signals, reloads, the admin listener,
//! the built-in page and the active health checks.
//!
//! Signals: SIGTERM/SIGINT start the drain (listeners close, idle connections close, requests
//! in flight finish, then the process exits, at the latest after `shutdown_grace_ms`); a
//! second one exits at once. SIGHUP reloads the config file: routes, certificates, floor
//! policy and HTTP limits; open connections keep going.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    thread,
};

use anyhow::{anyhow, Context as _, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use outpost_api::{AdminEndpoint, Audit, AuditSink, Background, BuildEnv};

use crate::{
    admin::{self, KernelStats},
    builtin,
    config::{ms, Config},
    io::{self, Backend},
    listen,
    metrics::{Metrics, MetricsSource},
    plain,
    registry::Registry,
    shared::{drained, Live, Shared},
    upgrade,
};

/// Called with the configuration at start and after every reload (the binary uses it to push
/// the floor policy to the XDP program it attached).
pub type OnConfig = Box<dyn Fn(&Config) + Send + Sync>;

#[derive(Default)]
pub struct RunOptions {
    /// The config file. `None`: `./outpost.toml` when it exists, else the defaults.
    pub config: Option<PathBuf>,
    /// Overrides the config's `io`.
    pub io: Option<Backend>,
    /// The XDP program's counters, for `/metrics`.
    pub kernel: Option<Arc<dyn KernelStats>>,
    pub on_config: Option<OnConfig>,
    /// The handlers this build ships.
    pub registry: Registry,
    /// Admin endpoints of the binary (`/audit`), by exact path.
    pub admin: Vec<(String, AdminEndpoint)>,
    /// More series for `/metrics` (the store's).
    pub metrics: Vec<MetricsSource>,
    /// Where handlers' audit events go; none: they are not kept.
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Take the listening sockets of the edge running with the same data directory, serve
    /// from them, then tell it to drain ([`crate::upgrade`]).
    pub upgrade: bool,
    /// The command line that starts this binary again as `--upgrade`, run on SIGUSR2.
    pub successor: Option<Vec<std::ffi::OsString>>,
    /// Called once this process handed its sockets to a successor (before its drain).
    pub on_handover: Option<Box<dyn Fn() + Send + Sync>>,
    /// A floor policy that replaces `[floor]`'s while set (the fleet's); the binary sets it.
    pub floor: Arc<crate::floor::Override>,
    /// Where the userspace floor records the hellos it reads (the binary's client table).
    pub hellos: Option<Arc<dyn crate::floor::HelloSink>>,
}

/// Reads the configuration `outpost run` would use: `path`, else `./outpost.toml` when it
/// exists, else the defaults. The binary reads its own sections (`[store]`) from it first.
pub fn load_config(path: Option<&Path>) -> Result<(Option<PathBuf>, Config)> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("outpost.toml")).filter(|p| p.is_file()),
    };
    let config = load(path.as_deref())?;
    Ok((path, config))
}

/// Serves until SIGTERM/SIGINT and the drain are done.
pub fn run(opts: RunOptions) -> Result<()> {
    let (path, config) = load_config(opts.config.as_deref())?;
    let mut backend = opts.io.unwrap_or(config.io);
    if let Err(e) = backend.probe() {
        tracing::warn!(error = %e, "io_uring is not available; falling back to epoll");
        backend = Backend::Epoll;
    }
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let token = admin::AdminToken::load_or_create(&data_dir)?;

    // Always running, so a reload can route to it even if the first config did not.
    let builtin = listen::bind_plain(([127, 0, 0, 1], 0).into())?;
    let builtin_addr = builtin.local_addr()?;
    let node = config.node_name();
    let env = BuildEnv {
        node: node.clone(),
        audit: Audit::new(node.clone(), opts.audit),
        builtin: Some(builtin_addr),
        data_dir: data_dir.clone(),
    };
    let (live, background) = Live::build(&config, &opts.registry, &env)?;
    if let Some(f) = &opts.on_config {
        f(&config);
    }
    let metrics = Metrics::new();
    metrics.set_node(&node);
    for source in opts.metrics {
        metrics.add_source(source);
    }
    let guard = admin::Guard::new(token, metrics.clone());
    let shared =
        Shared::new(live, metrics, opts.kernel.clone(), opts.floor.clone(), opts.hellos.clone());

    // Before anything serves: the predecessor's counters are added to ours here.
    let mut inherited = match opts.upgrade {
        true => Some(
            upgrade::take(&data_dir, &shared.metrics)
                .context("taking over from the running edge")?,
        ),
        false => None,
    };
    let mut workers = match config.workers {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if let Some(n) = inherited.as_ref().and_then(|i| i.https.first()).map(|(_, s)| s.len()) {
        if n != workers {
            tracing::warn!(workers, inherited = n, "upgrade: keeping the old process's workers");
            workers = n;
        }
    }
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for addr in &config.listen {
        let taken = inherited.as_mut().and_then(|i| {
            let at = i.https.iter().position(|(a, s)| listens_on(addr, a) && s.len() == workers)?;
            Some(i.https.remove(at).1)
        });
        let socks = match taken {
            Some(s) => s,
            None => listen::bind_reuseport(*addr, workers)?,
        };
        bound.push(socks[0].local_addr()?);
        for (w, s) in per_worker.iter_mut().zip(socks) {
            w.push(s);
        }
    }
    if let Some(i) = &inherited {
        for (addr, _) in &i.https {
            tracing::warn!(%addr, "upgrade: no longer in `listen`; its sockets close with the old process");
        }
    }
    let admin = match inherited.as_mut().map(|i| &mut i.admin) {
        Some((addr, l)) if listens_on(&config.admin, addr) => l.try_clone()?,
        _ => listen::bind_plain(config.admin)?,
    };
    let admin_addr = admin.local_addr()?;
    let grace = ms(config.shutdown_grace_ms);
    let handover = {
        let https: Vec<(SocketAddr, Vec<&TcpListener>)> = bound
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, per_worker.iter().map(|w| &w[i]).collect()))
            .collect();
        upgrade::Handover::new(&https, &admin, grace)?
    };
    // The line to a successor, once one took over: what the drain counts goes there at the end.
    let heir = Arc::new(Mutex::new(None));

    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    let control = {
        let shared = shared.clone();
        let ctl = Control {
            shared,
            path,
            env,
            registry: opts.registry,
            kernel: opts.kernel,
            on_config: opts.on_config,
            admin: opts.admin.into_iter().collect(),
            guard,
            successor: opts.successor,
            handover: Some((data_dir.clone(), handover)),
            heir: heir.clone(),
            on_handover: opts.on_handover,
        };
        thread::Builder::new().name("outpost-control".into()).spawn(move || {
            Backend::Epoll.block_on(ctl.run(admin, builtin, background, stop_rx, ready_tx))
        })?
    };
    // Signal handlers are installed before any client connection is accepted.
    ready_rx
        .recv()
        .map_err(|_| anyhow!("the control thread failed to start"))?
        .context("starting the control thread")?;

    let mut threads = Vec::new();
    for (i, listeners) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let node = node.clone();
        threads.push(thread::Builder::new().name(format!("outpost-w{i}")).spawn(move || {
            let _span = tracing::info_span!("outpost", %node).entered();
            backend.block_on(crate::server::worker_main(shared, listeners, grace))
        })?);
    }
    tracing::info!(
        %node, https = ?bound, admin = %admin_addr, builtin = %builtin_addr, io = backend.name(),
        workers, data_dir = %data_dir.display(), "outpost is serving"
    );
    if let Some(i) = inherited {
        // Our workers accept on the sockets now: the old process may stop.
        i.ready()?;
        tracing::info!("upgrade: took over from the old process, which drains");
    }
    let mut failure = None;
    for t in threads {
        match t.join() {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failure = Some(e),
            Ok(Err(e)) => failure = Some(anyhow!("starting a worker runtime: {e}")),
            Err(_) => failure = Some(anyhow!("a worker thread panicked")),
        }
        // One worker down means the service is degraded: drain the others too.
        if failure.is_some() {
            shared.start_drain();
        }
    }
    stop_tx.send_replace(true);
    let _ = control.join();
    // Nothing counts any more (workers and the admin listener are done).
    if let Some(heir) = heir.lock().unwrap_or_else(|e| e.into_inner()).take() {
        heir.send_rest(&shared.metrics);
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("drained; bye");
            Ok(())
        }
    }
}

/// `configured` (possibly port 0 or unspecified) is served by a socket bound at `bound`.
fn listens_on(configured: &SocketAddr, bound: &SocketAddr) -> bool {
    configured == bound || (configured.port() == 0 && configured.ip() == bound.ip())
}

fn load(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

struct Control {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    env: BuildEnv,
    registry: Registry,
    kernel: Option<Arc<dyn KernelStats>>,
    on_config: Option<OnConfig>,
    admin: BTreeMap<String, AdminEndpoint>,
    guard: Arc<admin::Guard>,
    successor: Option<Vec<std::ffi::OsString>>,
    /// The data directory and the sockets to offer a successor.
    handover: Option<(PathBuf, upgrade::Handover)>,
    /// Set when a successor took the sockets.
    heir: Arc<Mutex<Option<upgrade::Heir>>>,
    on_handover: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Control {
    async fn run(
        mut self,
        admin: TcpListener,
        builtin: TcpListener,
        background: Vec<Background>,
        mut stop: watch::Receiver<bool>,
        ready: mpsc::Sender<std::io::Result<()>>,
    ) {
        let started = (|| {
            let signals = (
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::user_defined2())?,
            );
            let listeners = (io::Listener::from_std(admin)?, io::Listener::from_std(builtin)?);
            Ok::<_, std::io::Error>((signals, listeners))
        })();
        let ((mut term, mut int, mut hup, mut usr2), (admin, builtin)) = match started {
            Ok(s) => {
                let _ = ready.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _span = tracing::info_span!("outpost", node = %self.env.node).entered();
        io::spawn(plain::serve(
            admin,
            admin::respond(
                self.shared.clone(),
                self.kernel.clone(),
                self.admin.clone(),
                self.guard.clone(),
            ),
            stop.clone(),
            Some(self.shared.clone()),
        ));
        io::spawn(plain::serve(builtin, builtin::respond(), stop.clone(), None));
        spawn_background(background);
        if let Some((dir, h)) = self.handover.take() {
            let shared = self.shared.clone();
            let on_handover = self.on_handover.take();
            let slot = self.heir.clone();
            io::spawn(async move {
                let Some(heir) = upgrade::offer(dir, h, shared).await else { return };
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(heir);
                if let Some(f) = on_handover {
                    f();
                }
            });
        }
        loop {
            tokio::select! {
                _ = drained(&mut stop) => break,
                _ = term.recv() => self.terminate("SIGTERM"),
                _ = int.recv() => self.terminate("SIGINT"),
                _ = hup.recv() => self.reload(),
                _ = usr2.recv() => self.start_successor(),
            }
        }
    }

    /// SIGUSR2: starts this binary again with `--upgrade`; it takes over the listening sockets
    /// and tells us to drain (see [`upgrade`]).
    fn start_successor(&self) {
        let Some(argv) = self.successor.as_ref().filter(|a| !a.is_empty()) else {
            tracing::warn!("SIGUSR2: this process has no command to start a successor with");
            return;
        };
        if self.shared.draining() {
            tracing::warn!("SIGUSR2: draining already; no successor started");
            return;
        }
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(std::process::Stdio::null());
        // Its own process group: a signal to ours (a terminal's Ctrl-C) is not its.
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "SIGUSR2: started the new binary to take over");
                // Reaped if it ends while we still run (it failed to take over): no zombie.
                let reaper = thread::Builder::new().name("outpost-successor".into());
                let _ = reaper.spawn(move || match child.wait() {
                    Ok(s) if !s.success() => {
                        tracing::error!(status = %s, "the new binary did not take over")
                    }
                    _ => {}
                });
            }
            Err(e) => {
                tracing::error!(error = %e, program = ?argv[0], "SIGUSR2: cannot start the new binary")
            }
        }
    }
    fn terminate(&self, name: &str) {
        if self.shared.draining() {
            tracing::warn!("second {name}: exiting now");
            std::process::exit(1);
        }
        tracing::info!("{name}: draining (no new connections; in-flight requests finish)");
        self.shared.start_drain();
    }

    fn reload(&self) {
        let result = load(self.path.as_deref())
            .and_then(|c| Live::build(&c, &self.registry, &self.env).map(|built| (c, built)));
        match result {
            Ok((config, (live, background))) => {
                self.shared.replace(live);
                spawn_background(background);
                if let Some(f) = &self.on_config {
                    f(&config);
                }
                tracing::info!(
                    config = ?self.path, routes = config.routes.len(),
                    "SIGHUP: reloaded routes, certificates and policy \
                     (listen, admin, workers and io need a restart)"
                );
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "SIGHUP: reload failed; keeping the running configuration"
            ),
        }
    }
}

/// Background work of a new generation, on the control thread (its runtime is tokio's).
fn spawn_background(tasks: Vec<Background>) {
    for t in tasks {
        io::spawn(t);
    }
}
