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

use smallvec::SmallVec;

mod body;
mod fields;
mod head;
mod write;

pub use body::{encode_chunk, encode_last_chunk, Body, BodyDecoder};
pub use fields::{is_hop_by_hop, remove_hop_by_hop};
pub use head::{parse_request, parse_response, Request, Response};
pub use smallvec::smallvec;
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
}

impl Error {
    /// The status code a server answers a request with when parsing it failed this way.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::Malformed(_) | Self::UnexpectedEof => 400,
            Self::BodyTooLarge => 413,
            Self::UnsupportedTransferCoding => 501,
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
        }
    }
}

impl std::error::Error for Error {}

/// One header field as received: the name keeps its case (compare with
/// `eq_ignore_ascii_case`), the value has surrounding whitespace trimmed and may hold obs-text.
///
/// Both live inline up to a size that covers nearly every field a proxy sees (names up to
/// [`NAME_INLINE`] bytes, values up to [`VALUE_INLINE`]), so a request's fields take no heap
/// allocation each; longer ones spill to the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name, a token.
    pub name: HeaderName,
    /// Field value, without leading or trailing SP/HTAB.
    pub value: HeaderValue,
}

impl Header {
    /// A header from a name and a value.
    pub fn new(name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Self {
        Self { name: HeaderName::from(name.as_ref()), value: HeaderValue::from(value.as_ref()) }
    }

    /// `Content-Length: n`.
    pub fn content_length(n: u64) -> Self {
        Self { name: HeaderName::from("Content-Length"), value: HeaderValue::decimal(n) }
    }
}

/// The fields of a request or response head: a dozen inline, more on the heap.
pub type Headers = SmallVec<[Header; 12]>;

/// Bytes of a [`HeaderName`] kept inline.
pub const NAME_INLINE: usize = 30;
/// Bytes of a [`HeaderValue`] kept inline.
pub const VALUE_INLINE: usize = 62;
/// Request targets up to this many bytes are kept inline; most paths with their query fit.
pub const TARGET_INLINE: usize = 126;

/// A field name; reads as a `&str`.
pub type HeaderName = InlineStr<NAME_INLINE>;

/// A short string kept inline up to `N` bytes (a field name, a method, a reason phrase); longer
/// ones spill to the heap. Reads as a `&str`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct InlineStr<const N: usize>(SmallVec<[u8; N]>);

impl<const N: usize> InlineStr<N> {
    pub fn as_str(&self) -> &str {
        // SAFETY: the bytes are only ever set from a `&str` (`From<&str>`, `Default`), so they
        // are UTF-8; this runs for every field lookup, so it is not checked again.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// Replaces the first `end` bytes with `with`, in place.
    ///
    /// # Panics
    /// When `end` is past the end or not on a character boundary.
    pub fn replace_prefix(&mut self, end: usize, with: &str) {
        assert!(self.as_str().is_char_boundary(end), "not a character boundary");
        self.0.drain(..end);
        self.0.insert_from_slice(0, with.as_bytes());
    }
}

impl<const N: usize> From<&str> for InlineStr<N> {
    fn from(s: &str) -> Self {
        InlineStr(SmallVec::from_slice(s.as_bytes()))
    }
}

impl<const N: usize> std::ops::Deref for InlineStr<N> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> AsRef<str> for InlineStr<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> PartialEq<str> for InlineStr<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for InlineStr<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A field value; reads as a `&[u8]`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HeaderValue(SmallVec<[u8; VALUE_INLINE]>);

impl HeaderValue {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

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
        HeaderValue(SmallVec::from_slice(&digits[i..]))
    }
}

impl From<&[u8]> for HeaderValue {
    fn from(b: &[u8]) -> Self {
        HeaderValue(SmallVec::from_slice(b))
    }
}

impl std::ops::Deref for HeaderValue {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for HeaderValue {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

impl PartialEq<[u8]> for HeaderValue {
    fn eq(&self, other: &[u8]) -> bool {
        self.0.as_slice() == other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for HeaderValue {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.0.as_slice() == other.as_slice()
    }
}

impl PartialEq<&[u8]> for HeaderValue {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0.as_slice() == *other
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
    fn long_fields_spill_to_the_heap_intact() {
        let name = "X-".to_owned() + &"n".repeat(NAME_INLINE * 2);
        let value = vec![b'v'; VALUE_INLINE * 3];
        let h = Header::new(&name, &value);
        assert_eq!(h.name, name.as_str());
        assert!(h.name.eq_ignore_ascii_case(&name.to_ascii_uppercase()));
        assert_eq!(h.value.as_slice(), value.as_slice());
    }
}
