//! The handler API: the phases of one request, modelled on pingora's `ProxyHttp`.
//!
//! A handler implements [`Handler`]; every phase has a default, so a handler writes only what
//! it needs. The proxy core calls the phases in order:
//!
//! 1. [`Handler::new_ctx`]: per-request state, owned by the core for the request's lifetime.
//! 2. [`Handler::request_filter`]: [`Flow::Respond`] answers the request and stops (a login
//!    page, an API call); [`Flow::Continue`] goes on to an upstream.
//! 3. [`Handler::upstream_peer`]: which server gets the request; on a failed connect
//!    [`Handler::fail_to_connect`] says whether to ask again.
//! 4. [`Handler::upstream_request_filter`]: edit the head sent upstream.
//! 5. [`Handler::response_filter`]: edit the response head sent to the client.
//! 6. [`Handler::logging`]: after the response is done, with its summary and error if any.
//!
//! Filters (handlers an [`App`](crate::App) puts in front of every route, such as an access
//! check) run the same phases before the route's handler: the first filter that responds ends
//! the request, and every filter edits the upstream head before the route's handler does.
//!
//! Handlers know nothing of each other, and nothing of sockets, TLS or pools: those belong to
//! the core. Work that may wait (an audit event, a mail) goes to
//! [`Session::after_response`] and never delays the response.
//!
//! ```
//! use outpost_api::{Flow, Handler, Reply, Result, Session};
//!
//! /// Answers every request itself.
//! struct Hello;
//!
//! impl Handler for Hello {
//!     type Ctx = ();
//!
//!     fn new_ctx(&self) {}
//!
//!     async fn request_filter(&self, s: &mut Session<'_>, _ctx: &mut ()) -> Result<Flow> {
//!         let body = format!("hello from {} over {}\n", s.path(), s.client.tls.version);
//!         Ok(Flow::Respond(Reply::new(200, "text/plain", body)))
//!     }
//! }
//! ```

use std::{any::Any, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    error::{Error, ErrorKind, ErrorSource, Result},
    http::{Authority, Header, Headers, Request, Response},
    pooled::Pooled,
};

/// What [`Handler::request_filter`] decided.
pub enum Flow {
    /// Go on: to the next filter, the route's handler, then upstream.
    Continue,
    /// The handler answered; the core writes this response and stops.
    Respond(Reply),
}

/// A complete response a handler produces itself.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<Header<'static>>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![Header::new("Content-Type", content_type)],
            body: body.into(),
        }
    }

    /// `{"error": "<message>"}` with `status`.
    pub fn json_error(status: u16, message: &str) -> Reply {
        let mut body = String::from("{\"error\": \"");
        json_escape_into(message, &mut body);
        body.push_str("\"}\n");
        Reply::new(status, "application/json", body)
    }

    /// An HTML page (`text/html; charset=utf-8`).
    pub fn html(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(status, "text/html; charset=utf-8", body)
    }

    /// A redirect: `status` (302, 303) with `Location`.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", format!("see {location}\n"))
            .header("Location", location)
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Reply {
        self.headers.push(Header::new(name, value));
        self
    }
}

/// Appends `s` as the inside of a JSON string: quotes, backslashes and control characters
/// escaped.
pub fn json_escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
}

/// Where to send a request, and how patiently.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for the response head once the request was sent; then 504.
    pub response_timeout: Duration,
    /// Idle connections kept per worker for this address.
    pub pool_size: usize,
    /// How long an idle connection is kept.
    pub pool_idle: Duration,
}

/// The TLS session of the client connection.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`: what rustls negotiated.
    pub version: &'static str,
    /// The server name the client asked for, if any.
    pub sni: Option<String>,
}

/// Facts about the client connection, fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub local: SocketAddr,
    pub tls: TlsInfo,
}

/// The request body as the core reads it for a handler: dechunked, within the body limit and
/// timeouts.
#[async_trait(?Send)]
pub trait RequestBody {
    /// Reads more of the body, appending to `out`. Returns whether more is to come.
    async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool>;
}

/// A future the core runs after the response was written (see [`Session::after_response`]).
pub type Task = Pin<Box<dyn Future<Output = ()> + 'static>>;

/// Work handed over by the handlers of one request, for once its response is out.
#[derive(Default)]
pub struct AfterResponse {
    /// Work to run after the response ([`Session::after_response`]).
    pub tasks: Vec<Task>,
    /// For a request that became an upgraded connection: futures, any of which ends it
    /// ([`Session::close_upgraded_when`]). Dropped unused otherwise.
    pub close_upgraded: Vec<Task>,
}

/// One request as a handler sees it: the head (borrowed from the buffer it was read into), the
/// client, the body on demand, and where to put work for after the response. Handlers edit
/// what goes upstream in [`Handler::upstream_request_filter`], never the client's head.
pub struct Session<'a> {
    pub req: &'a Request<'a>,
    pub client: &'a ClientInfo,
    body: &'a mut dyn RequestBody,
    after: &'a mut AfterResponse,
}

impl<'a> Session<'a> {
    /// For the core (and handler tests): a view of one request.
    pub fn new(
        req: &'a Request<'a>,
        client: &'a ClientInfo,
        body: &'a mut dyn RequestBody,
        after: &'a mut AfterResponse,
    ) -> Session<'a> {
        Session { req, client, body, after }
    }

    /// Reads more of the request body (dechunked), appending to `out`. Returns whether more is
    /// to come. A handler that reads the body must answer with [`Flow::Respond`]: the core
    /// forwards only a body it has not started.
    pub async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        self.body.read_body(out).await
    }

    /// Reads the whole body, refusing more than `max` bytes with 413.
    pub async fn read_body_to_end(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while self.read_body(&mut out).await? {
            if out.len() > max {
                return Err(Error::new(
                    ErrorKind::BadRequest(crate::http::Error::BodyTooLarge),
                    ErrorSource::Downstream,
                    "request body over the handler's limit",
                ));
            }
        }
        if out.len() > max {
            return Err(Error::new(
                ErrorKind::BadRequest(crate::http::Error::BodyTooLarge),
                ErrorSource::Downstream,
                "request body over the handler's limit",
            ));
        }
        Ok(out)
    }

    /// Runs `work` after this request's response has been written, on the same worker: the
    /// response never waits for it. The core bounds how much such work may be pending; past
    /// the bound the work is dropped, counted (`outpost_after_response_dropped_total`) and
    /// logged, and the request still succeeds. A drain (SIGTERM) waits for pending work within
    /// the grace period.
    pub fn after_response(&mut self, work: impl Future<Output = ()> + 'static) {
        self.after.tasks.push(Box::pin(work));
    }

    /// Ends the upgraded connection this request may become (a WebSocket the origin accepted
    /// with `101`) as soon as `when` resolves: the seam for a filter that must be able to cut
    /// a long-lived connection later (a revoked session, a policy change). The core watches
    /// `when` for as long as the connection is spliced, on the same worker, and drops it when
    /// the connection ends for any other reason; for a request that is not upgraded it is
    /// dropped unpolled. A filter registers it in [`Handler::request_filter`] (or any phase
    /// before the response), typically when [`Request::websocket_upgrade`] holds.
    pub fn close_upgraded_when(&mut self, when: impl Future<Output = ()> + 'static) {
        self.after.close_upgraded.push(Box::pin(when));
    }

    /// The request's host: lowercase, without port or trailing dot, as the core decided it
    /// once for routing (see [`http::normalise`](crate::http::normalise)).
    pub fn host(&self) -> Option<String> {
        let h = self.req.authority.host.as_str();
        (!h.is_empty()).then(|| h.to_owned())
    }

    /// The request's authority (host and port), as the core decided it.
    pub fn authority(&self) -> &Authority<'_> {
        &self.req.authority
    }

    /// The request path, normalised, without the query.
    pub fn path(&self) -> &str {
        self.req.path()
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.req.query()
    }
}

/// The path of a request target: origin-form up to `?`, or the path of an absolute-form URL.
pub fn path_of(target: &str) -> &str {
    let t = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    t.split(['?', '#']).next().unwrap_or("/")
}

/// What happened to a request, for [`Handler::logging`].
#[derive(Clone, Debug)]
pub struct Summary {
    /// Status sent to the client (0 when none could be sent).
    pub status: u16,
    /// The server that answered, if any.
    pub upstream: Option<SocketAddr>,
    /// Response body bytes sent to the client.
    pub body_bytes: u64,
    pub duration: Duration,
}

/// One endpoint's request logic. See the module docs for the order of the phases.
///
/// Phases are `async fn`s; their futures run on the worker's thread, so they need not be
/// `Send` (which is why the lint about unstated auto traits is allowed here).
#[allow(async_fn_in_trait)]
pub trait Handler: Send + Sync + 'static {
    /// Per-request state.
    type Ctx: 'static;

    fn new_ctx(&self) -> Self::Ctx;

    /// First look at the request; may answer it.
    async fn request_filter(&self, _s: &mut Session<'_>, _ctx: &mut Self::Ctx) -> Result<Flow> {
        Ok(Flow::Continue)
    }

    /// The server for this request. The default has none (for handlers that always answer in
    /// [`request_filter`](Self::request_filter)).
    async fn upstream_peer(&self, _s: &mut Session<'_>, _ctx: &mut Self::Ctx) -> Result<Peer> {
        Err(Error::new(ErrorKind::NoUpstream, ErrorSource::Internal, "handler has no upstream"))
    }

    /// Connecting to `peer` failed; return true to ask [`upstream_peer`](Self::upstream_peer)
    /// again (the core bounds the attempts).
    fn fail_to_connect(
        &self,
        _s: &Session<'_>,
        _peer: &Peer,
        _ctx: &mut Self::Ctx,
        _e: &Error,
    ) -> bool {
        false
    }

    /// The exchange with `peer` failed after the connection was made (reset, early close,
    /// timeout).
    fn upstream_failed(&self, _peer: &Peer, _ctx: &mut Self::Ctx, _e: &Error) {}

    /// Edit the head sent upstream (hop-by-hop fields already removed, framing set by the
    /// core afterwards).
    async fn upstream_request_filter(
        &self,
        _s: &mut Session<'_>,
        _upstream: &mut Request<'_>,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Edit the response head sent to the client (hop-by-hop fields already removed).
    async fn response_filter(
        &self,
        _s: &mut Session<'_>,
        _resp: &mut Response<'_>,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// The request is done. Runs after the response was sent; must not block.
    fn logging(&self, _s: &Session<'_>, _sum: &Summary, _e: Option<&Error>, _ctx: &mut Self::Ctx) {}
}

/// A future of a handler phase, on the worker's thread, in pooled memory (no allocation per
/// phase call in steady state).
pub type PhaseFuture<'a, T> = Pooled<dyn Future<Output = T> + 'a>;

/// [`Handler`] with its context erased, so the core can hold handlers of any type. Made by
/// [`erase`]. The context and each phase's future are [`Pooled`]: a request through a chain of
/// handlers reaches the allocator for none of them.
pub trait ErasedHandler: Send + Sync {
    /// The name logs and metrics know this handler by.
    fn name(&self) -> &'static str;
    fn new_ctx(&self) -> Pooled<dyn Any>;
    fn request_filter<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<Flow>>;
    fn upstream_peer<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<Peer>>;
    fn fail_to_connect(&self, s: &Session<'_>, p: &Peer, ctx: &mut dyn Any, e: &Error) -> bool;
    fn upstream_failed(&self, p: &Peer, ctx: &mut dyn Any, e: &Error);
    fn upstream_request_filter<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        up: &'a mut Request<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<()>>;
    fn response_filter<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        r: &'a mut Response<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<()>>;
    fn logging(&self, s: &Session<'_>, sum: &Summary, e: Option<&Error>, ctx: &mut dyn Any);
}

/// `handler` under `name`, ready for a route or a filter list.
pub fn erase<H: Handler>(name: &'static str, handler: H) -> Arc<dyn ErasedHandler> {
    Arc::new(Named(name, handler))
}

struct Named<H>(&'static str, H);

fn ctx_of<C: 'static>(ctx: &mut dyn Any) -> &mut C {
    ctx.downcast_mut::<C>().expect("the core passes each handler the context it created")
}

impl<H: Handler> ErasedHandler for Named<H> {
    fn name(&self) -> &'static str {
        self.0
    }
    fn new_ctx(&self) -> Pooled<dyn Any> {
        Pooled::any(self.1.new_ctx())
    }
    fn request_filter<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<Flow>> {
        Pooled::future_with(|| self.1.request_filter(s, ctx_of(ctx)))
    }
    fn upstream_peer<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<Peer>> {
        Pooled::future_with(|| self.1.upstream_peer(s, ctx_of(ctx)))
    }
    fn fail_to_connect(&self, s: &Session<'_>, p: &Peer, ctx: &mut dyn Any, e: &Error) -> bool {
        self.1.fail_to_connect(s, p, ctx_of(ctx), e)
    }
    fn upstream_failed(&self, p: &Peer, ctx: &mut dyn Any, e: &Error) {
        self.1.upstream_failed(p, ctx_of(ctx), e)
    }
    fn upstream_request_filter<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        up: &'a mut Request<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<()>> {
        Pooled::future_with(|| self.1.upstream_request_filter(s, up, ctx_of(ctx)))
    }
    fn response_filter<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        r: &'a mut Response<'_>,
        ctx: &'a mut dyn Any,
    ) -> PhaseFuture<'a, Result<()>> {
        Pooled::future_with(|| self.1.response_filter(s, r, ctx_of(ctx)))
    }
    fn logging(&self, s: &Session<'_>, sum: &Summary, e: Option<&Error>, ctx: &mut dyn Any) {
        self.1.logging(s, sum, e, ctx_of(ctx))
    }
}

/// Sets or replaces field `name`.
pub fn set_header(headers: &mut Headers<'_>, name: &str, value: impl AsRef<[u8]>) {
    headers.remove(name);
    headers.push(Header::new(name, value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path_of("/a/b?x=1"), "/a/b");
        assert_eq!(path_of("http://h:1/a?q"), "/a");
        assert_eq!(path_of("http://h"), "/");
        assert_eq!(path_of("*"), "*");
    }

    #[test]
    fn json_errors_are_escaped() {
        let r = Reply::json_error(400, "bad \"x\"\n");
        assert_eq!(r.body, b"{\"error\": \"bad \\\"x\\\"\\n\"}\n");
    }
}
