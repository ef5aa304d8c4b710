//! TLS termination: the rustls server configuration (certificates by SNI, the self-signed
//! fallback) and [`TlsConn`], rustls driven over the I/O seam's owned-buffer reads and writes.
//!
//! rustls is used sans-IO (`read_tls`/`process_new_packets`/`write_tls` on byte slices), so the
//! same code runs over io_uring and epoll, and the bytes the floor read before rustls are
//! simply the first input.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig, ServerConnection,
};

use crate::{config::TlsConfig, io};

use std::io as stdio;

/// ALPN: this proxy speaks HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";
/// Names the self-signed certificate always carries.
const SELF_SIGNED_BASE: [&str; 2] = ["localhost", "127.0.0.1"];
/// Ciphertext read size: one full TLS record plus its header and tag.
const READ_CHUNK: usize = io::buf::SIZE;

/// Builds the rustls server configuration from `[tls]`: TLS 1.3 and 1.2 only (ring provider),
/// ALPN `http/1.1`, certificates by SNI.
pub fn server_config(tls: &TlsConfig, data_dir: &Path) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = SniResolver::build(&cert_files(tls, data_dir)?, |cert, key| {
        load_key(cert, key, &provider)
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("rustls refused TLS 1.2/1.3 with the ring provider")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// One certificate as configured: the SNI names it serves, its chain and its key (PEM files).
pub struct CertFiles {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificates of `[tls]`, in order (the first is the default), or the self-signed one
/// (generated into `data_dir` when missing). rustls and the legacy responder serve the same.
pub fn cert_files(tls: &TlsConfig, data_dir: &Path) -> Result<Vec<CertFiles>> {
    if tls.certs.is_empty() {
        let (cert, key) = self_signed(data_dir, &tls.self_signed_names)?;
        return Ok(vec![CertFiles { names: Vec::new(), cert, key }]);
    }
    Ok(tls
        .certs
        .iter()
        .map(|c| CertFiles { names: c.names.clone(), cert: c.cert.clone(), key: c.key.clone() })
        .collect())
}

fn load_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificates from {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    if chain.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let ck = CertifiedKey::from_der(chain, key_der, provider).with_context(|| {
        format!("{} and {} do not make a usable pair", cert.display(), key.display())
    })?;
    Ok(Arc::new(ck))
}

/// The self-signed certificate in `data_dir/tls`, generated when missing or when the names it
/// should carry changed. Returns the certificate and key paths.
pub fn self_signed(data_dir: &Path, extra_names: &[String]) -> Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let (cert, key, names_file) =
        (dir.join("self-signed.crt"), dir.join("self-signed.key"), dir.join("self-signed.names"));
    let mut names: Vec<String> = SELF_SIGNED_BASE.iter().map(|s| s.to_string()).collect();
    for n in extra_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let wanted = names.join("\n");
    let current = fs::read_to_string(&names_file).ok();
    if cert.is_file() && key.is_file() && current.as_deref() == Some(wanted.as_str()) {
        return Ok((cert, key));
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ck = rcgen::generate_simple_self_signed(names.clone())
        .context("generating the self-signed certificate")?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    fs::write(&cert, ck.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    fs::write(&names_file, wanted).with_context(|| format!("writing {}", names_file.display()))?;
    tracing::info!(cert = %cert.display(), names = ?names, "generated a self-signed certificate");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data).with_context(|| format!("writing {}", path.display()))
}

/// Certificates by SNI: exact names, then `*.suffix` wildcards (one label deep), then the
/// default (the first certificate configured). `T` is what a TLS library wants for one
/// certificate: rustls' `CertifiedKey`, or an OpenSSL context for the legacy responder.
#[derive(Debug)]
pub struct SniResolver<T = Arc<CertifiedKey>> {
    exact: HashMap<String, T>,
    /// `(".example.com", key)` for `*.example.com`.
    wildcard: Vec<(String, T)>,
    default: T,
}

impl<T: Clone> SniResolver<T> {
    /// Loads each certificate with `load` and files it under its names.
    pub fn build(
        certs: &[CertFiles],
        mut load: impl FnMut(&Path, &Path) -> Result<T>,
    ) -> Result<SniResolver<T>> {
        let mut r: Option<SniResolver<T>> = None;
        for c in certs {
            let loaded = load(&c.cert, &c.key)?;
            let r = r.get_or_insert_with(|| SniResolver::single(loaded.clone()));
            for name in &c.names {
                r.add(name, loaded.clone());
            }
        }
        r.ok_or_else(|| anyhow::anyhow!("no certificate configured"))
    }

    fn single(default: T) -> SniResolver<T> {
        SniResolver { exact: HashMap::new(), wildcard: Vec::new(), default }
    }

    fn add(&mut self, name: &str, key: T) {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix('*') {
            Some(suffix) => self.wildcard.push((suffix.to_owned(), key)),
            None => {
                self.exact.insert(name, key);
            }
        }
    }

    /// The certificate for `sni`.
    pub fn lookup(&self, sni: Option<&str>) -> &T {
        let Some(sni) = sni else { return &self.default };
        let sni = sni.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&sni) {
            return k;
        }
        for (suffix, k) in &self.wildcard {
            if let Some(label) = sni.strip_suffix(suffix.as_str()) {
                if !label.is_empty() && !label.contains('.') {
                    return k;
                }
            }
        }
        &self.default
    }

    /// The certificate for clients without SNI or whose SNI matches none.
    pub fn default(&self) -> &T {
        &self.default
    }
}

impl ResolvesServerCert for SniResolver<Arc<CertifiedKey>> {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(hello.server_name()).clone())
    }
}

/// What a finished handshake negotiated.
#[derive(Clone, Debug)]
pub struct Negotiated {
    pub version: rustls::ProtocolVersion,
    pub cipher: rustls::CipherSuite,
    pub sni: Option<String>,
}

impl Negotiated {
    /// `TLSv1.3` / `TLSv1.2`: the value of `X-Outpost-TLS-Version`.
    pub fn version_name(&self) -> &'static str {
        match self.version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        }
    }
}

/// A server-side TLS connection over a seam [`io::Stream`].
///
/// Holds no buffer of its own between reads and writes: ciphertext goes through pooled buffers
/// ([`io::buf`]) that are given back as soon as rustls has taken their bytes or the socket has
/// sent them, so an idle connection costs rustls' state and the idle read (see
/// [`io::Stream::read_idle`]).
pub struct TlsConn {
    stream: io::Stream,
    conn: ServerConnection,
    /// Ciphertext read from the socket; rustls has taken `rbuf[..rpos]`. Empty (no capacity)
    /// once all of it was taken.
    rbuf: Vec<u8>,
    rpos: usize,
    /// The socket reached end of stream.
    eof: bool,
    write_timeout: Duration,
}

impl TlsConn {
    /// `first_flight`: bytes already read from the socket (by the floor); rustls gets them
    /// first, so nothing the client sent is lost.
    ///
    /// `write_timeout` bounds every socket write: a client that stops reading is dropped.
    pub fn new(
        stream: io::Stream,
        config: Arc<ServerConfig>,
        first_flight: Vec<u8>,
        write_timeout: Duration,
    ) -> Result<TlsConn> {
        let conn = ServerConnection::new(config).context("creating a rustls connection")?;
        Ok(TlsConn { stream, conn, rbuf: first_flight, rpos: 0, eof: false, write_timeout })
    }

    /// Completes the handshake by `deadline`.
    pub async fn handshake(&mut self, deadline: Instant) -> stdio::Result<Negotiated> {
        io::timeout_at(deadline, async {
            while self.conn.is_handshaking() {
                self.flush().await?;
                if !self.conn.is_handshaking() {
                    break;
                }
                if !self.fill(false).await? {
                    return Err(stdio::Error::new(
                        stdio::ErrorKind::UnexpectedEof,
                        "client closed during the handshake",
                    ));
                }
            }
            self.flush().await
        })
        .await??;
        Ok(Negotiated {
            version: self.conn.protocol_version().unwrap_or(rustls::ProtocolVersion::Unknown(0)),
            cipher: self
                .conn
                .negotiated_cipher_suite()
                .map_or(rustls::CipherSuite::Unknown(0), |s| s.suite()),
            sni: self.conn.server_name().map(str::to_owned),
        })
    }

    /// Reads plaintext, appending to `out`. `Ok(0)` is end of stream (close_notify or a TCP
    /// close).
    pub async fn read(&mut self, out: &mut Vec<u8>) -> stdio::Result<usize> {
        self.read_as(out, false).await
    }

    /// [`read`](Self::read) for a wait that may last (between requests): the socket read
    /// holds no full-size buffer until bytes arrive.
    pub async fn read_idle(&mut self, out: &mut Vec<u8>) -> stdio::Result<usize> {
        self.read_as(out, true).await
    }

    async fn read_as(&mut self, out: &mut Vec<u8>, mut idle: bool) -> stdio::Result<usize> {
        loop {
            match self.take_plaintext(out)? {
                Plaintext::Got(n) => return Ok(n),
                Plaintext::Closed => return Ok(0),
                Plaintext::None => {}
            }
            if self.conn.wants_write() {
                // Post-handshake messages (TLS 1.3 tickets, key updates) go out before we wait.
                self.flush().await?;
            }
            // Only the first wait is idle: the rest of a record that has begun comes at once.
            if !self.fill(std::mem::take(&mut idle)).await? {
                // Whatever rustls still holds was delivered above; a TCP close without
                // close_notify ends the stream too (HTTP framing tells truncation apart).
                return Ok(0);
            }
        }
    }

    /// Plaintext rustls already decrypted, appended to `out`.
    fn take_plaintext(&mut self, out: &mut Vec<u8>) -> stdio::Result<Plaintext> {
        let start = out.len();
        let state = self.conn.process_new_packets().map_err(invalid)?;
        let n = state.plaintext_bytes_to_read();
        if n == 0 {
            // close_notify: the client will send nothing more, even if it keeps TCP open.
            return Ok(if state.peer_has_closed() { Plaintext::Closed } else { Plaintext::None });
        }
        out.resize(start + n, 0);
        let got = match self.conn.reader().read(&mut out[start..]) {
            Ok(got) => got,
            Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => 0,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        out.truncate(start + got);
        Ok(if got == 0 { Plaintext::None } else { Plaintext::Got(got) })
    }

    /// Reads ciphertext from the socket into rustls (`idle`: see [`io::Stream::read_idle`]);
    /// false at end of stream.
    async fn fill(&mut self, idle: bool) -> stdio::Result<bool> {
        if self.rpos == self.rbuf.len() {
            if self.eof {
                return Ok(false);
            }
            let spent = std::mem::take(&mut self.rbuf);
            self.rpos = 0;
            let (res, buf) = if idle {
                io::buf::give(spent);
                self.stream.read_idle().await
            } else {
                // The floor's first-flight buffer and the idle one are too small for a record.
                let mut b = spent;
                if b.capacity() < READ_CHUNK {
                    io::buf::give(b);
                    b = io::buf::take();
                }
                b.clear();
                self.stream.read(b, READ_CHUNK).await
            };
            self.rbuf = buf;
            if res? == 0 {
                io::buf::give(std::mem::take(&mut self.rbuf));
                self.eof = true;
                return Ok(false);
            }
        }
        let mut input: &[u8] = &self.rbuf[self.rpos..];
        let n = self.conn.read_tls(&mut input)?;
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            io::buf::give(std::mem::take(&mut self.rbuf));
            self.rpos = 0;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued for the peer, then fail.
            let _ = self.flush().await;
            return Err(invalid(e));
        }
        Ok(true)
    }

    /// Encrypts and sends all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> stdio::Result<()> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = &data[n..];
            if n == 0 || self.conn.wants_write() {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Encrypts and sends all of `data`, then flushes: one complete write to the client.
    pub async fn send(&mut self, data: &[u8]) -> stdio::Result<()> {
        self.write_all(data).await?;
        self.flush().await
    }

    /// Sends every TLS record rustls has queued.
    pub async fn flush(&mut self) -> stdio::Result<()> {
        while self.conn.wants_write() {
            let mut out = io::buf::take();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut out)?;
            }
            let (res, buf) = io::timeout(self.write_timeout, self.stream.write_all(out)).await?;
            io::buf::give(buf);
            res?;
        }
        Ok(())
    }

    /// Ends the connection politely: close_notify, FIN, then a short wait for the client's
    /// own close, reading and discarding what it still sends, so that a response is not
    /// destroyed by a reset caused by unread request bytes.
    pub async fn close(mut self, linger: Duration) {
        self.conn.send_close_notify();
        if !matches!(io::timeout(linger, self.flush()).await, Ok(Ok(()))) {
            return;
        }
        self.stream.shutdown_write();
        let _ = io::timeout(linger, async {
            let mut buf = io::buf::take();
            for _ in 0..64 {
                let (res, b) = self.stream.read(buf, READ_CHUNK).await;
                buf = b;
                buf.clear();
                if !matches!(res, Ok(n) if n > 0) {
                    break;
                }
            }
            io::buf::give(buf);
        })
        .await;
    }
}

/// What [`TlsConn::take_plaintext`] found.
enum Plaintext {
    Got(usize),
    None,
    Closed,
}

fn invalid(e: rustls::Error) -> stdio::Error {
    stdio::Error::new(stdio::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_reused_until_names_change() {
        let dir = std::env::temp_dir().join(format!("outpost-tls-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (c1, _) = self_signed(&dir, &[]).unwrap();
        let first = fs::read(&c1).unwrap();
        let (c2, _) = self_signed(&dir, &[]).unwrap();
        assert_eq!(first, fs::read(&c2).unwrap(), "regenerated without a reason");
        self_signed(&dir, &["edge.test".into()]).unwrap();
        assert_ne!(first, fs::read(&c2).unwrap(), "names changed but the certificate did not");
        let tls = TlsConfig { certs: vec![], self_signed_names: vec!["edge.test".into()] };
        server_config(&tls, &dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
