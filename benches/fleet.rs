//! `fleet-bench`: how long a fleet policy change takes to reach every node (`cargo xtask bench
//! fleet`; root: network namespaces).
//!
//! For 2 and 8 edge nodes in namespaces of their own sharing one PostgreSQL
//! (`outpost_tests::fleet`, the same topology as the fleet tests), `outpost policy set --fleet`
//! alternates the floor between TLS 1.3 and TLS 1.2, 50 times. For each change, each node's log
//! says how long after the set it applied it (`since_set_ms`: the set time is in the policy row,
//! and all namespaces share this host's clock); the time to the last node is the change's
//! time. Reports p50, p99 and max of that over the changes, and of every node's time, as
//! markdown on stdout and JSON in `<results>/fleet-<secs>/fleet.json`. The target: p99 to the
//! last node ≤ 1 s. It reports; it never asserts a number.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use outpost_tests::fleet::Fleet;
use serde_json::json;

#[derive(Parser)]
#[command(name = "fleet-bench", about = "Time from `policy set --fleet` to every node applying it")]
struct Args {
    /// CI size: 2 nodes, 3 changes (the numbers mean little).
    #[arg(long)]
    tiny: bool,
    /// Changes per fleet size.
    #[arg(long, default_value_t = 50)]
    changes: u64,
    /// Fleet sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [2, 8])]
    nodes: Vec<usize>,
    /// Reports go to `<results>/fleet-<secs>/`.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

/// Bound on one change reaching every node; past it the bench fails.
const LIMIT: Duration = Duration::from_secs(10);

struct Row {
    nodes: usize,
    changes: u64,
    last: Histogram<u64>,
    each: Histogram<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (sizes, changes) = match args.tiny {
        true => (vec![2], 3),
        false => (args.nodes.clone(), args.changes),
    };
    let mut rows = Vec::new();
    for nodes in sizes {
        if !(1..=9).contains(&nodes) {
            bail!("--nodes: 1 to 9 per fleet");
        }
        rows.push(run(nodes, changes)?);
    }
    let mut text = String::from(
        "| nodes | changes | to the last node p50 | p99 | max | any node p50 | p99 |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in &rows {
        text += &format!(
            "| {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms |\n",
            r.nodes,
            r.changes,
            r.last.value_at_quantile(0.5),
            r.last.value_at_quantile(0.99),
            r.last.max(),
            r.each.value_at_quantile(0.5),
            r.each.value_at_quantile(0.99),
        );
    }
    text += "\nTarget: p99 to the last node ≤ 1000 ms (nodes check the policy every 250 ms).\n";
    print!("{text}");
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let dir = args.results.join(format!("fleet-{secs}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "nodes": r.nodes,
                "changes": r.changes,
                "last_node_ms": { "p50": r.last.value_at_quantile(0.5),
                    "p99": r.last.value_at_quantile(0.99), "max": r.last.max() },
                "any_node_ms": { "p50": r.each.value_at_quantile(0.5),
                    "p99": r.each.value_at_quantile(0.99), "max": r.each.max() },
            })
        })
        .collect();
    let report = json!({ "bench": "fleet", "tiny": args.tiny, "rows": rows });
    std::fs::write(dir.join("fleet.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(dir.join("fleet.md"), &text)?;
    Ok(())
}

/// One fleet of `nodes`, `changes` policy changes through it.
fn run(nodes: usize, changes: u64) -> Result<Row> {
    let f = Fleet::new(nodes, "");
    let mut row = Row {
        nodes,
        changes,
        last: Histogram::new(3).context("histogram")?,
        each: Histogram::new(3).context("histogram")?,
    };
    for n in 0..changes {
        let version = if n % 2 == 0 { "1.3" } else { "1.2" };
        let set = f.outpost_cli(0, &["policy", "set", "--fleet", "--min-version", version]);
        if !set.success() {
            bail!("policy set --fleet failed:\n{set}");
        }
        let generation = set
            .stdout
            .split_once("generation ")
            .and_then(|(_, rest)| rest.split(':').next()?.parse::<u64>().ok())
            .with_context(|| format!("no generation in {:?}", set.stdout))?;
        let took = f.wait_applied(generation, LIMIT);
        for t in &took {
            row.each.record(t.as_millis() as u64)?;
        }
        row.last.record(took.iter().max().map_or(0, |t| t.as_millis() as u64))?;
    }
    Ok(row)
}
