//! `outpost stats --fleet`: the tables of `outpost stats`, summed over every live node of the
//! fleet. The nodes come from the registry in the shared store ([`crate::fleet`]); each is read
//! through its admin listener as its row names it (`/metrics` needs no token), the kernel's
//! counters included (`outpost_kernel_hellos_total`): the pinned maps are on each node's host,
//! not here. The kernel's parse outcomes are not in `/metrics`, so they are not summed.
//!
//! A node is read at the address its row gives; a row whose admin address is a wildcard
//! (`0.0.0.0`, `::`) is read at the host of its first listen address. Every answer must name
//! the node it was asked for (`outpost_node_info`): a loopback admin address in another node's
//! row reaches the reader's own host, and would count one node twice.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
};

use anyhow::{anyhow, bail, Result};
use dataplane::{versions_json, versions_since, write_versions, VersionTable};
use outpost_common::{Verdict, Version};
use serde_json::{json, Value};

use crate::{
    fleet::{list_nodes, now_ms, NodeRecord, NodeState},
    userspace::{add_versions, fetch_metrics, parse_kernel, parse_node, UserStats},
};

/// A node's kernel hellos (`None`: it shows none) and its userspace counters.
type Reading = (Option<VersionTable>, UserStats);
/// A row of a `--by-node` table: its name, a cell per node (`None`: the node has no such
/// table).
type Row = (String, Vec<Option<u64>>);

/// What one live node's admin listener gave.
#[derive(Clone, Debug)]
struct NodeStats {
    name: String,
    admin: String,
    /// What it showed, or why it could not be read.
    read: Result<Reading, String>,
}

/// One reading of the fleet.
#[derive(Clone, Debug)]
struct FleetStats {
    /// The live nodes, by name.
    nodes: Vec<NodeStats>,
    /// The others of the registry: name and state (missing, stopped), not read.
    others: Vec<(String, NodeState)>,
}

/// `outpost stats --fleet [--by-node] [--json] [--watch SECS]`.
pub fn run(config: Option<&Path>, json: bool, by_node: bool, watch: Option<u64>) -> Result<()> {
    let (_, cfg) = outpost_proxy::load_config(config)?;
    let store = crate::edge::open_tool_store(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let read = || -> Result<FleetStats> {
        let rows = rt.block_on(list_nodes(&store))?;
        FleetStats::read(rows)
    };
    let result = read().and_then(|first| {
        crate::show_watching(first, watch, json, read, FleetStats::since, |s| s.show(json, by_node))
    });
    store.shutdown();
    result
}

impl FleetStats {
    /// Reads every live node of `rows` at once (each admin answer is bounded: 2 s to connect, 2 s
    /// per read).
    fn read(rows: Vec<NodeRecord>) -> Result<FleetStats> {
        if rows.is_empty() {
            bail!("no node in the fleet's registry: is this the store the nodes share (--config)?");
        }
        let now = now_ms();
        let (live, others): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|r| r.state(now) == NodeState::Live);
        let others = others.into_iter().map(|r| (r.name.clone(), r.state(now))).collect();
        let nodes: Vec<NodeStats> = thread::scope(|s| {
            let reading: Vec<_> = live.iter().map(|r| s.spawn(move || read_node(r))).collect();
            reading
                .into_iter()
                .zip(&live)
                .map(|(h, r)| NodeStats {
                    name: r.name.clone(),
                    admin: r.admin.clone(),
                    read: h.join().unwrap_or_else(|_| Err("reading it panicked".into())),
                })
                .collect()
        });
        let fleet = FleetStats { nodes, others };
        if !fleet.nodes.iter().any(|n| n.read.is_ok()) {
            let why: Vec<String> = fleet
                .nodes
                .iter()
                .map(|n| format!("{}: {}", n.name, n.read.as_ref().err().map_or("", |e| e)))
                .collect();
            bail!(
                "no live node of the fleet answered ({} live){}",
                fleet.nodes.len(),
                why.iter().map(|w| format!("\n  {w}")).collect::<String>()
            );
        }
        Ok(fleet)
    }

    /// Growth since `earlier`, node by node (a node new since then shows all it counted).
    fn since(&self, earlier: &FleetStats) -> FleetStats {
        let before: BTreeMap<&str, &NodeStats> =
            earlier.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let then = before.get(n.name.as_str()).and_then(|b| b.read.as_ref().ok());
                let read = match (&n.read, then) {
                    (Ok((k, u)), Some((k0, u0))) => {
                        let kernel = match (k, k0) {
                            (Some(k), Some(k0)) => Some(versions_since(k, k0)),
                            (k, _) => *k,
                        };
                        Ok((kernel, u.since(u0)))
                    }
                    (read, _) => read.clone(),
                };
                NodeStats { read, ..n.clone() }
            })
            .collect();
        FleetStats { nodes, others: self.others.clone() }
    }

    /// The sums over the nodes that answered: kernel (and how many nodes have one), userspace.
    fn sums(&self) -> (Option<VersionTable>, usize, UserStats) {
        let (mut kernel, mut kernels, mut user) = (None, 0, UserStats::default());
        for (k, u) in self.nodes.iter().filter_map(|n| n.read.as_ref().ok()) {
            if let Some(k) = k {
                add_versions(kernel.get_or_insert_with(VersionTable::default), k);
                kernels += 1;
            }
            user.add(u);
        }
        (kernel, kernels, user)
    }

    fn show(&self, json: bool, by_node: bool) {
        for n in &self.nodes {
            if let Err(e) = &n.read {
                eprintln!("warning: {} (admin {}): {e}; left out of the sums", n.name, n.admin);
            }
        }
        if json {
            println!("{}", self.to_json());
        } else if by_node {
            print!("{}", self.by_node_tables());
        } else {
            print!("{}", self.tables());
        }
    }

    /// The first line: who was read, who was not.
    fn heading(&self) -> String {
        let answered: Vec<&str> =
            self.nodes.iter().filter(|n| n.read.is_ok()).map(|n| n.name.as_str()).collect();
        let mut s = format!(
            "fleet: {} of {} live node(s) read ({})",
            answered.len(),
            self.nodes.len(),
            answered.join(", ")
        );
        for state in [NodeState::Missing, NodeState::Stopped] {
            let names: Vec<&str> =
                self.others.iter().filter(|(_, s)| *s == state).map(|(n, _)| n.as_str()).collect();
            if !names.is_empty() {
                let _ = write!(s, "; {}: {}", state.name(), names.join(", "));
            }
        }
        s + "\n\n"
    }

    fn tables(&self) -> String {
        let (kernel, kernels, user) = self.sums();
        let mut out = self.heading();
        match kernel {
            Some(k) => {
                let _ = writeln!(out, "kernel (XDP), summed over {kernels} node(s)");
                let _ = write_versions(&mut out, &k);
            }
            None => out += "kernel (XDP): no node shows kernel counters\n",
        }
        let answered = self.nodes.iter().filter(|n| n.read.is_ok()).count();
        let _ = writeln!(out, "\nuserspace (outpost run), summed over {answered} node(s)\n{user}");
        out
    }

    /// A column per node that answered, then the fleet's; rows that are zero everywhere left
    /// out.
    fn by_node_tables(&self) -> String {
        let read: Vec<(&str, &Reading)> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.as_str(), n.read.as_ref().ok()?)))
            .collect();
        let width = read.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(10);
        let mut out = self.heading();
        let mut table = |title: &str, rows: Vec<Row>| {
            let _ = write!(out, "{title:<28}");
            for (name, _) in &read {
                let _ = write!(out, " {name:>width$}");
            }
            let _ = writeln!(out, " {:>width$}", "fleet");
            let shown = rows.iter().any(|(_, cells)| cells.iter().any(Option::is_some));
            let mut any = false;
            for (row, cells) in rows {
                if cells.iter().all(|c| c.unwrap_or(0) == 0) {
                    continue;
                }
                any = true;
                let _ = write!(out, "{row:<28}");
                for c in &cells {
                    let c = c.map_or("-".to_owned(), |c| c.to_string());
                    let _ = write!(out, " {c:>width$}");
                }
                let total: u64 = cells.iter().flatten().sum();
                let _ = writeln!(out, " {total:>width$}");
            }
            if !shown {
                out += "(no node shows these counters)\n";
            } else if !any {
                out += "(all zero)\n";
            }
            out += "\n";
        };
        let versions = |of: &dyn Fn(&Reading) -> Option<VersionTable>| {
            let mut rows = Vec::new();
            for v in Version::ALL {
                for d in Verdict::ALL {
                    let cells = read
                        .iter()
                        .map(|(_, r)| of(r).map(|t| t[v as usize][d as usize]))
                        .collect();
                    rows.push((format!("{} {}", v.name(), d.name()), cells));
                }
            }
            rows
        };
        table("kernel (XDP) hellos", versions(&|r| r.0));
        table("userspace hellos", versions(&|r| Some(r.1.versions)));
        let mut user: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
        let per_node: Vec<Vec<(&str, String, u64)>> =
            read.iter().map(|(_, r)| r.1.rows()).collect();
        if let Some(first) = per_node.first() {
            for (i, (title, row, _)) in first.iter().enumerate() {
                let cells = per_node.iter().map(|rows| Some(rows[i].2)).collect();
                user.entry(title).or_default().push((row.clone(), cells));
            }
        }
        // In the order `outpost stats` prints them.
        for title in ["negotiated (rustls)", "ALPN (handshakes)"] {
            table(title, user.remove(title).unwrap_or_default());
        }
        out
    }

    /// `{"nodes": [{"name", "admin", "kernel", "userspace", "error"}], "missing": [...],
    /// "stopped": [...], "fleet": {"nodes", "kernel_nodes", "kernel", "userspace"}}`
    fn to_json(&self) -> Value {
        let (kernel, kernels, user) = self.sums();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| match &n.read {
                Ok((k, u)) => json!({
                    "name": n.name,
                    "admin": n.admin,
                    "kernel": k.as_ref().map(versions_json),
                    "userspace": u.to_json(),
                    "error": null,
                }),
                Err(e) => json!({
                    "name": n.name, "admin": n.admin, "kernel": null, "userspace": null, "error": e,
                }),
            })
            .collect();
        let named = |state: NodeState| -> Vec<&str> {
            self.others.iter().filter(|(_, s)| *s == state).map(|(n, _)| n.as_str()).collect()
        };
        json!({
            "nodes": nodes,
            "missing": named(NodeState::Missing),
            "stopped": named(NodeState::Stopped),
            "fleet": {
                "nodes": self.nodes.iter().filter(|n| n.read.is_ok()).count(),
                "kernel_nodes": kernels,
                "kernel": kernel.as_ref().map(versions_json),
                "userspace": user.to_json(),
            },
        })
    }
}

/// Reads one node at the admin address of its row.
fn read_node(r: &NodeRecord) -> Result<Reading, String> {
    let admin = admin_addr(r).map_err(|e| format!("{e:#}"))?;
    let text = fetch_metrics(admin).map_err(|e| format!("{e:#}"))?;
    match parse_node(&text) {
        Some(name) if name == r.name => {}
        other => {
            return Err(format!(
                "{admin} answered as {} (a loopback admin address reaches the host that asks: \
                 give each node an `admin` address the others can reach)",
                other.map_or("an unnamed node".to_owned(), |n| format!("node {n:?}"))
            ))
        }
    }
    Ok((parse_kernel(&text), UserStats::parse(&text)))
}

/// Where to reach a node's admin listener: its row's `admin`, a wildcard address replaced by the
/// host of its first listen address.
fn admin_addr(r: &NodeRecord) -> Result<SocketAddr> {
    let mut admin: SocketAddr =
        r.admin.parse().map_err(|_| anyhow!("its admin address {:?} is not IP:port", r.admin))?;
    if admin.ip().is_unspecified() {
        let host = r
            .listen
            .iter()
            .filter_map(|l| l.parse::<SocketAddr>().ok())
            .map(|l| l.ip())
            .find(|ip: &IpAddr| !ip.is_unspecified())
            .ok_or_else(|| {
                anyhow!("its admin address {admin} is a wildcard, and so are its listen addresses")
            })?;
        admin.set_ip(host);
    }
    Ok(admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kernel: Option<u64>, tls13_pass: u64) -> NodeStats {
        let mut u = UserStats::default();
        u.versions[Version::Tls13 as usize][Verdict::Pass as usize] = tls13_pass;
        u.negotiated[1] = tls13_pass;
        let k = kernel.map(|n| {
            let mut t = VersionTable::default();
            t[Version::Tls10 as usize][Verdict::Reject as usize] = n;
            t
        });
        NodeStats { name: name.into(), admin: "192.0.2.1:9901".into(), read: Ok((k, u)) }
    }

    #[test]
    fn sums_and_columns() {
        let mut down = node("edge-3", None, 0);
        down.read = Err("no outpost admin listener".into());
        let f = FleetStats {
            nodes: vec![node("edge-1", Some(4), 7), node("edge-2", None, 5), down],
            others: vec![("edge-4".into(), NodeState::Stopped)],
        };
        let (kernel, kernels, user) = f.sums();
        assert_eq!(kernel.unwrap()[Version::Tls10 as usize][Verdict::Reject as usize], 4);
        assert_eq!(kernels, 1);
        assert_eq!(user.versions[Version::Tls13 as usize][Verdict::Pass as usize], 12);
        let j = f.to_json();
        assert_eq!(j["fleet"]["userspace"]["versions"]["TLS1.3"]["pass"], 12, "{j}");
        assert_eq!(j["fleet"]["nodes"], 2, "{j}");
        assert_eq!(j["nodes"][1]["kernel"], Value::Null, "{j}");
        assert_eq!(j["nodes"][2]["error"], "no outpost admin listener", "{j}");
        assert_eq!(j["stopped"][0], "edge-4", "{j}");
        let text = f.by_node_tables();
        assert!(
            text.starts_with("fleet: 2 of 3 live node(s) read (edge-1, edge-2); stopped: edge-4")
        );
        let row = |r: &str| {
            text.lines()
                .find(|l| l.starts_with(r))
                .unwrap_or_else(|| panic!("no {r:?} in\n{text}"))
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("TLS1.0 reject"), ["4", "-", "4"], "{text}");
        assert_eq!(row("TLS1.3 pass"), ["7", "5", "12"], "{text}");
        assert!(!text.contains("TLS1.2 drop"), "zero rows are left out:\n{text}");
        let none = FleetStats { nodes: vec![node("edge-2", None, 5)], others: vec![] };
        let text = none.by_node_tables();
        let kernel = text.lines().skip_while(|l| !l.starts_with("kernel (XDP) hellos")).nth(1);
        assert_eq!(kernel, Some("(no node shows these counters)"), "{text}");
        let later = FleetStats { nodes: vec![node("edge-1", Some(6), 9)], others: vec![] };
        let d = later.since(&f);
        let (k, _, u) = d.sums();
        assert_eq!(k.unwrap()[Version::Tls10 as usize][Verdict::Reject as usize], 2);
        assert_eq!(u.versions[Version::Tls13 as usize][Verdict::Pass as usize], 2);
    }

    #[test]
    fn a_wildcard_admin_is_reached_at_the_listen_host() {
        let r = NodeRecord {
            admin: "0.0.0.0:9901".into(),
            listen: vec!["0.0.0.0:80".into(), "198.18.20.11:443".into()],
            ..NodeRecord::default()
        };
        assert_eq!(admin_addr(&r).unwrap().to_string(), "198.18.20.11:9901");
        let r = NodeRecord { listen: vec!["[::]:443".into()], ..r };
        assert!(admin_addr(&r).is_err());
    }
}
