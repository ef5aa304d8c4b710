//! HTTP/2 to clients: the second connection driver beside the HTTP/1.1 keep-alive loop.
//!
//! A client that chose `h2` by ALPN gets this driver: the h2 crate (hyper's and Pingora's)
//! does the framing, HPACK and flow control over the connection's own TLS ([`io`]). Each stream
//! becomes the same normalised [`Request`] an HTTP/1.1 head becomes (`:method`, `:path` as the
//! target, `:authority` as `Host`, the `cookie` fields joined), goes through the same
//! `http::normalise`, and is served by `proxy::handle` in a task of its own, with the stream
//! as its [`Downstream`](crate::downstream::Downstream) ([`stream`]). Origins stay HTTP/1.1.
//!
//! # Limits (each refusal counted in `/metrics`)
//! - Concurrent streams: `[http] h2_max_concurrent_streams` (SETTINGS_MAX_CONCURRENT_STREAMS);
//!   h2 refuses more with RST_STREAM(REFUSED_STREAM).
//! - Rapid reset (CVE-2023-44487): the reset budget of [`io`]; h2's own bound on streams reset
//!   before they were accepted. GOAWAY.
//! - CONTINUATION flood (CVE-2024-27316): h2 holds at most the advertised header list size of
//!   a header block and refuses more CONTINUATION frames than that size needs. GOAWAY.
//! - Header lists: a request over `max_head_bytes` or `max_headers` (counted as HTTP/1.1
//!   counts its head) gets 431 here. SETTINGS_MAX_HEADER_LIST_SIZE is twice `max_head_bytes`
//!   plus 32 bytes a field (HPACK's count), so such a request reaches us; h2 answers 431 itself
//!   beyond it, and a decoded list four times over it (an HPACK bomb) is a GOAWAY.
//! - PING, SETTINGS and PRIORITY floods: the control budget of [`io`]; h2 answers one PING or
//!   SETTINGS at a time and reads nothing more until that answer is written, so a client that
//!   does not read stalls only itself, until `body_timeout`.
//! - Request bodies: a stream window of [`STREAM_WINDOW`] and a connection window of
//!   [`CONNECTION_WINDOW`] bound what a client can make us buffer; `max_body_bytes` is 413.
//! - Zero-window stalls: a response that cannot be sent for `body_timeout` resets its stream
//!   and drops its origin connection.

mod io;
mod stream;

use std::{
    cell::Cell,
    future::{poll_fn, Future},
    rc::Rc,
    sync::Arc,
    task::{Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use h2::Reason;
use outpost_api::{pooled::Pooled, ClientInfo};

use crate::{
    error::Error,
    http::{self, HeadStr, Header, Request},
    io as seam,
    metrics::H2Refusal,
    proxy,
    server::refuse,
    shared::{drained, Live},
    tls::{TlsConn, TlsReader, TlsWriter},
    worker::Worker,
};

use self::{io::H2Io, stream::H2Stream};

/// Initial flow-control window of a stream: what a client may send on one stream before we
/// read it.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Initial flow-control window of the connection: what a client may have sent, on all its
/// streams together, before we read it.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes h2 keeps per stream, waiting for the client's window.
const SEND_BUFFER: usize = 64 * 1024;
/// How long a closing connection waits for the client's own close.
const LINGER: Duration = Duration::from_millis(500);
/// HPACK's accounting of a field: its name, its value and 32 bytes (RFC 9113 §6.5.2).
const FIELD_OVERHEAD: usize = 32;

/// Serves an HTTP/2 connection until the client is done, it idles out, a limit refuses it, or
/// the worker drains.
pub(crate) async fn serve(worker: &Rc<Worker>, mut tls: TlsConn, client: ClientInfo) {
    let Some((reader, writer)) = tls.split() else {
        tracing::debug!("cannot split the TLS connection for HTTP/2");
        return tls.close(LINGER).await;
    };
    drive(worker, reader, writer, client).await;
    // Once the halves are gone: close_notify (or the alert the reader left owed), FIN, linger.
    tls.close(LINGER).await;
}

/// Runs h2 over the connection's halves (see [`serve`]); returns once what h2 had to send is
/// out.
async fn drive(
    worker: &Rc<Worker>,
    reader: TlsReader<'_>,
    writer: TlsWriter<'_>,
    client: ClientInfo,
) {
    let live = worker.shared.live();
    let metrics = &worker.shared.metrics;
    let refused = Rc::new(Signal::default());
    let io = H2Io::new(reader, writer, refused.clone(), metrics.clone());
    let mut builder = h2::server::Builder::new();
    // Room for any head our own limit would take, counted HPACK's way (32 bytes a field rather
    // than HTTP/1.1's 4), and twice over: a head over `max_head_bytes` gets our 431, counted.
    let header_list = 2 * live.limits.max_head_bytes + FIELD_OVERHEAD * live.limits.max_headers;
    builder
        .max_concurrent_streams(live.h2_max_streams)
        .max_header_list_size(u32::try_from(header_list).unwrap_or(u32::MAX))
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER);
    let handshake = seam::timeout(live.header_timeout, builder.handshake::<_, Bytes>(io.clone()));
    let mut conn = match handshake.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 preface refused");
            io.finish(LINGER).await;
            return;
        }
        Err(seam::Elapsed) => {
            io.finish(LINGER).await;
            return;
        }
    };
    let client = Rc::new(client);
    let open = Rc::new(Streams { open: Cell::new(0), done: Signal::default() });
    let mut drain = worker.shared.drain_signal();
    let mut first = true;
    let mut closing = false;
    // One refusal per connection: our budget and h2's own limits can both catch one attack
    // (a reset flood trips both), and whichever is first is the one counted.
    let mut refusal_counted = false;
    // The connection's wait for its first stream, or for the next while none is in flight.
    let mut idle = seam::Deadline::default();
    loop {
        let live = worker.shared.live();
        // A connection without streams in flight may idle for as long as HTTP/1.1's; once
        // closing, only for LINGER more (h2 sends its last GOAWAY when the client answers a
        // PING: a client that never does must not keep the connection).
        let wait = if open.open.get() > 0 {
            None
        } else if closing {
            Some(LINGER)
        } else if first {
            Some(live.header_timeout)
        } else {
            Some(live.idle_timeout)
        };
        let next = tokio::select! {
            biased;
            () = refused.wait() => {
                if let Some(why) = io.refused().filter(|_| !refusal_counted) {
                    refusal_counted = true;
                    metrics.h2_refused(why);
                    tracing::debug!(reason = ?why, "HTTP/2 client over its budget");
                }
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                closing = true;
                continue;
            }
            _ = drained(&mut drain), if !closing => {
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
            () = open.done.wait(), if open.open.get() > 0 => continue,
            next = async {
                match wait {
                    // Streams in flight: no timer to file in the wheel and take out again on
                    // every turn of the loop (a few a request).
                    None => Ok(conn.accept().await),
                    Some(limit) => idle.within(limit, conn.accept()).await,
                }
            } => next,
        };
        match next {
            Ok(Some(Ok((req, respond)))) => {
                first = false;
                io.accepted(respond.stream_id().into());
                let (parts, body) = req.into_parts();
                let ds = H2Stream::new(body, respond, live.body_timeout, metrics.clone());
                open.open.set(open.open.get() + 1);
                let guard = StreamGuard(open.clone());
                // Pooled, and built there: the request path's future is large, and spawning
                // (or pooling it once built) would copy it.
                let (worker, client) = (worker.clone(), client.clone());
                let task = Pooled::future_with(|| stream(worker, live, client, parts, ds));
                seam::spawn(async move {
                    task.await;
                    drop(guard);
                });
            }
            Ok(Some(Err(e))) => {
                if !refusal_counted {
                    count_error(metrics, &e, &io.goaway_debug());
                }
                tracing::debug!(error = %e, "HTTP/2 connection failed");
                break;
            }
            Ok(None) => break,
            Err(seam::Elapsed) if closing => break,
            Err(seam::Elapsed) => {
                conn.graceful_shutdown();
                closing = true;
            }
        }
    }
    // GOAWAY and what h2 still holds go out before the TLS close.
    let _ = seam::timeout(LINGER, poll_fn(|cx| conn.poll_closed(cx))).await;
    drop(conn);
    io.finish(LINGER).await;
}

/// Streams in flight on a connection, and a wake-up when one ends.
struct Streams {
    open: Cell<usize>,
    done: Signal,
}

/// A wake-up for the connection's driver, from its own thread: a `notify` before the wait or
/// during it ends the next wait, once (the permit of tokio's `Notify::notify_one`). The
/// driver waits on two of these in every turn of its loop, two or more turns a request, and
/// `Notify` locks a mutex to register each wait and again to drop it.
#[derive(Default)]
struct Signal {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// A wait that ends at the next `notify`, or now if one came since the last wait ended.
    /// Dropped unfinished, it leaves its waker: a later `notify` then wakes the driver once
    /// for nothing, which its loop takes as a turn.
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.fired.replace(false) {
                return Poll::Ready(());
            }
            match self.waker.take() {
                Some(w) if w.will_wake(cx.waker()) => self.waker.set(Some(w)),
                _ => self.waker.set(Some(cx.waker().clone())),
            }
            Poll::Pending
        })
    }
}

struct StreamGuard(Rc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.done.notify();
    }
}

/// One stream: its request normalised as an HTTP/1.1 head is, then the request path.
async fn stream(
    worker: Rc<Worker>,
    live: Arc<Live>,
    client: Rc<ClientInfo>,
    parts: ::http::request::Parts,
    mut ds: H2Stream,
) {
    // Filled where it stays: a request is over a KiB, and returning one would copy it.
    let mut req = Request::default();
    if let Err(e) = request(&parts, &live, &mut req) {
        return refuse(&worker, &mut ds, &e).await;
    }
    if let Err(e) = proxy::normalise(&worker, &live, &client, &mut req) {
        return refuse(&worker, &mut ds, &e).await;
    }
    proxy::handle(&worker, &live, &mut ds, &client, &req).await;
}

/// The stream's head as the one request every later step reads (see the module docs); the
/// limits of an HTTP/1.1 head apply to it as if it had been sent as one. It borrows its
/// fields from `parts`, as an HTTP/1.1 request borrows them from the buffer it was read into.
/// `req` is a new request, filled in.
fn request<'p>(
    parts: &'p ::http::request::Parts,
    live: &Live,
    req: &mut Request<'p>,
) -> Result<(), Box<Error>> {
    let bad = Error::bad_head;
    let limits = &live.limits;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let headers = &mut req.headers;
    let mut cookie: Option<Vec<u8>> = None;
    let mut host = None;
    // `METHOD target HTTP/1.1\r\n` and the final `\r\n`.
    let mut size = parts.method.as_str().len() + target.len() + 12;
    for (name, value) in parts.headers.iter() {
        size += name.as_str().len() + value.len() + 4;
        if name == ::http::header::HOST {
            if host.replace(value).is_some() {
                return Err(bad(http::Error::Malformed("more than one Host")));
            }
        } else if name == ::http::header::COOKIE {
            // RFC 9113 §8.2.3: HTTP/2 may split `cookie` into fields; one for HTTP/1.1.
            let c = cookie.get_or_insert_with(Vec::new);
            if !c.is_empty() {
                c.extend_from_slice(b"; ");
            }
            c.extend_from_slice(value.as_bytes());
        } else {
            headers.push(Header::borrowed(name.as_str(), value.as_bytes()));
        }
    }
    if size > limits.max_head_bytes {
        return Err(bad(http::Error::HeadTooLarge));
    }
    if parts.headers.len() > limits.max_headers {
        return Err(bad(http::Error::TooManyHeaders));
    }
    // RFC 9113 §8.3.1: `:authority` wins, and a `Host` beside it must say the same.
    let authority = match (parts.uri.authority(), host) {
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(bad(http::Error::Malformed(":authority and Host differ")))
        }
        (Some(a), _) => Some(a.as_str().as_bytes()),
        (None, Some(h)) => Some(h.as_bytes()),
        (None, None) => None,
    };
    if let Some(a) = authority {
        headers.push(Header::borrowed("host", a));
    }
    if let Some(c) = cookie {
        headers.push(Header::new("cookie", c));
    }
    req.method = HeadStr::from(parts.method.as_str());
    req.target = HeadStr::from(target);
    req.minor_version = 1;
    let declared = req.header("content-length").and_then(|v| std::str::from_utf8(v).ok());
    if declared.and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > limits.max_body_bytes) {
        return Err(bad(http::Error::BodyTooLarge));
    }
    Ok(())
}

/// Counts a connection h2 ended for abuse (GOAWAY ENHANCE_YOUR_CALM), by the debug data of the
/// GOAWAY it sent (`debug`), where h2 names the limit.
fn count_error(metrics: &crate::metrics::Metrics, e: &h2::Error, debug: &[u8]) {
    if !(e.is_go_away() && e.is_library() && e.reason() == Some(Reason::ENHANCE_YOUR_CALM)) {
        return;
    }
    let why = match debug {
        b"too_many_continuations" => H2Refusal::ContinuationFlood,
        b"too_many_resets" => H2Refusal::RapidReset,
        b"header_list_way_too_large" => H2Refusal::HeaderListTooLarge,
        _ => H2Refusal::OtherAbuse,
    };
    metrics.h2_refused(why);
}
