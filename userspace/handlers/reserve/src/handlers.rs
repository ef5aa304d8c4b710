//! The four endpoints, each its own handler: parse → apply → respond.
//!
//! - `GET /` ([`Page`]): the form (works without JavaScript), and `/app.js`, the optional
//!   availability check.
//! - `POST /reserve` ([`Reserve`]): form (HTML answer) or JSON (JSON answer).
//! - `GET /confirm?token=` ([`Confirm`]): the link in the mail.
//! - `GET /api/availability?name=` ([`Availability`]): `{available, reason}`.
//!
//! CSRF: a form post must come with the `__Host-reserve-csrf` cookie set by the form page
//! (`SameSite=Strict`) and the hidden field that is that cookie's HMAC under the node secret,
//! and, when the browser says where it comes from (`Origin`, else `Referer`), from this site.
//! A JSON post needs neither token: browsers cannot send `application/json` across sites
//! without a CORS preflight, which this service never grants; its `Origin`, if any, is checked
//! all the same.

use std::{net::IpAddr, sync::Arc, time::Duration};

use outpost_api::{http, Audit, ErrorKind, Flow, Handler, Reply, Result as PResult, Session};
use outpost_store::StoreError;
use serde::Deserialize;
use serde_json::json;

use crate::{
    config::ReserveConfig,
    email::Email,
    limits::{retry_after_secs, Limits},
    model::{Confirmed, Reservations, Reserved},
    names::{Blocklist, Name},
    pages::{self, FormPage, MessagePage},
    secret::{self, Secret},
};

/// The CSRF cookie. `__Host-`: only set with `Secure`, `Path=/` and no `Domain`, so no other
/// subdomain (such as a reserved one) can plant it.
pub const CSRF_COOKIE: &str = "__Host-reserve-csrf";

/// What every handler of one configuration shares.
pub struct Shared {
    pub cfg: ReserveConfig,
    pub res: Reservations,
    pub secret: Arc<Secret>,
    pub blocklist: Blocklist,
    pub limits: Limits,
    pub audit: Audit,
    /// Hosts forms may come from: `host` and the public URL's host.
    origin_hosts: Vec<String>,
}

impl Shared {
    pub fn new(cfg: ReserveConfig, res: Reservations, secret: Arc<Secret>, audit: Audit) -> Shared {
        let blocklist = Blocklist::new(cfg.default_blocklist, &cfg.blocked);
        let limits = Limits::new(&cfg.limits);
        let mut origin_hosts = vec![cfg.host.to_ascii_lowercase()];
        if let Some(h) = origin_host(&cfg.public_url()) {
            origin_hosts.push(h);
        }
        Shared { cfg, res, secret, blocklist, limits, audit, origin_hosts }
    }

    fn fqdn(&self, name: &Name) -> String {
        format!("{}.{}", name.as_str(), self.cfg.zone)
    }

    /// Whether `Origin` (else `Referer`), when present, names this site.
    fn same_site(&self, s: &Session<'_>) -> bool {
        let source = s.req.header("origin").or_else(|| s.req.header("referer"));
        match source {
            None => true,
            Some(v) => {
                let v = String::from_utf8_lossy(v);
                origin_host(&v).is_some_and(|h| self.origin_hosts.contains(&h))
            }
        }
    }
}

/// The host of `scheme://host[:port][/...]`, lowercase; None for `null` or garbage.
fn origin_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// How to answer: the form gets pages, the API gets JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
}

/// One answer, in either format.
struct Answer {
    status: u16,
    /// Stable machine code (`name_taken`); `ok` states use their state (`pending`).
    code: &'static str,
    /// A sentence for people.
    message: String,
    /// Page title.
    title: &'static str,
    fqdn: Option<String>,
    name: Option<String>,
    retry_after: Option<Duration>,
}

impl Answer {
    fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        message: impl Into<String>,
    ) -> Answer {
        Answer {
            status,
            code,
            message: message.into(),
            title,
            fqdn: None,
            name: None,
            retry_after: None,
        }
    }

    fn error(status: u16, code: &'static str, message: impl Into<String>) -> Answer {
        Answer::new(status, code, "Not reserved", message)
    }

    fn limited(wait: Duration) -> Answer {
        let mut a = Answer::error(
            429,
            "rate_limited",
            format!("Too many requests; try again in {} seconds.", retry_after_secs(wait)),
        );
        a.retry_after = Some(wait);
        a
    }

    fn unavailable(e: &StoreError) -> Answer {
        let message = match e {
            StoreError::Timeout => {
                "The service is overloaded and could not finish your request; it may have \
                 gone through. Try again in a few seconds: repeating it is safe."
            }
            // A connection lost during a commit leaves its outcome unknown too.
            _ => {
                "The service is temporarily unavailable; your request may not have gone \
                 through. Try again in a few seconds: repeating it is safe."
            }
        };
        tracing::warn!(error = %e, "reserve: store unavailable");
        let mut a = Answer::error(503, "unavailable", message);
        a.retry_after = Some(Duration::from_secs(5));
        a
    }

    fn with_name(mut self, sh: &Shared, name: &Name) -> Answer {
        self.fqdn = Some(sh.fqdn(name));
        self.name = Some(name.as_str().to_owned());
        self
    }

    fn reply(self, format: Format) -> Reply {
        let ok = self.status < 300;
        let mut r = match format {
            Format::Json => {
                let mut body = if ok {
                    json!({ "status": self.code, "message": self.message })
                } else {
                    json!({ "code": self.code, "message": self.message })
                };
                if let Some(n) = &self.name {
                    body["name"] = json!(n);
                }
                if let Some(f) = &self.fqdn {
                    body["fqdn"] = json!(f);
                }
                let mut text = body.to_string();
                text.push('\n');
                Reply::new(self.status, "application/json", text)
                    .header("Cache-Control", "no-store")
            }
            Format::Html => pages::html(
                self.status,
                &MessagePage {
                    title: self.title,
                    class: if ok { "ok" } else { "bad" },
                    fqdn: self.fqdn.as_deref(),
                    message: &self.message,
                },
            ),
        };
        if let Some(wait) = self.retry_after {
            r = r.header("Retry-After", retry_after_secs(wait).to_string());
        }
        r
    }
}

fn method_not_allowed(allow: &str) -> Reply {
    Reply::json_error(405, &format!("use {allow}")).header("Allow", allow)
}

fn not_found() -> Reply {
    pages::html(
        404,
        &MessagePage {
            title: "Not found",
            class: "bad",
            fqdn: None,
            message: "There is no such page.",
        },
    )
}

/// A query parameter, percent-decoded.
fn query_param(s: &Session<'_>, key: &str) -> Option<String> {
    let q = s.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == key).then_some(v))
}

fn cookie(s: &Session<'_>, name: &str) -> Option<String> {
    s.req.header_values("cookie").find_map(|v| {
        String::from_utf8_lossy(v).split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    })
}

fn wants_json(s: &Session<'_>) -> bool {
    s.req.header("accept").is_some_and(|a| {
        let a = String::from_utf8_lossy(a);
        a.contains("application/json") && !a.contains("text/html")
    })
}

fn client_ip(s: &Session<'_>) -> IpAddr {
    s.client.addr.ip()
}

/// `GET /` and `/app.js`.
pub struct Page(pub Arc<Shared>);

impl Handler for Page {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _: &mut ()) -> PResult<Flow> {
        if s.req.method != "GET" && s.req.method != "HEAD" {
            return Ok(Flow::Respond(method_not_allowed("GET, HEAD")));
        }
        let reply = match s.path() {
            "/" => self.form(s),
            "/app.js" => {
                pages::secure(Reply::new(200, "text/javascript; charset=utf-8", pages::APP_JS))
            }
            _ => not_found(),
        };
        Ok(Flow::Respond(reply))
    }
}

impl Page {
    fn form(&self, s: &Session<'_>) -> Reply {
        let name = query_param(s, "name").unwrap_or_default();
        form_page(&self.0, s, 200, &name, "", None)
    }
}

/// The form, with `name` and `email` filled in and `error` above them; sets the CSRF cookie
/// unless the browser has ours already (several open tabs all stay valid).
fn form_page(
    sh: &Shared,
    s: &Session<'_>,
    status: u16,
    name: &str,
    email: &str,
    error: Option<&str>,
) -> Reply {
    let existing = cookie(s, CSRF_COOKIE).filter(|c| c.len() == 32 && secret::unhex(c).is_some());
    let value = existing.clone().unwrap_or_else(secret::new_cookie_value);
    let csrf = sh.secret.csrf_for(&value);
    let page = FormPage {
        zone: &sh.cfg.zone,
        hold_hours: sh.cfg.hold_secs.div_ceil(3600),
        csrf: &csrf,
        name,
        email,
        error: error.unwrap_or(""),
    };
    let mut r = pages::html(status, &page);
    if existing.is_none() {
        r = r.header(
            "Set-Cookie",
            format!(
                "{CSRF_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=86400"
            ),
        );
    }
    r
}

/// `POST /reserve`.
pub struct Reserve(pub Arc<Shared>);

#[derive(Deserialize)]
struct FormBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    name: String,
    email: String,
}

impl Handler for Reserve {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _: &mut ()) -> PResult<Flow> {
        if s.path() != "/reserve" {
            return Ok(Flow::Respond(not_found()));
        }
        if s.req.method != "POST" {
            return Ok(Flow::Respond(method_not_allowed("POST")));
        }
        let mut typed = None;
        let (format, answer, email) = self.handle(s, &mut typed).await?;
        let sh = &self.0;
        let outcome = match answer.status {
            201 => "success",
            429 => "limited",
            503 => "error",
            _ => "denied",
        };
        let mut ev = sh.audit.request_event(s, "reserve.reserve", outcome);
        if let Some(e) = email {
            ev = ev.user(e);
        }
        if let Some(n) = &answer.name {
            ev = ev.reason(format!("{} {}", answer.code, n));
        } else {
            ev = ev.reason(answer.code);
        }
        sh.audit.record(s, ev);
        // A person at the form gets it back, filled in as typed, with what to change.
        if let (Format::Html, Some((name, email))) = (format, &typed) {
            if matches!(answer.status, 400 | 403 | 409) && answer.code != "csrf" {
                return Ok(Flow::Respond(form_page(
                    sh,
                    s,
                    answer.status,
                    name,
                    email,
                    Some(&answer.message),
                )));
            }
        }
        Ok(Flow::Respond(answer.reply(format)))
    }
}

impl Reserve {
    /// The answer, its format, and the email when one was given.
    async fn handle(
        &self,
        s: &mut Session<'_>,
        typed: &mut Option<(String, String)>,
    ) -> PResult<(Format, Answer, Option<String>)> {
        let sh = &self.0;
        let ctype = s
            .req
            .header("content-type")
            .map(|v| {
                String::from_utf8_lossy(v)
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let format = match ctype.as_str() {
            "application/x-www-form-urlencoded" if !wants_json(s) => Format::Html,
            _ => Format::Json,
        };
        if let Err(wait) = sh.limits.reserve_ip(client_ip(s)) {
            return Ok((format, Answer::limited(wait), None));
        }
        let is_form = match ctype.as_str() {
            "application/x-www-form-urlencoded" => true,
            "application/json" => false,
            _ => {
                let a = Answer::error(
                    415,
                    "unsupported_media_type",
                    "Send the form (application/x-www-form-urlencoded) or JSON (application/json).",
                );
                return Ok((format, a, None));
            }
        };
        let max = sh.cfg.max_body_bytes;
        let too_large = || {
            Answer::error(
                413,
                "body_too_large",
                format!("The request body is over the limit of {max} bytes."),
            )
        };
        let declared = s
            .req
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Ok((format, too_large(), None));
        }
        let body = match s.read_body_to_end(max).await {
            Ok(b) => b,
            Err(e) if e.kind == ErrorKind::BadRequest(http::Error::BodyTooLarge) => {
                return Ok((format, too_large(), None))
            }
            Err(e) => return Err(e),
        };
        let (name, email) = if is_form {
            let Ok(f) = serde_urlencoded::from_bytes::<FormBody>(&body) else {
                return Ok((
                    format,
                    Answer::error(400, "bad_form", "The form data could not be read."),
                    None,
                ));
            };
            let cookie_ok = cookie(s, CSRF_COOKIE).is_some_and(|c| sh.secret.csrf_ok(&c, &f.csrf));
            let same_site = sh.same_site(s);
            if !cookie_ok || !same_site {
                tracing::debug!(
                    cookie = cookie_ok,
                    same_site,
                    origin = ?s.req.header("origin").map(String::from_utf8_lossy),
                    "reserve: form refused (CSRF)"
                );
                let a = Answer::error(
                    403,
                    "csrf",
                    "This form has expired or did not come from this site. Reload the page and try again.",
                );
                return Ok((format, a, None));
            }
            (f.name, f.email)
        } else {
            if !sh.same_site(s) {
                return Ok((
                    format,
                    Answer::error(403, "csrf", "Requests from other sites are refused."),
                    None,
                ));
            }
            match outpost_api::json::object::<JsonBody>(&body) {
                Ok(j) => (j.name, j.email),
                Err(e) => {
                    let a = Answer::error(
                        400,
                        "bad_json",
                        format!("The JSON body must be {{\"name\": ..., \"email\": ...}} ({e})."),
                    );
                    return Ok((format, a, None));
                }
            }
        };
        *typed = Some((name.clone(), email.clone()));
        let name = match Name::parse(&name, &sh.cfg.zone) {
            Ok(n) => n,
            Err(e) => return Ok((format, Answer::error(400, e.code(), e.to_string()), None)),
        };
        if sh.blocklist.blocks(&name).is_some() {
            let a = Answer::error(403, "blocked", "This name is reserved and cannot be taken.")
                .with_name(sh, &name);
            return Ok((format, a, None));
        }
        let email = match Email::parse(&email) {
            Ok(e) => e,
            Err(e) => {
                return Ok((
                    format,
                    Answer::error(400, e.code(), e.to_string()).with_name(sh, &name),
                    None,
                ))
            }
        };
        let who = Some(email.as_str().to_owned());
        if let Err(wait) = sh.limits.reserve_email(email.as_str()) {
            return Ok((format, Answer::limited(wait).with_name(sh, &name), who));
        }
        let hours = sh.cfg.hold_secs.div_ceil(3600);
        let answer = match sh.res.reserve(&sh.secret, &name, &email).await {
            Ok(Reserved::Pending { .. }) => Answer::new(
                201,
                "pending",
                "Check your mail",
                format!(
                    "We sent a confirmation link to {}. Open it within {hours} hours to keep the name.",
                    email.as_str()
                ),
            ),
            Ok(Reserved::Resent { .. }) => Answer::new(
                201,
                "pending",
                "Check your mail",
                format!(
                    "This name is already held for {}, waiting for confirmation. We sent the link again.",
                    email.as_str()
                ),
            ),
            Ok(Reserved::MailLimit { retry_after }) => {
                let mut a = Answer::error(
                    429,
                    "mail_limit",
                    "This reservation is waiting for confirmation and its mail was sent several \
                     times in the last hour. Check your mail (and spam folder), or try again later.",
                );
                a.retry_after = Some(retry_after);
                a
            }
            Ok(Reserved::AlreadyConfirmed) => Answer::error(
                409,
                "already_confirmed",
                "This name is already reserved and confirmed for this email address.",
            ),
            Ok(Reserved::NameTaken) => Answer::error(409, "name_taken", "This name is already taken."),
            Ok(Reserved::EmailTaken) => Answer::error(
                409,
                "email_taken",
                "This email address already holds a reservation: one name per address.",
            ),
            Err(e) => Answer::unavailable(&e),
        };
        Ok((format, answer.with_name(sh, &name), who))
    }
}

/// `GET /confirm?token=`.
pub struct Confirm(pub Arc<Shared>);

impl Handler for Confirm {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _: &mut ()) -> PResult<Flow> {
        if s.path() != "/confirm" {
            return Ok(Flow::Respond(not_found()));
        }
        // Only GET confirms: a HEAD (a link checker's probe) must not use up the token.
        if s.req.method != "GET" {
            return Ok(Flow::Respond(method_not_allowed("GET")));
        }
        let sh = &self.0;
        let format = if wants_json(s) { Format::Json } else { Format::Html };
        if let Err(wait) = sh.limits.confirm_ip(client_ip(s)) {
            return Ok(Flow::Respond(Answer::limited(wait).reply(format)));
        }
        let token = query_param(s, "token").unwrap_or_default();
        let result = sh.res.confirm(&token).await;
        let zone = &sh.cfg.zone;
        let (answer, outcome, user) = match result {
            Ok(Confirmed::Confirmed { name, email }) => {
                let mut a = Answer::new(
                    200,
                    "confirmed",
                    "Confirmed",
                    "Your reservation is confirmed: the name is yours until you claim it.",
                );
                a.fqdn = Some(format!("{name}.{zone}"));
                a.name = Some(name);
                (a, "success", Some(email))
            }
            Ok(Confirmed::AlreadyConfirmed { name }) => {
                let mut a = Answer::new(
                    200,
                    "already_confirmed",
                    "Already confirmed",
                    "This reservation was already confirmed; there is nothing more to do.",
                );
                a.fqdn = Some(format!("{name}.{zone}"));
                a.name = Some(name);
                (a, "already", None)
            }
            Ok(Confirmed::Expired { name }) => {
                let mut a = Answer::new(
                    410,
                    "expired",
                    "Link expired",
                    "This link has expired: the reservation was not confirmed in time and the \
                     name was released. You can reserve it again if it is still free.",
                );
                a.fqdn = Some(format!("{name}.{zone}"));
                a.name = Some(name);
                (a, "expired", None)
            }
            Ok(Confirmed::Invalid) => (
                Answer::new(
                    404,
                    "invalid",
                    "Invalid link",
                    "This confirmation link is not valid. Check that you copied the whole link from the mail.",
                ),
                "invalid",
                None,
            ),
            Err(e) => (Answer::unavailable(&e), "error", None),
        };
        let mut ev = sh.audit.request_event(s, "reserve.confirm", outcome);
        if let Some(u) = user {
            ev = ev.user(u);
        }
        if let Some(n) = &answer.name {
            ev = ev.reason(n.clone());
        }
        sh.audit.record(s, ev);
        Ok(Flow::Respond(answer.reply(format)))
    }
}

/// `GET /api/availability?name=`.
pub struct Availability(pub Arc<Shared>);

impl Handler for Availability {
    type Ctx = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session<'_>, _: &mut ()) -> PResult<Flow> {
        if s.path() != "/api/availability" {
            return Ok(Flow::Respond(Reply::json_error(404, "not found")));
        }
        if s.req.method != "GET" && s.req.method != "HEAD" {
            return Ok(Flow::Respond(method_not_allowed("GET, HEAD")));
        }
        let sh = &self.0;
        if let Err(wait) = sh.limits.availability_ip(client_ip(s)) {
            return Ok(Flow::Respond(Answer::limited(wait).reply(Format::Json)));
        }
        let raw = query_param(s, "name").unwrap_or_default();
        let body = match Name::parse(&raw, &sh.cfg.zone) {
            Err(e) => json!({
                "available": false, "reason": "invalid", "code": e.code(), "message": e.to_string()
            }),
            Ok(n) if sh.blocklist.blocks(&n).is_some() => json!({
                "available": false, "reason": "blocked", "name": n.as_str(), "fqdn": sh.fqdn(&n),
                "message": "This name is reserved and cannot be taken."
            }),
            Ok(n) => match sh.res.holder(n.as_str()).await {
                Ok(Some(_)) => json!({
                    "available": false, "reason": "taken", "name": n.as_str(), "fqdn": sh.fqdn(&n),
                    "message": "This name is already taken."
                }),
                Ok(None) => json!({
                    "available": true, "reason": null, "name": n.as_str(), "fqdn": sh.fqdn(&n)
                }),
                Err(e) => return Ok(Flow::Respond(Answer::unavailable(&e).reply(Format::Json))),
            },
        };
        let text = format!("{body}\n");
        Ok(Flow::Respond(
            Reply::new(200, "application/json", text).header("Cache-Control", "no-store"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin_host("https://Reserve.Example.Test:8443").as_deref(),
            Some("reserve.example.test")
        );
        assert_eq!(origin_host("https://r.test/path?q").as_deref(), Some("r.test"));
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("https://"), None);
    }
}
