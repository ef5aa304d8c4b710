//! What the endpoints of one configuration generation share: the resolved settings, the
//! providers, and the long-lived parts ([`Shared`]) that outlive reloads; URL building,
//! minting (session, app token, one-time code) and the answers common to several endpoints.

use std::{sync::Arc, time::Instant};

use outpost_api::{Audit, AuditEvent, Reply, Session};
use outpost_store::{Op, Store, StoreError, TxnOutcome};

use crate::{
    config::Settings,
    idp::{IdpRuntime, Provider},
    keys::KeyRing,
    metrics::{Endpoint, Metrics, Outcome},
    pages::{self, link},
    policy::{self, AppPolicy},
    revocation::Revocations,
    state::{self, CodeRecord, SessionRecord, NS_CODE, NS_INTENT, NS_SESSION},
    token::Claims,
};

/// Kept by [`crate::AccessApp`] for the life of the process.
pub struct Shared {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub revocations: Arc<Revocations>,
    pub rt: IdpRuntime,
    pub metrics: Arc<Metrics>,
}

/// One configuration generation.
pub struct Gen {
    pub s: Settings,
    pub providers: Vec<Arc<Provider>>,
    pub shared: Arc<Shared>,
    pub audit: Audit,
    /// This node's name, for what it writes to the store.
    pub node: String,
}

impl Gen {
    /// `https://host` (with the port when it is not 443).
    pub fn base_url(&self, host: &str) -> String {
        match self.s.https_port {
            443 => format!("https://{host}"),
            p => format!("https://{host}:{p}"),
        }
    }

    /// The login page for `app` returning to `rd`.
    pub fn login_url(&self, app: &str, rd: &str) -> String {
        let q = serde_urlencoded::to_string([("app", app), ("rd", rd)]).unwrap_or_default();
        format!("{}/login?{q}", self.base_url(&self.s.auth_host))
    }

    /// The redirect URI registered at the providers.
    pub fn callback_url(&self) -> String {
        format!("{}/callback", self.base_url(&self.s.auth_host))
    }

    pub fn authorized_path(&self) -> String {
        format!("{}/authorized", self.s.reserved_prefix)
    }

    pub fn logout_path(&self) -> String {
        format!("{}/logout", self.s.reserved_prefix)
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.settings.name == name)
    }

    /// The application a login for `host` returning to `rd` is for: the one covering that
    /// path, else the host's first (a return path outside every prefix still needs a token
    /// for the host to come back to).
    pub fn app_for(&self, host: &str, rd: &str) -> Option<&AppPolicy> {
        let path = outpost_api::handler::path_of(rd);
        policy::select(&self.s.apps, host, path)
            .or_else(|| self.s.apps.iter().find(|a| a.host.matches(host)))
    }

    /// A `<kind>` audit event about the request of `s`.
    pub fn event(&self, s: &Session<'_>, kind: &str, outcome: &str) -> AuditEvent {
        self.audit.request_event(s, kind, outcome)
    }

    pub fn record(&self, s: &mut Session<'_>, e: AuditEvent) {
        self.audit.record(s, e);
    }

    pub fn count(&self, e: Endpoint, o: Outcome) {
        self.shared.metrics.count(e, o);
    }

    pub fn time(&self, e: Endpoint, started: Instant, excluded: std::time::Duration) {
        self.shared.metrics.time(e, started.elapsed().saturating_sub(excluded));
    }

    /// Signs an app token for `app` from `session` (store key `sid`), and stores it behind a
    /// fresh one-time code; returns the URL that redeems the code on the app host.
    pub async fn mint_code(
        &self,
        sid: &str,
        session: &SessionRecord,
        app: &str,
        rd: &str,
    ) -> Result<String, StoreError> {
        let (op, url) = self.code(sid, session, app, rd).await?;
        match self.shared.store.txn(vec![op]).await? {
            TxnOutcome::Committed(_) => Ok(url),
            TxnOutcome::Aborted { .. } => Err(collided()),
        }
    }

    /// As [`mint_code`](Self::mint_code), for a caller that stores the code in a transaction
    /// of its own: the op that stores it, and the URL that redeems it.
    pub async fn code(
        &self,
        sid: &str,
        session: &SessionRecord,
        app: &str,
        rd: &str,
    ) -> Result<(Op, String), StoreError> {
        let token = self.sign(sid, session, app).await?;
        let code = crate::random_token(32);
        let q = serde_urlencoded::to_string([("code", code.as_str())]).unwrap_or_default();
        let url = format!("{}{}?{q}", self.base_url(app), self.authorized_path());
        let rec = CodeRecord { app: app.to_owned(), rd: rd.to_owned(), token };
        let op = Op::Insert {
            ns: NS_CODE.into(),
            key: code,
            value: state::encode(&rec),
            ttl: Some(self.s.code_lifetime),
        };
        Ok((op, url))
    }

    /// An app token for `app` from the session stored under `sid`.
    pub async fn sign(
        &self,
        sid: &str,
        session: &SessionRecord,
        app: &str,
    ) -> Result<String, StoreError> {
        let mut claims = Claims::new(
            &self.s.auth_host,
            app,
            &session.sub,
            &session.email,
            sid,
            self.s.app_token_lifetime,
        );
        claims.email_verified = session.email_verified;
        self.shared.keys.sign(&claims).await
    }

    /// The live session of the browser's session cookie, if any: (store key, record).
    pub async fn live_session(
        &self,
        cookie: Option<&str>,
    ) -> Result<Option<(String, SessionRecord)>, StoreError> {
        let Some(cookie) = cookie.filter(|c| !c.is_empty() && c.len() <= 128) else {
            return Ok(None);
        };
        let sid = state::digest(cookie);
        let rec = self.shared.store.get(NS_SESSION, &sid).await?;
        Ok(rec
            .and_then(|b| state::decode::<SessionRecord>(&b))
            // A session created while its user was being revoked is not deleted yet.
            .filter(|r| !self.shared.revocations.session_revoked(&sid, r))
            .map(|r| (sid, r)))
    }

    /// A new session: (cookie value, store key, the op that stores it). The cookie is 32
    /// random bytes; the store keeps only its SHA-256, so a store reader cannot use it.
    pub fn new_session(&self, rec: &SessionRecord) -> (String, String, Op) {
        let cookie = crate::random_token(32);
        let sid = state::digest(&cookie);
        let op = Op::Insert {
            ns: NS_SESSION.into(),
            key: sid.clone(),
            value: state::encode(rec),
            ttl: Some(self.s.session_lifetime),
        };
        (cookie, sid, op)
    }

    /// Deletes the login's intent.
    pub fn drop_intent(&self, state: &str) -> Op {
        Op::Delete { ns: NS_INTENT.into(), key: state.into() }
    }

    /// The answer when the store cannot be reached: 503, a page for browsers.
    pub fn unavailable(&self, e: &StoreError) -> Reply {
        tracing::warn!(target: "outpost_access", error = %e, "store unavailable");
        pages::message(
            503,
            "Try again in a moment",
            "Sign-in is unavailable right now. Nothing was lost; try again in a moment.",
            None,
            Vec::new(),
        )
        .header("Retry-After", "2")
    }

    /// A 400 page for bad input, with a way back when the app is known.
    pub fn bad_request(&self, message: &str) -> Reply {
        pages::message(400, "This sign-in link is not valid", message, None, Vec::new())
    }

    /// A 400 page for a login that cannot go on, offering to start again.
    pub fn start_again(&self, title: &str, message: &str, app: Option<(&str, &str)>) -> Reply {
        let links = match app {
            Some((app, rd)) => vec![link(self.login_url(app, rd), "Sign in again")],
            None => Vec::new(),
        };
        pages::message(400, title, message, None, links)
    }
}

/// A 256-bit random session or code key that is already taken: something else is wrong.
pub fn collided() -> StoreError {
    StoreError::Other("session or code key collided; try again".into())
}
