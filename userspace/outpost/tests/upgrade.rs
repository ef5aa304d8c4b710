//! Upgrades without a dropped connection: under steady HTTPS load (keep-alive clients and
//! clients opening a connection per request, `tests/upgrade/load.py`), SIGUSR2 makes the
//! running `outpost run` start itself again with `--upgrade`; the new process takes the
//! listening sockets (HTTPS and admin), the old one drains and exits. Not one request fails,
//! on either I/O backend, and the counters of `/metrics` go on: they never go down, whichever
//! process answers, and in the end count every request either process answered.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use outpost_testkit::*;
use serde_json::Value;

/// The `n`-th successor's PID (from 0), from the log line of the process that started it.
fn successor_pid(o: &Outpost, n: usize) -> Option<i32> {
    let log = o.log();
    let line = log.lines().filter(|l| l.contains("started the new binary to take over")).nth(n)?;
    let at = line.find("pid=")? + 4;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Waits for the `n`-th successor to be started.
fn wait_successor(o: &Outpost, n: usize) -> Successor {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = successor_pid(o, n) {
            return Successor(pid);
        }
        assert!(Instant::now() < deadline, "no successor started; log:\n{}", o.log());
        thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Stops the successor (started by the old process, so not the testkit's child) by PID.
struct Successor(i32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: a PID this test saw started; SIGKILL takes no memory.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// `outpost_requests_total` (every class and protocol) and `outpost_connections_total`, as a
/// scrape of the admin listener sees them (the old process or the new one answers).
fn counters(o: &Outpost) -> [u64; 2] {
    let text = o.metrics();
    ["outpost_requests_total", "outpost_connections_total"]
        .map(|s| metric_in(&text, s).unwrap_or_else(|| panic!("no {s} in /metrics:\n{text}")))
}

/// Scrapes of `counters`, in order, each with when it was taken.
#[derive(Default)]
struct Scrapes(Vec<(&'static str, [u64; 2])>);

impl Scrapes {
    fn take(&mut self, o: &Outpost, when: &'static str) -> [u64; 2] {
        let c = counters(o);
        self.0.push((when, c));
        c
    }

    /// Scrapes until `requests_total` reaches `want` (what the old process's drain counted
    /// follows its exit), at most 10 s.
    fn until(&mut self, o: &Outpost, want: u64) -> [u64; 2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.take(o, "at the end");
            if c[0] >= want || Instant::now() > deadline {
                return c;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_never_decrease(&self, o: &Outpost) {
        for w in self.0.windows(2) {
            let ((a, x), (b, y)) = (w[0], w[1]);
            assert!(
                x[0] <= y[0] && x[1] <= y[1],
                "[requests, connections] went down from {a} {x:?} to {b} {y:?}; all: {:?}; \
                 log:\n{}",
                self.0,
                o.log()
            );
        }
    }
}

/// `GET path` over HTTPS, which must answer 200.
fn get(o: &Outpost, path: &str) {
    let out = curl(&["-w", "\n%{http_code}", &o.url(path)]);
    assert!(stdout(&out).ends_with("\n200"), "{}", stdout(&out));
}

/// The load generator, stopped by PID whatever happens.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn upgrade_under_load(io: &str) {
    let origin = Origin::start("a");
    let mut o = Outpost::start(io, &route("*", "/", &[origin.addr()], ""));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upgrade/load.py");
    let stop = o.dir.0.join("stop-load");
    let mut load = Load(
        Command::new(python())
            .arg(&script)
            .args(["--port", &o.https.to_string(), "--seconds", "60", "--stop"])
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the load"),
    );
    let (tx, lines) = mpsc::channel();
    let out = load.0.stdout.take().expect("piped");
    thread::spawn(move || {
        BufReader::new(out).lines().map_while(Result::ok).try_for_each(|l| tx.send(l))
    });
    // The load is on before the upgrade begins ...
    let line = lines.recv_timeout(Duration::from_secs(15));
    assert_eq!(line.as_deref(), Ok("started"), "the load did not start; log:\n{}", o.log());
    // (A request is counted after its response is written: the load may see it first.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while o.metric("outpost_requests_total{class=\"2xx\"}") == 0 {
        assert!(Instant::now() < deadline, "no request reached the edge before the upgrade");
        thread::sleep(Duration::from_millis(20));
    }
    // A keep-alive connection left idle: the old process waits 2 s for its next request after
    // the hand-over, so its drain lasts long enough to scrape during it.
    let mut idle = TlsSession::connect(o.https);
    assert!(idle.send(b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    assert!(idle.read_until("200 OK", Duration::from_secs(5)), "{}", idle.text());
    let mut scrapes = Scrapes::default();
    scrapes.take(&o, "before SIGUSR2");
    o.signal(libc::SIGUSR2);
    let successor = wait_successor(&o, 0);
    let pid = successor.0;
    // The old process hands over, drains and exits; scrapes meanwhile reach the new one (the
    // old one stopped accepting on the admin socket at the hand-over).
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = o.wait_exit(Duration::from_millis(50)) {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        scrapes.take(&o, "during the drain");
    };
    assert!(status.is_some_and(|s| s.success()), "old process: {status:?}; log:\n{}", o.log());
    assert!(alive(pid), "the new process is gone; log:\n{}", o.log());
    let during = scrapes.0.iter().filter(|(w, _)| *w == "during the drain").count();
    assert!(during >= 3, "{during} scrapes during the drain: {:?}", scrapes.0);
    scrapes.take(&o, "after the old process exited");
    // ... and goes on past it, against the new process alone.
    thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, b"").unwrap();
    let text = lines.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(v["failed"], 0, "{v}; log:\n{}", o.log());
    let ok = v["ok"].as_u64().unwrap();
    assert!(ok > 100, "{v}");
    // Every request (the load's and the idle connection's one) was answered by one process or
    // the other, and counted once: the old one's up to the hand-over (its snapshot), during its
    // drain (sent at its exit), and the new one's. (A request is counted after its response is
    // written: hence the wait.)
    let [requests, _] = scrapes.until(&o, ok + 1);
    eprintln!("[requests, connections] scraped: {:?}", scrapes.0);
    scrapes.assert_never_decrease(&o);
    assert_eq!(requests, ok + 1, "requests counted vs answered; {:?}", scrapes.0);
    assert!(o.log().contains("added what the old process counted while draining"), "{}", o.log());
    // The new process serves alone now: HTTPS and the admin listener it took over.
    assert_eq!(http_get(o.admin, "/healthz").map(|(s, _)| s), Some(200));
    let out = curl(&["-w", "\n%{http_code}", &o.url("/after")]);
    assert!(stdout(&out).ends_with("\n200"), "{}", stdout(&out));
    let log = o.log();
    assert!(log.contains("upgrade: took over from the old process"), "{log}");
}

#[test]
fn sigusr2_upgrades_under_load_without_a_failed_request_uring() {
    upgrade_under_load("uring");
}

#[test]
fn sigusr2_upgrades_under_load_without_a_failed_request_epoll() {
    upgrade_under_load("epoll");
}

/// The new process can be upgraded in turn: the upgrade socket is its own.
#[test]
fn an_upgraded_edge_upgrades_again() {
    let origin = Origin::start("a");
    let mut o = Outpost::start("epoll", &route("*", "/", &[origin.addr()], ""));
    get(&o, "/one");
    get(&o, "/two");
    o.signal(libc::SIGUSR2);
    let first = wait_successor(&o, 0);
    assert!(o.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", o.log());
    get(&o, "/three");
    // SAFETY: a PID this test saw started.
    unsafe { libc::kill(first.0, libc::SIGUSR2) };
    let second = wait_successor(&o, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(first.0) {
        assert!(
            Instant::now() < deadline,
            "the first successor did not hand over; log:\n{}",
            o.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(second.0), "{}", o.log());
    get(&o, "/again");
    assert_eq!(http_get(o.admin, "/healthz").map(|(s, _)| s), Some(200));
    // The counters went through both upgrades: two requests before the first, one between.
    let mut scrapes = Scrapes::default();
    let [requests, connections] = scrapes.until(&o, 4);
    assert_eq!([requests, connections], [4, 4], "{:?}; log:\n{}", scrapes.0, o.log());
}

#[test]
fn upgrade_without_a_running_edge_says_so() {
    let dir = TempDir::new("upgrade-alone");
    let config = dir.0.join("outpost.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", dir.0.join("data"))).unwrap();
    let out = Command::new(outpost_bin())
        .args(["run", "--no-xdp", "--upgrade", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("taking over from the running edge"), "{err}");
}
