//! TLS termination: the rustls server configuration (certificates by SNI, the self-signed
//! fallback) and [`TlsConn`], rustls driven over the I/O seam's owned-buffer reads and writes.
//!
//! rustls runs the handshake sans-IO through its unbuffered API (`process_tls_records` over our
//! own buffers), so the same code runs over io_uring and epoll, and the bytes the floor read
//! before rustls are simply the first input. rustls is shown the client's records one at a
//! time, and none after the client's Finished: [`records`](crate::records) takes over every
//! record after it, with the keys rustls hands over, however the reads split them.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection},
    sign::CertifiedKey,
    unbuffered::{ConnectionState, EncodeError, UnbufferedStatus},
    ServerConfig,
};

use crate::{
    config::TlsConfig,
    io,
    records::{self, Opened, Records},
};

use std::io as stdio;

/// ALPN protocol names (RFC 7301, RFC 9113 §3.2).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ALPN_H2: &[u8] = b"h2";
/// Names the self-signed certificate always carries.
const SELF_SIGNED_BASE: [&str; 2] = ["localhost", "127.0.0.1"];
/// Ciphertext read size: one full TLS record plus its header and tag.
const READ_CHUNK: usize = io::buf::SIZE;

/// The edge's TLS 1.3 and 1.2 suites, in the order it prefers them when the client has AES
/// hardware (as BoringSSL orders them): AES-128-GCM first, whose handshake hashes with SHA-256
/// (in hardware here) where AES-256-GCM's SHA-384 cost a full handshake as much as its X25519.
/// Both AES-GCM suites are as strong as TLS needs; AES-128-GCM is TLS 1.3's mandatory suite.
const SUITES: [rustls::SupportedCipherSuite; 9] = {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// The server configurations of one generation: the same certificates, versions and ALPN,
/// chosen per connection by the client's first cipher suite.
pub struct ServerConfigs {
    /// The edge's order ([`SUITES`]) decides.
    ours: Arc<ServerConfig>,
    /// The client's order decides: for a client that names ChaCha20-Poly1305 first, which is
    /// how one without AES hardware says so (OpenSSL's `PRIORITIZE_CHACHA`).
    theirs: Arc<ServerConfig>,
}

impl ServerConfigs {
    pub fn new(ours: Arc<ServerConfig>) -> ServerConfigs {
        let mut theirs = (*ours).clone();
        theirs.ignore_client_order = false;
        ServerConfigs { ours, theirs: Arc::new(theirs) }
    }

    /// The configuration for a connection whose first flight (read by the floor) is `first`.
    /// The hello is read again here, by the same parser in its recording mode: the floor's plain
    /// read skips the cipher suites. About 1 us of a full handshake's 134 (perf, 0.3 % of
    /// samples).
    pub fn for_first_flight(&self, first: &[u8]) -> &Arc<ServerConfig> {
        let (_, hello) = outpost_common::hello::record_hello(first);
        match hello {
            Some(h) if h.n_ciphers > 0 && is_chacha(h.ciphers[0]) => &self.theirs,
            _ => &self.ours,
        }
    }
}

/// ChaCha20-Poly1305 suites of TLS 1.3 (RFC 8446) and TLS 1.2 (RFC 7905).
fn is_chacha(suite: u16) -> bool {
    matches!(suite, 0x1303 | 0xcca8 | 0xcca9)
}

/// Builds the rustls server configuration from `[tls]`: TLS 1.3 and 1.2 only, the aws-lc-rs
/// provider (its X25519 costs half of ring's) with [`SUITES`] in the edge's order, the
/// X25519MLKEM768 hybrid preferred when the client offers it, ALPN `h2` (when `h2`,
/// preferred) and `http/1.1`, certificates by SNI.
pub fn server_config(tls: &TlsConfig, data_dir: &Path, h2: bool) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: SUITES.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let resolver = SniResolver::build(&cert_files(tls, data_dir)?, |cert, key| {
        load_key(cert, key, &provider)
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("rustls refused TLS 1.2/1.3 with the aws-lc-rs provider")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // Our order of suites decides ([`ServerConfigs`] keeps a twin where the client's does).
    config.ignore_client_order = true;
    // ALPN: the server's order decides too (rustls picks the first of ours the client offers).
    config.alpn_protocols = match h2 {
        true => vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
        false => vec![ALPN_HTTP11.to_vec()],
    };
    // The traffic keys go to `records` once the handshake is done; they never leave it.
    config.enable_secret_extraction = true;
    // Resumption by stateless tickets (the session sealed under a key of this process, rotated
    // every 6 hours), as nginx's default: rustls' own default keeps sessions in a cache of 256
    // here, and an edge that has seen more clients since has forgotten a returning one's.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .context("rustls could not make a session ticket key")?;
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
        LAST_SNI.set(Some(hello.server_name().map(str::to_owned)));
        Some(self.lookup(hello.server_name()).clone())
    }
}

/// What a finished handshake negotiated.
#[derive(Clone, Debug)]
pub struct Negotiated {
    pub version: rustls::ProtocolVersion,
    pub cipher: rustls::CipherSuite,
    pub sni: Option<String>,
    /// The application protocol the client and we agreed on by ALPN, if the client offered one.
    pub alpn: Alpn,
}

/// What ALPN settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// The client offered no ALPN (HTTP/1.1 is assumed).
    None,
    Http11,
    H2,
}

impl Alpn {
    /// The label in `outpost_tls_alpn_total`.
    pub fn name(self) -> &'static str {
        match self {
            Alpn::None => "none",
            Alpn::Http11 => "http/1.1",
            Alpn::H2 => "h2",
        }
    }
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
/// The handshake is rustls' unbuffered API over our pooled buffers ([`io::buf`]); then
/// [`Records`] opens each record in place in the buffer the socket read into and seals each
/// one in place in the buffer that goes to the socket (rustls 0.23 would move every record
/// through a `Vec` of its own both ways). Buffers are given back as soon as they are spent, so
/// an idle connection costs its keys and the idle read (see [`io::Stream::read_idle`]), and no
/// deframer buffer (4 KiB with rustls' buffered API).
pub struct TlsConn {
    stream: io::Stream,
    conn: Phase,
    /// Ciphertext read but not yet consumed: during the handshake, the records rustls has not
    /// discarded and those it was not shown yet; then, at most the beginning of one record,
    /// since every complete record is opened before the next read. Empty with no capacity
    /// otherwise.
    rbuf: Vec<u8>,
    /// During the handshake, where the last record rustls was shown ends in `rbuf` (beyond its
    /// end when that record is incomplete): rustls sees one record more only once it is
    /// blocked, so it never sees a record after the client's Finished.
    shown: usize,
    /// Records encoded for the socket and not yet written. Empty with no capacity otherwise.
    wbuf: Vec<u8>,
    /// The socket reached end of stream.
    eof: bool,
    /// The client's close_notify arrived: it sends nothing more, even if it keeps TCP open.
    peer_closed: bool,
    /// rustls failed on the client's input and its alert was sent: rustls is not run again.
    failed: bool,
    /// Our close_notify went out (a spliced connection whose origin closed first).
    close_sent: bool,
    /// A write was abandoned part way (a splice stopped while it wrote): the record stream to
    /// the client may end inside a record, so nothing more is sealed for it.
    torn: bool,
    /// The alert for the client's broken records, while the connection was split: the reader
    /// could not send it (the writer may have been in the middle of a record).
    alert_owed: Option<u8>,
    write_timeout: Duration,
    /// The timer of every write ([`io::Deadline`]).
    write_deadline: io::Deadline,
}

/// Who handles the connection's records.
enum Phase {
    /// rustls, through the handshake.
    Handshake(Box<UnbufferedServerConnection>),
    /// [`Records`], with the keys rustls handed over; in a cell so that the two halves of a
    /// split connection ([`TlsConn::split`]) can each seal or open between their awaits.
    Traffic(Box<RefCell<Records>>),
    /// Neither: the hand-over failed.
    Gone,
}

/// A complete handshake message may span records; rustls limits one to 64 KiB. Buffered
/// ciphertext beyond this and a record is refused.
const MAX_PENDING: usize = 0x1_0000 + READ_CHUNK;

/// Where rustls stopped.
enum Driven {
    /// It needs more ciphertext from the client (the handshake waits for its next flight, or
    /// no complete record is buffered) and cannot send application data yet.
    Blocked,
    /// The handshake is done and everything rustls queued is encoded: application data may
    /// flow, through [`Records`].
    Traffic,
    /// Both sides sent close_notify.
    Closed,
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
        let conn =
            UnbufferedServerConnection::new(config).context("creating a rustls connection")?;
        Ok(TlsConn {
            stream,
            conn: Phase::Handshake(Box::new(conn)),
            rbuf: first_flight,
            shown: 0,
            wbuf: Vec::new(),
            eof: false,
            peer_closed: false,
            failed: false,
            close_sent: false,
            torn: false,
            alert_owed: None,
            write_timeout,
            write_deadline: io::Deadline::default(),
        })
    }

    /// Completes the handshake by `deadline`.
    pub async fn handshake(&mut self, deadline: Instant) -> stdio::Result<Negotiated> {
        let mut sni = None;
        io::timeout_at(deadline, async {
            loop {
                let driven = self.drive();
                if let Some(seen) = LAST_SNI.take() {
                    sni = seen;
                }
                let driven = match driven {
                    Ok(d) => d,
                    Err(e) => return Err(self.fail(e).await),
                };
                if !self.rustls().is_some_and(|c| c.is_handshaking()) {
                    break;
                }
                // Our flight goes out before we wait for the client's next one.
                self.write_out().await?;
                if self.peer_closed || matches!(driven, Driven::Closed) || !self.fill(false).await?
                {
                    return Err(stdio::Error::new(
                        stdio::ErrorKind::UnexpectedEof,
                        "client closed during the handshake",
                    ));
                }
            }
            // The rest of the flight and the TLS 1.3 session tickets.
            self.write_out().await
        })
        .await??;
        let Phase::Handshake(conn) = std::mem::replace(&mut self.conn, Phase::Gone) else {
            return Err(stdio::Error::other("the handshake ran twice"));
        };
        let negotiated = Negotiated {
            version: conn.protocol_version().unwrap_or(rustls::ProtocolVersion::Unknown(0)),
            cipher: conn
                .negotiated_cipher_suite()
                .map_or(rustls::CipherSuite::Unknown(0), |s| s.suite()),
            sni,
            alpn: match conn.alpn_protocol() {
                Some(ALPN_H2) => Alpn::H2,
                Some(_) => Alpn::Http11,
                None => Alpn::None,
            },
        };
        // rustls has sent everything, and was shown nothing after the client's Finished, which
        // it discarded: the records left in `rbuf` are for `Records`.
        if self.shown != 0 {
            return Err(stdio::Error::other("rustls kept records after the handshake"));
        }
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(invalid)?;
        let records = Records::new(secrets, kernel).map_err(stdio::Error::other)?;
        self.conn = Phase::Traffic(Box::new(RefCell::new(records)));
        Ok(negotiated)
    }

    /// rustls, while it runs the handshake.
    fn rustls(&mut self) -> Option<&mut UnbufferedServerConnection> {
        match &mut self.conn {
            Phase::Handshake(c) => Some(c),
            _ => None,
        }
    }

    /// Reads plaintext, appending to `out`. `Ok(0)` is end of stream (close_notify or a TCP
    /// close). An `out` without capacity is given a small pooled buffer
    /// ([`io::buf::take_idle`]) when plaintext arrives; give it back with [`io::buf::give`]
    /// once spent.
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
            let start = out.len();
            // The rare steps of a read (failing, answering a key update) run boxed: a
            // connection waiting for its next request is sized by this future, which then only
            // needs room for the socket read.
            if let Err(e) = self.open(out) {
                return Err(Box::pin(self.fail_traffic(e)).await);
            }
            if out.len() > start {
                return Ok(out.len() - start);
            }
            if self.peer_closed || self.failed {
                return Ok(0);
            }
            if !self.wbuf.is_empty() {
                Box::pin(self.write_out()).await?;
            }
            // Only the first wait is idle: the rest of a record that has begun comes at once.
            if !self.fill(std::mem::take(&mut idle)).await? {
                // A TCP close without close_notify ends the stream too (HTTP framing tells
                // truncation apart).
                return Ok(0);
            }
        }
    }

    /// Opens every complete record buffered, appending application data to `plain` (given a
    /// small pooled buffer when it has none, grown when a record does not fit).
    fn open(&mut self, plain: &mut Vec<u8>) -> Result<(), records::Error> {
        let Phase::Traffic(records) = &mut self.conn else {
            return Err(records::Error::internal("no TLS session to read from"));
        };
        open_records(records.get_mut(), &mut self.rbuf, &mut self.peer_closed, plain)
    }

    /// The client's records broke the protocol: sends the alert, if one is due, then fails.
    async fn fail_traffic(&mut self, e: records::Error) -> stdio::Error {
        if !self.failed {
            self.failed = true;
            io::buf::give(std::mem::take(&mut self.rbuf));
            if let (Phase::Traffic(records), Some(description)) = (&mut self.conn, e.alert()) {
                if records.get_mut().seal_alert(description, &mut self.wbuf).is_ok() {
                    let _ = self.write_out().await;
                }
            }
        }
        stdio::Error::new(stdio::ErrorKind::InvalidData, e)
    }

    /// Runs rustls over the buffered ciphertext, one record more each time it is blocked, until
    /// it needs the socket: records rustls wants sent are encoded into `wbuf`.
    fn drive(&mut self) -> Result<Driven, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General("the connection already failed".into()));
        }
        loop {
            let Phase::Handshake(conn) = &mut self.conn else {
                return Err(rustls::Error::General("the handshake is over".into()));
            };
            let shown = self.shown.min(self.rbuf.len());
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut self.rbuf[..shown]);
            let done = match state? {
                // Early data is off, and rustls sees nothing after the client's Finished.
                ConnectionState::ReadTraffic(_) => {
                    return Err(rustls::Error::General("application data in a handshake".into()))
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    put(&mut self.wbuf, |b| data.encode(b))
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                    None
                }
                // Sent by the caller before it waits for the client.
                ConnectionState::TransmitTlsData(sent) => {
                    sent.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::WriteTraffic(_) => Some(Driven::Traffic),
                ConnectionState::BlockedHandshake => match record_end(&self.rbuf, self.shown) {
                    // The next record, once its header is here (whole or not: rustls checks
                    // the header and waits for the rest).
                    Some(end) => {
                        self.shown = end;
                        None
                    }
                    None => Some(Driven::Blocked),
                },
                ConnectionState::Closed => Some(Driven::Closed),
                // Early data is off (`max_early_data_size` is 0); later states are not ours.
                _ => return Err(rustls::Error::General("unexpected TLS state".into())),
            };
            self.rbuf.drain(..discard);
            self.shown -= discard;
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                io::buf::give(std::mem::take(&mut self.rbuf));
            }
            if let Some(done) = done {
                return Ok(done);
            }
        }
    }

    /// rustls refused the client's input: sends the alert it queued, then fails.
    async fn fail(&mut self, e: rustls::Error) -> stdio::Error {
        if !self.failed {
            self.failed = true;
            // The input is not looked at again: running rustls over it would fail anew.
            io::buf::give(std::mem::take(&mut self.rbuf));
            // While records are queued, rustls hands them out (after any plaintext it holds,
            // dropped here) before it deframes anything.
            while let Phase::Handshake(conn) = &mut self.conn {
                if !conn.wants_write() {
                    break;
                }
                let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
                match state {
                    Ok(ConnectionState::EncodeTlsData(mut data)) => {
                        if put(&mut self.wbuf, |b| data.encode(b)).is_err() {
                            break;
                        }
                    }
                    Ok(ConnectionState::ReadTraffic(mut records)) => {
                        while records.next_record().is_some() {}
                    }
                    _ => break,
                }
            }
            let _ = self.write_out().await;
        }
        invalid(e)
    }

    /// Reads ciphertext from the socket after what rustls left (`idle`: see
    /// [`io::Stream::read_idle`]); false at end of stream.
    async fn fill(&mut self, idle: bool) -> stdio::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let (res, buf) = if idle && self.rbuf.is_empty() {
            self.stream.read_idle().await
        } else {
            let mut b = std::mem::take(&mut self.rbuf);
            if b.capacity() < READ_CHUNK {
                // The floor's first-flight buffer and the idle one are too small for a record.
                let mut pooled = io::buf::take();
                pooled.extend_from_slice(&b);
                io::buf::give(b);
                b = pooled;
            }
            if b.len() >= MAX_PENDING {
                io::buf::give(b);
                return Err(stdio::Error::new(
                    stdio::ErrorKind::InvalidData,
                    "a TLS handshake message larger than 64 KiB",
                ));
            }
            // What is left of a pooled buffer holds the rest of the record it begins with; only
            // a handshake message spread over records may need more.
            let want = match b.capacity() - b.len() {
                0 => READ_CHUNK,
                spare => spare,
            };
            self.stream.read(b, want).await
        };
        self.rbuf = buf;
        match res {
            Ok(n) if n > 0 => Ok(true),
            end => {
                if self.rbuf.is_empty() {
                    io::buf::give(std::mem::take(&mut self.rbuf));
                }
                end?;
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// Encrypts and sends all of `data`. Full buffers are written as they fill; the last
    /// records may wait in the outgoing buffer for [`flush`](Self::flush).
    pub async fn write_all(&mut self, mut data: &[u8]) -> stdio::Result<()> {
        while !data.is_empty() {
            let chunk = &data[..data.len().min(records::MAX_PLAINTEXT)];
            if !self.wbuf.is_empty()
                && self.wbuf.len() + 2 * (chunk.len() + records::OVERHEAD) > self.wbuf.capacity()
            {
                self.write_out().await?;
            }
            if self.wbuf.capacity() == 0 {
                self.wbuf = io::buf::take();
            }
            let Phase::Traffic(records) = &mut self.conn else {
                return Err(stdio::Error::new(
                    stdio::ErrorKind::NotConnected,
                    "the TLS connection cannot send application data",
                ));
            };
            records.get_mut().seal(chunk, &mut self.wbuf).map_err(stdio::Error::other)?;
            data = &data[chunk.len()..];
        }
        Ok(())
    }

    /// Encrypts and sends all of `data`, then flushes: one complete write to the client.
    pub async fn send(&mut self, data: &[u8]) -> stdio::Result<()> {
        self.write_all(data).await?;
        self.flush().await
    }

    /// Sends every TLS record already sealed.
    pub async fn flush(&mut self) -> stdio::Result<()> {
        self.write_out().await
    }

    /// Writes the encoded records to the socket and gives their buffer back.
    async fn write_out(&mut self) -> stdio::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.wbuf);
        // Pinned where it is built: a write's future is some hundred bytes, and the timeout
        // holding it by value copied it on every write.
        let write = std::pin::pin!(self.stream.write_all(out));
        let (res, buf) = self.write_deadline.within(self.write_timeout, write).await?;
        io::buf::give(buf);
        res
    }

    /// Ends the connection politely: close_notify, FIN, then a short wait for the client's
    /// own close, reading and discarding what it still sends, so that a response is not
    /// destroyed by a reset caused by unread request bytes.
    pub async fn close(mut self, linger: Duration) {
        // Nothing to do when the handshake never finished or the connection failed (the error
        // went out as an alert, or goes now if its split halves left it owed), nor when the
        // halves sent close_notify or tore the stream.
        if let (Phase::Traffic(records), false) = (&mut self.conn, self.torn) {
            let records = records.get_mut();
            if let Some(description) = self.alert_owed.take() {
                let _ = records.seal_alert(description, &mut self.wbuf);
            } else if !(self.failed || self.close_sent) {
                let _ = records.seal_close_notify(&mut self.wbuf);
            }
        }
        if !matches!(io::timeout(linger, self.write_out()).await, Ok(Ok(()))) {
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

impl TlsConn {
    /// The connection in two halves that work at once: the reader opens the client's records
    /// while the writer seals ours, each with its own socket operation in flight (a splice's
    /// two directions; HTTP/2, which reads frames while responses are written). The halves
    /// borrow the connection, which is closed with [`TlsConn::close`] once they are gone: it
    /// knows what they did (a close_notify sent, a write torn, an alert owed). `None` unless
    /// the handshake finished and nothing failed.
    ///
    /// Dropping the halves mid-operation ends what the connection can do: a read dropped
    /// loses what it was reading (the connection is closing), a write dropped leaves the
    /// connection torn (no close_notify follows a record that may be cut short).
    pub(crate) fn split(&mut self) -> Option<(TlsReader<'_>, TlsWriter<'_>)> {
        if self.failed || self.torn {
            return None;
        }
        let Phase::Traffic(records) = &self.conn else { return None };
        let (read, write) = self.stream.split();
        let failed = Cell::from_mut(&mut self.failed);
        let alert = Cell::from_mut(&mut self.alert_owed);
        let reader = TlsReader {
            stream: read,
            records,
            rbuf: &mut self.rbuf,
            eof: &mut self.eof,
            peer_closed: &mut self.peer_closed,
            failed,
            alert,
        };
        let writer = TlsWriter {
            stream: write,
            records,
            wbuf: &mut self.wbuf,
            close_sent: &mut self.close_sent,
            torn: &mut self.torn,
            failed,
            alert,
            write_timeout: self.write_timeout,
        };
        Some((reader, writer))
    }
}

/// The receiving half of a split [`TlsConn`].
pub(crate) struct TlsReader<'a> {
    stream: io::ReadHalf<'a>,
    records: &'a RefCell<Records>,
    rbuf: &'a mut Vec<u8>,
    eof: &'a mut bool,
    peer_closed: &'a mut bool,
    /// Shared with the writer, which stops sending once the client's records failed.
    failed: &'a Cell<bool>,
    alert: &'a Cell<Option<u8>>,
}

impl TlsReader<'_> {
    /// Reads plaintext, appending to `out` (given a small pooled buffer when it has no
    /// capacity, as [`TlsConn::read`]); `Ok(0)` at the client's close_notify or FIN. A client's
    /// protocol error fails the connection; its alert is left to the writer (which may be in
    /// the middle of a record now), or to [`TlsConn::close`].
    pub(crate) async fn read(&mut self, out: &mut Vec<u8>) -> stdio::Result<usize> {
        loop {
            let start = out.len();
            let opened = {
                let mut records = self.records.borrow_mut();
                open_records(&mut records, self.rbuf, self.peer_closed, out)
            };
            if let Err(e) = opened {
                if !self.failed.replace(true) {
                    self.alert.set(e.alert());
                }
                io::buf::give(std::mem::take(self.rbuf));
                return Err(stdio::Error::new(stdio::ErrorKind::InvalidData, e));
            }
            if out.len() > start {
                return Ok(out.len() - start);
            }
            if *self.peer_closed || *self.eof || self.failed.get() {
                return Ok(0);
            }
            let mut b = std::mem::take(self.rbuf);
            if b.capacity() < READ_CHUNK {
                let mut pooled = io::buf::take();
                pooled.extend_from_slice(&b);
                io::buf::give(b);
                b = pooled;
            }
            // A pooled buffer holds a whole record: what is left of it is the rest of the one
            // it begins with.
            let want = (b.capacity() - b.len()).max(1);
            let (res, b) = self.stream.read(b, want).await;
            *self.rbuf = b;
            match res {
                Ok(n) if n > 0 => {}
                end => {
                    if self.rbuf.is_empty() {
                        io::buf::give(std::mem::take(self.rbuf));
                    }
                    end?;
                    *self.eof = true;
                }
            }
        }
    }
}

/// The sending half of a split [`TlsConn`].
pub(crate) struct TlsWriter<'a> {
    stream: io::WriteHalf<'a>,
    records: &'a RefCell<Records>,
    wbuf: &'a mut Vec<u8>,
    close_sent: &'a mut bool,
    torn: &'a mut bool,
    failed: &'a Cell<bool>,
    alert: &'a Cell<Option<u8>>,
    write_timeout: Duration,
}

impl TlsWriter<'_> {
    /// Seals and sends all of `data`: one record per [`records::MAX_PLAINTEXT`] bytes, a
    /// pooled buffer's worth at a time. Once the reader failed, sends the alert it owes
    /// instead, and then nothing more.
    pub(crate) async fn send(&mut self, mut data: &[u8]) -> stdio::Result<()> {
        self.refuse_if_failed().await?;
        while !data.is_empty() {
            let chunk = &data[..data.len().min(records::MAX_PLAINTEXT)];
            if !self.wbuf.is_empty()
                && self.wbuf.len() + 2 * (chunk.len() + records::OVERHEAD) > self.wbuf.capacity()
            {
                self.write_out().await?;
            }
            if self.wbuf.capacity() == 0 {
                *self.wbuf = io::buf::take();
            }
            self.records.borrow_mut().seal(chunk, self.wbuf).map_err(stdio::Error::other)?;
            data = &data[chunk.len()..];
        }
        self.write_out().await
    }

    /// Sends close_notify and FIN: nothing more comes from this side; the client may still
    /// send (TLS 1.3 closes each direction on its own; a TLS 1.2 client may stop reading).
    pub(crate) async fn close(&mut self) -> stdio::Result<()> {
        if *self.close_sent {
            return Ok(());
        }
        self.refuse_if_failed().await?;
        if self.wbuf.capacity() == 0 {
            *self.wbuf = io::buf::take();
        }
        self.records.borrow_mut().seal_close_notify(self.wbuf).map_err(stdio::Error::other)?;
        *self.close_sent = true;
        self.write_out().await?;
        self.stream.shutdown_write();
        Ok(())
    }

    /// Once the reader failed: sends the alert it owes, if it is still owed, and fails.
    async fn refuse_if_failed(&mut self) -> stdio::Result<()> {
        if !self.failed.get() {
            return Ok(());
        }
        if let Some(description) = self.alert.take() {
            if self.wbuf.capacity() == 0 {
                *self.wbuf = io::buf::take();
            }
            if self.records.borrow_mut().seal_alert(description, self.wbuf).is_ok() {
                let _ = self.write_out().await;
            }
        }
        Err(stdio::Error::new(
            stdio::ErrorKind::InvalidData,
            "the client broke the TLS record protocol",
        ))
    }

    async fn write_out(&mut self) -> stdio::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(self.wbuf);
        // Cleared once the whole write is done: a write dropped before leaves the connection
        // torn.
        *self.torn = true;
        let write = std::pin::pin!(self.stream.write_all(out));
        let (res, buf) = io::timeout(self.write_timeout, write).await?;
        io::buf::give(buf);
        res?;
        *self.torn = false;
        Ok(())
    }
}

/// Opens every complete record in `rbuf`, appending application data to `plain` (given a small
/// pooled buffer when it has none, grown when a record does not fit); `rbuf` goes back to the
/// pool once emptied.
fn open_records(
    records: &mut Records,
    rbuf: &mut Vec<u8>,
    peer_closed: &mut bool,
    plain: &mut Vec<u8>,
) -> Result<(), records::Error> {
    let mut used = 0;
    while !*peer_closed {
        let Some(len) = records.complete(&rbuf[used..])? else { break };
        let record = &mut rbuf[used..used + len];
        used += len;
        match records.open(record)? {
            Opened::Data(range) => {
                if plain.capacity() == 0 {
                    *plain = io::buf::take_idle();
                }
                plain.extend_from_slice(&record[range]);
            }
            Opened::Closed => *peer_closed = true,
            Opened::Nothing => {}
        }
    }
    rbuf.drain(..used);
    if rbuf.is_empty() && rbuf.capacity() > 0 {
        io::buf::give(std::mem::take(rbuf));
    }
    Ok(())
}

/// Where the record after the one ending at `shown` ends in `rbuf`, once its header is there;
/// `None` while rustls was shown an incomplete record or the next header is not complete.
fn record_end(rbuf: &[u8], shown: usize) -> Option<usize> {
    let [_, _, _, hi, lo, ..] = *rbuf.get(shown..)? else { return None };
    Some(shown + records::HEADER + u16::from_be_bytes([hi, lo]) as usize)
}

/// Lets rustls' `encode` write its handshake records at the end of `wbuf` (a pooled buffer
/// once it has none, grown when they do not fit). rustls is asked first, with no room, how much
/// it needs, so only that much is initialized.
fn put(
    wbuf: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    let need = match encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        Err(e) => return Err(e),
    };
    if wbuf.capacity() == 0 {
        *wbuf = io::buf::take();
    }
    let start = wbuf.len();
    wbuf.resize(start + need, 0);
    match encode(&mut wbuf[start..]) {
        Ok(n) => {
            wbuf.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            wbuf.truncate(start);
            Err(e)
        }
    }
}

thread_local! {
    /// The SNI of the last ClientHello [`SniResolver`] resolved on this thread (`Some(None)`:
    /// one without SNI). rustls' unbuffered server connection does not tell the SNI, and it
    /// resolves the certificate inside `process_tls_records`, on the thread that drives the
    /// connection, so [`TlsConn::handshake`] picks it up here after each call.
    static LAST_SNI: Cell<Option<Option<String>>> = const { Cell::new(None) };
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
        server_config(&tls, &dir, true).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The edge's configurations on its self-signed certificate (made in a new directory of
    /// this test, `tag`), and roots that trust it.
    fn edge_configs(tag: &str) -> (PathBuf, ServerConfigs, rustls::RootCertStore) {
        let dir = std::env::temp_dir().join(format!("outpost-{tag}-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let tls = TlsConfig { certs: vec![], self_signed_names: vec![] };
        let configs = ServerConfigs::new(server_config(&tls, &dir, true).unwrap());
        let (cert, _) = self_signed(&dir, &[]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
        (dir, configs, roots)
    }

    /// A handshake with `client` in memory, the edge picking its configuration by the
    /// ClientHello as it does for a connection; the client has read what followed it (tickets).
    fn handshake(
        configs: &ServerConfigs,
        client: Arc<rustls::ClientConfig>,
    ) -> (rustls::ClientConnection, rustls::ServerConnection) {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client, name).unwrap();
        let mut first = Vec::new();
        client.write_tls(&mut first).unwrap();
        let mut server =
            rustls::ServerConnection::new(configs.for_first_flight(&first).clone()).unwrap();
        server.read_tls(&mut &first[..]).unwrap();
        server.process_new_packets().unwrap();
        loop {
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
            if !server.is_handshaking() && !client.is_handshaking() {
                return (client, server);
            }
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
        }
    }

    /// The suite and group a full handshake with `client` settles on.
    fn negotiated(
        configs: &ServerConfigs,
        client: Arc<rustls::ClientConfig>,
    ) -> (rustls::CipherSuite, rustls::NamedGroup) {
        let (_, server) = handshake(configs, client);
        let suite = server.negotiated_cipher_suite().unwrap().suite();
        (suite, server.negotiated_key_exchange_group().unwrap().name())
    }

    /// A returning client resumes its session however many others came since (TLS 1.3 and
    /// 1.2): the ticket carries the session. A server-side cache of 256 had forgotten it.
    #[test]
    fn a_returning_client_resumes_after_many_others() {
        use rustls::{crypto::aws_lc_rs::cipher_suite as cs, HandshakeKind::*};
        let (dir, configs, roots) = edge_configs("resume");
        for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256] {
            let returning = client_config(&[suite], &roots);
            assert_eq!(handshake(&configs, returning.clone()).0.handshake_kind(), Some(Full));
            // Each of these is a new client: a resumption store of its own.
            for _ in 0..300 {
                handshake(&configs, client_config(&[suite], &roots));
            }
            let (client, _) = handshake(&configs, returning);
            assert_eq!(client.handshake_kind(), Some(Resumed), "{suite:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The edge's order decides (AES-128-GCM first) unless the client names ChaCha20-Poly1305
    /// first; a suite the client alone offers is still taken.
    #[test]
    fn the_edge_prefers_aes_128_unless_the_client_puts_chacha_first() {
        use rustls::{crypto::aws_lc_rs::cipher_suite as cs, CipherSuite as S, NamedGroup};
        let (dir, configs, roots) = edge_configs("suites");
        let (aes256, aes128, chacha) = (
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        );
        let cases = [
            // OpenSSL's and rustls' own client order.
            (vec![aes256, aes128, chacha], true, S::TLS13_AES_128_GCM_SHA256),
            // A client without AES hardware.
            (vec![chacha, aes128, aes256], true, S::TLS13_CHACHA20_POLY1305_SHA256),
            (vec![aes256], true, S::TLS13_AES_256_GCM_SHA384),
            (vec![aes256, chacha], true, S::TLS13_AES_256_GCM_SHA384),
            (
                vec![
                    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                false,
                S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
            (
                vec![
                    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                false,
                S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ),
        ];
        for (offered, tls13, expected) in cases {
            let names: Vec<_> = offered.iter().map(|s| s.suite()).collect();
            let (suite, group) = negotiated(&configs, client_config(&offered, &roots));
            assert_eq!(suite, expected, "{names:?}");
            // The client offers the post-quantum hybrid (aws-lc-rs' default order) beside
            // X25519; TLS 1.2 has no hybrid.
            let hybrid = if tls13 { NamedGroup::X25519MLKEM768 } else { NamedGroup::X25519 };
            assert_eq!(group, hybrid, "{names:?}");
        }
        // Not a hello at all: the edge's own configuration, rustls answers it.
        assert!(Arc::ptr_eq(configs.for_first_flight(b"GET / HTTP/1.1\r\n"), &configs.ours));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Larger than two records, so records are split across reads and writes both ways.
    const PAYLOAD: usize = 40_000;

    /// A client offering `suites`, in this order, of one TLS version.
    fn client_config(
        suites: &[rustls::SupportedCipherSuite],
        roots: &rustls::RootCertStore,
    ) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(CryptoProvider {
            cipher_suites: suites.to_vec(),
            ..rustls::crypto::aws_lc_rs::default_provider()
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[suites[0].version()])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Arc::new(config)
    }

    /// Handshake, echo of [`PAYLOAD`] bytes (`key_update`: twice, with a TLS 1.3 key update
    /// the client asks to be answered in between), close_notify both ways; `resumed`: the
    /// handshake must use a ticket of an earlier connection with the same `config`.
    fn echo_client(port: u16, config: &Arc<rustls::ClientConfig>, resumed: bool, key_update: bool) {
        use std::io::Read as _;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        for round in 0..if key_update { 2 } else { 1 } {
            if round == 1 {
                tls.conn.refresh_traffic_keys().unwrap();
            }
            let sent: Vec<u8> = (0..PAYLOAD).map(|i| ((i + round) % 251) as u8).collect();
            tls.write_all(&sent).unwrap();
            let mut echoed = vec![0; PAYLOAD];
            tls.read_exact(&mut echoed).unwrap();
            assert!(echoed == sent, "the echo differs from what was sent");
        }
        let kind =
            if resumed { rustls::HandshakeKind::Resumed } else { rustls::HandshakeKind::Full };
        assert_eq!(tls.conn.handshake_kind(), Some(kind));
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        // The server's close_notify: a clean end of stream.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    }

    /// TlsConn against rustls' buffered client, once per cipher suite of TLS 1.3 and 1.2
    /// (the records after the handshake are ours: each AEAD, each nonce scheme), TLS 1.3
    /// resumed (so the tickets went out) and with a key update both ways, each an echo of
    /// several records; then plain HTTP, which gets an alert.
    #[test]
    fn tls_conn_echoes_resumes_and_alerts() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        use std::io::Read as _;
        let dir = std::env::temp_dir().join(format!("outpost-tlsconn-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let tls = TlsConfig { certs: vec![], self_signed_names: vec![] };
        let config = server_config(&tls, &dir, true).unwrap();
        let (cert, _) = self_signed(&dir, &[]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let suites = [
            (cs::TLS13_AES_128_GCM_SHA256, "TLSv1.3"),
            (cs::TLS13_AES_256_GCM_SHA384, "TLSv1.3"),
            (cs::TLS13_CHACHA20_POLY1305_SHA256, "TLSv1.3"),
            (cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "TLSv1.2"),
            (cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "TLSv1.2"),
            (cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "TLSv1.2"),
        ];
        let connections = suites.len() + 2;
        let clients = std::thread::spawn(move || {
            for (suite, _) in suites {
                echo_client(port, &client_config(&[suite], &roots), false, false);
            }
            let tls13 = client_config(&[cs::TLS13_AES_128_GCM_SHA256], &roots);
            echo_client(port, &tls13, false, true);
            echo_client(port, &tls13, true, true);
            // A record that does not authenticate, after the handshake: the server's answer
            // is the bad_record_mac alert, under the session's keys.
            let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(tls13.clone(), name).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(b"x").unwrap();
            let mut one = [0; 1];
            tls.read_exact(&mut one).unwrap();
            tls.sock.write_all(&[23, 3, 3, 0, 20]).unwrap();
            tls.sock.write_all(&[0x5a; 20]).unwrap();
            let e = tls.read(&mut one).expect_err("an alert");
            let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac);
            assert_eq!(e.to_string(), alert.to_string());
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer);
            answer
        });
        let served = io::Backend::Epoll
            .block_on(async move {
                let listener = io::Listener::from_std(listener).unwrap();
                let mut served = Vec::new();
                for _ in 0..connections {
                    let (stream, _) = listener.accept().await.unwrap();
                    let limit = Duration::from_secs(10);
                    let mut conn = TlsConn::new(stream, config.clone(), Vec::new(), limit).unwrap();
                    let negotiated = conn.handshake(Instant::now() + limit).await.unwrap();
                    let mut echoed = 0;
                    loop {
                        let mut buf = Vec::new();
                        let n = conn.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        conn.send(&buf).await.unwrap();
                        echoed += n;
                    }
                    conn.close(Duration::from_secs(1)).await;
                    served.push((negotiated.version_name(), negotiated.cipher, echoed));
                }
                let (stream, _) = listener.accept().await.unwrap();
                let limit = Duration::from_secs(10);
                let mut conn = TlsConn::new(stream, config.clone(), Vec::new(), limit).unwrap();
                conn.handshake(Instant::now() + limit).await.unwrap();
                let mut buf = Vec::new();
                conn.read(&mut buf).await.unwrap();
                conn.send(&buf).await.unwrap();
                let e = conn.read(&mut buf).await.expect_err("a forged record");
                assert_eq!(e.kind(), stdio::ErrorKind::InvalidData, "{e}");
                conn.close(Duration::from_secs(1)).await;

                let (stream, _) = listener.accept().await.unwrap();
                let mut conn = TlsConn::new(stream, config.clone(), Vec::new(), limit).unwrap();
                let e = conn.handshake(Instant::now() + limit).await.expect_err("plain HTTP");
                assert_eq!(e.kind(), stdio::ErrorKind::InvalidData, "{e}");
                conn.close(Duration::from_secs(1)).await;
                served
            })
            .unwrap();
        let answer = clients.join().unwrap();
        for (i, (suite, version)) in suites.iter().enumerate() {
            assert_eq!(served[i], (*version, suite.suite(), PAYLOAD), "{suite:?}");
        }
        let key_updated = ("TLSv1.3", cs::TLS13_AES_128_GCM_SHA256.suite(), 2 * PAYLOAD);
        assert_eq!(served[suites.len()..], [key_updated, key_updated]);
        // A TLS alert record (content type 0x15), not silence.
        assert_eq!(answer.first(), Some(&0x15), "plain HTTP got {answer:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
