//! The client side of a request as the request path sees it ([`Downstream`]), and its
//! HTTP/1.1 form ([`Http1`]): the TLS stream, bytes read ahead, and the current request's body.
//! The HTTP/2 form is one stream of a connection (`crate::h2`).

use std::time::Duration;

use async_trait::async_trait;
use outpost_api::{handler::set_header, Reply, RequestBody};

use crate::{
    error::{Error, ErrorKind, ErrorSource, Result},
    http::{self, Body, BodyDecoder, Header, HeaderValue, Request, Response},
    io,
    metrics::Proto,
    tls::TlsConn,
};

/// What the request path (`proxy::handle`) needs from the client side of one request,
/// whatever protocol carries it: the body, a complete reply, and a response streamed from an
/// origin (head, then body in parts). Each protocol frames these its own way; the request, its
/// handlers and the origin exchange are the same.
pub(crate) trait Downstream: RequestBody {
    /// The protocol, for the metrics.
    fn proto(&self) -> Proto;

    /// Sets up the body of a new request; returns how it is delimited, which is how it goes
    /// upstream.
    fn start_body(&mut self, req: &Request<'_>, max: u64) -> Body;

    /// The current body has been read to its end (or there is none).
    fn body_done(&self) -> bool;

    /// Nothing of the current body has been read yet.
    fn body_untouched(&self) -> bool;

    /// Longest pause while reading the body or writing the response.
    fn body_timeout(&self) -> Duration;

    /// The timer of the request's wait on its origin (sending the request, reading the
    /// response head): kept from one request to the next where they come one at a time
    /// ([`io::Deadline`]).
    fn origin_deadline(&mut self) -> &mut io::Deadline;

    /// Reads more of the request body, appending to `out`; returns whether more is to come.
    /// Errors are the client's (timeouts, broken framing, too large).
    async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool>;

    /// Writes a complete response. `head_only` for HEAD requests; `keep_alive`: whether the
    /// connection may carry another request (HTTP/1.1).
    async fn write_reply(
        &mut self,
        reply: Reply,
        keep_alive: bool,
        head_only: bool,
    ) -> std::io::Result<()>;

    /// Takes the head of a response streamed from an origin, whose body is `body` as the
    /// origin delimits it (`content_length`: the origin's, kept for a response without a body
    /// such as HEAD's); anything to send goes into `wire`. May clear `keep_alive`.
    fn response_head<'r>(
        &mut self,
        resp: &mut Response<'r>,
        body: Body,
        content_length: Option<HeaderValue<'r>>,
        keep_alive: &mut bool,
        wire: &mut Vec<u8>,
    );

    /// Decodes the response body in `src` with `dec` into `wire`, framed for this client;
    /// returns the bytes of `src` used and the body bytes added.
    fn response_body(
        &mut self,
        dec: &mut BodyDecoder,
        src: &[u8],
        wire: &mut Vec<u8>,
    ) -> std::result::Result<(usize, u64), http::Error>;

    /// Sends `wire` (and the head, first); `last` when the response ends with it. `wire` is
    /// left empty.
    async fn send_response(&mut self, wire: &mut Vec<u8>, last: bool) -> Result<()>;

    /// The connection a WebSocket handshake may switch (`proxy::tunnel` splices it once the
    /// origin answered 101): an HTTP/1.1 connection's own. `None` for an HTTP/2 stream, which
    /// shares its connection (WebSockets over HTTP/2, RFC 8441, are not supported).
    fn upgradable(&mut self) -> Option<&mut Http1>;
}

#[async_trait(?Send)]
impl RequestBody for Http1 {
    async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        Http1::read_body(self, out).await
    }
}

/// The client side of an HTTP/1.1 connection, between requests and within one.
pub(crate) struct Http1 {
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
    /// The current request may get a chunked response (HTTP/1.1, not 1.0).
    chunked_ok: bool,
    /// The response streamed now is re-chunked.
    chunked: bool,
    /// Dechunked response body on its way to being chunked again.
    plain: Vec<u8>,
    origin_deadline: io::Deadline,
}

impl Http1 {
    pub(crate) fn new(tls: TlsConn, body_timeout: Duration) -> Http1 {
        Http1 {
            tls,
            buf: Vec::new(),
            body: BodyDecoder::new(Body::Empty, 0),
            body_untouched: true,
            continue_pending: false,
            body_timeout,
            chunked_ok: true,
            chunked: false,
            plain: Vec::new(),
            origin_deadline: io::Deadline::default(),
        }
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
}

impl Downstream for Http1 {
    fn proto(&self) -> Proto {
        Proto::Http11
    }

    fn start_body(&mut self, req: &Request<'_>, max: u64) -> Body {
        // Framing was checked by the codec.
        let body = req.body().unwrap_or(Body::Empty);
        self.body = BodyDecoder::new(body, max);
        self.body_untouched = true;
        self.continue_pending = req.expects_continue() && !self.body.is_done();
        self.chunked_ok = req.minor_version >= 1;
        self.chunked = false;
        body
    }

    fn body_done(&self) -> bool {
        self.body.is_done()
    }

    fn body_untouched(&self) -> bool {
        self.body_untouched
    }

    fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    fn origin_deadline(&mut self) -> &mut io::Deadline {
        &mut self.origin_deadline
    }

    async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        Http1::read_body(self, out).await
    }

    async fn write_reply(
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

    fn response_head<'r>(
        &mut self,
        resp: &mut Response<'r>,
        body: Body,
        content_length: Option<HeaderValue<'r>>,
        keep_alive: &mut bool,
        wire: &mut Vec<u8>,
    ) {
        resp.headers.retain(|h| !h.name.eq_ignore_ascii_case("content-length"));
        self.chunked = match body {
            Body::Empty => {
                // HEAD and 304 keep the origin's Content-Length: it describes the full entity.
                if let Some(cl) = content_length {
                    resp.headers.push(Header { name: "Content-Length".into(), value: cl });
                }
                false
            }
            Body::Length(n) => {
                resp.headers.push(Header::content_length(n));
                false
            }
            Body::Chunked | Body::UntilClose if self.chunked_ok => {
                resp.headers.push(Header::new("Transfer-Encoding", "chunked"));
                true
            }
            Body::Chunked | Body::UntilClose => {
                *keep_alive = false;
                false
            }
        };
        if !*keep_alive || !self.body.is_done() {
            *keep_alive = false;
            set_header(&mut resp.headers, "Connection", "close");
        }
        let reason = match resp.reason.as_str() {
            "" => http::reason(resp.status),
            r => r,
        };
        http::write_response_head(resp.status, reason, &resp.headers, wire);
    }

    fn response_body(
        &mut self,
        dec: &mut BodyDecoder,
        src: &[u8],
        wire: &mut Vec<u8>,
    ) -> std::result::Result<(usize, u64), http::Error> {
        if self.chunked {
            self.plain.clear();
            let used = dec.decode(src, &mut self.plain)?;
            http::encode_chunk(&self.plain, wire);
            Ok((used, self.plain.len() as u64))
        } else {
            // Decoded straight into `wire`.
            let before = wire.len();
            let used = dec.decode(src, wire)?;
            Ok((used, (wire.len() - before) as u64))
        }
    }

    async fn send_response(&mut self, wire: &mut Vec<u8>, last: bool) -> Result<()> {
        if last && self.chunked {
            http::encode_last_chunk(wire);
        }
        let sent = self.tls.send(wire).await;
        wire.clear();
        if last {
            self.plain = Vec::new();
        }
        sent.map_err(|e| {
            Error::because(
                ErrorKind::DownstreamIo,
                ErrorSource::Downstream,
                "writing the response",
                e,
            )
        })
    }

    fn upgradable(&mut self) -> Option<&mut Http1> {
        Some(self)
    }
}
