//! `[clients]`: who connects. The table of clients (`outpost_clients::ClientTable`: JA4, SNI,
//! ALPN, offered version, verdict) of `outpost run`, fed from one of two places:
//!
//! - the XDP program's records, read from its pinned ring buffer by a thread of this process
//!   whenever the program is loaded (attached by `--iface` or by `outpost attach`); or
//! - while no kernel records are read, the userspace floor's own hellos ([`HelloSink`]).
//!
//! Never both at once, so no hello is counted twice. The admin listener serves the table
//! (`GET /clients`) and what a floor would refuse (`GET /clients/simulate`); `/metrics` carries
//! its top series. `outpost clients --watch` reads the ring buffer itself when no edge runs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use outpost_api::{AdminEndpoint, Reply};
use outpost_clients::{render_metrics, render_table, simulate, ClientTable, Query};
use outpost_common::{record::HelloRecord, Verdict, Version};
use outpost_proxy::{floor::HelloSink, http::Request, metrics::MetricsSource};
use serde::Deserialize;

use crate::userspace::admin_get;

/// `[clients]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Record hellos at all (kernel and userspace). Default true.
    pub enabled: bool,
    /// Record one hello in this many (1: every one). Default 1.
    pub sample: u32,
    /// Rows the table keeps; the rest are summed in its `other` row. Default 1000.
    pub top: usize,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig { enabled: true, sample: 1, top: outpost_clients::table::DEFAULT_CAPACITY }
    }
}

/// How often the reader looks for the XDP program's ring buffer while there is none.
const FIND_RING_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for a record before the reader checks whether it should stop.
const POLL: Duration = Duration::from_millis(200);

/// The table and where its records come from.
pub struct Clients {
    table: Mutex<ClientTable>,
    sample: u32,
    /// Hellos the userspace floor offered, for its sampling.
    offered: AtomicU64,
    /// The kernel's records are being read: the userspace floor records nothing.
    kernel: AtomicBool,
    /// Records the kernel could not send (its ring was full), as its counters last said;
    /// `None` until kernel records were read.
    dropped: Mutex<Option<u64>>,
}

impl Clients {
    pub fn new(c: &ClientsConfig) -> Arc<Clients> {
        Arc::new(Clients {
            table: Mutex::new(ClientTable::new(c.top.max(1))),
            sample: c.sample.max(1),
            offered: AtomicU64::new(0),
            kernel: AtomicBool::new(false),
            dropped: Mutex::new(None),
        })
    }

    fn table(&self) -> MutexGuard<'_, ClientTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a record, now.
    pub fn observe(&self, rec: &HelloRecord) {
        let now = now_ms();
        self.table().observe(rec, now);
    }

    /// The series for `/metrics`.
    pub fn metrics(self: &Arc<Self>) -> MetricsSource {
        let me = self.clone();
        Arc::new(move |o: &mut String| {
            render_metrics(&me.table(), o);
            let dropped = *me.dropped.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = dropped {
                o.push_str(
                    "# HELP outpost_client_records_dropped_total Hello records the XDP program \
                     could not send (its ring buffer was full).\n\
                     # TYPE outpost_client_records_dropped_total counter\n",
                );
                o.push_str(&format!("outpost_client_records_dropped_total {n}\n"));
            }
        })
    }

    /// `GET /clients` and `GET /clients/simulate` for the admin listener.
    pub fn admin(self: &Arc<Self>) -> Vec<(String, AdminEndpoint)> {
        let me = self.clone();
        let table: AdminEndpoint = Arc::new(move |req: Request<'static>| {
            let reply = me.table_endpoint(&req);
            Box::pin(async move { reply })
        });
        let me = self.clone();
        let simulate: AdminEndpoint = Arc::new(move |req: Request<'static>| {
            let reply = me.simulate_endpoint(&req);
            Box::pin(async move { reply })
        });
        vec![("/clients".into(), table), ("/clients/simulate".into(), simulate)]
    }

    fn table_endpoint(&self, req: &Request<'_>) -> Reply {
        if req.method != "GET" && req.method != "HEAD" {
            return Reply::json_error(405, "use GET").header("Allow", "GET, HEAD");
        }
        let params = match TableParams::parse(query_of(req)) {
            Ok(p) => p,
            Err(e) => return Reply::json_error(400, &e),
        };
        let report = self.table().report(&params.query);
        if params.text {
            let text = render_table(&report.rows, report.total, now_ms());
            return Reply::new(200, "text/plain; charset=utf-8", text);
        }
        Reply::new(200, "application/json", serde_json::to_vec(&report).unwrap_or_default())
    }

    fn simulate_endpoint(&self, req: &Request<'_>) -> Reply {
        if req.method != "GET" && req.method != "HEAD" {
            return Reply::json_error(405, "use GET").header("Allow", "GET, HEAD");
        }
        let (floor, text) = match SimulateParams::parse(query_of(req)) {
            Ok(p) => p,
            Err(e) => return Reply::json_error(400, &e),
        };
        let sim = simulate(&self.table(), floor);
        if text {
            return Reply::new(200, "text/plain; charset=utf-8", sim.render_text());
        }
        Reply::new(200, "application/json", serde_json::to_vec(&sim).unwrap_or_default())
    }
}

impl HelloSink for Clients {
    fn sample(&self) -> bool {
        !self.kernel.load(Relaxed)
            && self.offered.fetch_add(1, Relaxed).is_multiple_of(u64::from(self.sample))
    }

    fn record(&self, record: &HelloRecord) {
        // The reader may have started since this hello was sampled.
        if !self.kernel.load(Relaxed) {
            self.observe(record);
        }
    }

    fn unreadable(&self) {
        self.table().parse_error();
    }
}

/// The thread that reads the XDP program's records into `clients` while `run` holds; it finds
/// the ring buffer when the program is loaded (now or later), turns recording on at the
/// configured rate, and turns it off when it stops (unless another process took over).
pub struct KernelReader {
    pin_dir: PathBuf,
    run: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KernelReader {
    pub fn start(pin_dir: &Path, clients: Arc<Clients>) -> KernelReader {
        let run = Arc::new(AtomicBool::new(true));
        let thread = {
            let (pin_dir, run) = (pin_dir.to_owned(), run.clone());
            thread::Builder::new()
                .name("outpost-clients".into())
                .spawn(move || read_kernel(&pin_dir, &clients, &run, true))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the client record reader"))
                .ok()
        };
        KernelReader { pin_dir: pin_dir.to_owned(), run, thread }
    }

    /// The flag the thread reads on while true; storing false stops it within a poll (at a
    /// hand-over, so that only the new process reads).
    pub fn running(&self) -> Arc<AtomicBool> {
        self.run.clone()
    }

    /// Stops reading. `hand_over`: a new process reads from now on; recording stays on.
    pub fn stop(mut self, hand_over: bool) {
        self.run.store(false, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !hand_over {
            // Nobody reads them now: the kernel need not make them.
            let _ = set_recording(&self.pin_dir, false, 1);
        }
    }
}

/// Reads records until `run` is false. `log`: say in the log when the ring buffer is found.
fn read_kernel(pin_dir: &Path, clients: &Clients, run: &AtomicBool, log: bool) {
    while run.load(Relaxed) {
        let mut ring = match dataplane::HelloRecords::open(pin_dir) {
            Ok(r) => r,
            Err(_) => {
                thread::sleep(FIND_RING_EVERY);
                continue;
            }
        };
        let maps = match dataplane::PinnedMaps::open(pin_dir)
            .and_then(|mut m| m.set_recording(true, clients.sample).map(|()| m))
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot turn the kernel's records on");
                thread::sleep(FIND_RING_EVERY);
                continue;
            }
        };
        clients.kernel.store(true, Relaxed);
        if log {
            tracing::info!(sample = clients.sample, "reading the XDP program's client records");
        }
        let mut polls = 0u32;
        while run.load(Relaxed) {
            // The kernel's drop counter, about once a second.
            if polls.is_multiple_of(5) {
                if let Ok(stats) = maps.stats() {
                    let n = stats.records_dropped();
                    *clients.dropped.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
                }
            }
            polls = polls.wrapping_add(1);
            match ring.wait(Some(POLL)) {
                Ok(_) => {
                    while let Some(rec) = ring.next() {
                        clients.observe(&rec);
                    }
                }
                Err(e) => {
                    // The program was unloaded (its maps unpinned): look for it again.
                    tracing::info!(error = format!("{e:#}"), "the client record ring went away");
                    break;
                }
            }
        }
        clients.kernel.store(false, Relaxed);
    }
}

/// Turns the XDP program's records on (at one in `sample`) or off.
fn set_recording(pin_dir: &Path, on: bool, sample: u32) -> Result<()> {
    let mut maps = dataplane::PinnedMaps::open(pin_dir)?;
    maps.set_recording(on, sample)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn query_of<'r>(req: &'r Request<'_>) -> &'r str {
    req.target.split_once('?').map_or("", |(_, q)| q)
}

/// `GET /clients` parameters: `version`, `verdict`, `sni`, `top`, `format=text`.
#[derive(Debug, Default)]
struct TableParams {
    query: Query,
    text: bool,
}

impl TableParams {
    fn parse(query: &str) -> Result<TableParams, String> {
        let mut p = TableParams::default();
        for (k, v) in pairs(query)? {
            match k.as_str() {
                "version" => p.query.version = Some(parse_version(&v)?),
                "verdict" => p.query.verdict = Some(parse_verdict(&v)?),
                "sni" => p.query.sni = Some(v),
                "top" => {
                    p.query.top = Some(v.parse().map_err(|_| format!("top {v:?} is not a number"))?)
                }
                "format" => p.text = parse_format(&v)?,
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?}: use version, verdict, sni, top, format"
                    ))
                }
            }
        }
        Ok(p)
    }

    fn to_query(&self) -> String {
        let mut q = Vec::new();
        if let Some(v) = self.query.version {
            q.push(format!("version={}", v.name()));
        }
        if let Some(d) = self.query.verdict {
            q.push(format!("verdict={}", d.name()));
        }
        if let Some(s) = &self.query.sni {
            q.push(format!("sni={}", percent_encode(s)));
        }
        if let Some(t) = self.query.top {
            q.push(format!("top={t}"));
        }
        if self.text {
            q.push("format=text".into());
        }
        q.join("&")
    }
}

/// `GET /clients/simulate` parameters: `min_version` (required), `format=text`.
struct SimulateParams;

impl SimulateParams {
    fn parse(query: &str) -> Result<(Version, bool), String> {
        let (mut floor, mut text) = (None, false);
        for (k, v) in pairs(query)? {
            match k.as_str() {
                "min_version" => floor = Some(parse_version(&v)?),
                "format" => text = parse_format(&v)?,
                _ => return Err(format!("unknown parameter {k:?}: use min_version, format")),
            }
        }
        Ok((floor.ok_or("min_version is required, e.g. min_version=1.3")?, text))
    }
}

fn pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::edge::percent_decode(v)
                .ok_or_else(|| format!("bad percent-encoding in {k}"))?;
            Ok((k.to_owned(), v))
        })
        .collect()
}

fn parse_format(v: &str) -> Result<bool, String> {
    match v {
        "text" => Ok(true),
        "json" => Ok(false),
        _ => Err(format!("unknown format {v:?}: use text or json")),
    }
}

/// `1.0`, `TLS1.0`, `tls1.0`, `ssl3`, ... as [`Version`].
pub fn parse_version(s: &str) -> Result<Version, String> {
    let l = s.to_ascii_lowercase();
    Ok(match l.trim_start_matches("tls").trim_start_matches('v') {
        "sslv2" | "ssl2" => Version::Sslv2,
        "ssl3" | "sslv3" | "3.0" => Version::Sslv3,
        "1.0" | "1" => Version::Tls10,
        "1.1" => Version::Tls11,
        "1.2" => Version::Tls12,
        "1.3" => Version::Tls13,
        _ => return Err(format!("unknown version {s:?}: use 1.0, 1.1, 1.2, 1.3, ssl3 or ssl2")),
    })
}

pub fn parse_verdict(s: &str) -> Result<Verdict, String> {
    Verdict::ALL
        .into_iter()
        .find(|d| d.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown verdict {s:?}: use pass, drop, reject or redirect"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~*".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `outpost clients`: what the CLI asks for.
pub struct ShowArgs {
    pub version: Option<Version>,
    pub verdict: Option<Verdict>,
    pub sni: Option<String>,
    pub top: usize,
    pub json: bool,
    pub watch: Option<u64>,
    pub sample: u32,
}

/// `outpost clients`: the table of the edge answering at `admin`; with `--watch` and no edge
/// answering, the XDP program's records read here.
pub fn show(args: &ShowArgs, admin: SocketAddr, token: Option<&str>, pin_dir: &Path) -> Result<()> {
    let params = TableParams {
        query: Query {
            version: args.version,
            verdict: args.verdict,
            sni: args.sni.clone(),
            top: Some(args.top),
        },
        text: !args.json,
    };
    let target = format!("/clients?{}", params.to_query());
    let fetch = || -> Result<String> {
        match admin_get(admin, &target, token)? {
            (200, body) => Ok(body),
            (status, body) => bail!("{admin}/clients answered {status}: {}", body.trim()),
        }
    };
    match fetch() {
        Ok(body) => {
            print!("{body}");
            let Some(secs) = args.watch else { return Ok(()) };
            loop {
                thread::sleep(Duration::from_secs(secs.max(1)));
                if !args.json {
                    println!("--- {} ---", humantime::format_rfc3339_seconds(SystemTime::now()));
                }
                print!("{}", fetch()?);
            }
        }
        Err(e) if args.watch.is_some() && e.root_cause().is::<std::io::Error>() => {
            watch_here(args, &params.query, pin_dir)
        }
        Err(e) => Err(e.context(
            "is `outpost run` serving there? With no edge running, `--watch SECS` reads the XDP \
             program's records here",
        )),
    }
}

/// `outpost clients --watch` with no edge running: reads the ring buffer here, shows the table
/// every `watch` seconds, and turns recording off again at exit.
fn watch_here(args: &ShowArgs, query: &Query, pin_dir: &Path) -> Result<()> {
    let clients = Clients::new(&ClientsConfig { enabled: true, sample: args.sample, top: 1000 });
    dataplane::HelloRecords::open(pin_dir).with_context(|| {
        format!(
            "no edge answers and the XDP program's records are not there (pins {})",
            pin_dir.display()
        )
    })?;
    eprintln!("no edge answers: reading the XDP program's records here (Ctrl-C stops)");
    let run = Arc::new(AtomicBool::new(true));
    let reader = {
        let (pin_dir, clients, run) = (pin_dir.to_owned(), clients.clone(), run.clone());
        thread::spawn(move || read_kernel(&pin_dir, &clients, &run, false))
    };
    interrupted::catch();
    let secs = args.watch.unwrap_or(1).max(1);
    while !interrupted::now() {
        for _ in 0..secs * 10 {
            if interrupted::now() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let report = clients.table().report(query);
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("--- {} ---", humantime::format_rfc3339_seconds(SystemTime::now()));
            print!("{}", render_table(&report.rows, report.total, now_ms()));
        }
    }
    run.store(false, Relaxed);
    let _ = reader.join();
    set_recording(pin_dir, false, 1)?;
    Ok(())
}

/// SIGINT and SIGTERM end `outpost clients --watch` between two tables, so that it can turn
/// the kernel's records off on its way out.
mod interrupted {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    static SEEN: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        SEEN.store(true, Relaxed);
    }

    pub fn catch() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t)
            };
        }
    }

    pub fn now() -> bool {
        SEEN.load(Relaxed)
    }
}

/// `outpost policy simulate`: what a floor of `floor` would refuse, from the table of the edge
/// answering at `admin`.
pub fn simulate_floor(
    floor: Version,
    json: bool,
    admin: SocketAddr,
    token: Option<&str>,
) -> Result<()> {
    let format = if json { "json" } else { "text" };
    let target = format!("/clients/simulate?min_version={}&format={format}", floor.name());
    match admin_get(admin, &target, token)
        .context("`outpost policy simulate` reads the client table of a running `outpost run`")?
    {
        (200, body) => {
            print!("{body}");
            if json {
                println!();
            }
            Ok(())
        }
        (status, body) => bail!("{admin}/clients/simulate answered {status}: {}", body.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_params_round_trip_and_refuse_the_unknown() {
        let p = TableParams::parse("version=1.0&verdict=reject&sni=a%20b.test&top=5&format=text")
            .unwrap();
        assert_eq!(p.query.version, Some(Version::Tls10));
        assert_eq!(p.query.verdict, Some(Verdict::Reject));
        assert_eq!(p.query.sni.as_deref(), Some("a b.test"));
        assert_eq!(p.query.top, Some(5));
        assert!(p.text);
        let again = TableParams::parse(&p.to_query()).unwrap();
        assert_eq!(again.to_query(), p.to_query());
        for bad in ["version=2.0", "verdict=maybe", "top=x", "who=me", "sni=%zz", "format=xml"] {
            assert!(TableParams::parse(bad).is_err(), "accepted {bad}");
        }
        assert!(SimulateParams::parse("").is_err());
        assert_eq!(SimulateParams::parse("min_version=TLS1.3").unwrap(), (Version::Tls13, false));
    }
}
