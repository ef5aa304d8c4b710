//! `cargo bench -p outpost-access --bench access [-- --tiny]`: what Access costs, through the
//! real edge over TLS with a real OpenID provider in the loop. It reports; it never asserts.
//!
//! 1. Keep-alive requests per second on a protected route and on the same origin unprotected,
//!    the same request (a valid app token in a cookie, a small fixed answer), alternated in
//!    one run (best of each kept); the ratio is the price of the access check. Target ≥ 0.9.
//! 2. Complete logins per second: workers each run the whole flow (app, /login, provider,
//!    /callback, code redemption, app) with a fresh browser, again and again.
//! 3. Server-side time of `/login` (page and start), `/callback` (the provider's own time
//!    excluded) and the code redemption, p50 and p99, from the edge's own histograms: after
//!    logins one at a time, and after the concurrent ones too. Target p99 ≤ 5 ms on the
//!    embedded store. Beside them, the baseline: fdatasync of one page on the edge's data
//!    disk, measured in the same run, since each of these endpoints waits for one.
//!
//! Markdown on stdout, JSON under `<results>/<UTC stamp>/access.json` (`--results`, default
//! `results/`). The edge is `$OUTPOST_BIN` (a release build is what the numbers are for).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use support::*;

const OPEN: &str = "open.example.test";

/// (endpoint, (p50 ms, p99 ms)).
type Times<'a> = Vec<(&'a str, (Option<f64>, Option<f64>))>;

struct Args {
    tiny: bool,
    results: PathBuf,
    connections: usize,
    login_workers: usize,
}

fn args() -> Args {
    let mut a = Args { tiny: false, results: "results".into(), connections: 16, login_workers: 4 };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--tiny" => a.tiny = true,
            "--results" => a.results = it.next().expect("--results DIR").into(),
            "--connections" => a.connections = it.next().unwrap().parse().unwrap(),
            "--login-workers" => a.login_workers = it.next().unwrap().parse().unwrap(),
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Keep-alive GETs from `connections` tasks for `secs`: requests per second (2xx only).
fn throughput(
    port: u16,
    host: &str,
    cookie: Option<&str>,
    connections: usize,
    secs: f64,
) -> (f64, u64) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .http1_only()
                .resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let url = format!("https://{host}:{port}/bench");
            let (ok, bad, stop) = (ok.clone(), bad.clone(), stop.clone());
            let cookie = cookie.map(|c| format!("__Host-outpost-token={c}"));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut rb = client.get(&url).header("Accept", "text/html");
                    if let Some(c) = &cookie {
                        rb = rb.header("Cookie", c);
                    }
                    match rb.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            if bad.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!(
                                    "access bench: first failed request: {:?}",
                                    other.map(|r| r.status())
                                );
                            }
                        }
                    }
                }
            }));
        }
        // Warm the connections, then measure.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (start_ok, t0) = (ok.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let n = ok.load(Ordering::Relaxed) - start_ok;
        let el = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        (n as f64 / el, bad.load(Ordering::Relaxed))
    })
}

/// A minimal keep-alive origin for the throughput runs: every request gets the same small
/// answer. (The tests' echo origin, a thread per connection that writes back every header,
/// would be what is measured.) Runs on a thread of its own until the process ends.
fn fast_origin() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((mut c, _)) = l.accept().await else { continue };
                tokio::spawn(async move {
                    let _ = c.set_nodelay(true);
                    let mut buf = Vec::with_capacity(8192);
                    let mut chunk = [0u8; 8192];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
    });
    addr.to_string()
}

/// Full logins by `workers` threads for `secs`: (logins/s, completed, failed).
fn logins(s: &Setup, workers: usize, secs: f64) -> (f64, u64, u64) {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    thread::scope(|scope| {
        for w in 0..workers {
            let (done, failed) = (&done, &failed);
            scope.spawn(move || {
                let mut i = 0;
                while Instant::now() < deadline {
                    let b = s.browser();
                    let user = format!("user{w}-{i}@example.test");
                    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        b.login(&s.url(WIKI, &format!("/w{w}/{i}")), &user).pop().unwrap().status
                            == 200
                    }));
                    if ok.unwrap_or(false) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
    });
    let n = done.load(Ordering::Relaxed);
    (n as f64 / t0.elapsed().as_secs_f64(), n, failed.load(Ordering::Relaxed))
}

/// fdatasync of one 4 kB page rewritten in place (as SQLite rewrites its WAL), `n` times, in
/// `dir`: (p50, p99) in milliseconds. The floor under one durable write on that disk.
fn fsync_floor(dir: &Path, n: usize) -> (f64, f64) {
    let path = dir.join("fsync-probe");
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
    f.write_all(&[0u8; 4096 * 64]).unwrap();
    f.sync_all().unwrap();
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        f.seek(SeekFrom::Start(4096 * (i % 64) as u64)).unwrap();
        f.write_all(&[i as u8; 4096]).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        thread::sleep(Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&path);
    ms.sort_by(f64::total_cmp);
    (ms[n / 2], ms[(n * 99 / 100).min(n - 1)])
}

/// `outpost_access_seconds{endpoint=..,quantile=..}` in milliseconds.
fn quantile(metrics: &str, endpoint: &str, q: &str) -> Option<f64> {
    let series = format!("outpost_access_seconds{{endpoint=\"{endpoint}\",quantile=\"{q}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| s * 1000.0)
}

fn main() {
    let a = args();
    let secs = if a.tiny { 1.0 } else { 5.0 };
    let bin = outpost_testkit::outpost_bin();
    eprintln!("access bench: edge {}", bin.display());

    let port = free_port();
    let idp = Idp::start(&[callback(port)]);
    let origin = Origin::start("app");
    // The wiki (protected) and the open host (not) share one fast origin.
    let fast = fast_origin();
    let config = format!(
        "{}\n[[routes]]\nhost = \"{OPEN}\"\npath = \"/\"\nhandler = \"origin\"\n[routes.origin]\nservers = [\"{fast}\"]\n\
         health_check = {{ interval_ms = 0 }}\n",
        edge_config(port, &idp, &origin, "").replacen(&format!("servers = [\"{}\"]", origin.addr()), &format!("servers = [\"{fast}\"]"), 1),
    );
    // The edge logs at info: a per-request debug log would be much of the work measured.
    let edge =
        Outpost::start_at_env(port, "uring", &config, &[], &["--no-xdp"], &[("RUST_LOG", "info")]);
    let s = Setup { idp, origin, edge, port };
    let b = s.browser();
    assert_eq!(b.login(&s.url(WIKI, "/"), "bench@example.test").pop().unwrap().status, 200);
    let token = b.cookie(&s.url(WIKI, "/"), "__Host-outpost-token").unwrap();

    // 1. Protected ÷ unprotected, alternated.
    let (mut open_best, mut prot_best, mut errors) = (0f64, 0f64, 0u64);
    for _ in 0..if a.tiny { 1 } else { 3 } {
        // The same request on both hosts, cookie included: only the check differs.
        let (o, e1) = throughput(port, OPEN, Some(&token), a.connections, secs);
        let (p, e2) = throughput(port, WIKI, Some(&token), a.connections, secs);
        eprintln!("access bench: unprotected {o:.0}/s, protected {p:.0}/s");
        open_best = open_best.max(o);
        prot_best = prot_best.max(p);
        errors += e1 + e2;
    }
    let ratio = prot_best / open_best;

    // 2. Server-side times, one login at a time (the edge's own histograms, read after this
    // phase alone), then logins per second with several browsers at once, provider in the
    // loop (the histograms then also hold those busier logins).
    let (_, one_done, _) = logins(&s, 1, if a.tiny { 2.0 } else { 10.0 });
    let (_, metrics) = s.edge.admin_get("/access/metrics").unwrap();
    let row = |m: &str, e: &str| (quantile(m, e, "0.5"), quantile(m, e, "0.99"));
    let endpoints =
        [("/login", "login"), ("/callback", "callback"), ("code redemption", "authorized")];
    let times: Times = endpoints.iter().map(|(n, e)| (*n, row(&metrics, e))).collect();
    let syncs = if a.tiny { 100 } else { 500 };
    let (sync_p50, sync_p99) = fsync_floor(&s.edge.dir.0, syncs);
    let (lps, completed, failed) = logins(&s, a.login_workers, if a.tiny { 2.0 } else { 10.0 });
    eprintln!("access bench: {one_done} sequential logins, then {completed} ({lps:.1}/s), {failed} failed");
    let (_, metrics) = s.edge.admin_get("/access/metrics").unwrap();
    let busy: Times = endpoints.iter().map(|(n, e)| (*n, row(&metrics, e))).collect();

    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    println!("## Access bench ({})\n", if a.tiny { "tiny" } else { "full" });
    println!("| measure | value |\n|---|---|");
    println!("| unprotected keep-alive req/s | {open_best:.0} |");
    println!("| protected keep-alive req/s | {prot_best:.0} |");
    println!("| protected ÷ unprotected | {ratio:.3} |");
    println!("| complete logins/s ({} workers, provider in the loop) | {lps:.1} ({completed} done, {failed} failed) |", a.login_workers);
    for (name, (p50, p99)) in &times {
        println!(
            "| {name} server-side p50 / p99 ms, one login at a time ({one_done}) | {} / {} |",
            ms(*p50),
            ms(*p99)
        );
    }
    for (name, (p50, p99)) in &busy {
        println!("| {name} server-side p50 / p99 ms, all logins | {} / {} |", ms(*p50), ms(*p99));
    }
    println!(
        "| fdatasync of one page on the store's disk p50 / p99 ms ({syncs}, after the one-at-a-time logins) | {sync_p50:.2} / {sync_p99:.2} |"
    );
    let worst_p99 = times.iter().filter_map(|(_, (_, p99))| *p99).fold(0f64, f64::max);
    println!();
    println!(
        "- Throughput target ≥ 0.9×: {} ({ratio:.3}). The check itself verifies the token in-process from a cache of verified tokens (no store, no signature check after a token's first request): cookie parsing, the policy match, two header edits. The protected request also carries the assertion and email headers to the origin (about 0.7 kB more per request). Best of alternated rounds; other load on the machine moves both numbers.",
        if ratio >= 0.9 { "met" } else { "not met" }
    );
    println!(
        "- Server-side p99 ≤ 5 ms on the embedded store: {} (worst {worst_p99:.2} ms). Each endpoint makes one durable write (/login: one transaction for state and intent; /callback: one transaction that takes the state and stores session, code and intent, after a read of the state; the redemption: one take), one fsync of SQLite's group commit (synchronous=FULL) one login at a time, so its p99 cannot be below the disk's own fdatasync p99 ({sync_p99:.2} ms in this run); audit events are written after the response and synced off the writer. With {} browsers at once the group commit also queues (second set of rows). The provider's round trip is excluded.",
        if worst_p99 > 0.0 && worst_p99 <= 5.0 { "met" } else { "not met" },
        a.login_workers
    );
    println!("- Logins/s are bounded by the provider (node-oidc-provider, single-threaded Node) and the client, not the edge: see the endpoint times above.");
    if errors > 0 {
        println!("- {errors} throughput requests failed.");
    }

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let dir = a.results.join(stamp.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::json!({
        "tiny": a.tiny,
        "edge": bin,
        "unprotected_rps": open_best,
        "protected_rps": prot_best,
        "ratio": ratio,
        "throughput_errors": errors,
        "logins_per_sec": lps,
        "logins_completed": completed,
        "logins_failed": failed,
        "server_ms_one_at_a_time": times.iter().map(|(n, (p50, p99))| serde_json::json!({"endpoint": n, "p50": p50, "p99": p99})).collect::<Vec<_>>(),
        "fdatasync_ms": {"count": syncs, "p50": sync_p50, "p99": sync_p99},
        "server_ms_all": busy.iter().map(|(n, (p50, p99))| serde_json::json!({"endpoint": n, "p50": p50, "p99": p99})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("access.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    eprintln!("access bench: {}", dir.join("access.json").display());
}
