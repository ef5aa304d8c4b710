//! `/keys` on the auth host: the edge's public signing keys as a JWKS, so origins can verify
//! the assertion header themselves. Every key that still verifies is listed, newest first; an
//! origin that meets an unknown `kid` should fetch this again (a rotation starts signing with
//! the new key at once).

use std::{sync::Arc, time::Instant};

use outpost_api::{Flow, Handler, Reply, Result as PResult, Session};

use crate::{
    flow::Gen,
    metrics::{Endpoint, Outcome},
};

pub struct Keys {
    pub gen: Arc<Gen>,
}

impl Handler for Keys {
    type Ctx = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _ctx: &mut ()) -> PResult<Flow> {
        let g = &self.gen;
        let started = Instant::now();
        if s.req.method != "GET" && s.req.method != "HEAD" {
            return Ok(Flow::Respond(
                Reply::json_error(405, "use GET").header("Allow", "GET, HEAD"),
            ));
        }
        let reply = match g.shared.keys.jwks().await {
            Ok(jwks) => {
                g.count(Endpoint::Keys, Outcome::Served);
                Reply::new(200, "application/jwk-set+json", format!("{jwks}\n"))
                    .header("Cache-Control", "public, max-age=60")
            }
            Err(e) => {
                g.count(Endpoint::Keys, Outcome::Unavailable);
                tracing::warn!(target: "outpost_access::keys", error = %e, "keys unavailable");
                Reply::json_error(503, "keys temporarily unavailable").header("Retry-After", "2")
            }
        };
        g.time(Endpoint::Keys, started, std::time::Duration::ZERO);
        Ok(Flow::Respond(reply))
    }
}
