//! `[reserve]` in outpost.toml. Every field has a default, so `[reserve]` with a `host` and a
//! `zone` is a working reservation page (mail goes to an SMTP server on localhost:25).
//!
//! ```toml
//! [reserve]
//! host = "reserve.example.test"
//! zone = "workers.example.test"
//! public_url = "https://reserve.example.test"
//! hold_secs = 86400
//! blocked = ["acme", "acme-*"]          # added to the default list
//! [reserve.smtp]
//! host = "mail.example.test"
//! port = 587
//! from = "Reservations <reserve@example.test>"
//! starttls = "opportunistic"
//! username = "reserve"
//! password_file = "/etc/outpost/smtp-password"
//! [reserve.limits]
//! reserve_per_ip_per_minute = 30
//! ```

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

/// `[reserve]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReserveConfig {
    /// Host of the reservation page and API. Default `reserve.example.test`.
    pub host: String,
    /// Zone the names are reserved under (`<name>.<zone>`). Default `workers.example.test`.
    pub zone: String,
    /// Base of the links in mails and the origin forms must come from. Default
    /// `https://<host>`.
    pub public_url: Option<String>,
    /// How long a pending (unconfirmed) reservation holds its name and email, in seconds.
    /// Default 86400 (24 h).
    pub hold_secs: u64,
    /// Blocked names and glob patterns (`*` any run, `?` one character), added to
    /// [`crate::names::DEFAULT_BLOCKED`] unless `default_blocklist = false`.
    pub blocked: Vec<String>,
    /// Whether the default list of infrastructure and phishing-prone names applies. Default
    /// true.
    pub default_blocklist: bool,
    /// Largest request body accepted by `POST /reserve`, in bytes. Default 4096.
    pub max_body_bytes: usize,
    /// A file (at least 16 bytes, e.g. `head -c 32 /dev/urandom`) whose contents key the
    /// sealing of confirm tokens in the outbox and the CSRF tokens. Required with a PostgreSQL
    /// store, and every node sharing it needs the same file. Default: none, and
    /// `<data_dir>/reserve.secret` is created with 32 random bytes (embedded store, one node).
    pub secret_file: Option<PathBuf>,
    /// Mails a pending reservation may get per hour, the first one included; repeating the
    /// same reservation sends the mail again within this bound. Default 4 (the first and three
    /// resends).
    pub mails_per_hour: u32,
    /// How often the expiry sweep looks for pending holds past their end, in milliseconds.
    /// Default 10000.
    pub expiry_sweep_ms: u64,
    /// Outgoing mail.
    pub smtp: SmtpConfig,
    /// Rate limits, per node.
    pub limits: LimitsConfig,
}

impl Default for ReserveConfig {
    fn default() -> Self {
        ReserveConfig {
            host: "reserve.example.test".into(),
            zone: "workers.example.test".into(),
            public_url: None,
            hold_secs: 24 * 3600,
            blocked: Vec::new(),
            default_blocklist: true,
            max_body_bytes: 4096,
            secret_file: None,
            mails_per_hour: 4,
            expiry_sweep_ms: 10_000,
            smtp: SmtpConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `[reserve.smtp]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// SMTP server. Default `localhost`.
    pub host: String,
    /// Default 25.
    pub port: u16,
    /// `From:` of the mails. Default `reservations@<zone>`.
    pub from: Option<String>,
    /// `"opportunistic"` (the default: STARTTLS when the server offers it), `"required"`
    /// (refuse to send without it), `"never"` (plain; for a relay on localhost), or `"tls"`
    /// (TLS from the first byte, port 465).
    pub starttls: StartTls,
    /// User for SMTP AUTH; none: no AUTH.
    pub username: Option<String>,
    /// File holding the SMTP password (first line).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the SMTP password (when no `password_file`).
    pub password_env: Option<String>,
    /// Bound on one delivery (connect, dialogue, data), in milliseconds. Default 10000.
    pub timeout_ms: u64,
    /// SMTP connections this node keeps open at most (reused from mail to mail), and so mails
    /// it sends at once. Default 16.
    pub concurrency: usize,
    /// Outbox senders on this node, each with up to 32 mails in hand (a batch of 16 delivering
    /// while the next is claimed). Default 2.
    pub senders: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "localhost".into(),
            port: 25,
            from: None,
            starttls: StartTls::Opportunistic,
            username: None,
            password_file: None,
            password_env: None,
            timeout_ms: 10_000,
            concurrency: 16,
            senders: 2,
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// STARTTLS when the server offers it, plain otherwise.
    Opportunistic,
    /// STARTTLS or no delivery (retried later).
    Required,
    /// Never: plain SMTP.
    Never,
    /// Implicit TLS (SMTPS, port 465).
    Tls,
}

/// `[reserve.limits]`: per client address and per email, per node (each node counts alone, so
/// N nodes allow up to N times these).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `POST /reserve` per client address per minute. Default 20.
    pub reserve_per_ip_per_minute: u32,
    /// `POST /reserve` per email per hour. Default 10.
    pub reserve_per_email_per_hour: u32,
    /// `GET /api/availability` per client address per minute. Default 240.
    pub availability_per_ip_per_minute: u32,
    /// `GET /confirm` per client address per minute. Default 30.
    pub confirm_per_ip_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            reserve_per_ip_per_minute: 20,
            reserve_per_email_per_hour: 10,
            availability_per_ip_per_minute: 240,
            confirm_per_ip_per_minute: 30,
        }
    }
}

impl ReserveConfig {
    /// Reads and checks `[reserve]`.
    pub fn from_section(section: Option<&toml::Value>) -> Result<ReserveConfig> {
        let c: ReserveConfig = match section {
            Some(v) => v.clone().try_into().context("[reserve]")?,
            None => ReserveConfig::default(),
        };
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        if self.host.is_empty() || self.zone.is_empty() {
            bail!("[reserve] host and zone must not be empty");
        }
        if self.hold_secs == 0 {
            bail!("[reserve] hold_secs must be above 0");
        }
        if self.max_body_bytes < 64 {
            bail!("[reserve] max_body_bytes must be at least 64");
        }
        if self.mails_per_hour == 0 {
            bail!("[reserve] mails_per_hour must be at least 1");
        }
        let l = &self.limits;
        if [
            l.reserve_per_ip_per_minute,
            l.reserve_per_email_per_hour,
            l.availability_per_ip_per_minute,
            l.confirm_per_ip_per_minute,
        ]
        .contains(&0)
        {
            bail!("[reserve.limits] every limit must be at least 1");
        }
        if let Some(u) = &self.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                bail!("[reserve] public_url {u:?} must start with https:// (or http://)");
            }
        }
        for b in &self.blocked {
            if b.is_empty() || !b.bytes().all(|c| c.is_ascii_alphanumeric() || b"-*?".contains(&c))
            {
                bail!("[reserve] blocked entry {b:?}: use a-z, 0-9, '-', and '*' or '?'");
            }
        }
        Ok(())
    }

    pub fn hold(&self) -> Duration {
        Duration::from_secs(self.hold_secs)
    }

    /// The public base URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("https://{}", self.host),
        }
    }

    pub fn from_address(&self) -> String {
        self.smtp.from.clone().unwrap_or_else(|| format!("reservations@{}", self.zone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = ReserveConfig::from_section(None).unwrap();
        assert_eq!(c.hold(), Duration::from_secs(86400));
        assert_eq!(c.public_url(), "https://reserve.example.test");
        let v: toml::Value = toml::from_str(
            "host = \"r.test\"\nzone = \"z.test\"\npublic_url = \"https://r.test:8443/\"\n\
             [smtp]\nport = 2525\nstarttls = \"never\"\n",
        )
        .unwrap();
        let c = ReserveConfig::from_section(Some(&v)).unwrap();
        assert_eq!(c.public_url(), "https://r.test:8443");
        assert_eq!(c.smtp.starttls, StartTls::Never);
        assert_eq!(c.from_address(), "reservations@z.test");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "hold_secs = 0",
            "unknown = 1",
            "blocked = [\"a b\"]",
            "public_url = \"ftp://x\"",
            "[limits]\nreserve_per_ip_per_minute = 0",
        ] {
            let v: toml::Value = toml::from_str(text).unwrap();
            assert!(ReserveConfig::from_section(Some(&v)).is_err(), "{text}");
        }
    }
}
