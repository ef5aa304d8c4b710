//! `/logout`, on the auth host and as `<reserved prefix>/logout` on every app host.
//!
//! Both clear their cookie and revoke the auth-host session: one transaction ends it in the
//! store and records the revocation, so every app token minted from it is refused on every
//! node within 2 s (on this one at once), it can no longer be renewed, and the next visit goes
//! to the identity provider again (see [`crate::revocation`]).
//! The app host's logout then sends the browser on to the auth host's, which clears the
//! session cookie there and shows a signed-out page.

use std::{sync::Arc, time::Instant};

use outpost_api::{Reply, Session};

use crate::{
    cookies,
    flow::Gen,
    metrics::{Endpoint, Outcome},
    pages,
    revocation::Outcome as Revoked,
    state::{self, SessionRecord, NS_SESSION},
    token::Checked,
};
use outpost_store::Op;

pub struct Logout {
    pub gen: Arc<Gen>,
}

impl Logout {
    pub async fn serve(&self, s: &mut Session<'_>) -> Reply {
        let started = Instant::now();
        let reply = if !matches!(s.req.method.as_str(), "GET" | "HEAD" | "POST") {
            Reply::json_error(405, "use GET or POST").header("Allow", "GET, HEAD, POST")
        } else if s.host().as_deref() == Some(self.gen.s.auth_host.as_str()) {
            self.auth_host(s).await
        } else {
            self.app_host(s).await
        };
        self.gen.time(Endpoint::Logout, started, std::time::Duration::ZERO);
        reply
    }

    async fn auth_host(&self, s: &mut Session<'_>) -> Reply {
        let g = &self.gen;
        let cookie = cookies::find(s.req.header_values("cookie"), cookies::SESSION);
        let mut user = None;
        if let Some(c) = cookie.filter(|c| !c.is_empty() && c.len() <= 128) {
            let sid = state::digest(&c);
            let take = vec![Op::Take { ns: NS_SESSION.into(), key: sid.clone() }];
            // Only a session that exists is revoked: a made-up cookie writes nothing.
            match g.shared.revocations.revoke(vec![sid], None, take, &g.node).await {
                Ok(Revoked::Done { results, .. }) => {
                    user = results
                        .into_iter()
                        .next()
                        .flatten()
                        .and_then(|b| state::decode::<SessionRecord>(&b))
                        .map(|r| r.who().to_owned())
                }
                Ok(Revoked::Aborted { .. }) => {}
                Err(e) => {
                    g.count(Endpoint::Logout, Outcome::Unavailable);
                    return g.unavailable(&e);
                }
            }
        }
        g.count(Endpoint::Logout, Outcome::Success);
        let mut e = g.event(s, "access.logout", "success").reason("auth host");
        if let Some(u) = &user {
            e = e.user(u);
        }
        g.record(s, e);
        pages::message(
            200,
            "You are signed out",
            "Your session at this edge has ended.",
            user.as_deref(),
            Vec::new(),
        )
        .header("Set-Cookie", cookies::clear(cookies::SESSION))
    }

    async fn app_host(&self, s: &mut Session<'_>) -> Reply {
        let g = &self.gen;
        let host = s.host().unwrap_or_default();
        let token = cookies::find(s.req.header_values("cookie"), cookies::TOKEN);
        let mut user = None;
        if let Some(t) = token {
            let claims = match g.shared.keys.check(&t, &g.s.auth_host, &host).await {
                Checked::Valid(c) | Checked::Expired(c) => Some(c),
                Checked::Refused(_) => None,
            };
            if let Some(c) = claims {
                // Revoked already (a second logout with the same token): nothing to write.
                if !c.sid.is_empty() && !g.shared.revocations.is_revoked(&c) {
                    let delete = vec![Op::Delete { ns: NS_SESSION.into(), key: c.sid.clone() }];
                    let r = g.shared.revocations.revoke(vec![c.sid.clone()], None, delete, &g.node);
                    if let Err(e) = r.await {
                        g.count(Endpoint::Logout, Outcome::Unavailable);
                        return g.unavailable(&e);
                    }
                }
                user = Some(c.who().to_owned());
            }
        }
        g.count(Endpoint::Logout, Outcome::Success);
        let mut e = g.event(s, "access.logout", "success").reason(format!("app {host}"));
        if let Some(u) = &user {
            e = e.user(u);
        }
        g.record(s, e);
        let next = format!("{}/logout", g.base_url(&g.s.auth_host));
        pages::secure(Reply::redirect(302, &next))
            .header("Set-Cookie", cookies::clear(cookies::TOKEN))
    }
}
