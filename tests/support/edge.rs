//! The proxy's topology: a client, an edge and an origin namespace joined by two veth wires at
//! MTU 1500, `outpost run` in the edge namespace between them, echoing HTTP origins
//! (`tests/servers/origin.py`) in the origin namespace, real clients in the client namespace.
//!
//! ```text
//!  client ns              edge ns                                  origin ns
//!  198.18.10.1  --veth--  198.18.10.2:443  outpost run  198.18.11.1  --veth--  198.18.11.2
//!  2001:2:0:10::1         2001:2:0:10::2   admin 127.0.0.1:9901      2001:2:0:11::2
//!                                                                    :8080 "a", :8081 "b"
//! ```
//!
//! With [`Floor::Xdp`], `outpost run --iface <edge's client-facing veth>` attaches the XDP floor
//! itself (the config's policy: TLS 1.2, reject) with a pin directory of its own, and the client
//! end of that wire gets the `pass` program, since XDP_TX resets reach a veth end only if it has
//! an XDP program. With [`Floor::Userspace`], `outpost run --no-xdp`: the proxy's own floor
//! refuses legacy hellos.
//!
//! Addresses and names differ from [`crate::netns`]'s (and from the proxy crate's `xdp` test), so
//! all can run at once. Everything is torn down on drop, panics included; what a killed run left
//! behind (names carry its pid) is removed by the next [`Edge::new`]. outpost runs through
//! `nsenter --net`, not `ip netns exec`, which remounts /sys and would hide the bpffs it pins in;
//! the admin listener is read with `ip netns exec`, as an operator would.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::{
    self, add_namespace, add_veth, check_prerequisites, check_tools, configure_if, in_parallel,
    outpost_bin, run, run_client_in, run_with_input, Client, ClientResult, Daemon, Family, Output,
    BPFFS, COMMAND_LIMIT, PYTHON,
};

pub const CLIENT_V4: &str = "198.18.10.1";
pub const EDGE_V4: &str = "198.18.10.2";
/// The edge's end of the origin wire.
pub const EDGE_INNER_V4: &str = "198.18.11.1";
pub const ORIGIN_V4: &str = "198.18.11.2";
pub const CLIENT_V6: &str = "2001:2:0:10::1";
pub const EDGE_V6: &str = "2001:2:0:10::2";
pub const EDGE_INNER_V6: &str = "2001:2:0:11::1";
pub const ORIGIN_V6: &str = "2001:2:0:11::2";
/// Where outpost listens (both addresses) and what the XDP floor protects.
pub const HTTPS_PORT: u16 = 443;
/// outpost's admin listener, on the edge namespace's loopback.
pub const ADMIN: &str = "127.0.0.1:9901";
/// The origins, by name, and their ports in the origin namespace.
pub const ORIGINS: [(&str, u16); 2] = [("a", 8080), ("b", 8081)];

/// Routes of every [`Edge`]:
/// - `/` → origin a (over IPv4), with outpost's default active health checks;
/// - `/v6` → origin a over IPv6;
/// - `/pair` → origins b and a, round robin, active health checks off (a server that fails is
///   noticed by the request that meets it);
/// - `/dead` → port 8089, where nothing listens in the origin namespace (refused at once).
const ROUTES: &str = r#"
[[routes]]
path = "/"
[routes.origin]
servers = ["198.18.11.2:8080"]

[[routes]]
path = "/v6"
[routes.origin]
servers = ["[2001:2:0:11::2]:8080"]

[[routes]]
path = "/pair"
[routes.origin]
servers = ["198.18.11.2:8081", "198.18.11.2:8080"]
health_check = { interval_ms = 0 }

[[routes]]
path = "/dead"
[routes.origin]
servers = ["198.18.11.2:8089"]
health_check = { interval_ms = 0 }
"#;

pub(crate) const CLIENT_NS_PREFIX: &str = "opc-";
pub(crate) const EDGE_NS_PREFIX: &str = "ope-";
pub(crate) const ORIGIN_NS_PREFIX: &str = "opo-";
pub(crate) const PIN_DIR_PREFIX: &str = "outpost-edge-";
/// Config, data directory and scanner output, in the temp directory.
pub(crate) const TEMP_DIR_PREFIX: &str = "outpost-edge-";

/// How long outpost and the origins may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);
/// outpost's `shutdown_grace_ms`: how long a drain may wait for requests in flight.
pub const SHUTDOWN_GRACE_MS: u64 = 2000;
/// outpost's drain on SIGTERM (its `shutdown_grace_ms` is shorter).
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// testssl takes 10-17 s here (its start-up alone ~6 s; longer with XDP resets to wait for).
const TESTSSL_LIMIT: Duration = Duration::from_secs(120);
/// Longest a curl may take (its own `--max-time` is 5 s).
const CURL_LIMIT: Duration = Duration::from_secs(8);

/// Edges built by this process.
static EDGES: AtomicU32 = AtomicU32::new(0);
/// testssl output files written by this process.
static SCANS: AtomicU32 = AtomicU32::new(0);

/// Which floor stands in front of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// `outpost run --iface`: the XDP floor on the edge's client-facing veth, reject mode.
    Xdp,
    /// `outpost run --no-xdp`: the proxy's userspace floor alone.
    Userspace,
}

impl Floor {
    pub fn name(self) -> &'static str {
        match self {
            Floor::Xdp => "XDP floor (--iface)",
            Floor::Userspace => "userspace floor (--no-xdp)",
        }
    }
}

/// The three namespaces, the two wires, the origins and `outpost run`.
pub struct Edge {
    pub floor: Floor,
    /// The config's `[floor] mode`.
    pub mode: &'static str,
    /// Ports outpost listens on (both addresses), the XDP floor's protected ports.
    pub ports: Vec<u16>,
    pub client_ns: String,
    pub edge_ns: String,
    pub origin_ns: String,
    /// The client wire: the client's end and the edge's (where the XDP floor goes).
    pub client_if: String,
    pub edge_if: String,
    /// The origin wire: the edge's end and the origin's.
    pub edge_inner_if: String,
    pub origin_if: String,
    /// Maps and links of this edge's outpost ([`Floor::Xdp`] only).
    pub pin_dir: PathBuf,
    /// Config file, data directory, scanner output.
    pub dir: PathBuf,
    pub outpost_bin: PathBuf,
    outpost: Option<Daemon>,
    origins: Vec<(&'static str, Daemon)>,
}

impl Edge {
    /// Builds the topology, starts origins a and b and then `outpost run` with the floor in
    /// `floor`; `extra` is appended to outpost's config before the routes (tables only, e.g.
    /// `[http]`). Returns once outpost answers on its admin listener.
    pub fn new(floor: Floor, extra: &str) -> Edge {
        Edge::with(floor, "reject", &[HTTPS_PORT], extra)
    }

    /// [`Edge::new`] with the floor in `mode` and outpost listening on `ports`. `extra` goes
    /// right after the floor's keys, so it may add keys to `[floor]` before its own tables.
    pub fn with(floor: Floor, mode: &'static str, ports: &[u16], extra: &str) -> Edge {
        check_prerequisites();
        let script = origin_script();
        assert!(script.is_file(), "the origin script {} is missing", script.display());
        let outpost_bin = outpost_bin();
        netns::remove_stale(&outpost_bin);
        let (pid, n) = (std::process::id(), EDGES.fetch_add(1, Ordering::Relaxed));
        // Interface names: at most 2 + 7 + 1 + 5 = 15 characters (IFNAMSIZ - 1).
        let mut e = Edge {
            floor,
            mode,
            ports: ports.to_vec(),
            client_ns: format!("{CLIENT_NS_PREFIX}{pid}-{n}"),
            edge_ns: format!("{EDGE_NS_PREFIX}{pid}-{n}"),
            origin_ns: format!("{ORIGIN_NS_PREFIX}{pid}-{n}"),
            client_if: format!("pc{pid}x{n}"),
            edge_if: format!("pe{pid}x{n}"),
            edge_inner_if: format!("pf{pid}x{n}"),
            origin_if: format!("po{pid}x{n}"),
            pin_dir: Path::new(BPFFS).join(format!("{PIN_DIR_PREFIX}{pid}-{n}")),
            dir: std::env::temp_dir().join(format!("{TEMP_DIR_PREFIX}{pid}-{n}")),
            outpost_bin,
            outpost: None,
            origins: Vec::new(),
        };
        // From here on a panic drops `e`, which removes whatever was built.
        fs::create_dir_all(e.dir.join("data"))
            .unwrap_or_else(|err| panic!("creating {}: {err}", e.dir.display()));
        e.build();
        for (name, port) in ORIGINS {
            e.start_origin(name, port);
        }
        e.start_outpost(extra);
        e
    }

    fn build(&self) {
        let (c, e, o) = (self.client_ns.as_str(), self.edge_ns.as_str(), self.origin_ns.as_str());
        for ns in [c, e, o] {
            add_namespace(ns);
        }
        add_veth(e, &self.edge_if, c, &self.client_if);
        add_veth(e, &self.edge_inner_if, o, &self.origin_if);
        configure_if(c, &self.client_if, CLIENT_V4, CLIENT_V6);
        configure_if(e, &self.edge_if, EDGE_V4, EDGE_V6);
        configure_if(e, &self.edge_inner_if, EDGE_INNER_V4, EDGE_INNER_V6);
        configure_if(o, &self.origin_if, ORIGIN_V4, ORIGIN_V6);
    }

    fn start_origin(&mut self, name: &'static str, port: u16) {
        let script = origin_script();
        let argv = [
            PYTHON,
            script.to_str().expect("UTF-8 path"),
            "--port",
            &port.to_string(),
            "--name",
            name,
        ];
        let what = format!("origin {name}");
        self.origins.push((name, Daemon::start(&what, Some(&self.origin_ns), &argv)));
        let (_, origin) = self.origins.last_mut().expect("just pushed");
        origin.wait_ready(START_LIMIT, |d| d.stdout().starts_with("ready"));
    }

    /// outpost's config file.
    fn config_path(&self) -> PathBuf {
        self.dir.join("outpost.toml")
    }

    /// Writes outpost's config: the listen and admin addresses, the floor's policy, `extra`, the
    /// routes of every edge and then `routes`.
    fn write_config(&self, extra: &str, routes: &str) {
        let config = self.config_path();
        let listen: Vec<String> = self
            .ports
            .iter()
            .flat_map(|p| [format!("\"{EDGE_V4}:{p}\""), format!("\"[{EDGE_V6}]:{p}\"")])
            .collect();
        let text = format!(
            "listen = [{}]\n\
             admin = \"{ADMIN}\"\ndata_dir = \"{}\"\nworkers = 2\n\
             shutdown_grace_ms = {SHUTDOWN_GRACE_MS}\n\n\
             [floor]\nmin_version = \"1.2\"\nmode = \"{}\"\n{extra}\n{ROUTES}\n{routes}",
            listen.join(", "),
            self.dir.join("data").display(),
            self.mode,
        );
        fs::write(&config, text).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
    }

    /// Rewrites outpost's config (for a SIGHUP): `extra` as in [`Edge::new`], `routes` (tables
    /// of `[[routes]]`) after the routes of every edge.
    pub fn rewrite_config(&self, extra: &str, routes: &str) {
        self.write_config(extra, routes);
    }

    fn start_outpost(&mut self, extra: &str) {
        self.write_config(extra, "");
        let config = self.config_path();
        let bin = self.outpost_bin.to_str().expect("UTF-8 path");
        let pins = self.pin_dir.to_str().expect("UTF-8 path");
        let config = config.to_str().expect("UTF-8 path");
        let mut argv = vec![bin, "--pin-dir", pins, "run", "--config", config];
        match self.floor {
            Floor::Xdp => {
                // Before the floor: its resets must reach the client from the first hello on.
                let client_if = self.client_if.as_str();
                let attach = [bin, "--pin-dir", pins, "attach", "--iface", client_if];
                let pass = ["--mode", "native", "--program", "pass"];
                run(Some(&self.client_ns), &[&attach[..], &pass[..]].concat(), COMMAND_LIMIT).ok();
                argv.extend(["--iface", &self.edge_if]);
            }
            Floor::Userspace => argv.push("--no-xdp"),
        }
        self.outpost = Some(Daemon::start("outpost run", Some(&self.edge_ns), &argv));
        let edge_ns = self.edge_ns.clone();
        let outpost = self.outpost.as_mut().expect("just started");
        outpost.wait_ready(START_LIMIT, |_| admin_get(&edge_ns, "/healthz", None).success());
        if self.floor == Floor::Xdp {
            let link = self.pin_dir.join(format!("link-{}", self.edge_if));
            assert!(link.exists(), "no link pinned at {}:\n{}", link.display(), self.log());
        }
    }

    /// The edge's client-facing address.
    pub fn addr(family: Family) -> &'static str {
        match family {
            Family::V4 => EDGE_V4,
            Family::V6 => EDGE_V6,
        }
    }

    /// The client's address, as X-Forwarded-For carries it.
    pub fn client_addr(family: Family) -> &'static str {
        match family {
            Family::V4 => CLIENT_V4,
            Family::V6 => CLIENT_V6,
        }
    }

    /// `https://<edge>/<path>` (IPv6 bracketed); port 443 goes without saying.
    pub fn url(family: Family, path: &str) -> String {
        match family {
            Family::V4 => format!("https://{EDGE_V4}{path}"),
            Family::V6 => format!("https://[{EDGE_V6}]{path}"),
        }
    }

    /// curl in the client namespace: `curl -sSk -g --http1.1 --max-time 5 ARGS` (`-g`:
    /// brackets in URLs are IPv6, not globs; `--http2` in ARGS overrides `--http1.1`). The
    /// caller judges the result.
    pub fn curl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["curl", "-sSk", "-g", "--http1.1", "--max-time", "5"];
        argv.extend(args);
        run(Some(&self.client_ns), &argv, CURL_LIMIT)
    }

    /// Sends `request` as it is over TLS (`openssl s_client -quiet`, which waits for the server
    /// to close) from the client namespace; stdout is what came back.
    pub fn send_raw(&self, request: &[u8]) -> Output {
        let connect = format!("{EDGE_V4}:{HTTPS_PORT}");
        run_with_input(
            Some(&self.client_ns),
            &["timeout", "5", "openssl", "s_client", "-quiet", "-connect", &connect],
            request,
            CURL_LIMIT,
        )
    }

    /// Runs one of the version clients from the client namespace.
    pub fn run_client(&self, client: Client, family: Family, wait: Duration) -> ClientResult {
        let addr = Edge::addr(family);
        run_client_in(&self.client_ns, addr, client, family, HTTPS_PORT, wait, &[])
    }

    /// Runs the clients all at once; results in the order given.
    pub fn run_clients(&self, runs: &[(Client, Family)], wait: Duration) -> Vec<ClientResult> {
        in_parallel(runs, |&(c, f)| self.run_client(c, f, wait))
    }

    /// GET on the admin listener with the admin token; panics unless it answers.
    #[track_caller]
    pub fn admin(&self, path: &str) -> String {
        let token = self.dir.join("data").join("admin-token");
        admin_get(&self.edge_ns, path, Some(&token)).ok().stdout
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        self.admin("/metrics")
    }

    /// The value of one series in `metrics` (e.g. `outpost_requests_total{class="2xx"}`), if
    /// it is there.
    /// Lines of that name whose labels include the ones given are summed
    /// (`outpost_requests_total{class="2xx"}` counts every `proto`).
    pub fn metric_in(metrics: &str, series: &str) -> Option<u64> {
        outpost_testkit::metric_in(metrics, series)
    }

    /// The value of one series on `/metrics` now; panics if it is missing.
    #[track_caller]
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        Edge::metric_in(&text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// Asserts that the counter `series` is `want`, waiting for a count that lags its
    /// response (see `outpost_testkit::expect_counter`).
    #[track_caller]
    pub fn expect_metric(&self, series: &str, want: u64) {
        outpost_testkit::expect_counter(|| self.metrics(), series, want)
    }

    /// `outpost --pin-dir <this edge's> ARGS`, in the edge namespace; panics on failure.
    #[track_caller]
    pub fn outpost_cli(&self, args: &[&str]) -> Output {
        assert_eq!(self.floor, Floor::Xdp, "no pinned maps without XDP");
        let mut argv = vec![
            self.outpost_bin.to_str().expect("UTF-8 path"),
            "--pin-dir",
            self.pin_dir.to_str().expect("UTF-8 path"),
        ];
        argv.extend(args);
        run(Some(&self.edge_ns), &argv, COMMAND_LIMIT).ok()
    }

    /// The kernel's counters: `outpost stats --json` on this edge's pins.
    pub fn kernel_stats(&self) -> Value {
        let out = self.outpost_cli(&["stats", "--json"]);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`outpost stats --json` printed no JSON ({e}):\n{out}"))
    }

    /// Lines of "request METHOD TARGET" that origin `name` logged: requests that reached it,
    /// health checks aside.
    pub fn origin_requests(&self, name: &str) -> Vec<String> {
        let (_, origin) = self.origin(name);
        origin.stdout().lines().filter(|l| l.starts_with("request ")).map(str::to_owned).collect()
    }

    /// Stops origin `name` (its port then refuses connections).
    pub fn stop_origin(&mut self, name: &str) {
        let i = self.origins.iter().position(|(n, _)| *n == name);
        let i = i.unwrap_or_else(|| panic!("no origin named {name}"));
        let (_, mut origin) = self.origins.remove(i);
        origin.stop(STOP_LIMIT);
    }

    fn origin(&self, name: &str) -> &(&'static str, Daemon) {
        let found = self.origins.iter().find(|(n, _)| *n == name);
        found.unwrap_or_else(|| panic!("no origin named {name} running"))
    }

    /// outpost's log so far.
    pub fn log(&self) -> String {
        self.outpost.as_ref().map(Daemon::stderr).unwrap_or_default()
    }

    /// Whether outpost exited, and how.
    pub fn outpost_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.outpost.as_mut().and_then(Daemon::exited)
    }

    /// Sends `signal` to outpost (the process itself: `nsenter` exec'd it).
    pub fn signal_outpost(&mut self, signal: libc::c_int) {
        self.outpost.as_mut().expect("outpost is running").signal(signal);
    }

    /// Waits up to `limit` for outpost to exit; how it did (`None`: still running).
    pub fn wait_outpost_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.outpost.as_mut().and_then(|o| o.wait_exit(limit))
    }

    /// Waits up to `limit` until outpost's log holds `needle` `count` times; panics, showing the
    /// log, if it does not.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} ×{count} in outpost's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a scripted TLS client (Python `ssl`) in the client namespace, connected to the
    /// edge's IPv4 address over one connection, running `steps` in order; see [`TlsSession`].
    pub fn tls_session(&self, steps: &[&str]) -> TlsSession {
        let port = HTTPS_PORT.to_string();
        let mut argv = vec![PYTHON, "-c", TLS_SESSION_SCRIPT, EDGE_V4, &port];
        argv.extend(steps);
        let daemon = Daemon::start("TLS session", Some(&self.client_ns), &argv);
        TlsSession { daemon }
    }

    /// Creates the file at [`Edge::release_path`]`(name)`, releasing a [`TlsSession`] waiting
    /// on it (`wait:PATH`).
    pub fn release(&self, name: &str) {
        let path = self.dir.join(name);
        fs::write(&path, b"").unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A path, in this edge's directory, for a [`TlsSession`]'s `wait:PATH` step.
    pub fn release_path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("UTF-8 path").to_owned()
    }

    /// Runs testssl's protocol scan from the client namespace; returns its output and the
    /// `finding` of each id in its JSON (`SSLv2`, …, `TLS1_3`).
    pub fn testssl(&self) -> (Output, BTreeMap<String, String>) {
        self.testssl_port(HTTPS_PORT)
    }

    /// [`Edge::testssl`] against `port`.
    pub fn testssl_port(&self, port: u16) -> (Output, BTreeMap<String, String>) {
        check_tools(&[("testssl", "testssl.sh")]);
        let n = SCANS.fetch_add(1, Ordering::Relaxed);
        let json = self.dir.join(format!("testssl-{n}.json"));
        let target = format!("{EDGE_V4}:{port}");
        let json_arg = json.to_str().expect("UTF-8 path");
        // `--nodns none`: the namespace has no resolver to wait for.
        let argv = [
            "testssl",
            "--quiet",
            "--color",
            "0",
            "-p",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--jsonfile",
            json_arg,
            &target,
        ];
        let out = run(Some(&self.client_ns), &argv, TESTSSL_LIMIT);
        let text = fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("testssl wrote no {} ({e}):\n{out}", json.display()));
        let items: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("testssl's JSON does not parse ({e}):\n{text}"));
        let findings = items
            .as_array()
            .unwrap_or_else(|| panic!("testssl's JSON is not an array:\n{text}"))
            .iter()
            .filter_map(|i| Some((i["id"].as_str()?.to_owned(), i["finding"].as_str()?.to_owned())))
            .collect();
        (out, findings)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut outpost) = self.outpost.take() {
            // SIGTERM: outpost drains and detaches the floor it attached.
            let status = outpost.stop(STOP_LIMIT);
            if std::thread::panicking() || !status.is_some_and(|s| s.success()) {
                let floor = self.floor.name();
                eprintln!("--- outpost, {floor}, exit {status:?} ---\n{}", outpost.report());
            }
        }
        // Origins next: a process still inside keeps a namespace from going away.
        self.origins.clear();
        netns::teardown(
            &self.outpost_bin,
            &self.pin_dir,
            &[&self.client_ns, &self.edge_ns, &self.origin_ns],
        );
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Edge {
    /// Sends `hello` (raw bytes, e.g. a crafted SSLv3 or SSLv2-format hello) to the edge on
    /// `port` over IPv4 from the client namespace, and reads what comes back for up to 3 s.
    /// stdout is one line: `alert HEX` (a TLS alert record), `data HEX` (anything else), `reset`,
    /// `closed` (a close without a byte) or `timeout`.
    pub fn send_hello(&self, hello: &[u8], port: u16) -> Output {
        let hex: String = hello.iter().map(|b| format!("{b:02x}")).collect();
        let argv = [PYTHON, "-c", RAW_HELLO_SCRIPT, EDGE_V4, &port.to_string(), &hex];
        run(Some(&self.client_ns), &argv, CURL_LIMIT)
    }

    /// `count` legacy clients (Python `ssl`, TLS 1.0, security level 0, each sending one GET),
    /// started evenly over `spread` from the client namespace's one IPv4 address to `port`: a
    /// flood from one source network. Each waits up to 5 s for its answer.
    pub fn legacy_flood(&self, count: usize, spread: Duration, port: u16) -> Flood {
        let argv = [
            PYTHON,
            "-c",
            FLOOD_SCRIPT,
            EDGE_V4,
            &port.to_string(),
            &count.to_string(),
            &spread.as_secs_f64().to_string(),
        ];
        let out = run(Some(&self.client_ns), &argv, Duration::from_secs(60));
        let v: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("the flood printed no JSON ({e}):\n{out}"));
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
        Flood {
            pages: n("page"),
            refused: n("refused"),
            timed_out: n("timeout"),
            other: n("other"),
            span: Duration::from_secs_f64(v["span_s"].as_f64().expect("span_s")),
            output: out,
        }
    }
}

/// What [`Edge::legacy_flood`] saw.
pub struct Flood {
    /// Clients that got the 403 page.
    pub pages: u64,
    /// Clients reset or refused with an alert.
    pub refused: u64,
    pub timed_out: u64,
    /// Anything else (with the first such answer in `output`'s stderr).
    pub other: u64,
    /// From the first client's start to the last one's end: every hello reached the edge within
    /// it, including one whose connection waited for a retransmitted SYN.
    pub span: Duration,
    pub output: Output,
}

const RAW_HELLO_SCRIPT: &str = r#"
import socket, sys
host, port, hello = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.create_connection((host, port), timeout=3)
s.sendall(hello)
try:
    data = s.recv(4096)
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
else:
    if not data:
        print("closed")
    elif data[0] == 0x15:
        print("alert", data.hex())
    else:
        print("data", data.hex())
"#;

const FLOOD_SCRIPT: &str = r#"
import asyncio, json, resource, ssl, sys, time, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
host, port, count, spread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
res = {"page": 0, "refused": 0, "timeout": 0, "other": 0}
starts, ends = [], []

async def one(i, t0):
    await asyncio.sleep(max(0.0, t0 + i * spread / count - time.monotonic()))
    starts.append(time.monotonic())
    w = None
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname="edge.test"), 5)
        w.write(b"GET / HTTP/1.0\r\nHost: edge.test\r\n\r\n")
        body = await asyncio.wait_for(r.read(), 5)
        if b"or newer is required" in body:
            res["page"] += 1
        else:
            res["other"] += 1
            print("other:", body[:200], file=sys.stderr)
    except asyncio.TimeoutError:
        res["timeout"] += 1
    except (ConnectionError, ssl.SSLError) as e:
        res["refused"] += 1
    except OSError as e:
        res["other"] += 1
        print("other:", repr(e), file=sys.stderr)
    finally:
        ends.append(time.monotonic())
        if w is not None:
            w.close()

async def main():
    t0 = time.monotonic() + 0.05
    await asyncio.gather(*(one(i, t0) for i in range(count)))

asyncio.run(main())
res["span_s"] = max(ends) - min(starts)
print(json.dumps(res))
"#;

/// A TLS client following a script of steps over one connection (so keep-alive and slow
/// senders can be tested), printing on stdout a line per event, each starting with the seconds
/// since the handshake completed. Steps (in TEXT, `\r`, `\n` and other Python escapes are
/// decoded):
/// - `send:TEXT`: sends TEXT;
/// - `read`: reads one response (head and `Content-Length` body), prints `response` and the
///   response itself, then `end`; prints `closed` instead if the connection closes first;
/// - `wait:PATH`: waits (10 s at most) for the file PATH to exist, then prints `released`;
/// - `trickle:MS:TEXT`: sends TEXT a byte at a time, MS milliseconds apart; if the edge answers
///   or closes meanwhile, prints `cut-off after N bytes`, what came until the close (`closed`)
///   and stops the script; else prints `trickled N bytes`.
///
/// It prints `connected TLSvX` first and `done` at the end of the script; the socket times out
/// after 10 s.
pub struct TlsSession {
    daemon: Daemon,
}

impl TlsSession {
    /// What it printed so far.
    pub fn stdout(&self) -> String {
        self.daemon.stdout()
    }

    /// Waits up to `limit` until its output contains `needle`; panics, with its output, if not.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str, limit: Duration) {
        self.daemon.wait_ready(limit, |d| d.stdout().contains(needle));
    }

    /// Waits up to `limit` for the script to end; its output. Panics unless it exited 0.
    #[track_caller]
    pub fn finish(&mut self, limit: Duration) -> String {
        let status = self.daemon.wait_exit(limit);
        assert!(status.is_some(), "TLS session still running:\n{}", self.report());
        assert!(status.is_some_and(|s| s.success()), "TLS session failed:\n{}", self.report());
        self.daemon.stdout()
    }

    /// Its command line and output, for a failure message.
    pub fn report(&self) -> String {
        self.daemon.report()
    }

    /// The time stamp of the first line starting (after it) with `event`.
    pub fn time_of(output: &str, event: &str) -> Option<Duration> {
        output.lines().find_map(|l| {
            let (time, rest) = l.split_once(' ')?;
            match rest.starts_with(event) {
                true => time.parse().ok().map(Duration::from_secs_f64),
                false => None,
            }
        })
    }
}

const TLS_SESSION_SCRIPT: &str = r#"
import codecs, os, select, socket, ssl, sys, time

host, port, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10))
start = time.monotonic()

def say(*words):
    print(f"{time.monotonic() - start:.3f}", *words, flush=True)

def text(arg):
    return codecs.decode(arg, "unicode_escape").encode("latin-1")

say("connected", s.version())
buf = b""

def fill():
    global buf
    data = s.recv(65536)
    buf += data
    return bool(data)

def read_response():
    global buf
    while b"\r\n\r\n" not in buf:
        if not fill():
            return None
    head, _, _ = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    end = len(head) + 4 + length
    while len(buf) < end:
        if not fill():
            return None
    response, buf = buf[:end], buf[end:]
    return response

def answered():
    """After select found the socket readable: whether the edge sent data or closed, rather than
    TLS records of its own (TLS 1.3 session tickets)."""
    global buf
    s.settimeout(0.0)
    try:
        data = s.recv(65536)
    except ssl.SSLWantReadError:
        return False
    except (OSError, ssl.SSLError) as e:
        say("error", repr(e))
        return True
    finally:
        s.settimeout(10)
    buf += data
    return True

def until_closed():
    try:
        while fill():
            pass
    except (OSError, ssl.SSLError) as e:
        say("error", repr(e))
    print(buf.decode("latin-1"), flush=True)
    say("closed")

for step in steps:
    op, _, arg = step.partition(":")
    if op == "send":
        s.sendall(text(arg))
    elif op == "read":
        response = read_response()
        if response is None:
            say("closed")
            print(buf.decode("latin-1"), flush=True)
            sys.exit(0)
        say("response")
        print(response.decode("latin-1"), flush=True)
        say("end")
    elif op == "wait":
        deadline = time.monotonic() + 10
        while not os.path.exists(arg):
            if time.monotonic() > deadline:
                say("never released")
                sys.exit(1)
            time.sleep(0.01)
        say("released")
    elif op == "trickle":
        ms, _, data = arg.partition(":")
        data = text(data)
        for n in range(len(data)):
            try:
                s.sendall(data[n : n + 1])
            except (OSError, ssl.SSLError) as e:
                say(f"cut-off after {n} bytes", repr(e))
                until_closed()
                sys.exit(0)
            deadline = time.monotonic() + int(ms) / 1000
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([s], [], [], left)
                if readable and answered():
                    say(f"cut-off after {n + 1} bytes")
                    until_closed()
                    sys.exit(0)
        say(f"trickled {len(data)} bytes")
    else:
        sys.exit(f"unknown step {step!r}")
say("done")
"#;

/// GET `http://ADMIN/path` from inside `edge_ns`, with `ip netns exec`, as an operator there
/// would, and with the admin token of `token` when given.
pub(crate) fn admin_get(edge_ns: &str, path: &str, token: Option<&Path>) -> Output {
    admin_get_at(edge_ns, ADMIN, path, token)
}

/// [`admin_get`] on an admin listener at `admin`, from `edge_ns`.
pub(crate) fn admin_get_at(edge_ns: &str, admin: &str, path: &str, token: Option<&Path>) -> Output {
    let url = format!("http://{admin}{path}");
    let mut argv = vec!["ip", "netns", "exec", edge_ns, "curl", "-sSf", "--max-time", "3"];
    let auth = token.map(|t| {
        let t = fs::read_to_string(t).unwrap_or_else(|e| panic!("{}: {e}", t.display()));
        format!("Authorization: Bearer {}", t.trim())
    });
    if let Some(a) = &auth {
        argv.extend(["-H", a]);
    }
    argv.push(&url);
    run(None, &argv, COMMAND_LIMIT)
}

/// The origin server script.
pub fn origin_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/origin.py")
}
