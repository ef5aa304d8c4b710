//! The fleet: the nodes that share one store know of each other, and one floor policy holds for
//! all of them.
//!
//! - **Registry.** Each `outpost run` writes a row about itself (`fleet.nodes/<node>`: version,
//!   addresses, XDP interfaces, the policy generation it applied) when it starts and every
//!   `[fleet] heartbeat_ms` after, with a TTL of `prune_after_ms`, so a node that vanished is
//!   pruned by the store's own expiry. A clean stop marks the row stopped. A reader calls a
//!   node missing when its row is older than three heartbeats.
//! - **Policy.** `outpost policy set --fleet` writes the fleet's floor policy as one row
//!   (`fleet.policy/current`) with a generation one higher than the last, by compare-and-swap,
//!   so two operators setting it at once both get a generation of their own. Each node reads
//!   that row every `policy_check_ms` (250 ms: one primary-key read, four a second per node)
//!   and applies a new generation to its userspace floor and, when it attached the XDP
//!   program itself, to the kernel's maps. Polling rather than PostgreSQL's LISTEN/NOTIFY: it
//!   works the same on the embedded store, needs no connection held per node, and loses nothing
//!   when the database fails over (a notification sent while a node's listening connection was
//!   down is gone; the next poll is not). A cleared policy is a generation too, without a
//!   floor: nodes go back to their own `[floor]`.
//!
//! A node applies the current generation before it accepts a connection. A generation it cannot
//! apply (a version or mode this build does not know) is reported in its registry row and its
//! metrics, and it keeps the floor it had; the other nodes are not affected.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use dataplane::{Mode, Policy, Version};
use outpost_api::Audit;
use outpost_proxy::{config::Config, floor, metrics::MetricsSource};
use outpost_store::{Abort, Op, Store, TxnOutcome};
use serde::{Deserialize, Serialize};

/// The store namespace of the registry: one row per node, keyed by its name.
pub const NODES: &str = "fleet.nodes";
/// The fleet's policy: one row.
const POLICY_NS: &str = "fleet.policy";
const POLICY_KEY: &str = "current";
/// A node is missing once its row is this many heartbeats old.
const MISSING_AFTER_BEATS: u64 = 3;

/// `[fleet]`: how this node takes part in the fleet sharing its store.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// How often the node rewrites its registry row. Default 2000.
    pub heartbeat_ms: u64,
    /// How often the node reads the fleet's policy: a new generation applies within this
    /// (plus the store's latency). Default 250.
    pub policy_check_ms: u64,
    /// A node's row disappears this long after its last heartbeat (a node that stopped, or
    /// vanished). Default 3600000 (one hour).
    pub prune_after_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { heartbeat_ms: 2000, policy_check_ms: 250, prune_after_ms: 3_600_000 }
    }
}

/// A node's row in the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRecord {
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub listen: Vec<String>,
    pub admin: String,
    /// Interfaces the XDP floor is attached to on this host.
    pub interfaces: Vec<String>,
    /// The fleet policy generation in force on the node (0: its own `[floor]`, none was set).
    pub policy_generation: u64,
    /// Why the node could not apply the fleet's newest generation, if it could not.
    pub policy_error: Option<String>,
    pub heartbeat_ms: u64,
    pub started_ms: u64,
    pub seen_ms: u64,
    /// Set by a clean stop.
    pub stopped: bool,
}

/// What a reader makes of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Live,
    Missing,
    Stopped,
}

impl NodeState {
    pub const ALL: [NodeState; 3] = [NodeState::Live, NodeState::Missing, NodeState::Stopped];

    pub fn name(self) -> &'static str {
        match self {
            NodeState::Live => "live",
            NodeState::Missing => "missing",
            NodeState::Stopped => "stopped",
        }
    }
}

impl NodeRecord {
    pub fn state(&self, now_ms: u64) -> NodeState {
        if self.stopped {
            NodeState::Stopped
        } else if now_ms.saturating_sub(self.seen_ms)
            > MISSING_AFTER_BEATS * self.heartbeat_ms.max(1)
        {
            NodeState::Missing
        } else {
            NodeState::Live
        }
    }
}

/// The fleet's policy row. A generation without a floor is a cleared policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPolicy {
    pub generation: u64,
    /// `user@node` of whoever set it.
    pub set_by: String,
    pub set_at_ms: u64,
    pub floor: Option<FloorSpec>,
}

/// A floor policy as stored: names, not numbers, so a node of another build reads what it
/// knows and reports what it does not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorSpec {
    /// `TLS1.2` and the like (what `--min-version` accepts).
    pub min_version: String,
    /// `observe`, `drop`, `reject`, `redirect`.
    pub mode: String,
    /// Hellos a second, the whole node.
    pub redirect_rate: u32,
    /// Hellos a second, per source network.
    pub redirect_per_source: u32,
    /// The XDP program's protected ports; none: each node's listen ports.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    /// Ports whose mode is not `mode`.
    #[serde(default)]
    pub port_modes: BTreeMap<String, String>,
}

/// A [`FloorSpec`] this build understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub policy: Policy,
    pub ports: Option<Vec<u16>>,
    pub port_modes: BTreeMap<u16, Mode>,
}

impl FloorSpec {
    /// The spec of a node's own `[floor]` (ports: each node's listen ports).
    pub fn of_config(c: &Config) -> FloorSpec {
        FloorSpec::of(&c.floor.policy(), None, &c.floor.port_modes())
    }

    pub fn of(p: &Policy, ports: Option<Vec<u16>>, port_modes: &BTreeMap<u16, Mode>) -> FloorSpec {
        FloorSpec {
            min_version: Version::from_u8(p.min_version).map_or("invalid", Version::name).into(),
            mode: Mode::from_u8(p.mode).map_or("invalid", Mode::name).into(),
            redirect_rate: p.redirect_rate,
            redirect_per_source: p.redirect_per_source,
            ports,
            port_modes: port_modes.iter().map(|(p, m)| (p.to_string(), m.name().into())).collect(),
        }
    }

    pub fn resolve(&self) -> Result<Resolved, String> {
        let version = crate::parse_version(&self.min_version)?;
        let mode = |m: &str| Mode::from_name(m).ok_or_else(|| format!("unknown mode {m:?}"));
        let mut policy = Policy::new(version, mode(&self.mode)?);
        policy.redirect_rate = self.redirect_rate;
        policy.redirect_per_source = self.redirect_per_source;
        let mut port_modes = BTreeMap::new();
        for (port, m) in &self.port_modes {
            let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
            port_modes.insert(port, mode(m).map_err(|e| format!("port {port}: {e}"))?);
        }
        Ok(Resolved { policy, ports: self.ports.clone(), port_modes })
    }

    /// One line, as `outpost policy show` prints a policy.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "min-version {}, mode {}, redirect budget {}/s ({}/s per source network), ports {}",
            self.min_version,
            self.mode,
            self.redirect_rate,
            self.redirect_per_source,
            self.ports.as_ref().map_or("each node's listen ports".into(), |p| format!("{p:?}")),
        );
        for (port, mode) in &self.port_modes {
            s += &format!(", port {port} {mode}");
        }
        s
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The floor this process enforces: its config's `[floor]`, or the fleet's policy while one is
/// set; pushed to the userspace floor and, when this process attached the XDP program, to the
/// kernel's maps.
pub struct FloorState {
    userspace: Arc<floor::Override>,
    /// The pin directory of the XDP program this process attached (or took over).
    kernel: Option<PathBuf>,
    inner: Mutex<FloorInner>,
}

#[derive(Default)]
struct FloorInner {
    /// From the last config read: policy, port modes, listen ports.
    config: Option<(Policy, BTreeMap<u16, Mode>, Vec<u16>)>,
    fleet: Option<Resolved>,
}

impl FloorState {
    pub fn new(kernel: Option<PathBuf>) -> Arc<FloorState> {
        Arc::new(FloorState {
            userspace: Arc::default(),
            kernel,
            inner: Mutex::new(FloorInner::default()),
        })
    }

    /// For `RunOptions::floor`.
    pub fn userspace(&self) -> Arc<floor::Override> {
        self.userspace.clone()
    }

    /// At start and after each reload.
    pub fn on_config(&self, c: &Config) {
        let ports = c.listen.iter().map(|a| a.port()).collect();
        let mut inner = self.lock();
        inner.config = Some((c.floor.policy(), c.floor.port_modes(), ports));
        if let Err(e) = self.push_kernel(&inner) {
            tracing::error!(error = format!("{e:#}"), "setting the XDP policy failed");
        }
    }

    /// The fleet's policy, or none (back to the config's).
    pub fn set_fleet(&self, fleet: Option<Resolved>) -> Result<()> {
        let mut inner = self.lock();
        self.userspace.set(
            fleet
                .as_ref()
                .map(|r| floor::Overriding { policy: r.policy, port_modes: r.port_modes.clone() }),
        );
        inner.fleet = fleet;
        self.push_kernel(&inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FloorInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_kernel(&self, inner: &FloorInner) -> Result<()> {
        let Some(pin_dir) = &self.kernel else { return Ok(()) };
        let Some((config_policy, config_modes, listen)) = &inner.config else { return Ok(()) };
        let (policy, modes, ports) = match &inner.fleet {
            Some(f) => (&f.policy, &f.port_modes, f.ports.as_ref().unwrap_or(listen)),
            None => (config_policy, config_modes, listen),
        };
        let mut maps = dataplane::PinnedMaps::open(pin_dir)?;
        maps.set_policy(*policy)?;
        maps.set_port_modes(modes)?;
        maps.set_ports(ports)?;
        tracing::info!("XDP policy: {}", crate::describe_policy(policy, ports, modes));
        Ok(())
    }
}

/// This node's part: its registry row, the policy it applied, what it last saw of the others.
pub struct Node {
    store: Store,
    cfg: FleetConfig,
    floor: Arc<FloorState>,
    record: Mutex<NodeRecord>,
    /// The bytes of the row as this process last wrote it: the clean stop marks the row
    /// stopped only if it is still ours (a successor's is not).
    written: Mutex<Option<Vec<u8>>>,
    /// The listening sockets went to a successor, which keeps the row from now on.
    handed_over: Arc<AtomicBool>,
    /// The generation this node gave up on (could not apply), so it is not retried each check.
    failed_generation: AtomicU64,
    seen_generation: AtomicU64,
    failures: AtomicU64,
    states: [AtomicU64; 3],
}

/// The node's background thread; [`Running::stop`] marks the row stopped and joins it.
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Node {
    pub fn new(
        store: Store,
        cfg: FleetConfig,
        config: &Config,
        interfaces: Vec<String>,
        floor: Arc<FloorState>,
        handed_over: Arc<AtomicBool>,
    ) -> Arc<Node> {
        let now = now_ms();
        let record = NodeRecord {
            name: config.node_name(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            listen: config.listen.iter().map(|a| a.to_string()).collect(),
            admin: config.admin.to_string(),
            interfaces,
            heartbeat_ms: cfg.heartbeat_ms.max(1),
            started_ms: now,
            seen_ms: now,
            ..NodeRecord::default()
        };
        Arc::new(Node {
            store,
            cfg,
            floor,
            record: Mutex::new(record),
            written: Mutex::new(None),
            handed_over,
            failed_generation: AtomicU64::new(0),
            seen_generation: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            states: Default::default(),
        })
    }

    /// Before serving: applies the fleet's current policy and writes the first row. A store that
    /// cannot answer is an error: the node would otherwise serve with a floor the fleet may
    /// have changed.
    pub fn start(self: &Arc<Self>) -> Result<Running> {
        let rt = runtime()?;
        rt.block_on(async {
            let current = read_policy(&self.store).await.context("reading the fleet's policy")?;
            self.apply(current);
            self.beat().await;
            anyhow::Ok(())
        })?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let node = self.clone();
        let thread = thread::Builder::new().name("outpost-fleet".into()).spawn(move || {
            rt.block_on(async {
                let mut policy =
                    tokio::time::interval(Duration::from_millis(node.cfg.policy_check_ms.max(10)));
                let mut beat =
                    tokio::time::interval(Duration::from_millis(node.cfg.heartbeat_ms.max(10)));
                for t in [&mut policy, &mut beat] {
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                loop {
                    tokio::select! {
                        _ = policy.tick() => node.check_policy().await,
                        _ = beat.tick() => {
                            node.beat().await;
                            node.count_nodes().await;
                        }
                        _ = stopped.wait_for(|s| *s) => break,
                    }
                }
                node.mark_stopped().await;
            })
        })?;
        Ok(Running { stop, thread: Some(thread) })
    }

    async fn check_policy(&self) {
        match read_policy(&self.store).await {
            Ok(p) => {
                if self.apply(p) {
                    // Tell the fleet at once, not at the next heartbeat.
                    self.beat().await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the fleet's policy failed"),
        }
    }

    /// Applies `current` if it is a generation this node has not applied (or given up on);
    /// true when something changed.
    fn apply(&self, current: Option<FleetPolicy>) -> bool {
        let Some(p) = current else {
            // No row at all (removed by hand, or a store emptied): no fleet policy, so this
            // node's own [floor].
            if self.lock_record().policy_generation == 0 {
                return false;
            }
            tracing::warn!("the fleet's policy row is gone: back to this node's [floor]");
            let kernel = self.floor.set_fleet(None);
            let mut record = self.lock_record();
            record.policy_generation = 0;
            record.policy_error = kernel.err().map(|e| format!("the XDP maps: {e:#}"));
            return true;
        };
        self.seen_generation.store(p.generation, Relaxed);
        let applied = self.lock_record().policy_generation;
        if p.generation == applied || p.generation == self.failed_generation.load(Relaxed) {
            return false;
        }
        let resolved = match p.floor.as_ref().map(FloorSpec::resolve).transpose() {
            Ok(r) => r,
            Err(e) => {
                // Nothing of it applies: the floor in force stays, here and in the kernel.
                let why = format!("generation {}: {e}", p.generation);
                tracing::error!(error = %why, "cannot apply the fleet's policy; keeping the floor in force");
                self.failed_generation.store(p.generation, Relaxed);
                self.failures.fetch_add(1, Relaxed);
                self.lock_record().policy_error = Some(why);
                return true;
            }
        };
        // The userspace floor takes it whatever the kernel's maps do.
        let kernel = self.floor.set_fleet(resolved);
        let mut record = self.lock_record();
        record.policy_generation = p.generation;
        record.policy_error = None;
        let took = now_ms().saturating_sub(p.set_at_ms);
        match &p.floor {
            Some(f) => tracing::info!(
                generation = p.generation, set_by = %p.set_by, since_set_ms = took,
                "fleet policy applied: {}", f.describe()
            ),
            None => tracing::info!(
                generation = p.generation, set_by = %p.set_by, since_set_ms = took,
                "fleet policy cleared: back to this node's [floor]"
            ),
        }
        if let Err(e) = kernel {
            let why = format!(
                "generation {}: applied in userspace, but the XDP maps could not be set: {e:#}",
                p.generation
            );
            tracing::error!(error = %why, "fleet policy: the kernel's floor is not the fleet's");
            self.failures.fetch_add(1, Relaxed);
            record.policy_error = Some(why);
        }
        true
    }

    fn lock_record(&self) -> std::sync::MutexGuard<'_, NodeRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites this node's row (unless a successor owns it now).
    async fn beat(&self) {
        if self.handed_over.load(Relaxed) {
            return;
        }
        let (name, bytes) = {
            let mut r = self.lock_record();
            r.seen_ms = now_ms();
            (r.name.clone(), serde_json::to_vec(&*r).unwrap_or_default())
        };
        let ttl = Duration::from_millis(self.cfg.prune_after_ms.max(self.cfg.heartbeat_ms));
        match self.store.put(NODES, &name, &bytes, Some(ttl)).await {
            Ok(()) => *self.written.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes),
            Err(e) => tracing::warn!(error = %e, "fleet: writing this node's registry row failed"),
        }
    }

    async fn count_nodes(&self) {
        let Ok(nodes) = list_nodes(&self.store).await else { return };
        let now = now_ms();
        for (i, s) in NodeState::ALL.iter().enumerate() {
            let n = nodes.iter().filter(|r| r.state(now) == *s).count();
            self.states[i].store(n as u64, Relaxed);
        }
    }

    /// A clean stop: the row says so, if it is still the one this process wrote.
    async fn mark_stopped(&self) {
        if self.handed_over.load(Relaxed) {
            return;
        }
        let Some(expect) = self.written.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let (name, new) = {
            let mut r = self.lock_record();
            r.stopped = true;
            r.seen_ms = now_ms();
            (r.name.clone(), serde_json::to_vec(&*r).unwrap_or_default())
        };
        let ttl = Some(Duration::from_millis(self.cfg.prune_after_ms.max(1)));
        let swap = Op::Swap { ns: NODES.into(), key: name, expect, new: Some(new), ttl };
        match self.store.txn(vec![swap]).await {
            Ok(TxnOutcome::Committed(_)) => {}
            Ok(TxnOutcome::Aborted { .. }) => {
                tracing::info!("fleet: the registry row is another process's now; left as it is")
            }
            Err(e) => tracing::warn!(error = %e, "fleet: marking this node stopped failed"),
        }
    }

    /// `outpost_fleet_*` for `/metrics`.
    pub fn metrics(self: &Arc<Self>) -> MetricsSource {
        let me = self.clone();
        Arc::new(move |o: &mut String| {
            use std::fmt::Write as _;
            o.push_str(
                "# HELP outpost_fleet_nodes Nodes in the fleet's registry by state, as this node \
                 last read it.\n# TYPE outpost_fleet_nodes gauge\n",
            );
            for (i, s) in NodeState::ALL.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "outpost_fleet_nodes{{state=\"{}\"}} {}",
                    s.name(),
                    me.states[i].load(Relaxed)
                );
            }
            let _ = write!(
                o,
                "# HELP outpost_fleet_policy_generation The fleet policy's newest generation in \
                 the store (0: none was ever set).\n# TYPE outpost_fleet_policy_generation gauge\n\
                 outpost_fleet_policy_generation {}\n\
                 # HELP outpost_fleet_policy_applied_generation The fleet policy generation in \
                 force on this node (0: its own [floor]).\n\
                 # TYPE outpost_fleet_policy_applied_generation gauge\n\
                 outpost_fleet_policy_applied_generation {}\n\
                 # HELP outpost_fleet_policy_failures_total Fleet policy generations this node \
                 could not apply.\n# TYPE outpost_fleet_policy_failures_total counter\n\
                 outpost_fleet_policy_failures_total {}\n",
                me.seen_generation.load(Relaxed),
                me.lock_record().policy_generation,
                me.failures.load(Relaxed),
            );
        })
    }
}

impl Running {
    pub fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// The fleet's policy row, if one was ever set.
pub async fn read_policy(store: &Store) -> Result<Option<FleetPolicy>> {
    match store.get(POLICY_NS, POLICY_KEY).await? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).context("the fleet's policy row is not readable")?,
        )),
    }
}

/// Every row of the registry, by name.
pub async fn list_nodes(store: &Store) -> Result<Vec<NodeRecord>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(NODES, after.as_deref(), 500).await?;
        let done = page.len() < 500;
        after = page.last().map(|r| r.key.clone());
        for r in page {
            match serde_json::from_slice::<NodeRecord>(&r.value) {
                Ok(n) => out.push(n),
                Err(e) => tracing::warn!(key = %r.key, error = %e, "unreadable registry row"),
            }
        }
        if done {
            return Ok(out);
        }
    }
}

/// Writes the next generation: `change` turns the current policy's floor (None: none set, or
/// cleared) into the new one. Compare-and-swap on the row, retried when another writer got in
/// first; returns the policy written.
pub async fn write_policy(
    store: &Store,
    set_by: &str,
    change: impl Fn(Option<&FloorSpec>) -> Result<Option<FloorSpec>>,
) -> Result<FleetPolicy> {
    for _ in 0..20 {
        let old = store.get(POLICY_NS, POLICY_KEY).await?;
        let current: Option<FleetPolicy> = match &old {
            Some(b) => Some(serde_json::from_slice(b).context("the fleet's policy row")?),
            None => None,
        };
        let next = FleetPolicy {
            generation: current.as_ref().map_or(0, |p| p.generation) + 1,
            set_by: set_by.into(),
            set_at_ms: now_ms(),
            floor: change(current.as_ref().and_then(|p| p.floor.as_ref()))?,
        };
        let value = serde_json::to_vec(&next)?;
        let (ns, key) = (POLICY_NS.to_owned(), POLICY_KEY.to_owned());
        let op = match old {
            Some(expect) => Op::Swap { ns, key, expect, new: Some(value), ttl: None },
            None => Op::Insert { ns, key, value, ttl: None },
        };
        match store.txn(vec![op]).await? {
            TxnOutcome::Committed(_) => return Ok(next),
            TxnOutcome::Aborted { why: Abort::Mismatch(_) | Abort::Conflict(_), .. } => continue,
            TxnOutcome::Aborted { why, .. } => bail!("writing the fleet's policy: {why:?}"),
        }
    }
    bail!("the fleet's policy kept changing under this write; try again")
}

/// What `outpost policy set --fleet` changes; what is `None` (or empty) stays.
pub struct FloorChange {
    pub min_version: Option<Version>,
    pub mode: Option<Mode>,
    pub redirect_rate: Option<u32>,
    pub redirect_per_source: Option<u32>,
    pub ports: Option<Vec<u16>>,
    /// `None`: back to `mode`.
    pub port_mode: Vec<(u16, Option<Mode>)>,
}

impl FloorChange {
    fn apply(&self, mut spec: FloorSpec) -> FloorSpec {
        if let Some(v) = self.min_version {
            spec.min_version = v.name().into();
        }
        if let Some(m) = self.mode {
            spec.mode = m.name().into();
        }
        if let Some(r) = self.redirect_rate {
            spec.redirect_rate = r;
        }
        if let Some(r) = self.redirect_per_source {
            spec.redirect_per_source = r;
        }
        if let Some(p) = &self.ports {
            spec.ports = Some(p.clone());
        }
        for (port, mode) in &self.port_mode {
            match mode {
                Some(m) => spec.port_modes.insert(port.to_string(), m.name().into()),
                None => spec.port_modes.remove(&port.to_string()),
            };
        }
        spec
    }
}

/// `outpost policy set --fleet` (`change`) and `outpost policy clear --fleet` (`None`): the next
/// generation, and its audit event.
pub fn set_policy(config: Option<&Path>, change: Option<FloorChange>) -> Result<()> {
    let (_, cfg) = outpost_proxy::load_config(config)?;
    let own = FloorSpec::of_config(&cfg);
    let set_by = operator(&cfg);
    let node = cfg.node_name();
    with_store(&cfg, |store| async move {
        let written = write_policy(&store, &set_by, |current| {
            let Some(change) = &change else { return Ok(None) };
            let spec = change.apply(current.cloned().unwrap_or_else(|| own.clone()));
            spec.resolve().map_err(|e| anyhow!("not a policy this build can apply: {e}"))?;
            Ok(Some(spec))
        })
        .await?;
        let audit = Audit::new(node, None);
        let (event, what) = match &written.floor {
            Some(f) => (audit.event("fleet.policy.set", "success"), f.describe()),
            None => (
                audit.event("fleet.policy.clear", "success"),
                "cleared: each node's own [floor]".into(),
            ),
        };
        let line = format!("fleet policy generation {}: {what}", written.generation);
        let event = event.user(set_by.clone()).reason(line.clone());
        if let Err(e) = store.append_audit(vec![event]).await {
            eprintln!("warning: the policy is set, but its audit event was not written: {e}");
        }
        println!("{line}");
        Ok(())
    })
}

/// `outpost policy show --fleet [--json]`.
pub fn show_policy(config: Option<&Path>, json: bool) -> Result<()> {
    let (_, cfg) = outpost_proxy::load_config(config)?;
    with_store(&cfg, |store| async move {
        let policy = read_policy(&store).await?;
        let nodes = list_nodes(&store).await?;
        let now = now_ms();
        if json {
            let nodes: Vec<_> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "name": n.name,
                        "state": n.state(now).name(),
                        "policy_generation": n.policy_generation,
                        "policy_error": n.policy_error,
                    })
                })
                .collect();
            println!("{}", serde_json::json!({ "policy": policy, "nodes": nodes }));
            return Ok(());
        }
        let Some(p) = policy else {
            println!("no fleet policy: each node enforces its own [floor]");
            return Ok(());
        };
        println!(
            "generation {}, set by {} at {}",
            p.generation,
            p.set_by,
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(p.set_at_ms))
        );
        match &p.floor {
            Some(f) => println!("policy: {}", f.describe()),
            None => println!("policy: cleared (each node enforces its own [floor])"),
        }
        for n in &nodes {
            let applied = match (n.policy_generation == p.generation, &n.policy_error) {
                (true, _) => "applied".to_owned(),
                (false, Some(e)) => format!("NOT applied: {e}"),
                (false, None) => format!("not yet (has generation {})", n.policy_generation),
            };
            println!("  {:<20} {:<8} {applied}", n.name, n.state(now).name());
        }
        Ok(())
    })
}

/// `outpost fleet status [--json]`.
pub fn status(config: Option<&Path>, json: bool) -> Result<()> {
    let (_, cfg) = outpost_proxy::load_config(config)?;
    with_store(&cfg, |store| async move {
        let nodes = list_nodes(&store).await?;
        let generation = read_policy(&store).await?.map_or(0, |p| p.generation);
        let now = now_ms();
        if json {
            let rows: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let mut v = serde_json::to_value(n).unwrap_or_default();
                    v["state"] = n.state(now).name().into();
                    v["seen_ago_ms"] = now.saturating_sub(n.seen_ms).into();
                    v
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
            return Ok(());
        }
        println!(
            "{:<16} {:<8} {:<8} {:<22} {:<22} {:<12} {:<7} SEEN",
            "NODE", "STATE", "VERSION", "LISTEN", "ADMIN", "XDP", "POLICY"
        );
        for n in &nodes {
            let xdp = if n.interfaces.is_empty() { "-".into() } else { n.interfaces.join(",") };
            let mut policy = n.policy_generation.to_string();
            if n.policy_generation != generation {
                policy += "*";
            }
            println!(
                "{:<16} {:<8} {:<8} {:<22} {:<22} {:<12} {:<7} {}s ago",
                n.name,
                n.state(now).name(),
                n.version,
                n.listen.join(","),
                n.admin,
                xdp,
                policy,
                now.saturating_sub(n.seen_ms) / 1000
            );
            if let Some(e) = &n.policy_error {
                println!("  cannot apply the fleet's policy: {e}");
            }
        }
        if nodes.iter().any(|n| n.policy_generation != generation) {
            println!("* behind the fleet's policy generation {generation}");
        }
        Ok(())
    })
}

/// Runs `f` on the store `cfg` names, and shuts the store down after.
fn with_store<F, Fut>(cfg: &Config, f: F) -> Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let store = crate::edge::open_tool_store(cfg)?;
    let result = runtime()?.block_on(f(store.clone()));
    store.shutdown();
    result
}

/// `user@node` for `set_by` and the audit event.
fn operator(cfg: &Config) -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {uid}"));
    format!("{user}@{}", cfg.node_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_round_trips_and_unknown_names_are_errors() {
        let mut modes = BTreeMap::new();
        modes.insert(8443, Mode::Redirect);
        let mut p = Policy::new(Version::Tls13, Mode::Reject);
        p.redirect_rate = 7;
        let spec = FloorSpec::of(&p, Some(vec![443]), &modes);
        let r = spec.resolve().unwrap();
        assert_eq!((r.policy, r.ports.clone(), r.port_modes.clone()), (p, Some(vec![443]), modes));
        let mut bad = spec.clone();
        bad.port_modes.insert("8444".into(), "quarantine".into());
        assert!(bad.resolve().unwrap_err().contains("quarantine"));
        let mut bad = spec;
        bad.min_version = "TLS1.4".into();
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn a_row_is_missing_after_three_heartbeats() {
        let r = NodeRecord { heartbeat_ms: 1000, seen_ms: 10_000, ..NodeRecord::default() };
        assert_eq!(r.state(12_000), NodeState::Live);
        assert_eq!(r.state(13_001), NodeState::Missing);
        assert_eq!(NodeRecord { stopped: true, ..r }.state(10_000), NodeState::Stopped);
    }

    #[test]
    fn generations_are_counted_by_the_store() {
        let dir = std::env::temp_dir().join(format!("outpost-fleet-unit-{}", std::process::id()));
        let store = Store::open(&Default::default(), &dir).unwrap();
        let rt = runtime().unwrap();
        let spec = FloorSpec::of(&Policy::DEFAULT, None, &BTreeMap::new());
        let first = rt.block_on(write_policy(&store, "a@n", |_| Ok(Some(spec.clone())))).unwrap();
        let cleared = rt.block_on(write_policy(&store, "b@n", |old| {
            assert_eq!(old, Some(&spec));
            Ok(None)
        }));
        assert_eq!((first.generation, cleared.unwrap().generation), (1, 2));
        let now = rt.block_on(read_policy(&store)).unwrap().unwrap();
        assert_eq!((now.generation, now.floor, now.set_by.as_str()), (2, None, "b@n"));
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
