//! One HTTP/2 stream as the request path's [`Downstream`]: the request body from DATA frames
//! (flow-control capacity given back as it is read), the response as HEADERS then DATA frames
//! sent as the client's window allows, within `body_timeout`.

use std::{future::poll_fn, sync::Arc, task::Poll, time::Duration};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use h2::{server::SendResponse, Reason, RecvStream, SendStream};
use outpost_api::{Reply, RequestBody};
use smallvec::SmallVec;

use crate::{
    downstream::{Downstream, Http1},
    error::{Error, ErrorKind, ErrorSource, Result},
    http::{self, Body, BodyDecoder, HeaderValue, Request, Response},
    io,
    metrics::{H2Refusal, Metrics, Proto},
};

/// The largest response body whose bytes share the head's buffer (one DATA frame's worth, at
/// h2's default frame size).
const SHARED_BODY: usize = 16 * 1024;

pub(super) struct H2Stream {
    recv: RecvStream,
    respond: SendResponse<Bytes>,
    /// The response body's stream, once the head went out.
    send: Option<SendStream<Bytes>>,
    /// The response head, until it goes out with the first body bytes (or the end).
    head: Option<::http::Response<()>>,
    /// Room left in the buffer the head's values were copied to, for the body's bytes.
    spare: BytesMut,
    body: Body,
    max_body: u64,
    read: u64,
    body_done: bool,
    body_untouched: bool,
    origin_deadline: io::Deadline,
    /// The client sent `expect: 100-continue` and is owed a 100 before its body is read.
    continue_pending: bool,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl H2Stream {
    pub(super) fn new(
        recv: RecvStream,
        respond: SendResponse<Bytes>,
        body_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> H2Stream {
        let body_done = recv.is_end_stream();
        H2Stream {
            recv,
            respond,
            send: None,
            head: None,
            spare: BytesMut::new(),
            body: Body::Empty,
            max_body: 0,
            read: 0,
            origin_deadline: io::Deadline::default(),
            body_done,
            body_untouched: true,
            continue_pending: false,
            body_timeout,
            metrics,
        }
    }

    /// Sends `data` as the client's flow-control window allows; `end` ends the stream. A window
    /// that stays shut for `body_timeout` resets the stream, so a client that never reads cannot
    /// hold the request (and its origin connection) longer than a slow HTTP/1.1 reader could.
    async fn send_data(&mut self, mut data: Bytes, end: bool) -> Result<()> {
        let Some(send) = self.send.as_mut() else {
            return Err(downstream("the response head was not sent"));
        };
        if data.is_empty() {
            if end {
                send.send_data(data, true).map_err(h2_failed)?;
            }
            return Ok(());
        }
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            // Capacity there already (the usual case) needs no timer; only a wait for the
            // client's window does.
            let granted = match poll_fn(|cx| Poll::Ready(send.poll_capacity(cx))).await {
                Poll::Ready(granted) => Ok(granted),
                Poll::Pending => {
                    io::timeout(self.body_timeout, poll_fn(|cx| send.poll_capacity(cx))).await
                }
            };
            let n = match granted {
                Ok(Some(Ok(n))) => n,
                Ok(Some(Err(e))) => return Err(h2_failed(e)),
                Ok(None) => return Err(downstream("the client closed the stream")),
                Err(io::Elapsed) => {
                    self.metrics.h2_refused(H2Refusal::SendStalled);
                    send.send_reset(Reason::CANCEL);
                    return Err(Error::new(
                        ErrorKind::DownstreamIo,
                        ErrorSource::Downstream,
                        "the client's flow-control window stayed shut",
                    ));
                }
            };
            let chunk = data.split_to(n.min(data.len()));
            send.send_data(chunk, end && data.is_empty()).map_err(h2_failed)?;
        }
        Ok(())
    }

    /// Sends the head now; `end` when nothing follows it.
    fn send_head(&mut self, head: ::http::Response<()>, end: bool) -> Result<()> {
        let send = self.respond.send_response(head, end).map_err(h2_failed)?;
        self.send = Some(send);
        Ok(())
    }
}

#[async_trait(?Send)]
impl RequestBody for H2Stream {
    async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        Downstream::read_body(self, out).await
    }
}

impl Downstream for H2Stream {
    fn proto(&self) -> Proto {
        Proto::H2
    }

    /// The body is what DATA frames carry: `Content-Length` long when the client said so (h2
    /// checks the frames add up), else until END_STREAM, which goes upstream chunked.
    fn start_body(&mut self, req: &Request<'_>, max: u64) -> Body {
        self.max_body = max;
        self.continue_pending = req.expects_continue() && !self.body_done;
        self.body = if self.body_done {
            Body::Empty
        } else {
            match req.header("content-length").and_then(|v| std::str::from_utf8(v).ok()) {
                Some(n) => n.parse().map_or(Body::Chunked, Body::Length),
                None => Body::Chunked,
            }
        };
        self.body
    }

    fn body_done(&self) -> bool {
        self.body_done
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
        self.body_untouched = false;
        if std::mem::take(&mut self.continue_pending) {
            // As on HTTP/1.1: the 100 goes out when the body is first wanted, so a request
            // refused before that (401, 413) is answered without the body being sent.
            let mut cont = ::http::Response::new(());
            *cont.status_mut() = ::http::StatusCode::CONTINUE;
            self.respond.send_informational(cont).map_err(h2_failed)?;
        }
        // Empty DATA frames are possible; h2 bounds how many (its data frame budget).
        while !self.body_done {
            let next = io::timeout(self.body_timeout, self.recv.data()).await.map_err(|e| {
                Error::because(
                    ErrorKind::RequestTimeout,
                    ErrorSource::Downstream,
                    "request body too slow",
                    e,
                )
            })?;
            let data = match next {
                None => {
                    self.body_done = true;
                    break;
                }
                Some(Err(e)) => return Err(h2_failed(e)),
                Some(Ok(data)) => data,
            };
            self.body_done = self.recv.is_end_stream();
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.read += data.len() as u64;
            if self.read > self.max_body {
                return Err(Error::new(
                    ErrorKind::BadRequest(http::Error::BodyTooLarge),
                    ErrorSource::Downstream,
                    "request body",
                ));
            }
            out.extend_from_slice(&data);
            if !data.is_empty() {
                break;
            }
        }
        Ok(!self.body_done)
    }

    async fn write_reply(
        &mut self,
        reply: Reply,
        _keep_alive: bool,
        head_only: bool,
    ) -> std::io::Result<()> {
        let mut head = ::http::Response::new(());
        *head.status_mut() = status(reply.status);
        let fields = head.headers_mut();
        for h in reply.headers.iter().filter(|h| forwarded(&h.name)) {
            append(fields, &h.name, Bytes::copy_from_slice(&h.value));
        }
        if !matches!(reply.status, 100..=199 | 204 | 304) {
            fields.insert(::http::header::CONTENT_LENGTH, reply.body.len().into());
        }
        let end = head_only || reply.body.is_empty();
        let sent = async {
            self.send_head(head, end)?;
            if !end {
                self.send_data(Bytes::from(reply.body), true).await?;
            }
            Ok(())
        };
        sent.await.map_err(|e: Box<Error>| std::io::Error::other(e.to_string()))
    }

    fn response_head<'r>(
        &mut self,
        resp: &mut Response<'r>,
        body: Body,
        content_length: Option<HeaderValue<'r>>,
        _keep_alive: &mut bool,
        _wire: &mut Vec<u8>,
    ) {
        let length = match body {
            Body::Length(n) => Some(HeaderValue::decimal(n)),
            Body::Empty => content_length,
            Body::Chunked | Body::UntilClose => None,
        };
        // The values go to h2 as `Bytes`: copied into one buffer that each value shares, rather
        // than one allocation a field, with room after them for a small body's first bytes
        // (taken by `send_response`).
        let room = match body {
            Body::Length(n) if n <= SHARED_BODY as u64 => n as usize,
            _ => 0,
        };
        let values = resp.headers.iter().map(|h| h.value.len()).sum::<usize>();
        let mut buf =
            BytesMut::with_capacity(values + length.as_ref().map_or(0, |n| n.len()) + room);
        let mut kept = SmallVec::<[(&str, usize); http::FIELDS_INLINE]>::new();
        for h in resp.headers.iter().filter(|h| forwarded(&h.name)) {
            buf.extend_from_slice(&h.value);
            kept.push((&h.name, h.value.len()));
        }
        if let Some(n) = &length {
            buf.extend_from_slice(n);
            kept.push(("content-length", n.len()));
        }
        let mut shared = buf.split().freeze();
        self.spare = buf;
        let mut head = ::http::Response::new(());
        *head.status_mut() = status(resp.status);
        let fields = head.headers_mut();
        // Sized once: no growth per field.
        fields.reserve(kept.len());
        for (name, len) in kept {
            append(fields, name, shared.split_to(len));
        }
        self.head = Some(head);
    }

    fn response_body(
        &mut self,
        dec: &mut BodyDecoder,
        src: &[u8],
        wire: &mut Vec<u8>,
    ) -> std::result::Result<(usize, u64), http::Error> {
        let before = wire.len();
        let used = dec.decode(src, wire)?;
        Ok((used, (wire.len() - before) as u64))
    }

    async fn send_response(&mut self, wire: &mut Vec<u8>, last: bool) -> Result<()> {
        if let Some(head) = self.head.take() {
            let end = last && wire.is_empty();
            self.send_head(head, end)?;
            if end {
                return Ok(());
            }
        }
        // h2 keeps what it was given until the window opens: a copy, so `wire` (pooled) is
        // reused for the next read; into the room the head left, when the bytes fit.
        let data = if wire.len() <= self.spare.capacity() {
            self.spare.extend_from_slice(wire);
            self.spare.split().freeze()
        } else {
            Bytes::copy_from_slice(wire)
        };
        wire.clear();
        self.send_data(data, last).await
    }

    /// A stream has no connection of its own to switch: a WebSocket handshake sent over
    /// HTTP/2 is an ordinary request (RFC 8441's extended CONNECT is not enabled, and h2
    /// refuses `Connection` and `Upgrade` fields as malformed, RFC 9113 §8.2.2).
    fn upgradable(&mut self) -> Option<&mut Http1> {
        None
    }
}

/// Whether a response field goes to the client as it is: not `Content-Length` (the stream's
/// own is set), and not hop-by-hop, which covers every connection-specific field HTTP/2
/// forbids (RFC 9113 §8.2.2).
fn forwarded(name: &str) -> bool {
    !name.eq_ignore_ascii_case("content-length") && !http::is_hop_by_hop(name)
}

/// Appends a field, lowercased as HTTP/2 requires; values it cannot carry are left out.
fn append(fields: &mut ::http::HeaderMap, name: &str, value: Bytes) {
    let (Ok(name), Ok(value)) = (
        ::http::HeaderName::from_bytes(name.as_bytes()),
        ::http::HeaderValue::from_maybe_shared(value),
    ) else {
        return;
    };
    fields.append(name, value);
}

fn status(code: u16) -> ::http::StatusCode {
    ::http::StatusCode::from_u16(code).unwrap_or(::http::StatusCode::BAD_GATEWAY)
}

fn downstream(why: &'static str) -> Box<Error> {
    Error::new(ErrorKind::DownstreamIo, ErrorSource::Downstream, why)
}

fn h2_failed(e: h2::Error) -> Box<Error> {
    Error::because(ErrorKind::DownstreamIo, ErrorSource::Downstream, "HTTP/2 stream", e)
}
