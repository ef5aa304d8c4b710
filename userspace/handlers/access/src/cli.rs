//! `outpost access ...`: the edge signing keys from the command line.
//!
//! - `outpost access keys rotate`: adds a key that every node signs with from its next key
//!   refresh on (within 10 s; at once on the node that rotated when done through its admin
//!   listener); the old keys keep verifying until the last token they signed has expired.
//! - `outpost access keys list [--json]`: kids and dates, never private parts.
//! - `outpost access revoke --user EMAIL | --session SID`: ends the user's sessions (or the
//!   one session) and refuses their app tokens on every node within 2 s (see
//!   [`crate::revocation`]); audited with the operator's node.
//!
//! With embedded SQLite the running edge holds the store, so the command goes through the
//! edge's admin listener ([`try_admin`]); with PostgreSQL either way works.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use outpost_api::{http::Request, Reply};
use outpost_store::Store;
use serde::Deserialize;

use crate::{
    flow::Gen,
    keys::{KeyInfo, KeyRing},
    revocation,
};

/// `outpost access <command>`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// The edge's signing keys (ES256, kept in the store, published at the auth host's /keys).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// End every session of a user (or one session) and refuse their app tokens on every
    /// node within 2 s: the kill switch for a lost laptop or a leaver.
    Revoke {
        /// The user: email (case-insensitive) or `<provider>:<subject>`.
        #[arg(
            long,
            value_name = "EMAIL",
            required_unless_present = "session",
            conflicts_with = "session"
        )]
        user: Option<String>,
        /// One session: its store key, the `sid` of its app tokens. Keys are base64url and
        /// may begin with `-`, so the value is taken as given.
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        session: Option<String>,
    },
}

/// What a command run on the store (no edge answering) needs from the config.
#[derive(Clone, Debug)]
pub struct Tool {
    /// The operator's node, for the audit log and the revocation record.
    pub node: String,
    /// The lifetimes of `[access]`: how long a revocation is kept.
    pub lifetimes: revocation::Lifetimes,
}

impl Tool {
    /// From this node's name and its `[access]` section (lifetimes only; no secret is read).
    pub fn from_config(node: String, access: Option<&toml::Value>) -> Tool {
        let d = revocation::Lifetimes::default();
        let secs = |key: &str, default: Duration| {
            access
                .and_then(|a| a.get(key))
                .and_then(toml::Value::as_integer)
                .and_then(|v| u64::try_from(v).ok())
                .map_or(default, Duration::from_secs)
        };
        let lifetimes = revocation::Lifetimes {
            app_token: secs("app_token_lifetime_secs", d.app_token),
            session: secs("session_lifetime_secs", d.session),
        };
        Tool { node, lifetimes }
    }
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
pub fn run(cmd: Command, store: &Store, tool: &Tool) -> Result<()> {
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
            Command::Revoke { user, session } => {
                let target = Target::of(user, session)?;
                let (result, who) = target
                    .apply(store, None, &tool.node, &tool.lifetimes)
                    .await
                    .context("revoking")?;
                let event = target.audit(&tool.node, who, &result);
                if let Err(e) = store.append_audit(vec![event]).await {
                    eprintln!("warning: audit event not written: {e}");
                }
                println!("{result}");
            }
        }
        Ok(())
    })
}

/// Runs `cmd` through the admin listener of a running edge at `admin`, sending the admin
/// `token` when there is one. Ok(false) when no edge answers there (then open the store and
/// call [`run`]).
pub fn try_admin(cmd: &Command, admin: SocketAddr, token: Option<&str>) -> Result<bool> {
    let (method, path) = match cmd {
        Command::Keys { action: KeysAction::Rotate } => ("POST", "/access/keys/rotate".into()),
        Command::Keys { action: KeysAction::List { .. } } => ("GET", "/access/keys".into()),
        Command::Revoke { user, session } => {
            let q = match (user, session) {
                (Some(u), _) => serde_urlencoded::to_string([("user", u)]),
                (None, Some(s)) => serde_urlencoded::to_string([("session", s)]),
                (None, None) => bail!("revoke what? give --user or --session"),
            }?;
            ("POST", format!("/access/revoke?{q}"))
        }
    };
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(2)) else {
        return Ok(false);
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
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
        Command::Keys { action: KeysAction::Rotate } | Command::Revoke { .. } => {
            let v: serde_json::Value = serde_json::from_str(body).context("the edge's answer")?;
            println!("{}", v["result"].as_str().unwrap_or(""));
        }
    }
    Ok(true)
}

/// What `revoke` ends.
enum Target {
    User(String),
    Session(String),
}

/// The query of `POST /access/revoke`.
#[derive(Deserialize, Default)]
struct RevokeParams {
    user: Option<String>,
    session: Option<String>,
}

impl Target {
    fn of(user: Option<String>, session: Option<String>) -> Result<Target> {
        match (user.filter(|u| !u.trim().is_empty()), session.filter(|s| !s.is_empty())) {
            (Some(u), None) => Ok(Target::User(u.trim().to_owned())),
            (None, Some(s)) if s.len() <= 128 => Ok(Target::Session(s)),
            (None, Some(_)) => bail!("not a session id"),
            _ => bail!("give exactly one of user or session"),
        }
    }

    /// Revokes; (what was done, for the operator and the audit log; the user).
    async fn apply(
        &self,
        store: &Store,
        local: Option<&revocation::Revocations>,
        node: &str,
        lifetimes: &revocation::Lifetimes,
    ) -> Result<(String, Option<String>), outpost_store::StoreError> {
        Ok(match self {
            Target::User(u) => {
                let n = revocation::revoke_user(store, local, u, node, lifetimes).await?;
                (format!("revoked {u}: {n} session(s) ended, every token refused"), Some(u.clone()))
            }
            Target::Session(sid) => {
                let who = revocation::revoke_session(store, local, sid, node, lifetimes).await?;
                let short: String = sid.chars().take(8).collect();
                let whose = who.as_deref().map_or_else(String::new, |w| format!(" of {w}"));
                (format!("revoked session {short}…{whose}: its tokens refused"), who)
            }
        })
    }

    fn audit(&self, node: &str, who: Option<String>, result: &str) -> outpost_store::AuditEvent {
        outpost_store::AuditEvent {
            time: SystemTime::now(),
            node: node.to_owned(),
            client: None,
            host: None,
            path: None,
            user: who,
            kind: "access.revoke".into(),
            outcome: "success".into(),
            reason: Some(result.to_owned()),
        }
    }
}

/// `POST /access/revoke?user=EMAIL` or `?session=SID` on the admin listener: applied on this
/// node at once, on the others within 2 s; audited after the answer.
pub(crate) async fn revoke_endpoint(gen: &Gen, req: &Request<'_>) -> Reply {
    if req.method != "POST" {
        return Reply::json_error(405, "use POST").header("Allow", "POST");
    }
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let Ok(p) = serde_urlencoded::from_str::<RevokeParams>(query) else {
        return Reply::json_error(400, "bad query: use user=EMAIL or session=ID");
    };
    let target = match Target::of(p.user, p.session) {
        Ok(t) => t,
        Err(e) => return Reply::json_error(400, &e.to_string()),
    };
    let r = &gen.shared.revocations;
    match target.apply(&gen.shared.store, Some(r), &gen.node, &r.lifetimes()).await {
        Ok((result, who)) => {
            tracing::info!(target: "outpost_access::revocation", "{result}");
            let event = target.audit(&gen.node, who, &result);
            let audit = gen.audit.clone();
            gen.shared.rt.spawn(async move { audit.write(event).await });
            Reply::new(200, "application/json", serde_json::json!({ "result": result }).to_string())
        }
        Err(e) => {
            tracing::warn!(target: "outpost_access::revocation", error = %e, "revocation failed");
            let why = match e {
                outpost_store::StoreError::Timeout => {
                    "the store did not answer in time; the revocation may not be written: run it again"
                }
                _ => "the store is unavailable; nothing was revoked: run it again",
            };
            Reply::json_error(503, why).header("Retry-After", "1")
        }
    }
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

    /// Session keys are base64url: one in 64 begins with `-`, and must not be read as a flag.
    #[test]
    fn a_session_key_may_begin_with_a_dash() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Command,
        }
        let key = "-p9zvjXG3FWORxhe8IexcyYO6ixzrUjK5-730qHeBq0";
        let cli = <Cli as clap::Parser>::try_parse_from(["access", "revoke", "--session", key])
            .expect("parses");
        let Command::Revoke { session, user } = cli.command else { panic!("not revoke") };
        assert_eq!(session.as_deref(), Some(key));
        assert_eq!(user, None);
        // Without a value it is still an error, not the next flag taken as the key.
        assert!(<Cli as clap::Parser>::try_parse_from(["access", "revoke", "--session"]).is_err());
    }
}
