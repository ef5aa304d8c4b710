//! A fleet of edge nodes in namespaces of their own sharing one PostgreSQL (root: namespaces).
//! Each node serves; each writes its events into the one shared audit log that any node reads;
//! `outpost-demo --nodes 2 --once` shows it.

use std::time::{Duration, Instant};

use outpost_testkit::{expect_counter, wait_series};
use outpost_tests::{fleet::Fleet, netns};

#[test]
fn nodes_share_one_store_over_the_network() {
    let mut f = Fleet::new(2, "");
    for i in 0..2 {
        let out = f.curl(&["-o", "/dev/null", "-w", "%{http_code}", &f.url(i, "/x")]);
        assert_eq!(out.stdout, "200", "node {i}:\n{out}");
    }
    // Node 2's start, read through node 1's admin listener: one store.
    let events: serde_json::Value =
        serde_json::from_str(&f.admin(0, "/audit?kind=node.start")).expect("GET /audit is JSON");
    let mut nodes: Vec<&str> =
        events.as_array().unwrap().iter().filter_map(|e| e["node"].as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["edge-1", "edge-2"], "{events}");
    assert!(f.admin(1, "/metrics").contains("outpost_store_info{backend=\"postgres\"} 1"));
    // Node 2 stops; node 1 sees its stop in the shared log, through the CLI.
    assert!(f.stop_node(1).is_some_and(|s| s.success()), "{}", f.log(1));
    let out = f.outpost_cli(0, &["audit", "--kind", "node.stop"]).ok();
    assert!(out.stdout.contains("edge-2"), "{out}");
}

#[test]
fn demo_with_two_nodes() {
    let demo = env!("CARGO_BIN_EXE_outpost-demo");
    let out = netns::run(None, &[demo, "--nodes", "2", "--once"], Duration::from_secs(120));
    assert!(out.success(), "outpost-demo --nodes 2 --once failed:\n{out}");
    for want in ["edge-1", "edge-2", "node.start", "/demo        200"] {
        assert!(out.stdout.contains(want), "no {want:?} in the demo's output:\n{out}");
    }
    assert!(!out.stdout.contains("UNEXPECTED"), "{out}");
}

/// A TLS 1.2-only client's verdict on node `i`: its HTTP status, or curl's error.
fn tls12(f: &Fleet, i: usize) -> String {
    let out =
        f.curl(&["--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}", &f.url(i, "/x")]);
    if out.success() {
        out.stdout
    } else {
        "refused".into()
    }
}

/// Bound on a policy reaching every node here (the fleet bench measures how fast it does).
const LIMIT: Duration = Duration::from_secs(5);

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn one_floor_policy_for_the_fleet() {
    // Heartbeats every second: a live node is never taken for missing (3 s) on a loaded machine.
    let mut f = Fleet::new(2, "[fleet]\nheartbeat_ms = 1000\n");
    assert_eq!([tls12(&f, 0), tls12(&f, 1)], ["200", "200"], "each node's own [floor] is 1.2");

    // One command, from node 1: both nodes refuse TLS 1.2 from then on.
    let set = f.outpost_cli(0, &["policy", "set", "--fleet", "--min-version", "1.3"]).ok();
    assert!(set.stdout.contains("generation 1: min-version TLS1.3"), "{set}");
    f.wait_applied(1, LIMIT);
    assert_eq!([tls12(&f, 0), tls12(&f, 1)], ["refused", "refused"]);
    let v13 = f.curl(&["--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code}", &f.url(1, "/x")]);
    assert_eq!(v13.stdout, "200", "{v13}");

    // Who set it, and who applied it; an audit event. A node logs the change before its row
    // says so (its next write, at once), so the rows are read until both have it.
    let deadline = Instant::now() + LIMIT;
    let show = loop {
        let show = json(&f.outpost_cli(1, &["policy", "show", "--fleet", "--json"]).ok().stdout);
        let nodes = show["nodes"].as_array().unwrap();
        if nodes.len() == 2 && nodes.iter().all(|n| n["policy_generation"] == 1) {
            break show;
        }
        assert!(Instant::now() < deadline, "the rows do not say generation 1: {show}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(show["policy"]["generation"], 1, "{show}");
    assert_eq!(show["policy"]["floor"]["min_version"], "TLS1.3", "{show}");
    assert!(show["policy"]["set_by"].as_str().unwrap().ends_with("@edge-1"), "{show}");
    for n in show["nodes"].as_array().unwrap() {
        assert_eq!((&n["state"], &n["policy_generation"]), (&"live".into(), &1.into()), "{show}");
    }
    let audit = f.outpost_cli(1, &["audit", "--kind", "fleet.policy.set"]).ok();
    assert!(audit.stdout.contains("generation 1"), "{audit}");

    // A node that was down applies the current generation before it accepts a connection.
    assert!(f.stop_node(1).is_some_and(|s| s.success()), "{}", f.log(1));
    let status = json(&f.outpost_cli(0, &["fleet", "status", "--json"]).ok().stdout);
    let states: Vec<(&str, &str)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("edge-1", "live"), ("edge-2", "stopped")], "{status}");
    f.outpost_cli(0, &["policy", "set", "--fleet", "--port-mode", "443=drop"]).ok();
    f.wait_applied(2, LIMIT);
    f.start_node(1);
    assert_eq!(f.applied_generation(1), 2, "{}", f.log(1));
    assert_eq!(tls12(&f, 1), "refused");

    // A generation this build cannot apply: each node keeps its floor and says why.
    let bad = r#"{"generation":3,"set_by":"newer@build","set_at_ms":0,"floor":{"min_version":"TLS1.3","mode":"reject","redirect_rate":1,"redirect_per_source":1,"port_modes":{"443":"quarantine"}}}"#;
    f.pg.psql(
        "outpost",
        &format!(
            "UPDATE kv SET value = convert_to('{bad}', 'UTF8') \
             WHERE ns = 'fleet.policy' AND key = 'current'"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = json(&f.outpost_cli(0, &["fleet", "status", "--json"]).ok().stdout);
        let errors: Vec<&str> =
            status.as_array().unwrap().iter().filter_map(|n| n["policy_error"].as_str()).collect();
        if errors.len() == 2 {
            assert!(errors.iter().all(|e| e.contains("quarantine")), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no node reported the bad policy: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!([f.applied_generation(0), f.applied_generation(1)], [2, 2]);
    expect_counter(|| f.admin(0, "/metrics"), "outpost_fleet_policy_failures_total", 1);
    assert_eq!(tls12(&f, 0), "refused", "the floor in force stays");

    // Cleared: back to each node's own [floor].
    let clear = f.outpost_cli(1, &["policy", "clear", "--fleet"]).ok();
    assert!(clear.stdout.contains("generation 4: cleared"), "{clear}");
    f.wait_applied(4, LIMIT);
    assert_eq!([tls12(&f, 0), tls12(&f, 1)], ["200", "200"]);
    // The registry's counts are node 1's reading at its last heartbeat (node 2's restart may
    // be newer than that).
    wait_series(|| f.admin(0, "/metrics"), "outpost_fleet_nodes{state=\"live\"}", "2", |n| n == 2);

    // The row removed by hand: no fleet policy, generation 0 everywhere.
    f.pg.psql("outpost", "DELETE FROM kv WHERE ns = 'fleet.policy'");
    let deadline = Instant::now() + LIMIT;
    while [f.applied_generation(0), f.applied_generation(1)] != [0, 0] {
        assert!(Instant::now() < deadline, "the nodes still hold a fleet generation");
        std::thread::sleep(Duration::from_millis(50));
    }
}
