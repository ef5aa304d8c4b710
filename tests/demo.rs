//! `outpost-demo`: outpost between real TLS clients and a real server, mode by mode.
//!
//! Builds the test topology (a client and an edge namespace on a veth wire, outpost attached on
//! the edge end), starts the TLS server, and for each mode (observe, drop, reject) runs every
//! client over IPv4, one line each; then prints `outpost stats`. Everything is torn down at the
//! end and on Ctrl-C. Needs root; takes about 5 s.

use std::{process::ExitCode, time::Duration};

use outpost_tests::netns::{self, Client, Family, Topology, TLS_PORT};

/// How long a client waits for an answer (a dropped hello never gets one).
const WAIT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    netns::stop_on_sigint();
    let mut topo = Topology::new();
    topo.start_tls_server(TLS_PORT);
    println!(
        "client namespace {} ({}) --veth {}/{}--> edge namespace {} ({}), TLS server on :{TLS_PORT}",
        topo.client_ns,
        netns::CLIENT_V4,
        topo.client_if,
        topo.edge_if,
        topo.edge_ns,
        netns::EDGE_V4,
    );
    println!("outpost pinned under {}\n", topo.pin_dir.display());

    let runs: Vec<(Client, Family)> = Client::ALL.iter().map(|&c| (c, Family::V4)).collect();
    for mode in ["observe", "drop", "reject"] {
        topo.policy_set(Some("1.2"), Some(mode), Some(&[TLS_PORT]));
        println!("== {mode}: floor TLS 1.2 ==");
        // All at once: the dropped ones wait out their timeout together.
        for r in topo.run_clients(&runs, TLS_PORT, WAIT, &[]) {
            println!("{}", r.line());
        }
        println!();
        if netns::interrupted() {
            println!("interrupted: tearing down");
            return ExitCode::from(130);
        }
    }
    println!("== outpost stats ==\n{}", topo.stats_table());
    ExitCode::SUCCESS
}
