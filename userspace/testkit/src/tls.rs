//! A rustls client for the edge under test, whose certificate is self-signed: any certificate
//! is accepted, handshake signatures are still checked.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};

/// Accepts any certificate but checks handshake signatures.
#[derive(Debug)]
pub struct AnyCert {
    algs: WebPkiSupportedAlgorithms,
}

impl AnyCert {
    /// With the signature algorithms of rustls' ring provider.
    pub fn new() -> Arc<AnyCert> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        Arc::new(AnyCert { algs })
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// TLS 1.2 and 1.3 on ring, trusting any certificate ([`AnyCert`]).
pub fn client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(AnyCert::new())
        .with_no_client_auth()
}

/// A raw exchange over TLS: sends `request` exactly as given to 127.0.0.1:`port` (with `sni` as
/// the server name, or none), and returns what the edge wrote until it closed the connection,
/// or until `limit`. Requests should say `Connection: close` to end sooner.
pub fn exchange(port: u16, sni: Option<&str>, request: &[u8], limit: Duration) -> Vec<u8> {
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_owned()).expect("a valid server name"),
        // An IP address as the name: rustls sends no SNI then.
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let conn = rustls::ClientConnection::new(Arc::new(client_config()), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the edge");
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    if tls.write_all(request).and_then(|()| tls.flush()).is_err() {
        return Vec::new();
    }
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// The status code of an HTTP/1.1 response, 0 when there is none.
pub fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
