//! The admin listener: `/healthz`, Prometheus `/metrics`, and the endpoints the binary and
//! applications add (`/audit`, ...), plain HTTP.

use std::{collections::BTreeMap, net::SocketAddr, rc::Rc, sync::Arc};

use outpost_api::{AdminEndpoint, Reply};

use crate::{http::Request, metrics::VersionCounts, plain, shared::Shared};

/// Reads the XDP program's per-version counters; provided by the binary, which links the
/// loader (the proxy crate knows nothing of BPF).
pub trait KernelStats: Send + Sync {
    /// `None` when the maps are not pinned or not readable.
    fn hellos(&self) -> Option<VersionCounts>;

    /// Whether the XDP program passed the legacy hello of the connection from `client` to
    /// `server` on to the legacy responder within its redirect budget. The record is taken:
    /// it answers yes once per connection.
    fn take_redirect(&self, _client: SocketAddr, _server: SocketAddr) -> bool {
        false
    }
}

/// `extra`: endpoints of the binary, by exact path; applications' endpoints come with each
/// configuration generation.
pub fn respond(
    shared: Arc<Shared>,
    kernel: Option<Arc<dyn KernelStats>>,
    extra: BTreeMap<String, AdminEndpoint>,
) -> plain::Respond {
    Rc::new(move |req: Request<'static>| {
        let path = outpost_api::handler::path_of(&req.target).to_owned();
        let endpoint =
            extra.get(&path).cloned().or_else(|| shared.live().router.admin.get(&path).cloned());
        if let Some(endpoint) = endpoint {
            return endpoint(req);
        }
        let reply = if req.method != "GET" && req.method != "HEAD" {
            Reply::json_error(405, "use GET").header("Allow", "GET, HEAD")
        } else {
            match path.as_str() {
                "/healthz" if shared.draining() => Reply::new(503, "text/plain", "draining\n"),
                "/healthz" => Reply::new(200, "text/plain", "ok\n"),
                "/metrics" => {
                    let k = kernel.as_ref().and_then(|k| k.hellos());
                    Reply::new(200, "text/plain; version=0.0.4", shared.metrics.render(k.as_ref()))
                }
                _ => Reply::json_error(404, "not found: try /healthz or /metrics"),
            }
        };
        Box::pin(async move { reply })
    })
}
