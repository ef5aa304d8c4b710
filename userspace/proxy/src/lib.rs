//! outpost's TLS proxy.
//!
//! # Layout
//! - [`http`]: a sans-IO HTTP/1.1 codec: request/response heads with limits, body framing
//!   (length, chunked), hop-by-hop headers.
pub mod http;
