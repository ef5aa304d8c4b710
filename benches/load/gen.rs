//! The load generator: `outpost-load gen`.
//!
//! Work is a sequence of tickets taken by `connections` workers. Closed loop: a worker takes the
//! next ticket as soon as its previous operation finishes (max throughput). Open loop: ticket `i`
//! is due at `start + i / rate`; a worker sleeps until it is due, and latency is measured from
//! that *intended* time, not from when the request actually left. A stall therefore shows up in
//! every request that should have been sent during it (no coordinated omission), as long as the
//! run has enough connections that a free one exists when the load is sustainable.
//!
//! Every run is bounded by a count of operations and by a duration; each operation by a timeout.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Barrier, Semaphore};
use tokio_rustls::TlsConnector;

use crate::{
    client::{self, Conn, HelloOutcome, OpError, Target},
    ws,
};

/// The TLS 1.0 ClientHello OpenSSL 3 sends (`openssl s_client -tls1`), record header included.
pub const LEGACY_HELLO: &[u8] =
    include_bytes!("../../ebpf/outpost-common/testdata/clienthello/openssl-tls1_0.bin");

/// Latency histogram bounds: 1 µs to 100 s, 3 significant digits.
const HIST_MAX_US: u64 = 100_000_000;
/// Percentiles kept in the result (and plotted).
pub const PERCENTILES: &[f64] =
    &[0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0];
/// Connections a `hold` run opens at once.
const HOLD_OPEN_CONCURRENCY: usize = 128;
const HIST_SHARDS: usize = 16;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// HTTP/1.1 GET, whole response read.
    Get,
    /// A legacy (TLS 1.0) ClientHello sent raw over TCP; read until close, reset or timeout.
    Hello,
    /// Open `connections` keep-alive connections, one GET on each, then keep them idle.
    Hold,
    /// WebSocket echo: each connection upgrades `path` once (before the clock starts), then
    /// each operation is one binary message of `--message-bytes` and its echo.
    Ws,
}

#[derive(clap::Args, Clone, Debug)]
pub struct GenArgs {
    /// Name in progress lines and in the result.
    #[arg(long, default_value = "run")]
    pub label: String,
    #[arg(long)]
    pub target: SocketAddr,
    /// TLS 1.3 (full handshakes, no resumption) instead of plain HTTP.
    #[arg(long)]
    pub tls: bool,
    #[arg(long, default_value = "edge.test")]
    pub sni: String,
    #[arg(long, default_value = "edge.test")]
    pub host: String,
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, value_enum, default_value_t = Op::Get)]
    pub op: Op,
    /// A new connection (and TLS handshake) for every request, instead of keep-alive.
    #[arg(long)]
    pub new_conn: bool,
    /// Open loop at this many operations per second; closed loop when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Concurrent workers, each with at most one operation (and one connection) at a time.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Stop taking new operations after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many operations.
    #[arg(long, default_value_t = 10_000_000)]
    pub count: u64,
    /// Seconds one operation may take (for `hello`: how long to wait for the edge's answer).
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// `hold`: seconds to keep the connections idle after they are all open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// `ws`: payload bytes of each message.
    #[arg(long, default_value_t = 32)]
    pub message_bytes: usize,
    /// tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Write the result here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl GenArgs {
    /// Defaults for `target`, to be adjusted field by field.
    pub fn new(label: &str, target: SocketAddr) -> GenArgs {
        GenArgs {
            label: label.into(),
            target,
            tls: false,
            sni: "edge.test".into(),
            host: "edge.test".into(),
            path: "/".into(),
            op: Op::Get,
            new_conn: false,
            rate: None,
            connections: 16,
            duration: 10.0,
            count: 10_000_000,
            timeout: 5.0,
            hold: 10.0,
            message_bytes: 32,
            threads: 2,
            json: None,
        }
    }

    /// The command line that reproduces this run (after `outpost-load gen`).
    pub fn to_argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--label".into(),
            self.label.clone(),
            "--target".into(),
            self.target.to_string(),
            "--sni".into(),
            self.sni.clone(),
            "--host".into(),
            self.host.clone(),
            "--path".into(),
            self.path.clone(),
            "--op".into(),
            match self.op {
                Op::Get => "get",
                Op::Hello => "hello",
                Op::Hold => "hold",
                Op::Ws => "ws",
            }
            .into(),
            "--connections".into(),
            self.connections.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--timeout".into(),
            self.timeout.to_string(),
            "--hold".into(),
            self.hold.to_string(),
            "--message-bytes".into(),
            self.message_bytes.to_string(),
            "--threads".into(),
            self.threads.to_string(),
        ];
        if self.tls {
            a.push("--tls".into());
        }
        if self.new_conn {
            a.push("--new-conn".into());
        }
        if let Some(r) = self.rate {
            a.extend(["--rate".into(), r.to_string()]);
        }
        if let Some(j) = &self.json {
            a.extend(["--json".into(), j.display().to_string()]);
        }
        a
    }
}

/// Latency summary, microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// `[percentile, µs]` at [`PERCENTILES`].
    pub percentiles: Vec<(f64, u64)>,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, if p >= 100.0 { h.max() } else { h.value_at_quantile(p / 100.0) }))
                .collect(),
        }
    }
}

/// What one generator run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub label: String,
    pub command: String,
    /// "open" or "closed".
    pub mode: String,
    pub op: String,
    pub new_conn: bool,
    pub tls: bool,
    pub connections: usize,
    pub rate: Option<f64>,
    /// From the start to the last operation's end.
    pub elapsed_s: f64,
    /// Open loop: operations due within the duration (and the count).
    pub intended: u64,
    /// Operations that completed (for `hello`: hellos that got a TCP connection).
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// `ok / elapsed_s`.
    pub throughput: f64,
    /// Closed loop: from the operation's start; open loop: from its intended start.
    pub latency: Latency,
    /// `hello`: outcome name → count.
    pub outcomes: BTreeMap<String, u64>,
    /// `hold`: connections open (after their GET) when the hold began.
    pub held: u64,
    /// CPU seconds this generator used (user + system).
    pub client_cpu_s: f64,
    /// What the first TLS connection negotiated (version, cipher suite, key exchange group).
    pub tls_negotiated: Option<String>,
}

struct Shared {
    args: GenArgs,
    target: Target,
    request: Vec<u8>,
    tickets: AtomicU64,
    start: OnceLock<Instant>,
    end: OnceLock<Instant>,
    ok: AtomicU64,
    errors: AtomicU64,
    /// Largest latency since the last progress line, µs.
    interval_max_us: AtomicU64,
    error_kinds: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
    outcomes: [AtomicU64; HelloOutcome::ALL.len()],
    last_done: Mutex<Option<Instant>>,
    stop_progress: AtomicBool,
    negotiated: OnceLock<String>,
    /// Latencies, sharded so that thousands of workers neither contend on one lock nor each
    /// carry a histogram of their own (~150 KiB apiece).
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn error(&self, e: &OpError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.error_kinds.lock().expect("lock").entry(e.kind()).or_default() += 1;
        self.first_error.lock().expect("lock").get_or_insert_with(|| e.to_string());
    }

    fn done(&self, shard: usize, since: Instant) {
        let now = Instant::now();
        let us = (now.saturating_duration_since(since).as_micros() as u64).clamp(1, HIST_MAX_US);
        let _ = self.hists[shard % HIST_SHARDS].lock().expect("lock").record(us);
        self.interval_max_us.fetch_max(us, Ordering::Relaxed);
        let mut last = self.last_done.lock().expect("lock");
        if last.is_none_or(|l| l < now) {
            *last = Some(now);
        }
    }
}

/// Runs the generator: builds its own runtime, prints a progress line a second on stderr, the
/// result as JSON on stdout (and to `--json`). `hold` prints `ready` once the result is written,
/// then keeps the connections idle.
pub fn main(args: GenArgs) -> Result<()> {
    if args.connections == 0 || args.duration <= 0.0 || args.count == 0 {
        bail!("--connections, --duration and --count must be positive");
    }
    if args.op == Op::Ws && (args.new_conn || args.message_bytes > ws::MAX_PAYLOAD) {
        bail!("--op ws keeps its connections and sends at most {} bytes", ws::MAX_PAYLOAD);
    }
    if let Some(r) = args.rate {
        if r <= 0.0 || !r.is_finite() {
            bail!("--rate must be positive");
        }
    }
    crate::procs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (result, held) = run(args.clone()).await?;
        let text = serde_json::to_string(&result)?;
        if let Some(path) = &args.json {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{text}");
        if let Some(held) = held {
            println!("ready held={} failed={}", result.held, result.errors);
            let _ = std::io::stdout().flush();
            tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
            held.release().await;
        }
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

async fn run(args: GenArgs) -> Result<(RunResult, Option<Held>)> {
    let tls = if args.tls {
        let name = ServerName::try_from(args.sni.clone()).context("--sni")?;
        Some((TlsConnector::from(client::tls_config()), name))
    } else {
        None
    };
    let target = Target { addr: args.target, tls };
    let request = client::request_bytes(&args.host, &args.path, args.new_conn);
    let shared = Arc::new(Shared {
        args: args.clone(),
        target,
        request,
        tickets: AtomicU64::new(0),
        start: OnceLock::new(),
        end: OnceLock::new(),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        interval_max_us: AtomicU64::new(0),
        error_kinds: Mutex::new(BTreeMap::new()),
        first_error: Mutex::new(None),
        outcomes: Default::default(),
        last_done: Mutex::new(None),
        stop_progress: AtomicBool::new(false),
        negotiated: OnceLock::new(),
        hists: (0..HIST_SHARDS).map(|_| Mutex::new(new_hist())).collect(),
    });
    let progress = tokio::spawn(progress(shared.clone()));
    let held = match args.op {
        Op::Hold => Some(hold(shared.clone()).await),
        _ => {
            workers(shared.clone()).await?;
            None
        }
    };
    let mut hist = new_hist();
    for h in &shared.hists {
        hist.add(&*h.lock().expect("lock")).context("merging histograms")?;
    }
    shared.stop_progress.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let start = *shared.start.get().expect("set before the workers start");
    let last = shared.last_done.lock().expect("lock").unwrap_or(start);
    let elapsed = last.saturating_duration_since(start).as_secs_f64().max(1e-3);
    let ok = shared.ok.load(Ordering::Relaxed);
    let duration_ops = args.rate.map_or(0, |r| (r * args.duration).ceil() as u64);
    let outcomes = HelloOutcome::ALL
        .iter()
        .zip(&shared.outcomes)
        .map(|(o, n)| (o.name().to_owned(), n.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let result = RunResult {
        label: args.label.clone(),
        command: format!("outpost-load gen {}", crate::procs::shell_line(&args.to_argv())),
        mode: if args.rate.is_some() { "open" } else { "closed" }.into(),
        op: format!("{:?}", args.op).to_lowercase(),
        new_conn: args.new_conn,
        tls: args.tls,
        connections: args.connections,
        rate: args.rate,
        elapsed_s: elapsed,
        intended: duration_ops.min(args.count),
        ok,
        errors: shared.errors.load(Ordering::Relaxed),
        error_kinds: shared.error_kinds.lock().expect("lock").clone(),
        first_error: shared.first_error.lock().expect("lock").clone(),
        throughput: ok as f64 / elapsed,
        latency: Latency::from_hist(&hist),
        outcomes,
        held: held.as_ref().map_or(0, |h| h.count),
        client_cpu_s: own_cpu_seconds(),
        tls_negotiated: shared.negotiated.get().cloned(),
    };
    Ok((result, held))
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid bounds")
}

/// Starts the workers, lets them pre-connect (keep-alive), starts the clock, waits for them.
async fn workers(shared: Arc<Shared>) -> Result<()> {
    let n = shared.args.connections;
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> =
        (0..n).map(|i| tokio::spawn(worker(shared.clone(), barrier.clone(), i))).collect();
    let start = Instant::now();
    let _ = shared.start.set(start);
    let _ = shared.end.set(start + Duration::from_secs_f64(shared.args.duration));
    barrier.wait().await;
    for h in handles {
        h.await?;
    }
    Ok(())
}

async fn worker(shared: Arc<Shared>, barrier: Arc<Barrier>, id: usize) {
    let args = &shared.args;
    let op_timeout = Duration::from_secs_f64(args.timeout);
    let mut conn: Option<Conn> = None;
    let mut ws: Option<ws::Client> = None;
    let mut buf = Vec::with_capacity(4096);
    if (args.op == Op::Get && !args.new_conn) || args.op == Op::Ws {
        // Warm connections: the first request does not pay for a handshake (nor the first
        // message for the upgrade).
        match tokio::time::timeout(op_timeout, connect(&shared, &mut buf)).await {
            Ok(Ok((c, w))) => (conn, ws) = (Some(c), w),
            Ok(Err(e)) => shared.error(&e),
            Err(_) => shared.error(&OpError::Timeout),
        }
    }
    barrier.wait().await;
    let start = *shared.start.get().expect("set before the barrier opens");
    let end = *shared.end.get().expect("set before the barrier opens");
    loop {
        let i = shared.tickets.fetch_add(1, Ordering::Relaxed);
        if i >= args.count {
            break;
        }
        let intended = match args.rate {
            Some(r) => start + Duration::from_secs_f64(i as f64 / r),
            None => Instant::now(),
        };
        if intended >= end {
            break;
        }
        // tokio's timer wakes on whole milliseconds, even for a deadline already passed: a
        // sleep here in closed loop (or behind schedule in open loop) would add up to 1 ms to
        // every request and cap a connection at ~1,000 requests/s.
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        match args.op {
            Op::Hello => {
                let outcome = client::legacy_hello(args.target, LEGACY_HELLO, op_timeout).await;
                shared.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
                if outcome == HelloOutcome::ConnectFailed {
                    shared.error(&OpError::Connect(std::io::ErrorKind::TimedOut.into()));
                } else {
                    shared.ok.fetch_add(1, Ordering::Relaxed);
                    shared.done(id, intended);
                }
            }
            Op::Get | Op::Hold | Op::Ws => {
                let res = match args.op {
                    Op::Ws => {
                        let echo = ws_echo(&shared, &mut conn, &mut ws, &mut buf);
                        tokio::time::timeout(op_timeout, echo).await
                    }
                    _ => tokio::time::timeout(op_timeout, get(&shared, &mut conn, &mut buf)).await,
                };
                match res {
                    Ok(Ok(())) => {
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                        shared.done(id, intended);
                    }
                    Ok(Err(e)) => {
                        shared.error(&e);
                        if let Some(c) = conn.take() {
                            c.abort();
                        }
                    }
                    Err(_) => {
                        shared.error(&OpError::Timeout);
                        if let Some(c) = conn.take() {
                            c.abort();
                        }
                    }
                }
            }
        }
    }
    if let Some(c) = conn.take() {
        c.abort();
    }
}

/// One GET: on the kept connection (opened anew if there is none), or on a new one.
async fn get(shared: &Shared, conn: &mut Option<Conn>, buf: &mut Vec<u8>) -> Result<(), OpError> {
    let mut c = match conn.take() {
        Some(c) => c,
        None => Conn::open(&shared.target).await?,
    };
    if shared.negotiated.get().is_none() {
        if let Some(n) = c.negotiated() {
            let _ = shared.negotiated.set(n);
        }
    }
    let keep = client::exchange(&mut c, &shared.request, buf).await?;
    if keep && !shared.args.new_conn {
        *conn = Some(c);
    } else {
        c.abort();
    }
    Ok(())
}

/// A new connection (TLS done), upgraded to a WebSocket for `--op ws`; `buf` is cleared and
/// keeps what came after the 101.
async fn connect(
    shared: &Shared,
    buf: &mut Vec<u8>,
) -> Result<(Conn, Option<ws::Client>), OpError> {
    let mut c = Conn::open(&shared.target).await?;
    if shared.negotiated.get().is_none() {
        if let Some(n) = c.negotiated() {
            let _ = shared.negotiated.set(n);
        }
    }
    buf.clear();
    if shared.args.op != Op::Ws {
        return Ok((c, None));
    }
    match ws::Client::open(&mut c, &shared.args.host, &shared.args.path, buf).await {
        Ok(w) => Ok((c, Some(w))),
        Err(e) => {
            c.abort();
            Err(e)
        }
    }
}

/// One WebSocket message and its echo: on the kept connection (opened and upgraded anew if
/// there is none).
async fn ws_echo(
    shared: &Shared,
    conn: &mut Option<Conn>,
    ws: &mut Option<ws::Client>,
    buf: &mut Vec<u8>,
) -> Result<(), OpError> {
    let (mut c, mut w) = match (conn.take(), ws.take()) {
        (Some(c), Some(w)) => (c, w),
        (c, _) => {
            if let Some(c) = c {
                c.abort();
            }
            match connect(shared, buf).await? {
                (c, Some(w)) => (c, w),
                (c, None) => {
                    c.abort();
                    return Err(OpError::Http("not upgraded".into()));
                }
            }
        }
    };
    if let Err(e) = w.echo(&mut c, shared.args.message_bytes, buf).await {
        c.abort();
        return Err(e);
    }
    (*conn, *ws) = (Some(c), Some(w));
    Ok(())
}

/// Connections kept open by `hold`, released (closed) on [`Held::release`].
struct Held {
    count: u64,
    release: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Option<()>>>,
}

impl Held {
    async fn release(self) {
        let _ = self.release.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

/// `hold`: opens the connections (a few at a time) and does one GET on each, within the
/// duration; they then stay idle until released.
async fn hold(shared: Arc<Shared>) -> Held {
    let args = &shared.args;
    let start = Instant::now();
    let _ = shared.start.set(start);
    let deadline = start + Duration::from_secs_f64(args.duration);
    let _ = shared.end.set(deadline);
    let n = args.connections.min(args.count as usize);
    let open_limit = Arc::new(Semaphore::new(HOLD_OPEN_CONCURRENCY));
    let (release_tx, release_rx) = watch::channel(false);
    let op_timeout = Duration::from_secs_f64(args.timeout);
    let mut tasks = Vec::with_capacity(n);
    for id in 0..n {
        let (shared, open_limit, mut release) =
            (shared.clone(), open_limit.clone(), release_rx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = open_limit.acquire_owned().await.expect("never closed");
            if Instant::now() >= deadline {
                return None;
            }
            let t0 = Instant::now();
            let mut conn = None;
            let mut buf = Vec::new();
            let res = tokio::time::timeout(op_timeout, get(&shared, &mut conn, &mut buf)).await;
            drop(permit);
            match res {
                Ok(Ok(())) if conn.is_some() => {
                    shared.ok.fetch_add(1, Ordering::Relaxed);
                    shared.done(id, t0);
                }
                Ok(Ok(())) => shared.error(&OpError::Http("server closed the connection".into())),
                Ok(Err(e)) => shared.error(&e),
                Err(_) => shared.error(&OpError::Timeout),
            }
            let conn = conn?;
            // Idle until released (or the process exits).
            let _ = release.wait_for(|r| *r).await;
            conn.abort();
            Some(())
        }));
    }
    // Wait until every connection is open or failed, within the duration.
    while shared.ok.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Held { count: shared.ok.load(Ordering::Relaxed), release: release_tx, tasks }
}

async fn progress(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_ok = 0;
    while !shared.stop_progress.load(Ordering::Relaxed) {
        tick.tick().await;
        if shared.stop_progress.load(Ordering::Relaxed) {
            break;
        }
        let Some(start) = shared.start.get() else { continue };
        let ok = shared.ok.load(Ordering::Relaxed);
        let max_ms = shared.interval_max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        let mut line = format!(
            "  [{}] {:>5.1}s  ok {ok} (+{}/s)  errors {}  max {max_ms:.1} ms",
            shared.args.label,
            start.elapsed().as_secs_f64(),
            ok - last_ok,
            shared.errors.load(Ordering::Relaxed),
        );
        if shared.args.op == Op::Hello {
            for (o, n) in HelloOutcome::ALL.iter().zip(&shared.outcomes) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    line.push_str(&format!("  {} {n}", o.name()));
                }
            }
        }
        eprintln!("{line}");
        last_ok = ok;
    }
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
