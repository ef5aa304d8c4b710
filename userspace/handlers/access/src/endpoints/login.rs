//! `/login` on the auth host.
//!
//! - `GET /login?app=<host>&rd=<path>`: with a live auth-host session that the app admits,
//!   straight on to the app (a one-time code, no provider); otherwise a page listing the
//!   providers, one plain form each (no JavaScript).
//! - `POST /login` (`app`, `rd`, `provider`): a new login: state, nonce and PKCE verifier
//!   stored single-use for `state_lifetime`, a cookie binding the login to this browser, and a
//!   302 to the provider.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use outpost_api::{Flow, Handler, Reply, Result as PResult, Session};
use outpost_store::{Op, TxnOutcome};
use serde::Deserialize;

use crate::{
    config::is_hostname,
    cookies,
    flow::Gen,
    idp::AuthRequest,
    metrics::{Endpoint, Outcome},
    pages::{self, LoginPage, ProviderChoice},
    policy::{self, check_return_path},
    state::{self, Intent, LoginState, NS_INTENT, NS_STATE},
};

/// Largest login form accepted.
const MAX_FORM: usize = 8 * 1024;

pub struct Login {
    pub gen: Arc<Gen>,
}

#[derive(Deserialize, Default)]
struct LoginParams {
    app: Option<String>,
    rd: Option<String>,
    provider: Option<String>,
    switch: Option<String>,
}

impl Handler for Login {
    type Ctx = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _ctx: &mut ()) -> PResult<Flow> {
        let started = Instant::now();
        let mut provider_time = Duration::ZERO;
        let reply = match s.req.method.as_str() {
            "GET" | "HEAD" => self.page(s).await,
            "POST" => self.start(s, &mut provider_time).await?,
            _ => Reply::json_error(405, "use GET or POST").header("Allow", "GET, HEAD, POST"),
        };
        self.gen.time(Endpoint::Login, started, provider_time);
        Ok(Flow::Respond(reply))
    }
}

impl Login {
    /// Checks `app` and `rd`: a protected host and a path on it. A refusal is audited: a
    /// return path elsewhere is what an open-redirect attempt looks like.
    fn target(&self, s: &mut Session<'_>, p: &LoginParams) -> Result<(String, String), Reply> {
        let g = &self.gen;
        let app = p.app.as_deref().unwrap_or("").trim().to_ascii_lowercase();
        if !is_hostname(&app) || app == g.s.auth_host || !policy::protects_host(&g.s.apps, &app) {
            let e = g.event(s, "access.login", "denied").reason("unknown application");
            g.record(s, e);
            return Err(g.bad_request("This sign-in link names no application protected here."));
        }
        let rd = p.rd.clone().unwrap_or_else(|| "/".into());
        if let Err(why) = check_return_path(&rd) {
            let e =
                g.event(s, "access.login", "denied").reason(format!("return path refused: {why}"));
            g.record(s, e);
            return Err(g.bad_request(
                "This sign-in link would return to a place outside the application.",
            ));
        }
        Ok((app, rd))
    }

    async fn page(&self, s: &mut Session<'_>) -> Reply {
        let g = &self.gen;
        let p: LoginParams = match serde_urlencoded::from_str(s.query().unwrap_or("")) {
            Ok(p) => p,
            Err(_) => {
                g.count(Endpoint::Login, Outcome::BadRequest);
                return g.bad_request("The sign-in link is malformed.");
            }
        };
        let (app, rd) = match self.target(s, &p) {
            Ok(t) => t,
            Err(r) => {
                g.count(Endpoint::Login, Outcome::BadRequest);
                return r;
            }
        };
        let switch = p.switch.is_some();
        if !switch {
            let cookie = cookies::find(s.req.header_values("cookie"), cookies::SESSION);
            match g.live_session(cookie.as_deref()).await {
                Err(e) => {
                    g.count(Endpoint::Login, Outcome::Unavailable);
                    return g.unavailable(&e);
                }
                Ok(Some((sid, session))) => {
                    return self.with_session(s, &sid, &session, &app, &rd).await
                }
                Ok(None) => {}
            }
        }
        let Some(policy) = g.app_for(&app, &rd) else {
            g.count(Endpoint::Login, Outcome::BadRequest);
            return g.bad_request("This sign-in link names no application protected here.");
        };
        let providers = g
            .providers
            .iter()
            .filter(|p| policy.offers(&p.settings.name))
            .map(|p| ProviderChoice {
                name: p.settings.name.clone(),
                display_name: p.settings.display_name.clone(),
            })
            .collect();
        g.count(Endpoint::Login, Outcome::Page);
        pages::html(200, &LoginPage { app: &app, rd: &rd, providers, switch })
    }

    /// A live auth-host session: on to the app without the provider, if the app admits the
    /// user.
    async fn with_session(
        &self,
        s: &mut Session<'_>,
        sid: &str,
        session: &state::SessionRecord,
        app: &str,
        rd: &str,
    ) -> Reply {
        let g = &self.gen;
        let Some(policy) = g.app_for(app, rd) else { return g.bad_request("Unknown application.") };
        if let Err(d) = policy.admits(Some(&session.email), session.email_verified) {
            g.count(Endpoint::Login, Outcome::Denied);
            let e = g.event(s, "access.login", "denied").user(session.who()).reason(format!(
                "{} ({})",
                d.reason(),
                policy.name
            ));
            g.record(s, e);
            return denied_page(g, session.who(), app, rd);
        }
        match g.mint_code(sid, session, app, rd).await {
            Ok(url) => {
                g.count(Endpoint::Login, Outcome::Session);
                let e = g
                    .event(s, "access.login", "success")
                    .user(session.who())
                    .reason(format!("existing session ({})", policy.name));
                g.record(s, e);
                pages::secure(Reply::redirect(302, &url))
            }
            Err(e) => {
                g.count(Endpoint::Login, Outcome::Unavailable);
                g.unavailable(&e)
            }
        }
    }

    /// `POST /login`: off to the provider.
    async fn start(&self, s: &mut Session<'_>, provider_time: &mut Duration) -> PResult<Reply> {
        let g = &self.gen;
        let body = s.read_body_to_end(MAX_FORM).await?;
        let p: LoginParams = match serde_urlencoded::from_bytes(&body) {
            Ok(p) => p,
            Err(_) => {
                g.count(Endpoint::Login, Outcome::BadRequest);
                return Ok(g.bad_request("The sign-in form is malformed."));
            }
        };
        let (app, rd) = match self.target(s, &p) {
            Ok(t) => t,
            Err(r) => {
                g.count(Endpoint::Login, Outcome::BadRequest);
                return Ok(r);
            }
        };
        let policy = g.app_for(&app, &rd);
        let provider = p
            .provider
            .as_deref()
            .and_then(|name| g.provider(name))
            .filter(|pr| policy.is_some_and(|a| a.offers(&pr.settings.name)));
        let Some(provider) = provider.cloned() else {
            g.count(Endpoint::Login, Outcome::BadRequest);
            return Ok(g.bad_request("Choose one of the identity providers offered."));
        };
        let state_value = crate::random_token(32);
        let nonce = crate::random_token(32);
        let pkce_verifier = crate::random_token(32);
        let binding = crate::random_token(32);
        let req = AuthRequest {
            redirect_uri: g.callback_url(),
            state: state_value.clone(),
            nonce: nonce.clone(),
            pkce_verifier: pkce_verifier.clone(),
            prompt_login: p.switch.is_some(),
        };
        let timeout = g.s.idp_timeout;
        let asked = Instant::now();
        let url = {
            let provider = provider.clone();
            g.shared
                .rt
                .run(
                    async move { tokio::time::timeout(timeout, provider.authorize_url(req)).await },
                )
                .await
        };
        *provider_time += asked.elapsed();
        let url = match url {
            Some(Ok(Ok(u))) => u,
            other => {
                let why = match other {
                    Some(Ok(Err(e))) => e.to_string(),
                    _ => "provider did not answer in time".into(),
                };
                tracing::warn!(target: "outpost_access::login", provider = %provider.settings.name, error = %why, "provider discovery failed");
                g.count(Endpoint::Login, Outcome::ProviderError);
                let e = g
                    .event(s, "access.login", "error")
                    .reason(format!("provider {}: {why}", provider.settings.name));
                g.record(s, e);
                return Ok(provider_down(g, &provider.settings.display_name, &app, &rd));
            }
        };
        let binding_hash = state::digest(&binding);
        let login = LoginState {
            provider: provider.settings.name.clone(),
            app: app.clone(),
            rd: rd.clone(),
            nonce,
            pkce_verifier,
            binding: binding_hash.clone(),
        };
        let intent = Intent { app, rd, binding: binding_hash };
        let ops = vec![
            Op::Insert {
                ns: NS_STATE.into(),
                key: state_value.clone(),
                value: state::encode(&login),
                ttl: Some(g.s.state_lifetime),
            },
            Op::Insert {
                ns: NS_INTENT.into(),
                key: state_value.clone(),
                value: state::encode(&intent),
                ttl: Some(g.s.intent_lifetime),
            },
        ];
        match g.shared.store.txn(ops).await {
            Ok(TxnOutcome::Committed(_)) => {}
            Ok(TxnOutcome::Aborted { .. }) => {
                g.count(Endpoint::Login, Outcome::Unavailable);
                return Ok(
                    g.unavailable(&outpost_store::StoreError::Other("state collided".into()))
                );
            }
            Err(e) => {
                g.count(Endpoint::Login, Outcome::Unavailable);
                return Ok(g.unavailable(&e));
            }
        }
        g.count(Endpoint::Login, Outcome::ToProvider);
        Ok(pages::secure(Reply::redirect(302, &url)).header(
            "Set-Cookie",
            cookies::set(&cookies::login_cookie(&state_value), &binding, g.s.intent_lifetime),
        ))
    }
}

/// 403: the account is not admitted; offer another.
pub fn denied_page(g: &Gen, account: &str, app: &str, rd: &str) -> Reply {
    pages::message(
        403,
        "You do not have access",
        &format!("This account may not use {app}."),
        Some(account),
        vec![pages::link(format!("{}&switch=1", g.login_url(app, rd)), "Sign in as someone else")],
    )
}

/// 502: the provider could not be used.
pub fn provider_down(g: &Gen, provider: &str, app: &str, rd: &str) -> Reply {
    pages::message(
        502,
        "The identity provider is not answering",
        &format!(
            "{provider} could not be reached or did not answer in time. Try again in a moment."
        ),
        None,
        vec![pages::link(g.login_url(app, rd), "Try again")],
    )
}
