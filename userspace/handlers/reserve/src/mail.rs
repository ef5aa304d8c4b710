//! The confirmation mail: rendered from an outbox row and sent over SMTP by the store's outbox
//! worker (on the store's runtime, never on a proxy worker).
//!
//! Delivery is at least once: a row is completed only after the SMTP server accepted the mail,
//! and retried with backoff while the server is down or answers a temporary failure. A
//! permanent refusal (5xx, such as an unknown mailbox) or a hold that ended before the mail
//! could go out completes the row with a warning: retrying cannot help. Each mail carries a
//! `Message-ID` derived from the outbox row, so a mail delivered twice (a lease that ran out
//! mid-send) is recognisably the same mail.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use askama::Template as _;
use lettre::{
    message::{Mailbox, MultiPart},
    transport::smtp::{
        authentication::{Credentials, DEFAULT_MECHANISMS},
        client::{AsyncSmtpConnection, Tls, TlsParameters},
        extension::ClientId,
    },
    Message,
};
use outpost_store::OutboxItem;

use crate::{
    config::{ReserveConfig, StartTls},
    model::{now_ms, MailJob},
    pages::{utc, MailHtml, MailText},
    secret::{hex, Secret},
};

/// A pooled connection idle for longer than this is closed rather than reused.
const IDLE_MAX: Duration = Duration::from_secs(30);
/// A pooled connection idle for longer than this is asked (NOOP) whether it is still open
/// before a mail goes over it; one used since is trusted, saving a round trip a mail.
const IDLE_CHECKED: Duration = Duration::from_secs(1);

/// Sends the mails of one configuration.
///
/// SMTP connections are kept open and reused from mail to mail (lettre's SMTP client over
/// this pool): at most `[reserve.smtp] concurrency` of them, and as many mails sent at once.
/// The pool is the mailer's own rather than lettre's for the socket: lettre writes a mail's
/// content and its final `.` in two writes, and with Nagle's algorithm on (lettre's sockets)
/// the second waits for the server's delayed ACK of the first, 40 ms a mail on Linux.
/// Connections here have `TCP_NODELAY` (but implicit TLS, `starttls = "tls"`, where lettre
/// opens the socket itself).
pub struct Mailer {
    host: String,
    port: u16,
    /// How the connection is protected, with its TLS parameters (lettre's form).
    tls: Tls,
    hello: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
    /// Open connections not in use, each with when it was last used.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    /// One per connection the pool may keep: a mail is sent holding one.
    sending: tokio::sync::Semaphore,
    from: Mailbox,
    public_url: String,
    zone: String,
    secret: Arc<Secret>,
}

impl Mailer {
    pub fn new(cfg: &ReserveConfig, secret: Arc<Secret>) -> Result<Mailer> {
        let s = &cfg.smtp;
        let from: Mailbox = cfg
            .from_address()
            .parse()
            .with_context(|| format!("[reserve.smtp] from {:?}", cfg.from_address()))?;
        let params = || TlsParameters::new(s.host.clone()).context("[reserve.smtp] TLS setup");
        let tls = match s.starttls {
            StartTls::Never => Tls::None,
            StartTls::Opportunistic => Tls::Opportunistic(params()?),
            StartTls::Required => Tls::Required(params()?),
            StartTls::Tls => Tls::Wrapper(params()?),
        };
        let credentials = match &s.username {
            Some(user) => Some(Credentials::new(user.clone(), smtp_password(cfg)?)),
            None => None,
        };
        Ok(Mailer {
            host: s.host.clone(),
            port: s.port,
            tls,
            hello: ClientId::default(),
            credentials,
            timeout: Duration::from_millis(s.timeout_ms),
            idle: Mutex::new(Vec::new()),
            sending: tokio::sync::Semaphore::new(s.concurrency.max(1)),
            from,
            public_url: cfg.public_url(),
            zone: cfg.zone.clone(),
            secret,
        })
    }

    /// Delivers one outbox row. `Err` asks the worker to retry it later.
    pub async fn deliver(&self, item: &OutboxItem) -> Result<(), String> {
        let job: MailJob = match serde_json::from_slice(&item.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(id = item.id, error = %e, "reserve: unreadable mail row dropped");
                return Ok(());
            }
        };
        if now_ms() >= job.hold_until_ms {
            tracing::warn!(id = item.id, name = %job.name, "reserve: hold ended before its mail could be sent; dropped");
            return Ok(());
        }
        let msg = self.render(&job, item.id)?;
        let Ok(_turn) = self.sending.acquire().await else {
            return Err("the mailer is closed".into());
        };
        let sent = tokio::time::timeout(self.timeout, self.send(&msg)).await;
        match sent {
            Ok(Ok(())) => {
                tracing::info!(id = item.id, name = %job.name, attempts = item.attempts, "reserve: confirmation mail sent");
                Ok(())
            }
            Ok(Err(e)) if e.permanent => {
                tracing::warn!(id = item.id, name = %job.name, error = %e, "reserve: the SMTP server refused the mail for good; dropped");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(id = item.id, attempts = item.attempts, error = %e, "reserve: sending the mail failed; will retry");
                Err(format!("smtp: {e}"))
            }
            Err(_) => {
                tracing::warn!(
                    id = item.id,
                    attempts = item.attempts,
                    "reserve: sending the mail timed out; will retry"
                );
                Err("smtp: timed out".into())
            }
        }
    }

    /// Sends `msg` over a pooled connection (or a new one), and pools the connection again
    /// unless it failed.
    async fn send(&self, msg: &Message) -> Result<(), Failed> {
        let mut conn = match self.pooled().await {
            Some(c) => c,
            None => self.connect().await?,
        };
        let sent = conn.send(msg.envelope(), &msg.formatted()).await;
        // A refusal of this mail (a 5xx to RCPT) leaves the connection usable.
        if sent.is_ok() || !conn.has_broken() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push((conn, Instant::now()));
        }
        sent.map(|_| ()).map_err(Failed::from)
    }

    /// The most recently used idle connection still open; those idle too long are closed.
    async fn pooled(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut conn, used) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let idle = used.elapsed();
            if idle > IDLE_MAX {
                conn.abort().await;
                continue;
            }
            if idle <= IDLE_CHECKED || conn.test_connected().await {
                return Some(conn);
            }
            conn.abort().await;
        }
    }

    /// A new connection: TCP (`TCP_NODELAY`), EHLO, STARTTLS as configured, AUTH when a
    /// username is set.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failed> {
        let mut conn = match &self.tls {
            Tls::Wrapper(tls) => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    Some(tls.clone()),
                    None,
                )
                .await?
            }
            _ => {
                let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| Failed::io("connecting", e))?;
                tcp.set_nodelay(true).map_err(|e| Failed::io("setting TCP_NODELAY", e))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await?
            }
        };
        match &self.tls {
            Tls::Opportunistic(tls) if conn.can_starttls() => {
                conn.starttls(tls.clone(), &self.hello).await?;
            }
            Tls::Required(tls) => conn.starttls(tls.clone(), &self.hello).await?,
            _ => {}
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }

    /// The mail of `job`: plain text and HTML with the confirm link.
    pub fn render(&self, job: &MailJob, id: i64) -> Result<Message, String> {
        let token = self.secret.open(&job.sealed, &job.name).ok_or(
            "the sealed token does not open with this node's secret \
             (nodes sharing a store need the same [reserve] secret_file)",
        )?;
        let link = format!("{}/confirm?token={}", self.public_url, hex(&token));
        let fqdn = format!("{}.{}", job.name, self.zone);
        let until = utc(job.hold_until_ms);
        let text = MailText { fqdn: &fqdn, link: &link, until: &until }.render();
        let html = MailHtml { fqdn: &fqdn, link: &link, until: &until }.render();
        let (text, html) = match (text, html) {
            (Ok(t), Ok(h)) => (t, h),
            (Err(e), _) | (_, Err(e)) => return Err(format!("rendering the mail: {e}")),
        };
        let to: Mailbox = job.to.parse().map_err(|e| format!("recipient {:?}: {e}", job.to))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("Confirm your reservation of {fqdn}"))
            .message_id(Some(format!("<reserve-{id}@{}>", self.zone)))
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| format!("building the mail: {e}"))
    }
}

/// Why a mail was not sent: permanent when the server refused it for good (5xx).
#[derive(Debug)]
struct Failed {
    permanent: bool,
    why: String,
}

impl Failed {
    fn io(doing: &str, e: std::io::Error) -> Failed {
        Failed { permanent: false, why: format!("{doing}: {e}") }
    }
}

impl From<lettre::transport::smtp::Error> for Failed {
    fn from(e: lettre::transport::smtp::Error) -> Failed {
        Failed { permanent: e.is_permanent(), why: e.to_string() }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// The SMTP password: `password_file` (first line), else `password_env`.
fn smtp_password(cfg: &ReserveConfig) -> Result<String> {
    let s = &cfg.smtp;
    if let Some(path) = &s.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("[reserve.smtp] password_file {}", path.display()))?;
        return Ok(text.lines().next().unwrap_or("").to_owned());
    }
    if let Some(var) = &s.password_env {
        return std::env::var(var)
            .with_context(|| format!("[reserve.smtp] password_env: ${var} is not set"));
    }
    anyhow::bail!("[reserve.smtp] username is set: set password_file or password_env too")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::new_token;

    #[test]
    fn the_mail_carries_the_link_in_both_parts() {
        let secret = Arc::new(Secret::from_bytes(b"0123456789abcdef0123456789abcdef"));
        let cfg = ReserveConfig {
            public_url: Some("https://reserve.test:8443".into()),
            zone: "w.test".into(),
            ..ReserveConfig::default()
        };
        let m = Mailer::new(&cfg, secret.clone()).unwrap();
        let token = new_token();
        let job = MailJob {
            to: "alice@example.com".into(),
            name: "alice".into(),
            sealed: secret.seal(&token, "alice"),
            hold_until_ms: now_ms() + 1000,
        };
        let raw = String::from_utf8(m.render(&job, 7).unwrap().formatted()).unwrap();
        let text = quoted_printable_decode(&raw);
        let link = format!("https://reserve.test:8443/confirm?token={}", hex(&token));
        assert!(text.contains("Subject: Confirm your reservation of alice.w.test"), "{text}");
        assert!(text.contains("Message-ID: <reserve-7@w.test>"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.matches(&link).count() >= 3, "{text}");
        assert!(!raw.contains(&hex(&token)[..20]) || raw.contains("=3D"), "encoded as sent");
        // Another name cannot open this token.
        let moved = MailJob { name: "bob".into(), ..job };
        assert!(m.render(&moved, 8).is_err());
    }

    /// Soft line breaks removed and `=XX` decoded: enough to read the link back.
    pub fn quoted_printable_decode(s: &str) -> String {
        let s = s.replace("=\r\n", "").replace("=\n", "");
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
