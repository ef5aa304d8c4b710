//! Who connects, end to end: real clients of several versions in a client namespace, `outpost
//! run` in the edge namespace (with the XDP floor recording in the kernel, and with the userspace
//! floor recording its own hellos), and `outpost clients --json` against what FoxIO's reference
//! implementation (`ja4plus`, over a tcpdump capture of the same connections) says each hello's
//! JA4 is. Then a flood of random hellos: the table stays within `[clients] top`, and every
//! decided hello is either in the table or counted as a dropped record.
//!
//! Needs root, the namespace tools and the tests' Python with `ja4plus` (`cargo xtask setup`);
//! fails, naming what is missing, without them.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use outpost_tests::{
    edge::{Edge, Floor, ADMIN, CLIENT_V4, EDGE_V4, HTTPS_PORT},
    netns::{self, Client, Daemon, Family},
};
use serde_json::Value;

/// How long a client may take (a refused one learns it at once or after one retransmission).
const CLIENT_WAIT: Duration = Duration::from_secs(3);
/// Longest the reference may take over a capture.
const REFERENCE_LIMIT: Duration = Duration::from_secs(60);
/// Longest the table may take to show what the clients sent (the kernel's records go through
/// a ring buffer and a reader thread).
const SETTLE: Duration = Duration::from_secs(5);
/// The server name the named client sends.
const NAME: &str = "app.edge.test";

use outpost_tests::both_floors;

both_floors!(
    real_clients_show_with_the_reference_ja4,
    random_hellos_keep_the_table_bounded,
    disabled_records_nothing,
);

/// `[clients] enabled = false`: no table, no endpoint, no series, and the kernel makes no
/// records.
fn disabled_records_nothing(floor: Floor) {
    let edge = Edge::new(floor, "[clients]\nenabled = false\n");
    for client in [Client::OpensslTls10, Client::CurlDefault] {
        println!("{}", edge.run_client(client, Family::V4, CLIENT_WAIT).line());
    }
    let config = edge.dir.join("outpost.toml");
    let argv = [
        edge.outpost_bin.to_str().expect("UTF-8 path"),
        "clients",
        "--admin",
        ADMIN,
        "--config",
        config.to_str().expect("UTF-8 path"),
    ];
    let out = netns::run(Some(&edge.edge_ns), &argv, Duration::from_secs(15));
    assert!(!out.success() && out.stderr.contains("answered 404"), "{out}");
    let metrics = edge.metrics();
    assert!(!metrics.contains("outpost_client_hellos_total"), "{metrics}");
    if floor == Floor::Xdp {
        let stats = edge.kernel_stats();
        assert_eq!(stats["parse"]["hello_record_sent"].as_u64(), Some(0), "{stats}");
        // The hellos were decided all the same.
        assert_eq!(stats["versions"]["TLS1.0"]["reject"].as_u64(), Some(1), "{stats}");
    }
}

/// With the XDP floor attached by `outpost attach` and no edge running, `outpost clients
/// --watch` reads the kernel's records itself: hellos of one segment and of two (followed
/// across segments) show with the reference's JA4 and the kernel's verdict; recording goes off
/// when it ends.
#[test]
fn watch_without_an_edge_reads_the_kernel_records() {
    use outpost_tests::netns::Topology;
    let _ = venv_python();
    let mut t = Topology::new();
    let server = t.start_tls_server(443);
    let dir = std::env::temp_dir().join(format!("outpost-clients-watch-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    // No admin listener answers on port 1: the command reads the ring buffer here.
    let pins = t.pin_dir.to_str().expect("UTF-8").to_owned();
    let bin = t.outpost.to_str().expect("UTF-8").to_owned();
    let argv = [
        bin.as_str(),
        "--pin-dir",
        &pins,
        "clients",
        "--watch",
        "1",
        "--json",
        "--admin",
        "127.0.0.1:1",
        "--config",
        "/nonexistent/outpost.toml",
    ];
    let mut watch = Daemon::start("outpost clients --watch", Some(&t.edge_ns), &argv);
    watch.wait_ready(Duration::from_secs(10), |d| d.stderr().contains("reading the XDP"));
    let pcap = Pcap::on(&t.client_ns, &t.client_if, dir.join("watch.pcap"));
    // ALPN names adding up to 1.8 kB: such a hello cannot fit one segment at MTU 1500.
    let big: String =
        (0..9).map(|i| format!("p{i}{}", "x".repeat(197))).collect::<Vec<_>>().join(",");
    let mut runs = Vec::new();
    for (client, extra) in [
        (Client::OpensslTls10, vec![]),
        (Client::OpensslTls13, vec![]),
        (Client::OpensslTls13, vec!["-alpn", big.as_str()]),
        (Client::OpensslTls10, vec!["-alpn", big.as_str()]),
    ] {
        let r = netns::run_client_in(
            &t.client_ns,
            netns::EDGE_V4,
            client,
            Family::V4,
            443,
            CLIENT_WAIT,
            &extra,
        );
        println!("{}", r.line());
        runs.push(r);
    }
    let reference = pcap.reference();
    assert_eq!(reference.len(), runs.len(), "the reference's hellos: {reference:?}");
    let deadline = std::time::Instant::now() + SETTLE + Duration::from_secs(2);
    let last = loop {
        let out = watch.stdout();
        let last: Option<Value> = out.lines().rev().find_map(|l| serde_json::from_str(l).ok());
        let done = last.as_ref().and_then(|v| v["total"].as_u64()) >= Some(runs.len() as u64);
        if done || std::time::Instant::now() > deadline {
            break last.unwrap_or_else(|| panic!("no table printed:\n{}", watch.report()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    watch.signal(libc::SIGINT);
    let status = watch.wait_exit(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "did not end cleanly:\n{}", watch.report());
    println!("{}", serde_json::to_string_pretty(&last).unwrap());
    assert_eq!(last["total"].as_u64(), Some(runs.len() as u64), "{last}");
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for ja4 in reference.values() {
        *expected.entry(ja4.as_str()).or_default() += 1;
    }
    let mut got: BTreeMap<&str, u64> = BTreeMap::new();
    for row in last["rows"].as_array().expect("rows") {
        let ja4 = row["ja4"].as_str().expect("ja4");
        *got.entry(ja4).or_default() += row["count"].as_u64().expect("count");
        let legacy = version_of(ja4) == "TLS1.0";
        assert_eq!(row["verdict"], if legacy { "reject" } else { "pass" }, "{row}");
    }
    assert_eq!(got, expected, "JA4s against the reference's");
    // The kernel counted what it sent, and recording is off again: one more hello makes no
    // record.
    let again = netns::run_client_in(
        &t.client_ns,
        netns::EDGE_V4,
        Client::OpensslTls13,
        Family::V4,
        443,
        CLIENT_WAIT,
        &[],
    );
    println!("after the watch: {}", again.line());
    let stats = t.stats();
    println!("{stats}");
    let sent = stats["parse"]["hello_record_sent"].as_u64();
    assert_eq!(sent, Some(runs.len() as u64), "{stats}");
    t.stop_server(server);
    let _ = fs::remove_dir_all(&dir);
}

/// The tests' Python, which has `ja4plus`.
fn venv_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
    assert!(p.is_file(), "{} is missing: run `cargo xtask setup`", p.display());
    p
}

/// JA4 of every ClientHello in `pcap` by FoxIO's reference: one per client source port (a
/// retransmitted hello is the same connection).
const REFERENCE: &str = r#"
import json, sys
from scapy.all import rdpcap
from ja4plus import JA4Fingerprinter
fp = JA4Fingerprinter()
for pkt in rdpcap(sys.argv[1]):
    fp.process_packet(pkt)
by_port = {}
for e in fp.fingerprints:
    by_port[e["srcport"]] = e["fingerprint"]
print(json.dumps(by_port))
"#;

/// tcpdump writing the client wire's segments to the edge's port into a pcap.
struct Pcap {
    daemon: Daemon,
    path: PathBuf,
}

impl Pcap {
    fn start(edge: &Edge) -> Pcap {
        Pcap::on(&edge.client_ns, &edge.client_if, edge.dir.join("clients.pcap"))
    }

    /// tcpdump in namespace `ns` on interface `ifname`, into `path`.
    fn on(ns: &str, ifname: &str, path: PathBuf) -> Pcap {
        let net = format!("--net=/run/netns/{ns}");
        let argv = [
            "nsenter",
            net.as_str(),
            "--",
            "tcpdump",
            // Without it packets wait in the kernel for a block to fill, and the last ones
            // before the stop would be missed.
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-i",
            ifname,
            "-w",
            path.to_str().expect("UTF-8 path"),
            "tcp dst port 443",
        ];
        let mut daemon = Daemon::start("tcpdump", None, &argv);
        daemon.wait_ready(Duration::from_secs(10), |d| d.stderr().contains("listening on"));
        Pcap { daemon, path }
    }

    /// Stops the capture and asks the reference: JA4 by client port.
    fn reference(mut self) -> BTreeMap<String, String> {
        self.daemon.signal(libc::SIGINT);
        self.daemon.wait_exit(Duration::from_secs(5));
        let python = venv_python();
        let argv = [python.to_str().expect("UTF-8"), "-c", REFERENCE, self.path.to_str().unwrap()];
        let size = fs::metadata(&self.path).map_or(0, |m| m.len());
        println!("capture: {} bytes\n{}", size, self.daemon.report());
        let out = netns::run(None, &argv, REFERENCE_LIMIT).ok();
        let map: BTreeMap<String, String> = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("the reference's answer: {e}\n{out}"));
        map
    }
}

/// `outpost ARGS` in the edge namespace, with this edge's pins, admin listener and token.
fn cli(edge: &Edge, args: &[&str]) -> netns::Output {
    let config = edge.dir.join("outpost.toml");
    let mut argv = vec![
        edge.outpost_bin.to_str().expect("UTF-8 path"),
        "--pin-dir",
        edge.pin_dir.to_str().expect("UTF-8 path"),
    ];
    argv.extend(args);
    argv.extend(["--admin", ADMIN, "--config", config.to_str().expect("UTF-8 path")]);
    netns::run(Some(&edge.edge_ns), &argv, Duration::from_secs(15)).ok()
}

/// `outpost clients --json` (every row).
fn table(edge: &Edge) -> Value {
    let out = cli(edge, &["clients", "--json", "--top", "1000"]);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("clients --json: {e}\n{out}"))
}

/// The offered version a JA4 names (`t10…` is TLS 1.0), as the table names versions.
fn version_of(ja4: &str) -> &'static str {
    match &ja4[1..3] {
        "13" => "TLS1.3",
        "12" => "TLS1.2",
        "11" => "TLS1.1",
        "10" => "TLS1.0",
        "s3" => "SSLv3",
        other => panic!("unexpected version {other} in {ja4}"),
    }
}

fn real_clients_show_with_the_reference_ja4(floor: Floor) {
    netns::check_tools(&[("tcpdump", "tcpdump")]);
    let _ = venv_python();
    let edge = Edge::new(floor, "");
    let pcap = Pcap::start(&edge);
    // Every client of the proxy tests (OpenSSL 1.0 to 1.3, curl, Python), by address (no
    // server name), then curl with a name.
    for client in Client::ALL {
        let r = edge.run_client(client, Family::V4, CLIENT_WAIT);
        println!("{}", r.line());
    }
    let resolve = format!("{NAME}:{HTTPS_PORT}:{EDGE_V4}");
    let url = format!("https://{NAME}:{HTTPS_PORT}/");
    let named = ["curl", "-sk", "-o", "/dev/null", "-m", "5", "--resolve", &resolve, &url];
    netns::run(Some(&edge.client_ns), &named, Duration::from_secs(8)).ok();
    let reference = pcap.reference();
    assert_eq!(reference.len(), Client::ALL.len() + 1, "the reference's hellos: {reference:?}");
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for ja4 in reference.values() {
        *expected.entry(ja4.as_str()).or_default() += 1;
    }

    // What the table says, once the records are in.
    let deadline = std::time::Instant::now() + SETTLE;
    let t = loop {
        let t = table(&edge);
        if t["total"].as_u64() >= Some(reference.len() as u64)
            || std::time::Instant::now() > deadline
        {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{}", serde_json::to_string_pretty(&t).unwrap());
    assert_eq!(t["total"].as_u64(), Some(reference.len() as u64), "one record per hello");
    let rows = t["rows"].as_array().expect("rows");
    let mut got: BTreeMap<&str, u64> = BTreeMap::new();
    for row in rows {
        let ja4 = row["ja4"].as_str().expect("ja4");
        *got.entry(ja4).or_default() += row["count"].as_u64().expect("count");
        // Each row agrees with its fingerprint and with the floor (TLS 1.2, reject).
        let version = version_of(ja4);
        assert_eq!(row["version"], version, "{row}");
        let legacy = matches!(version, "TLS1.0" | "TLS1.1" | "SSLv3");
        assert_eq!(row["verdict"], if legacy { "reject" } else { "pass" }, "{row}");
        let named = &ja4[3..4] == "d";
        // The Python client names `edge.test`; the named curl NAME.
        match named {
            true => assert!(row["sni"] == NAME || row["sni"] == "edge.test", "{row}"),
            false => assert!(row["sni"].is_null(), "{row}"),
        }
        match &ja4[8..10] {
            "00" => assert!(row["alpn"].is_null(), "{row}"),
            "h2" => assert_eq!(row["alpn"], "h2", "{row}"),
            "h1" => assert_eq!(row["alpn"], "http/1.1", "{row}"),
            other => panic!("unexpected ALPN {other} in {row}"),
        }
        // Networks only: the client's /24, never its address.
        let network = format!("{}.0/24", CLIENT_V4.rsplit_once('.').expect("IPv4").0);
        assert_eq!(row["networks"], serde_json::json!([network]), "{row}");
    }
    assert_eq!(got, expected, "JA4s in the table against the reference's");
    assert!(rows.iter().any(|r| r["sni"] == NAME && r["alpn"] == "h2"), "no row for {NAME}");
    // The names shipped for clients captured on this machine.
    assert!(
        rows.iter().any(|r| r["name"].as_str().is_some_and(|n| n.contains("OpenSSL"))),
        "no row named OpenSSL: {t}"
    );

    // The same through the text table, and what a TLS 1.3 floor would refuse.
    let text = cli(&edge, &["clients", "--version", "1.0"]);
    assert!(text.stdout.contains("TLS1.0") && !text.stdout.contains("TLS1.3"), "{text}");
    let sim = cli(&edge, &["policy", "simulate", "--min-version", "1.3", "--json"]);
    let sim: Value = serde_json::from_str(&sim.stdout).expect("simulate --json");
    let below_13 = reference.values().filter(|j| version_of(j) != "TLS1.3").count() as u64;
    assert_eq!(sim["refused"].as_u64(), Some(below_13), "{sim}");
    assert_eq!(sim["total"].as_u64(), Some(reference.len() as u64), "{sim}");

    // Prometheus: the fingerprints' series add up to the hellos recorded.
    let metrics = edge.metrics();
    let series: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("outpost_client_hellos_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(series, reference.len() as u64, "{metrics}");
}

/// Random ClientHellos, each with its own cipher suites and extensions (a distinct JA4), sent
/// over raw TCP connections from the client namespace; prints how many it sent.
const FLOOD: &str = r#"
import os, random, socket, struct, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
def hello():
    ciphers = rng.sample(range(0x0001, 0xff00), rng.randint(1, 30))
    exts = b""
    for t in rng.sample(range(0x0100, 0xfe00), rng.randint(0, 12)):
        exts += struct.pack(">HH", t, 0)
    version = rng.choice([0x0301, 0x0302, 0x0303])
    body = struct.pack(">H", version) + os.urandom(32) + b"\x00"
    body += struct.pack(">H", 2 * len(ciphers)) + b"".join(struct.pack(">H", c) for c in ciphers)
    body += b"\x01\x00" + struct.pack(">H", len(exts)) + exts
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs
sent = 0
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(hello())
            s.settimeout(0.5)
            try:
                s.recv(64)
            except OSError:
                pass
        sent += 1
    except OSError:
        pass
print(sent)
"#;

fn random_hellos_keep_the_table_bounded(floor: Floor) {
    const TOP: u64 = 50;
    const HELLOS: u64 = 1500;
    let edge = Edge::new(floor, &format!("[clients]\ntop = {TOP}\n"));
    let port = HTTPS_PORT.to_string();
    let count = HELLOS.to_string();
    let argv = ["python3", "-c", FLOOD, EDGE_V4, port.as_str(), count.as_str()];
    let out = netns::run(Some(&edge.client_ns), &argv, Duration::from_secs(240)).ok();
    let sent: u64 = out.stdout.trim().parse().unwrap_or_else(|_| panic!("{out}"));
    assert!(sent > HELLOS * 9 / 10, "only {sent} of {HELLOS} connections: {out}");

    // Every hello decided: in the table, or a record the kernel had to drop (counted).
    let deadline = std::time::Instant::now() + SETTLE;
    let (t, dropped) = loop {
        let t = table(&edge);
        let dropped =
            Edge::metric_in(&edge.metrics(), "outpost_client_records_dropped_total").unwrap_or(0);
        let total = t["total"].as_u64().unwrap_or(0);
        if total + dropped >= sent || std::time::Instant::now() > deadline {
            break (t, dropped);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let total = t["total"].as_u64().expect("total");
    println!("sent {sent}, in the table {total}, dropped records {dropped}");
    assert_eq!(total + dropped, sent, "every hello recorded or counted as dropped");
    assert!(t["rows_held"].as_u64() <= Some(TOP), "rows over top: {}", t["rows_held"]);
    assert!(t["evictions"].as_u64() >= Some(total.saturating_sub(TOP).min(1)), "{t}");
    let other = t["other"]["count"].as_u64().expect("other count");
    let in_rows: u64 =
        t["rows"].as_array().unwrap().iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(in_rows + other, total, "rows and other add up: {t}");
    // Cardinality of /metrics stays bounded too.
    let metrics = edge.metrics();
    let series = metrics.lines().filter(|l| l.starts_with("outpost_client_hellos_total{")).count();
    assert!(series <= 50 + 28, "{series} client series");
    let _ = fs::remove_file(edge.dir.join("clients.pcap"));
}
