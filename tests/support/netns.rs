//! A test topology that behaves like a wire: a client namespace and an edge namespace joined by a
//! veth pair at MTU 1500, outpost attached on the edge end through its real CLI, a real TLS
//! server (`tests/servers/tls_server.py`) in the edge namespace and real TLS clients (openssl,
//! curl, Python) in the client namespace.
//!
//! Everything a [`Topology`] creates is torn down when it is dropped, panics included. What a
//! killed run left behind (namespaces and pin directories named after a pid that is gone) is
//! removed by the next [`Topology::new`].
//!
//! Commands that load, pin or read pinned maps run through `nsenter --net=…`, which switches only
//! the network namespace: `ip netns exec` remounts /sys and hides the host's bpffs.

use std::{
    fmt, fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const CLIENT_V4: &str = "198.18.0.1";
pub const EDGE_V4: &str = "198.18.0.2";
pub const CLIENT_V6: &str = "2001:2::1";
pub const EDGE_V6: &str = "2001:2::2";
/// A real Ethernet wire: a hello over ~1450 bytes needs two segments.
pub const MTU: u16 = 1500;
/// Where the TLS server listens and what outpost protects.
pub const TLS_PORT: u16 = 443;
/// The system Python (its `ssl` module is what the server and the Python client use).
pub const PYTHON: &str = "/usr/bin/python3";
/// Tools looked up on PATH, with the Debian package that has them.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("nsenter", "util-linux"),
    ("timeout", "coreutils"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("tcpdump", "tcpdump"),
];

/// Longest any setup, teardown or CLI command may take.
pub(crate) const COMMAND_LIMIT: Duration = Duration::from_secs(15);
/// How long the TLS server may take to generate its key and listen.
const SERVER_START_LIMIT: Duration = Duration::from_secs(20);
/// Extra time a client gets past its own timeout before it is killed from here.
const CLIENT_GRACE: Duration = Duration::from_secs(3);

/// Names carry the pid and a counter, so parallel tests and parallel runs never collide, and a
/// later run can tell leftovers of a dead one from live topologies.
const CLIENT_NS_PREFIX: &str = "otc-";
const EDGE_NS_PREFIX: &str = "ote-";
const PIN_DIR_PREFIX: &str = "outpost-test-";
/// Output files of commands, in the temp directory.
const SCRATCH_PREFIX: &str = "outpost-netns-";
pub(crate) const BPFFS: &str = "/sys/fs/bpf";
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Topologies built by this process.
static TOPOLOGIES: AtomicU32 = AtomicU32::new(0);
/// Output files written by this process.
static SCRATCH_FILES: AtomicU32 = AtomicU32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (and SIGTERM) stop the running clients and return, so that destructors tear the
/// topology down (children run in process groups of their own and do not see the terminal's
/// SIGINT).
pub fn stop_on_sigint() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// Whether Ctrl-C (or SIGTERM) came since [`stop_on_sigint`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The outpost CLI: `$OUTPOST_BIN`, else the workspace's debug build.
pub fn outpost_bin() -> PathBuf {
    let path = match std::env::var_os("OUTPOST_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/outpost"),
    };
    assert!(
        path.is_file(),
        "the outpost binary is missing at {} (run `cargo build -p outpost`, or set OUTPOST_BIN)",
        path.display()
    );
    path
}

/// The TLS server script.
pub fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/tls_server.py")
}

/// Panics, naming what is missing, unless this runs as root with every tool at hand. The
/// namespace tests fail rather than skip: CI runs them as root.
pub fn check_prerequisites() {
    check_tools(TOOLS);
    // SAFETY: no arguments, no memory.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the namespace tests need root (network namespaces, XDP, bpffs); euid is {euid}: run them \
         as root, e.g. `sudo -E cargo test -p outpost-tests --test netns`"
    );
    assert!(Path::new(PYTHON).is_file(), "the namespace tests need {PYTHON} (Debian python3)");
    assert!(
        server_script().is_file(),
        "the TLS server script {} is missing",
        server_script().display()
    );
    outpost_bin();
}

/// Panics, naming each missing tool and its Debian package, unless all are on PATH.
pub fn check_tools(tools: &[(&str, &str)]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| find_on_path(tool).is_none())
        .map(|(tool, package)| format!("`{tool}` (Debian package {package})"))
        .collect();
    assert!(missing.is_empty(), "the namespace tests need {} on PATH", missing.join(", "));
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// What a command did.
pub struct Output {
    /// The command line as a shell would show it (with the `nsenter` prefix).
    pub command: String,
    /// `None`: still running at its deadline, so killed from here.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics, showing the command, its status and its output, unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Output {
        assert!(self.success(), "command failed:\n{self}");
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        match self.status {
            Some(s) => writeln!(f, "{s} after {} ms", self.elapsed.as_millis())?,
            None => writeln!(f, "killed at its deadline, after {} ms", self.elapsed.as_millis())?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// Runs `argv` in the host namespace; panics unless it succeeds.
pub(crate) fn host(argv: &[&str]) -> Output {
    run(None, argv, COMMAND_LIMIT).ok()
}

/// Runs `argv` (in namespace `ns`, if given), killing it (and its children) at `limit`.
pub fn run<S: AsRef<str>>(ns: Option<&str>, argv: &[S], limit: Duration) -> Output {
    exec(ns, argv, limit, false, None)
}

/// Same, with `input` on its standard input (the others get /dev/null).
pub fn run_with_input<S: AsRef<str>>(
    ns: Option<&str>,
    argv: &[S],
    input: &[u8],
    limit: Duration,
) -> Output {
    exec(ns, argv, limit, false, Some(input))
}

/// `argv` as run in namespace `ns`: behind `nsenter --net=…`, which switches the network
/// namespace only and keeps the host's /sys (and bpffs).
fn in_namespace<S: AsRef<str>>(ns: Option<&str>, argv: &[S]) -> Vec<String> {
    let mut full: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        full.extend(["nsenter".into(), format!("--net={NETNS_DIR}/{ns}"), "--".into()]);
    }
    full.extend(argv.iter().map(|a| a.as_ref().to_owned()));
    full
}

fn exec<S: AsRef<str>>(
    ns: Option<&str>,
    argv: &[S],
    limit: Duration,
    interruptible: bool,
    input: Option<&[u8]>,
) -> Output {
    let full = in_namespace(ns, argv);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let command = shell_line(&full);
    let (out_path, err_path) = (scratch_file("stdout"), scratch_file("stderr"));
    let in_path = input.map(|bytes| {
        let path = scratch_file("stdin");
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    });
    let start = Instant::now();
    let mut child = spawn(&full, in_path.as_deref(), &out_path, &err_path);
    let status = wait_until(&mut child, start + limit, interruptible);
    let elapsed = start.elapsed();
    if let Some(p) = in_path {
        let _ = fs::remove_file(p);
    }
    Output { command, status, stdout: take_file(&out_path), stderr: take_file(&err_path), elapsed }
}

/// Starts `argv` with its output going to files, in a process group of its own: killing the
/// group reaches what `timeout` or a shell forked, and the terminal's Ctrl-C does not.
fn spawn(argv: &[&str], stdin: Option<&Path>, stdout: &Path, stderr: &Path) -> Child {
    let create =
        |p: &Path| fs::File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
    let stdin = match stdin {
        Some(p) => Stdio::from(
            fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display())),
        ),
        None => Stdio::null(),
    };
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(stdin)
        .stdout(create(stdout))
        .stderr(create(stderr))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", shell_line(argv)))
}

fn wait_until(child: &mut Child, deadline: Instant, interruptible: bool) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline || (interruptible && interrupted()) {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            return None;
        }
        // Fine-grained: client latencies are measured with this.
        thread::sleep(Duration::from_millis(2));
    }
}

/// Signals the process group led by `pid`, a child started here with `process_group(0)`.
fn kill_group(pid: u32, signal: libc::c_int) {
    // SAFETY: plain syscall; the group is one this process created.
    unsafe { libc::kill(-(pid as libc::pid_t), signal) };
}

fn scratch_file(what: &str) -> PathBuf {
    let n = SCRATCH_FILES.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}-{n}.{what}", std::process::id()))
}

fn take_file(path: &Path) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let _ = fs::remove_file(path);
    text
}

fn shell_line(argv: &[&str]) -> String {
    let quote = |a: &&str| -> String {
        if a.contains('\n') {
            format!("'<{}-line script>'", a.lines().count())
        } else if a.is_empty()
            || a.contains(|c: char| !c.is_ascii_alphanumeric() && !"-_./:=,@[]".contains(c))
        {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            (*a).to_owned()
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Creates network namespace `ns` with its loopback up; panics on failure.
pub(crate) fn add_namespace(ns: &str) {
    host(&["ip", "netns", "add", ns]);
    host(&["ip", "-n", ns, "link", "set", "lo", "up"]);
}

/// Creates a veth pair: `if_a` in namespace `ns_a`, its peer `if_b` in `ns_b`.
pub(crate) fn add_veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) {
    host(&[
        "ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns",
        ns_b,
    ]);
}

/// Sets `ifname` in `ns` up at [`MTU`] with `v4`/24 and `v6`/64.
pub(crate) fn configure_if(ns: &str, ifname: &str, v4: &str, v6: &str) {
    host(&["ip", "-n", ns, "link", "set", ifname, "mtu", &MTU.to_string(), "up"]);
    host(&["ip", "-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname]);
    // nodad: usable at once, not after duplicate address detection (~2 s).
    host(&["ip", "-n", ns, "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
}

/// `f` on every item at once, one thread each; results in the order given.
pub(crate) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let f = &f;
    thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|item| s.spawn(move || f(item))).collect();
        handles.into_iter().map(|h| h.join().expect("client thread panicked")).collect()
    })
}

/// One end of the veth pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Edge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The server's address, bare.
    pub fn edge_addr(self) -> &'static str {
        match self {
            Family::V4 => EDGE_V4,
            Family::V6 => EDGE_V6,
        }
    }
}

/// The two namespaces, the veth pair, outpost attached, and the servers started.
pub struct Topology {
    pub client_ns: String,
    pub edge_ns: String,
    pub client_if: String,
    pub edge_if: String,
    /// Maps and links of this topology's outpost, apart from every other.
    pub pin_dir: PathBuf,
    pub outpost: PathBuf,
    servers: Vec<Daemon>,
}

impl Topology {
    /// Builds the namespaces and the veth pair, attaches the floor on the edge end (policy:
    /// outpost's default, TLS 1.2 in reject mode on port 443) and the pass program on the client
    /// end, so that the floor's XDP_TX resets reach the client.
    // Not `Default`: building one creates namespaces and loads programs.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Topology {
        check_prerequisites();
        let outpost = outpost_bin();
        remove_stale(&outpost);
        let (pid, n) = (std::process::id(), TOPOLOGIES.fetch_add(1, Ordering::Relaxed));
        // Interface names: at most 2 + 7 + 1 + 5 = 15 characters (IFNAMSIZ - 1).
        let t = Topology {
            client_ns: format!("{CLIENT_NS_PREFIX}{pid}-{n}"),
            edge_ns: format!("{EDGE_NS_PREFIX}{pid}-{n}"),
            client_if: format!("oc{pid}x{n}"),
            edge_if: format!("oe{pid}x{n}"),
            pin_dir: Path::new(BPFFS).join(format!("{PIN_DIR_PREFIX}{pid}-{n}")),
            outpost,
            servers: Vec::new(),
        };
        // From here on a panic drops `t`, which removes whatever was built.
        t.build();
        t
    }

    fn build(&self) {
        let (c, e) = (self.client_ns.as_str(), self.edge_ns.as_str());
        add_namespace(c);
        add_namespace(e);
        add_veth(e, &self.edge_if, c, &self.client_if);
        configure_if(c, &self.client_if, CLIENT_V4, CLIENT_V6);
        configure_if(e, &self.edge_if, EDGE_V4, EDGE_V6);
        self.outpost_in(Side::Edge, &["attach", "--iface", &self.edge_if, "--mode", "native"]);
        self.outpost_in(
            Side::Client,
            &["attach", "--iface", &self.client_if, "--mode", "native", "--program", "pass"],
        );
    }

    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Client => &self.client_ns,
            Side::Edge => &self.edge_ns,
        }
    }

    /// Runs `argv` in one namespace, killed at `limit`; the caller judges the result.
    pub fn run_in<S: AsRef<str>>(&self, side: Side, argv: &[S], limit: Duration) -> Output {
        run(Some(self.ns(side)), argv, limit)
    }

    /// `outpost --pin-dir <this topology's> ARGS` in the edge namespace; panics on failure.
    pub fn outpost(&self, args: &[&str]) -> Output {
        self.outpost_in(Side::Edge, args)
    }

    fn outpost_in(&self, side: Side, args: &[&str]) -> Output {
        let mut argv = vec![self.outpost.to_str().expect("UTF-8 path"), "--pin-dir"];
        argv.push(self.pin_dir.to_str().expect("UTF-8 path"));
        argv.extend(args);
        self.run_in(side, &argv, COMMAND_LIMIT).ok()
    }

    /// `outpost policy set`; what is `None` stays as it is.
    pub fn policy_set(&self, min_version: Option<&str>, mode: Option<&str>, ports: Option<&[u16]>) {
        let ports = ports.map(|p| p.iter().map(u16::to_string).collect::<Vec<_>>().join(","));
        let mut args = vec!["policy", "set"];
        for (flag, value) in
            [("--min-version", min_version), ("--mode", mode), ("--ports", ports.as_deref())]
        {
            if let Some(v) = value {
                args.extend([flag, v]);
            }
        }
        self.outpost(&args);
    }

    /// `outpost stats --json`.
    pub fn stats(&self) -> Value {
        let out = self.outpost(&["stats", "--json"]);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`outpost stats --json` printed no JSON ({e}):\n{out}"))
    }

    /// The pinned per-version counters as `bpftool map dump pinned` shows them, without
    /// outpost: each slot summed over CPUs (values are little-endian u64 bytes).
    pub fn bpftool_version_stats(&self) -> Vec<u64> {
        let path = self.pin_dir.join(outpost_common::maps::VERSION_STATS);
        let path = path.to_str().expect("a UTF-8 pin path");
        let out = host(&["bpftool", "-j", "map", "dump", "pinned", path]);
        let dump: Value = serde_json::from_str(&out.stdout).expect("bpftool -j prints JSON");
        let bytes = |v: &Value| -> Vec<u8> {
            v.as_array()
                .expect("a byte list")
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect()
        };
        let entries = dump.as_array().expect("a list of entries");
        let mut slots = vec![0; entries.len()];
        for e in entries {
            let key = u32::from_le_bytes(bytes(&e["key"]).try_into().expect("a u32 key"));
            let sum: u64 = e["values"]
                .as_array()
                .expect("per-CPU values")
                .iter()
                .map(|c| u64::from_le_bytes(bytes(&c["value"]).try_into().expect("a u64")))
                .sum();
            slots[key as usize] = sum;
        }
        slots
    }

    /// `outpost stats`, the table.
    pub fn stats_table(&self) -> String {
        self.outpost(&["stats"]).stdout
    }

    /// Starts the TLS server on `port` (IPv4 and IPv6) in the edge namespace; returns its pid
    /// once it listens.
    pub fn start_tls_server(&mut self, port: u16) -> u32 {
        let script = server_script();
        let argv = [
            PYTHON,
            script.to_str().expect("UTF-8 path"),
            "--addr",
            "::",
            "--port",
            &port.to_string(),
        ];
        // Kept before waiting, so that a panic below still stops it.
        self.servers.push(Daemon::start("TLS server", Some(&self.edge_ns), &argv));
        let server = self.servers.last_mut().expect("just pushed");
        server.wait_ready(SERVER_START_LIMIT, |d| d.stdout().contains("ready"));
        server.pid()
    }

    /// Stops a server started by [`Topology::start_tls_server`]; returns what it logged.
    pub fn stop_server(&mut self, pid: u32) -> String {
        let i = self
            .servers
            .iter()
            .position(|s| s.pid() == pid)
            .unwrap_or_else(|| panic!("no server with pid {pid} was started here"));
        let mut server = self.servers.remove(i);
        server.stop(STOP_LIMIT);
        server.stderr()
    }

    /// TCP sockets in one namespace with `port` at either end, LISTEN excluded: lines of
    /// `ss -Htan` (state, queues, local, peer).
    pub fn sockets(&self, side: Side, port: u16) -> Vec<String> {
        let out = self.run_in(side, &["ss", "-Htan"], COMMAND_LIMIT).ok();
        let suffix = format!(":{port}");
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("LISTEN"))
            .filter(|l| l.split_whitespace().skip(3).take(2).any(|a| a.ends_with(&suffix)))
            .map(str::to_owned)
            .collect()
    }

    /// Runs one client against the server on `port`; it gives up after `wait`.
    pub fn run_client(
        &self,
        client: Client,
        family: Family,
        port: u16,
        wait: Duration,
    ) -> ClientResult {
        self.run_client_with(client, family, port, wait, &[])
    }

    /// Same, with extra arguments for an openssl client (e.g. `-alpn` to make a big hello).
    pub fn run_client_with(
        &self,
        client: Client,
        family: Family,
        port: u16,
        wait: Duration,
        extra: &[&str],
    ) -> ClientResult {
        run_client_in(&self.client_ns, family.edge_addr(), client, family, port, wait, extra)
    }

    /// Runs the clients all at once; results in the order given.
    pub fn run_clients(
        &self,
        runs: &[(Client, Family)],
        port: u16,
        wait: Duration,
        extra: &[&str],
    ) -> Vec<ClientResult> {
        in_parallel(runs, |&(c, f)| self.run_client_with(c, f, port, wait, extra))
    }

    /// Starts tcpdump on one end of the wire, for TCP segments to or from `port`; returns once
    /// it captures. What XDP passes (or what XDP_TX sent to the client end) is what it sees.
    pub fn capture(&self, side: Side, port: u16) -> Capture {
        let ifname = match side {
            Side::Client => &self.client_if,
            Side::Edge => &self.edge_if,
        };
        let net = format!("--net={NETNS_DIR}/{}", self.ns(side));
        let filter = format!("tcp port {port}");
        // Immediate mode: without it packets wait in the kernel for a block to fill or time out,
        // and the last ones before `stop` would be missed.
        let argv = [
            "nsenter",
            &net,
            "--",
            "tcpdump",
            "--immediate-mode",
            "-i",
            ifname,
            "-nn",
            "-tt",
            "-l",
            &filter,
        ];
        let (stdout, stderr) = (scratch_file("tcpdump-out"), scratch_file("tcpdump-err"));
        let command = shell_line(&argv);
        let child = spawn(&argv, None, &stdout, &stderr);
        let mut cap = Capture { child: Some(child), command, stdout, stderr, port };
        let start = Instant::now();
        while !fs::read_to_string(&cap.stderr).unwrap_or_default().contains("listening on") {
            let exited = cap.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > COMMAND_LIMIT {
                let err = fs::read_to_string(&cap.stderr).unwrap_or_default();
                panic!("tcpdump did not start:\n$ {}\n--- stderr ---\n{err}", cap.command);
            }
            thread::sleep(Duration::from_millis(10));
        }
        cap
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Servers first: a process still inside keeps a namespace from going away.
        self.servers.clear();
        teardown(&self.outpost, &self.pin_dir, &[&self.client_ns, &self.edge_ns]);
    }
}

/// Runs one client in namespace `ns` against `addr` (bare, IPv4 or IPv6) on `port`; it gives up
/// after `wait`, and Ctrl-C stops it.
pub fn run_client_in(
    ns: &str,
    addr: &str,
    client: Client,
    family: Family,
    port: u16,
    wait: Duration,
    extra: &[&str],
) -> ClientResult {
    let argv = client.argv(addr, port, wait, extra);
    let output = exec(Some(ns), &argv, wait + CLIENT_GRACE, true, None);
    let outcome = client.judge(&output);
    ClientResult { client, family, output, outcome }
}

/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(3);

/// Runs `f` on a thread of its own that has first entered network namespace `ns`, and returns
/// what it returns. Sockets that thread opens live in `ns`, and so do threads it starts (a new
/// thread inherits its creator's namespace): a client built there (a blocking HTTP client
/// with its own runtime thread) stays in `ns` for its whole life, wherever it is called from.
pub fn on_thread_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd as _;
    let path = format!("{NETNS_DIR}/{ns}");
    let file = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    thread::spawn(move || {
        // SAFETY: plain syscall on a descriptor we own; it changes this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A long-running process (a server, `outpost run`) started in a namespace, in a process group
/// of its own, its output in files that can be read while it runs. Stopped on drop: SIGTERM,
/// then SIGKILL to its group if it does not exit in time.
pub struct Daemon {
    what: String,
    command: String,
    child: Child,
    /// Set once reaped.
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `argv` in namespace `ns` (through `nsenter --net`, which execs: the pid is the
    /// daemon's own). `what` names it in messages.
    pub fn start<S: AsRef<str>>(what: &str, ns: Option<&str>, argv: &[S]) -> Daemon {
        let full = in_namespace(ns, argv);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let (stdout, stderr) = (scratch_file("daemon-out"), scratch_file("daemon-err"));
        let child = spawn(&full, None, &stdout, &stderr);
        Daemon {
            what: what.into(),
            command: shell_line(&full),
            child,
            status: None,
            stdout,
            stderr,
        }
    }

    /// Waits until `ready` holds, polling; panics, with what the daemon printed, if it exits
    /// first or `limit` passes.
    #[track_caller]
    pub fn wait_ready(&mut self, limit: Duration, ready: impl Fn(&Daemon) -> bool) {
        if !self.ready_within(limit, ready) {
            panic!("{} not ready after {limit:?}:\n{}", self.what, self.report());
        }
    }

    /// Waits until `ready` holds, polling: false if `limit` passes first; panics, with what
    /// the daemon printed, if it exits.
    #[track_caller]
    pub fn ready_within(&mut self, limit: Duration, ready: impl Fn(&Daemon) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if ready(self) {
                return true;
            }
            if let Some(s) = self.exited() {
                panic!("{} exited ({s}):\n{}", self.what, self.report());
            }
            if start.elapsed() > limit {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// What it printed so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The command line, its state and its output, for a failure message.
    pub fn report(&self) -> String {
        format!(
            "$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }

    /// Sends `signal` to the daemon itself (not its group).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: plain syscall on the pid of a child of ours that has not been reaped.
            unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        }
    }

    /// SIGTERM, then SIGKILL to its group after `limit`; returns how it exited (`None`: killed).
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(limit);
        if status.is_none() {
            kill_group(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        status
    }

    /// Waits up to `limit` for it to exit; how it did (`None`: still running).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.exited();
            if status.is_some() || Instant::now() >= deadline {
                return status;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop(STOP_LIMIT);
        }
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Detaches and purges outpost under `pin_dir`, deletes the namespaces (their veth ends go with
/// them). Never panics: it runs in `drop`.
pub(crate) fn teardown(outpost: &Path, pin_dir: &Path, namespaces: &[&str]) {
    if pin_dir.exists() {
        let out = run(
            None,
            &[
                outpost.to_str().unwrap_or("outpost"),
                "--pin-dir",
                pin_dir.to_str().unwrap_or_default(),
                "detach",
                "--all",
                "--purge",
            ],
            COMMAND_LIMIT,
        );
        if !out.success() {
            eprintln!("teardown: detaching outpost failed:\n{out}");
        }
        if pin_dir.exists() {
            let _ = fs::remove_dir_all(pin_dir);
        }
    }
    for ns in namespaces {
        if Path::new(NETNS_DIR).join(ns).exists() {
            let out = run(None, &["ip", "netns", "del", ns], COMMAND_LIMIT);
            if !out.success() {
                eprintln!("teardown: deleting namespace {ns} failed:\n{out}");
            }
        }
    }
}

/// The pid in a name `PREFIX<pid>-<n>`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(prefix)?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Namespaces, pin directories and temp directories named `PREFIX<pid>-<n>` by this crate's
/// topologies (this one and [`crate::edge`]).
const STALE_NS_PREFIXES: &[&str] = &[
    CLIENT_NS_PREFIX,
    EDGE_NS_PREFIX,
    crate::edge::CLIENT_NS_PREFIX,
    crate::edge::EDGE_NS_PREFIX,
    crate::edge::ORIGIN_NS_PREFIX,
    crate::fleet::HUB_NS_PREFIX,
    crate::fleet::CLIENT_NS_PREFIX,
    crate::fleet::EDGE_NS_PREFIX,
];
const STALE_PIN_PREFIXES: &[&str] = &[PIN_DIR_PREFIX, crate::edge::PIN_DIR_PREFIX];
const STALE_DIR_PREFIXES: &[&str] =
    &[crate::edge::TEMP_DIR_PREFIX, crate::fleet::TEMP_DIR_PREFIX, crate::apps::TEMP_DIR_PREFIX];

/// Removes namespaces, pin directories, temp directories and output files of runs whose process
/// is gone (killed mid-test).
pub(crate) fn remove_stale(outpost: &Path) {
    let stale = |name: &str, prefixes: &[&str]| {
        prefixes.iter().find_map(|p| owner_pid(name, p)).is_some_and(|pid| !pid_alive(pid))
    };
    for entry in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !stale(&name, STALE_NS_PREFIXES) {
            continue;
        }
        // A server of the dead run keeps the namespace alive: stop it.
        let pids = run(None, &["ip", "netns", "pids", &name], COMMAND_LIMIT);
        for pid in pids.stdout.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        teardown(outpost, Path::new("/nonexistent"), &[&name]);
    }
    // A dead demo's hosts file for its client namespace.
    for entry in fs::read_dir(crate::apps::ETC_NETNS).into_iter().flatten().flatten() {
        if stale(&entry.file_name().to_string_lossy(), STALE_NS_PREFIXES) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    for entry in fs::read_dir(BPFFS).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name, STALE_PIN_PREFIXES) {
            teardown(outpost, &entry.path(), &[]);
        }
    }
    for entry in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap_or_default();
        if stale(stem, &[SCRATCH_PREFIX]) {
            let _ = fs::remove_file(entry.path());
        } else if stale(&name, STALE_DIR_PREFIXES) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A real TLS client, by the hello it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    OpensslTls10,
    OpensslTls11,
    OpensslTls12,
    OpensslTls13,
    CurlTls10,
    CurlDefault,
    PythonTls10,
}

/// How a client run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutcome {
    /// The handshake completed, at this version (OpenSSL's name: "TLSv1", …, "TLSv1.3").
    Completed(String),
    /// It got no answer before its timeout.
    TimedOut,
    /// The connection was reset or the handshake refused.
    Refused,
    /// Anything else (the server unreachable, an unexpected exit status).
    Failed,
}

impl fmt::Display for ClientOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientOutcome::Completed(v) => write!(f, "completed ({v})"),
            ClientOutcome::TimedOut => f.write_str("timed out"),
            ClientOutcome::Refused => f.write_str("refused"),
            ClientOutcome::Failed => f.write_str("failed"),
        }
    }
}

/// Legacy hellos only complete against OpenSSL 3 at security level 0.
const LEGACY_CIPHERS: &str = "DEFAULT:@SECLEVEL=0";

/// The Python client: exit 0 with the body on stdout, 2 on a timeout, 3 on a reset or refusal.
const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
try:
    with socket.create_connection((host, port), timeout=wait) as raw:
        with ctx.wrap_socket(raw, server_hostname="edge.test") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: edge.test\r\n\r\n")
            body = b""
            while chunk := tls.recv(4096):
                body += chunk
except TimeoutError as e:
    print(f"timed out: {e!r}", file=sys.stderr)
    sys.exit(2)
except OSError as e:
    print(f"refused: {e!r}", file=sys.stderr)
    sys.exit(3)
print(body.decode(errors="replace"))
"#;

impl Client {
    pub const ALL: [Client; 7] = [
        Client::OpensslTls10,
        Client::OpensslTls11,
        Client::OpensslTls12,
        Client::OpensslTls13,
        Client::CurlTls10,
        Client::CurlDefault,
        Client::PythonTls10,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Client::OpensslTls10 => "openssl s_client -tls1",
            Client::OpensslTls11 => "openssl s_client -tls1_1",
            Client::OpensslTls12 => "openssl s_client -tls1_2",
            Client::OpensslTls13 => "openssl s_client -tls1_3",
            Client::CurlTls10 => "curl --tlsv1.0 --tls-max 1.0",
            Client::CurlDefault => "curl",
            Client::PythonTls10 => "python ssl TLSv1",
        }
    }

    /// The version its hello offers, as `outpost stats` names it (curl offers 1.3 by default;
    /// `openssl -tls1_2` offers 1.2 only).
    pub fn offered(self) -> &'static str {
        match self {
            Client::OpensslTls10 | Client::CurlTls10 | Client::PythonTls10 => "TLS1.0",
            Client::OpensslTls11 => "TLS1.1",
            Client::OpensslTls12 => "TLS1.2",
            Client::OpensslTls13 | Client::CurlDefault => "TLS1.3",
        }
    }

    /// The version a completed handshake negotiates with the test server.
    pub fn negotiates(self) -> &'static str {
        match self.offered() {
            "TLS1.0" => "TLSv1",
            "TLS1.1" => "TLSv1.1",
            "TLS1.2" => "TLSv1.2",
            _ => "TLSv1.3",
        }
    }

    /// Below outpost's default floor (TLS 1.2).
    pub fn is_legacy(self) -> bool {
        matches!(self.offered(), "TLS1.0" | "TLS1.1")
    }

    fn is_openssl(self) -> bool {
        matches!(
            self,
            Client::OpensslTls10
                | Client::OpensslTls11
                | Client::OpensslTls12
                | Client::OpensslTls13
        )
    }

    /// The command, wrapped in `timeout` so that a silent drop cannot hang it.
    fn argv(self, addr: &str, port: u16, wait: Duration, extra: &[&str]) -> Vec<String> {
        assert!(extra.is_empty() || self.is_openssl(), "extra arguments are for openssl only");
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        // Curl and Python time out by themselves (exit 28 / 2); `timeout` is the backstop.
        let mut argv: Vec<String> = ["timeout", "-k", "1"].map(String::from).into();
        let host = if addr.contains(':') { format!("[{addr}]") } else { addr.to_owned() };
        let url = format!("https://{host}:{port}/");
        let own_timeout = |argv: &mut Vec<String>| argv.push(secs(wait + Duration::from_secs(2)));
        match self {
            Client::OpensslTls10
            | Client::OpensslTls11
            | Client::OpensslTls12
            | Client::OpensslTls13 => {
                argv.push(secs(wait));
                let flag = match self {
                    Client::OpensslTls10 => "-tls1",
                    Client::OpensslTls11 => "-tls1_1",
                    Client::OpensslTls12 => "-tls1_2",
                    _ => "-tls1_3",
                };
                let connect = format!("{host}:{port}");
                argv.extend(
                    ["openssl", "s_client", "-brief", "-connect", &connect, flag].map(String::from),
                );
                if self.is_legacy() {
                    argv.extend(["-cipher".into(), LEGACY_CIPHERS.into()]);
                }
                argv.extend(extra.iter().map(|s| s.to_string()));
            }
            Client::CurlTls10 | Client::CurlDefault => {
                own_timeout(&mut argv);
                argv.extend(["curl", "-sSk"].map(String::from));
                if self == Client::CurlTls10 {
                    argv.extend(
                        ["--tlsv1.0", "--tls-max", "1.0", "--ciphers", LEGACY_CIPHERS]
                            .map(String::from),
                    );
                }
                argv.extend(["--connect-timeout".into(), secs(wait), "-m".into()]);
                argv.push(secs(wait + Duration::from_secs(1)));
                argv.push(url);
            }
            Client::PythonTls10 => {
                own_timeout(&mut argv);
                argv.extend([PYTHON, "-c", PYTHON_CLIENT, addr].map(String::from));
                argv.extend([port.to_string(), secs(wait)]);
            }
        }
        argv
    }

    fn judge(self, out: &Output) -> ClientOutcome {
        let Some(status) = out.status else { return ClientOutcome::TimedOut };
        let code = status.code();
        // 124: `timeout` ran out; 137: it had to KILL.
        if matches!(code, Some(124) | Some(137)) {
            return ClientOutcome::TimedOut;
        }
        let completed =
            |text: &str, markers: &[&str]| match markers.iter().find_map(|m| text.split_once(m)) {
                Some((_, rest)) => ClientOutcome::Completed(
                    rest.split_whitespace().next().unwrap_or_default().to_owned(),
                ),
                None => ClientOutcome::Failed,
            };
        // The TLS server's body names the version; behind the proxy, the origin echoes the
        // version header the proxy added.
        let body_marker: &[&str] = &["hello from edge.test over ", "X-Outpost-TLS-Version: "];
        match self {
            _ if self.is_openssl() => match code {
                Some(0) => completed(&out.stderr, &["Protocol version: "]),
                Some(1) if out.stderr.contains("connect:errno") => ClientOutcome::Failed,
                Some(1) => ClientOutcome::Refused,
                _ => ClientOutcome::Failed,
            },
            Client::CurlTls10 | Client::CurlDefault => match code {
                Some(0) => completed(&out.stdout, body_marker),
                Some(28) => ClientOutcome::TimedOut,
                Some(35) | Some(56) => ClientOutcome::Refused,
                _ => ClientOutcome::Failed,
            },
            _ => match code {
                Some(0) => completed(&out.stdout, body_marker),
                Some(2) => ClientOutcome::TimedOut,
                Some(3) => ClientOutcome::Refused,
                _ => ClientOutcome::Failed,
            },
        }
    }
}

/// One client run.
pub struct ClientResult {
    pub client: Client,
    pub family: Family,
    pub output: Output,
    pub outcome: ClientOutcome,
}

impl ClientResult {
    pub fn elapsed(&self) -> Duration {
        self.output.elapsed
    }

    /// `client  offered  family  outcome  elapsed`, for reports.
    pub fn line(&self) -> String {
        format!(
            "{:<30} offers {:<7} {}  {:<20} {:>5} ms",
            self.client.name(),
            self.client.offered(),
            self.family.name(),
            self.outcome.to_string(),
            self.elapsed().as_millis()
        )
    }
}

impl fmt::Display for ClientResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.line(), self.output)
    }
}

/// A running tcpdump; stopped (and its files removed) on drop if not by [`Capture::stop`].
pub struct Capture {
    child: Option<Child>,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    port: u16,
}

impl Capture {
    /// Stops tcpdump and returns the connections it saw, in the order they started.
    pub fn stop(mut self) -> Vec<Flow> {
        // What just crossed the wire is still on its way through tcpdump.
        thread::sleep(Duration::from_millis(100));
        self.halt();
        let text = fs::read_to_string(&self.stdout).unwrap_or_default();
        let segments: Vec<Segment> = text.lines().filter_map(Segment::parse).collect();
        let server = format!(".{}", self.port);
        let mut flows: Vec<Flow> = Vec::new();
        for seg in segments {
            let client = if seg.src.ends_with(&server) { &seg.dst } else { &seg.src };
            match flows.iter_mut().find(|f| &f.client == client) {
                Some(f) => f.segments.push(seg),
                None => flows.push(Flow { client: client.clone(), segments: vec![seg] }),
            }
        }
        flows
    }

    fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: tcpdump flushes what it captured and exits.
            kill_group(child.id(), libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(3);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    kill_group(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

/// One TCP segment as tcpdump printed it (`-nn -tt`).
#[derive(Clone, Debug)]
pub struct Segment {
    /// Seconds since the epoch.
    pub time: f64,
    /// `addr.port`, as tcpdump writes it.
    pub src: String,
    pub dst: String,
    /// tcpdump's flag letters: `S`, `.` (ACK), `P`, `F`, `R`.
    pub flags: String,
    pub len: u32,
    pub line: String,
}

impl Segment {
    fn parse(line: &str) -> Option<Segment> {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 7 || !matches!(words[1], "IP" | "IP6") || words[3] != ">" {
            return None;
        }
        let flags_at = words.iter().position(|w| *w == "Flags")?;
        let len_at = words.iter().rposition(|w| *w == "length")?;
        Some(Segment {
            time: words[0].parse().ok()?,
            src: words[2].to_owned(),
            dst: words[4].trim_end_matches(':').to_owned(),
            flags: words.get(flags_at + 1)?.trim_matches(|c| "[],".contains(c)).to_owned(),
            len: words
                .get(len_at + 1)?
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()?,
            line: line.to_owned(),
        })
    }
}

/// The segments of one connection, both ways.
pub struct Flow {
    /// The client's end, `addr.port`.
    pub client: String,
    pub segments: Vec<Segment>,
}

impl Flow {
    fn first(&self, from_client: bool, pred: impl Fn(&Segment) -> bool) -> Option<f64> {
        self.segments
            .iter()
            .find(|s| (s.src == self.client) == from_client && pred(s))
            .map(|s| s.time)
    }

    /// The client's SYN.
    pub fn syn(&self) -> Option<f64> {
        self.first(true, |s| s.flags.contains('S'))
    }

    /// The first segment with payload from the client: its hello.
    pub fn hello(&self) -> Option<f64> {
        self.first(true, |s| s.len > 0)
    }

    /// The first reset the client received.
    pub fn reset_to_client(&self) -> Option<f64> {
        self.first(false, |s| s.flags.contains('R'))
    }

    /// From the client's SYN to the reset it received: how long the refusal took on the wire,
    /// whatever the time the client process took to start.
    pub fn time_to_reset(&self) -> Option<Duration> {
        let (syn, rst) = (self.syn()?, self.reset_to_client()?);
        Some(Duration::from_secs_f64((rst - syn).max(0.0)))
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            writeln!(f, "  {}", s.line)?;
        }
        Ok(())
    }
}

/// `after - before` for every counter of `outpost stats --json`.
pub fn stats_delta(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => Value::Object(
            a.iter()
                .map(|(k, v)| (k.clone(), stats_delta(b.get(k).unwrap_or(&Value::Null), v)))
                .collect(),
        ),
        (b, Value::Number(a)) => {
            let a = a.as_u64().expect("counters are u64");
            Value::from(a.saturating_sub(b.as_u64().unwrap_or(0)))
        }
        (_, a) => a.clone(),
    }
}

/// Hellos offering `version` that got `verdict` ("pass", "drop", "reject").
#[track_caller]
pub fn hellos(stats: &Value, version: &str, verdict: &str) -> u64 {
    stats["versions"][version][verdict]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter versions.{version}.{verdict} in {stats}"))
}

/// A parse outcome counter (`outpost stats` names, e.g. "decided_later_segment").
#[track_caller]
pub fn parse_count(stats: &Value, outcome: &str) -> u64 {
    stats["parse"][outcome]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter parse.{outcome} in {stats}"))
}
