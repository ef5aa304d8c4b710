//! What a name may be: one DNS label under the zone, checked as the store will keep it.
//!
//! "Parse, don't validate": [`Name::parse`] turns what a person typed into the one form the
//! store keys on (lowercase LDH, internationalised names as their `xn--` punycode form), or
//! into a [`NameError`] whose message says what to change.
//!
//! Internationalised names are accepted and converted with UTS #46 (IDNA 2008, non-transitional,
//! STD3 rules) through the `idna` crate: `bücher` is reserved as `xn--bcher-kva`, shown as
//! both. A label typed as `xn--...` must be valid punycode that round-trips through IDNA
//! (decodes, and encodes back to the same label), so `xn--` garbage cannot take a name that no
//! browser would ever display. Other labels with `--` in the third and fourth places are
//! refused: RFC 5891 reserves them for future encodings.

use std::{collections::BTreeSet, fmt};

/// A valid label, as the store keys it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    ascii: String,
    /// The Unicode form, for `xn--` labels.
    unicode: Option<String>,
}

/// Why a name was refused. Each has a stable [`code`](NameError::code) for the JSON answer and
/// a sentence for people.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Nothing was typed.
    Empty,
    /// Longer than 63 characters (after IDNA conversion); carries the length.
    TooLong(usize),
    /// A character outside a-z, 0-9 and hyphen.
    BadChar(char),
    /// Starts or ends with a hyphen.
    Hyphen,
    /// A dot: one label only.
    Dot,
    /// `--` in the third and fourth places without being an `xn--` label.
    ReservedHyphens,
    /// An `xn--` label that is not valid punycode or does not round-trip through IDNA.
    BadPunycode,
    /// An internationalised name IDNA refuses (disallowed characters, mixed directions...).
    Idna,
}

impl NameError {
    pub fn code(&self) -> &'static str {
        match self {
            NameError::Empty => "name_empty",
            NameError::TooLong(_) => "name_too_long",
            NameError::BadChar(_) => "name_invalid_character",
            NameError::Hyphen => "name_hyphen",
            NameError::Dot => "name_dot",
            NameError::ReservedHyphens => "name_reserved_hyphens",
            NameError::BadPunycode => "name_bad_punycode",
            NameError::Idna => "name_idna",
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("Enter a name."),
            NameError::TooLong(n) => {
                write!(f, "A name has at most 63 characters; this one has {n}.")
            }
            NameError::BadChar(c) => write!(
                f,
                "A name may use the letters a-z, the digits 0-9 and hyphens; {:?} is not allowed.",
                c
            ),
            NameError::Hyphen => f.write_str("A name cannot start or end with a hyphen."),
            NameError::Dot => f.write_str("Enter a single name, without dots."),
            NameError::ReservedHyphens => f.write_str(
                "Names with two hyphens in the third and fourth places are reserved \
                 (only xn-- internationalised names use them).",
            ),
            NameError::BadPunycode => {
                f.write_str("This xn-- name is not valid punycode for an internationalised name.")
            }
            NameError::Idna => {
                f.write_str("This internationalised name is not allowed in DNS (IDNA refuses it).")
            }
        }
    }
}

impl Name {
    /// Parses what a person typed: surrounding spaces dropped, a trailing `.<zone>` (or the
    /// whole name typed out) accepted, letters folded to lowercase, Unicode converted to
    /// punycode.
    pub fn parse(input: &str, zone: &str) -> Result<Name, NameError> {
        let mut s = input.trim();
        if let Some(head) = strip_suffix_ci(s, zone) {
            if let Some(head) = head.strip_suffix('.') {
                s = head;
            }
        }
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        let converted;
        if !s.is_ascii() {
            // UTS #46 maps full-width dots to '.', so a dot check follows the conversion.
            converted = idna::domain_to_ascii_strict(s).map_err(|_| NameError::Idna)?;
            s = &converted;
        }
        if s.contains('.') {
            return Err(NameError::Dot);
        }
        let ascii = s.to_ascii_lowercase();
        if let Some(c) = ascii.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(NameError::BadChar(c));
        }
        if ascii.len() > 63 {
            return Err(NameError::TooLong(ascii.chars().count()));
        }
        if ascii.starts_with('-') || ascii.ends_with('-') {
            return Err(NameError::Hyphen);
        }
        let mut unicode = None;
        if ascii.get(2..4) == Some("--") {
            if !ascii.starts_with("xn--") {
                return Err(NameError::ReservedHyphens);
            }
            unicode = Some(check_punycode(&ascii)?);
        }
        Ok(Name { ascii, unicode })
    }

    /// The label as stored and as it appears in DNS.
    pub fn as_str(&self) -> &str {
        &self.ascii
    }

    /// The Unicode form of an `xn--` label.
    pub fn unicode(&self) -> Option<&str> {
        self.unicode.as_deref()
    }

    /// How to show it: `bücher (xn--bcher-kva)` or just the label.
    pub fn display(&self) -> String {
        match &self.unicode {
            Some(u) => format!("{u} ({})", self.ascii),
            None => self.ascii.clone(),
        }
    }
}

/// An `xn--` label must decode and round-trip through IDNA to itself.
fn check_punycode(label: &str) -> Result<String, NameError> {
    let body = &label[4..];
    let decoded = idna::punycode::decode_to_string(body).ok_or(NameError::BadPunycode)?;
    if decoded.is_empty() || decoded.is_ascii() {
        // An xn-- label that encodes pure ASCII is never produced by IDNA.
        return Err(NameError::BadPunycode);
    }
    let back = idna::domain_to_ascii_strict(&decoded).map_err(|_| NameError::BadPunycode)?;
    if back != label {
        return Err(NameError::BadPunycode);
    }
    Ok(decoded)
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(cut) && s[cut..].eq_ignore_ascii_case(suffix)).then(|| &s[..cut])
}

/// Infrastructure and phishing-prone names refused by default: exact names.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "abuse",
    "account",
    "accounts",
    "admin",
    "administrator",
    "api",
    "app",
    "apps",
    "assets",
    "auth",
    "autoconfig",
    "autodiscover",
    "bank",
    "billing",
    "blog",
    "cdn",
    "checkout",
    "console",
    "corp",
    "dashboard",
    "dev",
    "dns",
    "docs",
    "email",
    "example",
    "ftp",
    "gateway",
    "git",
    "help",
    "helpdesk",
    "hostmaster",
    "id",
    "identity",
    "imap",
    "internal",
    "intranet",
    "invalid",
    "invoice",
    "isatap",
    "local",
    "localhost",
    "login",
    "logon",
    "mail",
    "mx",
    "news",
    "noc",
    "ns",
    "oauth",
    "password",
    "pay",
    "payment",
    "payments",
    "pop",
    "pop3",
    "portal",
    "postmaster",
    "proxy",
    "register",
    "reserve",
    "root",
    "secure",
    "security",
    "sftp",
    "shop",
    "signin",
    "signup",
    "smtp",
    "sso",
    "ssh",
    "staff",
    "staging",
    "static",
    "status",
    "store",
    "support",
    "sysadmin",
    "team",
    "test",
    "update",
    "verify",
    "vpn",
    "wallet",
    "webmail",
    "webmaster",
    "wiki",
    "workers",
    "wpad",
    "www",
];

/// Glob patterns refused by default (`*` any run, `?` one character).
pub const DEFAULT_BLOCKED_PATTERNS: &[&str] = &[
    "www*",
    "ns?",
    "ns??",
    "mx?",
    "mx??",
    "smtp*",
    "imap*",
    "admin*",
    "*-admin",
    "*login*",
    "*logon*",
    "*signin*",
    "*password*",
    "*passwd*",
    "*verify*",
    "*verification*",
    "*paypal*",
    "*wallet*",
    "*banking*",
    "*official*",
    "support-*",
    "*-support",
    "autodiscover*",
];

/// Exact names and glob patterns; a name matching either is refused with 403.
#[derive(Clone, Debug, Default)]
pub struct Blocklist {
    exact: BTreeSet<String>,
    patterns: Vec<String>,
}

impl Blocklist {
    /// The defaults (when `defaults`) plus `extra` (entries with `*` or `?` are patterns).
    pub fn new(defaults: bool, extra: &[String]) -> Blocklist {
        let mut b = Blocklist::default();
        if defaults {
            b.exact.extend(DEFAULT_BLOCKED.iter().map(|s| s.to_string()));
            b.patterns.extend(DEFAULT_BLOCKED_PATTERNS.iter().map(|s| s.to_string()));
        }
        for e in extra {
            let e = e.to_ascii_lowercase();
            if e.contains(['*', '?']) {
                b.patterns.push(e);
            } else {
                b.exact.insert(e);
            }
        }
        b
    }

    /// The entry that blocks `name`, if any.
    pub fn blocks(&self, name: &Name) -> Option<&str> {
        let n = name.as_str();
        if let Some(e) = self.exact.get(n) {
            return Some(e);
        }
        self.patterns.iter().find(|p| glob(p.as_bytes(), n.as_bytes())).map(String::as_str)
    }
}

/// `*` and `?` glob over bytes, iterative with one backtrack point (linear in practice).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "workers.example.test";

    fn ok(input: &str) -> String {
        Name::parse(input, ZONE).unwrap_or_else(|e| panic!("{input:?}: {e}")).ascii
    }

    fn err(input: &str) -> NameError {
        Name::parse(input, ZONE).expect_err(input)
    }

    #[test]
    fn labels() {
        assert_eq!(ok("Alice"), "alice");
        assert_eq!(ok("  my-app-2 "), "my-app-2");
        assert_eq!(ok("a"), "a");
        assert_eq!(ok(&"a".repeat(63)), "a".repeat(63));
        assert_eq!(ok("demo.workers.example.test"), "demo");
        assert_eq!(ok("DEMO.Workers.Example.Test"), "demo");
        assert_eq!(err(""), NameError::Empty);
        assert_eq!(err("   "), NameError::Empty);
        assert_eq!(err(&"a".repeat(64)), NameError::TooLong(64));
        assert_eq!(err("-abc"), NameError::Hyphen);
        assert_eq!(err("abc-"), NameError::Hyphen);
        assert_eq!(err("a.b"), NameError::Dot);
        assert_eq!(err("a_b"), NameError::BadChar('_'));
        assert_eq!(err("x'; DROP TABLE kv; --"), NameError::BadChar('\''));
        assert_eq!(err("a b"), NameError::BadChar(' '));
        assert_eq!(err("ab--cd"), NameError::ReservedHyphens);
    }

    #[test]
    fn internationalised() {
        let n = Name::parse("Bücher", ZONE).unwrap();
        assert_eq!(n.as_str(), "xn--bcher-kva");
        assert_eq!(n.unicode(), Some("bücher"));
        assert_eq!(n.display(), "bücher (xn--bcher-kva)");
        // Typed as punycode: same name.
        assert_eq!(Name::parse("xn--bcher-kva", ZONE).unwrap(), n);
        assert_eq!(err("xn--"), NameError::Hyphen);
        assert_eq!(err("xn--a"), NameError::BadPunycode);
        assert_eq!(err("xn--zz-zzzzzzzzzz"), NameError::BadPunycode);
        assert_eq!(err("xn--abc"), NameError::BadPunycode);
        // Upper case punycode does not round-trip to itself after folding? It does: folded.
        assert_eq!(ok("XN--BCHER-KVA"), "xn--bcher-kva");
        // Full-width dot becomes a dot.
        assert_eq!(err("bü\u{ff0e}cher"), NameError::Dot);
        // Disallowed code point.
        assert_eq!(err("ü\u{3000}b"), NameError::Idna);
        assert!(matches!(err(&"ü".repeat(60)), NameError::TooLong(_) | NameError::Idna));
    }

    #[test]
    fn blocklist() {
        let b = Blocklist::new(true, &["acme".into(), "acme-*".into()]);
        let blocked = |s: &str| b.blocks(&Name::parse(s, ZONE).unwrap()).map(str::to_owned);
        assert_eq!(blocked("www").as_deref(), Some("www"));
        assert_eq!(blocked("login").as_deref(), Some("login"));
        assert_eq!(blocked("ssh").as_deref(), Some("ssh"));
        assert_eq!(blocked("ns1").as_deref(), Some("ns?"));
        assert_eq!(blocked("paypal-login").as_deref(), Some("*login*"));
        assert_eq!(blocked("acme").as_deref(), Some("acme"));
        assert_eq!(blocked("acme-shop").as_deref(), Some("acme-*"));
        assert_eq!(blocked("alice"), None);
        assert_eq!(blocked("nsa-fan-club"), None);
        assert_eq!(blocked("acmeshop"), None);
        let none = Blocklist::new(false, &[]);
        assert_eq!(none.blocks(&Name::parse("www", ZONE).unwrap()), None);
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*b*b*", "abab", true),
            ("*b*b*", "ab", false),
            ("ns??", "ns1", false),
            ("ns??", "ns12", true),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} ~ {t}");
        }
    }
}
