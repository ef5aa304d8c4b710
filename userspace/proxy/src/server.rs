//! A worker thread: its listeners, its connections, and the HTTP/1.1 loop on each of them.
//!
//! Per connection: the floor reads and classifies the first flight (a legacy hello it redirects
//! goes to the legacy responder instead, and ends there), rustls completes the
//! handshake, then requests are read one at a time (keep-alive) and handed to
//! `proxy::handle`. Timeouts: handshake (from accept), request head (from its first byte,
//! and for the first request from the handshake), idle keep-alive wait, body pauses.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use outpost_api::{pooled::Pooled, ClientInfo, Reply, TlsInfo};

use crate::{
    downstream::{Downstream, Http1},
    error::{Error, ErrorKind, ErrorSource},
    floor, h2, http, io, legacy, proxy,
    shared::{drained, Shared},
    tls::{Alpn, TlsConn},
    worker::{Pool, Worker, POOL_SWEEP},
};

/// How long a closing connection waits for the client's own close (see [`TlsConn::close`]).
const LINGER: Duration = Duration::from_millis(500);
/// Pause after a failed accept (out of file descriptors, typically) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a drain waits, after its grace period, for the upgraded connections it then ends
/// to close (a close_notify and a short linger each, see [`LINGER`]).
const UPGRADED_CLOSE: Duration = Duration::from_secs(1);
/// After a hand-over: how long an accept in flight may still complete, and how long an idle
/// keep-alive connection waits for one more request (answered with `Connection: close`), so
/// a client sending it just then is not cut off.
const HANDOVER_ACCEPT: Duration = Duration::from_secs(1);
const HANDOVER_IDLE: Duration = Duration::from_secs(2);

/// Runs one worker until the drain finished or `grace` after it started.
pub(crate) async fn worker_main(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    grace: Duration,
) -> anyhow::Result<()> {
    let latency = shared.metrics.latency_recorder();
    let worker = Rc::new(Worker {
        shared: shared.clone(),
        pool: RefCell::new(Pool::default()),
        latency,
        active: Cell::new(0),
        after_pending: Cell::new(0),
        idle: Notify::new(),
        upgraded: Cell::new(0),
        closing_upgraded: Cell::new(false),
        closing: Notify::new(),
    });
    // Ends with the worker's runtime.
    let sweeping = Rc::downgrade(&worker);
    io::spawn(async move {
        loop {
            io::sleep(POOL_SWEEP).await;
            let Some(worker) = sweeping.upgrade() else { return };
            worker.pool.borrow_mut().sweep(Instant::now());
        }
    });
    let mut accepting = Vec::new();
    for l in listeners {
        let l = io::Listener::from_std(l)?;
        accepting.push(io::spawn(accept_loop(worker.clone(), l)));
    }
    let mut drain = shared.drain_signal();
    drained(&mut drain).await;
    let deadline = Instant::now() + grace;
    for a in accepting {
        let _ = a.await;
    }
    // Connections finish their requests; work left for after the responses finishes too.
    // Upgraded connections (WebSockets) have no request to finish: they run on through the
    // grace period, then are ended, each with a close_notify.
    let mut deadline = deadline;
    while worker.busy() {
        let idle = worker.idle.notified();
        if !worker.busy() {
            break;
        }
        if io::timeout_at(deadline, idle).await.is_err() {
            if worker.upgraded.get() > 0 && !worker.closing_upgraded.get() {
                tracing::info!(
                    upgraded = worker.upgraded.get(),
                    "grace period over; closing upgraded connections"
                );
                worker.close_upgraded();
                deadline = Instant::now() + UPGRADED_CLOSE;
                continue;
            }
            tracing::warn!(
                open = worker.active.get(),
                after_response = worker.after_pending.get(),
                "grace period over; closing connections and dropping pending work"
            );
            break;
        }
    }
    Ok(())
}

async fn accept_loop(worker: Rc<Worker>, listener: io::Listener) {
    let local = listener.local_addr().ok();
    let mut drain = worker.shared.drain_signal();
    // After a hand-over the socket is the new process's too: an accept in flight here is not
    // cancelled (with io_uring a connection it took meanwhile would be lost) but allowed to
    // complete, for at most HANDOVER_ACCEPT; what it takes is served.
    let mut handing: Option<Instant> = None;
    // One accept in flight, kept across the turns of the loop: a turn that ends for the drain
    // does not drop (cancel) it.
    let mut accept = std::pin::pin!(listener.accept());
    loop {
        let until = handing.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()));
        let r = tokio::select! {
            biased;
            _ = drained(&mut drain), if handing.is_none() => {
                if !worker.shared.handed_over() {
                    break;
                }
                handing = Some(Instant::now() + HANDOVER_ACCEPT);
                continue;
            }
            _ = io::sleep(until), if handing.is_some() => break,
            r = &mut accept => r,
        };
        match r {
            Ok((stream, peer)) => {
                let local = local.unwrap_or(peer);
                io::spawn(connection(worker.clone(), stream, peer, local));
                if handing.is_some() {
                    break;
                }
            }
            Err(e) => {
                if worker.shared.draining() {
                    break;
                }
                tracing::warn!(error = %e, "accept failed");
                io::sleep(ACCEPT_BACKOFF).await;
            }
        }
        accept.set(listener.accept());
    }
    if !worker.shared.handed_over() {
        listener.close();
    }
}

/// Counts a connection as open while alive.
struct Active(Rc<Worker>);

impl Active {
    fn new(w: Rc<Worker>) -> Active {
        w.active.set(w.active.get() + 1);
        w.shared.metrics.connection_opened();
        Active(w)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
        self.0.shared.metrics.connection_closed();
        self.0.idle.notify_waiters();
    }
}

async fn connection(worker: Rc<Worker>, stream: io::Stream, peer: SocketAddr, local: SocketAddr) {
    let _active = Active::new(worker.clone());
    // A task is sized for its largest step, and an idle connection should pay only for its
    // idle wait: the steps taken once (the floor, the handshake, the close) and the request in
    // flight run in futures on the heap, each for as long as it runs.
    let Some((mut ds, client, alpn)) = Box::pin(establish(&worker, stream, peer, local)).await
    else {
        return;
    };
    if alpn == Alpn::H2 {
        // The second connection driver: many requests at once, each through `proxy::handle`.
        Box::pin(h2::serve(&worker, ds.tls, client)).await;
        return;
    }
    serve(&worker, &mut ds, &client).await;
    Box::pin(ds.tls.close(LINGER)).await;
}

/// The floor, then the TLS handshake: the connection's downstream side, what handlers learn
/// of the client and the protocol ALPN chose, or `None` when the connection ended there
/// (refused, answered as legacy, handshake failed).
async fn establish(
    worker: &Worker,
    mut stream: io::Stream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<(Http1, ClientInfo, Alpn)> {
    let live = worker.shared.live();
    let metrics = &worker.shared.metrics;
    let deadline = Instant::now() + live.handshake_timeout;
    let shared = &worker.shared;
    let rules = shared.floor.rules(&live.floor);
    let first = match floor::check(&mut stream, &rules, peer, local, deadline, shared).await {
        floor::Outcome::Continue(bytes) => bytes,
        floor::Outcome::Legacy(bytes, version) => {
            // Beside the floor, not behind the router: no handler ever sees this connection.
            let responder = live.legacy.clone();
            drop(rules);
            drop(live);
            legacy::respond(stream, bytes, version, &responder, metrics).await;
            return None;
        }
        floor::Outcome::Refused | floor::Outcome::Gone => return None,
    };
    let config = live.tls.for_first_flight(&first).clone();
    let mut tls = match TlsConn::new(stream, config, first, live.body_timeout) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start TLS");
            return None;
        }
    };
    let negotiated = match tls.handshake(deadline).await {
        Ok(n) => n,
        Err(e) => {
            metrics.handshake_failed();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
    };
    metrics.handshake(negotiated.version, negotiated.cipher);
    metrics.alpn(negotiated.version, negotiated.alpn);
    tracing::debug!(
        %peer, version = negotiated.version_name(), cipher = ?negotiated.cipher,
        sni = ?negotiated.sni, "TLS established"
    );
    let info = TlsInfo { version: negotiated.version_name(), sni: negotiated.sni };
    let client = ClientInfo { addr: peer, local, tls: info };
    Some((Http1::new(tls, live.body_timeout), client, negotiated.alpn))
}

/// The keep-alive loop. Returns when the connection should close.
async fn serve(worker: &Rc<Worker>, ds: &mut Http1, client: &ClientInfo) {
    let mut drain = worker.shared.drain_signal();
    let mut first = true;
    // The timer of every wait for a request ([`io::Deadline`]).
    let mut waiting = io::Deadline::default();
    loop {
        if ds.buf.is_empty() {
            let wait = {
                let live = worker.shared.live();
                if first {
                    live.header_timeout
                } else {
                    live.idle_timeout
                }
            };
            let mut handed_over = worker.shared.handed_over();
            let wait = if handed_over { wait.min(HANDOVER_IDLE) } else { wait };
            // Kept across a hand-over's drain: a read in flight is not dropped (with io_uring
            // the request it took meanwhile would be lost) but given HANDOVER_IDLE to complete.
            let got = {
                let mut read = std::pin::pin!(waiting.within(wait, ds.tls.read_idle(&mut ds.buf)));
                loop {
                    tokio::select! {
                        biased;
                        _ = drained(&mut drain), if !handed_over => {
                            if !worker.shared.handed_over() {
                                return;
                            }
                            handed_over = true;
                        }
                        _ = io::sleep(HANDOVER_IDLE), if handed_over => return,
                        r = &mut read => break r,
                    }
                }
            };
            match got {
                Ok(Ok(n)) if n > 0 => {}
                Err(io::Elapsed) if first => {
                    let e = Error::new(
                        ErrorKind::RequestTimeout,
                        ErrorSource::Downstream,
                        "no request after the handshake",
                    );
                    Box::pin(refuse(worker, ds, &e)).await;
                    return;
                }
                _ => return,
            }
        }
        // Taken when the request starts, so a reload during the idle wait applies to it.
        let live = worker.shared.live();
        // Set at the first read that finds the head incomplete: nearly every head is whole in
        // the read that started it, and then no clock is read for it.
        let mut head_deadline = None;
        // The head is parsed where it was read, and the request borrows its fields from there:
        // that buffer leaves `ds` for the request's lifetime, and what follows the head (the
        // body, a pipelined request) goes back to `ds.buf`.
        let mut head = std::mem::take(&mut ds.buf);
        let (mut req, n) = loop {
            // The parse result is not held across the refusal's await: the task would keep
            // room for a request in every idle wait.
            let bad = match http::parse_request(&head, &live.limits) {
                Ok(Some(r)) => break r,
                Ok(None) => None,
                Err(e) => Some(Error::bad_head(e)),
            };
            if let Some(e) = bad {
                Box::pin(refuse(worker, ds, &e)).await;
                return;
            }
            let deadline =
                *head_deadline.get_or_insert_with(|| Instant::now() + live.header_timeout);
            match io::timeout_at(deadline, ds.tls.read(&mut head)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(io::Elapsed) => {
                    let e = Error::new(
                        ErrorKind::RequestTimeout,
                        ErrorSource::Downstream,
                        "request head too slow",
                    );
                    Box::pin(refuse(worker, ds, &e)).await;
                    return;
                }
            }
        };
        if let Some(rest) = head.get(n..).filter(|rest| !rest.is_empty()) {
            ds.buf =
                if rest.len() <= io::IDLE_READ { io::buf::take_idle() } else { io::buf::take() };
            ds.buf.extend_from_slice(rest);
        }
        if let Err(e) = proxy::normalise(worker, &live, client, &mut req) {
            drop(req);
            io::buf::give(head);
            Box::pin(refuse(worker, ds, &e)).await;
            return;
        }
        // Out of line (see `connection`), so the idle wait stays small; in a pooled block, so
        // that takes no allocation per request.
        let keep_alive =
            Pooled::future_with(|| proxy::handle(worker, &live, ds, client, &req)).await;
        drop(req);
        io::buf::give(head);
        // A drain that began during this request, after its response promised keep-alive: the
        // client may be sending its next request already. After a hand-over that one is
        // awaited and answered with `Connection: close` (see the idle wait above).
        if !keep_alive || (worker.shared.draining() && !worker.shared.handed_over()) {
            return;
        }
        if ds.buf.is_empty() {
            // Idle until the next request: keep no capacity (the next plaintext takes a pooled
            // buffer again).
            io::buf::give(std::mem::take(&mut ds.buf));
        }
        first = false;
    }
}

/// Answers a request the proxy refused before routing it (400/408/413/431/501), and counts it.
pub(crate) async fn refuse<D: Downstream>(worker: &Worker, ds: &mut D, e: &Error) {
    let status = e.status();
    tracing::debug!(status, error = %e, "request refused");
    worker.shared.metrics.request(ds.proto(), status, status == 400);
    let mut reply = Reply::json_error(status, &e.public_message());
    if status == 405 {
        reply = reply.header("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
    }
    let _ = ds.write_reply(reply, false, false).await;
}
