//! The comparison scenarios: `outpost-load bench proxy|handshake|flood|memory|websocket|h2|all`.
//!
//! Each scenario starts the systems it compares (same origin, same certificate, same number of
//! workers, TLS 1.3 from the client), measures them one after the other in one run, and reports
//! what it measured; nothing is asserted. A system that cannot run is reported as
//! "not available: <why>" and the others are still measured.
//!
//! The generator is a child process of this one (`outpost-load gen`), so its CPU is its own and
//! it can be placed in a network namespace; its progress lines go straight to stderr.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

/// /proc's CPU time unit (USER_HZ): one tick, in seconds.
const TICK_S: f64 = 0.01;

mod h2;
mod rounds;
mod websocket;

use rounds::{target_verdict, Rounds};

use crate::{
    cpus::{Pin, Split},
    gen::{GenArgs, Op, RunResult},
    netns::{self, EdgeXdp, Wire},
    procs::{self, Child, MachineCpu, Stderr},
    profile,
    report::{self, ms, ratio, Panel, ScenarioReport, Series, Table},
    systems::{self, Cert, EdgeConf, Io, Place, Running},
    wrk::{self, WrkRun},
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Proxy,
    Handshake,
    Flood,
    Memory,
    Websocket,
    H2,
    All,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Outpost,
    Nginx,
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = Which::All)]
    pub scenario: Which,
    /// CI size: every scenario in seconds, to keep the code from rotting (numbers mean little).
    #[arg(long)]
    pub tiny: bool,
    /// Reports go to `<results>/<UTC timestamp>/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// The outpost binary (`outpost run` for the proxy, `outpost attach` for XDP).
    #[arg(long, env = "OUTPOST_BIN")]
    pub outpost: Option<PathBuf>,
    /// The edge behind the XDP floor in `flood`: default outpost when `outpost run` works,
    /// else nginx.
    #[arg(long, value_enum)]
    pub flood_edge: Option<EdgeKind>,
    /// Seconds per measured run (overrides the size's default).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Interleaved rounds per system in proxy, websocket and h2 (overrides the size's default).
    #[arg(long)]
    pub rounds: Option<usize>,
}

/// How big each scenario is.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    warmup: f64,
    run: f64,
    proxy_conns: usize,
    handshake_conns: usize,
    /// Open-loop rate of modern clients in `flood` (each a new TLS 1.3 connection).
    modern_rate: f64,
    modern_conns: usize,
    flood_rate: f64,
    /// How long a flood connection waits for the edge's answer (a drop never comes).
    hello_wait: f64,
    idle_conns: usize,
    timeouts: EdgeConf,
    /// websocket: interleaved rounds per system.
    rounds: usize,
    /// proxy, handshake and h2, whose ratios are targets: interleaved rounds per system and
    /// client (the median is the row; three rounds' medians of one build spread over 1.02-1.31x
    /// in h2).
    proxy_rounds: usize,
    ws_conns: usize,
    ws_run: f64,
    h2_conns: usize,
    /// Concurrent streams per h2 connection.
    h2_streams: usize,
    h2_run: f64,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            warmup: 2.0,
            run: 10.0,
            proxy_conns: 64,
            handshake_conns: 32,
            modern_rate: 200.0,
            modern_conns: 64,
            flood_rate: 1000.0,
            hello_wait: 1.0,
            idle_conns: 10_000,
            timeouts: EdgeConf {
                handshake: Duration::from_secs(10),
                idle: Duration::from_secs(600),
                origin_pool: 64,
            },
            rounds: 3,
            proxy_rounds: 5,
            ws_conns: 64,
            ws_run: 5.0,
            h2_conns: 64,
            h2_streams: 10,
            h2_run: 5.0,
        }
    }

    fn tiny() -> Sizes {
        Sizes {
            warmup: 0.3,
            run: 1.5,
            proxy_conns: 8,
            handshake_conns: 4,
            modern_rate: 20.0,
            modern_conns: 8,
            flood_rate: 100.0,
            hello_wait: 1.0,
            idle_conns: 200,
            timeouts: EdgeConf {
                handshake: Duration::from_secs(2),
                idle: Duration::from_secs(600),
                origin_pool: 64,
            },
            rounds: 1,
            proxy_rounds: 1,
            ws_conns: 8,
            ws_run: 1.0,
            h2_conns: 8,
            h2_streams: 10,
            h2_run: 1.0,
        }
    }
}

/// What every scenario shares.
struct Ctx {
    exe: PathBuf,
    sizes: Sizes,
    tiny: bool,
    outpost: Option<PathBuf>,
    /// `Err(why)` when `outpost run` cannot serve in this build.
    outpost_run: Result<(), String>,
    /// `<results>/<stamp>`: the report, the flame graph.
    dir: PathBuf,
    /// Configs, certificate, logs of the systems.
    work: PathBuf,
    /// Every generator run's JSON.
    runs: PathBuf,
    cert: Cert,
    seq: AtomicU32,
    flood_edge: Option<EdgeKind>,
}

pub fn main(args: BenchArgs) -> Result<()> {
    procs::stop_on_signals();
    let nofile = procs::raise_nofile();
    let stamp = utc_stamp();
    let dir = args.results.join(&stamp);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Absolute: nginx resolves its own paths against its prefix (`-p`), so a relative
    // `--results` would name a directory under itself.
    let dir = fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let (work, runs) = (dir.join("work"), dir.join("runs"));
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&runs)?;
    let mut sizes = if args.tiny { Sizes::tiny() } else { Sizes::full() };
    if let Some(s) = args.seconds {
        (sizes.run, sizes.ws_run, sizes.h2_run) = (s, s, s);
    }
    if let Some(r) = args.rounds {
        (sizes.rounds, sizes.proxy_rounds) = (r.max(1), r.max(1));
    }
    let outpost = args.outpost.clone().filter(|p| p.is_file());
    let outpost_run = systems::outpost_available(outpost.as_deref()).map_err(|e| format!("{e:#}"));
    if let Err(why) = &outpost_run {
        eprintln!("outpost-load: outpost: not available: {why}");
    }
    let ctx = Ctx {
        exe: std::env::current_exe()?,
        sizes,
        tiny: args.tiny,
        outpost,
        outpost_run,
        cert: Cert::generate(&work)?,
        work,
        runs,
        dir: dir.clone(),
        seq: AtomicU32::new(0),
        flood_edge: args.flood_edge,
    };
    let which: Vec<Which> = match args.scenario {
        Which::All => vec![
            Which::Proxy,
            Which::Handshake,
            Which::Memory,
            Which::Websocket,
            Which::H2,
            Which::Flood,
        ],
        w => vec![w],
    };
    let load_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let mut reports = Vec::new();
    for w in which {
        if procs::interrupted() {
            break;
        }
        let name = format!("{w:?}").to_lowercase();
        eprintln!("\n== {name} ({})", if ctx.tiny { "tiny" } else { "full size" });
        let r = match w {
            Which::Proxy => proxy(&ctx),
            Which::Handshake => handshake(&ctx),
            Which::Flood => flood(&ctx),
            Which::Memory => memory(&ctx),
            Which::Websocket => websocket::websocket(&ctx),
            Which::H2 => h2::h2(&ctx),
            Which::All => unreachable!("expanded above"),
        };
        let r = r.unwrap_or_else(|e| {
            eprintln!("outpost-load: {name}: {e:#}");
            let mut t = Table::new(format!("{name}: not available"), &["scenario", "why"]);
            t.unavailable(&name, &format!("{e:#}"));
            ScenarioReport {
                name: name.clone(),
                tables: vec![t],
                json: json!({"error": format!("{e:#}")}),
                panels: vec![],
            }
        });
        for t in &r.tables {
            println!("\n{}", t.render());
        }
        reports.push(r);
    }
    let machine = json!({
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_before": load_before.trim(),
        "loadavg_after": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "nofile_limit": nofile,
        "nginx": procs::run(&["/usr/sbin/nginx", "-v"], Duration::from_secs(5)).is_ok().then(nginx_version),
    });
    let caption = format!(
        "outpost-load {stamp} ({}); {} CPUs; proxy: {}; other scenarios: all systems, origin and \
         client on the same CPUs",
        if ctx.tiny { "tiny: CI size, numbers mean little" } else { "full size" },
        thread::available_parallelism().map_or(0, |n| n.get()),
        Split::plan().describe(),
    );
    let full = json!({
        "timestamp": stamp,
        "tiny": ctx.tiny,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "outpost": match &ctx.outpost_run { Ok(()) => json!("available"), Err(e) => json!(format!("not available: {e}")) },
        "machine": machine,
        "scenarios": reports.iter().map(|r| (r.name.clone(), r.json.clone())).collect::<serde_json::Map<_, _>>(),
    });
    fs::write(dir.join("report.json"), serde_json::to_string_pretty(&full)?)?;
    let text: String =
        reports.iter().flat_map(|r| r.tables.iter()).map(|t| t.render() + "\n").collect();
    fs::write(dir.join("report.txt"), format!("{caption}\n\n{text}"))?;
    let panels: Vec<Panel> = reports.iter().flat_map(|r| r.panels.clone()).collect();
    fs::write(dir.join("latency.svg"), report::svg(&panels, &caption))?;
    println!("\nreport: {}/{{report.txt,report.json,latency.svg}}", dir.display());
    let flame = |key: &str| {
        reports.iter().find_map(|r| r.json.pointer(&format!("/flame_graph/{key}")).cloned())
    };
    if let Some(svg) = flame("flame/svg") {
        println!("flame graph: {}", svg.as_str().unwrap_or_default());
    }
    procs::check_interrupted()?;
    // A flame graph that a full run should have made and could not is an error, reported after
    // the measurements were written.
    if let Some(why) = flame("error") {
        bail!("proxy: the flame graph failed: {}", why.as_str().unwrap_or_default());
    }
    // The tiny run is CI's smoke test of this code: a system or scenario that could not run
    // fails it, where a measurement run reports it and goes on.
    if ctx.tiny {
        if let Err(why) = &ctx.outpost_run {
            bail!("outpost was not available: {why}");
        }
        // A scenario that failed carries "error"; a system that could not start or answer
        // shows as "not available" in its rows.
        let failed: Vec<&str> = reports
            .iter()
            .filter(|r| {
                r.json.get("error").is_some() || r.json.to_string().contains("not available")
            })
            .map(|r| r.name.as_str())
            .collect();
        if !failed.is_empty() {
            bail!(
                "tiny run: scenarios with a failure or a system not available: {}",
                failed.join(", ")
            );
        }
    }
    Ok(())
}

fn nginx_version() -> String {
    std::process::Command::new("/usr/sbin/nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}

/// `YYYYMMDD-HHMMSS`, UTC.
fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------------------------------------
// Running the generator and measuring around it.

/// A generator started as a child.
struct GenChild {
    child: Child,
    json: PathBuf,
    limit: Duration,
    label: String,
}

impl Ctx {
    fn start_gen(&self, args: GenArgs, place: &Place) -> Result<GenChild> {
        self.start_gen_on(args, place, &Pin::none())
    }

    /// [`start_gen`](Self::start_gen) confined to `pin`'s CPUs.
    fn start_gen_on(&self, mut args: GenArgs, place: &Place, pin: &Pin) -> Result<GenChild> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let json = self.runs.join(format!("{n:03}-{}.json", sanitize(&args.label)));
        args.json = Some(json.clone());
        let _ = fs::remove_file(&json);
        let mut argv = vec![self.exe.display().to_string(), "gen".into()];
        argv.extend(args.to_argv());
        let argv = place.argv(&pin.wrap(&argv));
        let child = Child::spawn(&args.label, &argv, &self.work, Stderr::Inherit)?;
        // Its own bounds are duration + timeout; past a generous margin it is killed.
        let limit = Duration::from_secs_f64(args.duration + args.timeout + args.hold + 30.0);
        Ok(GenChild { child, json, limit, label: args.label })
    }

    fn gen(&self, args: GenArgs, place: &Place) -> Result<RunResult> {
        self.start_gen(args, place)?.finish()
    }

    fn gen_on(&self, args: GenArgs, place: &Place, pin: &Pin) -> Result<RunResult> {
        self.start_gen_on(args, place, pin)?.finish()
    }

    fn outpost_bin(&self) -> Result<&Path> {
        self.outpost.as_deref().context("no outpost binary (set OUTPOST_BIN)")
    }

    /// A short closed-loop run that must complete at least one request, else the system is
    /// reported unavailable with the first error.
    fn warm_up(&self, label: &str, mut args: GenArgs, place: &Place, pin: &Pin) -> Result<()> {
        args.label = format!("{label} warm-up");
        args.rate = None;
        args.duration = self.sizes.warmup;
        let r = self.gen_on(args, place, pin)?;
        if r.ok == 0 {
            bail!(
                "no request succeeded in the warm-up: {}",
                r.first_error.as_deref().unwrap_or("no error recorded")
            );
        }
        Ok(())
    }
}

impl GenChild {
    fn finish(mut self) -> Result<RunResult> {
        let status = self.child.wait_exit(self.limit);
        procs::check_interrupted()?;
        match status {
            Some(s) if s.success() => {}
            Some(s) => bail!("generator {} failed ({s})", self.label),
            None => bail!("generator {} did not finish within {:?}", self.label, self.limit),
        }
        let text = fs::read_to_string(&self.json)
            .with_context(|| format!("reading {}", self.json.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", self.json.display()))
    }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// A generator run with the CPU the edge, the origin and the whole machine spent during it.
struct Measured {
    run: RunResult,
    /// Wall time of the measurement window.
    wall_s: f64,
    edge_cpu_s: f64,
    origin_cpu_s: f64,
    machine: MachineCpu,
}

impl Measured {
    /// Machine CPU not spent by the edge, the origin or the generator: other work on the
    /// machine (compilers, other sessions) during the run.
    fn others_cpu_s(&self) -> f64 {
        (self.machine.busy() - self.edge_cpu_s - self.origin_cpu_s - self.run.client_cpu_s).max(0.0)
    }

    fn json(&self) -> Value {
        json!({
            "run": self.run,
            "wall_s": self.wall_s,
            "edge_cpu_s": self.edge_cpu_s,
            "origin_cpu_s": self.origin_cpu_s,
            "machine_busy_s": self.machine.busy(),
            "machine_softirq_s": self.machine.softirq,
            "others_cpu_s": self.others_cpu_s(),
        })
    }
}

fn measure(
    edge: Option<&Running>,
    origin: &Running,
    f: impl FnOnce() -> Result<RunResult>,
) -> Result<Measured> {
    let cpu = |r: Option<&Running>| r.map_or(0.0, Running::cpu_seconds);
    let (e0, o0, m0, t0) = (cpu(edge), origin.cpu_seconds(), MachineCpu::now(), Instant::now());
    let run = f()?;
    let (e1, o1, m1) = (cpu(edge), origin.cpu_seconds(), MachineCpu::now());
    Ok(Measured {
        run,
        wall_s: t0.elapsed().as_secs_f64(),
        edge_cpu_s: e1 - e0,
        origin_cpu_s: o1 - o0,
        machine: m1.since(m0),
    })
}

/// The same colour for a system in every panel.
fn system_color(name: &str) -> usize {
    ["origin", "nginx", "outpost uring", "outpost epoll", "outpost compio"]
        .iter()
        .position(|p| name.starts_with(p))
        .unwrap_or(5)
}

fn series(name: &str, r: &RunResult, color: usize, dashed: bool) -> Series {
    Series { name: name.to_owned(), points: r.latency.percentiles.clone(), color, dashed }
}

/// `negotiated: nginx TLSv1_3 ..., outpost uring ...` for the runs that used TLS.
fn negotiated_note<'a>(runs: impl Iterator<Item = (&'a str, &'a RunResult)>) -> String {
    let parts: Vec<String> =
        runs.filter_map(|(n, r)| r.tls_negotiated.as_ref().map(|t| format!("{n}: {t}"))).collect();
    format!("negotiated: {}", if parts.is_empty() { "-".into() } else { parts.join("; ") })
}

/// `127.0.0.1:<port>`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// req/s, p50, p99, p99.9 and max latency, errors: the first cells of a latency row.
fn latency_cells(r: &RunResult) -> [String; 6] {
    [
        format!("{:.0}", r.throughput),
        ms(r.latency.p50_us),
        ms(r.latency.p99_us),
        ms(r.latency.p999_us),
        ms(r.latency.max_us),
        errors_cell(r),
    ]
}

fn errors_cell(r: &RunResult) -> String {
    if r.errors == 0 {
        "0".into()
    } else {
        let top = r.error_kinds.iter().max_by_key(|(_, n)| **n).map_or("", |(k, _)| k.as_str());
        format!("{} ({top})", r.errors)
    }
}

// ---------------------------------------------------------------------------------------------
// The systems of the loopback scenarios.

/// A proxy (or the origin alone) on loopback, or why it is not there.
struct Sys {
    name: String,
    tls: bool,
    running: Result<Running, String>,
}

impl Sys {
    fn addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().ok().map(|r| loopback(r.port))
    }

    /// Where the generator goes and the edge whose CPU is counted (the origin itself, no edge,
    /// for the plain-HTTP row), or why the system is not there.
    fn target(&self, origin: SocketAddr) -> Result<(SocketAddr, Option<&Running>), &str> {
        match (&self.running, self.tls) {
            (_, false) => Ok((origin, None)),
            (Ok(r), true) => Ok((loopback(r.port), Some(r))),
            (Err(why), true) => Err(why),
        }
    }
}

/// Starts the proxies in `which` on loopback, each confined to `pin`'s CPUs.
fn start_proxies(ctx: &Ctx, origin: &Running, which: &[&str], pin: &Pin) -> Vec<Sys> {
    start_proxies_h(ctx, origin, which, pin, false)
}

/// [`start_proxies`], nginx offering h2 too with `http2` (outpost offers what its build has).
fn start_proxies_h(
    ctx: &Ctx,
    origin: &Running,
    which: &[&str],
    pin: &Pin,
    http2: bool,
) -> Vec<Sys> {
    let origin_addr = format!("127.0.0.1:{}", origin.port);
    // HTTP/2 carries every stream in flight to the origin at once: each edge keeps as many
    // origin connections as that, so neither opens and closes connections per request.
    let conf = match http2 {
        true => EdgeConf {
            origin_pool: ctx
                .sizes
                .timeouts
                .origin_pool
                .max(ctx.sizes.h2_conns * ctx.sizes.h2_streams),
            ..ctx.sizes.timeouts
        },
        false => ctx.sizes.timeouts,
    };
    let mut out = Vec::new();
    for &name in which {
        let running = (|| -> Result<Running> {
            let listen = format!("127.0.0.1:{}", procs::free_port("127.0.0.1")?);
            match name {
                "nginx" => systems::start_nginx(
                    &Place::Host,
                    pin,
                    &listen,
                    &origin_addr,
                    &ctx.cert,
                    conf,
                    &ctx.work,
                    http2,
                ),
                "outpost uring" | "outpost epoll" | "outpost compio" => {
                    if let Err(why) = &ctx.outpost_run {
                        bail!("{why}");
                    }
                    let io = match name {
                        "outpost uring" => Io::Uring,
                        "outpost compio" => Io::Compio,
                        _ => Io::Epoll,
                    };
                    let admin = format!("127.0.0.1:{}", procs::free_port("127.0.0.1")?);
                    systems::start_outpost(
                        ctx.outpost_bin()?,
                        io,
                        &Place::Host,
                        pin,
                        &listen,
                        &admin,
                        &origin_addr,
                        &ctx.cert,
                        conf,
                        &ctx.work,
                        None,
                    )
                }
                other => bail!("unknown system {other}"),
            }
        })()
        .map_err(|e| format!("{e:#}"));
        if let Err(why) = &running {
            eprintln!("outpost-load: {name}: not available: {why}");
        }
        out.push(Sys { name: name.to_owned(), tls: true, running });
    }
    out
}

/// Warms each system up; a system with no successful request becomes unavailable.
fn warm_all(ctx: &Ctx, systems: &mut [Sys], base: &GenArgs, pin: &Pin) {
    for s in systems.iter_mut() {
        let Some(addr) = s.addr() else { continue };
        let mut args = base.clone();
        args.target = addr;
        args.tls = s.tls;
        if let Err(e) = ctx.warm_up(&s.name, args, &Place::Host, pin) {
            eprintln!("outpost-load: {}: not available: {e:#}", s.name);
            s.running = Err(format!("{e:#}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// proxy

/// The proxies of the loopback scenarios: nginx and outpost on each I/O backend.
const OUTPOST_AND_NGINX: [&str; 4] = ["nginx", "outpost uring", "outpost epoll", "outpost compio"];
/// The proxy scenario's two clients.
const CLIENTS: [&str; 2] = ["outpost-load", "wrk"];
/// Other work's CPU (CPUs busy outside the bench, averaged over a run) past which the proxy
/// report calls a run disturbed.
const DISTURBED_CPUS: f64 = 0.25;
/// The system whose flame graph a full run saves.
const FLAME_SYSTEM: &str = "outpost uring";

fn proxy(ctx: &Ctx) -> Result<ScenarioReport> {
    let z = ctx.sizes;
    // The edge gets CPUs of its own; the client (either generator) and the origin the rest.
    let split = Split::plan();
    eprintln!("outpost-load: {}", split.describe());
    let mut origin =
        systems::start_origin(&ctx.exe, &Place::Host, &split.client, "127.0.0.1:0", &ctx.work)?;
    let origin_addr = loopback(origin.port);
    let mut systems = start_proxies(ctx, &origin, &OUTPOST_AND_NGINX, &split.edge);
    // The origin alone, plain HTTP, is the ceiling: no proxy, no TLS.
    systems.insert(
        0,
        Sys { name: "origin alone (plain HTTP)".into(), tls: false, running: Err(String::new()) },
    );
    let mut base = GenArgs::new("proxy", origin_addr);
    base.connections = z.proxy_conns;
    base.duration = z.run;
    base.timeout = 5.0;
    base.threads = split.client.threads_or(base.threads);
    warm_all(ctx, &mut systems[1..], &base, &split.client);
    // wrk's -d is whole seconds; in the CI run, one.
    let wrk_seconds = if ctx.tiny { 1 } else { z.run.round().max(1.0) as u64 };
    let wrk_ready = wrk::available().map_err(|e| format!("{e:#}"));

    let mut closed = Table::new(
        format!(
            "proxy: keep-alive HTTPS GET, TLS 1.3, closed loop, {} connections, per system: \
             outpost-load gen {} s, then wrk {wrk_seconds} s; median of {} interleaved rounds",
            z.proxy_conns, z.run, z.proxy_rounds
        ),
        &[
            "system",
            "client",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "req/s min-max (rounds)",
            "edge CPU s",
            "edge µs/req",
            "client CPU s",
            "others CPU s",
        ],
    );
    let mut closed_panel =
        Panel { title: "proxy: closed loop (max throughput); dashed: wrk".into(), series: vec![] };
    // Per client, per system: every round's run, or why there is none. The systems take turns
    // (round r starts r systems later), and each client runs right after the other against the
    // same system, so that other work on the machine falls on all of them alike.
    let n = systems.len();
    let mut runs: [Vec<Vec<Measured>>; 2] =
        [(0..n).map(|_| Vec::new()).collect(), (0..n).map(|_| Vec::new()).collect()];
    let mut failed: [Vec<Option<String>>; 2] = [vec![None; n], vec![None; n]];
    for round in 0..z.proxy_rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let s = &systems[i];
            let Ok((target, edge)) = s.target(origin_addr) else { continue };
            for (c, client) in CLIENTS.iter().enumerate() {
                if failed[c][i].is_some() {
                    continue;
                }
                let label = format!("proxy closed {} {client} round {}", s.name, round + 1);
                let measured = match (c, &wrk_ready) {
                    (0, _) => {
                        let mut args = base.clone();
                        args.label = label;
                        args.target = target;
                        args.tls = s.tls;
                        measure(edge, &origin, || ctx.gen_on(args, &Place::Host, &split.client))
                    }
                    (_, Err(why)) => Err(anyhow::anyhow!("{why}")),
                    (_, Ok(())) => {
                        let stem = format!(
                            "{:03}-{}",
                            ctx.seq.fetch_add(1, Ordering::Relaxed),
                            sanitize(&label)
                        );
                        let run = WrkRun {
                            label,
                            target,
                            tls: s.tls,
                            host: base.host.clone(),
                            connections: z.proxy_conns,
                            threads: split.client.threads_or(2),
                            seconds: wrk_seconds,
                            timeout_s: base.timeout as u64,
                            pin: &split.client,
                        };
                        measure(edge, &origin, || run.run(&ctx.work, &ctx.runs, &stem))
                    }
                };
                match measured {
                    Ok(m) => runs[c][i].push(m),
                    Err(e) => {
                        procs::check_interrupted()?;
                        failed[c][i] = Some(format!("{e:#}"));
                    }
                }
                origin.check_alive()?;
            }
        }
    }
    // Each row is the run of median req/s among its rounds, with the spread beside it.
    let mut results: [Vec<(String, Result<Measured, String>)>; 2] = [Vec::new(), Vec::new()];
    for (i, s) in systems.iter().enumerate() {
        if let Err(why) = s.target(origin_addr) {
            closed.unavailable(&s.name, why);
            for r in &mut results {
                r.push((s.name.clone(), Err(format!("not available: {why}"))));
            }
            continue;
        }
        for (c, client) in CLIENTS.iter().enumerate() {
            let mut mine = std::mem::take(&mut runs[c][i]);
            if let Some(why) = failed[c][i].take().filter(|_| mine.is_empty()) {
                closed.unavailable(&format!("{} ({client})", s.name), &why);
                results[c].push((s.name.clone(), Err(format!("not available: {why}"))));
                continue;
            }
            mine.sort_by(|a, b| a.run.throughput.total_cmp(&b.run.throughput));
            let (min, max) = (
                mine.first().map_or(0.0, |m| m.run.throughput),
                mine.last().map_or(0.0, |m| m.run.throughput),
            );
            let rounds = mine.len();
            let Some(m) = (rounds > 0).then(|| mine.swap_remove(rounds / 2)) else { continue };
            let r = &m.run;
            let cpu = if s.tls { m.edge_cpu_s } else { m.origin_cpu_s };
            let mut row = vec![s.name.clone(), (*client).to_owned()];
            row.extend(latency_cells(r));
            row.extend([
                format!("{min:.0}-{max:.0} ({rounds})"),
                format!("{cpu:.2}"),
                format!("{:.1}", cpu * 1e6 / r.ok.max(1) as f64),
                format!("{:.2}", r.client_cpu_s),
                format!("{:.2}", m.others_cpu_s()),
            ]);
            closed.row(row);
            let name = if c == 0 { s.name.clone() } else { format!("{} ({client})", s.name) };
            closed_panel.series.push(series(&name, r, system_color(&s.name), c == 1));
            results[c].push((s.name.clone(), Ok(m)));
        }
    }
    let run = |c: usize, name: &str| {
        results[c]
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, m)| m.as_ref().ok())
            .map(|m| &m.run)
    };
    let rps = |c: usize, name: &str| run(c, name).map(|r| r.throughput);
    let p99 = |c: usize, name: &str| run(c, name).map(|r| r.latency.p99_us as f64);
    closed.notes.push(split.describe());
    // taskset keeps the bench's own processes apart; nothing keeps other work off the edge's
    // CPUs. Say how much there was, since it moves req/s and latency far more than the edge
    // does.
    let busiest = results
        .iter()
        .flatten()
        .filter_map(|(_, m)| m.as_ref().ok())
        .map(|m| m.others_cpu_s() / m.wall_s.max(1e-3))
        .fold(0.0, f64::max);
    closed.notes.push(format!(
        "other work on the machine: up to {busiest:.2} of {} CPUs during a run{}",
        split.allowed.len(),
        if busiest > DISTURBED_CPUS {
            " -- DISTURBED: req/s and latency (and their ratios) depend on when it ran; edge \
             µs/req much less so. Rerun on a quiet machine."
        } else {
            ""
        }
    ));
    closed.notes.push(negotiated_note(
        results[0].iter().filter_map(|(n, m)| m.as_ref().ok().map(|m| (n.as_str(), &m.run))),
    ));
    closed.notes.push(
        "edge CPU: the proxy's processes (the origin's for the origin row); client: the generator \
         (outpost-load gen or wrk); others: the rest of the machine during the run (other work \
         on a shared machine). wrk (OpenSSL) opens its connections inside its run and times each \
         request from its write; outpost-load opens them before the clock."
            .into(),
    );

    // Both clients side by side, and the ratios each of them sees.
    let mut both = Table::new(
        format!(
            "proxy: the same runs, both clients side by side (closed loop, {} connections)",
            z.proxy_conns
        ),
        &["system", "outpost-load req/s", "p99 ms", "wrk req/s", "p99 ms"],
    );
    let cell_rps = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let cell_p99 = |c: usize, name: &str| run(c, name).map_or("-".into(), |r| ms(r.latency.p99_us));
    for s in &systems {
        both.row(vec![
            s.name.clone(),
            cell_rps(rps(0, &s.name)),
            cell_p99(0, &s.name),
            cell_rps(rps(1, &s.name)),
            cell_p99(1, &s.name),
        ]);
    }
    let mut ratios_json = serde_json::Map::new();
    for (label, a, b) in [
        ("outpost uring / nginx", "outpost uring", "nginx"),
        ("outpost uring / outpost epoll", "outpost uring", "outpost epoll"),
        ("outpost compio / outpost uring", "outpost compio", "outpost uring"),
        ("nginx / origin alone", "nginx", "origin alone (plain HTTP)"),
    ] {
        both.row(vec![
            label.into(),
            ratio(rps(0, a), rps(0, b)),
            ratio(p99(0, a), p99(0, b)),
            ratio(rps(1, a), rps(1, b)),
            ratio(p99(1, a), p99(1, b)),
        ]);
        let r = |v: Option<f64>, w: Option<f64>| match (v, w) {
            (Some(v), Some(w)) if w > 0.0 => json!(v / w),
            _ => Value::Null,
        };
        ratios_json.insert(
            label.into(),
            json!({
                "outpost-load": {"req_s": r(rps(0, a), rps(0, b)), "p99": r(p99(0, a), p99(0, b))},
                "wrk": {"req_s": r(rps(1, a), rps(1, b)), "p99": r(p99(1, a), p99(1, b))},
            }),
        );
    }
    both.notes.push(split.describe());
    both.notes.push(
        "ratio rows: req/s and p99 of the first system over the second's, each client on its own; \
         each system's row is its round of median req/s (the spread of its rounds in the table \
         above)."
            .into(),
    );

    // The edge's flame graph at maximum load: a run of its own, so that perf's cost is in no
    // measured row.
    let flame_json = if ctx.tiny {
        both.notes.push("flame graph: skipped (--tiny)".into());
        json!({"skipped": "--tiny"})
    } else {
        match flame_graph(ctx, &systems, &base, &split) {
            Ok(None) => {
                both.notes.push(format!("flame graph: not made: {FLAME_SYSTEM} is not available"));
                json!({"skipped": format!("{FLAME_SYSTEM} not available")})
            }
            Ok(Some((flame, run))) => {
                both.notes.push(format!(
                    "flame graph of {FLAME_SYSTEM}: {} ({:.0} s of outpost-load gen at {:.0} req/s \
                     under perf; {} samples, {:.0} % of them not unwound to their root; {})",
                    flame.svg.display(),
                    flame.seconds,
                    run.throughput,
                    flame.samples,
                    flame.unrooted_share * 100.0,
                    flame.event_note
                ));
                json!({"flame": flame, "run": run})
            }
            Err(e) => {
                procs::check_interrupted()?;
                eprintln!("outpost-load: proxy: flame graph failed: {e:#}");
                both.notes.push(format!("flame graph: FAILED: {e:#}"));
                json!({"error": format!("{e:#}")})
            }
        }
    };
    origin.check_alive()?;

    // Latency at the same offered load for every system: half the slowest TLS system's max.
    let slowest = results[0]
        .iter()
        .filter(|(n, _)| !n.starts_with("origin"))
        .filter_map(|(_, m)| m.as_ref().ok().map(|m| m.run.throughput))
        .fold(f64::INFINITY, f64::min);
    let mut tables = vec![closed, both];
    let mut panels = vec![closed_panel];
    let mut open_json = Vec::new();
    if slowest.is_finite() && slowest > 0.0 {
        let rate = ((slowest * 0.5 / 100.0).floor() * 100.0).max(50.0);
        let mut open = Table::new(
            format!(
                "proxy: the same at a fixed {rate:.0} req/s (open loop, outpost-load gen, half the \
                 slowest proxy's max; latency from the intended send time), {} connections, {} s",
                z.proxy_conns, z.run
            ),
            &["system", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "edge µs/req"],
        );
        let mut open_panel =
            Panel { title: format!("proxy: open loop at {rate:.0} req/s"), series: vec![] };
        for s in &systems {
            let (target, edge) = match s.target(origin_addr) {
                Ok(t) => t,
                Err(why) => {
                    open.unavailable(&s.name, why);
                    continue;
                }
            };
            let mut args = base.clone();
            args.label = format!("proxy open {}", s.name);
            args.target = target;
            args.tls = s.tls;
            args.rate = Some(rate);
            match measure(edge, &origin, || ctx.gen_on(args, &Place::Host, &split.client)) {
                Ok(m) => {
                    let r = &m.run;
                    let cpu = if s.tls { m.edge_cpu_s } else { m.origin_cpu_s };
                    let mut row = vec![s.name.clone()];
                    row.extend(latency_cells(r));
                    row.push(format!("{:.1}", cpu * 1e6 / r.ok.max(1) as f64));
                    open.row(row);
                    open_panel.series.push(series(&s.name, r, system_color(&s.name), false));
                    open_json.push(json!({"system": s.name, "measured": m.json()}));
                }
                Err(e) => {
                    procs::check_interrupted()?;
                    open.unavailable(&s.name, &format!("{e:#}"));
                }
            }
        }
        open.notes.push(split.describe());
        tables.push(open);
        panels.push(open_panel);
    }
    let closed_json = |c: usize| {
        results[c]
            .iter()
            .map(|(n, m)| match m {
                Ok(m) => json!({"system": n, "measured": m.json()}),
                Err(why) => json!({"system": n, "measured": null, "why": why}),
            })
            .collect::<Vec<_>>()
    };
    let json = json!({
        "cpu_split": split.json(),
        "others_cpus_max": busiest,
        "closed": closed_json(0),
        "closed_wrk": closed_json(1),
        "wrk_unavailable": wrk_ready.err(),
        "ratios": ratios_json,
        "open": open_json,
        "flame_graph": flame_json,
        "unavailable": unavailable_json(&systems),
    });
    Ok(ScenarioReport { name: "proxy".into(), tables, json, panels })
}

/// The flame graph of [`FLAME_SYSTEM`] under a closed-loop run of outpost-load gen (the same
/// load as its measured row); `None` when that system is not running. perf and the generator
/// share the client's CPUs.
fn flame_graph(
    ctx: &Ctx,
    systems: &[Sys],
    base: &GenArgs,
    split: &Split,
) -> Result<Option<(profile::Flame, RunResult)>> {
    let Some((sys, edge)) = systems
        .iter()
        .find(|s| s.name == FLAME_SYSTEM)
        .and_then(|s| s.running.as_ref().ok().map(|r| (s, r)))
    else {
        return Ok(None);
    };
    // Before a load run is spent: perf and inferno must be there.
    profile::tools()?;
    let mut args = base.clone();
    args.label = format!("proxy flame {}", sys.name);
    args.target = loopback(edge.port);
    args.tls = true;
    let gen = ctx.start_gen_on(args, &Place::Host, &split.client)?;
    // The generator opens its connections before its clock starts; sample the steady state.
    let lead = 1.0;
    thread::sleep(Duration::from_secs_f64(lead));
    let seconds = (ctx.sizes.run - 2.0 * lead).max(1.0);
    let title = format!(
        "{} ({} worker{} on {}), keep-alive TLS 1.3 GETs, {} connections, closed loop",
        sys.name,
        split.edge.workers(),
        if split.edge.workers() == 1 { "" } else { "s" },
        split.edge,
        base.connections
    );
    let flame = profile::record(
        edge.pid(),
        seconds,
        &split.client,
        &ctx.dir,
        "flame-outpost-uring",
        &title,
    );
    let run = gen.finish();
    Ok(Some((flame?, run?)))
}

fn unavailable_json(systems: &[Sys]) -> Value {
    systems
        .iter()
        .filter(|s| s.tls)
        .filter_map(|s| s.running.as_ref().err().map(|e| (s.name.clone(), json!(e))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

// ---------------------------------------------------------------------------------------------
// handshake

fn handshake(ctx: &Ctx) -> Result<ScenarioReport> {
    let z = ctx.sizes;
    let origin =
        systems::start_origin(&ctx.exe, &Place::Host, &Pin::none(), "127.0.0.1:0", &ctx.work)?;
    let mut systems = start_proxies(ctx, &origin, &OUTPOST_AND_NGINX, &Pin::none());
    let mut base = GenArgs::new("handshake", loopback(origin.port));
    base.tls = true;
    base.new_conn = true;
    base.connections = z.handshake_conns;
    base.duration = z.run;
    base.timeout = 5.0;
    warm_all(ctx, &mut systems, &base, &Pin::none());
    let mut t = Table::new(
        format!(
            "handshake: a new connection per request, full TLS 1.3 handshake (no resumption, \
             ECDSA P-256, X25519) + GET, closed loop, {} connections, {} s per run, median of \
             {} interleaved rounds",
            z.handshake_conns, z.run, z.proxy_rounds
        ),
        &[
            "system",
            "handshakes/s",
            "min-max",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "edge µs/hs",
            "client CPU s",
            "others CPU s",
        ],
    );
    let mut panel =
        Panel { title: "handshake: new connection + GET (closed loop)".into(), series: vec![] };
    let rounds = Rounds::run_n(z.proxy_rounds, &systems, &origin, |s, target, round| {
        let mut args = base.clone();
        args.label = format!("handshake {} round {round}", s.name);
        args.target = target;
        ctx.gen(args, &Place::Host)
    })?;
    for (i, s) in systems.iter().enumerate() {
        match rounds.row(i, s.tls) {
            Err(why) => t.unavailable(&s.name, why),
            Ok(row) => {
                t.row(vec![
                    s.name.clone(),
                    format!("{:.0}", row.rps),
                    format!("{:.0}-{:.0}", row.min, row.max),
                    ms(row.p50_us),
                    ms(row.p99_us),
                    ms(row.p999_us),
                    row.errors.to_string(),
                    format!("{:.0}", row.edge_us_per_op),
                    format!("{:.2}", row.client_cpu_s),
                    format!("{:.2}", row.others_cpu_s),
                ]);
                panel.series.push(series(
                    &s.name,
                    &row.median_run.run,
                    system_color(&s.name),
                    false,
                ));
            }
        }
    }
    let hs = |name: &str| rounds.median_rps(&systems, name);
    t.notes.push(negotiated_note(
        systems
            .iter()
            .enumerate()
            .filter_map(|(i, s)| rounds.runs[i].first().map(|m| (s.name.as_str(), &m.run))),
    ));
    t.notes.push(format!(
        "outpost uring / nginx handshakes/s: {} (target >= 1.5: {});  outpost epoll / nginx: {};  \
         outpost compio / nginx: {}",
        ratio(hs("outpost uring"), hs("nginx")),
        target_verdict(hs("outpost uring"), hs("nginx"), 1.5),
        ratio(hs("outpost epoll"), hs("nginx")),
        ratio(hs("outpost compio"), hs("nginx"))
    ));
    t.notes.push(format!(
        "other work on the machine: up to {:.2} CPUs during a run",
        rounds.others_cpus_max()
    ));
    t.notes.push(
        "The client does the same work for every system (it verifies the handshake signature; \
         only the self-signed chain is not checked) and shares the 2 cores with the edge."
            .into(),
    );
    let json = json!({
        "rounds": rounds.json(&systems),
        "unavailable": unavailable_json(&systems),
    });
    Ok(ScenarioReport { name: "handshake".into(), tables: vec![t], json, panels: vec![panel] })
}

// ---------------------------------------------------------------------------------------------
// memory

fn memory(ctx: &Ctx) -> Result<ScenarioReport> {
    let z = ctx.sizes;
    let origin =
        systems::start_origin(&ctx.exe, &Place::Host, &Pin::none(), "127.0.0.1:0", &ctx.work)?;
    let mut t = Table::new(
        format!(
            "memory: the edge with {} idle keep-alive TLS 1.3 connections (one GET each, then idle)",
            z.idle_conns
        ),
        &["system", "held", "established", "RSS MiB", "PSS MiB", "RSS before MiB", "KiB/conn (RSS)", "processes"],
    );
    let mut rows = Vec::new();
    // One system at a time, each fresh, so that none holds the others' memory.
    for name in OUTPOST_AND_NGINX {
        procs::check_interrupted()?;
        let mut sys = start_proxies(ctx, &origin, &[name], &Pin::none());
        let mut base = GenArgs::new("memory", loopback(origin.port));
        base.tls = true;
        base.connections = 4;
        warm_all(ctx, &mut sys, &base, &Pin::none());
        let s = sys.pop().expect("one system");
        let running = match &s.running {
            Ok(r) => r,
            Err(why) => {
                t.unavailable(name, why);
                continue;
            }
        };
        match hold_and_measure(ctx, running) {
            Ok(row) => {
                let before = row["before"]["rss_kib"].as_u64().unwrap_or(0);
                let after = row["after"]["rss_kib"].as_u64().unwrap_or(0);
                let held = row["held"].as_u64().unwrap_or(0);
                t.row(vec![
                    name.into(),
                    held.to_string(),
                    row["established"].to_string(),
                    format!("{:.1}", after as f64 / 1024.0),
                    format!("{:.1}", row["after"]["pss_kib"].as_u64().unwrap_or(0) as f64 / 1024.0),
                    format!("{:.1}", before as f64 / 1024.0),
                    format!("{:.1}", after.saturating_sub(before) as f64 / held.max(1) as f64),
                    row["after"]["processes"].to_string(),
                ]);
                rows.push(json!({"system": name, "measured": row}));
            }
            Err(e) => {
                procs::check_interrupted()?;
                t.unavailable(name, &format!("{e:#}"));
            }
        }
    }
    t.notes.push(
        "RSS sums every process of the edge (nginx: master + workers, shared pages counted per \
         process); PSS splits shared pages. established: server-side sockets in ESTABLISHED on \
         the edge's port when measured."
            .into(),
    );
    Ok(ScenarioReport {
        name: "memory".into(),
        tables: vec![t],
        json: json!({"runs": rows}),
        panels: vec![],
    })
}

fn hold_and_measure(ctx: &Ctx, edge: &Running) -> Result<Value> {
    let z = ctx.sizes;
    thread::sleep(Duration::from_millis(300));
    let before = edge.memory();
    let mut args = GenArgs::new(&format!("memory {}", edge.name), loopback(edge.port));
    args.op = Op::Hold;
    args.tls = true;
    args.connections = z.idle_conns;
    args.count = z.idle_conns as u64;
    // Time to open them all; then they stay idle until measured (and at most `hold`).
    args.duration = if ctx.tiny { 20.0 } else { 120.0 };
    args.hold = 60.0;
    args.timeout = 10.0;
    let mut g = ctx.start_gen(args, &Place::Host)?;
    let ready = g.child.wait_for_line("ready", g.limit)?;
    // Let the edge settle (buffers shrink after the first response in some servers).
    thread::sleep(Duration::from_secs(2));
    let after = edge.memory();
    let established = procs::sockets_on(edge.port, "01", None);
    let result: RunResult = serde_json::from_str(&fs::read_to_string(&g.json)?)?;
    g.child.kill();
    Ok(json!({
        "held": result.held,
        "failed": result.errors,
        "first_error": result.first_error,
        "ready_line": ready,
        "established": established,
        "before": before,
        "after": after,
        "client_cpu_s": result.client_cpu_s,
    }))
}

// ---------------------------------------------------------------------------------------------
// flood

/// The XDP cases of the flood scenario.
const FLOOD_CASES: &[(&str, EdgeXdp)] = &[
    ("XDP off (userspace floor)", EdgeXdp::Pass),
    ("XDP drop", EdgeXdp::Floor("drop")),
    ("XDP reject", EdgeXdp::Floor("reject")),
    // The default budget (200/s, 5/s per source network): the flood comes from one address,
    // so about 5 hellos a second go on to the legacy responder, the rest are rejected in XDP.
    ("XDP redirect", EdgeXdp::Floor("redirect")),
];
/// The case the redirect row is held against.
const REJECT_CASE: &str = "XDP reject";
const REDIRECT_CASE: &str = "XDP redirect";
const EDGE_PORT: u16 = 443;
const ORIGIN_NS_ADDR: &str = "127.0.0.1:8080";

fn flood(ctx: &Ctx) -> Result<ScenarioReport> {
    let z = ctx.sizes;
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP)");
    }
    let outpost = ctx.outpost_bin().context("XDP is attached with `outpost attach`")?;
    let edge_kind = match (ctx.flood_edge, &ctx.outpost_run) {
        (Some(k), _) => k,
        (None, Ok(())) => EdgeKind::Outpost,
        (None, Err(_)) => EdgeKind::Nginx,
    };
    let mut notes = Vec::new();
    if let (EdgeKind::Nginx, Err(why)) = (edge_kind, &ctx.outpost_run) {
        notes.push(format!(
            "outpost: not available: {why}. The edge behind the XDP floor here is nginx (its \
             userspace floor: ssl_protocols TLSv1.2 TLSv1.3)."
        ));
    }
    let mut wire = Wire::new(outpost)?;
    let place = Place::Netns(wire.edge_ns.clone());
    let client = Place::Netns(wire.client_ns.clone());
    let origin = systems::start_origin(&ctx.exe, &place, &Pin::none(), ORIGIN_NS_ADDR, &ctx.work)?;
    let listen = format!("{}:{EDGE_PORT}", netns::EDGE_V4);
    let mut edge = match edge_kind {
        EdgeKind::Nginx => systems::start_nginx(
            &place,
            &Pin::none(),
            &listen,
            ORIGIN_NS_ADDR,
            &ctx.cert,
            z.timeouts,
            &ctx.work,
            false,
        )?,
        EdgeKind::Outpost => systems::start_outpost(
            outpost,
            Io::Uring,
            &place,
            &Pin::none(),
            &listen,
            "127.0.0.1:9901",
            ORIGIN_NS_ADDR,
            &ctx.cert,
            z.timeouts,
            &ctx.work,
            Some(wire.pin_dir()),
        )?,
    };
    let edge_name = edge.name.clone();
    let target: SocketAddr = listen.parse()?;
    let mut modern = GenArgs::new("modern", target);
    modern.tls = true;
    modern.new_conn = true;
    modern.rate = Some(z.modern_rate);
    modern.connections = z.modern_conns;
    modern.duration = z.run;
    modern.timeout = 5.0;
    let mut legacy = GenArgs::new("legacy flood", target);
    legacy.op = Op::Hello;
    legacy.rate = Some(z.flood_rate);
    // Enough workers that every hello of a second can wait out `hello_wait` at once.
    legacy.connections = ((z.flood_rate * (z.hello_wait + 0.5)).ceil() as usize).clamp(16, 20_000);
    legacy.timeout = z.hello_wait;
    legacy.duration = z.run;
    // What the edge and the machine spend with nothing to do, per second: subtracted from the
    // flood's cost (at a few hundred hellos per second an idle edge's timers are not noise).
    let idle = Idle::sample(&edge, if ctx.tiny { 1.0 } else { 3.0 });

    let mut lat = Table::new(
        format!(
            "flood: modern clients ({} new TLS 1.3 connections/s, open loop, GET each) alone and \
             during a legacy TLS 1.0 hello flood ({} hellos/s); edge: {edge_name}; {} s each",
            z.modern_rate, z.flood_rate, z.run
        ),
        &[
            "case",
            "phase",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "p99 vs alone",
        ],
    );
    let mut cost = Table::new(
        format!(
            "flood: cost of legacy hellos (flood alone, {} hellos/s for {} s, CPU counted until the \
             edge closed them); ms of CPU per 1,000 hellos",
            z.flood_rate, z.run
        ),
        &[
            "case",
            "hellos",
            "outcomes",
            "edge",
            "edge (schedstat)",
            "machine busy",
            "softirq",
            "generator",
            "XDP TLS1.0 verdicts",
        ],
    );
    let mut panel =
        Panel { title: format!("flood: modern clients, edge {edge_name}"), series: vec![] };
    let mut cases_json = Vec::new();
    // (case, edge CPU s, machine busy s, the edge's CPU resolution: one clock tick), per 1,000.
    let mut edge_per_1k: Vec<(&str, f64, f64, f64)> = Vec::new();
    // (case, the edge's CPU per 1,000 hellos from schedstat).
    let mut edge_fine_per_1k: Vec<(&str, f64)> = Vec::new();
    // (case, modern p99 during the flood / alone).
    let mut p99_vs_alone: Vec<(&str, f64)> = Vec::new();
    for &(case, xdp) in FLOOD_CASES {
        procs::check_interrupted()?;
        eprintln!("-- flood: {case}");
        wire.set_edge_xdp(xdp, EDGE_PORT)?;
        edge.check_alive()?;
        ctx.warm_up(&format!("{case} modern"), modern.clone(), &client, &Pin::none())?;

        let mut a = modern.clone();
        a.label = format!("{case}: modern alone");
        let alone = measure(Some(&edge), &origin, || ctx.gen(a, &client))?;
        drain(&edge, z);

        // The flood starts first and ends last, so every modern request meets it.
        let mut f = legacy.clone();
        f.label = format!("{case}: flood (with modern)");
        f.duration = z.run + 1.0;
        let mut b = modern.clone();
        b.label = format!("{case}: modern during flood");
        let during = measure(Some(&edge), &origin, || {
            let flood = ctx.start_gen(f, &client)?;
            thread::sleep(Duration::from_millis(500));
            let m = ctx.gen(b, &client);
            let fl = flood.finish()?;
            eprintln!("   flood alongside: {} hellos, {:?}", fl.ok, fl.outcomes);
            m
        })?;
        drain(&edge, z);

        let mut c = legacy.clone();
        c.label = format!("{case}: flood alone");
        let stats_before = wire.stats().ok();
        let (fine0, wall0) = (edge.cpu_seconds_fine(), Instant::now());
        let only = measure(Some(&edge), &origin, || {
            let r = ctx.gen(c, &client);
            // The edge's work on a hello may end after the client gave up (a dropped hello
            // leaves a server socket until the handshake timeout).
            drain(&edge, z);
            r
        })?;
        let fine = edge.cpu_seconds_fine() - fine0;
        let fine = (fine - idle.edge_fine * wall0.elapsed().as_secs_f64()).max(0.0);
        let stats_after = wire.stats().ok();
        let verdicts = match (&stats_before, &stats_after) {
            (Some(b), Some(a)) => ["pass", "drop", "reject", "redirect"]
                .iter()
                .map(|v| {
                    let n = |s: &Value| s["versions"]["TLS1.0"][v].as_u64().unwrap_or(0);
                    (v.to_string(), n(a).saturating_sub(n(b)))
                })
                .filter(|(_, n)| *n > 0)
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "-".into(),
        };

        for (phase, m) in [("alone", &alone), ("during flood", &during)] {
            let r = &m.run;
            let mut row = vec![case.into(), phase.into()];
            row.extend(latency_cells(r));
            row.push(if phase == "alone" {
                "1.00x".into()
            } else {
                ratio(Some(r.latency.p99_us as f64), Some(alone.run.latency.p99_us as f64))
            });
            lat.row(row);
            let color = FLOOD_CASES.iter().position(|(c, _)| *c == case).unwrap_or(0);
            let name = format!("{case}, {phase}");
            panel.series.push(series(&name, r, color, phase != "alone"));
        }
        if alone.run.latency.p99_us > 0 {
            let r = during.run.latency.p99_us as f64 / alone.run.latency.p99_us as f64;
            p99_vs_alone.push((case, r));
        }
        let hellos = only.run.ok.max(1) as f64 / 1000.0;
        let per_1k = |s: f64| format!("{:.1}", s * 1000.0 / hellos);
        let w = only.wall_s;
        let edge_cpu = (only.edge_cpu_s - idle.edge * w).max(0.0);
        let busy = (only.machine.busy() - idle.busy * w).max(0.0);
        let softirq = (only.machine.softirq - idle.softirq * w).max(0.0);
        let outcomes = only
            .run
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        cost.row(vec![
            case.into(),
            only.run.ok.to_string(),
            outcomes,
            per_1k(edge_cpu),
            format!("{:.2}", fine * 1000.0 / hellos),
            per_1k(busy),
            per_1k(softirq),
            per_1k(only.run.client_cpu_s),
            verdicts.clone(),
        ]);
        edge_per_1k.push((case, edge_cpu / hellos, busy / hellos, TICK_S / hellos));
        edge_fine_per_1k.push((case, fine / hellos));
        cases_json.push(json!({
            "case": case,
            "modern_alone": alone.json(),
            "modern_during_flood": during.json(),
            "flood_alone": only.json(),
            "flood_alone_above_idle": {
                "edge_cpu_s": edge_cpu, "edge_cpu_schedstat_s": fine,
                "machine_busy_s": busy, "machine_softirq_s": softirq,
            },
            "xdp_tls1_0_verdicts": verdicts,
            "xdp_stats_before": stats_before,
            "xdp_stats_after": stats_after,
        }));
    }
    let find = |c: &str| edge_per_1k.iter().find(|x| x.0 == c).map(|&(_, e, m, t)| (e, m, t));
    let userspace = find(FLOOD_CASES[0].0);
    for (case, _) in &FLOOD_CASES[1..] {
        let this = find(case);
        // The edge's CPU comes in clock ticks: none at all bounds the ratio from below.
        let edge = match (userspace, this) {
            (Some(u), Some((e, _, tick))) if e == 0.0 && u.0 > 0.0 => {
                format!("> {:.0}x (no tick of edge CPU in the run)", u.0 / tick)
            }
            _ => ratio(userspace.map(|u| u.0), this.map(|x| x.0)),
        };
        cost.notes.push(format!(
            "CPU per legacy hello, userspace floor / {case}: edge {edge}, machine busy {}",
            ratio(userspace.map(|u| u.1), this.map(|x| x.1)),
        ));
    }
    // Redirect against reject: the target is within 1.2x on both.
    let p99_ratio = |case: &str| p99_vs_alone.iter().find(|x| x.0 == case).map(|x| x.1);
    if let (Some(rej), Some(red)) = (find(REJECT_CASE), find(REDIRECT_CASE)) {
        let (pr, pd) = (p99_ratio(REJECT_CASE), p99_ratio(REDIRECT_CASE));
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        // The edge's CPU comes in clock ticks: none at all in the reject run bounds it by one.
        let fine = |case: &str| edge_fine_per_1k.iter().find(|x| x.0 == case).map(|x| x.1);
        let (fine_red, fine_rej) = (fine(REDIRECT_CASE), fine(REJECT_CASE));
        let cpu = match (red.0, rej.0) {
            (0.0, 0.0) => format!(
                "< {:.1} ms in both (no tick of edge CPU in either run)",
                rej.2.max(red.2) * 1000.0
            ),
            (r, 0.0) => format!(
                "{:.1} vs < {:.1} ms (no tick in the reject run: >= {})",
                r * 1000.0,
                rej.2 * 1000.0,
                ratio(Some(r), Some(rej.2))
            ),
            (r, j) => {
                format!("{:.1} vs {:.1} ms ({})", r * 1000.0, j * 1000.0, ratio(Some(r), Some(j)))
            }
        };
        cost.notes.push(format!(
            "redirect vs reject (target: within 1.2x on both): modern p99 during flood / alone \
             {} vs {} ({}); edge CPU per 1,000 hellos {cpu}, from schedstat {:.2} vs {:.2} ms \
             ({}); machine busy per 1,000 hellos {}. \
             The redirect row's edge CPU includes the legacy responder's ServerHellos for the \
             hellos within the budget (the flood comes from one address: 5 a second; it then \
             aborts each).",
            fmt(pd),
            fmt(pr),
            ratio(pd, pr),
            fine_red.unwrap_or(0.0) * 1000.0,
            fine_rej.unwrap_or(0.0) * 1000.0,
            ratio(fine_red, fine_rej),
            ratio(Some(red.1), Some(rej.1)),
        ));
    }
    cost.notes.push(format!(
        "edge: utime+stime of the edge's processes (/proc/<pid>/stat), in clock ticks; edge \
         (schedstat): the on-CPU nanoseconds of its threads (/proc/<pid>/task/*/schedstat). \
         machine busy: wall time \
         x CPUs - idle, from /proc/stat (everything, wherever it ran: the generator, the kernel, \
         other work on the machine); softirq: /proc/stat's tick samples. XDP runs in softirq, \
         which this kernel (no IRQ time accounting) charges to whatever task it interrupted, \
         usually the generator whose send started it. Edge, busy and softirq are above idle: \
         idle rates measured before the cases, per second: edge {:.3} s, machine busy {:.3} s, \
         softirq {:.4} s.",
        idle.edge, idle.busy, idle.softirq
    ));
    lat.notes.extend(notes);
    lat.notes.push(
        "XDP off: the `pass` program on the edge's veth (so the veth path is the same as with \
         the floor); the edge's own userspace floor refuses the legacy hellos."
            .into(),
    );
    let json = json!({
        "edge": edge_name,
        "cases": cases_json,
        "idle_per_s": {"edge_cpu_s": idle.edge, "machine_busy_s": idle.busy, "machine_softirq_s": idle.softirq},
        "sizes": format!("{z:?}"),
    });
    Ok(ScenarioReport { name: "flood".into(), tables: vec![lat, cost], json, panels: vec![panel] })
}

/// CPU per second of wall time with nothing to do.
struct Idle {
    edge: f64,
    /// The same from schedstat.
    edge_fine: f64,
    busy: f64,
    softirq: f64,
}

impl Idle {
    fn sample(edge: &Running, seconds: f64) -> Idle {
        let (e0, f0) = (edge.cpu_seconds(), edge.cpu_seconds_fine());
        let (m0, t0) = (MachineCpu::now(), Instant::now());
        thread::sleep(Duration::from_secs_f64(seconds));
        let (e1, f1) = (edge.cpu_seconds(), edge.cpu_seconds_fine());
        let (m1, w) = (MachineCpu::now(), t0.elapsed().as_secs_f64());
        let m = m1.since(m0);
        Idle {
            edge: (e1 - e0) / w,
            edge_fine: (f1 - f0) / w,
            busy: m.busy() / w,
            softirq: m.softirq / w,
        }
    }
}

/// Waits until the edge holds no more connections than the modern clients' (at most the edge's
/// handshake timeout and a little).
fn drain(edge: &Running, z: Sizes) {
    let deadline = Instant::now() + z.timeouts.handshake + Duration::from_secs(3);
    while Instant::now() < deadline && !procs::interrupted() {
        if procs::sockets_on(edge.port, "01", Some(edge.pid())) == 0 {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_is_a_utc_date() {
        let s = super::utc_stamp();
        let (date, time) = s.split_once('-').unwrap_or_else(|| panic!("{s}"));
        assert!(date.len() == 8 && time.len() == 6, "{s}");
        assert!(date.starts_with("20"), "{s}");
        let month: u32 = date[4..6].parse().expect("digits");
        let day: u32 = date[6..8].parse().expect("digits");
        assert!((1..=12).contains(&month) && (1..=31).contains(&day), "{s}");
    }
}
