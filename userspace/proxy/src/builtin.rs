//! The built-in origin: a small page served in-process on an ephemeral loopback port, so that a
//! first `outpost run` with no configuration shows something, through the whole proxy path.

use std::rc::Rc;

use outpost_api::Reply;

use crate::{http::Request, plain};

/// The page; shows what the origin received from the edge.
pub fn respond() -> plain::Respond {
    Rc::new(|req: Request<'static>| {
        let reply = page(&req);
        Box::pin(async move { reply })
    })
}

fn page(req: &Request<'_>) -> Reply {
    {
        let h = |name: &str| {
            req.header(name)
                .map_or_else(|| "(none)".to_owned(), |v| escape(&String::from_utf8_lossy(v)))
        };
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>outpost</title></head>\n\
             <body>\n<h1>outpost is running</h1>\n\
             <p>This page comes from outpost's built-in origin, through the TLS proxy.</p>\n\
             <table>\n\
             <tr><td>TLS version</td><td>{}</td></tr>\n\
             <tr><td>Client address</td><td>{}</td></tr>\n\
             <tr><td>Host</td><td>{}</td></tr>\n\
             <tr><td>Path</td><td>{}</td></tr>\n\
             </table>\n\
             <p>Route real traffic with <code>[[routes]]</code> in outpost.toml.</p>\n\
             </body></html>\n",
            h("x-outpost-tls-version"),
            h("x-forwarded-for"),
            h("x-forwarded-host"),
            escape(&req.target),
        );
        Reply::new(200, "text/html; charset=utf-8", body)
    }
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}
