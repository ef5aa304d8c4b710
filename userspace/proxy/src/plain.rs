//! A small plain-HTTP/1.1 server for outpost's own endpoints (the admin listener and the
//! built-in page): keep-alive, request bodies read and discarded, complete responses only.

use std::{rc::Rc, sync::Arc, time::Duration};

use tokio::sync::watch;

use outpost_api::{AdminFuture, Reply};

use crate::{
    http::{self, BodyDecoder, Header, Request},
    io,
    shared::{drained, Shared},
};

/// Time for a whole request (head and body) and for the next one on a kept-alive connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per connection; the last one is answered with `Connection: close`.
const MAX_REQUESTS: usize = 100_000;
const READ_CHUNK: usize = 8192;

/// Answers one request.
pub type Respond = Rc<dyn Fn(Request<'static>) -> AdminFuture>;

/// Serves `listener` until `stop` says so; then shuts the socket down unless `shared` (when
/// given) handed it to a new process. Once it did, the new process alone accepts on it, and
/// connections open here close after their next answer: every scrape of `/metrics` from then
/// on reaches the process whose counters go on.
pub async fn serve(
    listener: io::Listener,
    respond: Respond,
    mut stop: watch::Receiver<bool>,
    shared: Option<Arc<Shared>>,
) {
    let mut drain = shared.as_ref().map(|s| s.drain_signal());
    loop {
        tokio::select! {
            biased;
            _ = drained(&mut stop) => break,
            _ = handed_over(drain.as_mut(), shared.as_deref()) => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    io::spawn(connection(s, respond.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    io::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    if !shared.is_some_and(|s| s.handed_over()) {
        listener.close();
    }
}

/// Resolves once `shared` handed the sockets over; never on a plain drain, nor without it.
async fn handed_over(drain: Option<&mut watch::Receiver<bool>>, shared: Option<&Shared>) {
    if let (Some(drain), Some(shared)) = (drain, shared) {
        drained(drain).await;
        if shared.handed_over() {
            return;
        }
    }
    std::future::pending().await
}

async fn connection(mut s: io::Stream, respond: Respond, shared: Option<Arc<Shared>>) {
    let limits = http::Limits::default();
    let mut buf = Vec::with_capacity(READ_CHUNK);
    for count in 1..=MAX_REQUESTS {
        let served = io::timeout(REQUEST_TIMEOUT, async {
            let (req, n) = loop {
                match http::parse_request(&buf, &limits) {
                    // Owned: the request goes to an endpoint's future, and `buf` reads on.
                    Ok(Some((r, n))) => break (r.into_owned(), n),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = write(&mut s, Reply::json_error(e.status(), &e.to_string()), false)
                            .await;
                        return None;
                    }
                }
                let (res, b) = s.read(std::mem::take(&mut buf), READ_CHUNK).await;
                buf = b;
                if !matches!(res, Ok(n) if n > 0) {
                    return None;
                }
            };
            buf.drain(..n);
            let mut dec = BodyDecoder::new(req.body().ok()?, limits.max_body_bytes);
            let mut sink = Vec::new();
            while !dec.is_done() {
                if !buf.is_empty() {
                    let used = dec.decode(&buf, &mut sink).ok()?;
                    buf.drain(..used);
                    sink.clear();
                    continue;
                }
                let (res, b) = s.read(std::mem::take(&mut buf), READ_CHUNK).await;
                buf = b;
                if !matches!(res, Ok(n) if n > 0) {
                    return None;
                }
            }
            let keep_alive = req.keep_alive()
                && count < MAX_REQUESTS
                && !shared.as_ref().is_some_and(|s| s.handed_over());
            let head = req.method == "HEAD";
            let mut reply = respond(req).await;
            if head {
                reply.headers.push(Header::new("Content-Length", reply.body.len().to_string()));
                reply.body.clear();
            }
            write(&mut s, reply, keep_alive).await.ok()?;
            Some(keep_alive)
        })
        .await;
        if served != Ok(Some(true)) {
            return;
        }
    }
}

async fn write(s: &mut io::Stream, reply: Reply, keep_alive: bool) -> std::io::Result<()> {
    let mut headers = reply.headers;
    if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-length")) {
        headers.push(Header::new("Content-Length", reply.body.len().to_string()));
    }
    if !keep_alive {
        headers.push(Header::new("Connection", "close"));
    }
    let mut out = Vec::with_capacity(256 + reply.body.len());
    http::write_response_head(reply.status, http::reason(reply.status), &headers, &mut out);
    out.extend_from_slice(&reply.body);
    s.write_all(out).await.0
}
