//! What the login flow keeps in the store, where every node sees it. One-time values are
//! taken (deleted and returned in one step), so of any number of nodes racing for one, exactly
//! one wins.
//!
//! | namespace        | key                   | lifetime           | taken at             |
//! |------------------|-----------------------|--------------------|----------------------|
//! | `access.state`   | the `state` parameter | `state_lifetime`   | `/callback`          |
//! | `access.intent`  | the `state` parameter | ≥ 1 h              | `/callback`          |
//! | `access.code`    | the one-time code     | `code_lifetime`    | `<prefix>/authorized` |
//! | `access.session` | SHA-256 of the cookie | `session_lifetime` | deleted at logout    |
//!
//! The intent (app and return path, bound to the browser, no secrets) outlives the state so
//! that a tab whose login state expired while another tab finished logging in can still pass
//! on the live session instead of failing.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const NS_STATE: &str = "access.state";
pub const NS_INTENT: &str = "access.intent";
pub const NS_CODE: &str = "access.code";
pub const NS_SESSION: &str = "access.session";

/// A login on its way to the provider.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginState {
    pub provider: String,
    pub app: String,
    pub rd: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// SHA-256 (base64url) of the binding cookie's value.
    pub binding: String,
}

/// Where a login was going, for a tab that comes back after its state expired.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Intent {
    pub app: String,
    pub rd: String,
    pub binding: String,
}

/// A one-time code: the token for one app host, waiting to be redeemed there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CodeRecord {
    pub app: String,
    pub rd: String,
    pub token: String,
}

/// An auth-host session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    /// `<provider>:<subject>`.
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub provider: String,
    pub created_ms: u64,
}

impl SessionRecord {
    /// Who this is, for audit events and pages: the email, else the subject.
    pub fn who(&self) -> &str {
        if self.email.is_empty() {
            &self.sub
        } else {
            &self.email
        }
    }
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// None for a record that does not parse (written by another version, or damaged): treated
/// as absent.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Option<T> {
    serde_json::from_slice(b).ok()
}

/// SHA-256 of `s`, base64url: how secrets are compared and how session cookies are keyed.
pub fn digest(s: &str) -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
    B64.encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}
