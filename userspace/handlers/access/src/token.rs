//! App tokens: the JWT the edge signs for one app host (ES256, with a `kid`), and its checks.
//!
//! Verification is in-process: the signature against a known edge key, `alg` exactly ES256
//! (so `none` and HS256-signed-with-the-public-key are refused before any key is used), `iss`
//! the auth host, `aud` this host, `exp` and `nbf` with [`LEEWAY_SECS`] of skew. A token whose
//! only fault is its age comes back as [`Checked::Expired`], so the caller can renew it from a
//! live session.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    decode, decode_header, errors::ErrorKind as JwtError, Algorithm, DecodingKey, Header,
    Validation,
};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Longest token looked at; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of an app token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The auth host.
    pub iss: String,
    /// The app host.
    pub aud: String,
    /// The user at the identity provider: `<provider>:<subject>`.
    pub sub: String,
    pub email: String,
    /// Whether the provider marked the email verified: policies by email admit only those.
    #[serde(default)]
    pub email_verified: bool,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// Unique per token.
    pub jti: String,
    /// The auth-host session this token came from (its store key, not the cookie value), so
    /// an expired token can be renewed while that session lives and not after a logout.
    pub sid: String,
}

impl Claims {
    /// Claims for `aud`, valid from now for `lifetime`.
    pub fn new(
        iss: &str,
        aud: &str,
        sub: &str,
        email: &str,
        sid: &str,
        lifetime: Duration,
    ) -> Claims {
        let now = unix_now();
        Claims {
            iss: iss.into(),
            aud: aud.into(),
            sub: sub.into(),
            email: email.into(),
            email_verified: false,
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs(),
            jti: crate::random_token(16),
            sid: sid.into(),
        }
    }
}

impl Claims {
    /// Who this is, for audit events and pages: the email, else the subject.
    pub fn who(&self) -> &str {
        if self.email.is_empty() {
            &self.sub
        } else {
            &self.email
        }
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not three base64url parts of JSON, or too long.
    Malformed,
    /// `alg` is not ES256 (`none`, HS256, RS256, ...).
    Algorithm,
    /// No `kid`, or one no edge key has.
    UnknownKey,
    /// The signature does not verify: the payload or the signature was changed.
    BadSignature,
    /// `aud` is another host: a token for another app.
    WrongAudience,
    /// `iss` is not this auth host.
    WrongIssuer,
    /// `nbf` more than the leeway in the future.
    NotYetValid,
    /// A required claim is missing or of the wrong type.
    MissingClaim,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed token",
            Refusal::Algorithm => "token algorithm not allowed",
            Refusal::UnknownKey => "token signed with an unknown key",
            Refusal::BadSignature => "token signature invalid",
            Refusal::WrongAudience => "token for another application",
            Refusal::WrongIssuer => "token from another issuer",
            Refusal::NotYetValid => "token not yet valid",
            Refusal::MissingClaim => "token claims incomplete",
        }
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Shared, so the per-request check hands out the cached claims without copying them.
    Valid(Arc<Claims>),
    /// Genuine and for this host, but past `exp` (beyond the leeway).
    Expired(Arc<Claims>),
    Refused(Refusal),
}

/// The `kid` of a token whose header is ES256, or why not. Reads the header only.
pub fn key_id(token: &str) -> Result<String, Refusal> {
    if token.len() > MAX_TOKEN_LEN || token.bytes().filter(|&b| b == b'.').count() != 2 {
        return Err(Refusal::Malformed);
    }
    let header: Header = decode_header(token).map_err(|e| match e.kind() {
        // An `alg` this library does not know (`none`) fails to parse as a header.
        JwtError::Json(_) | JwtError::Base64(_) | JwtError::Utf8(_) => {
            if header_alg(token).is_some_and(|a| a != "ES256") {
                Refusal::Algorithm
            } else {
                Refusal::Malformed
            }
        }
        _ => Refusal::Malformed,
    })?;
    if header.alg != Algorithm::ES256 {
        return Err(Refusal::Algorithm);
    }
    header.kid.ok_or(Refusal::UnknownKey)
}

/// The raw `alg` of a header that did not parse, to tell `none` from garbage.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

/// Verifies `token` with `key` (the public key of the token's `kid`) for app host `aud` and
/// issuer `iss`.
pub fn check(token: &str, key: &DecodingKey, iss: &str, aud: &str) -> Checked {
    let mut v = Validation::new(Algorithm::ES256);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    v.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
    match decode::<Claims>(token, key, &v) {
        Ok(d) => Checked::Valid(Arc::new(d.claims)),
        Err(e) => match e.kind() {
            JwtError::ExpiredSignature => {
                // Genuine (the signature is checked before the times) but old: read it again
                // without the expiry check, for renewal.
                v.validate_exp = false;
                match decode::<Claims>(token, key, &v) {
                    Ok(d) => Checked::Expired(Arc::new(d.claims)),
                    Err(e) => Checked::Refused(refusal(e.kind())),
                }
            }
            k => Checked::Refused(refusal(k)),
        },
    }
}

fn refusal(k: &JwtError) -> Refusal {
    match k {
        JwtError::InvalidSignature => Refusal::BadSignature,
        JwtError::InvalidAudience => Refusal::WrongAudience,
        JwtError::InvalidIssuer => Refusal::WrongIssuer,
        JwtError::ImmatureSignature => Refusal::NotYetValid,
        JwtError::InvalidAlgorithm
        | JwtError::InvalidAlgorithmName
        | JwtError::UnsupportedAlgorithm
        | JwtError::MissingAlgorithm => Refusal::Algorithm,
        JwtError::MissingRequiredClaim(_) => Refusal::MissingClaim,
        // A signature that is not even a well-formed P-256 signature was tampered with too.
        JwtError::InvalidEcdsaKey => Refusal::BadSignature,
        JwtError::Json(_) | JwtError::InvalidClaimFormat(_) => Refusal::MissingClaim,
        _ => Refusal::Malformed,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};

    use super::*;
    use crate::keys::EdgeKey;

    fn claims(aud: &str, lifetime: u64) -> Claims {
        Claims::new(
            "auth.example.test",
            aud,
            "corp:alice",
            "alice@example.test",
            "sid",
            Duration::from_secs(lifetime),
        )
    }

    #[test]
    fn sign_and_check() {
        let k = EdgeKey::generate().unwrap();
        let t = k.sign(&claims("wiki.example.test", 60)).unwrap();
        assert_eq!(key_id(&t), Ok(k.kid.clone()));
        let dk = k.decoding_key();
        assert!(
            matches!(check(&t, &dk, "auth.example.test", "wiki.example.test"), Checked::Valid(c) if c.email == "alice@example.test")
        );
        assert_eq!(
            check(&t, &dk, "auth.example.test", "dash.example.test"),
            Checked::Refused(Refusal::WrongAudience)
        );
        assert_eq!(
            check(&t, &dk, "auth.other.test", "wiki.example.test"),
            Checked::Refused(Refusal::WrongIssuer)
        );
        // Expired beyond the leeway: still recognised as genuine.
        let mut old = claims("wiki.example.test", 60);
        old.exp = unix_now() - LEEWAY_SECS - 5;
        old.iat = old.exp - 60;
        old.nbf = old.iat;
        let t_old = k.sign(&old).unwrap();
        assert!(matches!(
            check(&t_old, &dk, "auth.example.test", "wiki.example.test"),
            Checked::Expired(_)
        ));
        // Within the leeway: valid.
        old.exp = unix_now() - LEEWAY_SECS + 10;
        let t_skew = k.sign(&old).unwrap();
        assert!(matches!(
            check(&t_skew, &dk, "auth.example.test", "wiki.example.test"),
            Checked::Valid(_)
        ));
        // Another key's signature.
        let other = EdgeKey::generate().unwrap();
        assert_eq!(
            check(&t, &other.decoding_key(), "auth.example.test", "wiki.example.test"),
            Checked::Refused(Refusal::BadSignature)
        );
    }

    #[test]
    fn tampering_and_algorithms() {
        let k = EdgeKey::generate().unwrap();
        let dk = k.decoding_key();
        let t = k.sign(&claims("wiki.example.test", 60)).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        // Payload changed, signature kept.
        let mut c = claims("wiki.example.test", 60);
        c.email = "mallory@example.test".into();
        let forged =
            format!("{}.{}.{}", parts[0], B64.encode(serde_json::to_vec(&c).unwrap()), parts[2]);
        assert_eq!(
            check(&forged, &dk, "auth.example.test", "wiki.example.test"),
            Checked::Refused(Refusal::BadSignature)
        );
        // Signature changed.
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
        assert_eq!(
            check(&forged, &dk, "auth.example.test", "wiki.example.test"),
            Checked::Refused(Refusal::BadSignature)
        );
        // alg none.
        let none = format!(
            "{}.{}.",
            B64.encode(format!("{{\"alg\":\"none\",\"kid\":\"{}\"}}", k.kid)),
            parts[1]
        );
        assert_eq!(key_id(&none), Err(Refusal::Algorithm));
        // HS256 with the public key as the secret.
        let hs = jsonwebtoken::encode(
            &Header { kid: Some(k.kid.clone()), ..Header::new(Algorithm::HS256) },
            &claims("wiki.example.test", 60),
            &jsonwebtoken::EncodingKey::from_secret(k.public_sec1().as_slice()).unwrap(),
        )
        .unwrap();
        assert_eq!(key_id(&hs), Err(Refusal::Algorithm));
        assert_eq!(
            check(&hs, &dk, "auth.example.test", "wiki.example.test"),
            Checked::Refused(Refusal::Algorithm)
        );
        // No kid.
        let no_kid = format!("{}.{}.{}", B64.encode("{\"alg\":\"ES256\"}"), parts[1], parts[2]);
        assert_eq!(key_id(&no_kid), Err(Refusal::UnknownKey));
        for garbage in ["", "a.b", "a.b.c", "...", &"x.".repeat(5000)] {
            assert!(key_id(garbage).is_err(), "{garbage}");
        }
    }
}
