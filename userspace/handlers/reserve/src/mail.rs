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
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use askama::Template as _;
use lettre::{
    message::{Mailbox, MultiPart},
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
        AsyncSmtpTransportBuilder, PoolConfig,
    },
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
};
use outpost_store::OutboxItem;

use crate::{
    config::{ReserveConfig, StartTls},
    model::{now_ms, MailJob},
    pages::{utc, MailHtml, MailText},
    secret::{hex, Secret},
};

/// Sends the mails of one configuration.
///
/// SMTP connections are pooled and reused (lettre's pool, at most `[reserve.smtp]
/// concurrency`: as many mails are sent at once, the rest wait their turn, since the pool
/// would open a connection for each and close the surplus after one mail). The pool spawns its own tasks when built and when dropped, so it is built on
/// first use, on the runtime of the sender that uses it (the store's), and dropped there too.
pub struct Mailer {
    builder: AsyncSmtpTransportBuilder,
    transport: OnceLock<(AsyncSmtpTransport<Tokio1Executor>, tokio::runtime::Handle)>,
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
        let tls = || TlsParameters::new(s.host.clone()).context("[reserve.smtp] TLS setup");
        let tls = match s.starttls {
            StartTls::Never => Tls::None,
            StartTls::Opportunistic => Tls::Opportunistic(tls()?),
            StartTls::Required => Tls::Required(tls()?),
            StartTls::Tls => Tls::Wrapper(tls()?),
        };
        let pool = PoolConfig::new()
            .max_size(u32::try_from(s.concurrency.max(1)).unwrap_or(u32::MAX))
            .idle_timeout(Duration::from_secs(30));
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
            .port(s.port)
            .tls(tls)
            .timeout(Some(Duration::from_millis(s.timeout_ms)))
            .pool_config(pool);
        if let Some(user) = &s.username {
            b = b.credentials(Credentials::new(user.clone(), smtp_password(cfg)?));
        }
        Ok(Mailer {
            builder: b,
            transport: OnceLock::new(),
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
        let (transport, _) = self
            .transport
            .get_or_init(|| (self.builder.clone().build(), tokio::runtime::Handle::current()));
        let Ok(_turn) = self.sending.acquire().await else {
            return Err("the mailer is closed".into());
        };
        match transport.send(msg).await {
            Ok(_) => {
                tracing::info!(id = item.id, name = %job.name, attempts = item.attempts, "reserve: confirmation mail sent");
                Ok(())
            }
            Err(e) if e.is_permanent() => {
                tracing::warn!(id = item.id, name = %job.name, error = %e, "reserve: the SMTP server refused the mail for good; dropped");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(id = item.id, attempts = item.attempts, error = %e, "reserve: sending the mail failed; will retry");
                Err(format!("smtp: {e}"))
            }
        }
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

impl Drop for Mailer {
    fn drop(&mut self) {
        // The pool's drop spawns a task that closes its connections: on the runtime it runs on.
        if let Some((transport, rt)) = self.transport.take() {
            let _inside = rt.enter();
            drop(transport);
        }
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
