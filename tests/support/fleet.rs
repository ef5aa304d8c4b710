//! A fleet: several edge nodes, each in a namespace of its own, sharing one PostgreSQL, as a
//! deployment with many edge hosts does. One flat LAN joins them: a bridge in a hub namespace
//! that also runs the database and an echoing origin; a client namespace hangs off the same
//! bridge.
//!
//! ```text
//!                      hub ns: bridge 198.18.20.1/24
//!                      PostgreSQL :5432, origin :8080 (echoes each request)
//!            +-------------+---------------+---------------+
//!        client ns      edge-1 ns        edge-2 ns        ...
//!      198.18.20.2    198.18.20.11:443  198.18.20.12:443
//!                     admin 127.0.0.1:9901 in each
//!                     (or <its address>:9901, with `Options::admin_on_lan`)
//! ```
//!
//! Each edge runs `outpost run --no-xdp` (this topology is about shared state; the XDP floor
//! has topologies of its own in [`crate::netns`] and [`crate::edge`]) with `node = "edge-N"` and
//! `[store] url` pointing at the hub's database. Everything is torn down on drop, panics
//! included; leftovers of a killed run are removed by the next [`Fleet::new`].

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use outpost_store::testing::TestPostgres;

use crate::{
    edge::{admin_get_at, origin_script, ADMIN},
    netns::{
        self, add_namespace, add_veth, check_prerequisites, host, outpost_bin, run, Daemon, Output,
        COMMAND_LIMIT, PYTHON,
    },
};

/// The hub's address on the bridge: database and origin.
pub const HUB_V4: &str = "198.18.20.1";
pub const CLIENT_V4: &str = "198.18.20.2";
/// The bridge's own MAC, fixed (see [`Fleet::new`]).
const HUB_MAC: &str = "02:00:c6:12:14:01";
/// The origin's port in the hub namespace.
pub const ORIGIN_PORT: u16 = 8080;
/// The admin listener's port with [`Options::admin_on_lan`].
pub const ADMIN_PORT: u16 = 9901;

pub(crate) const HUB_NS_PREFIX: &str = "oph-";
pub(crate) const CLIENT_NS_PREFIX: &str = "opk-";
pub(crate) const EDGE_NS_PREFIX: &str = "opn-";
pub(crate) const TEMP_DIR_PREFIX: &str = "outpost-fleet-";

const START_LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(5);
const CURL_LIMIT: Duration = Duration::from_secs(8);

static FLEETS: AtomicU32 = AtomicU32::new(0);

/// One edge node of a [`Fleet`].
pub struct Node {
    /// `edge-1`, `edge-2`, ...
    pub name: String,
    pub ns: String,
    pub addr: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its admin listener (`admin` in its config).
    pub admin: String,
    outpost: Option<Daemon>,
}

/// How a [`Fleet`] is built.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Each edge's admin listener on its LAN address (`<addr>:9901`) instead of its own
    /// loopback, so the hub (a Prometheus there) and the other nodes (`outpost stats --fleet`)
    /// reach it, as on a management network.
    pub admin_on_lan: bool,
}

/// The hub, the client, the edges and the database.
pub struct Fleet {
    pub hub_ns: String,
    pub client_ns: String,
    pub nodes: Vec<Node>,
    pub pg: TestPostgres,
    /// Configs and data directories.
    pub dir: PathBuf,
    pub outpost_bin: PathBuf,
    origin: Option<Daemon>,
}

impl Fleet {
    /// Builds the LAN, starts PostgreSQL and the origin in the hub, then `nodes` edges, each
    /// with `extra` appended to its config (top-level keys are not allowed in `extra`: it comes
    /// after the `[store]` table). Returns once every edge answers on its admin listener.
    pub fn new(nodes: usize, extra: &str) -> Fleet {
        Fleet::with_options(nodes, extra, Options::default())
    }

    /// [`Fleet::new`], built as `options` say.
    pub fn with_options(nodes: usize, extra: &str, options: Options) -> Fleet {
        assert!((1..=9).contains(&nodes), "1 to 9 nodes");
        check_prerequisites();
        let outpost_bin = outpost_bin();
        netns::remove_stale(&outpost_bin);
        let (pid, n) = (std::process::id(), FLEETS.fetch_add(1, Ordering::Relaxed));
        let hub_ns = format!("{HUB_NS_PREFIX}{pid}-{n}");
        let client_ns = format!("{CLIENT_NS_PREFIX}{pid}-{n}");
        let dir = std::env::temp_dir().join(format!("{TEMP_DIR_PREFIX}{pid}-{n}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        add_namespace(&hub_ns);
        // A bridge takes the lowest MAC among its ports unless given one: each edge added
        // later could then change the hub's MAC under the feet of the edges that already
        // resolved it (their database connections and origin connects stall until the
        // neighbour entry expires). A fixed, locally administered address keeps it still.
        host(&["ip", "-n", &hub_ns, "link", "add", "br0", "address", HUB_MAC, "type", "bridge"]);
        host(&["ip", "-n", &hub_ns, "link", "set", "br0", "up"]);
        host(&["ip", "-n", &hub_ns, "addr", "add", &format!("{HUB_V4}/24"), "dev", "br0"]);
        // The database first: a fleet is nothing without it. From here on a panic drops the
        // fleet, which removes whatever was built.
        let pg = TestPostgres::start_in_namespace(&hub_ns, HUB_V4);
        let mut fleet =
            Fleet { hub_ns, client_ns, nodes: Vec::new(), pg, dir, outpost_bin, origin: None };
        add_namespace(&fleet.client_ns);
        fleet.wire(&fleet.client_ns.clone(), &format!("k{pid}x{n}"), CLIENT_V4);
        fleet.start_origin();
        for i in 1..=nodes {
            let ns = format!("{EDGE_NS_PREFIX}{pid}-{n}{i}");
            add_namespace(&ns);
            let addr = format!("198.18.20.{}", 10 + i);
            fleet.wire(&ns, &format!("n{i}{pid}x{n}"), &addr);
            let name = format!("edge-{i}");
            let config = fleet.dir.join(format!("{name}.toml"));
            let admin = if options.admin_on_lan {
                format!("{addr}:{ADMIN_PORT}")
            } else {
                ADMIN.to_owned()
            };
            fleet.nodes.push(Node { name, ns, addr, config, admin, outpost: None });
            fleet.write_config(i - 1, extra);
            fleet.start_node(i - 1);
        }
        fleet
    }

    /// A veth from `ns` (interface `ifname`, address `addr`) into the hub's bridge.
    fn wire(&self, ns: &str, ifname: &str, addr: &str) {
        let hub_end = format!("h{}", &ifname[1..]);
        add_veth(ns, ifname, &self.hub_ns, &hub_end);
        host(&["ip", "-n", &self.hub_ns, "link", "set", &hub_end, "master", "br0", "up"]);
        host(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        host(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifname]);
    }

    fn start_origin(&mut self) {
        let script = origin_script();
        let port = ORIGIN_PORT.to_string();
        let argv = [PYTHON, script.to_str().expect("UTF-8 path"), "--port", &port, "--name", "hub"];
        let mut origin = Daemon::start("origin", Some(&self.hub_ns), &argv);
        origin.wait_ready(START_LIMIT, |d| d.stdout().starts_with("ready"));
        self.origin = Some(origin);
    }

    /// The config of node `i` (0-based): its listen address, the shared store, a route to the
    /// hub's origin, and `extra`.
    fn write_config(&self, i: usize, extra: &str) {
        let node = &self.nodes[i];
        let data = self.dir.join(format!("{}-data", node.name));
        let url = self.pg.url().replace("127.0.0.1", HUB_V4);
        let text = format!(
            "node = \"{}\"\nlisten = [\"{}:443\"]\nadmin = \"{}\"\ndata_dir = \"{}\"\n\
             workers = 2\nshutdown_grace_ms = 2000\n\n[store]\nurl = \"{url}\"\n\
             timeout_ms = 2000\nconnect_timeout_ms = 2000\n\n\
             [[routes]]\npath = \"/\"\n[routes.origin]\nservers = [\"{HUB_V4}:{ORIGIN_PORT}\"]\n\n\
             {extra}\n",
            node.name,
            node.addr,
            node.admin,
            data.display()
        );
        fs::write(&node.config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", node.config.display()));
    }

    /// Starts node `i` (again); returns once its admin listener answers.
    pub fn start_node(&mut self, i: usize) {
        let bin = self.outpost_bin.to_str().expect("UTF-8 path").to_owned();
        let node = &mut self.nodes[i];
        let config = node.config.to_str().expect("UTF-8 path");
        let argv = [bin.as_str(), "run", "--no-xdp", "--config", config];
        let mut daemon =
            Daemon::start(&format!("outpost run ({})", node.name), Some(&node.ns), &argv);
        let (ns, admin) = (node.ns.clone(), node.admin.clone());
        daemon.wait_ready(START_LIMIT, |_| admin_get_at(&ns, &admin, "/healthz", None).success());
        node.outpost = Some(daemon);
    }

    /// `https://<node i's address><path>` (0-based).
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("https://{}{path}", self.nodes[i].addr)
    }

    /// curl in the client namespace: `curl -sSk --http1.1 --max-time 5 ARGS`; the caller
    /// judges.
    pub fn curl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["curl", "-sSk", "--http1.1", "--max-time", "5"];
        argv.extend(args);
        run(Some(&self.client_ns), &argv, CURL_LIMIT)
    }

    /// GET on node `i`'s admin listener with its admin token; panics unless it answers 2xx.
    #[track_caller]
    pub fn admin(&self, i: usize, path: &str) -> String {
        let node = &self.nodes[i];
        let token = self.dir.join(format!("{}-data", node.name)).join("admin-token");
        admin_get_at(&node.ns, &node.admin, path, Some(&token)).ok().stdout
    }

    /// `outpost ARGS --config <node i's>` in node `i`'s namespace (the caller judges).
    pub fn outpost_cli(&self, i: usize, args: &[&str]) -> Output {
        let node = &self.nodes[i];
        let mut argv = vec![self.outpost_bin.to_str().expect("UTF-8 path")];
        argv.extend(args);
        argv.extend(["--config", node.config.to_str().expect("UTF-8 path")]);
        run(Some(&node.ns), &argv, COMMAND_LIMIT)
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i].outpost.as_ref().map(Daemon::stderr).unwrap_or_default()
    }

    /// Node `i`'s fleet policy generation in force, from its /metrics.
    #[track_caller]
    pub fn applied_generation(&self, i: usize) -> u64 {
        let metrics = self.admin(i, "/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("outpost_fleet_policy_applied_generation "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no applied generation in node {i}'s metrics:\n{metrics}"))
    }

    /// How long after the fleet policy's `generation` was set node `i` applied it, from the
    /// node's log (`since_set_ms`: the set time is in the policy row, and every namespace
    /// shares this host's clock). None while it has not.
    pub fn applied_after(&self, i: usize, generation: u64) -> Option<Duration> {
        let want = format!(" generation={generation} ");
        self.log(i)
            .lines()
            .filter(|l| l.contains("fleet policy") && l.contains(&want))
            .find_map(|l| l.split_once("since_set_ms=")?.1.split(' ').next()?.parse().ok())
            .map(Duration::from_millis)
    }

    /// Waits (at most `limit`) until every running node applied `generation`; how long after
    /// it was set each did, by node.
    #[track_caller]
    pub fn wait_applied(&self, generation: u64, limit: Duration) -> Vec<Duration> {
        let deadline = std::time::Instant::now() + limit;
        let running: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].outpost.is_some()).collect();
        loop {
            let took: Vec<Option<Duration>> =
                running.iter().map(|&i| self.applied_after(i, generation)).collect();
            if took.iter().all(Option::is_some) {
                return took.into_iter().flatten().collect();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "generation {generation} not applied by every node within {limit:?}: {took:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops node `i` (SIGTERM, drain); its exit status.
    pub fn stop_node(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i].outpost.take().and_then(|mut d| d.stop(STOP_LIMIT))
    }

    /// Kills node `i` (SIGKILL: no drain, its registry row is left as it was); panics unless
    /// it is gone within the stop limit.
    #[track_caller]
    pub fn kill_node(&mut self, i: usize) {
        let mut d = self.nodes[i].outpost.take().expect("node is running");
        d.signal(libc::SIGKILL);
        let status = d.wait_exit(STOP_LIMIT);
        assert!(status.is_some(), "node {i} still running after SIGKILL:\n{}", d.report());
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut d) = node.outpost.take() {
                let status = d.stop(STOP_LIMIT);
                if std::thread::panicking() || !status.is_some_and(|s| s.success()) {
                    eprintln!("--- {} exit {status:?} ---\n{}", node.name, d.report());
                }
            }
        }
        self.origin = None;
        self.pg.stop();
        let mut namespaces: Vec<&str> = self.nodes.iter().map(|n| n.ns.as_str()).collect();
        namespaces.extend([self.client_ns.as_str(), self.hub_ns.as_str()]);
        netns::teardown(&self.outpost_bin, Path::new("/nonexistent"), &namespaces);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
