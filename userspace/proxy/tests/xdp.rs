//! `outpost run --iface`: the XDP floor in front of the proxy, on a veth wire.
//!
//! A client network namespace is joined to the host by a veth pair; outpost runs on the host,
//! listens on the host end and attaches the floor to it (native XDP), with a private pin
//! directory. Needs root (CAP_BPF, CAP_NET_ADMIN) and fails without it.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use outpost_testkit::*;

/// The topology, torn down on drop (panics included).
struct Wire {
    ns: String,
    host_if: String,
    pin_dir: String,
    prefix: String,
}

impl Wire {
    fn new() -> Wire {
        // SAFETY: no arguments.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (XDP attach, namespaces)");
        let id = std::process::id() % 100_000;
        let w = Wire {
            ns: format!("opx-{id}"),
            host_if: format!("opxh{id}"),
            pin_dir: format!("/sys/fs/bpf/outpost-proxytest-{id}"),
            prefix: format!("198.19.{}", id % 250),
        };
        let peer = format!("opxc{id}");
        sh(&["ip", "netns", "add", &w.ns]);
        sh(&["ip", "link", "add", &w.host_if, "type", "veth", "peer", "name", &peer]);
        sh(&["ip", "link", "set", &peer, "netns", &w.ns]);
        sh(&["ip", "addr", "add", &format!("{}.2/24", w.prefix), "dev", &w.host_if]);
        sh(&["ip", "link", "set", &w.host_if, "up"]);
        w.exec(&["ip", "addr", "add", &format!("{}.1/24", w.prefix), "dev", &peer]);
        w.exec(&["ip", "link", "set", &peer, "up"]);
        w.exec(&["ip", "link", "set", "lo", "up"]);
        w
    }

    fn exec(&self, args: &[&str]) {
        let mut a = vec!["ip", "netns", "exec", &self.ns];
        a.extend_from_slice(args);
        sh(&a);
    }

    fn host(&self) -> String {
        format!("{}.2", self.prefix)
    }

    /// curl from the client namespace.
    fn curl(&self, args: &[&str]) -> std::process::Output {
        run_client(
            Command::new(tool("ip"))
                .args([
                    "netns",
                    "exec",
                    &self.ns,
                    tool("curl"),
                    "-sk",
                    "--http1.1",
                    "--max-time",
                    "5",
                ])
                .args(args),
            Duration::from_secs(8),
        )
    }

    fn attached(&self) -> bool {
        std::path::Path::new(&self.pin_dir).join(format!("link-{}", self.host_if)).exists()
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let bin = outpost_bin();
        let _ = Command::new(&bin)
            .args(["--pin-dir", &self.pin_dir, "detach", "--all", "--purge"])
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn sh(args: &[&str]) {
    let out = run_client(Command::new(tool(args[0])).args(&args[1..]), Duration::from_secs(15));
    assert!(out.status.success(), "{args:?} failed: {out:?}");
}

#[test]
fn run_attaches_the_floor_and_reports_kernel_counters() {
    let wire = Wire::new();
    let origin = Origin::start("a");
    let port = free_port();
    // Drop mode: a legacy hello never reaches userspace, so the two sets of counters differ.
    let extra = format!(
        "listen = [\"{}:{port}\"]\n[floor]\nmode = \"drop\"\n{}",
        wire.host(),
        route("*", "/", &[origin.addr()], "")
    );
    let mut o = Outpost::start_with(
        "uring",
        &extra,
        &["--pin-dir", &wire.pin_dir],
        &["--iface", &wire.host_if],
    );
    assert!(wire.attached(), "no link pinned for {}; log:\n{}", wire.host_if, o.log());
    let url = format!("https://{}:{port}/", wire.host());
    let out = wire.curl(&["--tlsv1.3", &url]);
    assert!(stdout(&out).contains("header X-Outpost-TLS-Version: TLSv1.3"), "{out:?}");
    let started = Instant::now();
    let out = wire
        .curl(&[&CURL_TLS1_0[..], &["--connect-timeout", "2", "--max-time", "2", &url]].concat());
    assert_eq!(out.status.code(), Some(28), "a dropped hello times out: {out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let kernel = |v: &str, d: &str| {
        o.metric(&format!("outpost_kernel_hellos_total{{version=\"{v}\",verdict=\"{d}\"}}"))
    };
    let user = |v: &str, d: &str| {
        o.metric(&format!("outpost_hellos_total{{version=\"{v}\",verdict=\"{d}\"}}"))
    };
    assert_eq!(kernel("TLS1.3", "pass"), 1);
    assert!(kernel("TLS1.0", "drop") >= 1, "{}", o.metrics());
    assert_eq!(user("TLS1.3", "pass"), 1);
    assert_eq!(
        user("TLS1.0", "drop") + user("TLS1.0", "pass") + user("TLS1.0", "reject"),
        0,
        "the kernel let a legacy hello through"
    );
    // SIGTERM: drained, exited, and detached (no --keep-attached).
    o.signal(libc::SIGTERM);
    let status = o.wait_exit(Duration::from_secs(10)).expect("outpost did not exit");
    assert!(status.success(), "{status}; log:\n{}", o.log());
    let deadline = Instant::now() + Duration::from_secs(2);
    while wire.attached() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(!wire.attached(), "still attached after exit; log:\n{}", o.log());
}
