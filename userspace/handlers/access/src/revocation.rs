//! Revocation: sessions and users whose app tokens are refused before those tokens expire, on
//! every node sharing the store.
//!
//! A revocation is a record in the store (namespace [`NS`]) written in the same transaction
//! that ends the sessions it covers, and that bumps a generation number ([`NS_GEN`]); the
//! record's key is its generation, zero-padded, so keys sort in generation order. The bump is
//! a compare-and-set on one row, so revocations commit one after the other in generation
//! order, on any backend: a node that has seen generation `n` has seen every one before it.
//!
//! Every node reads the generation every [`POLL_EVERY`] (one point read) and, when it moved,
//! the records after the last one it applied (one range read). The check on a request,
//! [`Revocations::is_revoked`], is in memory: no store round trip per request. The node that
//! makes a revocation applies it at once, before answering.
//!
//! A record expires from the store when every token it covers has expired (`until`: now + the
//! app-token lifetime + the leeway), and from memory at the same time; a user's is kept for
//! the session lifetime if that is longer, so a session created while the user was being
//! revoked never comes back.
//!
//! While the store cannot be read, a node keeps the revocations it has and honours other
//! tokens until their own expiry (a store outage must not log everybody out, nor let anyone
//! in who was not); it says so in its log and in `outpost_access_revocations_stale`. Once the
//! store answers again, the first read applies every revocation it missed.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use outpost_store::{Abort, Op, Store, StoreError, TxnOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    state::SessionRecord,
    token::{self, Claims, LEEWAY_SECS},
};

/// Store namespace of the revocation records, keyed by their generation.
pub const NS: &str = "access.revoked";
/// Store namespace of the generation number (one key, [`GEN_KEY`]).
pub const NS_GEN: &str = "access.revoked.gen";
const GEN_KEY: &str = "gen";
/// How often a node reads the generation: the 2 s bound is this plus one store read.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Records read per range read.
const PAGE: usize = 512;
/// Attempts of a revocation whose generation bump lost a race with another node's.
const ATTEMPTS: usize = 32;

/// One revocation as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Sessions (store keys, the tokens' `sid`) whose tokens are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sids: Vec<String>,
    /// A user (email, or `<provider>:<subject>`) whose tokens issued up to `at_ms` are
    /// refused, and whose sessions created up to then count as ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When it was made, Unix milliseconds (the revoking node's clock).
    pub at_ms: u64,
    /// Unix seconds after which no token it covers is valid anyway.
    pub until: u64,
    /// The node (or operator's host) that made it.
    pub node: String,
}

/// What a revocation did.
#[derive(Debug)]
pub enum Outcome {
    /// Committed with this generation; the caller's ops' results, in order.
    Done { gen: u64, results: Vec<Option<Vec<u8>>> },
    /// The caller's op `op` aborted the transaction: nothing was written.
    Aborted { op: usize, why: Abort },
}

/// How long tokens and sessions live: how long a revocation must be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// `app_token_lifetime_secs`.
    pub app_token: Duration,
    /// `session_lifetime_secs`.
    pub session: Duration,
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        let d = crate::config::AccessConfig::default();
        Lifetimes {
            app_token: Duration::from_secs(d.app_token_lifetime_secs),
            session: Duration::from_secs(d.session_lifetime_secs),
        }
    }
}

impl Lifetimes {
    /// How long a revocation of sessions (or of a user: `user`) is kept.
    pub fn keep(&self, user: bool) -> Duration {
        let tokens = self.app_token + Duration::from_secs(LEEWAY_SECS);
        if user {
            tokens.max(self.session)
        } else {
            tokens
        }
    }
}

/// A user's cutoff, in memory.
#[derive(Clone, Copy, Debug)]
struct Cutoff {
    at_ms: u64,
    until: u64,
}

/// What this node refuses.
#[derive(Default)]
struct Set {
    /// The last generation read from the store.
    gen: u64,
    sids: HashMap<String, u64>,
    /// By lowercased email or subject.
    users: HashMap<String, Cutoff>,
}

impl Set {
    /// Adds `r`; true if it refuses anything it did not before.
    fn apply(&mut self, r: &Revocation) -> bool {
        let mut new = false;
        for sid in &r.sids {
            let until = self.sids.entry(sid.clone()).or_insert(0);
            new |= *until == 0;
            *until = (*until).max(r.until);
        }
        if let Some(u) = &r.user {
            let c = self.users.entry(u.to_lowercase()).or_insert(Cutoff { at_ms: 0, until: 0 });
            new |= r.at_ms > c.at_ms;
            c.at_ms = c.at_ms.max(r.at_ms);
            c.until = c.until.max(r.until);
        }
        new
    }

    fn prune(&mut self, now: u64) {
        self.sids.retain(|_, until| *until >= now);
        self.users.retain(|_, c| c.until >= now);
    }

    fn len(&self) -> usize {
        self.sids.len() + self.users.len()
    }

    fn user_cutoff(&self, email: &str, sub: &str) -> Option<u64> {
        let by = |k: &str| (!k.is_empty()).then(|| self.users.get(&k.to_lowercase())).flatten();
        [by(email), by(sub)].into_iter().flatten().map(|c| c.at_ms).max()
    }
}

/// This node's revocations, kept across reloads. Cheap to check; see the module docs.
pub struct Revocations {
    store: Store,
    set: RwLock<Set>,
    /// No revocation in memory: the check on every request is one atomic load.
    empty: AtomicBool,
    /// The lifetimes configured (updated by every reload).
    lifetimes: Mutex<Lifetimes>,
    /// Bumped whenever something new is refused; see [`Revocations::subscribe`].
    changed: watch::Sender<u64>,
    /// Whether the last read of the store failed (or none succeeded yet).
    stale: AtomicBool,
    /// Whether [`sync`](Self::sync) runs here (an edge with `[access]`).
    reading: AtomicBool,
    last_ok: Mutex<Option<Instant>>,
    failures: AtomicU64,
    /// Tokens refused as revoked.
    refused: AtomicU64,
}

impl Revocations {
    pub fn new(store: Store) -> Revocations {
        Revocations {
            store,
            set: RwLock::new(Set::default()),
            empty: AtomicBool::new(true),
            lifetimes: Mutex::new(Lifetimes::default()),
            changed: watch::channel(0).0,
            stale: AtomicBool::new(true),
            reading: AtomicBool::new(false),
            last_ok: Mutex::new(None),
            failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The lifetimes configured: how long a revocation must be kept.
    pub fn set_lifetimes(&self, l: Lifetimes) {
        *self.lifetimes.lock().unwrap_or_else(|e| e.into_inner()) = l;
    }

    pub fn lifetimes(&self) -> Lifetimes {
        *self.lifetimes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the token with `claims` is revoked: its session was, or its user was after it
    /// was issued. In memory; no store read.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        if self.empty.load(Relaxed) {
            return false;
        }
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        (!claims.sid.is_empty() && set.sids.contains_key(&claims.sid))
            || set.user_cutoff(&claims.email, &claims.sub).is_some_and(|at| claims.iat * 1000 <= at)
    }

    /// Counts a request refused for a revoked token.
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// Whether the auth-host session `sid` with record `rec` is revoked (a session created
    /// while its user was being revoked can still be in the store). In memory.
    pub fn session_revoked(&self, sid: &str, rec: &SessionRecord) -> bool {
        if self.empty.load(Relaxed) {
            return false;
        }
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        set.sids.contains_key(sid)
            || set.user_cutoff(&rec.email, &rec.sub).is_some_and(|at| rec.created_ms <= at)
    }

    /// A receiver whose value changes whenever this node starts refusing more (a revocation
    /// made here or read from the store): holders of long-lived connections re-check their
    /// claims with [`is_revoked`](Self::is_revoked) then.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the last read of the store failed: other nodes' revocations may be missing.
    pub fn stale(&self) -> bool {
        self.stale.load(Relaxed)
    }

    /// Revokes `sids` and/or `user` in one transaction with `ops` (the caller's: ending the
    /// sessions), which come first and may abort it; then applies it on this node at once.
    pub async fn revoke(
        &self,
        sids: Vec<String>,
        user: Option<String>,
        ops: Vec<Op>,
        node: &str,
    ) -> Result<Outcome, StoreError> {
        let keep = self.lifetimes().keep(user.is_some());
        let rec = record(sids, user, node, keep);
        let outcome = write(&self.store, &rec, ops, keep).await?;
        if let Outcome::Done { gen, .. } = &outcome {
            tracing::info!(target: "outpost_access::revocation", gen, sessions = rec.sids.len(), user = rec.user.as_deref().unwrap_or(""), "revoked");
            self.apply_local(&rec);
        }
        Ok(outcome)
    }

    /// Applies `rec` without moving the generation read from the store: the revocations
    /// between that one and `rec`'s are still to be read.
    fn apply_local(&self, rec: &Revocation) {
        let new = self.set.write().unwrap_or_else(|e| e.into_inner()).apply(rec);
        self.empty.store(false, Relaxed);
        if new {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Reads what changed in the store since the last read. Call every [`POLL_EVERY`].
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.reading.store(true, Relaxed);
        let r = self.read().await;
        match &r {
            Ok(applied) => {
                *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                if self.stale.swap(false, Relaxed) && self.failures.load(Relaxed) > 0 {
                    tracing::info!(target: "outpost_access::revocation", applied, "store reachable again: revocations read, every missed one applied");
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Relaxed);
                if !self.stale.swap(true, Relaxed) || self.failures.load(Relaxed) == 1 {
                    tracing::warn!(target: "outpost_access::revocation", error = %e, "revocations cannot be read from the store: tokens are honoured until their own expiry; revocations made elsewhere apply once it answers");
                }
            }
        }
        r.map(|_| ())
    }

    /// One read; the number of records newly applied.
    async fn read(&self) -> Result<usize, StoreError> {
        let gen = match self.store.get(NS_GEN, GEN_KEY).await? {
            Some(raw) => parse_gen(&raw)?,
            None => 0,
        };
        let known = self.set.read().unwrap_or_else(|e| e.into_inner()).gen;
        let now = token::unix_now();
        if gen == known {
            self.prune(now);
            return Ok(0);
        }
        // Behind what was read before: the store was replaced; read it all again.
        let mut after = (gen > known && known > 0).then(|| key(known));
        let mut records = Vec::new();
        loop {
            let page = self.store.scan(NS, after.as_deref(), PAGE).await?;
            let full = page.len() == PAGE;
            for r in page {
                match serde_json::from_slice::<Revocation>(&r.value) {
                    Ok(rec) => records.push(rec),
                    Err(_) => {
                        tracing::error!(target: "outpost_access::revocation", key = %r.key, "unreadable revocation record skipped");
                    }
                }
                after = Some(r.key);
            }
            if !full {
                break;
            }
        }
        let mut applied = 0;
        {
            let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
            for r in &records {
                if set.apply(r) {
                    applied += 1;
                }
            }
            // Records past `gen` (committed since it was read) are read again next time:
            // applying one twice changes nothing.
            set.gen = gen;
            set.prune(now);
            self.empty.store(set.len() == 0, Relaxed);
        }
        if applied > 0 {
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(applied)
    }

    fn prune(&self, now: u64) {
        if self.empty.load(Relaxed) {
            return;
        }
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        set.prune(now);
        self.empty.store(set.len() == 0, Relaxed);
    }

    /// Series for `/metrics`; none on a node that does not read revocations.
    pub fn render(&self, out: &mut String) {
        if !self.reading.load(Relaxed) {
            return;
        }
        let active = self.set.read().unwrap_or_else(|e| e.into_inner()).len();
        let age = self
            .last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(-1.0, |t| t.elapsed().as_secs_f64());
        let _ = write!(
            out,
            "# HELP outpost_access_revocations_stale Whether this node cannot read revocations \
             from the store now (then tokens are honoured until their own expiry).\n\
             # TYPE outpost_access_revocations_stale gauge\n\
             outpost_access_revocations_stale {}\n\
             # HELP outpost_access_revocations_read_age_seconds Seconds since revocations were \
             last read from the store (-1: never).\n\
             # TYPE outpost_access_revocations_read_age_seconds gauge\n\
             outpost_access_revocations_read_age_seconds {age:.3}\n\
             # HELP outpost_access_revocation_read_failures_total Reads of revocations from the \
             store that failed.\n\
             # TYPE outpost_access_revocation_read_failures_total counter\n\
             outpost_access_revocation_read_failures_total {}\n\
             # HELP outpost_access_revocations_active Revoked sessions and users this node refuses.\n\
             # TYPE outpost_access_revocations_active gauge\n\
             outpost_access_revocations_active {active}\n\
             # HELP outpost_access_revoked_tokens_total Requests refused because their token was \
             revoked.\n\
             # TYPE outpost_access_revoked_tokens_total counter\n\
             outpost_access_revoked_tokens_total {}\n",
            u8::from(self.stale()),
            self.failures.load(Relaxed),
            self.refused.load(Relaxed),
        );
    }
}

/// Writes `rec` under the next generation, in one transaction after `ops`; retried when
/// another node took that generation first. For callers without a [`Revocations`] (the
/// command line on the store): the running nodes read it within [`POLL_EVERY`].
pub async fn write(
    store: &Store,
    rec: &Revocation,
    ops: Vec<Op>,
    ttl: Duration,
) -> Result<Outcome, StoreError> {
    let value = serde_json::to_vec(rec).map_err(|e| StoreError::Other(e.to_string()))?;
    let n = ops.len();
    for _ in 0..ATTEMPTS {
        let current = store.get(NS_GEN, GEN_KEY).await?;
        let gen = match &current {
            Some(raw) => parse_gen(raw)? + 1,
            None => 1,
        };
        let bump = match current {
            // Compare-and-set: of two nodes bumping the same generation one commits, the
            // other aborts here and tries the next.
            Some(raw) => Op::Swap {
                ns: NS_GEN.into(),
                key: GEN_KEY.into(),
                expect: raw,
                new: Some(gen.to_string().into_bytes()),
                ttl: None,
            },
            None => Op::Insert {
                ns: NS_GEN.into(),
                key: GEN_KEY.into(),
                value: gen.to_string().into_bytes(),
                ttl: None,
            },
        };
        let record = Op::Put { ns: NS.into(), key: key(gen), value: value.clone(), ttl: Some(ttl) };
        let mut all = ops.clone();
        all.extend([bump, record]);
        match store.txn(all).await? {
            TxnOutcome::Committed(mut results) => {
                results.truncate(n);
                return Ok(Outcome::Done { gen, results });
            }
            TxnOutcome::Aborted { op, why } if op < n => return Ok(Outcome::Aborted { op, why }),
            // Another revocation took this generation: read it again. (No sleep: this runs
            // on whatever runtime the caller is on, which may have no timer.)
            TxnOutcome::Aborted { .. } => {}
        }
    }
    Err(StoreError::Unavailable("too many concurrent revocations; try again".into()))
}

/// Every session of `user` (email, case-insensitive, or `<provider>:<subject>`) in the
/// store: their keys.
pub async fn sessions_of(store: &Store, user: &str) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(crate::state::NS_SESSION, after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        for r in page {
            if let Some(s) = crate::state::decode::<SessionRecord>(&r.value) {
                if s.sub == user || (!s.email.is_empty() && s.email.eq_ignore_ascii_case(user)) {
                    out.push(r.key.clone());
                }
            }
            after = Some(r.key);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Ends every session of `user` and refuses every token issued to them so far, in one
/// transaction: the sessions found are deleted and named in the record, and the user's
/// cutoff covers a session created meanwhile. The number of sessions ended.
pub async fn revoke_user(
    store: &Store,
    local: Option<&Revocations>,
    user: &str,
    node: &str,
    lifetimes: &Lifetimes,
) -> Result<usize, StoreError> {
    let sids = sessions_of(store, user).await?;
    let ops: Vec<Op> = sids
        .iter()
        .map(|s| Op::Delete { ns: crate::state::NS_SESSION.into(), key: s.clone() })
        .collect();
    let n = sids.len();
    match local {
        Some(r) => r.revoke(sids, Some(user.to_owned()), ops, node).await?,
        None => {
            let keep = lifetimes.keep(true);
            write(store, &record(sids, Some(user.to_owned()), node, keep), ops, keep).await?
        }
    };
    Ok(n)
}

/// Ends session `sid` and refuses its tokens; the session's user, if it was still there.
pub async fn revoke_session(
    store: &Store,
    local: Option<&Revocations>,
    sid: &str,
    node: &str,
    lifetimes: &Lifetimes,
) -> Result<Option<String>, StoreError> {
    let keep = lifetimes.keep(false);
    let ops = vec![Op::Take { ns: crate::state::NS_SESSION.into(), key: sid.to_owned() }];
    let sids = vec![sid.to_owned()];
    let first = match local {
        Some(r) => r.revoke(sids.clone(), None, ops, node).await?,
        None => write(store, &record(sids.clone(), None, node, keep), ops, keep).await?,
    };
    match first {
        Outcome::Done { results, .. } => Ok(results
            .into_iter()
            .next()
            .flatten()
            .and_then(|b| crate::state::decode::<SessionRecord>(&b))
            .map(|s| s.who().to_owned())),
        // No session any more (it ended or expired): its tokens may still live.
        Outcome::Aborted { .. } => {
            match local {
                Some(r) => r.revoke(sids, None, Vec::new(), node).await?,
                None => write(store, &record(sids, None, node, keep), Vec::new(), keep).await?,
            };
            Ok(None)
        }
    }
}

fn record(sids: Vec<String>, user: Option<String>, node: &str, keep: Duration) -> Revocation {
    let at_ms = now_ms();
    Revocation { sids, user, at_ms, until: at_ms / 1000 + keep.as_secs(), node: node.to_owned() }
}

/// The store key of generation `gen`: fixed width, so keys sort as numbers.
fn key(gen: u64) -> String {
    format!("{gen:020}")
}

fn parse_gen(raw: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Other("the revocation generation is not a number".into()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sid: &str, email: &str, iat: u64) -> Claims {
        let mut c = Claims::new(
            "auth.example.test",
            "wiki.example.test",
            "corp:alice",
            email,
            sid,
            Duration::from_secs(60),
        );
        c.iat = iat;
        c
    }

    #[test]
    fn sessions_and_users() {
        let mut set = Set::default();
        let now = token::unix_now();
        assert!(set.apply(&Revocation {
            sids: vec!["s1".into()],
            until: now + 60,
            ..Revocation::default()
        }));
        assert!(!set.apply(&Revocation {
            sids: vec!["s1".into()],
            until: now + 60,
            ..Revocation::default()
        }));
        assert!(set.apply(&Revocation {
            user: Some("Alice@Example.test".into()),
            at_ms: now * 1000,
            until: now + 60,
            ..Revocation::default()
        }));
        assert_eq!(set.user_cutoff("alice@example.TEST", ""), Some(now * 1000));
        assert_eq!(set.user_cutoff("", "corp:alice"), None);
        assert_eq!(set.user_cutoff("bob@example.test", "corp:bob"), None);
        set.prune(now + 61);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn check_in_memory() {
        let dir = std::env::temp_dir().join(format!("outpost-revocation-{}", std::process::id()));
        let store =
            Store::open(&outpost_store::StoreConfig::default(), &dir).expect("opening the store");
        let r = Revocations::new(store);
        let now = token::unix_now();
        let old = claims("s1", "alice@example.test", now - 10);
        assert!(!r.is_revoked(&old));
        r.apply_local(&Revocation {
            user: Some("alice@example.test".into()),
            at_ms: now * 1000,
            until: now + 60,
            ..Revocation::default()
        });
        assert!(r.is_revoked(&old), "issued before the user's revocation");
        assert!(!r.is_revoked(&claims("s2", "alice@example.test", now + 2)), "issued after");
        assert!(!r.is_revoked(&claims("s1", "bob@example.test", now - 10)));
        let mut rx = r.subscribe();
        r.apply_local(&Revocation {
            sids: vec!["s3".into()],
            until: now + 60,
            ..Revocation::default()
        });
        assert!(rx.has_changed().unwrap(), "a new revocation notifies");
        rx.mark_unchanged();
        assert!(r.is_revoked(&claims("s3", "carol@example.test", now + 5)));
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }
}
