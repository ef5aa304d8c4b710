//! HTTP/1.1 codec (sans-IO).
//!
//! Everything works on byte slices and appends to `Vec<u8>`: the proxy reads into owned buffers
//! (tokio-uring) and hands them here, so no type in this module touches a socket or a future.
//!
//! # Layout
//! - `head`: request and response heads (`httparse` underneath), checked against [`Limits`] and
//!   the framing rules below.
//! - `fields`: header lookup, list values, message framing, hop-by-hop headers.
//! - `body`: [`BodyDecoder`] (length, chunked, until-close), chunk encoding.
//! - `write`: head serialisation and the reason-phrase table.
//!
//! # Framing rules (request smuggling)
//! A proxy is only safe if it and every origin agree on where each message ends, so anything
//! two parsers could read differently is refused rather than repaired:
//! - `Content-Length` together with `Transfer-Encoding` → [`Error::Malformed`] (also responses).
//! - Several `Content-Length` values that differ, or one that is not plain decimal →
//!   [`Error::Malformed`]; repeats of the same value are accepted (RFC 9112 §6.3).
//! - `Transfer-Encoding` other than exactly `chunked` → [`Error::UnsupportedTransferCoding`];
//!   `chunked` twice or an empty coding → [`Error::Malformed`].
//! - `Transfer-Encoding` on an HTTP/1.0 message → [`Error::Malformed`] (RFC 9112 §6.1).
//! - obs-fold, bytes outside the field grammar → [`Error::Malformed`] (httparse).
//! - HTTP/1.1 request without `Host`, with two, or with an invalid one → [`Error::Malformed`].
//! - `Content-Length` above [`Limits::max_body_bytes`] → [`Error::BodyTooLarge`] at head time.
//! - A request target whose form does not suit the method (`*` outside OPTIONS, CONNECT without
//!   `host:port`, absolute-form with userinfo or a scheme other than http(s)) →
//!   [`Error::Malformed`].
//! - Chunked bodies: hex sizes of at most 16 digits, no sign or prefix, strict CRLF, extensions
//!   and trailers parsed, bounded and dropped.
//! - [`remove_hop_by_hop`] ignores a `Connection` that names `Host` or `Content-Length`.
//!
//! Heads may end lines with a bare LF (RFC 9112 §2.2 allows it); the writers always use CRLF.
//!
//! Bodies are meant to be decoded and re-encoded (not relayed verbatim), so the origin sees the
//! proxy's framing, never the client's.

use std::fmt;

use arrayvec::ArrayVec;

mod body;
mod fields;
mod head;
mod normalise;
mod write;

pub use body::{encode_chunk, encode_last_chunk, Body, BodyDecoder};
pub use fields::{is_hop_by_hop, remove_hop_by_hop};
pub use head::{parse_request, parse_response, Request, Response};
pub use normalise::{
    normalise, normalise_path, parse_authority, same_folded, Authority, Dropped, Rules, HOST_INLINE,
};
pub use write::{reason, write_request_head, write_response_head};

/// Size limits for one message; every allocation the codec makes is bounded by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest request/response head (request line, fields, final CRLF) in bytes; a longer head
    /// is [`Error::HeadTooLarge`]. Default 16 KiB.
    pub max_head_bytes: usize,
    /// Most header fields in one head; more is [`Error::TooManyHeaders`]. Default 100.
    pub max_headers: usize,
    /// Largest body in bytes (after dechunking); more is [`Error::BodyTooLarge`]. Default 10 MiB.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: 10 * 1024 * 1024 }
    }
}

/// Why a message was refused. Each variant maps to the status a server answers with
/// ([`Error::status`]); errors in an origin's response should become a 502 instead.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The head did not end within [`Limits::max_head_bytes`]. 431.
    HeadTooLarge,
    /// The head has more than [`Limits::max_headers`] fields. 431.
    TooManyHeaders,
    /// The message breaks the HTTP/1.1 grammar or one of the framing rules; the text names
    /// which. 400.
    Malformed(&'static str),
    /// The body is longer than [`Limits::max_body_bytes`] (declared or received). 413.
    BodyTooLarge,
    /// A `Transfer-Encoding` other than exactly `chunked`. 501.
    UnsupportedTransferCoding,
    /// The peer closed before a `Content-Length` or chunked body was complete. 400.
    UnexpectedEof,
    /// A method the edge does not serve (`CONNECT`: it is not a forward proxy). 405.
    MethodNotAllowed(&'static str),
}

impl Error {
    /// The status code a server answers a request with when parsing it failed this way.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::Malformed(_) | Self::UnexpectedEof => 400,
            Self::BodyTooLarge => 413,
            Self::UnsupportedTransferCoding => 501,
            Self::MethodNotAllowed(_) => 405,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeadTooLarge => f.write_str("message head too large"),
            Self::TooManyHeaders => f.write_str("too many header fields"),
            Self::Malformed(what) => write!(f, "malformed message: {what}"),
            Self::BodyTooLarge => f.write_str("message body too large"),
            Self::UnsupportedTransferCoding => f.write_str("unsupported transfer coding"),
            Self::UnexpectedEof => f.write_str("connection closed before the body was complete"),
            Self::MethodNotAllowed(what) => write!(f, "method not allowed: {what}"),
        }
    }
}

impl std::error::Error for Error {}

/// One header field: the name keeps its case (compare with `eq_ignore_ascii_case`), the value
/// has surrounding whitespace trimmed and may hold obs-text.
///
/// A field parsed from a head borrows its bytes from the buffer the head was read into (`'h`):
/// parsing copies nothing. A field the proxy or a handler sets is owned: inline up to a size
/// that covers the fields they set ([`NAME_INLINE`], [`VALUE_INLINE`]), on the heap beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'h> {
    /// Field name, a token.
    pub name: HeaderName<'h>,
    /// Field value, without leading or trailing SP/HTAB.
    pub value: HeaderValue<'h>,
}

impl Header<'static> {
    /// A header from a name and a value, copied.
    pub fn new(name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Self {
        Self { name: HeadStr::copied(name.as_ref()), value: HeadBytes::copied(value.as_ref()) }
    }

    /// `Content-Length: n`.
    pub fn content_length(n: u64) -> Self {
        Self { name: HeadStr::from("Content-Length"), value: HeaderValue::decimal(n) }
    }
}

impl<'h> Header<'h> {
    /// A header borrowing its name and value (from a head buffer, or `'static` text).
    pub fn borrowed(name: &'h str, value: &'h [u8]) -> Self {
        Self { name: HeadStr::from(name), value: HeadBytes::from(value) }
    }

    /// The same field, owning its bytes.
    pub fn into_owned(self) -> Header<'static> {
        Header { name: self.name.into_owned(), value: self.value.into_owned() }
    }
}

/// Fields of a head kept inline; most requests, browsers' included, have fewer.
pub const FIELDS_INLINE: usize = 16;

/// The fields of a request or response head, in order: [`FIELDS_INLINE`] inline, more on the
/// heap. Reads as a slice of [`Header`]s.
///
/// Covariant in `'h` (a `SmallVec` is not: its item type sits behind an associated type), so
/// a head borrowed from its buffer for long can be lent as one borrowed for less, which is how
/// a handler's [`Session`](crate::Session) borrows the request for one phase.
#[derive(Clone, Default)]
pub struct Headers<'h>(Fields<'h>);

#[derive(Clone)]
// Inline is the point: a boxed variant would be one allocation per head again.
#[allow(clippy::large_enum_variant)]
enum Fields<'h> {
    Inline(ArrayVec<Header<'h>, FIELDS_INLINE>),
    Heap(Vec<Header<'h>>),
}

impl Default for Fields<'_> {
    fn default() -> Self {
        Fields::Inline(ArrayVec::new())
    }
}

impl<'h> Headers<'h> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `h`; past [`FIELDS_INLINE`] fields they all move to the heap.
    pub fn push(&mut self, h: Header<'h>) {
        match &mut self.0 {
            Fields::Inline(a) => {
                if let Err(full) = a.try_push(h) {
                    let mut v = Vec::with_capacity(2 * FIELDS_INLINE);
                    v.extend(a.drain(..));
                    v.push(full.element());
                    self.0 = Fields::Heap(v);
                }
            }
            Fields::Heap(v) => v.push(h),
        }
    }

    /// Removes every field named `name` (case-insensitive), keeping the order of the rest.
    pub fn remove(&mut self, name: &str) {
        self.remove_where(|h| h.name.eq_ignore_ascii_case(name));
    }

    /// Removes the fields for which `drop` is true, keeping the order of the rest. Nothing
    /// moves when there is none, the common case: the fields are only scanned.
    pub fn remove_where(&mut self, drop: impl Fn(&Header<'h>) -> bool) {
        if self.iter().any(&drop) {
            self.retain(|h| !drop(h));
        }
    }

    /// Keeps the fields for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&Header<'h>) -> bool) {
        match &mut self.0 {
            Fields::Inline(a) => a.retain(|h| keep(h)),
            Fields::Heap(v) => v.retain(keep),
        }
    }

    pub fn as_slice(&self) -> &[Header<'h>] {
        match &self.0 {
            Fields::Inline(a) => a,
            Fields::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [Header<'h>] {
        match &mut self.0 {
            Fields::Inline(a) => a,
            Fields::Heap(v) => v,
        }
    }

    /// The same fields, owning their bytes.
    pub fn into_owned(self) -> Headers<'static> {
        self.iter().map(|h| h.clone().into_owned()).collect()
    }
}

impl<'h> std::ops::Deref for Headers<'h> {
    type Target = [Header<'h>];
    fn deref(&self) -> &[Header<'h>] {
        self.as_slice()
    }
}

impl<'h> std::ops::DerefMut for Headers<'h> {
    fn deref_mut(&mut self) -> &mut [Header<'h>] {
        self.as_mut_slice()
    }
}

impl<'h> FromIterator<Header<'h>> for Headers<'h> {
    fn from_iter<I: IntoIterator<Item = Header<'h>>>(iter: I) -> Self {
        let mut headers = Headers::new();
        headers.extend(iter);
        headers
    }
}

impl<'h> Extend<Header<'h>> for Headers<'h> {
    fn extend<I: IntoIterator<Item = Header<'h>>>(&mut self, iter: I) {
        for h in iter {
            self.push(h);
        }
    }
}

impl<'h, const N: usize> From<[Header<'h>; N]> for Headers<'h> {
    fn from(fields: [Header<'h>; N]) -> Self {
        fields.into_iter().collect()
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Headers<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Headers<'_> {}

/// Bytes of an owned [`HeaderName`] kept inline.
pub const NAME_INLINE: usize = 22;
/// Bytes of an owned [`HeaderValue`] kept inline: an IPv6 address in text fits.
pub const VALUE_INLINE: usize = 46;
/// Bytes of an owned request target kept inline (a target rewritten to origin-form).
pub const TARGET_INLINE: usize = 62;

/// A field name; reads as a `&str`.
pub type HeaderName<'h> = HeadStr<'h, NAME_INLINE>;
/// A field value; reads as a `&[u8]`.
pub type HeaderValue<'h> = HeadBytes<'h, VALUE_INLINE>;

/// Bytes of a message head: borrowed from the buffer the head was parsed from, or owned (inline
/// up to `N` bytes, `N` at most 255, on the heap beyond). Reads as a `&[u8]`; compares by
/// content, however it is held.
#[derive(Clone)]
pub struct HeadBytes<'h, const N: usize>(Repr<'h, N>);

#[derive(Clone)]
enum Repr<'h, const N: usize> {
    Borrowed(&'h [u8]),
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<[u8]>),
}

impl<'h, const N: usize> HeadBytes<'h, N> {
    /// `b`, copied: inline when it fits.
    pub fn copied(b: &[u8]) -> HeadBytes<'static, N> {
        const { assert!(N <= u8::MAX as usize, "inline length is a u8") };
        if b.len() <= N {
            let mut bytes = [0; N];
            bytes[..b.len()].copy_from_slice(b);
            HeadBytes(Repr::Inline { len: b.len() as u8, bytes })
        } else {
            HeadBytes(Repr::Heap(b.into()))
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Borrowed(b) => b,
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(b) => b,
        }
    }

    /// Whether the bytes are borrowed from a head buffer (or `'static`), not owned.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Repr::Borrowed(_))
    }

    /// The same bytes, owned.
    pub fn into_owned(self) -> HeadBytes<'static, N> {
        match self.0 {
            Repr::Borrowed(b) => HeadBytes::copied(b),
            Repr::Inline { len, bytes } => HeadBytes(Repr::Inline { len, bytes }),
            Repr::Heap(b) => HeadBytes(Repr::Heap(b)),
        }
    }

    /// Drops the first `end` bytes; a borrowed value stays borrowed.
    fn strip_prefix(&mut self, end: usize) {
        match &mut self.0 {
            Repr::Borrowed(b) => *b = &b[end..],
            _ => *self = HeadBytes::copied(&self.as_slice()[end..]),
        }
    }

    /// Replaces the first `end` bytes with `with`: a copy, unless `with` is empty.
    fn replace_prefix(&mut self, end: usize, with: &[u8]) {
        if with.is_empty() {
            return self.strip_prefix(end);
        }
        let rest = &self.as_slice()[end..];
        let len = with.len() + rest.len();
        let owned = if len <= N {
            let mut bytes = [0; N];
            bytes[..with.len()].copy_from_slice(with);
            bytes[with.len()..len].copy_from_slice(rest);
            Repr::Inline { len: len as u8, bytes }
        } else {
            Repr::Heap([with, rest].concat().into())
        };
        self.0 = owned;
    }
}

impl<const N: usize> HeadBytes<'static, N> {
    /// `n` in decimal (a `Content-Length`), without a heap allocation.
    pub fn decimal(mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        HeadBytes::copied(&digits[i..])
    }

    /// `ip` as text (an `X-Forwarded-For` element): an IPv4 address written digit by digit,
    /// without the formatting machinery, which cost about a thousand instructions on every
    /// proxied request; an IPv6 address as its `Display` writes it (RFC 5952's form), on the
    /// stack too.
    pub fn ip(ip: std::net::IpAddr) -> Self {
        let v4 = match ip {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(v6) => {
                // The longest form: eight groups of four, or six and a dotted IPv4 address.
                let mut text = [0u8; 45];
                let left = {
                    let mut w = &mut text[..];
                    let _ = std::io::Write::write_fmt(&mut w, format_args!("{v6}"));
                    w.len()
                };
                return HeadBytes::copied(&text[..text.len() - left]);
            }
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        HeadBytes::copied(&text[..len])
    }
}

impl<const N: usize> Default for HeadBytes<'_, N> {
    fn default() -> Self {
        HeadBytes(Repr::Borrowed(&[]))
    }
}

impl<'h, const N: usize> From<&'h [u8]> for HeadBytes<'h, N> {
    /// Borrows `b`.
    fn from(b: &'h [u8]) -> Self {
        HeadBytes(Repr::Borrowed(b))
    }
}

impl<'h, const N: usize> From<&'h str> for HeadBytes<'h, N> {
    /// Borrows `s`.
    fn from(s: &'h str) -> Self {
        HeadBytes(Repr::Borrowed(s.as_bytes()))
    }
}

impl<const N: usize> std::ops::Deref for HeadBytes<'_, N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<const N: usize> AsRef<[u8]> for HeadBytes<'_, N> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<const N: usize> fmt::Debug for HeadBytes<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_slice()), f)
    }
}

impl<const N: usize, const M: usize> PartialEq<HeadBytes<'_, M>> for HeadBytes<'_, N> {
    fn eq(&self, other: &HeadBytes<'_, M>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for HeadBytes<'_, N> {}

impl<const N: usize> PartialEq<[u8]> for HeadBytes<'_, N> {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl<const N: usize, const M: usize> PartialEq<&[u8; M]> for HeadBytes<'_, N> {
    fn eq(&self, other: &&[u8; M]) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> PartialEq<&[u8]> for HeadBytes<'_, N> {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

/// Text of a message head (a method, a target, a field name, a reason phrase): [`HeadBytes`]
/// that are UTF-8. Reads as a `&str`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeadStr<'h, const N: usize>(HeadBytes<'h, N>);

impl<'h, const N: usize> HeadStr<'h, N> {
    /// `s`, copied: inline when it fits.
    pub fn copied(s: &str) -> HeadStr<'static, N> {
        HeadStr(HeadBytes::copied(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: the bytes are only ever set from a `&str` (`From<&str>`, `copied`) or from
        // one with a prefix cut at a character boundary (`replace_prefix` checks it); this runs
        // for every field lookup, so it is not checked again.
        unsafe { std::str::from_utf8_unchecked(self.0.as_slice()) }
    }

    /// Whether the text is borrowed from a head buffer (or `'static`), not owned.
    pub fn is_borrowed(&self) -> bool {
        self.0.is_borrowed()
    }

    /// The same text, owned.
    pub fn into_owned(self) -> HeadStr<'static, N> {
        HeadStr(self.0.into_owned())
    }

    /// Replaces the first `end` bytes with `with`; borrowed text stays borrowed when `with` is
    /// empty.
    ///
    /// # Panics
    /// When `end` is past the end or not on a character boundary.
    pub fn replace_prefix(&mut self, end: usize, with: &str) {
        assert!(self.as_str().is_char_boundary(end), "not a character boundary");
        self.0.replace_prefix(end, with.as_bytes());
    }
}

impl<'h, const N: usize> From<&'h str> for HeadStr<'h, N> {
    /// Borrows `s`.
    fn from(s: &'h str) -> Self {
        HeadStr(HeadBytes::from(s))
    }
}

impl<const N: usize> std::ops::Deref for HeadStr<'_, N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> AsRef<str> for HeadStr<'_, N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Debug for HeadStr<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for HeadStr<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> PartialEq<str> for HeadStr<'_, N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for HeadStr<'_, N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_values() {
        for n in [0, 7, 10, 99, 100, 65_536, 1_234_567_890, u64::MAX] {
            assert_eq!(HeaderValue::decimal(n).as_slice(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn ip_values_read_as_display_writes_them() {
        let mut octets = vec![[0, 0, 0, 0], [255, 255, 255, 255], [10, 0, 0, 1], [198, 18, 9, 99]];
        // Every octet value in every position, beside others of every width.
        for n in 0..=255u8 {
            octets.push([n, 9, 100, n]);
            octets.push([99, n, n, 10]);
        }
        for o in octets {
            let ip = std::net::IpAddr::from(o);
            assert_eq!(HeaderValue::ip(ip).as_slice(), ip.to_string().as_bytes(), "{ip}");
        }
        let longest = "1111:2222:3333:4444:5555:6666:7777:8888";
        for text in ["::1", "2001:db8::8a2e:370:7334", "::ffff:198.18.0.1", "fe80::1", longest] {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(HeaderValue::ip(ip).as_slice(), text.as_bytes());
        }
    }

    #[test]
    fn parsed_text_is_borrowed_and_set_text_owned() {
        let head = String::from("X-Forwarded-For");
        let h = Header::borrowed(&head, b"198.18.0.1");
        assert!(h.name.is_borrowed() && h.value.is_borrowed());
        let owned = h.clone().into_owned();
        assert!(!owned.name.is_borrowed() && !owned.value.is_borrowed());
        assert_eq!(owned, h);
        assert!(!Header::new("a", "b").value.is_borrowed());
    }

    #[test]
    fn prefixes_replace_in_place_or_copy() {
        let target = String::from("http://h/p?q");
        let mut t: HeadStr<'_, 8> = HeadStr::from(target.as_str());
        t.replace_prefix(8, "");
        assert_eq!((t.as_str(), t.is_borrowed()), ("/p?q", true));
        let mut t: HeadStr<'_, 8> = HeadStr::from("http://h?q");
        t.replace_prefix(8, "/");
        assert_eq!((t.as_str(), t.is_borrowed()), ("/?q", false));
        let long = format!("http://h?{}", "q".repeat(40));
        let mut t: HeadStr<'_, 8> = HeadStr::from(long.as_str());
        t.replace_prefix(8, "/");
        assert_eq!(t.as_str(), &format!("/{}", &long[8..]));
    }

    #[test]
    fn fields_past_the_inline_ones_move_to_the_heap_in_order() {
        let mut headers = Headers::new();
        for i in 0..FIELDS_INLINE + 3 {
            headers.push(Header::new(format!("f{i}"), "v"));
        }
        headers.retain(|h| h.name.as_str() != "f1");
        let names: Vec<String> = headers.iter().map(|h| h.name.to_string()).collect();
        let want: Vec<String> =
            (0..FIELDS_INLINE + 3).filter(|&i| i != 1).map(|i| format!("f{i}")).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn long_fields_spill_to_the_heap_intact() {
        let name = "X-".to_owned() + &"n".repeat(NAME_INLINE * 2);
        let value = vec![b'v'; VALUE_INLINE * 3];
        let h = Header::new(&name, &value);
        assert_eq!(h.name, name.as_str());
        assert!(h.name.eq_ignore_ascii_case(&name.to_ascii_uppercase()));
        assert_eq!(h.value.as_slice(), value.as_slice());
    }
}
