//! The handler API of outpost: everything an edge application needs from the proxy, and nothing
//! of how the proxy serves connections. A handler crate depends on this crate alone; the proxy
//! core (`outpost-proxy`) implements it, and the `outpost` binary registers the handlers it
//! ships.
//!
//! # Layout
//! - [`handler`]: the [`Handler`] trait of request phases (pingora style), the per-request
//!   [`Session`], [`Reply`], [`Peer`], and work that runs after the response
//!   ([`Session::after_response`], the Workers runtime's `waitUntil`).
//! - [`app`]: how handlers are built from configuration: [`RouteFactory`] (a handler a
//!   `[[routes]]` entry names) and [`App`] (an application with its own top-level section,
//!   contributing routes, filters that run before any route's handler, and background tasks).
//! - [`audit`]: typed audit events and the [`Audit`] handle that writes them after the response.
//! - [`http`]: the sans-IO HTTP/1.1 codec: heads with limits, body framing, hop-by-hop fields.
//! - [`error`]: the request-path error type (kind, side, context).
//! - [`json`]: JSON request bodies: an object with exactly the documented fields.
//! - [`pooled`]: per-thread pooled boxes for handler contexts and phase futures.

pub mod app;
pub mod audit;
pub mod error;
pub mod handler;
pub mod http;
pub mod json;
pub mod pooled;

pub use app::{
    AdminEndpoint, AdminFuture, App, AppParts, AppRoute, Background, BuildEnv, Built, RouteFactory,
    RouteSpec,
};
pub use audit::{Audit, AuditEvent, AuditSink};
pub use error::{Error, ErrorKind, ErrorSource, OrErr, Result};
pub use handler::{
    erase, AfterResponse, ClientInfo, ErasedHandler, Flow, Handler, Peer, Reply, RequestBody,
    Session, Summary, TlsInfo,
};
