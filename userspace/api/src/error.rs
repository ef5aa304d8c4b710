//! One error type for the request path, pingora style: what went wrong ([`ErrorKind`]), on
//! which side ([`ErrorSource`]), a static context string, and the underlying cause.

use std::fmt;

use crate::http;

/// Which side of the proxy an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client connection.
    Downstream,
    /// An origin connection.
    Upstream,
    /// outpost itself (a handler, a configuration gap).
    Internal,
}

/// What went wrong; decides the status the client gets when nothing was sent yet.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client's request broke the codec's rules or limits; carries its status
    /// (400/413/431/501).
    BadRequest(http::Error),
    /// The client was too slow sending its request head. 408.
    RequestTimeout,
    /// The client went away or broke the connection.
    DownstreamIo,
    /// No route matches the request. 404.
    NoRoute,
    /// The handler has no server to send the request to. 502.
    NoUpstream,
    /// Connecting to an origin failed (refused, unreachable, timed out). 502.
    ConnectFailed,
    /// The origin did not answer in time. 504.
    UpstreamTimeout,
    /// Reading from or writing to an origin failed, or it closed early. 502.
    UpstreamIo,
    /// The origin's response broke the codec's rules. 502.
    InvalidResponse,
    /// A service the handler needs (the store, an identity provider) cannot answer now. 503.
    Unavailable,
    /// A bug or an unexpected state. 500.
    Internal,
}

pub struct Error {
    pub kind: ErrorKind,
    pub source: ErrorSource,
    pub context: &'static str,
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Box<Error>> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, source: ErrorSource, context: &'static str) -> Box<Error> {
        Box::new(Error { kind, source, context, cause: None })
    }

    pub fn because(
        kind: ErrorKind,
        source: ErrorSource,
        context: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Box<Error> {
        Box::new(Error { kind, source, context, cause: Some(cause.into()) })
    }

    /// A request head the client got wrong (malformed, too large, not normalisable): its
    /// status is the codec error's.
    pub fn bad_head(e: http::Error) -> Box<Error> {
        Error::because(ErrorKind::BadRequest(e.clone()), ErrorSource::Downstream, "request head", e)
    }

    /// The status a client gets for this error, when no response has started.
    pub fn status(&self) -> u16 {
        match &self.kind {
            ErrorKind::BadRequest(e) => e.status(),
            ErrorKind::RequestTimeout => 408,
            ErrorKind::DownstreamIo => 400,
            ErrorKind::NoRoute => 404,
            ErrorKind::NoUpstream | ErrorKind::ConnectFailed => 502,
            ErrorKind::UpstreamIo | ErrorKind::InvalidResponse => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// A short text for the client's `{"error": ...}` body; never the cause, which may hold
    /// internal addresses.
    pub fn public_message(&self) -> String {
        match &self.kind {
            ErrorKind::BadRequest(e) => e.to_string(),
            ErrorKind::RequestTimeout => "request not received in time".into(),
            ErrorKind::DownstreamIo => "connection error".into(),
            ErrorKind::NoRoute => "no route for this host and path".into(),
            ErrorKind::NoUpstream => "no healthy origin server".into(),
            ErrorKind::ConnectFailed => "origin server unreachable".into(),
            ErrorKind::UpstreamTimeout => "origin server did not answer in time".into(),
            ErrorKind::UpstreamIo => "origin server connection failed".into(),
            ErrorKind::InvalidResponse => "invalid response from origin server".into(),
            ErrorKind::Unavailable => "service temporarily unavailable; try again".into(),
            ErrorKind::Internal => "internal error".into(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?}): {}", self.kind, self.source, self.context)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// `.or_err(kind, source, "context")` at call sites.
pub trait OrErr<T> {
    fn or_err(self, kind: ErrorKind, source: ErrorSource, context: &'static str) -> Result<T>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> OrErr<T> for Result<T, E> {
    fn or_err(self, kind: ErrorKind, source: ErrorSource, context: &'static str) -> Result<T> {
        self.map_err(|e| Error::because(kind, source, context, e))
    }
}
