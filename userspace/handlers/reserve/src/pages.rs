//! HTML pages and mail bodies: askama templates (compiled and type-checked with the crate;
//! `.html` templates escape every value), and the headers every page carries.

use askama::Template;
use outpost_api::Reply;

/// The reservation form.
#[derive(Template)]
#[template(path = "page.html")]
pub struct FormPage<'a> {
    pub zone: &'a str,
    pub hold_hours: u64,
    pub csrf: &'a str,
    /// Values to show again (after an error).
    pub name: &'a str,
    pub email: &'a str,
    /// Why the last submission was refused (empty: none).
    pub error: &'a str,
}

/// A result: reserved, taken, confirmed, expired...
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub title: &'a str,
    /// `ok` or `bad` (styling).
    pub class: &'a str,
    pub fqdn: Option<&'a str>,
    pub message: &'a str,
}

/// The confirmation mail, plain text.
#[derive(Template)]
#[template(path = "mail.txt")]
pub struct MailText<'a> {
    pub fqdn: &'a str,
    pub link: &'a str,
    pub until: &'a str,
}

/// The confirmation mail, HTML.
#[derive(Template)]
#[template(path = "mail.html")]
pub struct MailHtml<'a> {
    pub fqdn: &'a str,
    pub link: &'a str,
    pub until: &'a str,
}

/// The availability script.
pub const APP_JS: &str = include_str!("../templates/app.js");

/// A page with the headers all of them carry: no caching (results are personal), no framing
/// (clickjacking), scripts from here only, and the referrer only to this site (the confirm URL
/// carries a token). Not `no-referrer`: with it, browsers send `Origin: null` on the form's
/// own POST, and the CSRF check could no longer tell this site from any other.
pub fn html(status: u16, t: &impl Template) -> Reply {
    let body = t.render().unwrap_or_else(|e| format!("<p>page error: {e}</p>"));
    secure(Reply::html(status, body))
}

pub fn secure(r: Reply) -> Reply {
    r.header("Cache-Control", "no-store")
        .header("X-Frame-Options", "DENY")
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "same-origin")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix milliseconds.
pub fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {}", &s[..10], &s[11..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(utc(1_798_761_599_000), "2026-12-31 23:59");
    }

    #[test]
    fn values_are_escaped() {
        let p = MessagePage {
            title: "t",
            class: "ok",
            fqdn: Some("<b>x</b>"),
            message: "a \"quote\" & <script>",
        };
        let s = p.render().unwrap();
        assert!(!s.contains("<script>") && !s.contains("<b>x"), "{s}");
        assert!(s.contains("&#60;script&#62;"), "{s}");
    }
}
