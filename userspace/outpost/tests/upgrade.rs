//! Upgrades without a dropped connection: under steady HTTPS load (keep-alive clients and
//! clients opening a connection per request, `tests/upgrade/load.py`), SIGUSR2 makes the
//! running `outpost run` start itself again with `--upgrade`; the new process takes the
//! listening sockets (HTTPS and admin), the old one drains and exits. Not one request fails,
//! on either I/O backend.

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
    let before = o.metric("outpost_requests_total{class=\"2xx\"}");
    assert!(before > 0, "no request reached the edge before the upgrade");
    o.signal(libc::SIGUSR2);
    let successor = wait_successor(&o, 0);
    let pid = successor.0;
    // The old process hands over, drains and exits.
    let status = o.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "old process: {status:?}; log:\n{}", o.log());
    assert!(alive(pid), "the new process is gone; log:\n{}", o.log());
    // ... and goes on past it, against the new process alone.
    thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, b"").unwrap();
    let text = lines.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(v["failed"], 0, "{v}; log:\n{}", o.log());
    assert!(v["ok"].as_u64().unwrap() > 100, "{v}");
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
    o.signal(libc::SIGUSR2);
    let first = wait_successor(&o, 0);
    assert!(o.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", o.log());
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
    let out = curl(&["-w", "\n%{http_code}", &o.url("/again")]);
    assert!(stdout(&out).ends_with("\n200"), "{}", stdout(&out));
    assert_eq!(http_get(o.admin, "/healthz").map(|(s, _)| s), Some(200));
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
