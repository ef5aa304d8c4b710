//! The admin listener: `/healthz`, Prometheus `/metrics`, and the endpoints the binary and
//! applications add (`/audit`, ...), plain HTTP.
//!
//! It obeys only its operator. Every path but `/healthz` and `/metrics` needs
//! `Authorization: Bearer <token>`, the token being the one in `<data_dir>/admin-token`
//! (created at first start, mode 0600; [`AdminToken`]). Whatever it carries, a request that
//! could come from a web page — one with an `Origin` field, or a body type an HTML form can
//! send — changes nothing: a page open in the operator's browser can reach 127.0.0.1 too, and a
//! cross-site form POST needs no CORS preflight.

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, OpenOptions},
    io::{ErrorKind, Write as _},
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};

use anyhow::{bail, Context as _, Result};
use outpost_api::{AdminEndpoint, Reply};
use ring::{
    hmac,
    rand::{SecureRandom as _, SystemRandom},
};

use crate::{
    http::Request,
    metrics::{AdminRefusal, Metrics, VersionCounts},
    plain,
    shared::Shared,
};

/// Reads the XDP program's per-version counters; provided by the binary, which links the
/// loader (the proxy crate knows nothing of BPF).
pub trait KernelStats: Send + Sync {
    /// `None` when the maps are not pinned or not readable.
    fn hellos(&self) -> Option<VersionCounts>;

    /// Whether the XDP program passed the legacy hello of the connection from `client` to
    /// `server` on to the legacy responder within its redirect budget. The record is taken:
    /// it answers yes once per connection.
    fn take_redirect(&self, _client: SocketAddr, _server: SocketAddr) -> bool {
        false
    }
}

/// The admin token's file name in the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Paths served without a token: a load balancer's health check and Prometheus' scrape.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/metrics"];

/// Body types an HTML form can submit cross-site without a CORS preflight.
const FORM_TYPES: [&str; 3] =
    ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"];

/// Random bytes in a token this listener creates (hex in the file).
const TOKEN_BYTES: usize = 32;

/// Shortest token accepted from the file, so an operator's own cannot be guessed either.
const MIN_TOKEN_CHARS: usize = 32;

/// `extra`: endpoints of the binary, by exact path; applications' endpoints come with each
/// configuration generation. `guard` decides who may use them.
pub fn respond(
    shared: Arc<Shared>,
    kernel: Option<Arc<dyn KernelStats>>,
    extra: BTreeMap<String, AdminEndpoint>,
    guard: Arc<Guard>,
) -> plain::Respond {
    Rc::new(move |req: Request<'static>| {
        let path = outpost_api::handler::path_of(&req.target).to_owned();
        if let Some(refused) = guard.check(&req, &path) {
            return Box::pin(async move { refused });
        }
        let endpoint =
            extra.get(&path).cloned().or_else(|| shared.live().router.admin.get(&path).cloned());
        if let Some(endpoint) = endpoint {
            return endpoint(req);
        }
        let reply = if req.method != "GET" && req.method != "HEAD" {
            Reply::json_error(405, "use GET").header("Allow", "GET, HEAD")
        } else {
            match path.as_str() {
                "/healthz" if shared.draining() => Reply::new(503, "text/plain", "draining\n"),
                "/healthz" => Reply::new(200, "text/plain", "ok\n"),
                "/metrics" => {
                    let k = kernel.as_ref().and_then(|k| k.hellos());
                    Reply::new(200, "text/plain; version=0.0.4", shared.metrics.render(k.as_ref()))
                }
                _ => Reply::json_error(404, "not found: try /healthz or /metrics"),
            }
        };
        Box::pin(async move { reply })
    })
}

/// Who may use the admin listener: the holder of the token, from outside a browser.
pub struct Guard {
    token: AdminToken,
    /// Where refusals are counted (`outpost_admin_refused_total`).
    metrics: Arc<Metrics>,
}

impl Guard {
    pub fn new(token: AdminToken, metrics: Arc<Metrics>) -> Arc<Guard> {
        Arc::new(Guard { token, metrics })
    }

    /// The refusal of `req` (for `path`), or `None` when it may go on.
    pub fn check(&self, req: &Request<'_>, path: &str) -> Option<Reply> {
        if req.method != "GET" && req.method != "HEAD" {
            if let Some(why) = from_a_browser(req) {
                self.metrics.admin_refused(AdminRefusal::Browser);
                tracing::debug!(method = %req.method, path, why, "admin request refused");
                return Some(Reply::json_error(
                    403,
                    &format!("refused: {why}; the admin listener changes nothing for a web page"),
                ));
            }
        }
        if OPEN_PATHS.contains(&path) || bearer(req).is_some_and(|t| self.token.verify(t)) {
            return None;
        }
        self.metrics.admin_refused(AdminRefusal::Token);
        tracing::debug!(method = %req.method, path, "admin request without a valid token");
        Some(
            Reply::json_error(
                401,
                "send Authorization: Bearer <token>; the token is in the admin-token file of \
                 outpost's data directory",
            )
            .header("WWW-Authenticate", "Bearer realm=\"outpost admin\""),
        )
    }
}

/// Why a mutating request looks like a web page's: browsers send `Origin` with every
/// cross-origin request and with every POST (`null` from a file: page), and a form can only
/// send these body types. Tools (the CLI, curl) send neither unless told to.
fn from_a_browser(req: &Request<'_>) -> Option<&'static str> {
    let mut origin = false;
    let mut form = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("origin") {
            origin = true;
        } else if h.name.eq_ignore_ascii_case("content-type") {
            let media = h.value.split(|&b| b == b';').next().unwrap_or_default();
            let media = String::from_utf8_lossy(media);
            form |= FORM_TYPES.iter().any(|t| media.trim().eq_ignore_ascii_case(t));
        }
    }
    if origin {
        Some("the request carries an Origin field")
    } else if form {
        Some("the request has a body type an HTML form can send")
    } else {
        None
    }
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive).
fn bearer<'r>(req: &'r Request<'_>) -> Option<&'r [u8]> {
    let value = req.header("authorization")?;
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// The admin listener's credential. Held as an HMAC tag under a key of this process only, and
/// checked with `ring::hmac::verify`, which compares in constant time: a presented token's
/// timing says nothing about how much of it was right. Never printed.
pub struct AdminToken {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl AdminToken {
    /// The token in `<data_dir>/admin-token`, created when missing: 32 random bytes as hex,
    /// mode 0600, written to a temporary file and linked into place, so a reader never sees
    /// half a token and two edges starting on one directory end with one token. An existing
    /// file readable by others is refused.
    pub fn load_or_create(data_dir: &Path) -> Result<AdminToken> {
        let path = data_dir.join(TOKEN_FILE);
        if !path.exists() {
            create(&path)?;
        }
        let mode = fs::metadata(&path)
            .with_context(|| format!("reading the admin token {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "the admin token {} is readable by others (mode {:o}): `chmod 600` it, or remove \
                 it for a new one",
                path.display(),
                mode & 0o777
            );
        }
        AdminToken::from_secret(&read_token(&path)?)
    }

    fn from_secret(secret: &str) -> Result<AdminToken> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no randomness for the admin token's key"))?;
        let tag = hmac::sign(&key, secret.as_bytes());
        Ok(AdminToken { key, tag })
    }

    /// Whether `presented` is the token.
    pub fn verify(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Reads a token file: its one line, which must be at least 32 visible ASCII characters
/// (an operator may write their own). Errors name the file, never its content.
pub fn read_token(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the admin token {}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the admin token {} is not one line of at least {MIN_TOKEN_CHARS} visible ASCII \
             characters; remove it for a new one",
            path.display()
        );
    }
    Ok(token.to_owned())
}

/// The admin token file of data directory `data_dir`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

fn create(path: &Path) -> Result<()> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let mut text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    let tmp = path.with_file_name(format!(".{TOKEN_FILE}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // A link never replaces: when another process created the token meanwhile, it wins.
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = fs::remove_file(&tmp);
    written.with_context(|| format!("creating the admin token {}", path.display()))?;
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    tracing::info!(file = %path.display(), "admin token created");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Limits};

    fn guard(secret: &str) -> Arc<Guard> {
        Guard::new(AdminToken::from_secret(secret).unwrap(), Metrics::new())
    }

    fn status(g: &Guard, raw: &str) -> Option<u16> {
        let (req, _) = parse_request(raw.as_bytes(), &Limits::default()).unwrap().unwrap();
        let path = outpost_api::handler::path_of(&req.target).to_owned();
        g.check(&req, &path).map(|r| r.status)
    }

    #[test]
    fn token_origin_and_form_types() {
        let secret = "0123456789abcdef0123456789abcdef";
        let g = guard(secret);
        let cases: &[(String, Option<u16>)] = &[
            ("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".into(), None),
            ("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), None),
            ("GET /audit HTTP/1.1\r\nHost: a\r\n\r\n".into(), Some(401)),
            ("GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n".into(), Some(401)),
            (format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\n\r\n"), None),
            (format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: bearer  {secret}\r\n\r\n"), None),
            (format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {secret}\r\n\r\n"), Some(401)),
            (format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}x\r\n\r\n"), Some(401)),
            (format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\r\n", &secret[1..]), Some(401)),
            ("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer\r\n\r\n".into(), Some(401)),
            // A GET with Origin may read with the token (a browser cannot attach it).
            (format!("GET /audit HTTP/1.1\r\nHost: a\r\nOrigin: null\r\nAuthorization: Bearer {secret}\r\n\r\n"), None),
            (format!("POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nContent-Length: 0\r\n\r\n"), None),
            (format!("POST /x HTTP/1.1\r\nHost: a\r\nOrigin: http://evil.test\r\nAuthorization: Bearer {secret}\r\nContent-Length: 0\r\n\r\n"), Some(403)),
            ("POST /x HTTP/1.1\r\nHost: a\r\norigin: null\r\nContent-Length: 0\r\n\r\n".into(), Some(403)),
            (format!("POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nContent-Type: Text/Plain; charset=utf-8\r\nContent-Length: 0\r\n\r\n"), Some(403)),
            (format!("POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"), Some(403)),
            (format!("DELETE /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 0\r\n\r\n"), Some(403)),
            (format!("POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"), None),
            ("OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: http://evil.test\r\n\r\n".into(), Some(403)),
            ("POST /healthz HTTP/1.1\r\nHost: a\r\nOrigin: null\r\nContent-Length: 0\r\n\r\n".into(), Some(403)),
        ];
        for (raw, want) in cases {
            assert_eq!(status(&g, raw), *want, "{raw:?}");
        }
        let m = g.metrics.render(None);
        assert!(m.contains("outpost_admin_refused_total{reason=\"token\"} 6"), "{m}");
        assert!(m.contains("outpost_admin_refused_total{reason=\"browser\"} 7"), "{m}");
    }

    #[test]
    fn token_file_is_created_once_private_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("outpost-admin-token-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let first = AdminToken::load_or_create(&dir).unwrap();
        let path = dir.join(TOKEN_FILE);
        let secret = read_token(&path).unwrap();
        assert_eq!(secret.len(), 2 * TOKEN_BYTES, "{}", path.display());
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(first.verify(secret.as_bytes()));
        assert!(!format!("{first:?}").contains(&secret));
        // A second start reads the same token; no temporary file is left behind.
        let again = AdminToken::load_or_create(&dir).unwrap();
        assert!(again.verify(secret.as_bytes()));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        // Readable by others: refused, and the error does not show the token.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", AdminToken::load_or_create(&dir).unwrap_err());
        assert!(e.contains("chmod 600") && !e.contains(&secret), "{e}");
        // Too short to be a credential.
        fs::write(&path, "short\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = format!("{:#}", AdminToken::load_or_create(&dir).unwrap_err());
        assert!(e.contains("at least 32") && !e.contains("short\n"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
