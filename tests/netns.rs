//! End to end over network namespaces: outpost attached (native XDP) on the edge end of a veth
//! wire at MTU 1500, a real TLS server on port 443 behind it, real clients of every version
//! (openssl, curl, Python) in front of it, over IPv4 and IPv6, in each mode. Every test also
//! checks that `outpost stats --json` grew by exactly the hellos it sent.
//!
//! Each test builds its own topology (namespaces, pin directory, maps) in parallel with the
//! others, then runs its clients while no other test runs any, so that what is timed is the data
//! plane and not a crowded CPU. How fast a rejected client learns is measured on the wire
//! (tcpdump on the client end), from its SYN to the reset it receives.
//!
//! The tests need root and the tools in `support::netns::TOOLS`, and fail, naming what is
//! missing, without them.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use outpost_common::{Verdict, Version};
use outpost_tests::netns::{
    hellos, parse_count, run, stats_delta, Client, ClientOutcome, ClientResult, Family, Flow, Side,
    Topology, TLS_PORT,
};
use serde_json::Value;

/// How long a client whose hello should be dropped waits: it is going to time out.
const WAIT_DROPPED: Duration = Duration::from_secs(3);
/// How long other clients wait (a handshake takes well under 100 ms here).
const WAIT: Duration = Duration::from_secs(5);
/// A rejected client learns with its first retransmission of the hello (RTO ≥ 200 ms): from
/// its SYN to the reset it receives, on the wire.
const REJECTED_WITHIN: Duration = Duration::from_secs(1);
/// The same, for the whole client process: its start-up too (openssl alone can take a few
/// hundred ms when the CPUs are busy), but far below its own timeout.
const REJECTED_PROCESS_WITHIN: Duration = Duration::from_secs(2);
/// The floor every test sets: TLS 1.0 and 1.1 are legacy.
const FLOOR: &str = "1.2";

fn every_client() -> Vec<(Client, Family)> {
    Family::BOTH.iter().flat_map(|&f| Client::ALL.map(|c| (c, f))).collect()
}

/// A topology with the server started and the floor in `mode`, and the turn to run clients
/// (held until the end of the test; the topology is torn down after it is released).
fn topology(mode: &str) -> (Topology, u32, MutexGuard<'static, ()>) {
    static CLIENTS: Mutex<()> = Mutex::new(());
    let mut t = Topology::new();
    let server = t.start_tls_server(TLS_PORT);
    t.policy_set(Some(FLOOR), Some(mode), Some(&[TLS_PORT]));
    // A test that failed holding the turn poisons it; the next one may still go.
    let turn = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    (t, server, turn)
}

/// The connections the server logged as failed (one line each).
fn server_errors(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("connection from")).collect()
}

/// Runs clients one after the other, so that the connections captured on the wire map to them
/// in order.
fn one_by_one(t: &Topology, runs: &[(Client, Family)], extra: &[&str]) -> Vec<ClientResult> {
    runs.iter().map(|&(c, f)| t.run_client_with(c, f, TLS_PORT, WAIT, extra)).collect()
}

fn report(title: &str, results: &[ClientResult]) {
    println!("--- {title}");
    for r in results {
        println!("{}", r.line());
    }
}

/// The verdict a client's hello gets in `mode`.
fn verdict(client: Client, mode: &str) -> &'static str {
    match (client.is_legacy(), mode) {
        (false, _) | (true, "observe") => "pass",
        (true, "drop") => "drop",
        (true, "reject") => "reject",
        _ => panic!("unknown mode {mode}"),
    }
}

/// Asserts that the version × verdict counters grew by exactly one per client run, under the
/// client's offered version and the verdict `mode` gives it, and that nothing else grew.
#[track_caller]
fn assert_counted(delta: &Value, results: &[&ClientResult], mode: &str) {
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in results {
        *expected
            .entry((r.client.offered().into(), verdict(r.client, mode).into()))
            .or_default() += 1;
    }
    let versions = delta["versions"].as_object().expect("stats --json has versions");
    let mut wrong = Vec::new();
    for (version, row) in versions {
        for verdict in ["pass", "drop", "reject", "redirect"] {
            let want = expected.remove(&(version.clone(), verdict.into())).unwrap_or(0);
            let got = row[verdict].as_u64().expect("counters are numbers");
            if got != want {
                wrong.push(format!("{version} {verdict}: counted {got}, sent {want}"));
            }
        }
    }
    assert!(expected.is_empty(), "versions missing from stats: {expected:?}");
    assert!(
        wrong.is_empty(),
        "hello counters in {mode} mode do not match the clients run:\n{}\nclients:\n{}\ncounter \
         growth: {}",
        wrong.join("\n"),
        results.iter().map(|r| r.line()).collect::<Vec<_>>().join("\n"),
        delta["versions"]
    );
}

#[track_caller]
fn assert_completed(r: &ClientResult) {
    assert_eq!(
        r.outcome,
        ClientOutcome::Completed(r.client.negotiates().into()),
        "expected a completed handshake:\n{r}"
    );
}

/// Asserts that each client was refused, and fast: the reset reached it within
/// [`REJECTED_WITHIN`] of its SYN on the wire. The clients ran one by one with one connection
/// each, so the captured connections map to them in order.
#[track_caller]
fn assert_rejected_fast(results: &[&ClientResult], flows: &[&Flow]) {
    assert_eq!(
        flows.len(),
        results.len(),
        "expected one connection per client on the wire; captured:\n{}",
        flows.iter().map(|f| f.to_string()).collect::<String>()
    );
    for (r, f) in results.iter().zip(flows) {
        assert_eq!(r.outcome, ClientOutcome::Refused, "expected a refused handshake:\n{r}\n{f}");
        let on_wire = f
            .time_to_reset()
            .unwrap_or_else(|| panic!("no reset reached the client on the wire:\n{r}\n{f}"));
        println!(
            "  {} {}: reset {} ms after its SYN",
            r.client.name(),
            r.family.name(),
            on_wire.as_millis()
        );
        assert!(on_wire < REJECTED_WITHIN, "the reset took {on_wire:?} on the wire:\n{r}\n{f}");
        assert!(
            r.elapsed() < REJECTED_PROCESS_WITHIN,
            "refused, but the client took {:?}:\n{r}\n{f}",
            r.elapsed()
        );
    }
}

#[test]
fn observe_lets_every_client_complete_and_counts_each_hello() {
    let (mut t, server, _turn) = topology("observe");
    let before = t.stats();
    let results = t.run_clients(&every_client(), TLS_PORT, WAIT, &[]);
    report("observe", &results);
    results.iter().for_each(assert_completed);

    let after = t.stats();
    let delta = stats_delta(&before, &after);
    assert_counted(&delta, &results.iter().collect::<Vec<_>>(), "observe");
    // The pinned counters read the same without outpost.
    let dumped = t.bpftool_version_stats();
    assert!(dumped.iter().sum::<u64>() >= results.len() as u64, "bpftool shows {dumped:?}");
    for v in Version::ALL {
        for d in Verdict::ALL {
            let slot = outpost_common::maps::version_slot(v, d) as usize;
            assert_eq!(
                Some(dumped[slot]),
                after["versions"][v.name()][d.name()].as_u64(),
                "bpftool and `outpost stats` disagree on {} {}",
                v.name(),
                d.name()
            );
        }
    }
    for outcome in ["repeat_of_blocked_flow", "reset_to_server", "reset_to_client"] {
        assert_eq!(parse_count(&delta, outcome), 0, "{outcome} grew in observe mode: {delta}");
    }
    let log = t.stop_server(server);
    assert!(server_errors(&log).is_empty(), "the server saw failed connections:\n{log}");
}

#[test]
fn drop_silences_legacy_clients_and_passes_modern_ones() {
    let (t, _, _turn) = topology("drop");
    let before = t.stats();
    let results = t.run_clients(&every_client(), TLS_PORT, WAIT_DROPPED, &[]);
    report("drop", &results);
    let mut legacy = 0;
    for r in &results {
        if r.client.is_legacy() {
            legacy += 1;
            assert_eq!(r.outcome, ClientOutcome::TimedOut, "expected a timeout:\n{r}");
            assert!(r.elapsed() >= WAIT_DROPPED, "gave up before its timeout:\n{r}");
        } else {
            assert_completed(r);
        }
    }

    let delta = stats_delta(&before, &t.stats());
    assert_counted(&delta, &results.iter().collect::<Vec<_>>(), "drop");
    // Within 3 s every dropped client retransmitted its hello, and those were dropped too.
    assert!(
        parse_count(&delta, "repeat_of_blocked_flow") >= legacy,
        "retransmissions of {legacy} dropped hellos were not handled as such: {delta}"
    );
    assert_eq!(parse_count(&delta, "reset_to_server"), 0, "{delta}");
    assert_eq!(parse_count(&delta, "reset_to_client"), 0, "{delta}");
    // The server never saw a byte of them, not even the clients' FIN: it still waits on each.
    let edge = t.sockets(Side::Edge, TLS_PORT);
    let waiting = edge.iter().filter(|l| l.starts_with("ESTAB")).count() as u64;
    assert_eq!(waiting, legacy, "server-side connections of dropped clients:\n{}", edge.join("\n"));
}

#[test]
fn reject_resets_legacy_clients_at_once_and_leaves_no_connection() {
    let (mut t, server, _turn) = topology("reject");
    let before = t.stats();
    let (legacy, modern): (Vec<_>, Vec<_>) =
        every_client().into_iter().partition(|(c, _)| c.is_legacy());

    let capture = t.capture(Side::Client, TLS_PORT);
    let refused = one_by_one(&t, &legacy, &[]);
    let flows = capture.stop();
    report("reject, legacy", &refused);
    assert_rejected_fast(&refused.iter().collect::<Vec<_>>(), &flows.iter().collect::<Vec<_>>());
    // The rewritten hello reset the server's socket, the reset answering the retransmission
    // the client's: nothing is left on either side (the modern clients run after this).
    for side in [Side::Edge, Side::Client] {
        let left = t.sockets(side, TLS_PORT);
        assert!(
            left.is_empty(),
            "connections left in the {side:?} namespace:\n{}",
            left.join("\n")
        );
    }

    let passed = t.run_clients(&modern, TLS_PORT, WAIT, &[]);
    report("reject, modern", &passed);
    passed.iter().for_each(assert_completed);

    let delta = stats_delta(&before, &t.stats());
    assert_counted(&delta, &refused.iter().chain(&passed).collect::<Vec<_>>(), "reject");
    let n = refused.len() as u64;
    assert_eq!(parse_count(&delta, "reset_to_server"), n, "one reset per rejected hello: {delta}");
    assert!(parse_count(&delta, "reset_to_client") >= n, "each client needs a reset: {delta}");
    assert_eq!(parse_count(&delta, "rewrite_failed"), 0, "{delta}");
    // The server accepted each rejected connection already reset, and failed it at once.
    let log = t.stop_server(server);
    assert_eq!(server_errors(&log).len(), legacy.len(), "server log:\n{log}");
}

/// ALPN names adding up to 1.8 kB: with it a hello cannot fit one segment at MTU 1500.
fn big_alpn() -> String {
    (0..9).map(|i| format!("p{i}{}", "x".repeat(197))).collect::<Vec<_>>().join(",")
}

#[test]
fn hello_over_one_segment_is_decided_from_its_second_segment() {
    let (t, _, _turn) = topology("reject");
    let alpn = big_alpn();
    assert!(alpn.len() > 1600);
    let before = t.stats();
    let runs: Vec<(Client, Family)> = Family::BOTH
        .iter()
        .flat_map(|&f| [(Client::OpensslTls13, f), (Client::OpensslTls10, f)])
        .collect();
    let capture = t.capture(Side::Client, TLS_PORT);
    let results = one_by_one(&t, &runs, &["-alpn", &alpn]);
    let flows = capture.stop();
    report("reject, hellos of two segments", &results);
    assert_eq!(flows.len(), results.len(), "one connection per client");
    for (r, f) in results.iter().zip(&flows) {
        // A full first segment: the hello went on in a second one.
        let first = f.segments.iter().find(|s| s.src == f.client && s.len > 0);
        assert!(first.is_some_and(|s| s.len > 1400), "the hello fitted one segment:\n{r}\n{f}");
        if !r.client.is_legacy() {
            assert_completed(r);
        }
    }
    let (legacy, modern): (Vec<_>, Vec<_>) =
        results.iter().zip(&flows).partition(|(r, _)| r.client.is_legacy());
    assert_rejected_fast(
        &legacy.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        &legacy.iter().map(|(_, f)| *f).collect::<Vec<_>>(),
    );
    for (r, f) in modern {
        assert!(f.reset_to_client().is_none(), "a passed client got a reset:\n{r}\n{f}");
    }

    let delta = stats_delta(&before, &t.stats());
    assert_counted(&delta, &results.iter().collect::<Vec<_>>(), "reject");
    let n = results.len() as u64;
    assert_eq!(parse_count(&delta, "followed_to_next_segment"), n, "first segments: {delta}");
    assert_eq!(parse_count(&delta, "decided_later_segment"), n, "second segments: {delta}");
    assert_eq!(parse_count(&delta, "decided_first_segment"), 0, "{delta}");
    assert_eq!(parse_count(&delta, "left_to_userspace"), 0, "{delta}");
    // The legacy hellos were refused from their second segment: the reset replaced it.
    let legacy = results.iter().filter(|r| r.client.is_legacy()).count() as u64;
    assert_eq!(parse_count(&delta, "reset_to_server"), legacy, "{delta}");
    assert_eq!(hellos(&delta, "TLS1.0", "reject"), legacy, "{delta}");
}

#[test]
fn policy_set_redirect_budgets_legacy_hellos_at_once_without_a_detach() {
    let (t, _, _turn) = topology("reject");
    // Behind the floor is a TLS server that completes every version: a legacy hello the floor
    // passes on (as it would to outpost's legacy responder) completes its handshake.
    let set = t.outpost(&[
        "policy",
        "set",
        "--mode",
        "redirect",
        "--redirect-rate",
        "200/s",
        "--redirect-per-source",
        "2/s",
    ]);
    assert!(set.stdout.contains("mode redirect"), "{set}");
    let shown = t.outpost(&["policy", "show", "--json"]);
    let policy: Value = serde_json::from_str(&shown.stdout).expect("policy show --json");
    assert_eq!(
        (&policy["mode"], &policy["redirect_rate"], &policy["redirect_per_source"]),
        (&Value::from("redirect"), &Value::from(200), &Value::from(2)),
        "{policy}"
    );
    let before = t.stats();
    // Four legacy clients from one address at once: two within the per-source budget.
    let legacy =
        [Client::OpensslTls10, Client::CurlTls10, Client::PythonTls10, Client::OpensslTls11];
    let runs: Vec<(Client, Family)> = legacy.iter().map(|&c| (c, Family::V4)).collect();
    let results = t.run_clients(&runs, TLS_PORT, WAIT, &[]);
    report("redirect, per-source budget 2/s", &results);
    let completed =
        results.iter().filter(|r| matches!(r.outcome, ClientOutcome::Completed(_))).count();
    let refused = results.iter().filter(|r| r.outcome == ClientOutcome::Refused).count();
    // Two at once, and one more for each half second the four took to send their hellos (the
    // bucket refills at 2/s): on a loaded machine, starting four client processes can spread
    // them that much. Every client's whole run bounds that spread.
    let spread = results.iter().map(ClientResult::elapsed).max().unwrap_or_default();
    let refilled = (spread.as_secs_f64() * 2.0).floor() as usize;
    assert_eq!(completed + refused, 4, "each either passed on or rejected");
    assert!(
        completed >= 2 && completed <= 2 + refilled,
        "{completed} passed on, {refused} rejected, within {spread:?} (budget 2, 2/s)"
    );
    if refilled == 0 {
        assert_eq!((completed, refused), (2, 2), "two passed on, two rejected");
    }
    let delta = stats_delta(&before, &t.stats());
    let redirected: u64 = ["TLS1.0", "TLS1.1"].iter().map(|v| hellos(&delta, v, "redirect")).sum();
    let rejected: u64 = ["TLS1.0", "TLS1.1"].iter().map(|v| hellos(&delta, v, "reject")).sum();
    assert_eq!((redirected, rejected), (completed as u64, refused as u64), "counted: {delta}");
    // Modern clients are not budgeted.
    let modern = t.run_clients(&[(Client::OpensslTls13, Family::V4)], TLS_PORT, WAIT, &[]);
    modern.iter().for_each(assert_completed);

    // A port's own mode takes precedence, at once too.
    t.outpost(&["policy", "set", "--port-mode", "443=reject"]);
    let shown = t.outpost(&["policy", "show", "--json"]);
    assert!(shown.stdout.contains(r#""port_modes":{"443":"reject"}"#), "{shown}");
    std::thread::sleep(Duration::from_millis(1100)); // a fresh budget: it is not what refuses
    let r = t.run_client(Client::OpensslTls10, Family::V4, TLS_PORT, WAIT);
    assert_eq!(r.outcome, ClientOutcome::Refused, "443 in reject mode:\n{r}");
    t.outpost(&["policy", "set", "--port-mode", "443=default"]);
    let r = t.run_client(Client::OpensslTls10, Family::V4, TLS_PORT, WAIT);
    assert!(matches!(r.outcome, ClientOutcome::Completed(_)), "443 back to redirect:\n{r}");
}

#[test]
fn attach_replaces_a_stale_pin_and_stats_warns_while_nothing_is_attached() {
    let outpost = outpost_tests::netns::outpost_bin();
    outpost_tests::netns::check_prerequisites();
    let pid = std::process::id();
    // Names in the shape the other tests' leftover cleanup knows (`<prefix><pid>-<n>`).
    let (old_ns, new_ns) = (format!("ote-{pid}-900"), format!("ote-{pid}-901"));
    let pin_dir = format!("/sys/fs/bpf/outpost-test-{pid}-900");
    let (ifname, peer) = (format!("os{pid}"), format!("op{pid}"));
    let bin = outpost.to_str().expect("UTF-8 path");
    let limit = Duration::from_secs(15);
    let sh = |ns: Option<&str>, argv: &[&str]| run(ns, argv, limit);
    let cli = |ns: Option<&str>, args: &[&str]| {
        sh(ns, &[&[bin, "--pin-dir", &pin_dir][..], args].concat())
    };
    struct Cleanup<'a>(&'a dyn Fn());
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let cleanup = || {
        cli(None, &["detach", "--all", "--purge"]);
        let _ = std::fs::remove_dir_all(&pin_dir);
        for ns in [&old_ns, &new_ns] {
            sh(None, &["ip", "netns", "del", ns]);
        }
    };
    let _cleanup = Cleanup(&cleanup);
    let wire = |ns: &str| {
        sh(None, &["ip", "netns", "add", ns]).ok();
        let add = ["ip", "-n", ns, "link", "add", &ifname, "type", "veth", "peer", "name", &peer];
        sh(None, &add).ok();
        sh(None, &["ip", "-n", ns, "link", "set", &ifname, "up"]).ok();
        sh(None, &["ip", "-n", ns, "link", "set", &peer, "up"]).ok();
    };

    wire(&old_ns);
    cli(Some(&old_ns), &["attach", "--iface", &ifname]).ok();
    let stats = cli(None, &["stats"]).ok();
    assert!(!stats.stderr.contains("warning"), "attached, yet: {stats}");
    // The interface goes away with its namespace; the pinned link stays behind.
    sh(None, &["ip", "netns", "del", &old_ns]).ok();
    let link = std::path::Path::new(&pin_dir).join(format!("link-{ifname}"));
    assert!(link.exists(), "the pin went with the namespace");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let warned = loop {
        let stats = cli(None, &["stats"]).ok();
        if stats.stderr.contains("attached to nothing") || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        warned.stderr.contains("warning: the XDP program is attached to nothing")
            && warned.stderr.contains(&ifname),
        "no warning from outpost stats with the interface gone:\n{warned}"
    );
    let json = cli(None, &["stats", "--json"]).ok();
    let v: Value = serde_json::from_str(&json.stdout).expect("stats --json");
    assert!(v["warning"].as_str().is_some_and(|w| w.contains("attached to nothing")), "{v}");

    // Tried as a new user would: the same interface name again, in a new namespace.
    wire(&new_ns);
    let attach = cli(Some(&new_ns), &["attach", "--iface", &ifname]);
    assert!(attach.success(), "attach refused over a stale pin:\n{attach}");
    assert!(attach.stdout.contains("replaced a stale link"), "it did not say so:\n{attach}");
    let shown = sh(None, &["ip", "-n", &new_ns, "-d", "link", "show", &ifname]).ok();
    assert!(shown.stdout.contains("prog/xdp"), "nothing attached:\n{shown}");
    let stats = cli(None, &["stats"]).ok();
    assert!(!stats.stderr.contains("warning"), "attached again, yet: {stats}");
    // A live link is still refused.
    let again = cli(Some(&new_ns), &["attach", "--iface", &ifname]);
    assert!(!again.success() && again.stderr.contains("already attached"), "{again}");
}
