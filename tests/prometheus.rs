//! Prometheus over a fleet (root: namespaces; Debian's `prometheus`, which `cargo xtask setup`
//! installs). The shipped deploy/prometheus passes `promtool check config`, `check rules` and its
//! own rule unit tests (`promtool test rules`); a real Prometheus in the hub namespace, with that
//! config (targets templated, scrape and evaluation every second), scrapes two nodes on their
//! LAN admin listeners. After known traffic, the recording rules of totals equal the sum of the
//! two nodes' counters as each node's /metrics shows them, and `outpost stats --fleet` sums the
//! same; a node stopped cleanly is `stopped` (no missing alert), a node killed makes the
//! "node missing" alert go pending.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use outpost_tests::{
    fleet::{Fleet, Options},
    netns::{check_tools, run, Daemon, Output},
};
use serde_json::Value;

/// Prometheus's port, on the hub namespace's loopback.
const PROM: &str = "127.0.0.1:9390";
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a scrape and a rule evaluation (each every second here) may take to show a change.
const SEEN_LIMIT: Duration = Duration::from_secs(20);
const PROMTOOL_LIMIT: Duration = Duration::from_secs(30);
/// Known traffic: requests to node 1 and node 2.
const REQUESTS: [usize; 2] = [7, 5];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

#[track_caller]
fn promtool(args: &[&str], cwd: &Path) -> Output {
    let mut argv = vec!["env", "-C", cwd.to_str().expect("UTF-8 path"), "promtool"];
    argv.extend(args);
    let out = run(None, &argv, PROMTOOL_LIMIT);
    assert!(out.success(), "promtool failed:\n{out}");
    out
}

/// The shipped config in `dir`: every file of deploy/prometheus, the targets replaced by
/// `targets`, scrape and evaluation every second.
fn prometheus_config(dir: &Path, targets: &[String]) -> PathBuf {
    fs::create_dir_all(dir.join("targets")).unwrap();
    for name in ["prometheus.yml", "outpost.rules.yml", "outpost.alerts.yml"] {
        fs::copy(deploy().join(name), dir.join(name))
            .unwrap_or_else(|e| panic!("copying {name}: {e}"));
    }
    let config = dir.join("prometheus.yml");
    let mut text = fs::read_to_string(&config).unwrap();
    for key in ["scrape_interval", "evaluation_interval"] {
        let shipped = format!("{key}: 15s");
        assert_eq!(text.matches(&shipped).count(), 1, "no single `{shipped}` in\n{text}");
        text = text.replace(&shipped, &format!("{key}: 1s"));
    }
    fs::write(&config, text).unwrap();
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    fs::write(dir.join("targets/outpost.yml"), format!("- targets: [{}]\n", list.join(", ")))
        .unwrap();
    config
}

/// Prometheus's HTTP API, from the hub namespace.
struct Prometheus<'a> {
    ns: &'a str,
}

impl Prometheus<'_> {
    #[track_caller]
    fn get(&self, path: &str, query: Option<&str>) -> Value {
        let url = format!("http://{PROM}{path}");
        let q = query.map(|q| format!("query={q}"));
        let mut argv = vec!["curl", "-sS", "--max-time", "5", "--get"];
        if let Some(q) = &q {
            argv.extend(["--data-urlencode", q]);
        }
        argv.push(&url);
        let out = run(Some(self.ns), &argv, Duration::from_secs(8));
        assert!(out.success(), "{out}");
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}) from Prometheus:\n{out}"));
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// An instant query: each series' labels but its name (as `k=v,...`, sorted) and value.
    fn query(&self, q: &str) -> BTreeMap<String, f64> {
        let data = self.get("/api/v1/query", Some(q));
        let rows = data["result"].as_array().unwrap_or_else(|| panic!("{q}: {data}"));
        rows.iter()
            .map(|r| {
                let labels = r["metric"].as_object().unwrap();
                let labels: Vec<String> = labels
                    .iter()
                    .filter(|(k, _)| *k != "__name__")
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                    .collect();
                let value: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels.join(","), value)
            })
            .collect()
    }

    /// The one value of `q` (none: `None`).
    #[track_caller]
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        assert!(r.len() <= 1, "{q} gave several series: {r:?}");
        r.into_values().next()
    }

    /// Alerts by name: their states (`pending`, `firing`) and labels.
    fn alerts(&self, name: &str) -> Vec<(String, Value)> {
        let data = self.get("/api/v1/alerts", None);
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| (a["state"].as_str().unwrap().to_owned(), a["labels"].clone()))
            .collect()
    }

    /// Polls `probe` until it holds; panics with what it last saw after [`SEEN_LIMIT`].
    #[track_caller]
    fn wait<T: std::fmt::Debug>(&self, what: &str, probe: impl Fn(&Self) -> (bool, T)) -> T {
        let deadline = Instant::now() + SEEN_LIMIT;
        loop {
            let (ok, seen) = probe(self);
            if ok {
                return seen;
            }
            assert!(Instant::now() < deadline, "{what}: not within {SEEN_LIMIT:?}; last {seen:?}");
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Every query of the shipped Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/outpost-fleet.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_owned())
        .collect();
    assert!(queries.len() > 10, "{queries:?}");
    queries
}

/// The sum of every sample of metric `name` (any labels) in a /metrics text.
fn total(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

/// One sample of a /metrics text.
#[track_caller]
fn sample(metrics: &str, series: &str) -> u64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[test]
fn prometheus_sums_the_fleet_and_alerts_on_a_missing_node() {
    check_tools(&[("prometheus", "prometheus"), ("promtool", "prometheus")]);

    // The shipped files as they are.
    let deploy = deploy();
    let rules = promtool(&["check", "rules", "outpost.rules.yml", "outpost.alerts.yml"], &deploy);
    assert!(rules.stdout.contains("SUCCESS: 13 rules found"), "{rules}");
    promtool(&["check", "config", "prometheus.yml"], &deploy);
    let unit = promtool(&["test", "rules", "outpost.rules.test.yml"], &deploy);
    assert!(unit.stdout.contains("SUCCESS"), "{unit}");

    // Heartbeats every second: a killed node is missing after 3 s, and a live one is never
    // taken for missing because a loaded machine delayed a heartbeat by a few hundred ms.
    let extra = "[fleet]\nheartbeat_ms = 1000\n";
    let mut f = Fleet::with_options(2, extra, Options { admin_on_lan: true });
    let admins: Vec<String> = f.nodes.iter().map(|n| n.admin.clone()).collect();
    let config = prometheus_config(&f.dir.join("prometheus"), &admins);
    promtool(&["check", "config", "prometheus.yml"], config.parent().unwrap());
    let tsdb = f.dir.join("prometheus/data");
    let argv = [
        "prometheus".to_owned(),
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", tsdb.display()),
        format!("--web.listen-address={PROM}"),
    ];
    // Declared after the fleet: dropped (SIGTERM by pid) before the fleet removes its directory.
    let mut prometheus = Daemon::start("prometheus", Some(&f.hub_ns), &argv);
    let hub = f.hub_ns.clone();
    prometheus.wait_ready(START_LIMIT, |_| {
        run(
            Some(&hub),
            &["curl", "-sf", "--max-time", "2", &format!("http://{PROM}/-/ready")],
            Duration::from_secs(4),
        )
        .success()
    });
    let p = Prometheus { ns: &hub };
    p.wait("both nodes scraped", |p| {
        let up = p.query("up{job=\"outpost\"}");
        (up.len() == 2 && up.values().all(|&v| v == 1.0), up)
    });

    // Known traffic: TLS 1.3 requests to each node, and one TLS 1.0 hello to node 1, which its
    // userspace floor refuses.
    let before: Vec<String> = (0..2).map(|i| f.admin(i, "/metrics")).collect();
    for (i, n) in REQUESTS.into_iter().enumerate() {
        for _ in 0..n {
            let out =
                f.curl(&["--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code}", &f.url(i, "/x")]);
            assert_eq!(out.stdout, "200", "node {i}:\n{out}");
        }
    }
    let legacy = f.curl(&[
        "--tlsv1.0",
        "--tls-max",
        "1.0",
        "--ciphers",
        "DEFAULT@SECLEVEL=0",
        &f.url(0, "/x"),
    ]);
    assert_eq!(legacy.code(), Some(35), "a TLS 1.0 client is refused:\n{legacy}");
    // A request is counted once its response is out, which curl may see first: wait for it.
    let after: Vec<String> = REQUESTS
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let now = f.admin(i, "/metrics");
                let grew = total(&now, "outpost_requests_total")
                    - total(&before[i], "outpost_requests_total");
                assert!(grew <= n as u64, "node {i} counted {grew} requests, not {n}:\n{now}");
                if grew == n as u64 {
                    return now;
                }
                assert!(Instant::now() < deadline, "node {i} counted {grew} of {n}:\n{now}");
                thread::sleep(Duration::from_millis(50));
            }
        })
        .collect();
    let (requests, hellos): (u64, u64) = after
        .iter()
        .map(|m| (total(m, "outpost_requests_total"), total(m, "outpost_hellos_total")))
        .fold((0, 0), |(r, h), (r1, h1)| (r + r1, h + h1));
    let tls13 = "outpost_hellos_total{version=\"TLS1.3\",verdict=\"pass\"}";
    let tls13_pass: u64 = after.iter().map(|m| sample(m, tls13)).sum();
    let tls10 = "outpost_hellos_total{version=\"TLS1.0\",verdict=\"reject\"}";
    assert_eq!(sample(&after[0], tls10), 1, "{}", after[0]);

    // The recording rules of totals: the sums of what the nodes show (nothing else reaches the
    // nodes' proxies; scrapes go to their admin listeners).
    let seen = p.wait("outpost:requests:sum = the nodes' requests", |p| {
        let v = p.scalar("sum(outpost:requests:sum)");
        (v == Some(requests as f64), v)
    });
    assert_eq!(seen, Some(requests as f64));
    let by_class = p.query("outpost:requests:sum");
    assert!(by_class.contains_key("class=2xx,proto=http/1.1"), "{by_class:?}");
    p.wait("outpost:hellos:sum = the nodes' hellos", |p| {
        let all = p.scalar("sum(outpost:hellos:sum)");
        let pass = p.scalar("outpost:hellos:sum{version=\"TLS1.3\",verdict=\"pass\"}");
        let reject = p.scalar("outpost:hellos:sum{version=\"TLS1.0\",verdict=\"reject\"}");
        let want = (Some(hellos as f64), Some(tls13_pass as f64), Some(1.0));
        ((all, pass, reject) == want, (all, pass, reject))
    });
    // The rates over the last minute see the traffic: a latency quantile for 2xx from the
    // nodes' buckets, a legacy share strictly between none and all.
    let p99 = p.wait("a 2xx p99 latency", |p| {
        let v =
            p.scalar("outpost:request_latency_seconds:quantile1m{class=\"2xx\",quantile=\"0.99\"}");
        (v.is_some_and(|v| v > 0.0 && v <= 10.0), v)
    });
    println!("fleet 2xx p99 latency over the last minute: {p99:?} s");
    let share = p.wait("a legacy share", |p| {
        let v = p.scalar("outpost:edge_hellos_legacy:ratio_rate1m");
        (v.is_some_and(|v| v > 0.0 && v < 0.5), v)
    });
    println!("legacy share of the fleet's hellos: {share:?}");

    // The dashboard is built on the rules: it uses every recorded series, and each of its
    // queries is one this Prometheus evaluates (`get` fails on a query error).
    let dashboard = dashboard_queries();
    let rules = fs::read_to_string(deploy.join("outpost.rules.yml")).unwrap();
    for record in rules.lines().filter_map(|l| l.trim().strip_prefix("- record: ")) {
        assert!(
            dashboard.iter().any(|q| q.contains(record)),
            "the dashboard shows no {record}: {dashboard:#?}"
        );
    }
    for q in &dashboard {
        p.get("/api/v1/query", Some(q));
    }
    let rates = p.query("outpost:requests_by_node:rate1m");
    assert_eq!(
        rates.keys().filter_map(|k| k.split(",node=").nth(1)).collect::<Vec<_>>(),
        ["edge-1", "edge-2"],
        "{rates:?}"
    );

    // `outpost stats --fleet`, from node 1: the same sums through the admin listeners the
    // registry names.
    let out = f.outpost_cli(0, &["stats", "--fleet", "--json"]).ok();
    let stats: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(stats["fleet"]["nodes"], 2, "{stats}");
    let user = &stats["fleet"]["userspace"]["versions"];
    assert_eq!(user["TLS1.3"]["pass"], tls13_pass, "{stats}");
    assert_eq!(user["TLS1.0"]["reject"], 1, "{stats}");
    assert_eq!(stats["fleet"]["kernel"], Value::Null, "--no-xdp nodes show no kernel: {stats}");
    let by_node = f.outpost_cli(1, &["stats", "--fleet", "--by-node"]).ok();
    println!("{}", by_node.stdout);
    let row: Vec<&str> = by_node
        .stdout
        .lines()
        .find(|l| l.starts_with("TLS1.3 pass"))
        .unwrap_or_else(|| panic!("no TLS1.3 pass row:\n{by_node}"))
        .split_whitespace()
        .skip(2)
        .collect();
    let per_node: Vec<String> = after.iter().map(|m| sample(m, tls13).to_string()).collect();
    assert_eq!(row, [&per_node[0], &per_node[1], &tls13_pass.to_string()], "{by_node}");

    // A clean stop: the row says stopped; Prometheus sees the node down, the registry sees
    // none missing.
    assert!(p.alerts("OutpostNodeMissing").is_empty(), "{:?}", p.alerts("OutpostNodeMissing"));
    assert!(f.stop_node(1).is_some_and(|s| s.success()), "{}", f.log(1));
    p.wait("the registry's stopped node, through Prometheus", |p| {
        let v = p.scalar("max(outpost_fleet_nodes{state=\"stopped\"})");
        (v == Some(1.0), v)
    });
    let down = p.wait("OutpostNodeDown for node 2", |p| {
        let a = p.alerts("OutpostNodeDown");
        (a.iter().any(|(_, l)| l["instance"] == admins[1].as_str()), a)
    });
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(p.scalar("max(outpost_fleet_nodes{state=\"missing\"})"), Some(0.0));
    assert!(p.alerts("OutpostNodeMissing").is_empty(), "a clean stop is not missing");
    let out = f.outpost_cli(0, &["stats", "--fleet"]).ok();
    assert!(
        out.stdout.starts_with("fleet: 1 of 1 live node(s) read (edge-1); stopped: edge-2"),
        "{out}"
    );

    // Back, then killed: its row goes stale, and the missing alert goes pending (it fires after
    // its `for:` of a minute).
    f.start_node(1);
    p.wait("node 2 live again", |p| {
        let v = p.scalar("min(outpost_fleet_nodes{state=\"live\"})");
        (v == Some(2.0), v)
    });
    f.kill_node(1);
    let missing = p.wait("OutpostNodeMissing", |p| {
        let a = p.alerts("OutpostNodeMissing");
        (a.iter().any(|(state, _)| state == "pending" || state == "firing"), a)
    });
    assert_eq!(missing[0].1["severity"], "critical", "{missing:?}");
    let out = f.outpost_cli(0, &["stats", "--fleet"]).ok();
    assert!(out.stdout.contains("missing: edge-2"), "{out}");

    let status = prometheus.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "prometheus:\n{}", prometheus.report());
}
