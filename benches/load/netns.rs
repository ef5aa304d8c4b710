//! The flood scenario's wire: a client namespace and an edge namespace joined by a veth pair at
//! MTU 1500 (198.18.2.0/24), the `pass` program on the client end (XDP_TX resets from the edge
//! reach the client only if that end has an XDP program), and on the edge end either outpost's
//! floor or the same `pass` program (the "XDP off" baseline keeps the veth path identical:
//! native XDP on veth changes how packets are delivered, so the floor is compared with a
//! program that does nothing rather than with no program).
//!
//! Everything is removed on drop; leftovers of a killed run (names carry the PID) are removed by
//! the next [`Wire::new`]. Commands that load or pin go through `nsenter --net`, which keeps
//! /sys/fs/bpf visible (`ip netns exec` remounts /sys).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::procs;

pub const CLIENT_V4: &str = "198.18.2.1";
pub const EDGE_V4: &str = "198.18.2.2";
const MTU: &str = "1500";
const CLIENT_NS_PREFIX: &str = "olc-";
const EDGE_NS_PREFIX: &str = "ole-";
const PIN_PREFIX: &str = "outpost-load-";
const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";
const LIMIT: Duration = Duration::from_secs(20);

/// What sits on the edge end of the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeXdp {
    /// The `pass` program: the userspace floor does all the work.
    Pass,
    /// outpost's floor in this mode.
    Floor(&'static str),
}

pub struct Wire {
    pub client_ns: String,
    pub edge_ns: String,
    client_if: String,
    edge_if: String,
    pin_dir: PathBuf,
    outpost: PathBuf,
    edge_xdp: Option<EdgeXdp>,
}

impl Wire {
    pub fn new(outpost: &Path) -> Result<Wire> {
        remove_stale(outpost);
        let pid = std::process::id();
        let w = Wire {
            client_ns: format!("{CLIENT_NS_PREFIX}{pid}-0"),
            edge_ns: format!("{EDGE_NS_PREFIX}{pid}-0"),
            // IFNAMSIZ: at most 15 characters.
            client_if: format!("olc{pid}"),
            edge_if: format!("ole{pid}"),
            pin_dir: Path::new(BPFFS).join(format!("{PIN_PREFIX}{pid}-0")),
            outpost: outpost.to_owned(),
            edge_xdp: None,
        };
        // From here a failure drops `w`, which removes what was built.
        w.build()?;
        Ok(w)
    }

    fn build(&self) -> Result<()> {
        let (c, e) = (self.client_ns.as_str(), self.edge_ns.as_str());
        host(&["ip", "netns", "add", c])?;
        host(&["ip", "netns", "add", e])?;
        host(&[
            "ip",
            "link",
            "add",
            &self.edge_if,
            "netns",
            e,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            c,
        ])?;
        for (ns, ifname, v4) in [(c, &self.client_if, CLIENT_V4), (e, &self.edge_if, EDGE_V4)] {
            host(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            host(&["ip", "-n", ns, "link", "set", ifname, "mtu", MTU, "up"])?;
            host(&["ip", "-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
        }
        // Per-namespace sysctls: these change nothing outside the namespaces.
        self.in_ns(c, &["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])?;
        self.in_ns(e, &["sysctl", "-q", "-w", "net.core.somaxconn=65535"])?;
        self.in_ns(e, &["sysctl", "-q", "-w", "net.ipv4.tcp_max_syn_backlog=65535"])?;
        self.outpost_in(c, &["attach", "--iface", &self.client_if, "--program", "pass"])?;
        Ok(())
    }

    fn in_ns(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let net = format!("--net={NETNS_DIR}/{ns}");
        let mut full = vec!["nsenter", net.as_str(), "--"];
        full.extend(argv);
        procs::run(&full, LIMIT)
    }

    fn outpost_in(&self, ns: &str, args: &[&str]) -> Result<String> {
        let bin = self.outpost.display().to_string();
        let pin = self.pin_dir.display().to_string();
        let mut argv = vec![bin.as_str(), "--pin-dir", pin.as_str()];
        argv.extend(args);
        self.in_ns(ns, &argv)
    }

    /// Puts `xdp` on the edge end (detaching what was there).
    pub fn set_edge_xdp(&mut self, xdp: EdgeXdp, port: u16) -> Result<()> {
        let e = self.edge_ns.clone();
        if self.edge_xdp.is_some() {
            self.outpost_in(&e, &["detach", "--iface", &self.edge_if])?;
            self.edge_xdp = None;
        }
        match xdp {
            EdgeXdp::Pass => {
                self.outpost_in(&e, &["attach", "--iface", &self.edge_if, "--program", "pass"])?;
            }
            EdgeXdp::Floor(mode) => {
                self.outpost_in(&e, &["attach", "--iface", &self.edge_if])?;
                let port = port.to_string();
                self.outpost_in(
                    &e,
                    &["policy", "set", "--min-version", "1.2", "--mode", mode, "--ports", &port],
                )?;
            }
        }
        self.edge_xdp = Some(xdp);
        Ok(())
    }

    /// Where outpost's maps and links for this wire are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// `outpost stats --json` (counters since the maps were created).
    pub fn stats(&self) -> Result<Value> {
        let out = self.outpost_in(&self.edge_ns.clone(), &["stats", "--json"])?;
        serde_json::from_str(&out).context("`outpost stats --json` printed no JSON")
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        teardown(&self.outpost, &self.pin_dir, &[&self.client_ns, &self.edge_ns]);
    }
}

fn host(argv: &[&str]) -> Result<String> {
    procs::run(argv, LIMIT)
}

fn teardown(outpost: &Path, pin_dir: &Path, namespaces: &[&str]) {
    if pin_dir.exists() {
        let bin = outpost.display().to_string();
        let pin = pin_dir.display().to_string();
        if let Err(e) = host(&[&bin, "--pin-dir", &pin, "detach", "--all", "--purge"]) {
            eprintln!("outpost-load: detaching XDP failed: {e:#}");
        }
        if pin_dir.exists() {
            let _ = fs::remove_dir_all(pin_dir);
        }
    }
    for ns in namespaces {
        if Path::new(NETNS_DIR).join(ns).exists() {
            if let Err(e) = host(&["ip", "netns", "del", ns]) {
                eprintln!("outpost-load: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

/// The PID in a name `PREFIX<pid>-<n>`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(prefix)?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn remove_stale(outpost: &Path) {
    for entry in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = owner_pid(&name, CLIENT_NS_PREFIX).or_else(|| owner_pid(&name, EDGE_NS_PREFIX));
        if owner.is_none_or(pid_alive) {
            continue;
        }
        // A server of the dead run keeps the namespace alive: stop it.
        if let Ok(pids) = host(&["ip", "netns", "pids", &name]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        teardown(outpost, Path::new("/nonexistent"), &[&name]);
    }
    for entry in fs::read_dir(BPFFS).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name, PIN_PREFIX).is_some_and(|p| !pid_alive(p)) {
            teardown(outpost, &entry.path(), &[]);
        }
    }
}
