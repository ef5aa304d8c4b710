//! The packaged service: `deploy/systemd/outpost.service` verifies, its `systemd-analyze
//! security` exposure stays where it is, and `outpost run` started the way the unit starts it
//! (an unprivileged user, exactly the unit's capabilities as ambient and bounding sets, /sys/fs/bpf
//! a private tmpfs with only the pin directory bound in) attaches XDP to a veth and serves
//! HTTPS; without each of CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON it cannot attach, and without
//! CAP_NET_BIND_SERVICE it cannot listen on 443.
//!
//! systemd is installed here but is not PID 1: `systemd-analyze verify` and `security
//! --offline=yes` read the unit file alone. The unit's own sandbox (its mount namespace, seccomp
//! filter) is not started by these tests; its capability set and its bpffs layout are, with
//! `setpriv` and `unshare`. Needs root (namespaces, a throwaway system user), like CI.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use outpost_tests::netns::{self, check_tools, outpost_bin, Daemon};

/// The exposure `systemd-analyze security --offline=yes` gave the unit when it was written
/// (systemd 252: "2.0 OK"):
/// a change that raises it fails here.
const MAX_EXPOSURE: f64 = 2.0;

/// The unit's capabilities, in setpriv's spelling, as in `AmbientCapabilities=`.
const UNIT_CAPS: [&str; 4] = ["bpf", "net_admin", "perfmon", "net_bind_service"];

const LIMIT: Duration = Duration::from_secs(15);

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/outpost.service")
}

/// The unit with its binary path pointing at the built one (verify checks that it exists),
/// written under a scratch directory.
fn unit_copy(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(unit_path()).unwrap();
    assert!(text.contains("/usr/bin/outpost "), "the unit no longer runs /usr/bin/outpost");
    let text = text.replace("/usr/bin/outpost ", &format!("{} ", outpost_bin().display()));
    fs::create_dir_all(dir).unwrap();
    let copy = dir.join("outpost.service");
    fs::write(&copy, text).unwrap();
    copy
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("outpost-package-{}-{name}", std::process::id()))
}

#[test]
fn the_unit_says_what_the_docs_say() {
    let text = fs::read_to_string(unit_path()).unwrap();
    let caps = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE";
    for line in [
        format!("AmbientCapabilities={caps}"),
        format!("CapabilityBoundingSet={caps}"),
        "User=outpost".into(),
        "NoNewPrivileges=yes".into(),
        "ProtectSystem=strict".into(),
        "StateDirectory=outpost".into(),
        "ExecReload=/bin/kill -HUP $MAINPID".into(),
        "SystemCallArchitectures=native".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "the unit has no line `{line}`");
    }
}

#[test]
fn systemd_analyze_verify_passes() {
    check_tools(&[("systemd-analyze", "systemd")]);
    let dir = scratch("verify");
    let copy = unit_copy(&dir);
    // --man=no: the man pages it names come with the package, not with this checkout.
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = fs::remove_dir_all(&dir);
    assert!(out.status.success(), "systemd-analyze verify {}:\n{stderr}", copy.display());
    // verify also reports on units the system has; lines about this unit are what matter.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("outpost")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify complains:\n{}", ours.join("\n"));
}

#[test]
fn systemd_analyze_security_exposure_stays_low() {
    check_tools(&[("systemd-analyze", "systemd")]);
    let dir = scratch("security");
    let copy = unit_copy(&dir);
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = fs::remove_dir_all(&dir);
    // "→ Overall exposure level for outpost.service: 2.1 OK 🙂"
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}\n{:?}", out.stderr));
    let level: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the level in {line:?}"));
    println!("{line}");
    assert!(level <= MAX_EXPOSURE, "exposure rose to {level} (was {MAX_EXPOSURE}):\n{stdout}");
}

/// A throwaway system user, a client and an edge namespace joined by a veth pair, a pin
/// directory and a data directory owned by that user; all removed on drop.
struct Service {
    user: String,
    client_ns: String,
    edge_ns: String,
    edge_if: String,
    pin_dir: PathBuf,
    dir: PathBuf,
}

const EDGE: &str = "198.18.7.2";
const CLIENT: &str = "198.18.7.1";

impl Service {
    fn new() -> Service {
        netns::check_prerequisites();
        check_tools(&[("setpriv", "util-linux"), ("unshare", "util-linux"), ("useradd", "passwd")]);
        let pid = std::process::id();
        let s = Service {
            user: format!("outpost-t{pid}"),
            client_ns: format!("otpkc-{pid}"),
            edge_ns: format!("otpke-{pid}"),
            edge_if: format!("opk{pid}"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/outpost-package-{pid}")),
            dir: scratch("service"),
        };
        let host = |argv: &[&str]| netns::run(None, argv, LIMIT).ok();
        host(&["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", &s.user]);
        host(&["ip", "netns", "add", &s.client_ns]);
        host(&["ip", "netns", "add", &s.edge_ns]);
        let client_if = format!("opc{pid}");
        host(&[
            "ip",
            "link",
            "add",
            &s.edge_if,
            "netns",
            &s.edge_ns,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &s.client_ns,
        ]);
        for (ns, ifname, addr) in
            [(&s.edge_ns, &s.edge_if, EDGE), (&s.client_ns, &client_if, CLIENT)]
        {
            host(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            host(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            host(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifname]);
        }
        fs::create_dir_all(s.dir.join("data")).unwrap();
        fs::create_dir_all(s.dir.join("stage")).unwrap();
        fs::write(
            s.dir.join("outpost.toml"),
            format!(
                "listen = [\"{EDGE}:443\"]\nadmin = \"127.0.0.1:9901\"\ndata_dir = {:?}\n",
                s.dir.join("data").display().to_string()
            ),
        )
        .unwrap();
        host(&["chmod", "0755", s.dir.to_str().unwrap()]);
        host(&["chmod", "0644", s.dir.join("outpost.toml").to_str().unwrap()]);
        s.reset_pins();
        let owner = format!("{0}:{0}", s.user);
        host(&["chown", &owner, s.dir.join("data").to_str().unwrap()]);
        host(&["chmod", "0750", s.dir.join("data").to_str().unwrap()]);
        s
    }

    /// An empty pin directory owned by the user, as the unit's `+` ExecStartPre makes it.
    fn reset_pins(&self) {
        let pins = self.pin_dir.to_str().unwrap();
        netns::run(
            None,
            &[outpost_bin().to_str().unwrap(), "--pin-dir", pins, "detach", "--all", "--purge"],
            LIMIT,
        );
        let _ = fs::remove_dir_all(&self.pin_dir);
        let owner = format!("{0}:{0}", self.user);
        netns::run(
            None,
            &["install", "-d", "-o", &self.user, "-g", &self.user, "-m", "0750", pins],
            LIMIT,
        )
        .ok();
        let _ = owner;
    }

    /// `outpost ARGS` as the unit runs it: in the edge namespace, as the user, with `caps` as
    /// inheritable, ambient and bounding sets, and /sys/fs/bpf a tmpfs holding only the pin
    /// directory (TemporaryFileSystem= and BindPaths= of the unit).
    fn argv(&self, caps: &[&str], args: &[&str]) -> Vec<String> {
        let set = caps.iter().map(|c| format!(",+{c}")).collect::<String>();
        let pins = self.pin_dir.display().to_string();
        let stage = self.dir.join("stage").display().to_string();
        let mut inner = format!(
            "mount --bind {pins} {stage} && mount -t tmpfs -o mode=0755 tmpfs /sys/fs/bpf && \
             mkdir {pins} && mount --bind {stage} {pins} && exec nsenter --net=/run/netns/{ns} \
             setpriv --reuid={u} --regid={u} --init-groups --inh-caps=-all{set} \
             --ambient-caps=-all{set} --bounding-set=-all{set} -- {bin} --pin-dir {pins}",
            ns = self.edge_ns,
            u = self.user,
            bin = outpost_bin().display(),
        );
        for a in args {
            inner.push(' ');
            inner.push_str(a);
        }
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", &inner]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn caps_without(&self, cap: &str) -> Vec<&'static str> {
        UNIT_CAPS.iter().copied().filter(|c| *c != cap).collect()
    }

    /// Whether XDP is on the edge's veth.
    fn xdp_attached(&self) -> bool {
        let out =
            netns::run(None, &["ip", "-n", &self.edge_ns, "link", "show", &self.edge_if], LIMIT)
                .ok();
        out.stdout.contains("prog/xdp")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let bin = outpost_bin();
        let pins = self.pin_dir.to_str().unwrap_or_default();
        let _ = netns::run(
            None,
            &[bin.to_str().unwrap_or("outpost"), "--pin-dir", pins, "detach", "--all", "--purge"],
            LIMIT,
        );
        let _ = fs::remove_dir_all(&self.pin_dir);
        for ns in [&self.client_ns, &self.edge_ns] {
            let _ = netns::run(None, &["ip", "netns", "del", ns], LIMIT);
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = netns::run(None, &["userdel", &self.user], LIMIT);
    }
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    let s = Service::new();
    let attach = ["attach", "--iface", s.edge_if.as_str()];

    // Without each of the BPF ones: no attach, and nothing left on the NIC.
    for cap in ["bpf", "net_admin", "perfmon"] {
        let out = netns::run(None, &s.argv(&s.caps_without(cap), &attach), LIMIT);
        assert!(!out.success(), "attach succeeded without CAP_{}:\n{out}", cap.to_uppercase());
        assert!(!s.xdp_attached(), "XDP attached without CAP_{}", cap.to_uppercase());
        println!("without CAP_{}: {}", cap.to_uppercase(), out.stderr.lines().next().unwrap_or(""));
        s.reset_pins();
    }

    // Without CAP_NET_BIND_SERVICE: 443 cannot be bound.
    let out = netns::run(
        None,
        &s.argv(
            &s.caps_without("net_bind_service"),
            &["run", "--no-xdp", "--config", s.dir.join("outpost.toml").to_str().unwrap()],
        ),
        LIMIT,
    );
    assert!(!out.success(), "outpost run listened on 443 without CAP_NET_BIND_SERVICE:\n{out}");
    assert!(out.stderr.contains("443"), "the failure does not name the port:\n{out}");
    s.reset_pins();

    // With exactly the unit's set: XDP on the veth, HTTPS answered, legacy TLS stopped.
    let config = s.dir.join("outpost.toml");
    let mut edge = Daemon::start(
        "outpost run (unit capabilities)",
        None,
        &s.argv(&UNIT_CAPS, &["run", "--config", config.to_str().unwrap(), "--iface", &s.edge_if]),
    );
    edge.wait_ready(Duration::from_secs(30), |d| d.stderr().contains("outpost is serving"));
    assert!(s.xdp_attached(), "no XDP program on {}:\n{}", s.edge_if, edge.report());
    assert!(
        s.pin_dir.join(format!("link-{}", s.edge_if)).exists(),
        "no pinned link on the host:\n{}",
        edge.report()
    );
    let url = format!("https://{EDGE}/");
    let curl = netns::run(
        Some(&s.client_ns),
        &["curl", "-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &url],
        LIMIT,
    );
    assert_eq!(curl.stdout.trim(), "200", "curl through the XDP floor:\n{curl}\n{}", edge.report());
    let legacy = netns::run(
        Some(&s.client_ns),
        &["curl", "-sk", "--max-time", "5", "--tls-max", "1.1", "-o", "/dev/null", &url],
        LIMIT,
    );
    assert!(!legacy.success(), "a TLS 1.1 client got through:\n{legacy}");
    assert!(edge.stderr().contains("io=\"uring\""), "io_uring did not start:\n{}", edge.report());
    edge.stop(Duration::from_secs(15));
    assert!(!s.xdp_attached(), "XDP left attached after the stop:\n{}", edge.report());
}
