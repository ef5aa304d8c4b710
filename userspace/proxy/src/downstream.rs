//! The client side of a connection as the request path sees it: the TLS stream, bytes read
//! ahead, and the current request's body.

use std::time::Duration;

use async_trait::async_trait;
use outpost_api::{Reply, RequestBody};

use crate::{
    error::{Error, ErrorKind, ErrorSource, Result},
    http::{self, BodyDecoder, Header},
    io,
    tls::TlsConn,
};

#[async_trait(?Send)]
impl RequestBody for Downstream {
    async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        Downstream::read_body(self, out).await
    }
}

/// The client side of a connection, between requests and within one.
pub(crate) struct Downstream {
    pub(crate) tls: TlsConn,
    /// Plaintext read but not consumed: the rest of a request, or the next one.
    pub(crate) buf: Vec<u8>,
    /// The current request's body.
    body: BodyDecoder,
    /// Nothing of the current body has been read yet.
    body_untouched: bool,
    /// The client sent `Expect: 100-continue` and is owed a `100 Continue`.
    continue_pending: bool,
    body_timeout: Duration,
}

impl Downstream {
    pub(crate) fn new(tls: TlsConn, body_timeout: Duration) -> Downstream {
        Downstream {
            tls,
            buf: Vec::new(),
            body: BodyDecoder::new(http::Body::Empty, 0),
            body_untouched: true,
            continue_pending: false,
            body_timeout,
        }
    }

    /// Sets up the body of a new request.
    pub(crate) fn start_body(&mut self, body: http::Body, max: u64, expect_continue: bool) {
        self.body = BodyDecoder::new(body, max);
        self.body_untouched = true;
        self.continue_pending = expect_continue && !self.body.is_done();
    }

    pub(crate) fn body_done(&self) -> bool {
        self.body.is_done()
    }

    pub(crate) fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    pub(crate) fn body_untouched(&self) -> bool {
        self.body_untouched
    }

    /// Reads more of the request body, dechunked, appending to `out`; returns whether more is
    /// to come. Errors are the client's (timeouts, broken framing, too large).
    pub(crate) async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        self.body_untouched = false;
        if self.body.is_done() {
            return Ok(false);
        }
        if std::mem::take(&mut self.continue_pending) {
            self.tls.send(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|e| {
                Error::because(
                    ErrorKind::DownstreamIo,
                    ErrorSource::Downstream,
                    "writing 100 Continue",
                    e,
                )
            })?;
        }
        let before = out.len();
        loop {
            if !self.buf.is_empty() {
                let used = self.body.decode(&self.buf, out).map_err(|e| {
                    Error::because(
                        ErrorKind::BadRequest(e.clone()),
                        ErrorSource::Downstream,
                        "request body",
                        e,
                    )
                })?;
                self.buf.drain(..used);
                if self.body.is_done() {
                    return Ok(false);
                }
                if out.len() > before {
                    return Ok(true);
                }
            }
            let n = io::timeout(self.body_timeout, self.tls.read(&mut self.buf))
                .await
                .map_err(|e| {
                    Error::because(
                        ErrorKind::RequestTimeout,
                        ErrorSource::Downstream,
                        "request body too slow",
                        e,
                    )
                })?
                .map_err(|e| {
                    Error::because(
                        ErrorKind::DownstreamIo,
                        ErrorSource::Downstream,
                        "reading the request body",
                        e,
                    )
                })?;
            if n == 0 {
                self.body.finish_at_eof().map_err(|e| {
                    Error::because(
                        ErrorKind::BadRequest(e.clone()),
                        ErrorSource::Downstream,
                        "request body",
                        e,
                    )
                })?;
                return Ok(false);
            }
        }
    }

    /// Writes a complete response. `head_only` for HEAD requests.
    pub(crate) async fn write_reply(
        &mut self,
        reply: Reply,
        keep_alive: bool,
        head_only: bool,
    ) -> std::io::Result<()> {
        let mut headers = reply.headers;
        headers.retain(|h| {
            !h.name.eq_ignore_ascii_case("content-length") && !http::is_hop_by_hop(&h.name)
        });
        if !matches!(reply.status, 100..=199 | 204 | 304) {
            headers.push(Header::content_length(reply.body.len() as u64));
        }
        if !keep_alive {
            headers.push(Header::new("Connection", "close"));
        }
        let mut out = Vec::with_capacity(256 + reply.body.len());
        http::write_response_head(reply.status, http::reason(reply.status), &headers, &mut out);
        if !head_only {
            out.extend_from_slice(&reply.body);
        }
        self.tls.send(&out).await
    }
}
