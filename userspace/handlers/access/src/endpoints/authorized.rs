//! `<reserved prefix>/authorized` on an app host: the app host redeems the one-time code
//! itself and sets its own cookie, so no token ever travels in a URL.
//!
//! The code is taken from the store (once, on any node, within `code_lifetime`); it must have
//! been minted for this very host. The cookie is `Secure`, `HttpOnly`, `SameSite=Lax`,
//! host-only, `Path=/`; then a 302 to the return path, which was checked at `/login` to be a
//! path on this host.

use std::{sync::Arc, time::Instant};

use outpost_api::{Reply, Session};
use serde::Deserialize;

use crate::{
    cookies,
    flow::Gen,
    metrics::{Endpoint, Outcome},
    pages,
    policy::check_return_path,
    state::{self, CodeRecord, NS_CODE},
};

pub struct Authorized {
    pub gen: Arc<Gen>,
}

#[derive(Deserialize, Default)]
struct Params {
    code: Option<String>,
}

impl Authorized {
    pub async fn serve(&self, s: &mut Session<'_>) -> Reply {
        let started = Instant::now();
        let reply = self.redeem(s).await;
        self.gen.time(Endpoint::Authorized, started, std::time::Duration::ZERO);
        reply
    }

    async fn redeem(&self, s: &mut Session<'_>) -> Reply {
        let g = &self.gen;
        if s.req.method != "GET" && s.req.method != "HEAD" {
            return Reply::json_error(405, "use GET").header("Allow", "GET, HEAD");
        }
        let host = s.host().unwrap_or_default();
        let p: Params = serde_urlencoded::from_str(s.query().unwrap_or("")).unwrap_or_default();
        let Some(code) = p.code.filter(|c| !c.is_empty() && c.len() <= 256) else {
            g.count(Endpoint::Authorized, Outcome::BadRequest);
            return g.bad_request("This link carries no sign-in code.");
        };
        let rec = match g.shared.store.take(NS_CODE, &code).await {
            Err(e) => {
                g.count(Endpoint::Authorized, Outcome::Unavailable);
                return g.unavailable(&e);
            }
            Ok(v) => v.and_then(|b| state::decode::<CodeRecord>(&b)),
        };
        let Some(rec) = rec else {
            g.count(Endpoint::Authorized, Outcome::Replay);
            let e = g
                .event(s, "access.authorized", "denied")
                .reason("code replayed, expired or unknown");
            g.record(s, e);
            return g.start_again(
                "This sign-in link was already used or has expired",
                "Each sign-in link works once, for a minute. Open the application again to sign in.",
                None,
            );
        };
        if rec.app != host {
            g.count(Endpoint::Authorized, Outcome::Replay);
            let e = g
                .event(s, "access.authorized", "denied")
                .reason(format!("code for {} presented to {host}", rec.app));
            g.record(s, e);
            return g.bad_request("This sign-in link belongs to another application.");
        }
        // Checked at /login already; checked again because this is where the browser goes.
        let rd = if check_return_path(&rec.rd).is_ok() { rec.rd.as_str() } else { "/" };
        g.count(Endpoint::Authorized, Outcome::Success);
        pages::secure(Reply::redirect(302, rd))
            .header("Set-Cookie", cookies::set(cookies::TOKEN, &rec.token, g.s.session_lifetime))
    }
}
