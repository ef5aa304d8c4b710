//! Request and response heads: httparse finds the fields, this module bounds them and applies
//! the rules httparse leaves to its caller (targets, `Host`, framing).

use std::mem::MaybeUninit;

use httparse::ParserConfig;

use super::fields::{self, find, framing, values};
use super::{Authority, Body, Error, HeadStr, Header, Headers, Limits, TARGET_INLINE};

/// A request head. A parsed one borrows every field from the buffer it was parsed from (`'h`).
#[derive(Debug, Default, Clone)]
pub struct Request<'h> {
    /// Method token, case-sensitive (`GET`, never `get`).
    pub method: HeadStr<'h, 14>,
    /// Request target as received: origin-form (`/a?b`), absolute-form (`http://h/a`),
    /// authority-form (`h:443`, CONNECT only) or `*` (OPTIONS only).
    pub target: HeadStr<'h, TARGET_INLINE>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Fields in the order received.
    pub headers: Headers<'h>,
    /// The host and port the request is for, decided once by
    /// [`normalise`](super::normalise); empty until then.
    pub authority: Authority<'h>,
}

impl Request<'_> {
    /// The same request, owning its bytes (to keep it past its buffer).
    pub fn into_owned(self) -> Request<'static> {
        Request {
            method: self.method.into_owned(),
            target: self.target.into_owned(),
            minor_version: self.minor_version,
            headers: self.headers.into_owned(),
            authority: self.authority.into_owned(),
        }
    }

    /// The first value of field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find(&self.headers, name)
    }

    /// Every value of field `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values(&self.headers, name)
    }

    /// The path of the target, without the query: normalised once
    /// [`normalise`](super::normalise) ran (`*` for asterisk-form).
    pub fn path(&self) -> &str {
        let t = self.target.as_str();
        t.split(['?', '#']).next().unwrap_or("/")
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        let t = self.target.as_str();
        Some(&t[t.find('?')? + 1..])
    }

    /// How the request body is delimited; [`Body::Empty`] without `Content-Length` or
    /// `Transfer-Encoding`. Always `Ok` for a request that [`parse_request`] returned.
    pub fn body(&self) -> Result<Body, Error> {
        Ok(framing(&self.headers, self.minor_version)?.unwrap_or(Body::Empty))
    }

    /// Whether the connection may carry another request after this one.
    pub fn keep_alive(&self) -> bool {
        fields::keep_alive(&self.headers, self.minor_version)
    }

    /// Whether the client sent `Expect: 100-continue` (RFC 9110 §10.1.1): it waits for a
    /// `100 Continue` before sending its body.
    pub fn expects_continue(&self) -> bool {
        self.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    }

    /// Whether this request asks for the connection to become a WebSocket (RFC 6455 §4.1): an
    /// HTTP/1.1 `GET` whose `Connection` lists `upgrade` and whose `Upgrade` lists `websocket`
    /// (both case-insensitive), without a body.
    ///
    /// Anything else is an ordinary request whose `Upgrade` is dropped as hop-by-hop, as RFC
    /// 9110 §7.8 lets a server do: HTTP/1.0 (where `Upgrade` must be ignored), other methods,
    /// other protocols (`h2c`), and an upgrade request with a body (a WebSocket handshake has
    /// none; forwarding one would make the switch depend on where two parsers think the body
    /// ends).
    pub fn websocket_upgrade(&self) -> bool {
        self.minor_version >= 1
            && self.method == "GET"
            && fields::connection_has(&self.headers, "upgrade")
            && fields::upgrade_has(&self.headers, "websocket")
            && matches!(self.body(), Ok(Body::Empty | Body::Length(0)))
    }
}

/// A response head. A parsed one borrows every field from the buffer it was parsed from (`'h`).
#[derive(Debug, Clone)]
pub struct Response<'h> {
    /// Status code, 100..=999.
    pub status: u16,
    /// Reason phrase; empty when the origin sent none or sent obs-text in it.
    pub reason: HeadStr<'h, 30>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Fields in the order received.
    pub headers: Headers<'h>,
    /// The framing fields' reading, made once when the head was parsed (the parse refuses
    /// every error but an unsupported coding, which [`Response::body`] reports).
    framing: Result<Option<Body>, Error>,
}

impl Response<'_> {
    /// The first value of field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find(&self.headers, name)
    }

    /// Every value of field `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values(&self.headers, name)
    }

    /// How the body of this response to a `request_method` request is delimited (RFC 9112
    /// §6.3): none after HEAD, for 1xx, 204 and 304, or for a 2xx to CONNECT (the connection
    /// becomes a tunnel, which is the caller's business); [`Body::UntilClose`] without framing.
    pub fn body(&self, request_method: &str) -> Result<Body, Error> {
        let no_body = request_method == "HEAD"
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
            || (request_method == "CONNECT" && (200..300).contains(&self.status));
        if no_body {
            return Ok(Body::Empty);
        }
        Ok(self.framing.clone()?.unwrap_or(Body::UntilClose))
    }

    /// Whether the connection may carry another response after this one, from `Connection` and
    /// the version; a [`Body::UntilClose`] body ends the connection regardless.
    pub fn keep_alive(&self) -> bool {
        fields::keep_alive(&self.headers, self.minor_version)
    }

    /// Whether this is a `101 Switching Protocols` to a WebSocket: its `Upgrade` lists
    /// `websocket` (RFC 9110 §15.2.2 requires the field to name the new protocol).
    pub fn switches_to_websocket(&self) -> bool {
        self.status == 101 && fields::upgrade_has(&self.headers, "websocket")
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` while the head is incomplete and `buf` is shorter than
/// [`Limits::max_head_bytes`]; `Ok(Some((request, n)))` when the head is the first `n` bytes
/// (the body or the next request starts at `n`). Leading empty lines are skipped and counted.
/// Every framing rule (see the module documentation) is checked here, so `request.body()` is
/// `Ok` and within [`Limits::max_body_bytes`] afterwards.
///
/// The request borrows its fields from `buf`: nothing is copied.
///
/// Each call parses from the start; callers feeding a byte at a time pay O(head²), bounded by
/// the head limit.
pub fn parse_request<'h>(
    buf: &'h [u8],
    limits: &Limits,
) -> Result<Option<(Request<'h>, usize)>, Error> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    with_slots(window, limits, |slots| request_in(buf, window, limits, slots))
}

fn request_in<'b>(
    buf: &[u8],
    window: &'b [u8],
    limits: &Limits,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(Request<'b>, usize)>, Error> {
    let mut head = httparse::Request::new(&mut []);
    let len =
        match ParserConfig::default().parse_request_with_uninit_headers(&mut head, window, slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return incomplete(buf, limits),
            Err(e) => return Err(head_error(e)),
        };
    let (Some(method), Some(target), Some(minor_version)) = (head.method, head.path, head.version)
    else {
        return Err(Error::Malformed("incomplete request line"));
    };
    let request = Request {
        method: method.into(),
        target: target.into(),
        minor_version,
        headers: borrowed(head.headers),
        authority: Authority::default(),
    };
    check_target(&request.method, &request.target)?;
    check_host(&request)?;
    if let Body::Length(n) = request.body()? {
        if n > limits.max_body_bytes {
            return Err(Error::BodyTooLarge);
        }
    }
    Ok(Some((request, len)))
}

/// Parses a response head from the start of `buf`; `Ok(None)` and the consumed length as for
/// [`parse_request`].
///
/// Framing fields are checked here as far as they do not depend on the request (conflicting or
/// invalid `Content-Length`, `Transfer-Encoding` with `Content-Length` or on HTTP/1.0); an
/// unsupported transfer coding, and the body limit, only matter once [`Response::body`] says
/// there is a body. The response borrows its fields from `buf`.
pub fn parse_response<'h>(
    buf: &'h [u8],
    limits: &Limits,
) -> Result<Option<(Response<'h>, usize)>, Error> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    with_slots(window, limits, |slots| response_in(buf, window, limits, slots))
}

fn response_in<'b>(
    buf: &[u8],
    window: &'b [u8],
    limits: &Limits,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(Response<'b>, usize)>, Error> {
    let mut head = httparse::Response::new(&mut []);
    let len = match ParserConfig::default()
        .parse_response_with_uninit_headers(&mut head, window, slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(e) => return Err(head_error(e)),
    };
    let (Some(status), Some(reason), Some(minor_version)) = (head.code, head.reason, head.version)
    else {
        return Err(Error::Malformed("incomplete status line"));
    };
    if status < 100 {
        return Err(Error::Malformed("status code below 100"));
    }
    let headers = borrowed(head.headers);
    let framing = match framing(&headers, minor_version) {
        Err(e) if e != Error::UnsupportedTransferCoding => return Err(e),
        f => f,
    };
    let response = Response { status, reason: reason.into(), minor_version, headers, framing };
    Ok(Some((response, len)))
}

/// Slots for httparse: `max_headers`, but never more than the window can hold (a field line is
/// at least 3 bytes, `a:\n`), so a huge limit does not turn into a huge allocation.
fn header_slots(window: &[u8], limits: &Limits) -> usize {
    limits.max_headers.min(window.len() / 3 + 1)
}

/// Slots on the stack (3.2 KiB, the default [`Limits::max_headers`]). Slots are counted from
/// the window's length, so even a 300-byte head may ask for 100, and a response read with its
/// body for many more.
const STACK_SLOTS: usize = 100;

/// Runs `f` with [`header_slots`] slots: on the stack when they fit; otherwise the stack's
/// first, since few heads have that many fields, and the heap's only when they were too few.
/// The slots are left uninitialised (httparse writes each before it is read): filling 3.2 KiB
/// for every head cost more than parsing a short one.
fn with_slots<'b, T>(
    window: &'b [u8],
    limits: &Limits,
    f: impl Fn(&mut [MaybeUninit<httparse::Header<'b>>]) -> Result<T, Error>,
) -> Result<T, Error> {
    let n = header_slots(window, limits);
    let mut slots = [const { MaybeUninit::uninit() }; STACK_SLOTS];
    if n <= STACK_SLOTS {
        return f(&mut slots[..n]);
    }
    match f(&mut slots) {
        Err(Error::TooManyHeaders) => f(&mut Vec::with_capacity(n).spare_capacity_mut()[..n]),
        done => done,
    }
}

fn incomplete<T>(buf: &[u8], limits: &Limits) -> Result<Option<T>, Error> {
    if buf.len() >= limits.max_head_bytes {
        Err(Error::HeadTooLarge)
    } else {
        Ok(None)
    }
}

fn head_error(e: httparse::Error) -> Error {
    Error::Malformed(match e {
        httparse::Error::TooManyHeaders => return Error::TooManyHeaders,
        // A folded line (obs-fold) starts with whitespace and lands here too.
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::Version => "invalid HTTP version",
    })
}

fn borrowed<'b>(headers: &[httparse::Header<'b>]) -> Headers<'b> {
    headers.iter().map(|h| Header::borrowed(h.name, h.value)).collect()
}

/// The target's form must suit the method (RFC 9112 §3.2).
fn check_target(method: &str, target: &str) -> Result<(), Error> {
    if target == "*" {
        return match method {
            "OPTIONS" => Ok(()),
            _ => Err(Error::Malformed("asterisk-form target outside OPTIONS")),
        };
    }
    if method == "CONNECT" {
        return match split_host_port(target) {
            Some((_, Some(port))) if !port.is_empty() => Ok(()),
            _ => Err(Error::Malformed("CONNECT target is not host:port")),
        };
    }
    if target.starts_with('/') {
        return Ok(());
    }
    match absolute_form(target) {
        Some((scheme, authority))
            if (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && split_host_port(authority).is_some() =>
        {
            Ok(())
        }
        _ => Err(Error::Malformed("invalid request target")),
    }
}

/// Exactly one valid `Host` (RFC 9112 §3.2), which may only be absent on HTTP/1.0 and may be
/// empty when the target has no authority.
fn check_host(request: &Request<'_>) -> Result<(), Error> {
    let mut hosts = request.header_values("host");
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(Error::Malformed("more than one Host")),
        (None, _) if request.minor_version >= 1 => Err(Error::Malformed("missing Host")),
        (Some(value), _) if !value.is_empty() => {
            match std::str::from_utf8(value).ok().and_then(split_host_port) {
                Some(_) => Ok(()),
                None => Err(Error::Malformed("invalid Host")),
            }
        }
        _ => Ok(()),
    }
}

/// `scheme "://" authority ...` → (scheme, authority); `None` for other forms.
fn absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    let mut bytes = scheme.bytes();
    let scheme_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end]))
}

/// `uri-host [":" port]` (RFC 3986: reg-name or IP literal, no userinfo) → (host, port).
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, after) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &rest[..end];
        let literal_ok = !literal.is_empty()
            && literal.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !literal_ok {
            return None;
        }
        authority.split_at(end + 2)
    } else {
        let end = authority.find(':').unwrap_or(authority.len());
        let host = &authority[..end];
        if host.is_empty() || !host.bytes().all(is_reg_name_byte) {
            return None;
        }
        authority.split_at(end)
    };
    if after.is_empty() {
        return Some((host, None));
    }
    let port = after.strip_prefix(':')?;
    let port_ok = port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 0xffff));
    port_ok.then_some((host, Some(port)))
}

/// unreserved / pct-encoded / sub-delims (RFC 3986 §3.2.2).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_upgrade_table() {
        let limits = Limits::default();
        let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
        let cases: &[(&str, bool)] = &[
            (&format!("GET /c HTTP/1.1\r\nHost: a\r\n{ws}\r\n"), true),
            ("GET /c HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, UPGRADE\r\nUpgrade: h2c, WebSocket\r\n\r\n", true),
            ("GET /c HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket/13\r\n\r\n", true),
            (&format!("GET /c HTTP/1.1\r\nHost: a\r\n{ws}Content-Length: 0\r\n\r\n"), true),
            // Not a WebSocket handshake: its Upgrade is dropped as hop-by-hop.
            (&format!("GET /c HTTP/1.0\r\nHost: a\r\n{ws}\r\n"), false),
            (&format!("POST /c HTTP/1.1\r\nHost: a\r\n{ws}\r\n"), false),
            (&format!("GET /c HTTP/1.1\r\nHost: a\r\n{ws}Content-Length: 2\r\n\r\nhi"), false),
            (&format!("GET /c HTTP/1.1\r\nHost: a\r\n{ws}Transfer-Encoding: chunked\r\n\r\n"), false),
            ("GET /c HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", false),
            ("GET /c HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", false),
            ("GET /c HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", false),
            ("GET /c HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websockets\r\n\r\n", false),
        ];
        for (head, want) in cases {
            let (req, _) = parse_request(head.as_bytes(), &limits).unwrap().unwrap();
            assert_eq!(req.websocket_upgrade(), *want, "{head:?}");
        }
        for (head, want) in [
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\r\n", true),
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", false),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            ("HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n", false),
        ] {
            let (resp, _) = parse_response(head.as_bytes(), &limits).unwrap().unwrap();
            assert_eq!(resp.switches_to_websocket(), want, "{head:?}");
        }
    }

    #[test]
    fn split_host_port_table() {
        type HostPort = Option<(&'static str, Option<&'static str>)>;
        let cases: &[(&str, HostPort)] = &[
            ("example.com", Some(("example.com", None))),
            ("Example.COM:8443", Some(("Example.COM", Some("8443")))),
            ("example.com:", Some(("example.com", Some("")))),
            ("10.0.0.1:80", Some(("10.0.0.1", Some("80")))),
            ("[::1]", Some(("[::1]", None))),
            ("[2001:db8::7]:443", Some(("[2001:db8::7]", Some("443")))),
            ("", None),
            (":80", None),
            ("a:b", None),
            ("a:65536", None),
            ("a:000080", None),
            ("a:1:2", None),
            ("user@host", None),
            ("host/path", None),
            ("ho st", None),
            ("[::1", None),
            ("[]", None),
            ("[::1]x", None),
            ("[fe80::1%25eth0]", None),
        ];
        for (input, want) in cases {
            assert_eq!(split_host_port(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn target_form_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("GET", "/", true),
            ("GET", "/a?b=c", true),
            ("GET", "http://example.com", true),
            ("GET", "HTTPS://example.com:8443/x?y", true),
            ("GET", "ftp://example.com/", false),
            ("GET", "http://user@example.com/", false),
            ("GET", "http:///path", false),
            ("GET", "example.com", false),
            ("GET", "*", false),
            ("OPTIONS", "*", true),
            ("CONNECT", "example.com:443", true),
            ("CONNECT", "example.com", false),
            ("CONNECT", "example.com:", false),
            ("CONNECT", "/", false),
        ];
        for (method, target, ok) in cases {
            assert_eq!(check_target(method, target).is_ok(), *ok, "{method} {target}");
        }
    }

    #[test]
    fn parsed_heads_borrow_every_field_from_their_buffer() {
        let buf = b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\r\n".to_vec();
        let within = |b: &[u8]| buf.as_ptr_range().contains(&b.as_ptr());
        let (req, _) = parse_request(&buf, &Limits::default()).unwrap().unwrap();
        assert!(req.method.is_borrowed() && within(req.method.as_bytes()));
        assert!(req.target.is_borrowed() && within(req.target.as_bytes()));
        assert_eq!(req.headers.len(), 2);
        for h in req.headers.iter() {
            assert!(h.name.is_borrowed() && within(h.name.as_bytes()), "{h:?}");
            assert!(h.value.is_borrowed() && within(&h.value), "{h:?}");
        }
        let owned = req.clone().into_owned();
        assert!(
            !owned.target.is_borrowed() && owned.headers.iter().all(|h| !h.value.is_borrowed())
        );
        assert_eq!(owned.headers, req.headers);

        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
        let within = |b: &[u8]| buf.as_ptr_range().contains(&b.as_ptr());
        let (resp, _) = parse_response(&buf, &Limits::default()).unwrap().unwrap();
        assert!(resp.reason.is_borrowed() && within(resp.reason.as_bytes()));
        assert!(resp.headers.iter().all(|h| h.value.is_borrowed() && within(&h.value)));
    }

    #[test]
    fn header_slots_stay_within_the_window() {
        let limits = Limits { max_headers: usize::MAX, ..Limits::default() };
        assert_eq!(header_slots(&[0; 30], &limits), 11);
        assert_eq!(header_slots(&[], &Limits::default()), 1);
    }
}
