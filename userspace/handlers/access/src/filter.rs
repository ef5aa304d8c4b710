//! The access check: a filter in front of every route, so protection attaches to any route and
//! the route's own handler (the origin proxy, or anything else) knows nothing of Access.
//!
//! On every request, whatever the host: client copies of the identity headers are removed.
//! On a protected app's path (not a bypass path):
//! - a valid app token (checked in-process: signature, known `kid`, `aud` = this host,
//!   `exp`/`nbf` with 60 s of skew, then the app's policy) lets the request through with the
//!   two identity headers added;
//! - a token whose session or user was revoked (logout, `outpost access revoke`) is refused
//!   like a missing one, on every node within 2 s (checked in memory, see
//!   [`crate::revocation`]);
//! - an expired but genuine token is renewed from its live auth-host session (one store read
//!   per token lifetime, no trip to the provider); the new token is set as a cookie on the
//!   response;
//! - anything else starts the login: a browser navigation (GET or HEAD accepting
//!   `text/html`) gets a 302 to the auth host's `/login`, any other request a 401 JSON error.
//!
//! The reserved prefix (`/.outpost`) of a protected host belongs to the edge: the code
//! redemption and the app logout are answered here, whatever route the host's requests go to.

use std::{sync::Arc, time::Instant};

use outpost_api::{
    http::{Header, Request, Response},
    Flow, Handler, Reply, Result as PResult, Session,
};

use crate::{
    cookies,
    endpoints::{authorized::Authorized, logout::Logout},
    flow::Gen,
    metrics::{Endpoint, Outcome},
    pages,
    policy::{self, check_return_path, AppPolicy},
    revocation::Revocations,
    state::{self, SessionRecord, NS_SESSION},
    token::{Checked, Claims},
};

pub struct AccessCheck {
    pub gen: Arc<Gen>,
    pub authorized: Arc<Authorized>,
    pub logout: Arc<Logout>,
}

/// What the check decided for one request, for the later phases.
#[derive(Default)]
pub struct CheckCtx {
    /// The token and email to send to the origin.
    identity: Option<(String, String)>,
    /// A renewed token's cookie, for the response.
    set_cookie: Option<String>,
}

impl Handler for AccessCheck {
    type Ctx = CheckCtx;

    fn new_ctx(&self) -> CheckCtx {
        CheckCtx::default()
    }

    async fn request_filter(&self, s: &mut Session<'_>, ctx: &mut CheckCtx) -> PResult<Flow> {
        let g = &self.gen;
        let Some(host) = s.host() else { return Ok(Flow::Continue) };
        if host == g.s.auth_host {
            return Ok(Flow::Continue);
        }
        let path = s.path().to_owned();
        if policy::prefix_matches(&g.s.reserved_prefix, &path)
            && policy::protects_host(&g.s.apps, &host)
        {
            return Ok(Flow::Respond(self.reserved(s, &path).await));
        }
        let Some(app) = policy::select(&g.s.apps, &host, &path) else { return Ok(Flow::Continue) };
        if app.bypassed(&path) {
            g.count(Endpoint::Check, Outcome::Bypass);
            return Ok(Flow::Continue);
        }
        let started = Instant::now();
        let flow = self.check(s, ctx, app, &host).await;
        g.time(Endpoint::Check, started, std::time::Duration::ZERO);
        Ok(flow)
    }

    async fn upstream_request_filter(
        &self,
        s: &mut Session<'_>,
        up: &mut Request<'_>,
        ctx: &mut CheckCtx,
    ) -> PResult<()> {
        let g = &self.gen;
        let before = up.headers.len();
        up.headers.retain(|h| {
            !h.name.eq_ignore_ascii_case(&g.s.assertion_header)
                && !h.name.eq_ignore_ascii_case(&g.s.email_header)
        });
        if up.headers.len() != before {
            // Only a client trying to pass as someone sends these.
            let e = g.event(s, "access.request", "stripped").reason("client sent identity headers");
            g.record(s, e);
        }
        if let Some((token, email)) = ctx.identity.take() {
            // Client copies are gone (above): pushing is setting.
            up.headers.push(Header::new(g.s.assertion_header.as_str(), token));
            // A user the provider gave no email (let in by `allow_any_authenticated`) has
            // none to send; the assertion names them (`sub`).
            if !email.is_empty() {
                up.headers.push(Header::new(g.s.email_header.as_str(), email));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _s: &mut Session<'_>,
        resp: &mut Response<'_>,
        ctx: &mut CheckCtx,
    ) -> PResult<()> {
        if let Some(c) = ctx.set_cookie.take() {
            resp.headers.push(Header::new("Set-Cookie", c));
        }
        Ok(())
    }
}

impl AccessCheck {
    async fn check(
        &self,
        s: &mut Session<'_>,
        ctx: &mut CheckCtx,
        app: &AppPolicy,
        host: &str,
    ) -> Flow {
        let g = &self.gen;
        let Some(token) = cookies::find(s.req.header_values("cookie"), cookies::TOKEN) else {
            return self.refuse(s, app, host, "no token", false);
        };
        let claims = match g.shared.keys.check(&token, &g.s.auth_host, host).await {
            Checked::Valid(c) | Checked::Expired(c) if g.shared.revocations.is_revoked(&c) => {
                g.shared.revocations.count_refused();
                return self.refuse(s, app, host, "session revoked", true);
            }
            Checked::Valid(c) => c,
            Checked::Expired(c) => match self.renew(&c, host).await {
                Ok(Some((token, c))) => {
                    ctx.set_cookie =
                        Some(cookies::set(cookies::TOKEN, &token, g.s.session_lifetime));
                    g.count(Endpoint::Check, Outcome::Renewed);
                    tracing::debug!(target: "outpost_access::check", user = %c.email, host, "app token renewed from the session");
                    return self.admit(s, ctx, app, host, token, c, true);
                }
                Ok(None) => {
                    return self.refuse(s, app, host, "token expired and session ended", true)
                }
                Err(e) => {
                    g.count(Endpoint::Check, Outcome::Unavailable);
                    return Flow::Respond(if navigation(s.req) {
                        g.unavailable(&e)
                    } else {
                        Reply::json_error(503, "access check unavailable; try again")
                            .header("Retry-After", "2")
                    });
                }
            },
            // A refused token is cleared, so the browser does not keep sending it.
            Checked::Refused(r) => return self.refuse(s, app, host, r.reason(), true),
        };
        self.admit(s, ctx, app, host, token, claims, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        s: &mut Session<'_>,
        ctx: &mut CheckCtx,
        app: &AppPolicy,
        host: &str,
        token: String,
        c: Arc<Claims>,
        renewed: bool,
    ) -> Flow {
        let g = &self.gen;
        // The policy is read on every request: a user removed from it is out at the next
        // request, not when the token expires.
        if let Err(d) = app.admits(Some(&c.email), c.email_verified) {
            g.count(Endpoint::Check, Outcome::Denied);
            let e = g.event(s, "access.request", "denied").user(c.who()).reason(d.reason());
            g.record(s, e);
            let reply = if navigation(s.req) {
                pages::message(
                    403,
                    "You do not have access",
                    &format!("Your account may not use {host}."),
                    Some(c.who()),
                    vec![pages::link(
                        format!("{}&switch=1", g.login_url(host, &return_path(s.req))),
                        "Sign in as someone else",
                    )],
                )
            } else {
                Reply::json_error(403, "forbidden by the application's access policy")
            };
            return Flow::Respond(reply);
        }
        if !renewed {
            g.count(Endpoint::Check, Outcome::Pass);
        }
        if s.req.websocket_upgrade() {
            // A WebSocket outlives its token (expiry does not cut it, as with Cloudflare
            // Access), but not a revocation of its session or user: re-checked whenever this
            // node learns of one, so within revocation's 2 s bound.
            s.close_upgraded_when(closed_on_revocation(g.shared.revocations.clone(), c.clone()));
        }
        ctx.identity = Some((token, c.email.clone()));
        Flow::Continue
    }

    /// A new token for `host` if the session `expired` came from still lives.
    async fn renew(
        &self,
        expired: &Claims,
        host: &str,
    ) -> Result<Option<(String, Arc<Claims>)>, outpost_store::StoreError> {
        let g = &self.gen;
        if expired.sid.is_empty() {
            return Ok(None);
        }
        let Some(raw) = g.shared.store.get(NS_SESSION, &expired.sid).await? else {
            return Ok(None);
        };
        let Some(session) = state::decode::<SessionRecord>(&raw) else { return Ok(None) };
        if session.sub != expired.sub
            || g.shared.revocations.session_revoked(&expired.sid, &session)
        {
            return Ok(None);
        }
        let token = g.sign(&expired.sid, &session, host).await?;
        let mut c = expired.clone();
        c.email = session.email;
        c.email_verified = session.email_verified;
        Ok(Some((token, Arc::new(c))))
    }

    /// Step 1 again: 302 to the login page for a navigation, 401 JSON otherwise.
    fn refuse(
        &self,
        s: &mut Session<'_>,
        app: &AppPolicy,
        host: &str,
        why: &str,
        clear: bool,
    ) -> Flow {
        let g = &self.gen;
        let login = g.login_url(host, &return_path(s.req));
        let e = g.event(s, "access.request", "denied").reason(format!("{why} ({})", app.name));
        g.record(s, e);
        let mut reply = if navigation(s.req) {
            g.count(Endpoint::Check, Outcome::Redirect);
            pages::secure(Reply::redirect(302, &login))
        } else {
            g.count(Endpoint::Check, Outcome::Unauthorized);
            let body = serde_json::json!({ "error": "authentication required", "reason": why, "login": login });
            Reply::new(401, "application/json", format!("{body}\n"))
                .header("Cache-Control", "no-store")
        };
        if clear {
            reply = reply.header("Set-Cookie", cookies::clear(cookies::TOKEN));
        }
        Flow::Respond(reply)
    }

    /// The edge's own paths on a protected host.
    async fn reserved(&self, s: &mut Session<'_>, path: &str) -> Reply {
        let g = &self.gen;
        if path == g.authorized_path() {
            self.authorized.serve(s).await
        } else if path == g.logout_path() {
            self.logout.serve(s).await
        } else {
            Reply::json_error(404, "no such edge endpoint")
        }
    }
}

/// Resolves once the token with `claims` is revoked on this node.
async fn closed_on_revocation(revocations: Arc<Revocations>, claims: Arc<Claims>) {
    // Subscribed before the first check: a revocation between the two is not missed.
    let mut changed = revocations.subscribe();
    loop {
        if revocations.is_revoked(&claims) {
            tracing::info!(target: "outpost_access::check", user = %claims.email, "WebSocket closed: session revoked");
            return;
        }
        if changed.changed().await.is_err() {
            // The revocation set is gone (a shutdown): nothing will be revoked any more.
            return std::future::pending().await;
        }
    }
}

/// A browser navigation: GET or HEAD accepting HTML.
pub fn navigation(req: &Request<'_>) -> bool {
    (req.method == "GET" || req.method == "HEAD")
        && req.header_values("accept").any(|v| {
            std::str::from_utf8(v).is_ok_and(|v| v.to_ascii_lowercase().contains("text/html"))
        })
}

/// The path (and query) to come back to after the login; `/` when the request's own target
/// would not pass the return-path check.
pub fn return_path(req: &Request<'_>) -> String {
    let t = &req.target;
    let local = match t.find("://") {
        Some(i) => {
            let rest = &t[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => t.as_str(),
    };
    let local = local.split('#').next().unwrap_or("/");
    if check_return_path(local).is_ok() {
        local.to_owned()
    } else {
        "/".to_owned()
    }
}
