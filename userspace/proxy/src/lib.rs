//! outpost's TLS proxy: the userspace half of the data path.
//!
//! Connections that the XDP floor let through are accepted here, their first flight is
//! classified again (the floor holds without XDP too), rustls terminates TLS 1.2/1.3, and each
//! HTTP/1.1 request or HTTP/2 stream goes to the handler its route names.
//!
//! # Layout
//! - [`run`](mod@run): `outpost run`: worker and control threads, signals, reload, drain.
//! - [`config`]: `outpost.toml`, every key documented and defaulted.
//! - [`io`]: the I/O seam: io_uring (tokio-uring) or epoll (tokio) behind one API; the only
//!   module that names a runtime.
//! - [`listen`]: SO_REUSEPORT listening sockets, one per worker and address.
//! - [`server`]: a worker: accept loop, per-connection floor → TLS → HTTP keep-alive loop,
//!   head limits and timeouts; `worker` holds a worker's state (pool, what is still running)
//!   and `downstream` the client side of a connection.
//! - [`floor`]: reads the first flight and classifies the ClientHello before rustls (the
//!   shared classifier); rejects legacy versions with a protocol_version alert, or in redirect
//!   mode hands them, within the redirect budget, to the legacy responder.
//! - [`legacy`]: the legacy responder: OpenSSL completes a TLS 1.0/1.1 handshake and one
//!   request is answered with a 403 page saying why; beside the floor, never behind the router.
//! - [`tls`]: rustls configuration (SNI certificates, the self-signed fallback) and rustls
//!   driven over the seam; a connection split in a reader and a writer used at once (by the
//!   splice and by the h2 driver alike).
//! - [`registry`]: the handlers the binary registers (route factories and applications).
//! - [`router`]: host and path-prefix routing to handlers, built from the registry; the
//!   applications' filters and admin endpoints.
//! - `h2`: HTTP/2 to clients: the second connection driver (the h2 crate over the
//!   connection's own TLS), each stream one request through `proxy::handle`, and its limits.
//! - [`proxy`]: the core: runs a request through its filters and handler (the phases of
//!   [`outpost_api::Handler`]), origin pools, body streaming, error responses, and the work
//!   handlers leave for after the response.
//! - [`splice`]: a client's TLS connection spliced to a TCP one both ways, byte for byte (what
//!   a WebSocket becomes after the origin's 101): half-close, idle limit, an outside stop.
//! - [`http`], [`error`]: the codec and the error type, from [`outpost_api`].
//!
//! The core knows no application: handlers live in crates of their own, depend on
//! [`outpost_api`] alone, and reach the core through [`registry::Registry`].
//! - [`metrics`]: counters and latency, Prometheus text.
//! - [`admin`], [`builtin`], [`plain`]: outpost's own plain-HTTP endpoints (`/healthz`,
//!   `/metrics`; the built-in page) on a minimal server.
//! - [`shared`]: the configuration generation every thread reads, and the drain signal.

pub mod admin;
pub mod builtin;
pub mod config;
mod downstream;
pub mod floor;
mod h2;
pub mod io;
pub mod legacy;
pub mod listen;
pub mod metrics;
pub mod plain;
pub mod proxy;
mod records;
pub mod registry;
pub mod router;
pub mod run;
pub mod server;
pub mod shared;
pub mod splice;
pub mod tls;
pub mod upgrade;
mod worker;

pub use outpost_api::{error, http};
pub use registry::Registry;
pub use run::{load_config, run, RunOptions};
