//! A worker thread: its listeners, its connections, and the HTTP/1.1 loop on each of them.
//!
//! Per connection: the floor reads and classifies the first flight, rustls completes the
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

use async_trait::async_trait;
use outpost_api::{ClientInfo, Reply, RequestBody, TlsInfo};

use crate::{
    error::{Error, ErrorKind, ErrorSource, Result},
    floor,
    http::{self, BodyDecoder, Header},
    io,
    metrics::Latency,
    proxy::{self, Pool},
    shared::{drained, Shared},
    tls::TlsConn,
};

/// How long a closing connection waits for the client's own close (see [`TlsConn::close`]).
const LINGER: Duration = Duration::from_millis(500);
/// Pause after a failed accept (out of file descriptors, typically) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One worker thread's state.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub pool: RefCell<Pool>,
    pub latency: Latency,
    active: Cell<usize>,
    /// After-response tasks not finished yet.
    after_pending: Cell<usize>,
    idle: Notify,
}

impl Worker {
    /// Runs `task` (work a handler left for after its response) on this worker, unless
    /// `max` of them are already pending: then it is dropped, counted and logged.
    pub(crate) fn run_after_response(self: &Rc<Self>, task: outpost_api::handler::Task, max: usize) {
        if self.after_pending.get() >= max {
            self.shared.metrics.after_response_dropped();
            tracing::warn!(pending = max, "after-response queue full; work dropped");
            return;
        }
        self.after_pending.set(self.after_pending.get() + 1);
        self.shared.metrics.after_response_started();
        let worker = self.clone();
        io::spawn(async move {
            task.await;
            worker.after_pending.set(worker.after_pending.get() - 1);
            worker.shared.metrics.after_response_finished();
            worker.idle.notify_waiters();
        });
    }

    fn busy(&self) -> bool {
        self.active.get() > 0 || self.after_pending.get() > 0
    }
}

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
    while worker.busy() {
        let idle = worker.idle.notified();
        if !worker.busy() {
            break;
        }
        if io::timeout_at(deadline, idle).await.is_err() {
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
    loop {
        tokio::select! {
            biased;
            _ = drained(&mut drain) => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let local = local.unwrap_or(peer);
                    io::spawn(connection(worker.clone(), stream, peer, local));
                }
                Err(e) => {
                    if worker.shared.draining() {
                        break;
                    }
                    tracing::warn!(error = %e, "accept failed");
                    io::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    listener.close();
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

async fn connection(
    worker: Rc<Worker>,
    mut stream: io::Stream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let _active = Active::new(worker.clone());
    let live = worker.shared.live();
    let metrics = &worker.shared.metrics;
    let deadline = Instant::now() + live.handshake_timeout;
    let first =
        match floor::check(&mut stream, live.policy, live.max_hello_bytes, deadline, metrics).await
        {
            floor::Outcome::Continue(bytes) => bytes,
            floor::Outcome::Refused | floor::Outcome::Gone => return,
        };
    let mut tls = match TlsConn::new(stream, live.tls.clone(), first, live.body_timeout) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start TLS");
            return;
        }
    };
    let negotiated = match tls.handshake(deadline).await {
        Ok(n) => n,
        Err(e) => {
            metrics.handshake_failed();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    metrics.handshake(negotiated.version, negotiated.cipher);
    tracing::debug!(
        %peer, version = negotiated.version_name(), cipher = ?negotiated.cipher,
        sni = ?negotiated.sni, "TLS established"
    );
    let info = TlsInfo { version: negotiated.version_name(), sni: negotiated.sni };
    let client = ClientInfo { addr: peer, local, tls: info };
    let mut ds = Downstream {
        tls,
        buf: Vec::new(),
        body: BodyDecoder::new(http::Body::Empty, 0),
        body_untouched: true,
        continue_pending: false,
        body_timeout: live.body_timeout,
    };
    drop(live);
    serve(&worker, &mut ds, &client).await;
    ds.tls.close(LINGER).await;
}

/// The keep-alive loop. Returns when the connection should close.
async fn serve(worker: &Rc<Worker>, ds: &mut Downstream, client: &ClientInfo) {
    let mut drain = worker.shared.drain_signal();
    let mut first = true;
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
            let got = tokio::select! {
                biased;
                _ = drained(&mut drain) => return,
                r = io::timeout(wait, ds.tls.read_idle(&mut ds.buf)) => r,
            };
            match got {
                Ok(Ok(n)) if n > 0 => {}
                Err(io::Elapsed) if first => {
                    let e = Error::new(
                        ErrorKind::RequestTimeout,
                        ErrorSource::Downstream,
                        "no request after the handshake",
                    );
                    refuse(worker, ds, &e).await;
                    return;
                }
                _ => return,
            }
        }
        // Taken when the request starts, so a reload during the idle wait applies to it.
        let live = worker.shared.live();
        let head_deadline = Instant::now() + live.header_timeout;
        let (req, n) = loop {
            match http::parse_request(&ds.buf, &live.limits) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => {
                    let e = Error::because(
                        ErrorKind::BadRequest(e.clone()),
                        ErrorSource::Downstream,
                        "request head",
                        e,
                    );
                    refuse(worker, ds, &e).await;
                    return;
                }
            }
            match io::timeout_at(head_deadline, ds.tls.read(&mut ds.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(io::Elapsed) => {
                    let e = Error::new(
                        ErrorKind::RequestTimeout,
                        ErrorSource::Downstream,
                        "request head too slow",
                    );
                    refuse(worker, ds, &e).await;
                    return;
                }
            }
        };
        ds.buf.drain(..n);
        let keep_alive = proxy::handle(worker, &live, ds, client, req).await;
        if !keep_alive || worker.shared.draining() {
            return;
        }
        if ds.buf.is_empty() {
            // Idle until the next request: keep no capacity (it is allocated to fit, later).
            ds.buf = Vec::new();
        }
        first = false;
    }
}

/// Answers a request the proxy refused before routing it (400/408/413/431/501), and counts it.
async fn refuse(worker: &Worker, ds: &mut Downstream, e: &Error) {
    let status = e.status();
    tracing::debug!(status, error = %e, "request refused");
    worker.shared.metrics.request(status, status == 400);
    let reply = Reply::json_error(status, &e.public_message());
    let _ = ds.write_reply(reply, false, false).await;
}

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
            headers.push(Header::new("Content-Length", reply.body.len().to_string()));
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
