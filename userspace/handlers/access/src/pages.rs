//! The pages the edge serves itself: askama templates (checked at compile time; every value
//! in a `.html` template is HTML-escaped), plain forms and links that need no JavaScript, and
//! the headers every page carries.

use askama::Template;
use outpost_api::Reply;

/// One provider button.
pub struct ProviderChoice {
    pub name: String,
    pub display_name: String,
}

/// The login page: one form per provider.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub app: &'a str,
    pub rd: &'a str,
    pub providers: Vec<ProviderChoice>,
    /// Ask the provider to authenticate again ("sign in as someone else").
    pub switch: bool,
}

/// A link under a message.
pub struct Link {
    pub href: String,
    pub text: String,
}

/// A result or an error: denied, expired, provider down, signed out.
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub title: &'a str,
    /// `ok` or `bad` (styling).
    pub class: &'a str,
    pub message: &'a str,
    pub account: Option<&'a str>,
    pub links: Vec<Link>,
}

/// A page with the headers every page of the flow carries: never cached (they are personal),
/// never framed (clickjacking), no referrer (URLs carry one-time values), no scripts at all.
/// Forms may go to the edge and on to a provider (the login form's answer redirects there).
pub fn html(status: u16, t: &impl Template) -> Reply {
    let body = t.render().unwrap_or_else(|e| format!("<p>page error: {e}</p>"));
    secure(Reply::html(status, body))
}

pub fn secure(r: Reply) -> Reply {
    r.header("Cache-Control", "no-store")
        .header("X-Frame-Options", "DENY")
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "no-referrer")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:; \
             frame-ancestors 'none'; base-uri 'none'",
        )
}

/// A message page.
pub fn message(
    status: u16,
    title: &str,
    message: &str,
    account: Option<&str>,
    links: Vec<Link>,
) -> Reply {
    let class = if status < 400 { "ok" } else { "bad" };
    html(status, &MessagePage { title, class, message, account, links })
}

pub fn link(href: impl Into<String>, text: impl Into<String>) -> Link {
    Link { href: href.into(), text: text.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_printed_is_escaped() {
        let evil = "<script>alert(1)</script>\"'&";
        let r = message(403, evil, evil, Some(evil), vec![link(evil, evil)]);
        let body = String::from_utf8(r.body).unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains("&#60;script&#62;"), "{body}");
        let page = LoginPage {
            app: evil,
            rd: evil,
            providers: vec![ProviderChoice { name: evil.into(), display_name: evil.into() }],
            switch: true,
        };
        let body = page.render().unwrap();
        assert!(!body.contains("<script>") && !body.contains("value=\"<"), "{body}");
        assert!(!body.to_ascii_lowercase().contains("<script"), "no script of our own either");
    }
}
