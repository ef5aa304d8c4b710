//! `[access]` in outpost.toml: the auth host, identity providers and protected applications;
//! read and checked on start and on every reload, then resolved into [`Settings`] (secrets
//! read, host patterns parsed, lifetimes as durations).

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::policy::{AppPolicy, HostPattern};

/// `[access]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// The host that serves the login flow (`/login`, `/callback`, `/logout`, `/keys`), for
    /// example `auth.example.test`. Required. It must not be one of the protected hosts.
    pub auth_host: String,
    /// The HTTPS port clients reach the edge on, used in every URL the edge builds (redirects,
    /// the callback URL registered at the providers). Default 443 (left out of URLs).
    pub https_port: u16,
    /// Path prefix on every protected host that belongs to the edge, not to the origin:
    /// `<prefix>/authorized` (the code redemption) and `<prefix>/logout`. Default `/.outpost`.
    pub reserved_prefix: String,
    /// How long an auth-host session lives, in seconds: within it, expired app tokens are
    /// renewed and new apps are entered without asking the identity provider. Default 86400.
    pub session_lifetime_secs: u64,
    /// Lifetime of an app token (the JWT the edge signs for one app host), in seconds.
    /// Default 900.
    pub app_token_lifetime_secs: u64,
    /// Lifetime of a login's one-time state (PKCE verifier, nonce), in seconds. Default 600.
    pub state_lifetime_secs: u64,
    /// Lifetime of the one-time code that carries a token to the app host, in seconds.
    /// Default 60.
    pub code_lifetime_secs: u64,
    /// Bound on each exchange with an identity provider (discovery, code exchange, key
    /// fetch), in milliseconds: past it the user gets a 502 page. Default 5000.
    pub idp_timeout_ms: u64,
    /// A provider's signing keys are fetched again on an ID token with an unknown `kid`, at
    /// most this often, in seconds. Default 60.
    pub jwks_refetch_min_secs: u64,
    /// Header that carries the app token (the assertion) to the origin. Default
    /// `Outpost-Access-Jwt-Assertion`. Client copies are removed.
    pub assertion_header: String,
    /// Header that carries the user's email to the origin. Default
    /// `Outpost-Access-Authenticated-User-Email`. Client copies are removed.
    pub email_header: String,
    /// Identity providers, listed on the login page in this order.
    pub providers: Vec<ProviderConfig>,
    /// Protected applications.
    pub apps: Vec<AppConfig>,
}

impl Default for AccessConfig {
    fn default() -> AccessConfig {
        AccessConfig {
            auth_host: String::new(),
            https_port: 443,
            reserved_prefix: "/.outpost".into(),
            session_lifetime_secs: 24 * 3600,
            app_token_lifetime_secs: 15 * 60,
            state_lifetime_secs: 600,
            code_lifetime_secs: 60,
            idp_timeout_ms: 5000,
            jwks_refetch_min_secs: 60,
            assertion_header: "Outpost-Access-Jwt-Assertion".into(),
            email_header: "Outpost-Access-Authenticated-User-Email".into(),
            providers: Vec::new(),
            apps: Vec::new(),
        }
    }
}

/// `[[access.providers]]`: an OpenID Connect provider.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name, in URLs and audit events (`[a-z0-9_-]`). Required.
    pub name: String,
    /// Shown on the login page. Default: the name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Issuer URL (`https://` only: the code is exchanged over TLS); its
    /// `/.well-known/openid-configuration` is read on first use. Required.
    pub issuer: String,
    /// The client id registered at the provider. Required.
    pub client_id: String,
    /// A file whose first line is the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret. One of the two is required; the
    /// secret itself never appears in the config, in logs or in errors.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Scopes asked for. Default `["openid", "email", "profile"]`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// PEM certificates trusted for this provider's TLS besides the public roots (a private
    /// CA). Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// Debug never shows where the secret is beyond its source's name.
impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret_file", &self.client_secret_file)
            .field("client_secret_env", &self.client_secret_env)
            .field("scopes", &self.scopes)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `[[access.apps]]`: a protected application.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Name in logs and audit events. Default: the host pattern.
    #[serde(default)]
    pub name: Option<String>,
    /// Host pattern: exact (`wiki.example.test`) or `*.suffix`. Required.
    pub host: String,
    /// Path prefix (whole segments) the protection covers. Default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Emails let in (compared case-insensitively; the provider must mark them verified).
    #[serde(default)]
    pub allow_emails: Vec<String>,
    /// Email domains let in (`example.test`: exactly that domain; verified emails only).
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// Anyone the provider authenticates. Default false.
    #[serde(default)]
    pub allow_any_authenticated: bool,
    /// Paths (whole-segment prefixes) that pass without a token, e.g. `/healthz`.
    #[serde(default)]
    pub bypass: Vec<String>,
    /// Providers offered for this app, by name. Default: all.
    #[serde(default)]
    pub providers: Vec<String>,
}

fn default_path() -> String {
    "/".into()
}

/// A client secret: shown nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A provider, resolved: the secret read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSettings {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    /// PEM text of extra trusted roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// The configuration of one generation, checked and resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    pub auth_host: String,
    pub https_port: u16,
    pub reserved_prefix: String,
    pub session_lifetime: Duration,
    pub app_token_lifetime: Duration,
    pub state_lifetime: Duration,
    /// How long a login's intent (app and return path, no secrets) outlives its state, so a
    /// tab whose state expired can still pass on a live session.
    pub intent_lifetime: Duration,
    pub code_lifetime: Duration,
    pub idp_timeout: Duration,
    pub jwks_refetch_min: Duration,
    pub assertion_header: String,
    pub email_header: String,
    pub providers: Vec<ProviderSettings>,
    pub apps: Vec<AppPolicy>,
}

/// Largest lifetime accepted for any of the lifetimes, in seconds (a year): keeps time
/// arithmetic far from overflow.
const MAX_LIFETIME_SECS: u64 = 365 * 24 * 3600;

impl AccessConfig {
    /// Reads `[access]`.
    pub fn from_section(section: &toml::Value) -> Result<AccessConfig> {
        let c: AccessConfig = section.clone().try_into()?;
        Ok(c)
    }

    /// Checks everything and reads the secrets.
    pub fn resolve(&self) -> Result<Settings> {
        let auth_host = self.auth_host.trim().to_ascii_lowercase();
        if auth_host.is_empty() {
            bail!("auth_host is required (the host that serves /login and /callback)");
        }
        if !is_hostname(&auth_host) {
            bail!("auth_host {:?} is not a host name", self.auth_host);
        }
        let prefix = self.reserved_prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains(['?', '#', '\\']) {
            bail!("reserved_prefix {:?} must be a path such as /.outpost", self.reserved_prefix);
        }
        for (name, v) in [
            ("session_lifetime_secs", self.session_lifetime_secs),
            ("app_token_lifetime_secs", self.app_token_lifetime_secs),
            ("state_lifetime_secs", self.state_lifetime_secs),
            ("code_lifetime_secs", self.code_lifetime_secs),
        ] {
            if v == 0 || v > MAX_LIFETIME_SECS {
                bail!("{name} must be between 1 and {MAX_LIFETIME_SECS}");
            }
        }
        if self.idp_timeout_ms == 0 {
            bail!("idp_timeout_ms must be above 0");
        }
        for (name, h) in
            [("assertion_header", &self.assertion_header), ("email_header", &self.email_header)]
        {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                bail!("{name} {h:?} is not a header name");
            }
        }
        if self.providers.is_empty() {
            bail!("no identity provider: add an [[access.providers]] entry");
        }
        let mut providers: Vec<ProviderSettings> = Vec::new();
        for p in &self.providers {
            let resolved = p.resolve().with_context(|| format!("provider {:?}", p.name))?;
            if providers.iter().any(|q| q.name == resolved.name) {
                bail!("provider {:?} is listed twice", p.name);
            }
            providers.push(resolved);
        }
        let mut apps = Vec::new();
        for a in &self.apps {
            let app = a
                .resolve(&providers)
                .with_context(|| format!("app {}", a.name.as_deref().unwrap_or(&a.host)))?;
            if app.host.matches(&auth_host) {
                bail!(
                    "app {} covers the auth host {auth_host}: the login flow cannot be behind \
                     itself",
                    app.name
                );
            }
            apps.push(app);
        }
        Ok(Settings {
            auth_host,
            https_port: self.https_port,
            reserved_prefix: prefix.to_owned(),
            session_lifetime: Duration::from_secs(self.session_lifetime_secs),
            app_token_lifetime: Duration::from_secs(self.app_token_lifetime_secs),
            state_lifetime: Duration::from_secs(self.state_lifetime_secs),
            intent_lifetime: Duration::from_secs(self.state_lifetime_secs.max(3600)),
            code_lifetime: Duration::from_secs(self.code_lifetime_secs),
            idp_timeout: Duration::from_millis(self.idp_timeout_ms),
            jwks_refetch_min: Duration::from_secs(self.jwks_refetch_min_secs),
            assertion_header: self.assertion_header.clone(),
            email_header: self.email_header.clone(),
            providers,
            apps,
        })
    }
}

impl ProviderConfig {
    fn resolve(&self) -> Result<ProviderSettings> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            bail!("name must be non-empty [a-z0-9_-]");
        }
        if !self.issuer.starts_with("https://") {
            bail!("issuer {:?} must be an https:// URL", self.issuer);
        }
        if self.client_id.is_empty() {
            bail!("client_id is required");
        }
        let secret = match (&self.client_secret_file, &self.client_secret_env) {
            (Some(_), Some(_)) => bail!("set client_secret_file or client_secret_env, not both"),
            (None, None) => {
                bail!("a client secret is required: client_secret_file or client_secret_env")
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading client_secret_file {}", path.display()))?;
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            (None, Some(var)) => std::env::var(var)
                .with_context(|| format!("reading client_secret_env {var}: not set"))?
                .trim()
                .to_owned(),
        };
        if secret.is_empty() {
            bail!("the client secret is empty");
        }
        let ca_pem = match &self.ca_file {
            Some(p) => {
                Some(std::fs::read(p).with_context(|| format!("reading ca_file {}", p.display()))?)
            }
            None => None,
        };
        let mut scopes = self.scopes.clone();
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        Ok(ProviderSettings {
            name: self.name.clone(),
            display_name: self.display_name.clone().unwrap_or_else(|| self.name.clone()),
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret: Secret::new(secret),
            scopes,
            ca_pem,
        })
    }
}

impl AppConfig {
    fn resolve(&self, providers: &[ProviderSettings]) -> Result<AppPolicy> {
        let host = HostPattern::parse(&self.host)?;
        let path = normalize_prefix(&self.path)?;
        if self.allow_emails.is_empty()
            && self.allow_domains.is_empty()
            && !self.allow_any_authenticated
        {
            bail!(
                "nobody may enter: set allow_emails, allow_domains or allow_any_authenticated = true"
            );
        }
        let mut bypass = Vec::new();
        for b in &self.bypass {
            bypass.push(normalize_prefix(b).with_context(|| format!("bypass path {b:?}"))?);
        }
        for p in &self.providers {
            if !providers.iter().any(|q| &q.name == p) {
                bail!("unknown provider {p:?}");
            }
        }
        for d in &self.allow_domains {
            if d.contains('@') || !is_hostname(&d.to_ascii_lowercase()) {
                bail!("allow_domains entry {d:?} is not a domain");
            }
        }
        Ok(AppPolicy {
            name: self.name.clone().unwrap_or_else(|| self.host.clone()),
            host,
            path,
            emails: self.allow_emails.iter().map(|e| e.trim().to_ascii_lowercase()).collect(),
            domains: self.allow_domains.iter().map(|d| d.trim().to_ascii_lowercase()).collect(),
            any_authenticated: self.allow_any_authenticated,
            bypass,
            providers: self.providers.clone(),
        })
    }
}

/// `/api/` and `/api` both mean the segment prefix `/api`; `/` stays `/`.
fn normalize_prefix(p: &str) -> Result<String> {
    if !p.starts_with('/') || p.contains(['?', '#']) {
        bail!("path {p:?} must start with / and have no query");
    }
    let t = p.trim_end_matches('/');
    Ok(if t.is_empty() { "/".into() } else { t.into() })
}

/// Letters, digits, dots and dashes; no empty labels.
pub fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        r#"
        auth_host = "auth.example.test"
        [[providers]]
        name = "corp"
        issuer = "https://idp.example.test"
        client_id = "outpost"
        client_secret_env = "OUTPOST_ACCESS_TEST_SECRET"
        [[apps]]
        host = "wiki.example.test"
        allow_domains = ["example.test"]
        bypass = ["/healthz/"]
        "#
        .into()
    }

    fn parse(text: &str) -> Result<Settings> {
        let v: toml::Value = toml::from_str(text)?;
        AccessConfig::from_section(&v)?.resolve()
    }

    #[test]
    fn defaults_and_resolution() {
        std::env::set_var("OUTPOST_ACCESS_TEST_SECRET", "s3cret\n");
        let s = parse(&base()).unwrap();
        assert_eq!(s.session_lifetime, Duration::from_secs(86400));
        assert_eq!(s.app_token_lifetime, Duration::from_secs(900));
        assert_eq!(s.reserved_prefix, "/.outpost");
        assert_eq!(s.providers[0].client_secret.expose(), "s3cret");
        assert_eq!(s.apps[0].bypass, vec!["/healthz".to_owned()]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "secret in Debug: {shown}");
    }

    #[test]
    fn refusals() {
        std::env::set_var("OUTPOST_ACCESS_TEST_SECRET", "s3cret");
        for (edit, want) in [
            (("auth_host = \"auth.example.test\"", "auth_host = \"\""), "auth_host is required"),
            (("host = \"wiki.example.test\"", "host = \"*.example.test\""), "covers the auth host"),
            (("allow_domains = [\"example.test\"]", ""), "nobody may enter"),
            (
                ("client_secret_env = \"OUTPOST_ACCESS_TEST_SECRET\"", ""),
                "client secret is required",
            ),
            (
                (
                    "client_secret_env = \"OUTPOST_ACCESS_TEST_SECRET\"",
                    "client_secret_env = \"OUTPOST_ACCESS_UNSET_VAR\"",
                ),
                "not set",
            ),
            (("bypass = [\"/healthz/\"]", "bypass = [\"healthz\"]"), "must start with /"),
            (("https://idp.example.test", "http://idp.example.test"), "must be an https:// URL"),
            (("allow_domains = [\"example.test\"]", "allow_domains = [\"@x\"]"), "not a domain"),
        ] {
            let text = base().replace(edit.0, edit.1);
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(want), "{edit:?}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
