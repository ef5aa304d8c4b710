//! `/callback` on the auth host: where the provider sends the browser back.
//!
//! 1. The state is read from the store: a spent or unknown state is a 400 page, unless it is
//!    a tab whose state expired while the browser has since logged in (then it passes on that
//!    live session).
//! 2. The binding cookie set at `/login` must match: nobody completes a login in someone
//!    else's browser. This is checked before anything is taken or spent: a callback URL opened
//!    in another browser is refused and leaves the login to the browser that started it.
//! 3. The code is exchanged and the ID token checked, on the provider runtime, within
//!    `idp_timeout_ms` (else a 502 page).
//! 4. The app's policy; a denied user gets a 403 page naming the account.
//! 5. One transaction takes the state, stores a session (auth-host cookie) and a one-time code
//!    for the app host, and drops the intent; then a 302 there.
//!
//! The state is single-use through that take: of any number of requests carrying it, on any
//! node, exactly one commits a session; one that loses the race is answered as a replay. (Two
//! racing requests may both present the provider's code; the provider redeems a code once.)
//! A login that ends early (a provider error, a denied user) spends the state in one write too;
//! one refused for lacking the binding cookie does not. Taking the state at the end rather than first makes a login one durable
//! write, not two.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use outpost_api::{Flow, Handler, Reply, Result as PResult, Session};
use serde::Deserialize;

use crate::{
    cookies,
    endpoints::login::{denied_page, provider_down},
    flow::Gen,
    idp::IdpError,
    metrics::{Endpoint, Outcome},
    pages,
    state::{self, Intent, LoginState, SessionRecord, NS_INTENT, NS_STATE},
};
use outpost_store::{Abort, Op, TxnOutcome};

pub struct Callback {
    pub gen: Arc<Gen>,
}

#[derive(Deserialize, Default)]
struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: the issuer of the answer, when the provider sends it.
    iss: Option<String>,
}

/// Longest `state` or `code` looked at.
const MAX_PARAM: usize = 2048;

impl Handler for Callback {
    type Ctx = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _ctx: &mut ()) -> PResult<Flow> {
        let started = Instant::now();
        let mut provider_time = Duration::ZERO;
        let reply = if s.req.method == "GET" || s.req.method == "HEAD" {
            self.serve(s, &mut provider_time).await
        } else {
            Reply::json_error(405, "use GET").header("Allow", "GET, HEAD")
        };
        self.gen.time(Endpoint::Callback, started, provider_time);
        Ok(Flow::Respond(reply))
    }
}

impl Callback {
    async fn serve(&self, s: &mut Session<'_>, provider_time: &mut Duration) -> Reply {
        let g = &self.gen;
        let p: CallbackParams =
            serde_urlencoded::from_str(s.query().unwrap_or("")).unwrap_or_default();
        let Some(state_value) = p.state.filter(|v| !v.is_empty() && v.len() <= MAX_PARAM) else {
            g.count(Endpoint::Callback, Outcome::BadRequest);
            return g.bad_request("The answer from the identity provider carries no login state.");
        };
        let login = match g.shared.store.get(NS_STATE, &state_value).await {
            Err(e) => {
                g.count(Endpoint::Callback, Outcome::Unavailable);
                return g.unavailable(&e);
            }
            Ok(v) => v.and_then(|b| state::decode::<LoginState>(&b)),
        };
        let Some(login) = login else { return self.stale(s, &state_value).await };

        // The browser that started this login, and no other. Nothing is spent: the rightful
        // browser, which has the cookie, can still complete it.
        let binding =
            cookies::find(s.req.header_values("cookie"), &cookies::login_cookie(&state_value));
        if binding.as_deref().map(state::digest).as_deref() != Some(login.binding.as_str()) {
            g.count(Endpoint::Callback, Outcome::Replay);
            let e = g.event(s, "access.login", "denied").reason("state from another browser");
            g.record(s, e);
            return g.start_again(
                "This sign-in was started in another browser",
                "For your safety a sign-in can only be completed in the browser that started it.",
                Some((&login.app, &login.rd)),
            );
        }
        let clear_binding = cookies::clear(&cookies::login_cookie(&state_value));
        // A provider that names its issuer must name the one this login went to (mix-up).
        if let (Some(iss), Some(p)) = (p.iss.as_deref(), g.provider(&login.provider)) {
            if iss != p.settings.issuer {
                g.count(Endpoint::Callback, Outcome::ProviderError);
                let e = g
                    .event(s, "access.login", "error")
                    .reason(format!("answer from issuer {iss}, not {}", p.settings.issuer));
                g.record(s, e);
                spend(g, &state_value, false).await;
                return g.start_again(
                    "The identity provider's answer could not be verified",
                    "The answer came from another identity provider than the one this sign-in went to.",
                    Some((&login.app, &login.rd)),
                ).header("Set-Cookie", clear_binding);
            }
        }

        if let Some(err) = p.error.as_deref() {
            let desc = p.error_description.as_deref().unwrap_or("");
            g.count(Endpoint::Callback, Outcome::ProviderError);
            let e = g
                .event(s, "access.login", "error")
                .reason(format!("provider {}: {err} {desc}", login.provider));
            g.record(s, e);
            spend(g, &state_value, true).await;
            let status = match err {
                "access_denied"
                | "login_required"
                | "consent_required"
                | "interaction_required" => 403,
                _ => 502,
            };
            return pages::message(
                status,
                "The identity provider did not sign you in",
                &format!("It answered: {err}{}{desc}", if desc.is_empty() { "" } else { ": " }),
                None,
                vec![pages::link(g.login_url(&login.app, &login.rd), "Try again")],
            )
            .header("Set-Cookie", clear_binding);
        }
        let Some(code) = p.code.filter(|c| !c.is_empty() && c.len() <= MAX_PARAM) else {
            g.count(Endpoint::Callback, Outcome::BadRequest);
            spend(g, &state_value, false).await;
            return g.bad_request("The answer from the identity provider carries no code.");
        };
        let Some(provider) = g.provider(&login.provider).cloned() else {
            g.count(Endpoint::Callback, Outcome::BadRequest);
            spend(g, &state_value, false).await;
            return g.start_again(
                "This sign-in can no longer be completed",
                "Its identity provider was removed from the configuration.",
                Some((&login.app, &login.rd)),
            );
        };

        let asked = Instant::now();
        let timeout = g.s.idp_timeout;
        let refetch = g.s.jwks_refetch_min;
        let identity = {
            let (provider, redirect) = (provider.clone(), g.callback_url());
            let (verifier, nonce) = (login.pkce_verifier.clone(), login.nonce.clone());
            g.shared
                .rt
                .run(async move {
                    tokio::time::timeout(
                        timeout,
                        provider.exchange(code, verifier, redirect, nonce, refetch),
                    )
                    .await
                })
                .await
        };
        *provider_time += asked.elapsed();
        let identity = match identity {
            Some(Ok(Ok(i))) => i,
            other => {
                let err = match other {
                    Some(Ok(Err(e))) => e,
                    _ => IdpError::Timeout,
                };
                tracing::warn!(target: "outpost_access::callback", provider = %provider.settings.name, error = %err, "login failed at the provider");
                g.count(Endpoint::Callback, Outcome::ProviderError);
                let e = g
                    .event(s, "access.login", "error")
                    .reason(format!("provider {}: {err}", provider.settings.name));
                g.record(s, e);
                spend(g, &state_value, true).await;
                let reply = match err {
                    IdpError::Unreachable(_) | IdpError::Timeout => {
                        provider_down(g, &provider.settings.display_name, &login.app, &login.rd)
                    }
                    IdpError::Refused(m) => pages::message(
                        502,
                        "The identity provider refused the sign-in",
                        &format!("{} answered: {m}", provider.settings.display_name),
                        None,
                        vec![pages::link(g.login_url(&login.app, &login.rd), "Try again")],
                    ),
                    IdpError::InvalidToken(_) => pages::message(
                        502,
                        "The identity provider's answer could not be verified",
                        "The identity token did not pass its checks, so nobody was signed in.",
                        None,
                        vec![pages::link(g.login_url(&login.app, &login.rd), "Try again")],
                    ),
                };
                return reply.header("Set-Cookie", clear_binding);
            }
        };

        let email = identity.email.clone().unwrap_or_default();
        let who = if email.is_empty() { identity.subject.clone() } else { email.clone() };
        let Some(policy) = g.app_for(&login.app, &login.rd) else {
            g.count(Endpoint::Callback, Outcome::BadRequest);
            spend(g, &state_value, false).await;
            return g.bad_request("The application of this sign-in is no longer protected here.");
        };
        if let Err(d) = policy.admits(identity.email.as_deref(), identity.email_verified) {
            g.count(Endpoint::Callback, Outcome::Denied);
            let e = g.event(s, "access.login", "denied").user(&who).reason(format!(
                "{} ({})",
                d.reason(),
                policy.name
            ));
            g.record(s, e);
            spend(g, &state_value, true).await;
            return denied_page(g, &who, &login.app, &login.rd).header("Set-Cookie", clear_binding);
        }
        let session = SessionRecord {
            sub: format!("{}:{}", login.provider, identity.subject),
            // Empty when the provider gave none (a policy by email then admits nobody).
            email: email.clone(),
            email_verified: identity.email_verified,
            provider: login.provider.clone(),
            created_ms: crate::token::unix_now() * 1000,
        };
        // The state's take, the session, the code and the intent's removal: one write.
        let (cookie, sid, session_op) = g.new_session(&session);
        let (code_op, url) = match g.code(&sid, &session, &login.app, &login.rd).await {
            Ok(c) => c,
            Err(e) => {
                g.count(Endpoint::Callback, Outcome::Unavailable);
                return g.unavailable(&e);
            }
        };
        let take = Op::Take { ns: NS_STATE.into(), key: state_value.clone() };
        let ops = vec![take, session_op, g.drop_intent(&state_value), code_op];
        match g.shared.store.txn(ops).await {
            Ok(TxnOutcome::Committed(_)) => {}
            // Taken by a request that raced this one (or expired meanwhile): that one alone
            // logs in; this one is answered as a replay, or on a session it finds.
            Ok(TxnOutcome::Aborted { op: 0, why: Abort::Missing }) => {
                return self.stale(s, &state_value).await
            }
            Ok(TxnOutcome::Aborted { .. }) => {
                g.count(Endpoint::Callback, Outcome::Unavailable);
                return g.unavailable(&crate::flow::collided());
            }
            Err(e) => {
                g.count(Endpoint::Callback, Outcome::Unavailable);
                return g.unavailable(&e);
            }
        }
        g.count(Endpoint::Callback, Outcome::Success);
        let e = g
            .event(s, "access.login", "success")
            .user(&who)
            .reason(format!("provider {} ({})", login.provider, policy.name));
        g.record(s, e);
        pages::secure(Reply::redirect(302, &url))
            .header("Set-Cookie", cookies::set(cookies::SESSION, &cookie, g.s.session_lifetime))
            .header("Set-Cookie", clear_binding)
    }

    /// No live state: a replay, an expired login, or a forged value. A tab whose own login
    /// state expired while this browser logged in elsewhere passes on the live session.
    async fn stale(&self, s: &mut Session<'_>, state_value: &str) -> Reply {
        let g = &self.gen;
        let binding =
            cookies::find(s.req.header_values("cookie"), &cookies::login_cookie(state_value));
        // The intent is taken only by the browser it is bound to; another browser leaves it.
        let intent = if binding.is_none() {
            None
        } else {
            match g.shared.store.get(NS_INTENT, state_value).await {
                Err(e) => {
                    g.count(Endpoint::Callback, Outcome::Unavailable);
                    return g.unavailable(&e);
                }
                Ok(v) => v.and_then(|b| state::decode::<Intent>(&b)),
            }
        };
        let bound = intent.as_ref().is_some_and(|i| {
            binding.as_deref().map(state::digest).as_deref() == Some(i.binding.as_str())
        });
        let intent = if !bound {
            intent
        } else {
            // Once: of two tabs racing on it, one resumes.
            match g.shared.store.take(NS_INTENT, state_value).await {
                Err(e) => {
                    g.count(Endpoint::Callback, Outcome::Unavailable);
                    return g.unavailable(&e);
                }
                Ok(v) => v.and_then(|b| state::decode::<Intent>(&b)),
            }
        };
        let bound = bound && intent.is_some();
        if let (Some(intent), true) = (&intent, bound) {
            let cookie = cookies::find(s.req.header_values("cookie"), cookies::SESSION);
            match g.live_session(cookie.as_deref()).await {
                Err(e) => {
                    g.count(Endpoint::Callback, Outcome::Unavailable);
                    return g.unavailable(&e);
                }
                Ok(Some((sid, session))) => {
                    let clear_binding = cookies::clear(&cookies::login_cookie(state_value));
                    let Some(policy) = g.app_for(&intent.app, &intent.rd) else {
                        return g.bad_request(
                            "The application of this sign-in is no longer protected here.",
                        );
                    };
                    if let Err(d) = policy.admits(Some(&session.email), session.email_verified) {
                        g.count(Endpoint::Callback, Outcome::Denied);
                        let e = g
                            .event(s, "access.login", "denied")
                            .user(session.who())
                            .reason(d.reason());
                        g.record(s, e);
                        return denied_page(g, session.who(), &intent.app, &intent.rd)
                            .header("Set-Cookie", clear_binding);
                    }
                    return match g.mint_code(&sid, &session, &intent.app, &intent.rd).await {
                        Ok(url) => {
                            g.count(Endpoint::Callback, Outcome::Session);
                            let e = g
                                .event(s, "access.login", "success")
                                .user(session.who())
                                .reason("login state expired; existing session");
                            g.record(s, e);
                            pages::secure(Reply::redirect(302, &url))
                                .header("Set-Cookie", clear_binding)
                        }
                        Err(e) => {
                            g.count(Endpoint::Callback, Outcome::Unavailable);
                            g.unavailable(&e)
                        }
                    };
                }
                Ok(None) => {}
            }
        }
        g.count(Endpoint::Callback, Outcome::Replay);
        let reason = if intent.is_some() { "state expired" } else { "state replayed or unknown" };
        let e = g.event(s, "access.login", "denied").reason(reason);
        g.record(s, e);
        g.start_again(
            "This sign-in link was already used or has expired",
            "Each sign-in link works once, for a few minutes. Start again from the application.",
            intent.as_ref().filter(|_| bound).map(|i| (i.app.as_str(), i.rd.as_str())),
        )
    }
}

/// Spends the login's state (and its intent, when the login cannot be resumed on a session
/// either) for a login that ends here. Best effort: an unspent state still expires, and
/// completing a login takes it in the same transaction that stores the session.
async fn spend(g: &Gen, state_value: &str, intent: bool) {
    let mut ops = vec![Op::Delete { ns: NS_STATE.into(), key: state_value.into() }];
    if intent {
        ops.push(g.drop_intent(state_value));
    }
    let _ = g.shared.store.txn(ops).await;
}
