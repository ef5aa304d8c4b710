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

mod body;
mod fields;
mod head;
mod write;

pub use body::{encode_chunk, encode_last_chunk, Body, BodyDecoder};
pub use fields::{is_hop_by_hop, remove_hop_by_hop};
pub use head::{parse_request, parse_response, Request, Response};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name, a token.
    pub name: String,
    /// Field value, without leading or trailing SP/HTAB.
    pub value: Vec<u8>,
}

impl Header {
    /// A header from a name and a value.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self { name: name.into(), value: value.into() }
    }
}
