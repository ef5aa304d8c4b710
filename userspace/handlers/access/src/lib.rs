//! Access: the login flow at the edge, edge-signed app tokens, and the access check in front
//! of any route.
//!
//! A request to a protected application without a valid app token is sent to log in: a 302 to
//! the auth host's `/login` (or a 401 JSON error for requests that are not browser
//! navigations), a page listing the identity providers, the provider's own login (OpenID
//! Connect, authorization code with PKCE S256, `state` and `nonce`), back to `/callback`, then
//! to the app host's `<reserved prefix>/authorized` with a one-time code that the app host
//! redeems itself for a cookie holding its app token, and on to the original page. Every step
//! but the provider's is answered by the edge node that got it; the one-time values (state,
//! code) and sessions live in the store, so a login started on one node finishes on any
//! other, and each is taken exactly once.
//!
//! ```toml
//! [access]
//! auth_host = "auth.example.test"
//!
//! [[access.providers]]
//! name = "corp"
//! issuer = "https://idp.example.test"
//! client_id = "outpost"
//! client_secret_file = "/etc/outpost/idp-secret"
//!
//! [[access.apps]]
//! host = "wiki.example.test"
//! allow_domains = ["example.test"]
//! bypass = ["/healthz"]
//! ```
//!
//! # What lives where
//! - **Browser**: `__Host-outpost-token` on each app host (the app token; `Max-Age` is the
//!   session lifetime so an expired token can be renewed), `__Host-outpost-session` on the
//!   auth host (32 random bytes), and one `__Host-outpost-login-<state prefix>` per login in
//!   flight, binding it to this browser. All `Secure; HttpOnly; SameSite=Lax; Path=/`, no
//!   `Domain`.
//! - **Store** (see [`state`]): the single-use login state and the one-time code, taken once on
//!   any node; sessions under the SHA-256 of their cookie, so reading the store does not hand
//!   out sessions; the edge signing keys ([`keys`]).
//! - **Origin**: the app token as the assertion header and the email header; client copies of
//!   both are removed from every request, protected or not. The token carries `sid`, the
//!   session's store key (not its cookie): enough to renew it while the session lives, nothing
//!   an origin could log in with.
//! - **Per node, in memory**: the keys that verify, tokens already verified (until they
//!   expire), and the revoked sessions and users ([`revocation`], read from the store every
//!   500 ms), so the check on every request costs no store read and, after a token's first
//!   request, no signature check.
//!
//! # Layout
//! - [`config`]: `[access]` ([`config::AccessConfig`]), checked and resolved into
//!   [`config::Settings`]; secrets read from a file or the environment, never shown.
//! - [`policy`]: which application a request belongs to, who may enter, safe return paths.
//! - [`filter`]: the access check, a filter in front of every route.
//! - [`endpoints`]: one handler per endpoint: `login`, `callback`, `authorized`, `logout`,
//!   `keys`.
//! - [`flow`]: what the endpoints of one generation share (settings, providers, minting).
//! - [`state`]: the records kept in the store (state, intent, code, session).
//! - [`idp`]: the providers (discovery, code exchange, ID token checks) on a runtime of this
//!   crate's own.
//! - [`keys`]: the edge's ES256 signing keys in the store, their rotation and the JWKS.
//! - [`revocation`]: revoked sessions and users, written in one transaction with the sessions
//!   they end and read by every node within 2 s; the in-memory check and its notification.
//! - [`token`]: app token claims and verification.
//! - [`cookies`]: the cookies of the flow, read and written one way.
//! - [`pages`]: the HTML pages (askama templates, escaped, no JavaScript).
//! - [`metrics`]: counters and times per endpoint.
//! - [`cli`]: `outpost access keys rotate|list`, `outpost access revoke`.
//!
//! # Crates, and why
//! - **openidconnect** (with oauth2): the OpenID Connect relying party of the Rust ecosystem,
//!   typed end to end: discovery, PKCE S256, nonce, and ID-token validation (signature against
//!   the provider's JWKS, `iss`, `aud`, `exp`, nonce) done by code that other services have
//!   already exercised. Its HTTP client is **reqwest** 0.12 on rustls with ring, the crypto
//!   provider the proxy uses: no OpenSSL, no second provider. Redirects are never followed (an
//!   answer that redirects could point the edge anywhere). `azp`, `iat` and `email_verified`
//!   checks are added here.
//! - **jsonwebtoken**: JWT encoding and validation with explicit algorithm allow-lists,
//!   audience, issuer and leeway, so the edge's tokens are plain ES256 JWTs any origin can
//!   verify; on its RustCrypto backend (`p256`), which openidconnect already brings.
//! - **ring**: key generation (P-256 PKCS#8), randomness and SHA-256, already in the build for
//!   rustls.
//! - **askama**: templates compiled and type-checked with the crate; `.html` templates escape
//!   every value, so nothing a user or provider sends can become markup.
//! - **cookie**: RFC 6265 parsing of `Cookie` headers and building `Set-Cookie` with every
//!   flag, instead of string splicing.
//! - **serde_urlencoded**: query strings and form bodies into typed structs.
//! - **tokio**: the small runtime (one thread) that talks to providers, away from the proxy's
//!   worker rings, with timers for the timeouts.

pub mod cli;
pub mod config;
pub mod cookies;
pub mod endpoints;
pub mod filter;
pub mod flow;
pub mod idp;
pub mod keys;
pub mod metrics;
pub mod pages;
pub mod policy;
pub mod revocation;
pub mod state;
pub mod token;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use anyhow::{anyhow, Context as _};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use outpost_api::{
    erase, AdminEndpoint, App, AppParts, AppRoute, BuildEnv, Flow, Handler, Reply,
    Result as PResult, Session,
};
use outpost_store::Store;
use ring::rand::SecureRandom as _;

use crate::{
    config::AccessConfig,
    endpoints::{
        authorized::Authorized, callback::Callback, keys::Keys, login::Login, logout::Logout,
    },
    filter::AccessCheck,
    flow::{Gen, Shared},
    idp::{IdpRuntime, Provider},
    keys::KeyRing,
    metrics::Metrics,
    revocation::Revocations,
};

/// The Access application: owns `[access]`. Long-lived parts (the provider runtime and
/// clients with their discovery and key caches, the edge key ring, metrics) are kept here and
/// reused by every configuration generation; `build` runs on start and on every reload.
pub struct AccessApp {
    store: Store,
    keys: Arc<KeyRing>,
    revocations: Arc<Revocations>,
    metrics: Arc<Metrics>,
    shared: OnceLock<Arc<Shared>>,
    providers: Mutex<Vec<Arc<Provider>>>,
}

impl AccessApp {
    pub fn new(store: Store) -> AccessApp {
        AccessApp {
            keys: Arc::new(KeyRing::new(store.clone())),
            revocations: Arc::new(Revocations::new(store.clone())),
            store,
            metrics: Arc::new(Metrics::default()),
            shared: OnceLock::new(),
            providers: Mutex::new(Vec::new()),
        }
    }

    /// This node's revocations: [`Revocations::is_revoked`] and [`Revocations::subscribe`]
    /// for whatever holds a token longer than a request.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// This application's series for `/metrics`.
    pub fn metrics_source(&self) -> Arc<dyn Fn(&mut String) + Send + Sync> {
        let (m, r) = (self.metrics.clone(), self.revocations.clone());
        Arc::new(move |out: &mut String| {
            m.render(out);
            r.render(out);
        })
    }

    /// The parts that outlive reloads, started on first use (the provider runtime is a
    /// thread; a build without `[access]` starts nothing).
    fn shared(&self) -> anyhow::Result<Arc<Shared>> {
        if let Some(s) = self.shared.get() {
            return Ok(s.clone());
        }
        let rt = IdpRuntime::start().context("starting the identity provider runtime")?;
        // Every node reads the key set now and then, so a rotation made elsewhere is signed
        // with here within REFRESH_EVERY.
        let weak: Weak<KeyRing> = Arc::downgrade(&self.keys);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(keys::REFRESH_EVERY).await;
                let Some(ring) = weak.upgrade() else { return };
                if let Err(e) = ring.refresh().await {
                    tracing::warn!(target: "outpost_access::keys", error = %e, "edge key refresh failed");
                }
            }
        });
        // Every node reads the revocations made anywhere every POLL_EVERY (the first read at
        // once: until it succeeds the node says it is stale).
        let weak: Weak<Revocations> = Arc::downgrade(&self.revocations);
        rt.spawn(async move {
            loop {
                let Some(r) = weak.upgrade() else { return };
                let _ = r.sync().await;
                drop(r);
                tokio::time::sleep(revocation::POLL_EVERY).await;
            }
        });
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            keys: self.keys.clone(),
            revocations: self.revocations.clone(),
            rt,
            metrics: self.metrics.clone(),
        });
        let _ = self.shared.set(shared);
        self.shared.get().cloned().ok_or_else(|| anyhow!("access runtime not set"))
    }
}

impl App for AccessApp {
    fn section(&self) -> &'static str {
        "access"
    }

    fn build(&self, section: Option<&toml::Value>, env: &BuildEnv) -> anyhow::Result<AppParts> {
        let Some(section) = section else { return Ok(AppParts::default()) };
        let settings = AccessConfig::from_section(section)?.resolve()?;
        let shared = self.shared()?;
        let providers = {
            let mut kept = self.providers.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = idp::reuse(&kept, &settings.providers, settings.idp_timeout)
                .map_err(|e| anyhow!(e))?;
            *kept = fresh.clone();
            fresh
        };
        self.keys.set_token_lifetime(settings.app_token_lifetime);
        self.revocations.set_lifetimes(revocation::Lifetimes {
            app_token: settings.app_token_lifetime,
            session: settings.session_lifetime,
        });
        let gen = Arc::new(Gen {
            s: settings,
            providers,
            shared: shared.clone(),
            audit: env.audit.clone(),
            node: env.node.clone(),
        });
        // Warm the caches: discovery and the first signing key, off the request path.
        for p in &gen.providers {
            let p = p.clone();
            let t = gen.s.idp_timeout;
            shared.rt.spawn(async move {
                let req = idp::AuthRequest {
                    redirect_uri: "https://warm.invalid/callback".into(),
                    state: "warm".into(),
                    nonce: "warm".into(),
                    pkce_verifier: random_token(32),
                    prompt_login: false,
                };
                if let Ok(Err(e)) = tokio::time::timeout(t, p.authorize_url(req)).await {
                    tracing::warn!(target: "outpost_access::idp", provider = %p.settings.name, error = %e, "provider discovery failed (will retry at the next login)");
                }
            });
        }
        {
            let keys = self.keys.clone();
            shared.rt.spawn(async move {
                if let Err(e) = keys.signing_key().await {
                    tracing::warn!(target: "outpost_access::keys", error = %e, "edge keys not loaded yet");
                }
            });
        }

        let authorized = Arc::new(Authorized { gen: gen.clone() });
        let logout = Arc::new(Logout { gen: gen.clone() });
        let auth = gen.s.auth_host.clone();
        let mut routes = vec![
            AppRoute {
                host: auth.clone(),
                path: "/login".into(),
                handler: erase("access.login", Login { gen: gen.clone() }),
            },
            AppRoute {
                host: auth.clone(),
                path: "/callback".into(),
                handler: erase("access.callback", Callback { gen: gen.clone() }),
            },
            AppRoute {
                host: auth.clone(),
                path: "/logout".into(),
                handler: erase("access.logout", Shim(logout.clone())),
            },
            AppRoute {
                host: auth.clone(),
                path: "/keys".into(),
                handler: erase("access.keys", Keys { gen: gen.clone() }),
            },
            AppRoute {
                host: auth.clone(),
                path: "/".into(),
                handler: erase("access.auth_host", AuthHostIndex),
            },
        ];
        let hosts: BTreeSet<String> = gen.s.apps.iter().map(|a| a.host.route_host()).collect();
        for h in hosts {
            routes.push(AppRoute {
                host: h.clone(),
                path: gen.authorized_path(),
                handler: erase("access.authorized", Shim(authorized.clone())),
            });
            routes.push(AppRoute {
                host: h,
                path: gen.logout_path(),
                handler: erase("access.logout", Shim(logout.clone())),
            });
        }
        let filter = erase("access.check", AccessCheck { gen: gen.clone(), authorized, logout });
        tracing::info!(
            target: "outpost_access",
            auth_host = %gen.s.auth_host,
            apps = gen.s.apps.len(),
            providers = gen.providers.len(),
            "access configured"
        );
        // The core strips client copies of these in every spelling before any filter runs.
        let asserted_headers = vec![gen.s.assertion_header.clone(), gen.s.email_header.clone()];
        Ok(AppParts {
            routes,
            filters: vec![filter],
            admin: admin(&self.store, &self.keys, &self.metrics, &gen),
            background: Vec::new(),
            asserted_headers,
        })
    }
}

/// Admin endpoints: `GET /access/keys`, `POST /access/keys/rotate`, `GET /access/metrics`,
/// `POST /access/revoke?user=EMAIL` or `?session=SID`.
fn admin(
    store: &Store,
    ring: &Arc<KeyRing>,
    metrics: &Arc<Metrics>,
    gen: &Arc<Gen>,
) -> Vec<(String, AdminEndpoint)> {
    let list: AdminEndpoint = {
        let store = store.clone();
        Arc::new(move |_req| {
            let store = store.clone();
            Box::pin(async move {
                match KeyRing::list(&store).await {
                    Ok(keys) => Reply::new(
                        200,
                        "application/json",
                        serde_json::to_vec(&keys).unwrap_or_default(),
                    ),
                    Err(e) => Reply::json_error(503, &e.to_string()),
                }
            })
        })
    };
    let rotate: AdminEndpoint = {
        let (store, ring) = (store.clone(), ring.clone());
        Arc::new(move |req| {
            let (store, ring) = (store.clone(), ring.clone());
            Box::pin(async move {
                if req.method != "POST" {
                    return Reply::json_error(405, "use POST").header("Allow", "POST");
                }
                match KeyRing::rotate(&store).await {
                    Ok(r) => {
                        let _ = ring.refresh().await;
                        let reason = cli::rotation_reason(&r.new_kid, &r.retired);
                        tracing::info!(target: "outpost_access::keys", "{reason}");
                        let event = outpost_store::AuditEvent {
                            time: std::time::SystemTime::now(),
                            node: "admin".into(),
                            client: None,
                            host: None,
                            path: None,
                            user: None,
                            kind: "access.keys.rotate".into(),
                            outcome: "success".into(),
                            reason: Some(reason.clone()),
                        };
                        let _ = store.append_audit(vec![event]).await;
                        Reply::new(
                            200,
                            "application/json",
                            serde_json::json!({ "result": reason }).to_string(),
                        )
                    }
                    Err(e) => Reply::json_error(503, &e.to_string()),
                }
            })
        })
    };
    let revoke: AdminEndpoint = {
        let gen = gen.clone();
        Arc::new(move |req| {
            let gen = gen.clone();
            Box::pin(async move { cli::revoke_endpoint(&gen, &req).await })
        })
    };
    let m: AdminEndpoint = {
        let metrics = metrics.clone();
        Arc::new(move |_req| {
            let mut out = String::new();
            metrics.render(&mut out);
            Box::pin(async move { Reply::new(200, "text/plain; version=0.0.4", out) })
        })
    };
    vec![
        ("/access/keys".into(), list),
        ("/access/keys/rotate".into(), rotate),
        ("/access/metrics".into(), m),
        ("/access/revoke".into(), revoke),
    ]
}

/// An endpoint that the access check also serves (on protected hosts, whatever the routes):
/// the route and the check share one object.
struct Shim<T>(Arc<T>);

impl Handler for Shim<Authorized> {
    type Ctx = ();
    fn new_ctx(&self) {}
    async fn request_filter(&self, s: &mut Session<'_>, _ctx: &mut ()) -> PResult<Flow> {
        Ok(Flow::Respond(self.0.serve(s).await))
    }
}

impl Handler for Shim<Logout> {
    type Ctx = ();
    fn new_ctx(&self) {}
    async fn request_filter(&self, s: &mut Session<'_>, _ctx: &mut ()) -> PResult<Flow> {
        Ok(Flow::Respond(self.0.serve(s).await))
    }
}

/// Anything else on the auth host: it serves the login flow and nothing more.
struct AuthHostIndex;

impl Handler for AuthHostIndex {
    type Ctx = ();
    fn new_ctx(&self) {}
    async fn request_filter(&self, _s: &mut Session<'_>, _ctx: &mut ()) -> PResult<Flow> {
        Ok(Flow::Respond(pages::message(
            404,
            "Nothing here",
            "This host serves sign-in only.",
            None,
            Vec::new(),
        )))
    }
}

/// `n` random bytes, base64url.
pub fn random_token(n: usize) -> String {
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the system random source failed");
    B64.encode(b)
}
