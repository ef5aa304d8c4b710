//! The legacy responder: tells a client still on TLS 1.0/1.1 why it is refused.
//!
//! A `protocol_version` alert or a reset only shows a person a browser error. For a hello below
//! the floor that the redirect budget let through (the XDP program's, or the userspace floor's
//! own without XDP), the floor hands the connection here instead of to rustls, which cannot
//! speak those versions: OpenSSL completes the old handshake, one request is read, and a 403
//! answers it, saying that TLS 1.2 or newer is required and which version the client offered,
//! with a help link from the config (an HTML page for browsers, `text/plain` for the rest).
//!
//! It sits in the core beside the floor, not behind the router: such connections never reach
//! the handler API, and nothing is proxied. Strict limits hold whatever the client does: one
//! request, [`TIME_LIMIT`] from the hand-over to the close, [`MAX_HEAD`] bytes of request head.
//!
//! The lowered OpenSSL security level (`@SECLEVEL=0`, needed for the SHA-1 signatures and
//! ciphers of TLS 1.0/1.1) is set on this module's own contexts only; the main listener is
//! rustls, which shares no configuration with them. The certificates are the main listener's,
//! chosen by SNI with the same rules ([`SniResolver`]).
//!
//! OpenSSL runs sans-IO, like rustls in [`crate::tls`]: its stream is an in-memory buffer pair
//! ([`MemIo`]), and the bytes move over the I/O seam, so it works over io_uring and epoll alike
//! and the first flight the floor already read is simply its first input.

use std::{
    io::{self as stdio, Read, Write},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use openssl::{
    pkey::PKey,
    ssl::{
        ErrorCode, NameType, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions,
        SslStream, SslVersion,
    },
    x509::X509,
};
use outpost_common::Version;

use crate::{
    config::{Config, FloorConfig},
    http::{self, Limits},
    io,
    metrics::{LegacyEnd, Metrics, PageKind},
    tls::{cert_files, SniResolver},
};

/// From the hand-over to the close: the handshake, the request and the answer.
pub const TIME_LIMIT: Duration = Duration::from_secs(2);
/// Largest request head read; a longer one gets the plain-text answer at once.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long the close waits for the client's own, reading and discarding what it still sends
/// (so unread bytes do not turn the close into a reset that destroys the answer).
const LINGER: Duration = Duration::from_millis(300);
/// Ciphertext read size.
const READ_CHUNK: usize = 16 * 1024 + 512;
/// OpenSSL's names: TLS 1.0 and 1.1 ciphers with SHA-1 signatures need security level 0.
const LEGACY_CIPHERS: &str = "DEFAULT:@SECLEVEL=0";

/// The responder of one configuration generation: an OpenSSL context per certificate, by SNI.
pub struct Responder {
    /// What a connection starts on: the default certificate, and the SNI callback that moves
    /// the connection to the context of the name it asks for.
    entry: SslContext,
    /// The floor, for the page: "TLS 1.2 or newer is required".
    floor: Version,
    help_url: Option<String>,
}

impl Responder {
    /// Contexts for the certificates of `[tls]` (the same files rustls serves).
    pub fn new(config: &Config) -> Result<Responder> {
        let certs = cert_files(&config.tls, &config.data_dir())?;
        let by_name = Arc::new(SniResolver::build(&certs, |cert, key| {
            let mut b = legacy_context()?;
            load_pair(&mut b, cert, key)?;
            Ok(b.build())
        })?);
        let mut entry = legacy_context()?;
        let default = certs.first().context("no certificate configured")?;
        load_pair(&mut entry, &default.cert, &default.key)?;
        entry.set_servername_callback(move |ssl, _alert| {
            if let Some(name) = ssl.servername(NameType::HOST_NAME).map(str::to_owned) {
                // Every context has the same settings; a failure keeps the default certificate,
                // and an old client still gets its page.
                let _ = ssl.set_ssl_context(by_name.lookup(Some(&name)));
            }
            Ok(())
        });
        let FloorConfig { min_version, help_url, .. } = &config.floor;
        Ok(Responder { entry: entry.build(), floor: min_version.0, help_url: help_url.clone() })
    }

    /// A new OpenSSL server connection.
    fn ssl(&self) -> Result<Ssl, openssl::error::ErrorStack> {
        let mut ssl = Ssl::new(&self.entry)?;
        ssl.set_accept_state();
        Ok(ssl)
    }
}

/// A server context for TLS 1.0 up to 1.2 (what a floor of 1.3 leaves below it) at security
/// level 0, with the SNI callback that switches to the certificate's own context. No session
/// cache or tickets: one request per connection, nothing to resume.
fn legacy_context() -> Result<SslContextBuilder> {
    let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_cipher_list(LEGACY_CIPHERS)?;
    b.set_security_level(0);
    b.set_options(SslOptions::NO_TICKET | SslOptions::NO_COMPRESSION);
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
    b.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(b)
}

fn load_pair(b: &mut SslContextBuilder, cert: &Path, key: &Path) -> Result<()> {
    let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let mut chain = X509::stack_from_pem(&pem)
        .with_context(|| format!("parsing certificates in {}", cert.display()))?
        .into_iter();
    let leaf = chain.next().with_context(|| format!("no certificate in {}", cert.display()))?;
    b.set_certificate(&leaf)?;
    for c in chain {
        b.add_extra_chain_cert(c)?;
    }
    let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key_pem = PKey::private_key_from_pem(&pem)
        .with_context(|| format!("parsing the private key in {}", key.display()))?;
    b.set_private_key(&key_pem)?;
    b.check_private_key().with_context(|| {
        format!("{} and {} do not make a usable pair", cert.display(), key.display())
    })?;
    Ok(())
}

/// The in-memory stream OpenSSL reads ciphertext from and writes ciphertext to.
#[derive(Default)]
struct MemIo {
    /// Received, not yet consumed by OpenSSL: `rx[rpos..]`.
    rx: Vec<u8>,
    rpos: usize,
    /// The client closed its side.
    eof: bool,
    /// To send.
    tx: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, out: &mut [u8]) -> stdio::Result<usize> {
        let have = &self.rx[self.rpos..];
        if have.is_empty() {
            return if self.eof { Ok(0) } else { Err(stdio::ErrorKind::WouldBlock.into()) };
        }
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
        self.rpos += n;
        if self.rpos == self.rx.len() {
            self.rx.clear();
            self.rpos = 0;
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, data: &[u8]) -> stdio::Result<usize> {
        self.tx.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> stdio::Result<()> {
        Ok(())
    }
}

/// One legacy connection, driven over the seam.
struct Conn<'a> {
    tls: SslStream<MemIo>,
    stream: &'a mut io::Stream,
}

/// How an exchange ended early.
enum Early {
    /// The client closed (or reset) the connection.
    Closed,
    /// OpenSSL refused the handshake or the records.
    Tls,
}

impl Conn<'_> {
    /// Sends what OpenSSL queued.
    async fn flush(&mut self) -> stdio::Result<()> {
        let out = std::mem::take(&mut self.tls.get_mut().tx);
        let (res, _) = self.stream.write_all(out).await;
        res
    }

    /// Reads more ciphertext (or learns the end of the stream).
    async fn fill(&mut self) {
        let (res, buf) = self.stream.read(Vec::new(), READ_CHUNK).await;
        let io = self.tls.get_mut();
        match res {
            Ok(n) if n > 0 => io.rx.extend_from_slice(&buf),
            _ => io.eof = true,
        }
    }

    /// Runs an OpenSSL step until it no longer waits for input, sending what it queued.
    async fn step<T>(
        &mut self,
        mut op: impl FnMut(&mut SslStream<MemIo>) -> Result<T, openssl::ssl::Error>,
    ) -> Result<T, Early> {
        loop {
            let r = op(&mut self.tls);
            // Whatever the outcome, what OpenSSL wrote (records, an alert) goes out first.
            if !self.tls.get_ref().tx.is_empty() && self.flush().await.is_err() {
                return Err(Early::Closed);
            }
            match r {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == ErrorCode::WANT_READ && !self.tls.get_ref().eof => {
                    self.fill().await;
                }
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::WANT_READ | ErrorCode::ZERO_RETURN | ErrorCode::SYSCALL
                    ) =>
                {
                    return Err(Early::Closed)
                }
                Err(_) => return Err(Early::Tls),
            }
        }
    }

    /// Reads the request head: at most [`MAX_HEAD`] bytes, up to its blank line.
    async fn read_head(&mut self) -> Result<Vec<u8>, Early> {
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = self.step(|t| t.ssl_read(&mut chunk)).await?;
            if n == 0 {
                return Err(Early::Closed);
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok(head)
    }
}

/// Serves one legacy connection: `first` is the first flight the floor read, `offered` the
/// version its hello offered. Returns when the connection is done (at most [`TIME_LIMIT`]).
pub async fn respond(
    mut stream: io::Stream,
    first: Vec<u8>,
    offered: Version,
    responder: &Responder,
    metrics: &Metrics,
) {
    let started = Instant::now();
    let deadline = started + TIME_LIMIT;
    let ssl = match responder.ssl() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an OpenSSL connection");
            return;
        }
    };
    let io = MemIo { rx: first, ..MemIo::default() };
    let tls = match SslStream::new(ssl, io) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an OpenSSL stream");
            return;
        }
    };
    let mut conn = Conn { tls, stream: &mut stream };
    let exchange = async {
        if let Err(e) = conn.step(|t| t.accept()).await {
            return Err((e, true));
        }
        let head = conn.read_head().await.map_err(|e| (e, false))?;
        let page = page(responder, offered, &head);
        let kind = page.kind;
        conn.step(|t| t.ssl_write(&page.bytes)).await.map_err(|e| (e, false))?;
        // close_notify, best effort: the answer is complete without it (Connection: close and
        // Content-Length).
        let _ = conn.step(|t| t.shutdown()).await;
        Ok(kind)
    };
    let outcome = io::timeout_at(deadline, exchange).await;
    match outcome {
        Ok(Ok(kind)) => {
            metrics.legacy_page(offered, kind, started.elapsed());
            tracing::debug!(version = offered.name(), "legacy client answered with the 403 page");
            stream.shutdown_write();
            let linger = LINGER.min(deadline.saturating_duration_since(Instant::now()));
            let _ = io::timeout(linger, async {
                for _ in 0..16 {
                    let (res, _) = stream.read(Vec::new(), READ_CHUNK).await;
                    if !matches!(res, Ok(n) if n > 0) {
                        break;
                    }
                }
            })
            .await;
        }
        Ok(Err((Early::Tls, true))) => metrics.legacy_end(LegacyEnd::HandshakeFailed),
        Ok(Err((Early::Closed, _))) => metrics.legacy_end(LegacyEnd::Closed),
        Ok(Err((Early::Tls, false))) => metrics.legacy_end(LegacyEnd::Closed),
        Err(io::Elapsed) => metrics.legacy_end(LegacyEnd::TimedOut),
    }
}

/// An answer, ready to encrypt.
struct Page {
    bytes: Vec<u8>,
    kind: PageKind,
}

/// The 403 for a request whose head is `head` (complete, or cut at [`MAX_HEAD`]).
fn page(r: &Responder, offered: Version, head: &[u8]) -> Page {
    let limits = Limits { max_head_bytes: MAX_HEAD, ..Limits::default() };
    let browser = match http::parse_request(head, &limits) {
        Ok(Some((req, _))) => is_browser(req.header("user-agent"), req.header("accept")),
        // Too long or not HTTP: not a browser worth a page.
        _ => false,
    };
    let (floor, offered) = (pretty(r.floor), pretty(offered));
    let (kind, content_type, body) = if browser {
        let help = r.help_url.as_deref().map_or(String::new(), |u| {
            format!("<p><a href=\"{}\">How to update</a></p>\n", escape(u))
        });
        let body = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width\">\n\
             <title>{floor} or newer is required</title></head>\n\
             <body><h1>{floor} or newer is required</h1>\n\
             <p>Your browser connected with {offered}, which this site no longer accepts: it \
             is outdated and no longer safe.</p>\n\
             <p>Update your browser or operating system, or use another browser, to reach \
             this site.</p>\n{help}</body></html>\n"
        );
        (PageKind::Html, "text/html; charset=utf-8", body)
    } else {
        let help = r.help_url.as_deref().map_or(String::new(), |u| format!("Help: {u}\n"));
        let body = format!(
            "403 Forbidden: {floor} or newer is required.\nYour client offered {offered}, which \
             this site no longer accepts.\n{help}"
        );
        (PageKind::Text, "text/plain; charset=utf-8", body)
    };
    let bytes = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Page { bytes, kind }
}

/// Browsers get the HTML page: every browser's User-Agent starts with `Mozilla/` (old Internet
/// Explorers do not list text/html in Accept), and any client that asks for HTML gets it.
fn is_browser(user_agent: Option<&[u8]>, accept: Option<&[u8]>) -> bool {
    let ua = user_agent.is_some_and(|v| v.starts_with(b"Mozilla/"));
    let html = accept.is_some_and(|v| v.windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html")));
    ua || html
}

/// `TLS 1.0` for the page.
fn pretty(v: Version) -> &'static str {
    match v {
        Version::Sslv2 => "SSL 2.0",
        Version::Sslv3 => "SSL 3.0",
        Version::Tls10 => "TLS 1.0",
        Version::Tls11 => "TLS 1.1",
        Version::Tls12 => "TLS 1.2",
        Version::Tls13 => "TLS 1.3",
        Version::Unknown => "an unknown version",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responder(help: Option<&str>) -> Responder {
        let dir = std::env::temp_dir().join(format!("outpost-legacy-test-{}", std::process::id()));
        let mut config = Config { data_dir: Some(dir), ..Config::default() };
        config.floor.help_url = help.map(str::to_owned);
        Responder::new(&config).unwrap()
    }

    /// A TLS 1.0 client handshake against the responder's contexts, in memory; the names of
    /// the certificate the responder chose.
    fn handshake_names(r: &Responder, sni: Option<&str>) -> Vec<String> {
        let mut c = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        c.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
        c.set_cipher_list(LEGACY_CIPHERS).unwrap();
        c.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let mut ssl = Ssl::new(&c.build()).unwrap();
        if let Some(name) = sni {
            ssl.set_hostname(name).unwrap();
        }
        ssl.set_connect_state();
        let mut client = SslStream::new(ssl, MemIo::default()).unwrap();
        let mut server = SslStream::new(r.ssl().unwrap(), MemIo::default()).unwrap();
        let (mut client_done, mut server_done) = (false, false);
        for _ in 0..20 {
            client_done = client_done || client.do_handshake().is_ok();
            server.get_mut().rx.append(&mut client.get_mut().tx);
            server_done = server_done || server.accept().is_ok();
            client.get_mut().rx.append(&mut server.get_mut().tx);
            if client_done && server_done {
                break;
            }
        }
        assert!(client_done && server_done, "the in-memory handshake did not finish");
        assert_eq!(client.ssl().version_str(), "TLSv1");
        let cert = client.ssl().peer_certificate().expect("a server certificate");
        let names = cert.subject_alt_names().expect("names");
        names.iter().filter_map(|n| n.dnsname().map(str::to_owned)).collect()
    }

    #[test]
    fn same_certificates_chosen_by_sni() {
        let dir = std::env::temp_dir().join(format!("outpost-legacy-sni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut certs = Vec::new();
        for name in ["a.test", "b.test"] {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
            let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
            std::fs::write(&cert, ck.cert.pem()).unwrap();
            std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
            let names = vec![name.to_owned(), format!("*.{name}")];
            certs.push(crate::config::CertConfig { names, cert, key });
        }
        let mut config = Config { data_dir: Some(dir.clone()), ..Config::default() };
        config.tls.certs = certs;
        let r = Responder::new(&config).unwrap();
        assert_eq!(handshake_names(&r, Some("b.test")), ["b.test"]);
        assert_eq!(handshake_names(&r, Some("www.b.test")), ["b.test"], "wildcard");
        assert_eq!(handshake_names(&r, Some("a.test")), ["a.test"]);
        assert_eq!(handshake_names(&r, Some("other.test")), ["a.test"], "the default: the first");
        assert_eq!(handshake_names(&r, None), ["a.test"], "no SNI: the default");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pages_for_browsers_and_for_the_rest() {
        let r = responder(Some("https://help.example/tls?a=1&b=2"));
        let ie = b"GET / HTTP/1.1\r\nHost: x\r\nAccept: image/gif, */*\r\n\
                   User-Agent: Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1)\r\n\r\n";
        let p = page(&r, Version::Tls10, ie);
        let text = String::from_utf8(p.bytes).unwrap();
        assert_eq!(p.kind, PageKind::Html);
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.contains("TLS 1.2 or newer is required"), "{text}");
        assert!(text.contains("connected with TLS 1.0"), "{text}");
        assert!(text.contains("href=\"https://help.example/tls?a=1&amp;b=2\""), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{text}");

        let curl = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        let p = page(&r, Version::Tls11, curl);
        let text = String::from_utf8(p.bytes).unwrap();
        assert_eq!(p.kind, PageKind::Text);
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{text}");
        assert!(text.contains("Your client offered TLS 1.1"), "{text}");
        assert!(text.contains("Help: https://help.example/tls?a=1&b=2\n"), "{text}");
        // A head past the limit is answered too, in plain text.
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(page(&r, Version::Tls10, &big).kind, PageKind::Text);
        let none = responder(None);
        let text = String::from_utf8(page(&none, Version::Tls10, curl).bytes).unwrap();
        assert!(!text.contains("Help:"), "{text}");
    }
}
