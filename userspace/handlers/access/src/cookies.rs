//! The cookies of the login flow, and the one way they are read and written.
//!
//! Every cookie the edge sets is `Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/` and host-only,
//! and carries the `__Host-` prefix so that browsers refuse it with any other attributes
//! (a sibling subdomain cannot plant one with a `Domain`).

use std::time::Duration;

use cookie::{time, Cookie, SameSite};

/// The app token on an app host.
pub const TOKEN: &str = "__Host-outpost-token";
/// The auth-host session.
pub const SESSION: &str = "__Host-outpost-session";
/// Prefix of the per-login binding cookie on the auth host; the rest of the name is derived
/// from the login's state, so several tabs logging in at once each keep their own.
pub const LOGIN_PREFIX: &str = "__Host-outpost-login-";
/// Longest Cookie header looked at; larger ones are read up to here.
pub const MAX_COOKIE_HEADER: usize = 16 * 1024;

/// The value of cookie `name` in the request's `Cookie` header(s), if any. Malformed pairs
/// are skipped; with duplicates the first wins (the most specific path comes first).
pub fn find<'a, I>(headers: I, name: &str) -> Option<String>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    for raw in headers {
        let raw = &raw[..raw.len().min(MAX_COOKIE_HEADER)];
        let Ok(text) = std::str::from_utf8(raw) else { continue };
        for c in Cookie::split_parse(text).flatten() {
            if c.name() == name {
                return Some(c.value().to_owned());
            }
        }
    }
    None
}

/// Every cookie named `prefix*`, as (name, value).
pub fn with_prefix<'a, I>(headers: I, prefix: &str) -> Vec<(String, String)>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut out = Vec::new();
    for raw in headers {
        let raw = &raw[..raw.len().min(MAX_COOKIE_HEADER)];
        let Ok(text) = std::str::from_utf8(raw) else { continue };
        for c in Cookie::split_parse(text).flatten() {
            if c.name().starts_with(prefix) {
                out.push((c.name().to_owned(), c.value().to_owned()));
            }
        }
    }
    out
}

/// `Cookie` header values with cookie `name` removed; None when nothing is left.
pub fn without(headers: &[&[u8]], name: &str) -> Option<Vec<u8>> {
    let mut kept: Vec<String> = Vec::new();
    for raw in headers {
        let Ok(text) = std::str::from_utf8(raw) else {
            continue;
        };
        for part in text.split(';') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let n = p.split_once('=').map_or(p, |(n, _)| n).trim();
            if n != name {
                kept.push(p.to_owned());
            }
        }
    }
    (!kept.is_empty()).then(|| kept.join("; ").into_bytes())
}

/// `Set-Cookie` for `name=value` with the flow's flags, living `max_age`.
pub fn set(name: &str, value: &str, max_age: Duration) -> String {
    let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX / 2);
    Cookie::build((name, value))
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(time::Duration::seconds(secs))
        .to_string()
}

/// `Set-Cookie` that removes `name` (same flags, so the browser matches it).
pub fn clear(name: &str) -> String {
    Cookie::build((name, ""))
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(time::Duration::ZERO)
        .expires(time::OffsetDateTime::UNIX_EPOCH)
        .to_string()
}

/// Name of the binding cookie of the login with state `state`: a few characters of the state
/// (not secret: the state travels through the provider anyway).
pub fn login_cookie(state: &str) -> String {
    let tag: String = state.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    format!("{LOGIN_PREFIX}{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_right_cookie() {
        let h: Vec<&[u8]> =
            vec![b"a=1; __Host-outpost-token=tok; b", b"__Host-outpost-token=second"];
        assert_eq!(find(h.iter().copied(), TOKEN).as_deref(), Some("tok"));
        assert_eq!(find(h.iter().copied(), "b"), None);
        assert_eq!(find([&b"\xff\xfe"[..]], TOKEN), None);
        let kept = without(&h, TOKEN).unwrap();
        assert_eq!(kept, b"a=1; b");
        assert_eq!(without(&[b"__Host-outpost-token=x"], TOKEN), None);
    }

    #[test]
    fn flags_on_every_cookie() {
        for c in [set(TOKEN, "v", Duration::from_secs(60)), clear(SESSION)] {
            for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
                assert!(c.contains(flag), "{flag} missing: {c}");
            }
            assert!(!c.to_ascii_lowercase().contains("domain"), "{c}");
        }
        assert!(clear(SESSION).contains("Max-Age=0"));
        assert_eq!(login_cookie("ab-cd_efGHIJKLMNOP"), "__Host-outpost-login-abcdefGHIJKL");
    }
}
