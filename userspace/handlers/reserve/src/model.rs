//! Reservations as store records, and every change to them as one store transaction.
//!
//! Rows (values are JSON):
//! - `reserve.name/<name>`: [`NameRow`], who holds the name; pending rows expire with the hold.
//! - `reserve.email/<email>`: [`EmailRow`], which name an email holds; same expiry.
//! - `reserve.token/<sha256 hex>`: [`TokenRow`], what a confirm token confirms. Kept past the
//!   hold so a late click gets "expired" rather than "invalid", and kept used after a
//!   confirmation so a second click gets "already confirmed".
//! - `reserve.expiry/<hold end ms, 20 digits>/<name>`: a marker per pending hold, in time
//!   order, so the expiry sweep finds holds that ended (and audits each exactly once).
//! - outbox topic `reserve.mail`: [`MailJob`], the confirmation mail.
//!
//! Uniqueness is the store's: a reservation is one [`Store::txn`] that inserts the name row
//! and the email row (each aborts on a live row) together with the token, the marker and the
//! outbox row. Nothing reads first to decide. Confirmation is one transaction of
//! compare-and-set swaps on the token, name and email rows, so a token confirms once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_store::{Abort, Op, Store, StoreError, TxnOutcome};
use serde::{Deserialize, Serialize};

use crate::{
    email::Email,
    names::Name,
    secret::{self, Secret},
};

pub const NS_NAME: &str = "reserve.name";
pub const NS_EMAIL: &str = "reserve.email";
pub const NS_TOKEN: &str = "reserve.token";
pub const NS_EXPIRY: &str = "reserve.expiry";
pub const MAIL_TOPIC: &str = "reserve.mail";

/// Tokens stay this long past the hold's end ("expired" page), and used tokens this long
/// after confirmation ("already confirmed" page).
const TOKEN_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Attempts at a compare-and-set that lost a race with a concurrent change of the same rows.
const CAS_ATTEMPTS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Confirmed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Confirmed => "confirmed",
        }
    }
}

/// `reserve.name/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRow {
    pub email: String,
    pub state: State,
    /// When reserved (unix ms); with the name, identifies this reservation.
    pub created_ms: i64,
    /// When a pending hold ends (unix ms).
    pub hold_until_ms: i64,
    /// When confirmed (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_ms: Option<i64>,
    /// Mails sent in the last hour (unix ms), while pending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mails: Vec<i64>,
}

/// `reserve.email/<email>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRow {
    pub name: String,
    pub state: State,
    pub created_ms: i64,
}

/// `reserve.token/<hash>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    pub name: String,
    pub email: String,
    pub created_ms: i64,
    pub hold_until_ms: i64,
    #[serde(default)]
    pub used: bool,
}

/// `reserve.expiry/...`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryRow {
    pub name: String,
    pub email: String,
    pub created_ms: i64,
}

/// An outbox row of [`MAIL_TOPIC`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailJob {
    pub to: String,
    pub name: String,
    /// The token, sealed with the node secret and bound to `name` ([`Secret::seal`]).
    pub sealed: String,
    pub hold_until_ms: i64,
}

/// How a reservation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// New pending hold; the mail is queued.
    Pending { hold_until_ms: i64 },
    /// The same email already holds this name, pending: the mail was queued again.
    Resent { hold_until_ms: i64 },
    /// The same email holds this name, pending, and had its mails for this hour.
    MailLimit { retry_after: Duration },
    /// The same email holds this name, confirmed.
    AlreadyConfirmed,
    /// Another email holds the name.
    NameTaken,
    /// This email holds another name.
    EmailTaken,
}

/// How a confirmation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmed {
    Confirmed {
        name: String,
        email: String,
    },
    AlreadyConfirmed {
        name: String,
    },
    Expired {
        name: String,
    },
    /// Malformed, forged, or long gone.
    Invalid,
}

pub fn now_ms() -> i64 {
    ms_of(SystemTime::now())
}

pub fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn dur_ms(ms: i64) -> Duration {
    Duration::from_millis(ms.max(1) as u64)
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("rows serialize")
}

fn parse<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b)
        .map_err(|e| StoreError::Other(format!("unreadable reservation row: {e}")))
}

fn expiry_key(hold_until_ms: i64, name: &str) -> String {
    format!("{:020}/{name}", hold_until_ms.max(0))
}

/// The reservation logic over a store.
#[derive(Clone)]
pub struct Reservations {
    pub store: Store,
    pub hold: Duration,
    pub mails_per_hour: u32,
}

impl Reservations {
    /// Reserves `name` for `email`: one transaction inserting both unique rows with the token
    /// and the mail. A repeat by the same email while pending queues the mail again, within
    /// `mails_per_hour`.
    pub async fn reserve(
        &self,
        secret: &Secret,
        name: &Name,
        email: &Email,
    ) -> Result<Reserved, StoreError> {
        let now = now_ms();
        let hold_ms = self.hold.as_millis() as i64;
        let hold_until_ms = now + hold_ms;
        let token = secret::new_token();
        let row = NameRow {
            email: email.as_str().into(),
            state: State::Pending,
            created_ms: now,
            hold_until_ms,
            confirmed_ms: None,
            mails: vec![now],
        };
        let ops = vec![
            Op::Insert {
                ns: NS_NAME.into(),
                key: name.as_str().into(),
                value: json(&row),
                ttl: Some(self.hold),
            },
            Op::Insert {
                ns: NS_EMAIL.into(),
                key: email.as_str().into(),
                value: json(&EmailRow {
                    name: name.as_str().into(),
                    state: State::Pending,
                    created_ms: now,
                }),
                ttl: Some(self.hold),
            },
            self.token_op(&token, name, email, now, hold_until_ms),
            Op::Put {
                ns: NS_EXPIRY.into(),
                key: expiry_key(hold_until_ms, name.as_str()),
                value: json(&ExpiryRow {
                    name: name.as_str().into(),
                    email: email.as_str().into(),
                    created_ms: now,
                }),
                ttl: Some(self.hold + TOKEN_GRACE),
            },
            mail_op(secret, &token, name, email, hold_until_ms),
        ];
        match self.store.txn(ops).await? {
            TxnOutcome::Committed(_) => Ok(Reserved::Pending { hold_until_ms }),
            TxnOutcome::Aborted { op: 0, why: Abort::Conflict(existing) } => {
                let held: NameRow = parse(&existing)?;
                if held.email != email.as_str() {
                    return Ok(Reserved::NameTaken);
                }
                if held.state == State::Confirmed {
                    return Ok(Reserved::AlreadyConfirmed);
                }
                self.resend(secret, name, email, existing).await
            }
            TxnOutcome::Aborted { op: 1, why: Abort::Conflict(_) } => Ok(Reserved::EmailTaken),
            TxnOutcome::Aborted { op, why } => Err(StoreError::Other(format!(
                "reservation aborted unexpectedly at op {op}: {why:?}"
            ))),
        }
    }

    /// The same email repeats a pending reservation: a fresh token (earlier ones stay valid
    /// until the hold ends) and the mail again, swapped in against the row as read so that
    /// concurrent repeats cannot exceed the hourly bound.
    async fn resend(
        &self,
        secret: &Secret,
        name: &Name,
        email: &Email,
        mut current: Vec<u8>,
    ) -> Result<Reserved, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let held: NameRow = parse(&current)?;
            if held.email != email.as_str() {
                return Ok(Reserved::NameTaken);
            }
            if held.state == State::Confirmed {
                return Ok(Reserved::AlreadyConfirmed);
            }
            let now = now_ms();
            let hour = 3_600_000;
            let mut mails: Vec<i64> =
                held.mails.iter().copied().filter(|t| now - t < hour).collect();
            if mails.len() >= self.mails_per_hour as usize {
                let oldest = mails.iter().copied().min().unwrap_or(now);
                return Ok(Reserved::MailLimit { retry_after: dur_ms(oldest + hour - now) });
            }
            let left = held.hold_until_ms - now;
            if left <= 0 {
                return Ok(Reserved::NameTaken);
            }
            mails.push(now);
            let token = secret::new_token();
            let new = NameRow { mails, ..held.clone() };
            let ops = vec![
                Op::Swap {
                    ns: NS_NAME.into(),
                    key: name.as_str().into(),
                    expect: current.clone(),
                    new: Some(json(&new)),
                    ttl: Some(dur_ms(left)),
                },
                self.token_op(&token, name, email, held.created_ms, held.hold_until_ms),
                mail_op(secret, &token, name, email, held.hold_until_ms),
            ];
            match self.store.txn(ops).await? {
                TxnOutcome::Committed(_) => {
                    return Ok(Reserved::Resent { hold_until_ms: held.hold_until_ms })
                }
                TxnOutcome::Aborted { op: 0, why: Abort::Mismatch(Some(v)) } => current = v,
                // The hold ended (or was released) between the read and the swap.
                TxnOutcome::Aborted { op: 0, why: Abort::Mismatch(None) } => {
                    return Ok(Reserved::NameTaken)
                }
                TxnOutcome::Aborted { op, why } => {
                    return Err(StoreError::Other(format!("resend aborted at op {op}: {why:?}")))
                }
            }
        }
        Err(StoreError::Unavailable("the reservation kept changing; try again".into()))
    }

    fn token_op(
        &self,
        token: &[u8; secret::TOKEN_BYTES],
        name: &Name,
        email: &Email,
        created_ms: i64,
        hold_until_ms: i64,
    ) -> Op {
        let left = dur_ms(hold_until_ms - now_ms());
        Op::Put {
            ns: NS_TOKEN.into(),
            key: secret::token_key(token),
            value: json(&TokenRow {
                name: name.as_str().into(),
                email: email.as_str().into(),
                created_ms,
                hold_until_ms,
                used: false,
            }),
            ttl: Some(left + TOKEN_GRACE),
        }
    }

    /// Confirms the reservation a token belongs to: one transaction marks the token used and
    /// swaps the name and email rows to confirmed (no expiry), each against the value read.
    pub async fn confirm(&self, token: &str) -> Result<Confirmed, StoreError> {
        let Some(token) = secret::parse_token(token) else { return Ok(Confirmed::Invalid) };
        let key = secret::token_key(&token);
        for _ in 0..CAS_ATTEMPTS {
            let Some(tv) = self.store.get(NS_TOKEN, &key).await? else {
                return Ok(Confirmed::Invalid);
            };
            let t: TokenRow = parse(&tv)?;
            if t.used {
                return Ok(Confirmed::AlreadyConfirmed { name: t.name });
            }
            let now = now_ms();
            let expired = || Confirmed::Expired { name: t.name.clone() };
            if now >= t.hold_until_ms {
                return Ok(expired());
            }
            let (nv, ev) =
                tokio::join!(self.store.get(NS_NAME, &t.name), self.store.get(NS_EMAIL, &t.email));
            let (Some(nv), Some(ev)) = (nv?, ev?) else { return Ok(expired()) };
            let (n, e): (NameRow, EmailRow) = (parse(&nv)?, parse(&ev)?);
            if n.email != t.email || n.created_ms != t.created_ms || e.name != t.name {
                // Another reservation of the name (or of the email) after this one expired.
                return Ok(expired());
            }
            if n.state == State::Confirmed {
                return Ok(Confirmed::AlreadyConfirmed { name: t.name });
            }
            let confirmed = NameRow {
                state: State::Confirmed,
                confirmed_ms: Some(now),
                mails: Vec::new(),
                ..n.clone()
            };
            let used = TokenRow { used: true, ..t.clone() };
            let ops = vec![
                Op::Swap {
                    ns: NS_TOKEN.into(),
                    key: key.clone(),
                    expect: tv,
                    new: Some(json(&used)),
                    ttl: Some(TOKEN_GRACE),
                },
                Op::Swap {
                    ns: NS_NAME.into(),
                    key: t.name.clone(),
                    expect: nv,
                    new: Some(json(&confirmed)),
                    ttl: None,
                },
                Op::Swap {
                    ns: NS_EMAIL.into(),
                    key: t.email.clone(),
                    expect: ev,
                    new: Some(json(&EmailRow { state: State::Confirmed, ..e })),
                    ttl: None,
                },
                Op::Delete { ns: NS_EXPIRY.into(), key: expiry_key(n.hold_until_ms, &t.name) },
            ];
            match self.store.txn(ops).await? {
                TxnOutcome::Committed(_) => {
                    return Ok(Confirmed::Confirmed { name: t.name, email: t.email })
                }
                // Lost a race (a second click, a resend): read again and decide again.
                TxnOutcome::Aborted { .. } => continue,
            }
        }
        Err(StoreError::Unavailable("the reservation kept changing; try again".into()))
    }

    /// Whether `name` is held (pending or confirmed).
    pub async fn holder(&self, name: &str) -> Result<Option<NameRow>, StoreError> {
        match self.store.get(NS_NAME, name).await? {
            Some(v) => Ok(Some(parse(&v)?)),
            None => Ok(None),
        }
    }

    /// Releases `name` (operator): the name and its email row go in one transaction. Returns
    /// the row released, None when the name was not held.
    pub async fn release(&self, name: &str) -> Result<Option<NameRow>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(nv) = self.store.get(NS_NAME, name).await? else { return Ok(None) };
            let n: NameRow = parse(&nv)?;
            let mut ops = vec![Op::Swap {
                ns: NS_NAME.into(),
                key: name.into(),
                expect: nv,
                new: None,
                ttl: None,
            }];
            if let Some(ev) = self.store.get(NS_EMAIL, &n.email).await? {
                let e: EmailRow = parse(&ev)?;
                if e.name == name {
                    ops.push(Op::Swap {
                        ns: NS_EMAIL.into(),
                        key: n.email.clone(),
                        expect: ev,
                        new: None,
                        ttl: None,
                    });
                }
            }
            ops.push(Op::Delete { ns: NS_EXPIRY.into(), key: expiry_key(n.hold_until_ms, name) });
            match self.store.txn(ops).await? {
                TxnOutcome::Committed(_) => return Ok(Some(n)),
                TxnOutcome::Aborted { .. } => continue,
            }
        }
        Err(StoreError::Unavailable("the reservation kept changing; try again".into()))
    }

    /// One round of the expiry sweep: markers of holds that ended before now, each taken by
    /// exactly one node (so each expiry is reported once). Returns the expired holds.
    pub async fn sweep_expired(&self, limit: usize) -> Result<Vec<ExpiryRow>, StoreError> {
        let now = now_ms();
        let mut expired = Vec::new();
        let markers = self.store.scan(NS_EXPIRY, None, limit).await?;
        for m in markers {
            let until: i64 = m.key.split('/').next().and_then(|t| t.parse().ok()).unwrap_or(0);
            if until > now {
                break;
            }
            let row: ExpiryRow = parse(&m.value)?;
            // A live pending row of this very reservation means the clocks disagree a little:
            // leave it for the next round.
            if let Some(n) = self.holder(&row.name).await? {
                if n.created_ms == row.created_ms && n.email == row.email {
                    if n.state == State::Confirmed {
                        self.store.delete(NS_EXPIRY, &m.key).await?;
                    }
                    continue;
                }
            }
            let taken = self.store.txn(vec![Op::Take { ns: NS_EXPIRY.into(), key: m.key }]).await?;
            if matches!(taken, TxnOutcome::Committed(_)) {
                expired.push(row);
            }
        }
        Ok(expired)
    }

    /// Held names in key order after `after`, at most `limit`.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, NameRow, Option<SystemTime>)>, StoreError> {
        let recs = self.store.scan(NS_NAME, after, limit).await?;
        recs.into_iter().map(|r| Ok((r.key, parse(&r.value)?, r.expires_at))).collect()
    }
}

fn mail_op(
    secret: &Secret,
    token: &[u8; secret::TOKEN_BYTES],
    name: &Name,
    email: &Email,
    hold_until_ms: i64,
) -> Op {
    let job = MailJob {
        to: email.as_str().into(),
        name: name.as_str().into(),
        sealed: secret.seal(token, name.as_str()),
        hold_until_ms,
    };
    Op::Enqueue { topic: MAIL_TOPIC.into(), payload: json(&job) }
}
