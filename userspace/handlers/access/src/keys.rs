//! The edge's signing keys: ES256 key pairs kept in the store (namespace `access.keys`), so
//! every node signs and verifies with the same set.
//!
//! - The first node that needs a key generates one (a race between nodes leaves two valid
//!   keys, which is harmless: both verify, the newest signs).
//! - `outpost access keys rotate` adds a key and marks the others retired; every node signs
//!   with the newest active key from its next refresh on (every [`REFRESH_EVERY`], and at
//!   once on a token whose `kid` it does not know).
//! - A retired key keeps verifying until the last token it signed has expired (retirement +
//!   the app-token lifetime + the leeway); then a node deletes it from the store.
//! - Private keys never reach a log: [`EdgeKey`]'s `Debug` shows the `kid` only, and errors
//!   name keys by `kid`.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use outpost_store::{Abort, Inserted, Op, Store, StoreError, TxnOutcome};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde::{Deserialize, Serialize};

use crate::token::{self, Checked, Claims, Refusal, LEEWAY_SECS};

/// Store namespace of the keys.
pub const NS: &str = "access.keys";
/// How often a node reads the key set again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// On an unknown `kid`, the key set is read again at most this often.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(1);
/// A retired key's row also expires in the store after this long, in case no node is left
/// to delete it.
const RETIRED_ROW_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Verified tokens remembered per node (a signature check costs far more than a lookup).
const VERIFIED_CACHE: usize = 50_000;

/// A key as the store keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct KeyRecord {
    kid: String,
    alg: String,
    /// PKCS#8 DER, base64url.
    private_pkcs8: String,
    x: String,
    y: String,
    created_ms: u64,
    retired_ms: Option<u64>,
}

/// One edge key pair.
pub struct EdgeKey {
    pub kid: String,
    pub created_ms: u64,
    pub retired_ms: Option<u64>,
    pkcs8: Vec<u8>,
    x: String,
    y: String,
    enc: EncodingKey,
    dec: DecodingKey,
}

impl fmt::Debug for EdgeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeKey")
            .field("kid", &self.kid)
            .field("created_ms", &self.created_ms)
            .field("retired_ms", &self.retired_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl EdgeKey {
    /// A fresh P-256 key pair.
    pub fn generate() -> Result<EdgeKey, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError("cannot generate a P-256 key".into()))?;
        EdgeKey::from_pkcs8(doc.as_ref().to_vec(), now_ms(), None)
    }

    fn from_pkcs8(
        pkcs8: Vec<u8>,
        created_ms: u64,
        retired_ms: Option<u64>,
    ) -> Result<EdgeKey, KeyError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| KeyError("stored key is not a P-256 PKCS#8 key".into()))?;
        let public = pair.public_key().as_ref();
        if public.len() != 65 || public[0] != 0x04 {
            return Err(KeyError("unexpected public key form".into()));
        }
        let x = B64.encode(&public[1..33]);
        let y = B64.encode(&public[33..65]);
        let kid = thumbprint(&x, &y);
        let dec = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| KeyError(format!("key {kid}: {e}")))?;
        let enc = EncodingKey::from_ec_der(&pkcs8);
        Ok(EdgeKey { kid, created_ms, retired_ms, pkcs8, x, y, enc, dec })
    }

    fn from_record(r: &KeyRecord) -> Result<EdgeKey, KeyError> {
        if r.alg != "ES256" {
            return Err(KeyError(format!("key {}: algorithm {} not supported", r.kid, r.alg)));
        }
        let pkcs8 = B64
            .decode(&r.private_pkcs8)
            .map_err(|_| KeyError(format!("key {}: private key not base64url", r.kid)))?;
        let k = EdgeKey::from_pkcs8(pkcs8, r.created_ms, r.retired_ms)?;
        if k.kid != r.kid {
            return Err(KeyError(format!("key {}: kid does not match its key", r.kid)));
        }
        Ok(k)
    }

    fn record(&self) -> KeyRecord {
        KeyRecord {
            kid: self.kid.clone(),
            alg: "ES256".into(),
            private_pkcs8: B64.encode(&self.pkcs8),
            x: self.x.clone(),
            y: self.y.clone(),
            created_ms: self.created_ms,
            retired_ms: self.retired_ms,
        }
    }

    /// Signs `claims` (the edge's [`Claims`], or anything serializable: tests sign provider
    /// tokens with it).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let header = Header { kid: Some(self.kid.clone()), ..Header::new(Algorithm::ES256) };
        jsonwebtoken::encode(&header, claims, &self.enc)
            .map_err(|e| KeyError(format!("signing with key {}: {e}", self.kid)))
    }

    pub fn decoding_key(&self) -> DecodingKey {
        self.dec.clone()
    }

    /// The public key, SEC1 uncompressed.
    pub fn public_sec1(&self) -> Vec<u8> {
        let mut v = vec![0x04];
        v.extend(B64.decode(&self.x).unwrap_or_default());
        v.extend(B64.decode(&self.y).unwrap_or_default());
        v
    }

    /// This key as a public JWK.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "use": "sig", "alg": "ES256",
        })
    }
}

/// RFC 7638 thumbprint of a P-256 public key: the `kid`.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    B64.encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The keys this node knows.
#[derive(Default)]
struct KeySet {
    /// Newest active key.
    signing: Option<Arc<EdgeKey>>,
    /// Every key that still verifies, by kid.
    verify: HashMap<String, Arc<EdgeKey>>,
}

/// A token that verified, remembered until it expires.
struct Verified {
    /// The whole token: a hit must match it exactly, not just its signature.
    token: Box<str>,
    claims: Arc<Claims>,
}

/// This node's view of the edge keys, kept across reloads.
pub struct KeyRing {
    store: Store,
    set: RwLock<Arc<KeySet>>,
    last_refresh: Mutex<Option<Instant>>,
    /// Seconds a retired key keeps verifying: the longest app-token lifetime configured, plus
    /// the leeway. Updated by every (re)load.
    verify_grace_secs: AtomicU64,
    /// By the token's signature part (short to hash, unique per token).
    verified: RwLock<HashMap<Box<str>, Verified>>,
}

/// What [`KeyRing::rotate`] did.
#[derive(Debug)]
pub struct Rotation {
    pub new_kid: String,
    pub retired: Vec<String>,
}

impl KeyRing {
    pub fn new(store: Store) -> KeyRing {
        KeyRing {
            store,
            set: RwLock::new(Arc::new(KeySet::default())),
            last_refresh: Mutex::new(None),
            verify_grace_secs: AtomicU64::new(15 * 60 + LEEWAY_SECS),
            verified: RwLock::new(HashMap::new()),
        }
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.verify_grace_secs.store(lifetime.as_secs() + LEEWAY_SECS, Relaxed);
    }

    fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the key set from the store; deletes keys retired long enough ago that no token
    /// they signed is still valid.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let records = load(&self.store).await?;
        let grace_ms = self.verify_grace_secs.load(Relaxed) * 1000;
        let now = now_ms();
        let mut set = KeySet::default();
        for (r, raw) in records {
            if let Some(retired) = r.retired_ms {
                if retired + grace_ms < now {
                    // Only if unchanged: another node may be retiring it right now.
                    let _ = self
                        .store
                        .txn(vec![Op::Swap {
                            ns: NS.into(),
                            key: r.kid.clone(),
                            expect: raw,
                            new: None,
                            ttl: None,
                        }])
                        .await;
                    tracing::info!(target: "outpost_access::keys", kid = %r.kid, "retired edge key dropped");
                    continue;
                }
            }
            let key = match EdgeKey::from_record(&r) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    tracing::error!(target: "outpost_access::keys", error = %e, "unusable edge key in the store");
                    continue;
                }
            };
            if key.retired_ms.is_none()
                && set
                    .signing
                    .as_ref()
                    .is_none_or(|s| (s.created_ms, &s.kid) < (key.created_ms, &key.kid))
            {
                set.signing = Some(key.clone());
            }
            set.verify.insert(key.kid.clone(), key);
        }
        let old = self.current();
        let changed = old.verify.len() != set.verify.len()
            || set.verify.keys().any(|k| !old.verify.contains_key(k))
            || old.signing.as_ref().map(|k| &k.kid) != set.signing.as_ref().map(|k| &k.kid);
        if changed {
            tracing::info!(
                target: "outpost_access::keys",
                signing = set.signing.as_ref().map_or("none", |k| k.kid.as_str()),
                keys = set.verify.len(),
                "edge keys loaded"
            );
            // A dropped key must stop verifying at once, cached or not.
            self.verified.write().unwrap_or_else(|e| e.into_inner()).clear();
        }
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// The key to sign with: the newest active one, generating the first on first use.
    pub async fn signing_key(&self) -> Result<Arc<EdgeKey>, StoreError> {
        if let Some(k) = self.current().signing.clone() {
            return Ok(k);
        }
        self.refresh().await?;
        if let Some(k) = self.current().signing.clone() {
            return Ok(k);
        }
        let key = EdgeKey::generate().map_err(|e| StoreError::Other(e.to_string()))?;
        let value =
            serde_json::to_vec(&key.record()).map_err(|e| StoreError::Other(e.to_string()))?;
        match self.store.insert(NS, &key.kid, &value, None).await? {
            Inserted::Done => {
                tracing::info!(target: "outpost_access::keys", kid = %key.kid, "first edge signing key generated");
            }
            Inserted::Conflict { .. } => {}
        }
        self.refresh().await?;
        self.current()
            .signing
            .clone()
            .ok_or_else(|| StoreError::Other("no edge signing key after generating one".into()))
    }

    /// Signs `claims` with the current key.
    pub async fn sign(&self, claims: &Claims) -> Result<String, StoreError> {
        let key = self.signing_key().await?;
        key.sign(claims).map_err(|e| StoreError::Other(e.to_string()))
    }

    /// Checks an app token for host `aud`: in-process, from the cache of verified tokens or
    /// against the known keys; the store is read only for a `kid` this node does not know
    /// (a key another node just started signing with), at most once a second.
    pub async fn check(&self, token: &str, iss: &str, aud: &str) -> Checked {
        let now = token::unix_now();
        let sig = token.rsplit('.').next().unwrap_or("");
        {
            let cache = self.verified.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = cache.get(sig).filter(|v| &*v.token == token) {
                if v.claims.aud == aud && v.claims.iss == iss {
                    return if v.claims.exp + LEEWAY_SECS < now {
                        Checked::Expired(v.claims.clone())
                    } else {
                        Checked::Valid(v.claims.clone())
                    };
                }
            }
        }
        let kid = match token::key_id(token) {
            Ok(k) => k,
            Err(r) => return Checked::Refused(r),
        };
        let mut key = self.current().verify.get(&kid).cloned();
        if key.is_none() && self.may_refresh() && self.refresh().await.is_ok() {
            key = self.current().verify.get(&kid).cloned();
        }
        let Some(key) = key else { return Checked::Refused(Refusal::UnknownKey) };
        let checked = token::check(token, &key.dec, iss, aud);
        if let Checked::Valid(c) = &checked {
            let mut cache = self.verified.write().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= VERIFIED_CACHE {
                cache.retain(|_, v| v.claims.exp + LEEWAY_SECS >= now);
                if cache.len() >= VERIFIED_CACHE {
                    cache.clear();
                }
            }
            cache.insert(sig.into(), Verified { token: token.into(), claims: c.clone() });
        }
        checked
    }

    fn may_refresh(&self) -> bool {
        self.last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFRESH)
    }

    /// The public keys that verify, as a JWKS document.
    pub async fn jwks(&self) -> Result<serde_json::Value, StoreError> {
        // Publishing implies a signing key exists: origins can fetch keys before any login.
        self.signing_key().await?;
        let set = self.current();
        let mut keys: Vec<&Arc<EdgeKey>> = set.verify.values().collect();
        keys.sort_by(|a, b| (b.created_ms, &b.kid).cmp(&(a.created_ms, &a.kid)));
        Ok(serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }))
    }

    /// Adds a new signing key and retires every active one, in one transaction (a concurrent
    /// rotation elsewhere makes it fail cleanly; run it again).
    pub async fn rotate(store: &Store) -> Result<Rotation, StoreError> {
        let records = load(store).await?;
        let key = EdgeKey::generate().map_err(|e| StoreError::Other(e.to_string()))?;
        let value =
            serde_json::to_vec(&key.record()).map_err(|e| StoreError::Other(e.to_string()))?;
        let now = now_ms();
        let mut ops = vec![Op::Insert { ns: NS.into(), key: key.kid.clone(), value, ttl: None }];
        let mut retired = Vec::new();
        for (r, raw) in records {
            if r.retired_ms.is_some() {
                continue;
            }
            let mut rr = r.clone();
            rr.retired_ms = Some(now);
            let new = serde_json::to_vec(&rr).map_err(|e| StoreError::Other(e.to_string()))?;
            ops.push(Op::Swap {
                ns: NS.into(),
                key: r.kid.clone(),
                expect: raw,
                new: Some(new),
                ttl: Some(RETIRED_ROW_TTL),
            });
            retired.push(r.kid);
        }
        match store.txn(ops).await? {
            TxnOutcome::Committed(_) => Ok(Rotation { new_kid: key.kid, retired }),
            TxnOutcome::Aborted { why, .. } => Err(StoreError::Other(match why {
                Abort::Conflict(_) => "a key with the new kid exists already".into(),
                _ => "the key set changed during the rotation (another rotation?); run it again"
                    .into(),
            })),
        }
    }

    /// The keys in the store, for `outpost access keys list`.
    pub async fn list(store: &Store) -> Result<Vec<KeyInfo>, StoreError> {
        Ok(load(store)
            .await?
            .into_iter()
            .map(|(r, _)| KeyInfo {
                kid: r.kid,
                created_ms: r.created_ms,
                retired_ms: r.retired_ms,
            })
            .collect())
    }
}

/// A key, without its private part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kid: String,
    pub created_ms: u64,
    pub retired_ms: Option<u64>,
}

/// Every key record (and its raw bytes, for compare-and-set).
async fn load(store: &Store) -> Result<Vec<(KeyRecord, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(NS, after.as_deref(), 100).await?;
        let full = page.len() == 100;
        for rec in page {
            after = Some(rec.key.clone());
            match serde_json::from_slice::<KeyRecord>(&rec.value) {
                Ok(r) => out.push((r, rec.value)),
                Err(_) => {
                    tracing::error!(target: "outpost_access::keys", key = %rec.key, "unreadable edge key record")
                }
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_debug() {
        let k = EdgeKey::generate().unwrap();
        let r = k.record();
        let k2 = EdgeKey::from_record(&r).unwrap();
        assert_eq!(k.kid, k2.kid);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&r.private_pkcs8) && shown.contains(&k.kid), "{shown}");
        let mut bad = r.clone();
        bad.kid = "other".into();
        assert!(EdgeKey::from_record(&bad).is_err());
        let jwk = k.jwk();
        assert_eq!(jwk["kty"], "EC");
        assert!(jwk.get("d").is_none());
    }
}
