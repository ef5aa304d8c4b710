//! The client side of one operation: a TCP (+ TLS 1.3) connection, an HTTP/1.1 GET and its
//! response, or a legacy hello sent raw.
//!
//! TLS: rustls on aws-lc-rs (the server's signature checked with ring's code: no faster here),
//! TLS 1.3 only, no resumption (every handshake is a full one: no session cache, no tickets
//! used, no early data). The edge's certificate is self-signed, so chain validation is skipped;
//! signatures in the handshake are still verified, so the client does the work a real one does.

use std::{
    fmt,
    io::ErrorKind,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{client::Resumption, pki_types::ServerName, ClientConfig};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

/// Why an operation failed; the report counts failures by kind.
#[derive(Debug)]
pub enum OpError {
    Connect(std::io::Error),
    Tls(std::io::Error),
    Io(std::io::Error),
    /// The peer closed before a whole response.
    Eof,
    /// A response we cannot read (or not a 200).
    Http(String),
    Timeout,
}

impl OpError {
    /// A short stable name for counting.
    pub fn kind(&self) -> String {
        match self {
            OpError::Connect(e) => format!("connect: {}", io_kind(e)),
            OpError::Tls(e) => format!("tls: {}", io_kind(e)),
            OpError::Io(e) => format!("io: {}", io_kind(e)),
            OpError::Eof => "closed before a response".into(),
            OpError::Http(what) => format!("http: {what}"),
            OpError::Timeout => "timeout".into(),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Connect(e) => write!(f, "connect: {e}"),
            OpError::Tls(e) => write!(f, "TLS handshake: {e}"),
            OpError::Io(e) => write!(f, "I/O: {e}"),
            other => f.write_str(&other.kind()),
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).kind().to_string(),
        // rustls errors come wrapped as InvalidData with the alert in the message.
        None if e.kind() == ErrorKind::InvalidData => e.to_string(),
        None => e.kind().to_string(),
    }
}

/// A TLS 1.3-only client config: no resumption, no verification of the chain, X25519 only (what
/// every system under test offers; the edge would prefer the post-quantum hybrid, nginx 1.22 on
/// OpenSSL 3.0 has none). aws-lc-rs: the cheapest client lets handshake rounds measure servers.
pub fn tls_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let verifier = outpost_testkit::tls::AnyCert::new();
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    cfg.enable_early_data = false;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `None`: plain HTTP (the origin alone).
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A plain or TLS stream.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// A new connection, its TLS handshake done.
    pub async fn open(target: &Target) -> Result<Conn, OpError> {
        let tcp = TcpStream::connect(target.addr).await.map_err(OpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &target.tls {
            None => Ok(Conn::Plain(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(OpError::Tls)?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }

    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`-style summary of what was negotiated.
    pub fn negotiated(&self) -> Option<String> {
        let Conn::Tls(s) = self else { return None };
        let c = s.get_ref().1;
        Some(format!(
            "{:?} {:?} {:?}",
            c.protocol_version()?,
            c.negotiated_cipher_suite()?.suite(),
            c.negotiated_key_exchange_group()?.name()
        ))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Closes without leaving TIME_WAIT behind on this side (SO_LINGER 0: a reset), so that
    /// thousands of new connections per second do not run out of ephemeral ports.
    pub fn abort(self) {
        abort_tcp(self.tcp());
    }
}

pub fn abort_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `GET path` with a Host header; `close` asks the server to close after the response.
pub fn request_bytes(host: &str, path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: outpost-load\r\nAccept: */*\r\n\
         Connection: {connection}\r\n\r\n"
    )
    .into_bytes()
}

/// Sends one request and reads its whole response. Returns whether the connection may be reused
/// (the server did not say `Connection: close`). `buf` keeps bytes between calls.
pub async fn exchange(conn: &mut Conn, req: &[u8], buf: &mut Vec<u8>) -> Result<bool, OpError> {
    conn.write_all(req).await.map_err(OpError::Io)?;
    buf.clear();
    let (head_len, status, framing, keep) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        read_more(conn, buf).await?;
    };
    if status != 200 {
        return Err(OpError::Http(format!("status {status}")));
    }
    match framing {
        Framing::Length(n) => {
            let want = head_len + n;
            while buf.len() < want {
                read_more(conn, buf).await?;
            }
            buf.drain(..want);
        }
        Framing::Chunked => {
            let mut at = head_len;
            loop {
                let Some(line_end) = find(&buf[at..], b"\r\n") else {
                    read_more(conn, buf).await?;
                    continue;
                };
                let size_text = std::str::from_utf8(&buf[at..at + line_end])
                    .map_err(|_| OpError::Http("chunk size".into()))?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| OpError::Http("chunk size".into()))?;
                if size == 0 {
                    // No trailers expected: the last chunk ends with one more CRLF.
                    let end = at + line_end + 4;
                    while buf.len() < end {
                        read_more(conn, buf).await?;
                    }
                    buf.drain(..end);
                    break;
                }
                let next = at + line_end + 2 + size + 2;
                while buf.len() < next {
                    read_more(conn, buf).await?;
                }
                at = next;
            }
        }
        Framing::UntilClose => {
            loop {
                match conn.read_buf(buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(OpError::Io(e)),
                }
            }
            return Ok(false);
        }
    }
    Ok(keep)
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

type Head = (usize, u16, Framing, bool);

fn parse_head(buf: &[u8]) -> Result<Option<Head>, OpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(OpError::Http(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut keep = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| OpError::Http("content-length".into()))?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value.eq_ignore_ascii_case(b"chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some((head_len, status, framing, keep)))
}

/// Reads what the connection has into `buf`: end of stream is an error here.
pub(crate) async fn read_more(conn: &mut Conn, buf: &mut Vec<u8>) -> Result<(), OpError> {
    buf.reserve(4096);
    match conn.read_buf(buf).await {
        Ok(0) => Err(OpError::Eof),
        Ok(_) => Ok(()),
        Err(e) => Err(OpError::Io(e)),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the edge did with a legacy hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloOutcome {
    /// A TLS alert record came back (a userspace floor: protocol_version).
    Alert,
    /// The connection was reset (XDP reject, or a proxy that resets).
    Reset,
    /// Closed without a byte.
    Closed,
    /// Nothing before the timeout (XDP drop).
    Timeout,
    /// The TCP connection itself failed.
    ConnectFailed,
    /// Something other than an alert came back: the legacy hello was answered.
    Answered,
}

impl HelloOutcome {
    pub const ALL: [HelloOutcome; 6] = [
        HelloOutcome::Alert,
        HelloOutcome::Reset,
        HelloOutcome::Closed,
        HelloOutcome::Timeout,
        HelloOutcome::ConnectFailed,
        HelloOutcome::Answered,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HelloOutcome::Alert => "alert",
            HelloOutcome::Reset => "reset",
            HelloOutcome::Closed => "closed",
            HelloOutcome::Timeout => "timeout",
            HelloOutcome::ConnectFailed => "connect_failed",
            HelloOutcome::Answered => "answered",
        }
    }
}

/// Connects, sends `hello` raw, reads until the edge closes, resets, or `wait` passes; then
/// resets the connection (no TIME_WAIT here).
pub async fn legacy_hello(addr: SocketAddr, hello: &[u8], wait: Duration) -> HelloOutcome {
    let tcp = match tokio::time::timeout(wait, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return HelloOutcome::ConnectFailed,
    };
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    let outcome = tokio::time::timeout(wait, async {
        if let Err(e) = tcp.write_all(hello).await {
            return io_outcome(&e);
        }
        let mut first: Option<u8> = None;
        let mut buf = [0u8; 2048];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => {
                    return match first {
                        None => HelloOutcome::Closed,
                        Some(0x15) => HelloOutcome::Alert,
                        Some(_) => HelloOutcome::Answered,
                    }
                }
                Ok(n) => {
                    first.get_or_insert(buf[0]);
                    // A record that is not an alert: a ServerHello. No need to read further.
                    if first != Some(0x15) || n >= 7 {
                        return if first == Some(0x15) {
                            HelloOutcome::Alert
                        } else {
                            HelloOutcome::Answered
                        };
                    }
                }
                Err(e) => {
                    return match first {
                        Some(0x15) => HelloOutcome::Alert,
                        _ => io_outcome(&e),
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(HelloOutcome::Timeout);
    abort_tcp(&tcp);
    outcome
}

fn io_outcome(e: &std::io::Error) -> HelloOutcome {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            HelloOutcome::Reset
        }
        _ => HelloOutcome::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let head = |raw: &[u8]| parse_head(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        let (n, status, framing, keep) =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").expect("complete");
        assert_eq!((n, status, keep), (38, 200, true));
        assert!(matches!(framing, Framing::Length(5)));
        let (_, _, framing, keep) =
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                .expect("complete");
        assert!(matches!(framing, Framing::Chunked) && !keep);
        let (_, status, framing, keep) = head(b"HTTP/1.0 502 Bad\r\n\r\n").expect("complete");
        assert!(status == 502 && matches!(framing, Framing::UntilClose) && !keep);
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le").is_none());
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn legacy_hello_is_tls_1_0() {
        let h = crate::gen::LEGACY_HELLO;
        // Handshake record, ClientHello, legacy_version 0x0301.
        assert_eq!((h[0], h[5], h[9], h[10]), (0x16, 0x01, 0x03, 0x01), "{h:02x?}");
    }
}
