//! `outpost reservations ...`: the operator's tools, straight on the store (no running edge
//! needed; with PostgreSQL, any node's config will do).

use anyhow::{bail, Result};
use outpost_store::{AuditEvent, Store};

use crate::{
    admin::{self, View},
    model::Reservations,
};

/// `outpost reservations <command>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Reservations in name order: name, state, email, until when a pending hold lasts.
    List {
        /// Start after this name (paging).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One reservation.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Frees a name (pending or confirmed) and its email, at once on every node.
    Release { name: String },
    /// Every reservation, to stdout.
    Export {
        /// CSV with a header line (the one format).
        #[arg(long, required = true)]
        csv: bool,
    },
}

/// Runs `cmd` against `store`, printing to stdout. Blocks (on a runtime of its own).
pub fn run(cmd: Command, store: &Store) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd, store))
}

async fn run_async(cmd: Command, store: &Store) -> Result<()> {
    // Hold and mail bounds play no part in these commands.
    let res = Reservations {
        store: store.clone(),
        hold: std::time::Duration::from_secs(1),
        mails_per_hour: 1,
    };
    match cmd {
        Command::List { after, limit, json } => {
            let page = res.list(after.as_deref(), limit.max(1)).await?;
            let views: Vec<View> = page.iter().map(|(n, r, _)| View::new(n, r)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!("{:<32} {:<10} {:<17} EMAIL", "NAME", "STATE", "EXPIRES (UTC)");
                for v in &views {
                    let exp = v.expires.as_deref().unwrap_or("-");
                    println!("{:<32} {:<10} {:<17} {}", v.name, v.state, exp, v.email);
                }
                println!("({} shown)", views.len());
            }
        }
        Command::Show { name, json } => match admin::show(&res, &name).await? {
            Some(v) if json => println!("{}", serde_json::to_string_pretty(&v)?),
            Some(v) => {
                println!("name:      {}", v.name);
                println!("state:     {}", v.state);
                println!("email:     {}", v.email);
                println!("created:   {} UTC", v.created);
                if let Some(e) = &v.expires {
                    println!("expires:   {e} UTC");
                }
                if let Some(c) = &v.confirmed {
                    println!("confirmed: {c} UTC");
                }
            }
            None => bail!("{name} is not reserved"),
        },
        Command::Release { name } => match res.release(&name).await? {
            Some(row) => {
                let node = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
                let ev = AuditEvent {
                    time: std::time::SystemTime::now(),
                    node: format!("{node} (outpost reservations)"),
                    client: None,
                    host: None,
                    path: None,
                    user: Some(row.email.clone()),
                    kind: "reserve.release".into(),
                    outcome: "success".into(),
                    reason: Some(format!("{name} released by the operator (CLI)")),
                };
                if let Err(e) = store.append_audit(vec![ev]).await {
                    eprintln!("warning: released, but the audit event was not written: {e}");
                }
                println!("released {name} ({}, {})", row.state.as_str(), row.email);
            }
            None => bail!("{name} is not reserved"),
        },
        Command::Export { csv: _ } => {
            // Streamed a page at a time: constant memory, the first rows out at once.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", View::CSV_HEADER)?;
            admin::pages(&res, |page| {
                for v in &page {
                    writeln!(out, "{}", v.csv_line())?;
                }
                out.flush()?;
                Ok::<_, anyhow::Error>(())
            })
            .await?;
        }
    }
    Ok(())
}
