//! Which application a request belongs to, who may enter it, and which return paths are safe
//! to send a browser to.

use anyhow::{bail, Result};

use crate::config::is_hostname;

/// A host pattern: exact or `*.suffix` (any depth), or `*` (every host but the auth host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `.example.test` for `*.example.test`.
    Suffix(String),
    Any,
}

impl HostPattern {
    pub fn parse(p: &str) -> Result<HostPattern> {
        let p = p.trim().to_ascii_lowercase();
        if p == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = p.strip_prefix("*.") {
            if !is_hostname(rest) {
                bail!("host pattern {p:?}: expected name, *.suffix or *");
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if !is_hostname(&p) {
            bail!("host pattern {p:?}: expected name, *.suffix or *");
        }
        Ok(HostPattern::Exact(p))
    }

    /// How specific a match of `host` (lowercase, no port) is, or None: exact beats the
    /// longest suffix beats `*`, as the router ranks routes.
    pub fn rank(&self, host: &str) -> Option<usize> {
        match self {
            HostPattern::Exact(h) => (h == host).then_some(usize::MAX),
            HostPattern::Suffix(s) => {
                (host.len() > s.len() && host.ends_with(s.as_str())).then_some(s.len())
            }
            HostPattern::Any => Some(0),
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        self.rank(host).is_some()
    }

    /// The pattern as the router takes it.
    pub fn route_host(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Suffix(s) => format!("*{s}"),
            HostPattern::Any => "*".into(),
        }
    }
}

/// A protected application, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPolicy {
    pub name: String,
    pub host: HostPattern,
    /// Whole-segment path prefix; `/` for the whole host.
    pub path: String,
    /// Lowercase emails.
    pub emails: Vec<String>,
    /// Lowercase domains.
    pub domains: Vec<String>,
    pub any_authenticated: bool,
    /// Whole-segment prefixes that need no token.
    pub bypass: Vec<String>,
    /// Providers offered (empty: all).
    pub providers: Vec<String>,
}

/// Why a user was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The policy is by email and the provider did not mark the email verified.
    EmailNotVerified,
    /// No email, or an email no rule admits.
    NotAllowed,
}

impl Denial {
    pub fn reason(self) -> &'static str {
        match self {
            Denial::EmailNotVerified => "email not verified by the identity provider",
            Denial::NotAllowed => "not allowed by the application's policy",
        }
    }
}

impl AppPolicy {
    /// Whether this user may enter.
    pub fn admits(&self, email: Option<&str>, email_verified: bool) -> Result<(), Denial> {
        if self.any_authenticated {
            return Ok(());
        }
        let Some(email) = email else { return Err(Denial::NotAllowed) };
        let email = email.to_ascii_lowercase();
        let by_email = self.emails.contains(&email);
        let by_domain = email
            .rsplit_once('@')
            .is_some_and(|(local, d)| !local.is_empty() && self.domains.iter().any(|x| x == d));
        if !(by_email || by_domain) {
            return Err(Denial::NotAllowed);
        }
        if !email_verified {
            return Err(Denial::EmailNotVerified);
        }
        Ok(())
    }

    pub fn bypassed(&self, path: &str) -> bool {
        self.bypass.iter().any(|b| prefix_matches(b, path))
    }

    pub fn offers(&self, provider: &str) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|p| p == provider)
    }
}

/// The application a request for `host` (lowercase, no port) and `path` belongs to: the most
/// specific host, then the longest path prefix.
pub fn select<'a>(apps: &'a [AppPolicy], host: &str, path: &str) -> Option<&'a AppPolicy> {
    apps.iter()
        .filter_map(|a| {
            let rank = a.host.rank(host)?;
            prefix_matches(&a.path, path).then_some(((rank, a.path.len()), a))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, a)| a)
}

/// Whether some application covers `host` at all.
pub fn protects_host(apps: &[AppPolicy], host: &str) -> bool {
    apps.iter().any(|a| a.host.matches(host))
}

pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Longest return path accepted.
pub const MAX_RETURN_PATH: usize = 2048;

/// Checks a return path (`rd`): only a path on the app's own host. Refused: anything that
/// does not start with exactly one `/` (`//evil.test`, `https:evil.test`, `evil.test`),
/// backslashes (browsers read `/\evil.test` as `//evil.test`), control characters and
/// whitespace (browsers drop tabs and newlines from URLs), and the same forms hidden behind
/// percent-encoding, at any depth.
pub fn check_return_path(rd: &str) -> Result<(), &'static str> {
    if rd.is_empty() || rd.len() > MAX_RETURN_PATH {
        return Err("return path empty or too long");
    }
    let mut layer = rd.to_owned();
    // Each decoding must keep the form safe: a browser or an origin may decode again.
    for depth in 0..4 {
        check_layer(&layer, depth == 0)?;
        let decoded = percent_decode(&layer)?;
        if decoded == layer {
            return Ok(());
        }
        layer = decoded;
    }
    Err("return path encoded too many times")
}

/// `raw`: the form as received, where a space is not valid either (an encoded one is fine).
fn check_layer(p: &str, raw: bool) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("return path must start with /");
    }
    if p.starts_with("//") {
        return Err("return path names another host");
    }
    if p.contains('\\') {
        return Err("backslash in return path");
    }
    if p.chars().any(|c| c.is_control() || (raw && c.is_whitespace())) {
        return Err("control character or space in return path");
    }
    Ok(())
}

/// Percent-decodes `s`; a `%` not followed by two hex digits is refused, and so is a result
/// that is not UTF-8.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("bad percent-encoding in return path")?;
            let v = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in return path")?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "return path is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(host: &str, path: &str) -> AppPolicy {
        AppPolicy {
            name: format!("{host}{path}"),
            host: HostPattern::parse(host).unwrap(),
            path: path.into(),
            emails: vec!["alice@example.test".into()],
            domains: vec!["corp.test".into()],
            any_authenticated: false,
            bypass: vec!["/healthz".into()],
            providers: vec![],
        }
    }

    #[test]
    fn selection_ranks_like_the_router() {
        let apps = [
            app("*.example.test", "/"),
            app("wiki.example.test", "/"),
            app("wiki.example.test", "/admin"),
        ];
        assert_eq!(select(&apps, "wiki.example.test", "/admin/x").unwrap().path, "/admin");
        assert_eq!(select(&apps, "wiki.example.test", "/administrator").unwrap().path, "/");
        assert_eq!(select(&apps, "dash.example.test", "/").unwrap().name, "*.example.test/");
        assert!(select(&apps, "example.test", "/").is_none());
        assert!(select(&apps, "evil-example.test", "/").is_none());
    }

    #[test]
    fn who_may_enter() {
        let a = app("wiki.example.test", "/");
        assert_eq!(a.admits(Some("Alice@Example.test"), true), Ok(()));
        assert_eq!(a.admits(Some("alice@example.test"), false), Err(Denial::EmailNotVerified));
        assert_eq!(a.admits(Some("bob@corp.test"), true), Ok(()));
        assert_eq!(a.admits(Some("bob@sub.corp.test"), true), Err(Denial::NotAllowed));
        assert_eq!(a.admits(Some("bob@evilcorp.test"), true), Err(Denial::NotAllowed));
        assert_eq!(a.admits(Some("@corp.test"), true), Err(Denial::NotAllowed));
        assert_eq!(a.admits(None, true), Err(Denial::NotAllowed));
        assert!(a.bypassed("/healthz") && a.bypassed("/healthz/x") && !a.bypassed("/healthzz"));
    }

    #[test]
    fn return_paths() {
        for ok in ["/", "/a/b?x=1&y=%2F", "/@evil.test", "/a%20b", "/x?next=https://evil.test"] {
            assert_eq!(check_return_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "//evil.test",
            "///evil.test",
            "https:evil.test",
            "https://evil.test/",
            "evil.test",
            "/\\evil.test",
            "\\\\evil.test",
            "/%2Fevil.test",
            "/%2fevil.test",
            "%2F%2Fevil.test",
            "/%5Cevil.test",
            "/%5cevil.test",
            "/%252Fevil.test",
            "/%25252F%25252Fevil.test",
            "/\t/evil.test",
            "/%09/evil.test",
            "/%0a/evil.test",
            "/%",
            "/%zz",
            "/%ff",
            "",
        ] {
            assert!(check_return_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_return_path(&format!("/{}", "a".repeat(MAX_RETURN_PATH))).is_err());
    }
}
