//! A fleet of edge nodes in namespaces of their own sharing one PostgreSQL (root: namespaces).
//! Each node serves; each writes its events into the one shared audit log that any node reads;
//! `outpost-demo --nodes 2 --once` shows it.

use std::time::Duration;

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
