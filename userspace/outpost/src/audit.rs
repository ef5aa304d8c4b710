//! `outpost audit`: the audit log, from the running edge's admin listener or, with none
//! answering, straight from the store its configuration names.

use std::{net::SocketAddr, path::Path};

use anyhow::{bail, Context as _, Result};
use outpost_api::AuditEvent;

use crate::{
    edge::{self, AuditParams},
    userspace::admin_get,
};

pub fn show(
    params: &AuditParams,
    admin: SocketAddr,
    config: Option<&Path>,
    json: bool,
    token: Option<&str>,
) -> Result<()> {
    let events = match admin_get(admin, &format!("/audit?{}", params.to_query()), token) {
        Ok((200, body)) => serde_json::from_str::<Vec<AuditEvent>>(&body)
            .with_context(|| format!("{admin}/audit answered something that is not events"))?,
        Ok((status, body)) => bail!("{admin}/audit answered {status}: {}", body.trim()),
        // No edge running here: read the store itself.
        Err(_) => from_store(params, config)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let header = ["time (UTC)", "node", "kind", "outcome", "user", "client", "host/path reason"];
    println!(
        "{:<24} {:<12} {:<20} {:<8} {:<28} {:<16} {}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6]
    );
    for e in &events {
        println!(
            "{:<24} {:<12} {:<20} {:<8} {:<28} {:<16} {}{}{}",
            humantime::format_rfc3339_millis(e.time),
            e.node,
            e.kind,
            e.outcome,
            e.user.as_deref().unwrap_or("-"),
            e.client.as_deref().unwrap_or("-"),
            e.host.as_deref().unwrap_or(""),
            e.path.as_deref().unwrap_or(""),
            e.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        );
    }
    println!("{} event(s)", events.len());
    Ok(())
}

fn from_store(params: &AuditParams, config: Option<&Path>) -> Result<Vec<AuditEvent>> {
    let (_, cfg) = outpost_proxy::load_config(config)?;
    let store = edge::open_tool_store(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let events = rt.block_on(store.query_audit(&params.query()))?;
    store.shutdown();
    Ok(events)
}
