//! The admin listener: `/healthz` and Prometheus `/metrics`, plain HTTP.

use std::{rc::Rc, sync::Arc};

use crate::{handler::Reply, http::Request, metrics::VersionCounts, plain, shared::Shared};

/// Reads the XDP program's per-version counters; provided by the binary, which links the
/// loader (the proxy crate knows nothing of BPF).
pub trait KernelStats: Send + Sync {
    /// `None` when the maps are not pinned or not readable.
    fn hellos(&self) -> Option<VersionCounts>;
}

pub fn respond(shared: Arc<Shared>, kernel: Option<Arc<dyn KernelStats>>) -> plain::Respond {
    Rc::new(move |req: &Request| {
        if req.method != "GET" && req.method != "HEAD" {
            return Reply::json_error(405, "use GET").header("Allow", "GET, HEAD");
        }
        match crate::handler::path_of(&req.target) {
            "/healthz" if shared.draining() => Reply::new(503, "text/plain", "draining\n"),
            "/healthz" => Reply::new(200, "text/plain", "ok\n"),
            "/metrics" => {
                let k = kernel.as_ref().and_then(|k| k.hellos());
                Reply::new(200, "text/plain; version=0.0.4", shared.metrics.render(k.as_ref()))
            }
            _ => Reply::json_error(404, "not found: try /healthz or /metrics"),
        }
    })
}
