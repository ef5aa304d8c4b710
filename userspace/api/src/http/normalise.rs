//! The request as the edge decides on it: one authority, one path, and no field a client may
//! not send, computed once when the head is read (nginx's `r->headers_in.server`, Envoy's
//! `:authority` after normalisation). The router, every filter and handler, the audit log and
//! the upstream request read what [`normalise`] leaves in the [`Request`]; nothing reads the
//! raw target or `Host` again.
//!
//! # Authority (RFC 9112 §3.2, RFC 9110 §7.2)
//! - An absolute-form target (`http` or `https`) wins over `Host`, and `Host` is replaced by it.
//! - Otherwise exactly one `Host` (the codec refuses two), present and non-empty on HTTP/1.1.
//!   HTTP/1.0 without one takes the TLS server name; without that it is refused.
//! - No userinfo, no `%`; a reg-name of letters, digits, `-` and `_` in dot-separated labels, an
//!   IPv4 address, or a bracketed IPv6 address; an optional port up to 65535.
//! - Lowercased, one trailing dot removed (`App.Example.` is `app.example`), the port split off
//!   (kept for `X-Forwarded-Host`). IDNA A-labels (`xn--...`) are kept as they are; U-labels
//!   cannot reach here (bytes outside ASCII are not in the grammar).
//! - `CONNECT` is refused with 405: the edge is not a forward proxy, and a tunnel to an origin
//!   would carry other clients' requests past every check.
//!
//! # Path (RFC 3986 §6.2.2)
//! The target becomes origin-form: percent-encoded unreserved characters are decoded (`%61` is
//! `a`, `%2E` is `.`), other escapes get upper-case hex, dot segments are removed, and runs of
//! `/` become one (as nginx does before matching locations), so `/public/../admin`,
//! `/%61dmin` and `//admin` are all `/admin` for the router, Access and the origin alike.
//! Refused (400): an encoded or raw backslash or an encoded `/` in the path (origins disagree on
//! what they mean, and a policy on `/admin` could not see `/x%2F..%2Fadmin`), `%00`, a broken
//! escape, and a fragment. The query is kept as sent.
//!
//! # Fields
//! Fields the edge asserts to origins (identity headers, forwarding headers) are removed from
//! the client's head, matched case-insensitively with `_` and `-` as one, since CGI, WSGI, PHP
//! and Rack fold both into one name. With `underscores_in_headers` off (the default, as in
//! nginx), every field whose name contains `_` is dropped.

use std::net::{Ipv4Addr, Ipv6Addr};

use arrayvec::ArrayVec;

use super::{Error, HeadStr, Header, HeaderValue, Request, TARGET_INLINE};

/// Bytes of an owned host kept inline (a host that had to be lowercased or lose its dot).
pub const HOST_INLINE: usize = 62;
/// Longest host name (RFC 1035, in text form without the trailing dot).
const MAX_HOST: usize = 253;
/// Longest label of a host name.
const MAX_LABEL: usize = 63;

/// Forwarding fields: what a proxy says about the client and the request it received, never
/// what the client says about itself (unless it is a trusted proxy). Beyond the standard
/// `Forwarded` and the `X-Forwarded-*` fields, the ones origins are commonly set up to believe:
/// the client address (`X-Real-IP`, nginx's realip module) and the original path or host
/// (`X-Original-URL`, `X-Rewrite-URL`, `X-Original-Host`: IIS and frameworks on it route by
/// them, which would let a request to a public path be served as a protected one).
const FORWARDING: [&str; 10] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
];

/// The request's authority: the host it is for and the port it named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authority<'h> {
    /// Lowercase, without a trailing dot; an IPv6 address keeps its brackets. Empty only in a
    /// request that was never normalised.
    pub host: HeadStr<'h, HOST_INLINE>,
    /// The port the client named, if any.
    pub port: Option<u16>,
}

impl Authority<'_> {
    pub fn into_owned(self) -> Authority<'static> {
        Authority { host: self.host.into_owned(), port: self.port }
    }

    /// `host[:port]`: what `Host` and `X-Forwarded-Host` carry. On the stack: it is written
    /// for every request.
    pub fn host_port(&self) -> ArrayVec<u8, { MAX_HOST + 6 }> {
        let mut out = ArrayVec::new();
        // A host is at most MAX_HOST bytes (checked when parsed; a bracketed IPv6 address is
        // shorter), so this never truncates.
        let host = self.host.as_bytes();
        let _ = out.try_extend_from_slice(&host[..host.len().min(MAX_HOST)]);
        if let Some(p) = self.port {
            let _ = out.try_push(b':');
            let _ = out.try_extend_from_slice(&HeaderValue::decimal(u64::from(p)));
        }
        out
    }
}

/// What [`normalise`] needs from the connection and the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules<'a> {
    /// The TLS server name the client sent, for an HTTP/1.0 request without `Host`.
    pub sni: Option<&'a str>,
    /// Keep field names with `_` (nginx's `underscores_in_headers`). Default off: dropped.
    pub underscores_in_headers: bool,
    /// Names of fields the edge (or a handler) asserts to origins; client copies in any
    /// spelling are removed.
    pub asserted: &'a [String],
    /// The client is a trusted proxy: its forwarding fields are kept.
    pub trusted_proxy: bool,
}

/// What [`normalise`] removed from the client's head, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Fields with `_` in their name.
    pub underscore: u32,
    /// Client copies of edge-asserted fields (identity headers).
    pub asserted: u32,
    /// Client forwarding fields (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `X-Original-URL`,
    /// ...).
    pub forwarding: u32,
}

/// Decides the request's authority and path and removes what a client may not send; see the
/// module documentation. On success `req.authority` is set, `req.target` is the normalised
/// origin-form target (or `*`), and the one `Host` field holds the authority.
pub fn normalise(req: &mut Request<'_>, rules: &Rules<'_>) -> Result<Dropped, Error> {
    if req.method == "CONNECT" {
        return Err(Error::MethodNotAllowed("CONNECT: this edge is not a forward proxy"));
    }
    let dropped = drop_fields(req, rules);
    let (authority, from_target) = authority_of(req, rules.sni)?;
    set_host(req, &authority, from_target);
    req.authority = authority;
    normalise_target(req)?;
    Ok(dropped)
}

/// The authority from the target, `Host` or the server name; and whether `Host` must be
/// rewritten because it did not come from there. Owned (inline for hosts up to
/// [`HOST_INLINE`] bytes): a field may be owned, so it cannot lend the head buffer's lifetime.
fn authority_of(req: &Request<'_>, sni: Option<&str>) -> Result<(Authority<'static>, bool), Error> {
    if let Some(authority) = target_authority(&req.target) {
        return parse_authority(authority).map(|a| (a.into_owned(), true));
    }
    match req.header("host") {
        Some(v) if !v.is_empty() => {
            let s = std::str::from_utf8(v).map_err(|_| Error::Malformed("invalid Host"))?;
            parse_authority(s).map(|a| (a.into_owned(), false))
        }
        Some(_) if req.minor_version >= 1 => Err(Error::Malformed("empty Host")),
        None if req.minor_version >= 1 => Err(Error::Malformed("missing Host")),
        _ => match sni {
            Some(name) => parse_authority(name).map(|a| (a.into_owned(), true)),
            None => Err(Error::Malformed("HTTP/1.0 request without Host or TLS server name")),
        },
    }
}

/// `http://authority/...` → the authority; `None` for origin-form and `*`. The codec has
/// refused other schemes and forms already.
fn target_authority(target: &str) -> Option<&str> {
    if target.starts_with('/') || target == "*" {
        return None;
    }
    let (_, rest) = target.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Parses and normalises `uri-host [":" port]`.
pub fn parse_authority(s: &str) -> Result<Authority<'_>, Error> {
    if s.contains('@') {
        return Err(Error::Malformed("userinfo in the authority"));
    }
    if s.contains('%') {
        return Err(Error::Malformed("percent-encoding in the host"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(Error::Malformed("invalid IPv6 literal"))?;
        rest[..end].parse::<Ipv6Addr>().map_err(|_| Error::Malformed("invalid IPv6 literal"))?;
        (&s[..end + 2], &s[end + 2..])
    } else {
        let end = s.find(':').unwrap_or(s.len());
        (&s[..end], &s[end..])
    };
    let port = match port {
        "" | ":" => None,
        // After `]`, only `:port` may follow (`[::1]x` is no authority).
        p => Some(
            p.strip_prefix(':')
                .and_then(parse_port)
                .ok_or(Error::Malformed("invalid port in the authority"))?,
        ),
    };
    let host = if host.starts_with('[') {
        lowercase(host)
    } else {
        let name = host.strip_suffix('.').unwrap_or(host);
        check_name(name)?;
        lowercase(name)
    };
    Ok(Authority { host, port })
}

/// Lowercase `s`, borrowed when it already is.
fn lowercase(s: &str) -> HeadStr<'_, HOST_INLINE> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        HeadStr::copied(&s.to_ascii_lowercase())
    } else {
        HeadStr::from(s)
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// A DNS name (letters, digits, `-`, `_`; labels of 1 to 63; 253 in all) or an IPv4 address.
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::Malformed("empty host"));
    }
    if name.len() > MAX_HOST {
        return Err(Error::Malformed("host name too long"));
    }
    let all_digits_and_dots = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if all_digits_and_dots {
        return name
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| Error::Malformed("invalid IPv4 address"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::Malformed("invalid host name"));
        }
    }
    Ok(())
}

/// Leaves exactly one `Host`, holding the authority. A `Host` that already reads as the
/// authority (the usual case) is left as it is.
fn set_host(req: &mut Request<'_>, authority: &Authority<'_>, from_target: bool) {
    let canonical = authority.host_port();
    if !from_target {
        if let Some(h) = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")) {
            if h.value.as_slice() == canonical.as_slice() {
                return;
            }
        }
    }
    req.headers.remove("host");
    req.headers.push(Header::new("Host", &canonical));
}

/// Removes the fields a client may not send; see [`Dropped`].
fn drop_fields(req: &mut Request<'_>, rules: &Rules<'_>) -> Dropped {
    let mut dropped = Dropped::default();
    req.headers.retain(|h| {
        let name = h.name.as_str();
        if rules.asserted.iter().any(|a| same_folded(a, name)) {
            dropped.asserted += 1;
            return false;
        }
        if !rules.trusted_proxy && FORWARDING.iter().any(|f| same_folded(f, name)) {
            dropped.forwarding += 1;
            return false;
        }
        if !rules.underscores_in_headers && name.contains('_') {
            dropped.underscore += 1;
            return false;
        }
        true
    });
    dropped
}

/// Whether two field names are the same once case is ignored and `_` is read as `-`.
pub fn same_folded(a: &str, b: &str) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Rewrites the target to its normalised origin-form (see the module documentation).
fn normalise_target(req: &mut Request<'_>) -> Result<(), Error> {
    if req.target.as_str() == "*" {
        return Ok(());
    }
    let target = req.target.as_str();
    let local = match target.strip_prefix('/') {
        Some(_) => target,
        None => {
            // Absolute-form: what follows the authority (the codec checked the scheme).
            let rest = target.split_once("://").map_or("", |(_, r)| r);
            &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..]
        }
    };
    if local.contains('#') {
        return Err(Error::Malformed("fragment in the request target"));
    }
    let (path, query) = match local.find('?') {
        Some(i) => (&local[..i], Some(&local[i + 1..])),
        None => (local, None),
    };
    let normal = normalise_path(path)?;
    let unchanged = local.len() == target.len() && normal.is_none();
    if unchanged {
        return Ok(());
    }
    let path = normal.as_deref().unwrap_or(if path.is_empty() { "/" } else { path });
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    req.target = HeadStr::<TARGET_INLINE>::copied(&out);
    Ok(())
}

/// The normalised form of `path`, or `None` when it is normal already (no copy).
pub fn normalise_path(path: &str) -> Result<Option<String>, Error> {
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return Err(Error::Malformed("backslash in the path"));
    }
    let plain = !b.contains(&b'%')
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && path.starts_with('/');
    if plain {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            // Empty segments: a run of `/` is one (a trailing `/` is put back below).
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // A path that ended on a directory (`/a/`, `/a/.`, `/a/b/..`) keeps its final `/`.
    let last = decoded.rsplit('/').next().unwrap_or("");
    let dir = matches!(last, "" | "." | "..");
    if out.is_empty() || dir {
        out.push('/');
    }
    Ok(Some(out))
}

/// Decodes escapes of unreserved characters and upper-cases the hex of the others.
fn decode_unreserved(path: &str) -> Result<String, Error> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let (Some(hi), Some(lo)) =
            (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
        else {
            return Err(Error::Malformed("invalid percent-encoding in the path"));
        };
        let c = hi << 4 | lo;
        match c {
            0 => return Err(Error::Malformed("NUL in the path")),
            b'/' => return Err(Error::Malformed("encoded slash in the path")),
            b'\\' => return Err(Error::Malformed("backslash in the path")),
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => out.push(c),
            c => out.extend_from_slice(format!("%{c:02X}").as_bytes()),
        }
        i += 3;
    }
    // Only ASCII was decoded, and the rest was a `&str`.
    String::from_utf8(out).map_err(|_| Error::Malformed("invalid path"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Headers;

    fn req(method: &str, target: &str, minor: u8, headers: &[(&str, &str)]) -> Request<'static> {
        Request {
            method: HeadStr::copied(method),
            target: HeadStr::copied(target),
            minor_version: minor,
            headers: headers.iter().map(|(n, v)| Header::new(n, v)).collect::<Headers<'_>>(),
            authority: Authority::default(),
        }
    }

    fn host_fields(r: &Request<'_>) -> Vec<String> {
        r.header_values("host").map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    }

    #[test]
    fn authority_table() {
        // (target, Host, HTTP/1.x, SNI) → Ok((host, port, target after)) or the error's status.
        type Want = Result<(&'static str, Option<u16>, &'static str), u16>;
        type Case<'a> = (&'a str, Option<&'a str>, u8, Option<&'a str>, Want);
        let cases: &[Case<'_>] = &[
            ("/x", Some("app.example.test"), 1, None, Ok(("app.example.test", None, "/x"))),
            ("/x", Some("App.Example.TEST."), 1, None, Ok(("app.example.test", None, "/x"))),
            (
                "/x",
                Some("app.example.test:8443"),
                1,
                None,
                Ok(("app.example.test", Some(8443), "/x")),
            ),
            (
                "/x",
                Some("app.example.test.:443"),
                1,
                None,
                Ok(("app.example.test", Some(443), "/x")),
            ),
            ("/x", Some("app.example.test:"), 1, None, Ok(("app.example.test", None, "/x"))),
            (
                "https://public.example.test/x?q",
                Some("app.example.test"),
                1,
                None,
                Ok(("public.example.test", None, "/x?q")),
            ),
            (
                "http://APP.example.test.:8080",
                Some("public.example.test"),
                1,
                None,
                Ok(("app.example.test", Some(8080), "/")),
            ),
            ("/x", Some("[2001:DB8::1]:443"), 1, None, Ok(("[2001:db8::1]", Some(443), "/x"))),
            ("/x", Some("198.18.0.1"), 1, None, Ok(("198.18.0.1", None, "/x"))),
            (
                "/x",
                Some("xn--bcher-kva.example"),
                1,
                None,
                Ok(("xn--bcher-kva.example", None, "/x")),
            ),
            ("/x", None, 0, Some("App.Example.Test"), Ok(("app.example.test", None, "/x"))),
            ("/x", Some(""), 0, Some("app.example.test"), Ok(("app.example.test", None, "/x"))),
            ("*", Some("app.example.test"), 1, None, Ok(("app.example.test", None, "*"))),
            ("/x", None, 0, None, Err(400)),
            ("/x", None, 1, Some("app.example.test"), Err(400)),
            ("/x", Some(""), 1, Some("app.example.test"), Err(400)),
            ("/x", Some("app.example.%74est"), 1, None, Err(400)),
            ("/x", Some("user@app.example.test"), 1, None, Err(400)),
            ("/x", Some("app..example.test"), 1, None, Err(400)),
            ("/x", Some(".app.example.test"), 1, None, Err(400)),
            ("/x", Some("app.example.test.."), 1, None, Err(400)),
            ("/x", Some("."), 1, None, Err(400)),
            ("/x", Some("app.example.test:65536"), 1, None, Err(400)),
            ("/x", Some("app.example.test:x"), 1, None, Err(400)),
            ("/x", Some("app!.example.test"), 1, None, Err(400)),
            ("/x", Some("999.1.1.1"), 1, None, Err(400)),
            ("/x", Some("[::1"), 1, None, Err(400)),
            ("/x", Some("[::1]x"), 1, None, Err(400)),
            ("/x", Some("[::1]\u{e9}"), 1, None, Err(400)),
            ("/x", Some("[::1]:"), 1, None, Ok(("[::1]", None, "/x"))),
            ("/x", Some("[v1.x]"), 1, None, Err(400)),
            ("/x", Some(&"a".repeat(64)), 1, None, Err(400)),
            ("http://user@app.example.test/", Some("app.example.test"), 1, None, Err(400)),
        ];
        for (target, host, minor, sni, want) in cases {
            let mut headers = vec![("User-Agent", "t")];
            if let Some(h) = host {
                headers.push(("Host", h));
            }
            let mut r = req("GET", target, *minor, &headers);
            let rules = Rules { sni: *sni, ..Rules::default() };
            let got = normalise(&mut r, &rules)
                .map(|_| (r.authority.host.to_string(), r.authority.port, r.target.to_string()));
            let got = got.map_err(|e| e.status());
            let want = want.map(|(h, p, t)| (h.to_owned(), p, t.to_owned()));
            assert_eq!(got, want, "{target} Host: {host:?} HTTP/1.{minor} SNI {sni:?}");
            if got.is_ok() {
                let want = String::from_utf8(r.authority.host_port().to_vec()).unwrap();
                assert_eq!(host_fields(&r), [want], "{target} {host:?}");
            }
        }
    }

    #[test]
    fn connect_is_not_allowed() {
        let mut r = req("CONNECT", "app.example.test:443", 1, &[("Host", "other.example.test")]);
        assert_eq!(normalise(&mut r, &Rules::default()).map_err(|e| e.status()), Err(405));
    }

    #[test]
    fn canonical_host_is_not_copied() {
        let buf = b"GET /a HTTP/1.1\r\nHost: app.example.test\r\n\r\n".to_vec();
        let (mut r, _) = super::super::parse_request(&buf, &Default::default()).unwrap().unwrap();
        normalise(&mut r, &Rules::default()).unwrap();
        assert!(r.target.is_borrowed());
        assert!(r.headers.iter().all(|h| h.value.is_borrowed()));
    }

    #[test]
    fn path_table() {
        let cases: &[(&str, Result<&str, u16>)] = &[
            ("/", Ok("/")),
            ("/a/b?c=d/../e", Ok("/a/b?c=d/../e")),
            ("/public/../admin", Ok("/admin")),
            ("/public/%2e%2E/admin", Ok("/admin")),
            ("/%61dmin", Ok("/admin")),
            ("//admin", Ok("/admin")),
            ("/a/./b/", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/..", Ok("/")),
            ("/../../etc/passwd", Ok("/etc/passwd")),
            ("/a%20b%3f", Ok("/a%20b%3F")),
            ("/a%7e", Ok("/a~")),
            ("/x%2Fadmin", Err(400)),
            ("/x%2fadmin", Err(400)),
            ("/x%5cadmin", Err(400)),
            ("/x\\admin", Err(400)),
            ("/x%00", Err(400)),
            ("/x%zz", Err(400)),
            ("/x%4", Err(400)),
            ("/x#frag", Err(400)),
        ];
        for (target, want) in cases {
            let mut r = req("GET", target, 1, &[("Host", "h.example")]);
            let got = normalise(&mut r, &Rules::default())
                .map(|_| r.target.to_string())
                .map_err(|e| e.status());
            assert_eq!(got, want.map(str::to_owned), "{target}");
        }
    }

    #[test]
    fn client_fields_the_edge_asserts_are_dropped_in_every_spelling() {
        let asserted = ["Outpost-Access-Authenticated-User-Email".to_owned()];
        let fields = [
            ("Host", "app.example.test"),
            ("Outpost_Access_Authenticated_User_Email", "mallory@example.test"),
            ("OUTPOST-ACCESS-AUTHENTICATED-USER-EMAIL", "mallory@example.test"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X_Forwarded_Host", "evil.example"),
            ("Forwarded", "host=evil.example;for=6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("X-Original-URL", "/admin"),
            ("X-Custom_Thing", "1"),
            ("Accept", "*/*"),
        ];
        let mut r = req("GET", "/", 1, &fields);
        let rules = Rules { asserted: &asserted, ..Rules::default() };
        let d = normalise(&mut r, &rules).unwrap();
        let names: Vec<&str> = r.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Host", "Accept"]);
        assert_eq!(d, Dropped { underscore: 1, asserted: 2, forwarding: 5 });

        // Underscores allowed: only the look-alikes of asserted and forwarding fields go.
        let mut r = req("GET", "/", 1, &fields);
        let rules = Rules { asserted: &asserted, underscores_in_headers: true, ..Rules::default() };
        normalise(&mut r, &rules).unwrap();
        let names: Vec<&str> = r.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Host", "X-Custom_Thing", "Accept"]);

        // A trusted proxy's forwarding fields stay; identity look-alikes never do.
        let mut r = req("GET", "/", 1, &fields);
        let rules = Rules { asserted: &asserted, trusted_proxy: true, ..Rules::default() };
        let d = normalise(&mut r, &rules).unwrap();
        assert_eq!(d, Dropped { underscore: 2, asserted: 2, forwarding: 0 });
        assert!(r.header("forwarded").is_some() && r.header("x-forwarded-for").is_some());
    }

    #[test]
    fn folded_names() {
        assert!(same_folded("X-Forwarded-For", "x_forwarded_FOR"));
        assert!(!same_folded("X-Forwarded-For", "X-Forwarded-Fo"));
        assert!(!same_folded("X-Forwarded-For", "X.Forwarded.For"));
    }
}
