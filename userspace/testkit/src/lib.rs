//! Test support for outpost's end-to-end tests, shared by the core's and the handlers' test
//! suites: the real `outpost run` binary, a small echo origin, and real clients (curl, openssl
//! s_client), each started by the test and killed by a Drop guard.

pub mod rng;
pub mod tls;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// The outpost binary: `$OUTPOST_BIN`, else the workspace's debug build.
pub fn outpost_bin() -> PathBuf {
    let path = match std::env::var_os("OUTPOST_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/outpost"),
    };
    assert!(
        path.is_file(),
        "the outpost binary is missing at {} (run `cargo build -p outpost`, or set OUTPOST_BIN)",
        path.display()
    );
    path
}

/// Panics unless `name` is an executable on PATH: tests never skip for a missing tool.
pub fn tool(name: &str) -> &str {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is not installed (apt-get install {name}); this test needs it");
    name
}

/// A port that was free a moment ago, and never handed out before in this process. Tests of
/// one binary run in parallel, and outpost listens with SO_REUSEPORT: two edges given the same
/// port would both bind it and share each other's connections, so no port is given twice.
///
/// Taken below the kernel's ephemeral range: a port from `bind(:0)` is one that any outgoing
/// connection may be given in the moment between the test freeing it and its server binding
/// it (a test opening connections by the hundred beside another starting an edge lost its port
/// so: `Address already in use`). Below the range, nothing takes a port unless asked.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (low, high) = below_ephemeral();
    let span = usize::from(high - low);
    // Each process starts elsewhere in the range: test binaries of other runs may hold ports.
    let start = (std::process::id() as usize).wrapping_mul(7919);
    for _ in 0..span {
        let port = low + ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!("no free port in {low}..{high}");
}

/// Ports below the ephemeral range (`net.ipv4.ip_local_port_range`), and above the
/// privileged ones: 16384..32768 with the kernel's default range.
fn below_ephemeral() -> (u16, u16) {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(first >= 4096, "the ephemeral port range starts at {first}: too low for the tests");
    (first / 2, first)
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "outpost-proxy-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `outpost run`, killed on drop.
pub struct Outpost {
    child: Option<Child>,
    pub dir: TempDir,
    pub https: u16,
    pub admin: u16,
    pub io: String,
}

impl Outpost {
    /// Starts outpost with `extra` appended to a config that sets the listen, admin and data
    /// directory, and waits until `/healthz` answers.
    pub fn start(io: &str, extra: &str) -> Outpost {
        Self::start_with(io, extra, &[], &["--no-xdp"])
    }

    /// As [`start`](Self::start), with arguments before `run` (global ones) and after it.
    pub fn start_with(io: &str, extra: &str, global: &[&str], run: &[&str]) -> Outpost {
        Self::start_at(free_port(), io, extra, global, run)
    }

    /// As [`start_with`](Self::start_with), listening on `https` (chosen by the caller, who
    /// may need it in the config: a public URL), unless `extra` sets its own `listen`.
    pub fn start_at(https: u16, io: &str, extra: &str, global: &[&str], run: &[&str]) -> Outpost {
        Self::start_at_env(https, io, extra, global, run, &[])
    }

    /// As [`start_at`](Self::start_at), with environment variables for the process (they
    /// override the default `RUST_LOG`: a benchmark wants `info`, not per-request debug).
    pub fn start_at_env(
        https: u16,
        io: &str,
        extra: &str,
        global: &[&str],
        run: &[&str],
        env: &[(&str, &str)],
    ) -> Outpost {
        let dir = TempDir::new(io);
        let admin = free_port();
        let config = dir.0.join("outpost.toml");
        std::fs::write(&config, Self::config_text(https, admin, &dir.0, extra)).unwrap();
        let log = std::fs::File::create(dir.0.join("outpost.log")).unwrap();
        let child = Command::new(outpost_bin())
            .args(global)
            .args(["run", "--io", io])
            .args(run)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,outpost_proxy=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting outpost");
        let mut o = Outpost { child: Some(child), dir, https, admin, io: io.into() };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((200, _)) = http_get(admin, "/healthz") {
                break;
            }
            if let Some(status) = o.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("outpost exited with {status} at start; log:\n{}", o.log());
            }
            assert!(Instant::now() < deadline, "outpost did not become ready; log:\n{}", o.log());
            thread::sleep(Duration::from_millis(50));
        }
        o
    }

    /// Starts the process again after it exited (or was killed), with the same config file,
    /// data directory and ports, `run` after `run --io IO`; the log is appended to. Waits
    /// until `/healthz` answers.
    pub fn restart(&mut self, run: &[&str]) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.0.join("outpost.log"))
            .unwrap();
        let child = Command::new(outpost_bin())
            .args(["run", "--io", &self.io])
            .args(run)
            .arg("--config")
            .arg(self.dir.0.join("outpost.toml"))
            .env("RUST_LOG", "info,outpost_proxy=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting outpost again");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((200, _)) = http_get(self.admin, "/healthz") {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("outpost exited with {status} on restart; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "outpost did not become ready; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `extra` may start with its own `listen = [...]` line, which then replaces the default.
    fn config_text(https: u16, admin: u16, dir: &Path, extra: &str) -> String {
        let listen = if extra.starts_with("listen") {
            String::new()
        } else {
            format!("listen = [\"127.0.0.1:{https}\"]\n")
        };
        format!(
            "{listen}admin = \"127.0.0.1:{admin}\"\ndata_dir = \"{}\"\n\
             workers = 2\nshutdown_grace_ms = 5000\n{extra}\n",
            dir.join("data").display()
        )
    }

    /// Rewrites the config file (the listen ports stay).
    pub fn rewrite_config(&self, extra: &str) {
        std::fs::write(
            self.dir.0.join("outpost.toml"),
            Self::config_text(self.https, self.admin, &self.dir.0, extra),
        )
        .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("outpost.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The admin token `outpost run` created in its data directory.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.0.join("data").join("admin-token")
    }

    /// The admin token itself.
    pub fn admin_token(&self) -> String {
        let f = self.admin_token_file();
        let t = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        t.trim().to_owned()
    }

    /// `GET path` on the admin listener with the admin token, as an operator: `(status, body)`.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        self.admin_request("GET", path)
    }

    /// `POST path` (empty body) on the admin listener with the admin token: `(status, body)`.
    pub fn admin_post(&self, path: &str) -> Option<(u16, String)> {
        self.admin_request("POST", path)
    }

    fn admin_request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let auth = format!("Bearer {}", self.admin_token());
        let a = http_request(self.admin, method, path, &[("Authorization", &auth)], "")?;
        Some((a.status, a.body))
    }

    pub fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics") {
            Some((200, body)) => body,
            other => panic!("/metrics answered {other:?}"),
        }
    }

    /// The value of a series, e.g. `outpost_requests_total{class="2xx"}`: the sum of every
    /// line of that name whose labels include the ones given (so `{class="2xx"}` counts both
    /// protocols of `outpost_requests_total{class="2xx",proto="..."}`).
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        metric_in(&text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// Asserts that the counter `series` is `want`, waiting for it: see [`expect_counter`].
    #[track_caller]
    pub fn expect_metric(&self, series: &str, want: u64) {
        expect_counter(|| self.metrics(), series, want)
    }

    /// The value of `series` once `ok` holds for it: see [`wait_series`].
    #[track_caller]
    pub fn wait_metric(&self, series: &str, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
        wait_series(|| self.metrics(), series, what, ok)
    }
}

/// Asserts that the counter `series` on the `/metrics` that `scrape` fetches is `want`. A
/// request is counted once its response is written, so a client can hold its answer a moment
/// before the count moves: a count below `want` (or a series not yet shown) is read again for
/// up to 2 s; one above it fails at once (counters only grow).
#[track_caller]
pub fn expect_counter(scrape: impl Fn() -> String, series: &str, want: u64) {
    let over = |got: Option<u64>| got.map_or(want == 0, |v| v > want);
    poll_series(scrape, series, Duration::from_secs(2), &want.to_string(), |v| v == want, over);
}

/// The value of `series` on the `/metrics` that `scrape` fetches once `ok` holds for it, read
/// again for up to 3 s (a gauge that comes down after a close, a count that lags its
/// response); panics with `/metrics`, saying it is not `what`, if it never does.
#[track_caller]
pub fn wait_series(
    scrape: impl Fn() -> String,
    series: &str,
    what: &str,
    ok: impl Fn(u64) -> bool,
) -> u64 {
    poll_series(scrape, series, Duration::from_secs(3), what, ok, |_| false)
}

/// Reads `series` until `ok` holds for it (its value is returned), `hopeless` says it never
/// will, or `limit` passes (both panic with `/metrics`).
#[track_caller]
fn poll_series(
    scrape: impl Fn() -> String,
    series: &str,
    limit: Duration,
    what: &str,
    ok: impl Fn(u64) -> bool,
    hopeless: impl Fn(Option<u64>) -> bool,
) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let text = scrape();
        let got = metric_in(&text, series);
        match got {
            Some(v) if ok(v) => return v,
            _ if hopeless(got) || Instant::now() >= deadline => {
                panic!("{series} is {got:?}, not {what}, in /metrics:\n{text}")
            }
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("--- outpost log ({}) ---\n{}", self.io, self.log());
        }
    }
}

/// The sum of the lines of `series`' name in Prometheus `text` whose labels include the ones
/// `series` gives (`name` or `name{a="x",b="y"}`); `None` when no line matches.
pub fn metric_in(text: &str, series: &str) -> Option<u64> {
    let (name, want) = split_series(series);
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((s, value)) = line.rsplit_once(' ') else { continue };
        let (n, labels) = split_series(s);
        if n == name && want.iter().all(|w| labels.contains(w)) {
            let v: u64 = value.trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            *sum.get_or_insert(0) += v;
        }
    }
    sum
}

fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => {
            let labels = rest.trim_end_matches('}');
            (name, labels.split(',').filter(|l| !l.is_empty()).collect())
        }
        None => (series, Vec::new()),
    }
}

/// The config of an edge run inside the test's own process (`outpost_proxy::run`): listen
/// and admin on free loopback ports, `data_dir` under `dir`, one worker, then `extra`.
pub struct InProcessConfig {
    pub path: PathBuf,
    pub https: u16,
    pub admin: u16,
}

impl InProcessConfig {
    pub fn write(dir: &TempDir, extra: &str) -> InProcessConfig {
        let (https, admin) = (free_port(), free_port());
        let path = dir.0.join("outpost.toml");
        std::fs::write(
            &path,
            format!(
                "listen = [\"127.0.0.1:{https}\"]\nadmin = \"127.0.0.1:{admin}\"\n\
                 data_dir = \"{}\"\nworkers = 1\n{extra}",
                dir.0.join("data").display()
            ),
        )
        .unwrap();
        InProcessConfig { path, https, admin }
    }
}

/// Waits until an edge run in-process (`outpost_proxy::run` on a thread of the test) answers
/// on its admin listener; panics after 10 s.
pub fn wait_for_admin(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(admin, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "outpost did not start");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Plain HTTP GET without credentials (admin listener: `/healthz`, `/metrics`; the other paths
/// need [`Outpost::admin_get`]): `(status, body)`.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let a = http_request(port, "GET", path, &[], "")?;
    Some((a.status, a.body))
}

/// A plain HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line and the fields, without the blank line.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The first value of field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `METHOD path` over plain HTTP/1.1 to 127.0.0.1:`port` with `headers` and `body`, read to
/// the close. `Content-Length` is added for a body, and for any method but GET/HEAD.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        req += &format!("{n}: {v}\r\n");
    }
    if !body.is_empty() || (method != "GET" && method != "HEAD") {
        req += &format!("Content-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some(Answer { status, head: head.to_owned(), body: body.to_owned() })
}

/// Runs a client command, killing it after `limit`. Its output is read as it comes: a client
/// that writes more than a pipe holds does not stall on it.
pub fn run_client(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    wait_or_kill(&mut child, limit);
    let status = child.wait().unwrap();
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Waits up to `limit` for `child` to exit, killing it then if it has not.
fn wait_or_kill(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Node with oidc-provider prints that it listens about half a second after it starts. In CI, on
/// a loaded machine, it has twice printed nothing more (20 s and 90 s; the second time after
/// the import of oidc-provider, which warns about the node version). A start that takes longer
/// than this is reported as stalled, with where the process waits ([`where_waiting`]), and made
/// again; [`START_TRIES`] stalls in a row fail the test.
pub const START_STALL: Duration = Duration::from_secs(30);
/// Starts of a test server that stall, in a row, before the test fails (see [`START_STALL`]).
pub const START_TRIES: usize = 3;

/// The report of a start of `what` (process `pid`) that stalled on its `attempt`th try,
/// with where it waits.
pub fn stalled(what: &str, attempt: usize, pid: u32) -> String {
    format!(
        "{what} stalled at start (try {attempt} of {START_TRIES}, nothing for {START_STALL:?}): \
         {}",
        where_waiting(pid)
    )
}

/// Where process `pid` and its threads wait, from /proc (each thread's state and wait
/// channel): what a report of a stalled server says about it.
fn where_waiting(pid: u32) -> String {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let mut out = format!("process {pid}:");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    for task in tasks {
        let tid = task.file_name().to_string_lossy().into_owned();
        let stat = read(format!("/proc/{pid}/task/{tid}/stat"));
        // `pid (comm) state ...`: the comm may hold spaces, the state follows its `)`.
        let (comm, state) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
            .map_or(("?", "?"), |(comm, rest)| (comm, rest.get(..1).unwrap_or("?")));
        let wchan = read(format!("/proc/{pid}/task/{tid}/wchan"));
        out.push_str(&format!(" [{tid} {comm} {state} {wchan}]"));
    }
    out
}

/// curl arguments for a TLS 1.0 hello only (legacy ciphers allowed, so curl offers it at all).
pub const CURL_TLS1_0: [&str; 5] =
    ["--tlsv1.0", "--tls-max", "1.0", "--ciphers", "DEFAULT@SECLEVEL=0"];

/// curl with a 10 s bound, `-sk`, HTTP/1.1 (the edge offers h2 too, which curl would pick;
/// `--http2` among `args` asks for it: the last choice wins), and the given arguments.
pub fn curl(args: &[&str]) -> Output {
    run_client(
        Command::new(tool("curl")).args(["-sk", "--http1.1", "--max-time", "10"]).args(args),
        Duration::from_secs(12),
    )
}

/// curl's `-w` for [`status_and_edge_time`]: after the body, a line with the status and the
/// times of the end of the TLS handshake and of the last byte.
pub const STATUS_AND_TIME: &str = "\n%{http_code} %{time_appconnect} %{time_total}\n";

/// What curl wrote with `-w` [`STATUS_AND_TIME`]: the body, the status (0: none), and the
/// edge's time, from the end of the TLS handshake to the last byte (a million seconds when
/// curl wrote no times, so any bound fails). Starting curl and the handshake are left out: on
/// a loaded machine they alone vary by more than the bounds tests set on the edge.
pub fn status_and_edge_time(out: &str) -> (&str, u16, Duration) {
    let out = out.strip_suffix('\n').unwrap_or(out);
    let (body, last) = out.rsplit_once('\n').unwrap_or(("", out));
    let mut words = last.split_whitespace();
    let status = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let mut time = || words.next().and_then(|w| w.parse::<f64>().ok());
    let secs = match (time(), time()) {
        (Some(handshaken), Some(total)) => total - handshaken,
        _ => f64::MAX,
    };
    (body, status, Duration::from_secs_f64(secs.clamp(0.0, 1e6)))
}

/// `openssl s_client` sending `input` once connected: (exit code, stdout + stderr).
pub fn s_client(port: u16, args: &[&str], input: &[u8], limit: Duration) -> (Option<i32>, String) {
    run_s_client(port, "-quiet", args, input, limit)
}

/// As [`s_client`], with the session's summary in the output (`New, TLSv1.3, Cipher is ...`,
/// or `Reused, ...` for a resumed one): it stays until the server closes, as `-quiet` does.
pub fn s_client_summary(
    port: u16,
    args: &[&str],
    input: &[u8],
    limit: Duration,
) -> (Option<i32>, String) {
    run_s_client(port, "-ign_eof", args, input, limit)
}

fn run_s_client(
    port: u16,
    mode: &str,
    args: &[&str],
    input: &[u8],
    limit: Duration,
) -> (Option<i32>, String) {
    let mut child = Command::new(tool("openssl"))
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), mode])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    wait_or_kill(&mut child, limit);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// An interactive `openssl s_client` session: write, then read what arrives.
pub struct TlsSession {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Vec<u8>>,
    pub received: Vec<u8>,
}

impl TlsSession {
    pub fn connect(port: u16) -> TlsSession {
        let mut child = Command::new(tool("openssl"))
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        TlsSession { child, stdin, rx, received: Vec::new() }
    }

    /// Sends `data`; false when the session is gone.
    pub fn send(&mut self, data: &[u8]) -> bool {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(data).is_ok() && s.flush().is_ok()
    }

    /// Reads until `received` contains `needle`, or `limit`; true when it does.
    pub fn read_until(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if String::from_utf8_lossy(&self.received).contains(needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.received.extend_from_slice(&b),
                Err(_) => return false,
            }
        }
    }

    /// Waits up to `limit` for the server to close (s_client exits).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                while let Ok(b) = self.rx.try_recv() {
                    self.received.extend_from_slice(&b);
                }
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

impl Drop for TlsSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small HTTP/1.1 origin on 127.0.0.1, one thread per connection, stopped on drop. Counts
/// requests other than outpost's health checks.
///
/// - `/health`: an empty response with the status in [`Origin::health`].
/// - `/delay/<ms>`: answers after a pause.
/// - `/chunks/<n>/<pause ms>`: a chunked body of n chunks `chunk <i>\n`, pausing between.
/// - `/large/<h>/<n>`: a head with an `X-Pad` field of h bytes and a body of n bytes (a
///   pattern [`large_body`] makes), sent together.
/// - anything else: echoes the request: its name, method, target, headers, body framing,
///   length and a checksum of the (dechunked) body.
pub struct Origin {
    pub port: u16,
    pub name: String,
    /// Status of `/health`.
    pub health: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    /// Connections open now (until the origin reads their end).
    pub open: Arc<AtomicUsize>,
    accept: Option<thread::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(AtomicU16::new(200));
        let open = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (stop, requests, conns, name, health, open) = (
                stop.clone(),
                requests.clone(),
                conns.clone(),
                name.to_owned(),
                health.clone(),
                open.clone(),
            );
            thread::spawn(move || {
                for s in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    conns.lock().unwrap().push(s.try_clone().unwrap());
                    let (requests, name, health, open) =
                        (requests.clone(), name.clone(), health.clone(), open.clone());
                    open.fetch_add(1, Ordering::Relaxed);
                    thread::spawn(move || {
                        serve_origin(s, &name, &requests, &health);
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            })
        };
        Origin {
            port,
            name: name.into(),
            health,
            stop,
            requests,
            open,
            accept: Some(accept),
            conns,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve_origin(s: TcpStream, name: &str, requests: &AtomicUsize, health: &AtomicU16) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..10_000 {
        // Head.
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        if head.is_empty() {
            return;
        }
        let health_check =
            head.iter().any(|l| l.eq_ignore_ascii_case("user-agent: outpost-health-check"));
        if !health_check {
            requests.fetch_add(1, Ordering::Relaxed);
        }
        let mut parts = head[0].split(' ');
        let (method, target) = (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
        let header = |n: &str| {
            head[1..].iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(n).then(|| v.trim().to_owned())
            })
        };
        // Body.
        let mut body = Vec::new();
        let framing = if header("transfer-encoding").is_some_and(|v| v == "chunked") {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            "chunked"
        } else if let Some(n) = header("content-length") {
            body.resize(n.parse().unwrap(), 0);
            if r.read_exact(&mut body).is_err() {
                return;
            }
            "length"
        } else {
            "none"
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let conn = if close { "Connection: close\r\n" } else { "" };
        let ok = if target == "/health" {
            let status = health.load(Ordering::Relaxed);
            send(&mut w, format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{conn}\r\n"))
        } else if let Some(ms) = target.strip_prefix("/delay/") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            let b = format!("delayed {ms} by {name}\n");
            send(&mut w, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{conn}\r\n{b}", b.len()))
        } else if let Some(spec) = target.strip_prefix("/large/") {
            let (h, n) = spec.split_once('/').unwrap();
            let (h, n): (usize, usize) = (h.parse().unwrap(), n.parse().unwrap());
            let head = format!(
                "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: {n}\r\n{conn}\r\n",
                "p".repeat(h)
            );
            let mut out = head.into_bytes();
            out.extend_from_slice(&large_body(n));
            w.write_all(&out).is_ok()
        } else if let Some(spec) = target.strip_prefix("/chunks/") {
            let (n, pause) = spec.split_once('/').unwrap();
            let (n, pause): (usize, u64) = (n.parse().unwrap(), pause.parse().unwrap());
            let mut ok = send(
                &mut w,
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: {name}\r\n{conn}\r\n"),
            );
            for i in 0..n {
                let c = format!("chunk {i}\n");
                ok &= send(&mut w, format!("{:x}\r\n{c}\r\n", c.len()));
                if i + 1 < n {
                    thread::sleep(Duration::from_millis(pause));
                }
            }
            ok && send(&mut w, "0\r\n\r\n".into())
        } else {
            let mut b = format!("origin {name}\nmethod {method}\ntarget {target}\n");
            for h in &head[1..] {
                b.push_str(&format!("header {h}\n"));
            }
            b.push_str(&format!(
                "framing {framing}\nbody-length {}\nbody-sum {}\n",
                body.len(),
                checksum(&body)
            ));
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin: {name}\r\n\
                 Content-Length: {}\r\n{conn}\r\n",
                b.len()
            );
            send(&mut w, format!("{head}{b}"))
        };
        if !ok || close {
            return;
        }
    }
}

/// Writes `text` in one call, so a response leaves as one segment rather than one per
/// formatted piece.
fn send(w: &mut TcpStream, text: String) -> bool {
    w.write_all(text.as_bytes()).is_ok()
}

/// The body of the test origin's `/large/<h>/<n>`: n bytes of a pattern that does not repeat
/// within a read, so a misplaced or repeated piece shows.
pub fn large_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + ((i * 7 + i / 26) % 26) as u8).collect()
}

/// A checksum the test and the origin agree on (FNV-1a).
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// A route block for the config.
pub fn route(host: &str, path: &str, servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[routes]]\nhost = \"{host}\"\npath = \"{path}\"\n\
         [routes.origin]\nservers = [{}]\n{extra}\n",
        list.join(", ")
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The tests' Python (Debian's python3 with the pinned PyPI peers: tlslite-ng, websockets, h2),
/// created by `cargo xtask setup` at `<workspace>/target/py`. Panics when it is missing: tests
/// never skip for a missing tool.
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup` (it creates the tests' Python environment)",
        python.display()
    );
    python
}

/// Runs each `$name(io)` as `$name::uring`, `$name::epoll` and `$name::compio`: one test per
/// I/O backend.
#[macro_export]
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name("uring")
            }
            #[test]
            fn epoll() {
                super::$name("epoll")
            }
            #[test]
            fn compio() {
                super::$name("compio")
            }
        }
    )*};
}

/// Undoes HTML escaping in a page's text or attribute (askama writes `&#47;`, `&#x2f;` and
/// friends).
pub fn html_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find(';') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let ent = &rest[i + 1..i + end];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => {
                u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32)
            }
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) => out.push(c),
            None => out.push_str(&rest[i..=i + end]),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod curl_tests {
    use std::time::Duration;

    use super::status_and_edge_time;

    #[test]
    fn body_status_and_the_time_after_the_handshake() {
        let (body, status, took) = status_and_edge_time("{\"error\": 1}\n502 0.250 0.375\n");
        assert_eq!((body, status, took), ("{\"error\": 1}", 502, Duration::from_millis(125)));
        assert_eq!(status_and_edge_time("\n200 0.1 0.2\n").0, "");
        let (_, status, took) = status_and_edge_time("curl: (7) refused");
        assert_eq!((status, took), (0, Duration::from_secs(1_000_000)));
    }
}

#[cfg(test)]
mod metric_tests {
    use std::{cell::Cell, panic, time::Instant};

    use super::expect_counter;

    #[test]
    fn a_count_below_is_read_again_and_one_above_fails_at_once() {
        let n = Cell::new(0);
        let rising = || {
            n.set(n.get() + 1);
            format!("outpost_requests_total{{class=\"2xx\"}} {}\n", n.get())
        };
        expect_counter(rising, "outpost_requests_total{class=\"2xx\"}", 3);
        assert_eq!(n.get(), 3);
        let started = Instant::now();
        let over = panic::catch_unwind(|| expect_counter(|| "c 5\n".into(), "c", 3));
        assert!(over.is_err() && started.elapsed().as_millis() < 500);
        let missing = panic::catch_unwind(|| expect_counter(|| "d 1\n".into(), "c", 0));
        assert!(missing.is_err());
    }
}
