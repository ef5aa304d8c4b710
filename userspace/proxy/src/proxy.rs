//! The proxy core: runs a request through its handler's phases, and owns everything handlers
//! do not: per-worker keep-alive pools, connect retries, request and response streaming with
//! re-framing, and the error responses.
//!
//! Bodies stream in both directions through bounded buffers (one read's worth at a time): the
//! client's body is decoded and re-encoded for the origin (so the origin sees outpost's framing,
//! never the client's), then the origin's response is decoded and re-encoded for the client.
//! The exchange is sequential: the whole request body goes out before the response is read.
//!
//! A WebSocket handshake ([`Request::websocket_upgrade`]) on an HTTP/1.1 connection goes to the
//! origin with its upgrade fields; when the origin answers `101` (naming `websocket`), the 101
//! goes to the client and the two connections are spliced ([`splice`](crate::splice)) until
//! either side is done. The handlers' phases all run for the handshake as for any request
//! (filters can refuse it, `logging` sees the 101); any other answer is an ordinary response.
//! An HTTP/2 stream has no connection of its own to switch (`Downstream::upgradable`: RFC 8441
//! is not supported): a handshake on one is an ordinary request (h2 itself refuses `Connection`
//! and `Upgrade` there as malformed, RFC 9113 §8.2.2; anything else hop-by-hop is dropped).

use std::{
    any::Any,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use outpost_api::{
    pooled::Pooled, AfterResponse, ClientInfo, ErasedHandler, Flow, Peer, Reply, Session, Summary,
};
use smallvec::SmallVec;

use crate::{
    downstream::Downstream,
    error::{Error, ErrorKind, ErrorSource, OrErr as _, Result},
    http::{self, Body, BodyDecoder, Header, Request, Response},
    io,
    metrics::UpstreamFailure,
    shared::Live,
    splice,
    worker::{Reuse, Worker},
};

/// Most connect attempts for one request (each to a different server, as the handler picks).
const MAX_CONNECT_ATTEMPTS: usize = 8;
/// Read size on origin connections (pooled buffers, see [`io::buf`]).
const UPSTREAM_READ: usize = io::buf::SIZE;
/// A buffer with less room than this left grows to [`UPSTREAM_READ`] before the next read.
const UPSTREAM_READ_MIN: usize = 512;
/// Limits on origins' responses: larger heads than clients may send, bodies unbounded (they
/// stream).
const UPSTREAM_LIMITS: http::Limits =
    http::Limits { max_head_bytes: 64 * 1024, max_headers: 256, max_body_bytes: u64::MAX };

/// What the core knows about the response while it runs.
#[derive(Default)]
struct Progress {
    status: u16,
    /// The response head went out: errors can only abort the connection now.
    started: bool,
    /// Whether the client connection may carry another request.
    keep_alive: bool,
    upstream: Option<SocketAddr>,
    body_bytes: u64,
}

/// The handlers a request goes through: the filters, then the route's handler (last), each
/// with its context.
struct Chain {
    /// Inline for the usual few filters: no allocation per request for the list itself.
    links: SmallVec<[Link; 4]>,
}

/// A handler of the chain and its context for this request.
type Link = (Arc<dyn ErasedHandler>, Pooled<dyn Any>);

impl Chain {
    fn new(filters: &[Arc<dyn ErasedHandler>], handler: &Arc<dyn ErasedHandler>) -> Chain {
        let mut links = SmallVec::new();
        for h in filters.iter().chain(std::iter::once(handler)) {
            links.push((h.clone(), h.new_ctx()));
        }
        Chain { links }
    }

    /// The route's handler and its context.
    fn handler(&mut self) -> (&dyn ErasedHandler, &mut dyn Any) {
        let (h, ctx) = self.links.last_mut().expect("a chain always ends with the route's handler");
        (&**h, &mut **ctx)
    }
}

/// One request's parts that handlers see, lent to a [`Session`] for each phase.
struct Exchange<'a, D> {
    req: &'a Request<'a>,
    client: &'a ClientInfo,
    ds: &'a mut D,
    /// How the request body is delimited (the client's framing; it goes upstream so).
    body: Body,
    after: AfterResponse,
}

impl<D: Downstream> Exchange<'_, D> {
    fn session(&mut self) -> Session<'_> {
        Session::new(self.req, self.client, &mut *self.ds, &mut self.after)
    }
}

/// An origin connection that switched to a WebSocket, and what the origin already sent after
/// its 101.
struct Upgraded {
    up: io::Stream,
    early: Vec<u8>,
}

/// Decides the request's one authority, path and set of fields (`http::normalise`), which every
/// later step reads; counts the fields dropped. Both connection drivers call it on each request
/// before [`handle`]; an error is the client's (400, 405), to refuse with.
pub(crate) fn normalise(
    worker: &Worker,
    live: &Live,
    client: &ClientInfo,
    req: &mut Request<'_>,
) -> Result<()> {
    let dropped = http::normalise(req, &live.rules(client)).map_err(Error::bad_head)?;
    worker.shared.metrics.dropped_fields(&dropped);
    Ok(())
}

/// Serves one request; returns whether the connection stays open (HTTP/1.1).
///
/// `req` borrows its fields from the head's buffer for as long as `ds` and `client` are lent.
/// It is lent too, not moved: a request is large (its fields inline), and each move of it
/// through the futures is a copy.
pub(crate) async fn handle<'a, D: Downstream>(
    worker: &Rc<Worker>,
    live: &Live,
    ds: &'a mut D,
    client: &'a ClientInfo,
    req: &'a Request<'a>,
) -> bool {
    let started = Instant::now();
    let body = ds.start_body(req, live.limits.max_body_bytes);
    let mut p = Progress {
        keep_alive: req.keep_alive() && !worker.shared.draining(),
        ..Progress::default()
    };
    let head_only = req.method == "HEAD";
    // The authority and path `http::normalise` decided: routing, filters, handlers and the
    // upstream request all read these.
    let route = live.router.route(Some(&req.authority.host), req.path());
    let handler_name = route.map_or("none", |r| r.handler.name());
    let mut x = Exchange { req, client, ds, body, after: AfterResponse::default() };
    let (result, mut chain) = match route {
        Some(route) => {
            let mut chain = Chain::new(&live.router.filters, &route.handler);
            let r = phases(worker, &mut chain, &mut x, &mut p).await;
            (r, Some(chain))
        }
        None => (Err(Error::new(ErrorKind::NoRoute, ErrorSource::Downstream, "routing")), None),
    };
    let (result, upgraded) = match result {
        Ok(upgraded) => (Ok(()), upgraded),
        Err(e) => (Err(e), None),
    };
    if let Err(e) = &result {
        match e.source {
            ErrorSource::Downstream if matches!(e.kind, ErrorKind::DownstreamIo) => {
                tracing::debug!(error = %e, "client connection failed")
            }
            _ => tracing::debug!(error = %e, "request failed"),
        }
        if p.started {
            p.keep_alive = false;
        } else {
            p.status = e.status();
            // A body left unread (or half read) cannot be skipped reliably: close after.
            p.keep_alive &= x.ds.body_done() && e.kind != ErrorKind::DownstreamIo;
            if e.kind != ErrorKind::DownstreamIo {
                let reply = Reply::json_error(p.status, &e.public_message());
                if x.ds.write_reply(reply, p.keep_alive, head_only).await.is_err() {
                    p.keep_alive = false;
                }
            } else {
                p.status = 0;
            }
        }
    }
    let elapsed = started.elapsed();
    if p.status != 0 {
        let malformed = matches!(
            &result,
            Err(e) if e.status() == 400 && matches!(e.kind, ErrorKind::BadRequest(_))
        );
        worker.shared.metrics.request(x.ds.proto(), p.status, malformed);
        worker.latency.record(p.status, elapsed);
    }
    if let Some(chain) = chain.as_mut() {
        let summary = Summary {
            status: p.status,
            upstream: p.upstream,
            body_bytes: p.body_bytes,
            duration: elapsed,
        };
        let err = result.as_ref().err().map(|e| &**e);
        for (h, ctx) in chain.links.iter_mut() {
            h.logging(&x.session(), &summary, err, &mut **ctx);
        }
    }
    tracing::debug!(
        handler = handler_name, method = %x.req.method, target = %x.req.target,
        status = p.status, upstream = ?p.upstream, us = elapsed.as_micros() as u64, "request"
    );
    // The response is out: now the work that could wait.
    for task in x.after.tasks.drain(..) {
        worker.run_after_response(task, live.after_max_pending);
    }
    if let Some(upgraded) = upgraded {
        let close_when = std::mem::take(&mut x.after.close_upgraded);
        // Boxed: only an upgraded connection pays for the splice's state.
        Box::pin(tunnel(worker, live, x.ds, upgraded, close_when)).await;
        return false;
    }
    p.keep_alive && x.ds.body_done()
}

/// Splices an upgraded connection (see [`splice`](crate::splice)), counted in
/// `outpost_upgraded_*` and in the worker's drain, until it ends, the worker closes upgraded
/// connections (a drain's grace period ran out), or a handler's `close_when` resolves.
async fn tunnel<D: Downstream>(
    worker: &Rc<Worker>,
    live: &Live,
    ds: &mut D,
    mut upgraded: Upgraded,
    close_when: Vec<outpost_api::handler::Task>,
) {
    let limits =
        splice::Limits { idle: live.upgraded_idle_timeout, write_timeout: ds.body_timeout() };
    // Only a connection that can switch was upgraded (see `phases`).
    let Some(conn) = ds.upgradable() else {
        io::buf::give(upgraded.early);
        return;
    };
    let _open = worker.upgraded_opened();
    let metrics = &worker.shared.metrics;
    let stop = async {
        tokio::select! {
            () = worker.upgraded_closing() => {}
            () = any(close_when) => {}
        }
    };
    // What the client sent after its handshake (it should wait for the 101, but may not).
    let from_client = std::mem::take(&mut conn.buf);
    let end = splice::splice(
        &mut conn.tls,
        &from_client,
        &mut upgraded.up,
        &upgraded.early,
        limits,
        stop,
        &|d, n| metrics.upgraded_bytes(d, n as u64),
    )
    .await;
    io::buf::give(from_client);
    io::buf::give(upgraded.early);
    match &end {
        splice::End::Failed(side, e) => {
            tracing::debug!(?side, error = %e, "upgraded connection failed")
        }
        end => tracing::debug!(end = end.name(), "upgraded connection ended"),
    }
}

/// Resolves when any of `futures` does; never when there are none.
async fn any(mut futures: Vec<outpost_api::handler::Task>) {
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The phases of a routed request: the filters and the handler may answer it themselves;
/// otherwise it goes to an origin and the origin's response comes back. `Some` when the origin
/// switched the connection to a WebSocket (its 101 went to the client, the rest is the
/// splice's).
async fn phases<D: Downstream>(
    worker: &Rc<Worker>,
    chain: &mut Chain,
    x: &mut Exchange<'_, D>,
    p: &mut Progress,
) -> Result<Option<Upgraded>> {
    if request_filters(chain, x, p).await? {
        return Ok(None);
    }
    if !x.ds.body_untouched() {
        return Err(Error::new(
            ErrorKind::Internal,
            ErrorSource::Internal,
            "handler read the body and did not respond",
        ));
    }
    // The one upgrade the edge forwards, and only where there is a connection to switch.
    let upgrade = x.req.websocket_upgrade() && x.ds.upgradable().is_some();
    let UpstreamHead { head, idempotent } = upstream_head(chain, x, upgrade).await?;
    let (peer, up, reused) = connect(worker, chain, x, None).await?;
    p.upstream = Some(peer.addr);
    forward(worker, chain, x, p, Origin { peer, up, reused, head, idempotent, upgrade }).await
}

/// Runs every filter's and the handler's `request_filter`; true when one answered (and its
/// reply went out).
async fn request_filters<D: Downstream>(
    chain: &mut Chain,
    x: &mut Exchange<'_, D>,
    p: &mut Progress,
) -> Result<bool> {
    let head_only = x.req.method == "HEAD";
    for (h, ctx) in chain.links.iter_mut() {
        if let Flow::Respond(reply) = h.request_filter(&mut x.session(), &mut **ctx).await? {
            p.status = reply.status;
            p.body_bytes = reply.body.len() as u64;
            p.keep_alive &= x.ds.body_done();
            x.ds.write_reply(reply, p.keep_alive, head_only).await.or_err(
                ErrorKind::DownstreamIo,
                ErrorSource::Downstream,
                "writing a reply",
            )?;
            p.started = true;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The request for the origin as it goes on the wire.
struct UpstreamHead {
    /// The head, in a pooled buffer.
    head: Vec<u8>,
    /// Its method may be sent twice with the effect of once (a retry may send it again).
    idempotent: bool,
}

/// The request for the origin, built from the normalised one and edited by the handlers (see
/// [`UpstreamHead`]). `upgrade`: a WebSocket handshake to forward as one.
async fn upstream_head<D: Downstream>(
    chain: &mut Chain,
    x: &mut Exchange<'_, D>,
    upgrade: bool,
) -> Result<UpstreamHead> {
    // Fields still borrowed from the client's head: copying the request copies no bytes. The
    // target is origin-form and `Host` the authority already (`http::normalise`).
    let mut up_req = Request::clone(x.req);
    http::remove_hop_by_hop(&mut up_req.headers);
    up_req.headers.remove("expect");
    // Its `Sec-WebSocket-*` fields are end to end already.
    if upgrade {
        up_req.headers.push(Header::borrowed("Connection", b"upgrade"));
        up_req.headers.push(Header::borrowed("Upgrade", b"websocket"));
    }
    for (h, ctx) in chain.links.iter_mut() {
        h.upstream_request_filter(&mut x.session(), &mut up_req, &mut **ctx).await?;
    }
    frame_request(&mut up_req.headers, x.body);
    // Small: a request head is a few hundred bytes (it grows for a larger one).
    let mut head = io::buf::take_idle();
    http::write_request_head(&up_req.method, &up_req.target, &up_req.headers, &mut head);
    // Only the head goes on: the request itself is large (its fields inline), and moving it
    // through the futures after this costs a copy each time.
    Ok(UpstreamHead { head, idempotent: idempotent(&up_req.method) })
}

/// A connection to the origin the handler picked (pooled when one is idle): the peer, the
/// connection, and whether it was reused.
///
/// `again`: the request failed on a pooled connection to this peer before any response byte,
/// and goes again on a fresh one. If the peer refuses it (an origin that went away closed its
/// pooled connections too), the handler is told, as for any refused connection, and picks
/// another server if it has one.
async fn connect<D: Downstream>(
    worker: &Rc<Worker>,
    chain: &mut Chain,
    x: &mut Exchange<'_, D>,
    mut again: Option<Peer>,
) -> Result<(Peer, io::Stream, bool)> {
    let (h, ctx) = chain.handler();
    // A request that goes again takes fresh connections only.
    let reuse = match again {
        Some(_) => None,
        None if x.body == Body::Empty && idempotent(&x.req.method) => Some(Reuse::Replayable),
        None => Some(Reuse::Once),
    };
    let mut attempts = 0;
    loop {
        let peer = match again.take() {
            Some(peer) => peer,
            None => h.upstream_peer(&mut x.session(), ctx).await.inspect_err(|e| {
                if e.kind == ErrorKind::NoUpstream {
                    worker.shared.metrics.upstream_failure(UpstreamFailure::NoHealthy);
                }
            })?,
        };
        if let Some(reuse) = reuse {
            let pooled = worker.pool.borrow_mut().take(&peer, reuse);
            if let Some(conn) = pooled {
                return Ok((peer, conn, true));
            }
        }
        match io::Stream::connect(peer.addr, peer.connect_timeout).await {
            Ok(conn) => return Ok((peer, conn, false)),
            Err(e) => {
                worker.shared.metrics.upstream_failure(UpstreamFailure::Connect);
                let e = Error::because(
                    ErrorKind::ConnectFailed,
                    ErrorSource::Upstream,
                    "connecting to the origin",
                    e,
                );
                attempts += 1;
                if !h.fail_to_connect(&x.session(), &peer, ctx, &e)
                    || attempts >= MAX_CONNECT_ATTEMPTS
                {
                    return Err(e);
                }
            }
        }
    }
}

/// The origin side of one exchange.
struct Origin {
    peer: Peer,
    up: io::Stream,
    /// `up` came from the pool (the origin may have closed it meanwhile).
    reused: bool,
    /// The request's head on the wire.
    head: Vec<u8>,
    /// The request's method is idempotent (see [`UpstreamHead`]).
    idempotent: bool,
    /// The request is a WebSocket handshake: a `101` to it switches the connection.
    upgrade: bool,
}

/// Sends the request (its body read from the client as it goes) and reads the response head,
/// retrying once on a fresh connection where that is safe; then hands the response on to
/// [`respond`]. `Some` when the origin switched to a WebSocket: the connection, for the splice.
async fn forward<D: Downstream>(
    worker: &Rc<Worker>,
    chain: &mut Chain,
    x: &mut Exchange<'_, D>,
    p: &mut Progress,
    o: Origin,
) -> Result<Option<Upgraded>> {
    let Origin { mut peer, mut up, reused, mut head, idempotent, upgrade } = o;
    let body = x.body;
    // The response head and a small body fit in a small buffer; a larger response grows it
    // to a full-size one at its second read (`read_response_head`, `relay_body`). With many
    // requests in flight (HTTP/2), full-size buffers for every request waiting on its origin
    // were most of the memory a request touched.
    let mut rbuf = io::buf::take_idle();
    let mut retried = false;
    // The response head is parsed where it was read, and borrows its fields from `rbuf` until
    // it has been written for the client; the body after it is streamed from there.
    let (mut resp, head_len) = 'exchange: loop {
        let failed = match send_request(&mut up, x.ds, &mut head, body, &peer).await {
            Err(e) => e,
            Ok(()) => {
                let deadline = Instant::now() + peer.response_timeout;
                loop {
                    let interim = match http::parse_response(&rbuf, &UPSTREAM_LIMITS) {
                        Ok(Some((resp, n))) if !(100..200).contains(&resp.status) => {
                            break 'exchange (resp, n)
                        }
                        Ok(Some((resp, n))) if upgrade && resp.switches_to_websocket() => {
                            break 'exchange (resp, n)
                        }
                        Ok(Some((resp, _))) if resp.status == 101 => {
                            break Error::new(
                                ErrorKind::InvalidResponse,
                                ErrorSource::Upstream,
                                "origin switched protocols unasked",
                            )
                        }
                        Ok(Some((_, n))) => Some(n),
                        Ok(None) => None,
                        Err(e) => {
                            break Error::because(
                                ErrorKind::InvalidResponse,
                                ErrorSource::Upstream,
                                "response head",
                                e,
                            )
                        }
                    };
                    // An interim response (100 Continue, 103 Early Hints): skipped.
                    if let Some(n) = interim {
                        rbuf.drain(..n);
                        continue;
                    }
                    let timer = x.ds.origin_deadline();
                    if let Err(e) = read_response_head(&mut up, &mut rbuf, timer, deadline).await {
                        break e;
                    }
                }
            }
        };
        // A pooled connection the origin closed just as we reused it, or one that carried
        // stray bytes (an origin that sent a body after a HEAD or 304 response, seen only
        // once the next request went out): retry once on a fresh one, when nothing of the
        // request body was consumed (so it can be sent again) and, for stray bytes, when the
        // method is idempotent (the origin may have acted on the request).
        let retry = reused
            && !retried
            && body == Body::Empty
            && ((failed.kind == ErrorKind::UpstreamIo && rbuf.is_empty())
                || (failed.kind == ErrorKind::InvalidResponse && idempotent));
        if retry {
            retried = true;
            drop(up);
            rbuf.clear();
            // A fresh connection to the same server; one it refuses (an origin that went away
            // closed its pooled connections) sends the request to another, as a refused
            // first connection does.
            (peer, up, _) = connect(worker, chain, x, Some(peer)).await?;
            continue;
        }
        worker.shared.metrics.upstream_failure(match failed.kind {
            ErrorKind::UpstreamTimeout => UpstreamFailure::Timeout,
            ErrorKind::InvalidResponse => UpstreamFailure::InvalidResponse,
            _ => UpstreamFailure::Io,
        });
        if failed.source == ErrorSource::Upstream {
            let (h, ctx) = chain.handler();
            h.upstream_failed(&peer, ctx, &failed);
        }
        return Err(failed);
    };
    let mut wire = head;
    wire.clear();
    // Lent, not moved: a response head is large (its fields inline), and a move is a copy.
    let next = respond(chain, x, p, &mut resp, &mut wire).await?;
    drop(resp);
    // The head is written: `resp` let go of `rbuf`, where the body (or the WebSocket) starts
    // after it.
    rbuf.drain(..head_len);
    let (origin_keep_alive, resp_body) = match next {
        Next::Body { origin_keep_alive, body } => (origin_keep_alive, body),
        Next::Switched => {
            p.started = true;
            // The 101 is the whole response; what follows is the splice's.
            let sent = x.ds.send_response(&mut wire, false).await;
            io::buf::give(wire);
            if let Err(e) = sent {
                io::buf::give(rbuf);
                return Err(e);
            }
            return Ok(Some(Upgraded { up, early: rbuf }));
        }
    };
    relay_body(x.ds, p, &mut up, &mut rbuf, &mut wire, resp_body).await?;
    // A connection that became a tunnel (a 2xx to CONNECT) or switched protocols belongs to
    // one client: never back in the pool. Neither reaches here (CONNECT is refused, a 101
    // returned above with the connection); this keeps it so.
    let tunnel = x.req.method == "CONNECT" || p.status == 101;
    if origin_keep_alive && rbuf.is_empty() && !tunnel {
        worker.pool.borrow_mut().put(&peer, up, resp_body == Body::Empty);
    }
    io::buf::give(rbuf);
    io::buf::give(wire);
    Ok(None)
}

/// What follows a response head the client was sent.
enum Next {
    /// The body, delimited so, and whether the origin connection may be reused after it.
    Body { origin_keep_alive: bool, body: Body },
    /// Nothing: the origin switched to a WebSocket (a `101` to a handshake it was sent).
    Switched,
}

/// The origin's response head through the response filters and out to the client (into
/// `wire`, sent with the first body bytes). Returns what follows it.
async fn respond<D: Downstream>(
    chain: &mut Chain,
    x: &mut Exchange<'_, D>,
    p: &mut Progress,
    resp: &mut Response<'_>,
    wire: &mut Vec<u8>,
) -> Result<Next> {
    if resp.status == 101 {
        // The handshake's answer (only an upgradable connection asked for one, see `phases`):
        // the head goes to the client as it would for any response (hop-by-hop fields dropped,
        // the filters run), with the upgrade fields and no framing.
        http::remove_hop_by_hop(&mut resp.headers);
        resp.headers.remove("content-length");
        for (h, ctx) in chain.links.iter_mut().rev() {
            h.response_filter(&mut x.session(), resp, &mut **ctx).await?;
        }
        resp.headers.push(Header::borrowed("Connection", b"upgrade"));
        resp.headers.push(Header::borrowed("Upgrade", b"websocket"));
        p.status = 101;
        p.keep_alive = false;
        http::write_response_head(101, http::reason(101), &resp.headers, wire);
        return Ok(Next::Switched);
    }
    let resp_body = resp.body(&x.req.method).or_err(
        ErrorKind::InvalidResponse,
        ErrorSource::Upstream,
        "response framing",
    )?;
    let origin_keep_alive = resp.keep_alive() && resp_body != Body::UntilClose;
    // Kept for a response without a body (below); others are re-framed from `resp_body`.
    let content_length = match resp_body {
        Body::Empty => resp.header("content-length").map(http::HeaderValue::copied),
        _ => None,
    };
    http::remove_hop_by_hop(&mut resp.headers);
    // The route's handler first, then the filters outside it.
    for (h, ctx) in chain.links.iter_mut().rev() {
        h.response_filter(&mut x.session(), resp, &mut **ctx).await?;
    }
    // Re-framed for the client.
    x.ds.response_head(resp, resp_body, content_length, &mut p.keep_alive, wire);
    p.status = resp.status;
    Ok(Next::Body { origin_keep_alive, body: resp_body })
}

/// Streams the response body from the origin to the client, decoded and re-framed, one read
/// at a time.
async fn relay_body<D: Downstream>(
    ds: &mut D,
    p: &mut Progress,
    up: &mut io::Stream,
    rbuf: &mut Vec<u8>,
    wire: &mut Vec<u8>,
    resp_body: Body,
) -> Result<()> {
    let mut dec = BodyDecoder::new(resp_body, u64::MAX);
    let body_timeout = ds.body_timeout();
    loop {
        if !rbuf.is_empty() {
            let (used, n) = ds.response_body(&mut dec, rbuf, wire).or_err(
                ErrorKind::InvalidResponse,
                ErrorSource::Upstream,
                "response body",
            )?;
            p.body_bytes += n;
            rbuf.drain(..used);
        }
        if dec.is_done() {
            break;
        }
        if !wire.is_empty() || !p.started {
            p.started = true;
            ds.send_response(wire, false).await?;
        }
        let want = read_size(rbuf);
        let read = std::pin::pin!(up.read(std::mem::take(rbuf), want));
        let (res, b) = match io::timeout(body_timeout, read).await {
            Ok(r) => r,
            Err(e) => {
                return Err(Error::because(
                    ErrorKind::UpstreamTimeout,
                    ErrorSource::Upstream,
                    "response body too slow",
                    e,
                ))
            }
        };
        *rbuf = b;
        if res.or_err(ErrorKind::UpstreamIo, ErrorSource::Upstream, "reading the response body")?
            == 0
        {
            dec.finish_at_eof().or_err(
                ErrorKind::UpstreamIo,
                ErrorSource::Upstream,
                "origin closed mid-body",
            )?;
        }
    }
    p.started = true;
    ds.send_response(wire, true).await
}

/// Methods that may be sent twice with the effect of once (RFC 9110, 9.2.2).
fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// Sets the framing fields of a request sent upstream for `body`.
fn frame_request(headers: &mut http::Headers<'_>, body: Body) {
    headers.remove("content-length");
    headers.remove("transfer-encoding");
    match body {
        Body::Empty | Body::UntilClose => {}
        Body::Length(n) => headers.push(Header::content_length(n)),
        Body::Chunked => headers.push(Header::new("Transfer-Encoding", "chunked")),
    }
}

/// Sends the head and the body (read from the client as it goes). `head` is sent as it is
/// when there is no body, and is whole again on return (a retry sends it again).
async fn send_request<D: Downstream>(
    up: &mut io::Stream,
    ds: &mut D,
    head: &mut Vec<u8>,
    body: Body,
    peer: &Peer,
) -> Result<()> {
    if body == Body::Empty {
        // Pinned where it is built, as in `tls` (a copy of the future less).
        let write = std::pin::pin!(up.write_all(std::mem::take(head)));
        let (res, b) = ds.origin_deadline().within(peer.response_timeout, write).await.or_err(
            ErrorKind::UpstreamTimeout,
            ErrorSource::Upstream,
            "sending the request",
        )?;
        *head = b;
        return res.or_err(ErrorKind::UpstreamIo, ErrorSource::Upstream, "sending the request");
    }
    let mut out = io::buf::take();
    out.extend_from_slice(head);
    let mut plain = Vec::new();
    let mut more = true;
    while more {
        plain.clear();
        more = Downstream::read_body(ds, &mut plain).await?;
        match body {
            Body::Chunked => {
                http::encode_chunk(&plain, &mut out);
                if !more {
                    http::encode_last_chunk(&mut out);
                }
            }
            _ => out.extend_from_slice(&plain),
        }
        if more {
            out = write_upstream(up, out, peer.response_timeout).await?;
        }
    }
    io::buf::give(write_upstream(up, out, peer.response_timeout).await?);
    Ok(())
}

/// How much the next read from the origin into `rbuf` asks for: the room it has, while that
/// is worth a read (a small buffer, see `forward`), else a full-size read.
fn read_size(rbuf: &Vec<u8>) -> usize {
    match rbuf.capacity() - rbuf.len() {
        room if room >= UPSTREAM_READ_MIN => room,
        _ => UPSTREAM_READ,
    }
}

/// Reads more of the response head into `rbuf`, by `deadline` (on `timer`).
async fn read_response_head(
    up: &mut io::Stream,
    rbuf: &mut Vec<u8>,
    timer: &mut io::Deadline,
    deadline: Instant,
) -> Result<()> {
    let want = read_size(rbuf);
    let read = std::pin::pin!(up.read(std::mem::take(rbuf), want));
    let (res, b) = timer.until(deadline, read).await.or_err(
        ErrorKind::UpstreamTimeout,
        ErrorSource::Upstream,
        "waiting for the response head",
    )?;
    *rbuf = b;
    if res.or_err(ErrorKind::UpstreamIo, ErrorSource::Upstream, "reading the response head")? == 0 {
        return Err(Error::new(
            ErrorKind::UpstreamIo,
            ErrorSource::Upstream,
            "origin closed before responding",
        ));
    }
    Ok(())
}

/// Sends `out` to the origin; an origin that stops reading for `limit` is given up on.
async fn write_upstream(up: &mut io::Stream, out: Vec<u8>, limit: Duration) -> Result<Vec<u8>> {
    let write = std::pin::pin!(up.write_all(out));
    let (res, mut out) = io::timeout(limit, write).await.or_err(
        ErrorKind::UpstreamTimeout,
        ErrorSource::Upstream,
        "sending the request",
    )?;
    res.or_err(ErrorKind::UpstreamIo, ErrorSource::Upstream, "sending the request")?;
    out.clear();
    Ok(out)
}
