//! `outpost access ...`: the edge signing keys from the command line.
//!
//! - `outpost access keys rotate`: adds a key that every node signs with from its next key
//!   refresh on (within 10 s; at once on the node that rotated when done through its admin
//!   listener); the old keys keep verifying until the last token they signed has expired.
//! - `outpost access keys list [--json]`: kids and dates, never private parts.
//!
//! With embedded SQLite the running edge holds the store, so the command goes through the
//! edge's admin listener ([`try_admin`]); with PostgreSQL either way works.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use outpost_store::Store;

use crate::keys::{KeyInfo, KeyRing};

/// `outpost access <command>`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// The edge's signing keys (ES256, kept in the store, published at the auth host's /keys).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum KeysAction {
    /// Add a new signing key and retire the current one (it keeps verifying until the tokens
    /// it signed have expired). Nobody is logged out.
    Rotate,
    /// The keys in the store: kid, created, retired.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Runs `cmd` against the store.
pub fn run(cmd: Command, store: &Store) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    rt.block_on(async {
        match cmd {
            Command::Keys { action: KeysAction::Rotate } => {
                let r = KeyRing::rotate(store).await.context("rotating the edge keys")?;
                let reason = rotation_reason(&r.new_kid, &r.retired);
                let event = outpost_store::AuditEvent {
                    time: SystemTime::now(),
                    node: node_name(),
                    client: None,
                    host: None,
                    path: None,
                    user: None,
                    kind: "access.keys.rotate".into(),
                    outcome: "success".into(),
                    reason: Some(reason.clone()),
                };
                if let Err(e) = store.append_audit(vec![event]).await {
                    eprintln!("warning: audit event not written: {e}");
                }
                println!("{reason}");
            }
            Command::Keys { action: KeysAction::List { json } } => {
                let keys = KeyRing::list(store).await.context("reading the edge keys")?;
                print_keys(&keys, json)?;
            }
        }
        Ok(())
    })
}

/// Runs `cmd` through the admin listener of a running edge at `admin`. Ok(false) when no edge
/// answers there (then open the store and call [`run`]).
pub fn try_admin(cmd: &Command, admin: SocketAddr) -> Result<bool> {
    let (method, path) = match cmd {
        Command::Keys { action: KeysAction::Rotate } => ("POST", "/access/keys/rotate"),
        Command::Keys { action: KeysAction::List { .. } } => ("GET", "/access/keys"),
    };
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(2)) else {
        return Ok(false);
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("reading the edge's answer")?;
    let status: u16 = out.split(' ').nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if status == 404 {
        // An edge without [access]: nothing to rotate through it.
        return Ok(false);
    }
    if status != 200 {
        bail!("the edge at {admin} answered {status}: {}", body.trim());
    }
    match cmd {
        Command::Keys { action: KeysAction::List { json } } => {
            let keys: Vec<KeyInfo> = serde_json::from_str(body).context("the edge's key list")?;
            print_keys(&keys, *json)?;
        }
        Command::Keys { action: KeysAction::Rotate } => {
            let v: serde_json::Value = serde_json::from_str(body).context("the edge's answer")?;
            println!("{}", v["result"].as_str().unwrap_or(""));
        }
    }
    Ok(true)
}

pub(crate) fn rotation_reason(new_kid: &str, retired: &[String]) -> String {
    if retired.is_empty() {
        format!("new signing key {new_kid}")
    } else {
        format!("new signing key {new_kid}; retired {}", retired.join(", "))
    }
}

fn print_keys(keys: &[KeyInfo], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(keys)?);
        return Ok(());
    }
    println!("{:<44}  {:<20}  retired", "kid", "created");
    for k in keys {
        println!(
            "{:<44}  {:<20}  {}",
            k.kid,
            utc(k.created_ms),
            k.retired_ms.map_or_else(|| "-".to_owned(), utc)
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix milliseconds.
fn utc(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {}", &s[..10], &s[11..19])
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cli".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
    }
}
