//! outpost's TLS proxy: the userspace half of the data path.
//!
//! Connections that the XDP floor let through are accepted here, their first flight is
//! classified again (the floor holds without XDP too), rustls terminates TLS 1.2/1.3, and each
//! HTTP/1.1 request goes to the handler its route names.
//!
//! # Layout
//! - [`run`](mod@run): `outpost run`: worker and control threads, signals, reload, drain.
//! - [`config`]: `outpost.toml`, every key documented and defaulted.
//! - [`io`]: the I/O seam: io_uring (tokio-uring) or epoll (tokio) behind one API; the only
//!   module that names a runtime.
//! - [`listen`]: SO_REUSEPORT listening sockets, one per worker and address.
//! - [`server`]: a worker: accept loop, per-connection floor → TLS → HTTP keep-alive loop,
//!   head limits and timeouts.
//! - [`floor`]: reads the first flight and classifies the ClientHello before rustls (the
//!   shared classifier); rejects legacy versions with a protocol_version alert.
//! - [`tls`]: rustls configuration (SNI certificates, the self-signed fallback) and rustls
//!   driven over the seam.
//! - [`handler`]: the [`Handler`](handler::Handler) trait of request phases, pingora style.
//! - [`router`]: host and path-prefix routing to handlers.
//! - [`proxy`]: the core: phases, origin pools, body streaming, error responses.
//! - [`origin`]: the origin handler: round robin, active and passive health.
//! - [`http`]: a sans-IO HTTP/1.1 codec: request/response heads with limits, body framing
//!   (length, chunked), hop-by-hop headers.
//! - [`error`]: the request-path error type (kind, side, context).
//! - [`metrics`]: counters and latency, Prometheus text.
//! - [`admin`], [`builtin`], [`plain`]: outpost's own plain-HTTP endpoints (`/healthz`,
//!   `/metrics`; the built-in page) on a minimal server.
//! - [`shared`]: the configuration generation every thread reads, and the drain signal.

pub mod admin;
pub mod builtin;
pub mod config;
pub mod error;
pub mod floor;
pub mod handler;
pub mod http;
pub mod io;
pub mod listen;
pub mod metrics;
pub mod origin;
pub mod plain;
pub mod proxy;
pub mod router;
pub mod run;
pub mod server;
pub mod shared;
pub mod tls;

pub use run::{run, RunOptions};
