//! Identity providers: discovery, the authorization URL, the code exchange and the ID token's
//! checks, all on a small runtime this crate owns.
//!
//! Calls to a provider cross the internet and may hang; they never run on the proxy's worker
//! rings. [`IdpRuntime`] is one thread with a tokio runtime: a handler hands a future over and
//! awaits its `JoinHandle`, which works from any runtime (tokio-uring workers included), and
//! every exchange is bounded by `idp_timeout_ms` so a provider that is down or slow costs the
//! user a 502 page within that bound, never a hang.
//!
//! A [`Provider`] lives across reloads (kept by [`crate::AccessApp`] while its settings stay
//! the same), with its HTTP client (rustls, no redirects followed: a provider that redirects
//! its token endpoint could point the edge anywhere), its discovery document, and its signing
//! keys (JWKS), fetched again on an ID token with an unknown `kid`, at most once per
//! `jwks_refetch_min_secs`.

use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use openidconnect::{
    core::{
        CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreJsonWebKeySet, CoreProviderMetadata,
    },
    reqwest, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse as _,
};
use tokio::sync::oneshot;

use crate::config::ProviderSettings;

/// The discovery document is read again after this long (endpoints rarely move).
const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);
/// An ID token issued longer ago than this (or this far in the future) is refused: the code
/// it came with was minted moments ago.
const MAX_IAT_AGE: Duration = Duration::from_secs(600);
const MAX_IAT_SKEW: Duration = Duration::from_secs(60);

/// The runtime that talks to identity providers.
pub struct IdpRuntime {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl IdpRuntime {
    pub fn start() -> std::io::Result<IdpRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("outpost-access-idp")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new().name("outpost-access".into()).spawn(move || {
            let _ = rt.block_on(stopped);
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(IdpRuntime { handle, stop: Mutex::new(Some(stop)), thread: Mutex::new(Some(thread)) })
    }

    /// Runs `fut` on this runtime and waits for it from the caller's.
    pub async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.handle.spawn(fut).await.ok()
    }

    /// Spawns background work (key refresh) that ends when `fut` does.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }
}

impl Drop for IdpRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = s.send(());
        }
        // Joining from inside the runtime would wait for itself.
        if tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.handle.id()) {
            return;
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// Why an exchange with a provider failed. Messages never carry the client secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdpError {
    /// Connection refused, TLS failure, a broken answer to discovery.
    Unreachable(String),
    /// No answer within the bound.
    Timeout,
    /// The provider answered with an OAuth error (`invalid_grant`, ...).
    Refused(String),
    /// The ID token failed a check (signature, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`).
    InvalidToken(String),
}

impl fmt::Display for IdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdpError::Unreachable(m) => write!(f, "provider unreachable: {m}"),
            IdpError::Timeout => f.write_str("provider did not answer in time"),
            IdpError::Refused(m) => write!(f, "provider refused: {m}"),
            IdpError::InvalidToken(m) => write!(f, "ID token invalid: {m}"),
        }
    }
}

/// Who the provider says the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
}

struct Metadata {
    doc: CoreProviderMetadata,
    fetched: Instant,
    /// When the JWKS in `doc` was last fetched.
    jwks_fetched: Instant,
}

/// One identity provider: settings, HTTP client, cached discovery and keys.
pub struct Provider {
    pub settings: ProviderSettings,
    http: reqwest::Client,
    meta: Mutex<Option<Arc<Metadata>>>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider").field("name", &self.settings.name).finish_non_exhaustive()
    }
}

/// What [`Provider::authorize_url`] needs of a login.
pub struct AuthRequest {
    pub redirect_uri: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Ask the provider to authenticate again (`prompt=login`): "sign in as someone else".
    pub prompt_login: bool,
}

impl Provider {
    pub fn new(settings: ProviderSettings, timeout: Duration) -> Result<Provider, String> {
        let mut b = reqwest::ClientBuilder::new()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("outpost-access/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("ca_file of provider {}: {e}", settings.name))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let http =
            b.build().map_err(|e| format!("HTTP client for provider {}: {e}", settings.name))?;
        Ok(Provider { settings, http, meta: Mutex::new(None) })
    }

    fn cached(&self) -> Option<Arc<Metadata>> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The discovery document (and keys), fetched when missing or old.
    async fn metadata(&self) -> Result<Arc<Metadata>, IdpError> {
        if let Some(m) = self.cached() {
            if m.fetched.elapsed() < METADATA_MAX_AGE {
                return Ok(m);
            }
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| IdpError::Unreachable(format!("issuer URL: {e}")))?;
        let doc = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| IdpError::Unreachable(error_chain(&e)))?;
        let now = Instant::now();
        let m = Arc::new(Metadata { doc, fetched: now, jwks_fetched: now });
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
        tracing::info!(target: "outpost_access::idp", provider = %self.settings.name, "discovery document loaded");
        Ok(m)
    }

    /// The provider's keys again, unless they were fetched less than `min_age` ago.
    async fn refetch_jwks(
        &self,
        m: &Arc<Metadata>,
        min_age: Duration,
    ) -> Result<Option<Arc<Metadata>>, IdpError> {
        if m.jwks_fetched.elapsed() < min_age {
            return Ok(None);
        }
        let jwks = CoreJsonWebKeySet::fetch_async(m.doc.jwks_uri(), &self.http)
            .await
            .map_err(|e| IdpError::Unreachable(error_chain(&e)))?;
        let doc = m.doc.clone().set_jwks(jwks);
        let fresh = Arc::new(Metadata { doc, fetched: m.fetched, jwks_fetched: Instant::now() });
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        tracing::info!(target: "outpost_access::idp", provider = %self.settings.name, "signing keys fetched again (unknown kid)");
        Ok(Some(fresh))
    }

    /// Where to send the browser.
    pub async fn authorize_url(&self, req: AuthRequest) -> Result<String, IdpError> {
        let m = self.metadata().await?;
        let client = CoreClient::from_provider_metadata(
            m.doc.clone(),
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.expose().to_owned())),
        )
        .set_redirect_uri(
            RedirectUrl::new(req.redirect_uri)
                .map_err(|e| IdpError::Unreachable(format!("redirect URI: {e}")))?,
        );
        let challenge =
            PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(req.pkce_verifier));
        let (state, nonce) = (req.state, req.nonce);
        let mut a = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge);
        for s in self.settings.scopes.iter().filter(|s| *s != "openid") {
            a = a.add_scope(Scope::new(s.clone()));
        }
        if req.prompt_login {
            a = a.add_prompt(CoreAuthPrompt::Login);
        }
        Ok(a.url().0.to_string())
    }

    /// Exchanges `code` (with the PKCE verifier) and checks the ID token: signature against
    /// the provider's keys (fetched again once on an unknown `kid`, rate-limited), `iss`,
    /// `aud`, `azp`, `exp`, `iat`, `nonce`.
    pub async fn exchange(
        &self,
        code: String,
        pkce_verifier: String,
        redirect_uri: String,
        nonce: String,
        jwks_refetch_min: Duration,
    ) -> Result<Identity, IdpError> {
        let mut m = self.metadata().await?;
        let client_id = ClientId::new(self.settings.client_id.clone());
        let secret = ClientSecret::new(self.settings.client_secret.expose().to_owned());
        let redirect = RedirectUrl::new(redirect_uri)
            .map_err(|e| IdpError::Unreachable(format!("redirect URI: {e}")))?;
        let client = CoreClient::from_provider_metadata(
            m.doc.clone(),
            client_id.clone(),
            Some(secret.clone()),
        )
        .set_redirect_uri(redirect.clone());
        let resp = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| IdpError::Unreachable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    IdpError::Refused(match r.error_description() {
                        Some(d) => format!("{} ({d})", r.error()),
                        None => r.error().to_string(),
                    })
                }
                RequestTokenError::Request(e) => {
                    if error_chain(&e).contains("timed out") {
                        IdpError::Timeout
                    } else {
                        IdpError::Unreachable(error_chain(&e))
                    }
                }
                RequestTokenError::Parse(e, _) => {
                    IdpError::Refused(format!("unreadable token response: {e}"))
                }
                RequestTokenError::Other(m) => IdpError::Refused(m),
            })?;
        let id_token = resp
            .id_token()
            .ok_or_else(|| IdpError::InvalidToken("no ID token in the answer".into()))?;
        let nonce = Nonce::new(nonce);
        let mut refetched = false;
        loop {
            let client = CoreClient::from_provider_metadata(
                m.doc.clone(),
                client_id.clone(),
                Some(secret.clone()),
            );
            let verifier = client.id_token_verifier().set_issue_time_verifier_fn(|iat| {
                let now = chrono_now();
                let age = now - iat.timestamp();
                if age > MAX_IAT_AGE.as_secs() as i64 {
                    Err(format!("issued {age} s ago"))
                } else if -age > MAX_IAT_SKEW.as_secs() as i64 {
                    Err("issued in the future".into())
                } else {
                    Ok(())
                }
            });
            match id_token.claims(&verifier, &nonce) {
                Ok(claims) => {
                    // azp: when present it must be us; with several audiences it must be there.
                    match claims.authorized_party() {
                        Some(azp) if **azp != *client_id => {
                            return Err(IdpError::InvalidToken(format!(
                                "azp is {}, not this client",
                                **azp
                            )))
                        }
                        None if claims.audiences().len() > 1 => {
                            return Err(IdpError::InvalidToken(
                                "several audiences and no azp".into(),
                            ))
                        }
                        _ => {}
                    }
                    return Ok(Identity {
                        subject: claims.subject().to_string(),
                        email: claims.email().map(|e| e.to_string()),
                        email_verified: claims.email_verified().unwrap_or(false),
                    });
                }
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !refetched => {
                    refetched = true;
                    match self.refetch_jwks(&m, jwks_refetch_min).await? {
                        Some(fresh) => m = fresh,
                        None => {
                            return Err(IdpError::InvalidToken(
                                "signed with a key the provider did not publish (keys fetched again too recently)".into(),
                            ))
                        }
                    }
                }
                Err(e) => return Err(IdpError::InvalidToken(error_chain(&e))),
            }
        }
    }
}

fn chrono_now() -> i64 {
    crate::token::unix_now() as i64
}

/// An error and its sources on one line (reqwest's own message says little: "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Providers of one generation by name, reusing the ones whose settings did not change.
pub fn reuse(
    previous: &[Arc<Provider>],
    settings: &[ProviderSettings],
    timeout: Duration,
) -> Result<Vec<Arc<Provider>>, String> {
    settings
        .iter()
        .map(|s| match previous.iter().find(|p| p.settings == *s) {
            Some(p) => Ok(p.clone()),
            None => Provider::new(s.clone(), timeout).map(Arc::new),
        })
        .collect()
}
