//! `outpost-demo`: the edge at work, on network namespaces. Needs root.
//!
//! By default it builds a client, an edge and an origin namespace (`outpost_tests::edge`), runs
//! `outpost run --iface <edge veth>` in the edge namespace (the XDP floor: TLS 1.2, reject) in
//! front of an origin that echoes each request, runs real clients of every TLS version against
//! it (one line each), prints the kernel's per-version table (`outpost stats`), the userspace
//! counters (`/metrics`) and what a modern curl gets back. Then the edge applications
//! (`outpost_tests::apps`): with an OpenID provider and a mail sink started in the edge
//! namespace, it walks a login to the app Access protects and a reservation with its
//! confirmation mail, with curl from the client namespace (one line per step). It serves until
//! Ctrl-C, printing commands to try each from the client namespace. Everything it started is
//! stopped by pid and torn down on exit, on Ctrl-C and on SIGTERM. It exits non-zero if a client
//! or a step did not end as expected.
//!
//! - `--once` (or `OUTPOST_DEMO_ONCE=1`): exit after printing instead of serving; a test runs
//!   this so the demo cannot rot.
//! - `--floor-only`: the XDP floor alone in front of a TLS server that accepts every version,
//!   mode by mode (observe, drop, reject).
//! - `--nodes N` (2 to 9): a fleet instead (`outpost_tests::fleet`): N edge nodes, each in a
//!   namespace of its own, sharing one PostgreSQL; a request to each, the audit log every
//!   node writes into the shared store, read from the first node, and one floor policy set for
//!   the whole fleet (`policy set --fleet`) with the time each node took to apply it, and
//!   `outpost fleet status`.

use std::{process::ExitCode, thread, time::Duration};

use outpost_tests::{
    apps::{self, Apps, Step, APP_HOST, AUTH_HOST, PROVIDER, RESERVE_HOST, SMTP_PORT, ZONE},
    edge::{
        Edge, Floor, ADMIN, CLIENT_V4, CLIENT_V6, EDGE_V4, EDGE_V6, HTTPS_PORT, ORIGINS, ORIGIN_V4,
    },
    fleet::{self, Fleet},
    netns::{self, Client, ClientOutcome, Family, Topology, TLS_PORT},
};

/// How long a client waits for an answer (a dropped hello never gets one).
const WAIT: Duration = Duration::from_secs(3);
/// /metrics series worth showing, when not zero.
const SERIES: &[&str] = &[
    "outpost_kernel_hellos_total",
    "outpost_hellos_total",
    "outpost_hellos_incomplete_total",
    "outpost_tls_handshakes_total",
    "outpost_requests_total",
];
const USAGE: &str = "usage: outpost-demo [--once] [--floor-only | --nodes N]";

fn main() -> ExitCode {
    let (mut once, mut floor_only) = (std::env::var_os("OUTPOST_DEMO_ONCE").is_some(), false);
    let mut nodes = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--once" => once = true,
            "--floor-only" => floor_only = true,
            "--nodes" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if (2..=9).contains(&n) => nodes = Some(n),
                _ => {
                    eprintln!("outpost-demo: --nodes takes a number from 2 to 9\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("outpost-demo: unknown argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    netns::stop_on_sigint();
    match (floor_only, nodes) {
        (true, _) => floor_demo(),
        (false, Some(n)) => fleet_demo(n, once),
        (false, None) => edge_demo(once),
    }
}

/// N edge nodes sharing one PostgreSQL.
fn fleet_demo(nodes: usize, once: bool) -> ExitCode {
    let mut f = Fleet::new(nodes, "");
    println!("outpost demo: {nodes} edge nodes sharing one PostgreSQL, on one bridged LAN\n");
    println!(
        "  hub     {:<16} {}: bridge, PostgreSQL :5432, origin :{} (echoes each request)",
        f.hub_ns,
        fleet::HUB_V4,
        fleet::ORIGIN_PORT
    );
    println!("  client  {:<16} {}: curl", f.client_ns, fleet::CLIENT_V4);
    for n in &f.nodes {
        println!(
            "  {:<7} {:<16} {}:443: outpost run --no-xdp, node = {:?}, admin {}",
            n.name, n.ns, n.addr, n.name, ADMIN
        );
    }
    let mut all_as_expected = true;
    println!("\n== a request to each node ==");
    for i in 0..nodes {
        let url = f.url(i, "/demo");
        let out = f.curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]);
        let ok = out.success() && out.stdout.starts_with("200");
        all_as_expected &= ok;
        let mark = if ok { "" } else { "   <- UNEXPECTED" };
        println!("{url:<32} {}{mark}", out.stdout.trim());
    }
    println!(
        "\n== outpost audit on {}: the events of every node, from the shared store ==",
        f.nodes[0].name
    );
    let audit = f.outpost_cli(0, &["audit"]);
    println!("{}", audit.stdout.trim_end());
    let seen_all = f.nodes.iter().all(|n| audit.stdout.contains(&n.name));
    all_as_expected &= audit.success() && seen_all;
    if !seen_all {
        println!("not every node's events are there   <- UNEXPECTED\n{audit}");
    }
    all_as_expected &= fleet_policy_demo(&f);
    println!("\n== {} ==", if once { "--once: not serving" } else { "serving until Ctrl-C" });
    let bin = f.outpost_bin.canonicalize().unwrap_or_else(|_| f.outpost_bin.clone());
    println!("  ip netns exec {} curl -k {}", f.client_ns, f.url(1, "/hello"));
    println!(
        "  ip netns exec {} {} audit --config {}",
        f.nodes[0].ns,
        bin.display(),
        f.nodes[0].config.display()
    );
    println!("  ip netns exec {} curl -s http://{}/metrics", f.nodes[1].ns, ADMIN);
    if !once {
        println!("Ctrl-C stops every node and removes the namespaces.");
        while !netns::interrupted() {
            thread::sleep(Duration::from_millis(200));
        }
        println!("\ninterrupted: tearing down");
    }
    for i in 0..nodes {
        all_as_expected &= f.stop_node(i).is_some_and(|s| s.success());
    }
    if all_as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One floor policy for the fleet: set on one node, applied by all, how long each took; then
/// cleared again, so the fleet serves TLS 1.2 as before. True when all went as expected.
fn fleet_policy_demo(f: &Fleet) -> bool {
    let mut ok = true;
    let first = &f.nodes[0].name;
    println!("\n== outpost policy set --fleet --min-version 1.3, on {first} ==");
    let set = f.outpost_cli(0, &["policy", "set", "--fleet", "--min-version", "1.3"]);
    println!("{}", set.stdout.trim_end());
    ok &= set.success();
    let generation = set
        .stdout
        .split_once("generation ")
        .and_then(|(_, rest)| rest.split(':').next()?.parse::<u64>().ok());
    let Some(generation) = generation else {
        println!("no generation in its answer   <- UNEXPECTED\n{set}");
        return false;
    };
    for (node, took) in f.nodes.iter().zip(f.wait_applied(generation, Duration::from_secs(10))) {
        let mark = if took <= Duration::from_secs(1) { "" } else { "   <- over 1 s" };
        println!(
            "  {:<8} applied generation {generation} {took:>6.0?} after it was set{mark}",
            node.name
        );
    }
    println!("\n== a TLS 1.2 client against each node now ==");
    for i in 0..f.nodes.len() {
        let url = f.url(i, "/demo");
        let out = f.curl(&["--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}", &url]);
        let refused = !out.success();
        ok &= refused;
        let mark = if refused { "" } else { "   <- UNEXPECTED" };
        println!(
            "{url:<32} {}{mark}",
            if refused { "refused (TLS 1.2 is below the floor)" } else { "200" }
        );
    }
    println!("\n== outpost fleet status, on {} ==", f.nodes[f.nodes.len() - 1].name);
    let status = f.outpost_cli(f.nodes.len() - 1, &["fleet", "status"]);
    println!("{}", status.stdout.trim_end());
    ok &= status.success() && status.stdout.matches(" live ").count() == f.nodes.len();
    println!("\n== outpost policy clear --fleet: each node's own [floor] again ==");
    let clear = f.outpost_cli(0, &["policy", "clear", "--fleet"]);
    println!("{}", clear.stdout.trim_end());
    ok &= clear.success();
    f.wait_applied(generation + 1, Duration::from_secs(10));
    ok
}

fn edge_demo(once: bool) -> ExitCode {
    let prepared = Apps::prepare();
    let mut edge = Edge::new(Floor::Xdp, &prepared.config());
    // Declared after the edge, so stopped before its namespaces go.
    let mut apps = prepared;
    apps.start(&edge);
    let (c, e, o) = (&edge.client_ns, &edge.edge_ns, &edge.origin_ns);
    let origins: Vec<String> = ORIGINS.iter().map(|(n, p)| format!(":{p} ({n})")).collect();
    println!("outpost demo: `outpost run` with the XDP floor, between three network namespaces\n");
    println!("  client  {c:<16} {CLIENT_V4}, {CLIENT_V6}: openssl, curl, python");
    println!(
        "    | veth {} <-> {}, MTU 1500; XDP floor on {}: below TLS 1.2 is reset",
        edge.client_if, edge.edge_if, edge.edge_if
    );
    println!(
        "  edge    {e:<16} {EDGE_V4}:{HTTPS_PORT}, [{EDGE_V6}]:{HTTPS_PORT}: outpost run --iface {}; \
         admin {ADMIN}",
        edge.edge_if
    );
    println!(
        "          [access] {AUTH_HOST}, {APP_HOST}; [reserve] {RESERVE_HOST}, names under {ZONE}"
    );
    println!(
        "          OpenID provider {} (node-oidc-provider); mail sink 127.0.0.1:{SMTP_PORT} \
         (aiosmtpd, a Maildir)",
        apps::issuer()
    );
    println!("    | veth {} <-> {}", edge.edge_inner_if, edge.origin_if);
    println!("  origin  {o:<16} {ORIGIN_V4}{}: HTTP, echoes each request\n", origins.join(", "));

    let runs: Vec<(Client, Family)> = Client::ALL.iter().map(|&c| (c, Family::V4)).collect();
    println!("== clients, each connecting once to https://{EDGE_V4}/ ==");
    let mut all_as_expected = true;
    for r in edge.run_clients(&runs, WAIT) {
        let expected = match r.client.is_legacy() {
            true => ClientOutcome::Refused,
            false => ClientOutcome::Completed(r.client.negotiates().into()),
        };
        let mark = if r.outcome == expected { "" } else { "   <- UNEXPECTED" };
        all_as_expected &= r.outcome == expected;
        println!("{}{mark}", r.line());
    }
    if netns::interrupted() {
        println!("interrupted: tearing down");
        return ExitCode::from(130);
    }

    // In the edge namespace, `outpost stats` also reaches the admin listener: the kernel's
    // counters and the userspace floor's side by side.
    println!("\n== outpost stats: the kernel's counters (XDP) and the proxy's ==");
    println!("{}", edge.outpost_cli(&["stats"]).stdout.trim_end());
    println!("\n== userspace: /metrics on {ADMIN}, series above zero ==");
    for line in edge.metrics().lines() {
        let shown =
            SERIES.iter().any(|s| line.starts_with(s) && line[s.len()..].starts_with(['{', ' ']));
        if shown && !line.ends_with(" 0") {
            println!("{line}");
        }
    }
    let url = Edge::url(Family::V4, "/demo");
    println!("\n== what a modern client gets: curl -sk -i {url} ==");
    let out = edge.curl(&["-i", &url]);
    all_as_expected &= out.success();
    println!("{}", out.stdout.replace("\r\n", "\n").trim_end());
    if !out.success() {
        println!("{out}   <- UNEXPECTED");
    }

    println!(
        "\n== Access: https://{APP_HOST}/ behind a login at the edge, provider {} ==",
        apps::issuer()
    );
    all_as_expected &= print_steps(&apps.walk_login());
    println!(
        "\n== reservations: https://{RESERVE_HOST}/, its mail through 127.0.0.1:{SMTP_PORT} =="
    );
    all_as_expected &= print_steps(&apps.walk_reservation(&edge));

    let bin = edge.outpost_bin.canonicalize().unwrap_or_else(|_| edge.outpost_bin.clone());
    let bin = bin.display();
    println!("\n== {} ==", if once { "--once: not serving" } else { "serving until Ctrl-C" });
    println!("URL, from the client namespace: https://{EDGE_V4}/ (and https://[{EDGE_V6}]/)");
    println!("  ip netns exec {c} curl -k https://{EDGE_V4}/hello");
    println!(
        "  ip netns exec {c} openssl s_client -connect {EDGE_V4}:{HTTPS_PORT} -tls1 -cipher \
         'DEFAULT:@SECLEVEL=0'"
    );
    println!("  ip netns exec {e} curl -s http://{ADMIN}/metrics");
    println!("  nsenter --net=/run/netns/{e} {bin} --pin-dir {} stats", edge.pin_dir.display());
    let config = edge.dir.join("outpost.toml");
    let config = config.display();
    let jar = apps.jar();
    println!(
        "Access: a login as anyone@demo.test (the provider checks no password); the names resolve \
         in {c} through /etc/netns/{c}/hosts"
    );
    println!("  ip netns exec {c} curl -k -i -H 'Accept: text/html' https://{APP_HOST}/");
    println!(
        "  ip netns exec {c} curl -k -c {jar} -b {jar} -L -d app={APP_HOST} -d rd=/ \
         -d provider={PROVIDER} https://{AUTH_HOST}/login"
    );
    println!(
        "  ip netns exec {c} curl -k -c {jar} -b {jar} -L -d prompt=login \
         -d login=bob@demo.test -d password=x '<the action of the form above>'"
    );
    println!("Reservations: reserve, read the mail, open its link");
    println!(
        "  ip netns exec {c} curl -k -H 'Content-Type: application/json' \
         -d '{{\"name\": \"bob\", \"email\": \"bob@demo.test\"}}' https://{RESERVE_HOST}/reserve"
    );
    println!("  python3 {} {}", apps::mail_script().display(), apps.maildir());
    println!("  ip netns exec {c} curl -k '<the link in the mail>'");
    println!("  nsenter --net=/run/netns/{e} {bin} reservations list --config {config}");
    if !once {
        println!("Ctrl-C stops outpost and removes the namespaces.");
        while !netns::interrupted() {
            if let Some(status) = edge.outpost_exited() {
                eprintln!("outpost exited ({status}):\n{}", edge.log());
                return ExitCode::FAILURE;
            }
            thread::sleep(Duration::from_millis(200));
        }
        println!("\ninterrupted: tearing down");
    }
    if all_as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints each step's line; whether all went as they should.
fn print_steps(steps: &[Step]) -> bool {
    for step in steps {
        println!("{}", step.line());
    }
    steps.iter().all(|s| s.ok)
}

/// The floor alone: a TLS server that accepts every version behind it, mode by mode.
fn floor_demo() -> ExitCode {
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
