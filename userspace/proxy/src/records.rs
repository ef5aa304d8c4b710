//! TLS records after the handshake, opened and sealed here rather than inside rustls.
//!
//! rustls runs the handshake. Once it is done, `dangerous_into_kernel_connection` (the
//! interface rustls offers for kTLS) hands over the traffic keys, the sequence numbers, and a
//! [`KernelConnection`] that derives the next keys of a TLS 1.3 key update. Records are then
//! opened in place in the buffer the socket read into and sealed in place in the buffer that
//! goes to the socket, with ring's AEADs (rustls' own provider here): no copy inside the TLS
//! layer and no allocation per record. rustls 0.23's record layer, unbuffered API included,
//! moves every record through a `Vec` of its own in both directions.
//!
//! What a server sees after the handshake, and what happens to it (RFC 8446 §5, §6, §4.6.3;
//! RFC 5246 §6.2 for TLS 1.2), as rustls' own record layer does:
//! - application data: handed to the reader;
//! - `close_notify`: end of stream; a fatal alert ends the connection unanswered; a warning is
//!   ignored in TLS 1.2, and in TLS 1.3 only `user_canceled` is (at most 4 warnings);
//! - TLS 1.3 `KeyUpdate`, possibly split over records (handshake messages may span them), and
//!   ending its record (a key change must): the receive key moves on, and when the client asks,
//!   ours does too after a `KeyUpdate` of our own, sent before our next record (one answer for
//!   several requests, as rustls); at most 32 between two application data records (as rustls
//!   and BoringSSL allow); any other handshake message (in TLS 1.2 any: no renegotiation) is
//!   refused;
//! - a record that does not authenticate or is shorter than its tag: `bad_record_mac`; one over
//!   2^14 + 256 bytes in TLS 1.3 (2^14 + 2048 in TLS 1.2, refused from its header), or with
//!   more plaintext than 2^14 (TLS 1.3: 2^14 + 1 of inner plaintext, padding included):
//!   `record_overflow`; a malformed one: the matching alert.
//!
//! Where rustls fails without an alert (a record inside a split handshake message, too many
//! warnings or key updates), `unexpected_message` goes out: the client learns why.
//!
//! Before the send key has protected as many records as its cipher's confidentiality limit
//! allows, TLS 1.3 moves it on with a `KeyUpdate`; TLS 1.2, which cannot, fails the connection.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{
    crypto::cipher, kernel::KernelConnection, server::ServerConnectionData,
    ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite,
};

/// Record header: content type, legacy version, length.
pub const HEADER: usize = 5;
/// AEAD tag of every suite rustls offers.
const TAG: usize = 16;
/// Explicit nonce that leads each TLS 1.2 AES-GCM record.
const EXPLICIT_NONCE: usize = 8;
/// Largest plaintext of one record.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext a peer may send in TLS 1.3 (RFC 8446 §5.2).
const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
/// Largest ciphertext a peer may send in TLS 1.2 (RFC 5246 §6.2.3).
const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;
/// Most bytes [`Records::seal`] adds to a plaintext.
pub const OVERHEAD: usize = HEADER + EXPLICIT_NONCE + 1 + TAG;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
/// A handshake message's header: type and 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// A whole `KeyUpdate`: its header and `request_update`.
const KEY_UPDATE_LEN: usize = HANDSHAKE_HEADER + 1;

const WARNING: u8 = 1;
const FATAL: u8 = 2;

const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
const USER_CANCELED: u8 = 90;

/// Why a connection's records stop flowing.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The client broke the protocol, or our side cannot go on: this alert (RFC 8446 §6.2)
    /// goes to the client before the connection closes.
    Send { description: u8, why: &'static str },
    /// The client ended the connection with an error alert: it is closed without an answer
    /// (RFC 8446 §6.2: upon receipt of a fatal alert, both sides close at once).
    Received { description: u8 },
}

fn alert(description: u8, why: &'static str) -> Error {
    Error::Send { description, why }
}

impl Error {
    /// `internal_error`: our side cannot go on.
    pub fn internal(why: &'static str) -> Error {
        alert(INTERNAL_ERROR, why)
    }

    /// The alert to send the client, if any.
    pub fn alert(&self) -> Option<u8> {
        match self {
            Error::Send { description, .. } => Some(*description),
            Error::Received { .. } => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Send { description, why } => write!(f, "{why} (alert {description} sent)"),
            Error::Received { description } => write!(f, "the client sent alert {description}"),
        }
    }
}

impl std::error::Error for Error {}

/// What one record held.
pub enum Opened {
    /// Application data at this range of the buffer (possibly empty).
    Data(std::ops::Range<usize>),
    /// The client's `close_notify`.
    Closed,
    /// A record with nothing for the reader (a key update, a warning, part of a message).
    Nothing,
}

/// One direction's key, IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    /// TLS 1.2 AES-GCM: the record carries the nonce's last 8 bytes.
    explicit_nonce: bool,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets, tls12: bool) -> Result<Direction, Error> {
        let (algorithm, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(alert(INTERNAL_ERROR, "a cipher this record layer does not have")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| alert(INTERNAL_ERROR, "a traffic key of the wrong length"))?;
        let iv = iv.as_ref().try_into().map_err(|_| alert(INTERNAL_ERROR, "an IV not 12 bytes"))?;
        Ok(Direction { key: LessSafeKey::new(key), iv, seq, explicit_nonce: tls12 && gcm })
    }

    /// The IV with the sequence number mixed into its last 8 bytes (RFC 8446 §5.3; RFC 5288
    /// and 7905 for TLS 1.2, where AES-GCM sends those 8 bytes as the explicit nonce).
    fn nonce(&self) -> [u8; NONCE_LEN] {
        cipher::Nonce::new(&cipher::Iv::new(self.iv), self.seq).0
    }
}

/// Opens and seals the records of one connection after its handshake.
pub struct Records {
    tx: Direction,
    rx: Direction,
    tls13: bool,
    /// Records one send key may protect (the suite's confidentiality limit).
    tx_limit: u64,
    /// Key updates still allowed before the next application data.
    key_updates_left: u8,
    /// The client asked for a key update: ours goes out before our next record.
    answer_key_update: bool,
    /// Warning alerts still ignored.
    warnings_left: u8,
    /// A `KeyUpdate` begun in an earlier record: its first `partial_len` bytes.
    partial: [u8; KEY_UPDATE_LEN],
    partial_len: usize,
    kernel: KernelConnection<ServerConnectionData>,
}

/// Key updates allowed between two application data records (rustls' and BoringSSL's bound).
const KEY_UPDATES: u8 = 32;
/// Warning alerts ignored on one connection (rustls' and BoringSSL's bound).
const WARNINGS: u8 = 4;

impl Records {
    /// Takes over from rustls once it has processed the client's Finished (and nothing after
    /// it) and its own records are sent.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Records, Error> {
        let tls13 = kernel.protocol_version() == ProtocolVersion::TLSv1_3;
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Records {
            tx: Direction::new(tx_seq, tx, !tls13)?,
            rx: Direction::new(rx_seq, rx, !tls13)?,
            tls13,
            tx_limit,
            key_updates_left: KEY_UPDATES,
            answer_key_update: false,
            warnings_left: WARNINGS,
            partial: [0; KEY_UPDATE_LEN],
            partial_len: 0,
            kernel,
        })
    }

    /// The length of the first record in `buf` when all of it is there. A length over the
    /// version's limit is refused from the header, before the record is read.
    pub fn complete(&self, buf: &[u8]) -> Result<Option<usize>, Error> {
        let [_, _, _, hi, lo, ..] = *buf else { return Ok(None) };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        let max = if self.tls13 { MAX_CIPHERTEXT_TLS13 } else { MAX_CIPHERTEXT_TLS12 };
        if len > max {
            return Err(alert(RECORD_OVERFLOW, "a record longer than TLS allows"));
        }
        Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens the record that is all of `record` (see [`complete`](Self::complete)) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, Error> {
        let (start, typ, len) = self.decrypt(record)?;
        let content = &record[start..start + len];
        if self.partial_len > 0 && typ != HANDSHAKE {
            // RFC 8446 §5.1: the records of a handshake message come one after the other.
            return Err(alert(UNEXPECTED_MESSAGE, "a record inside a handshake message"));
        }
        match typ {
            APPLICATION_DATA => {
                self.key_updates_left = KEY_UPDATES;
                Ok(Opened::Data(start..start + len))
            }
            ALERT => self.alert(content),
            HANDSHAKE if self.tls13 => {
                self.handshake(content)?;
                Ok(Opened::Nothing)
            }
            HANDSHAKE => Err(alert(UNEXPECTED_MESSAGE, "renegotiation is not supported")),
            _ => Err(alert(UNEXPECTED_MESSAGE, "an unexpected record type")),
        }
    }

    /// Authenticates and decrypts `record` in place: where its content starts, its content
    /// type and its length.
    fn decrypt(&mut self, record: &mut [u8]) -> Result<(usize, u8, usize), Error> {
        let (header, body) = record.split_at_mut(HEADER);
        let outer = header[0];
        let opened = if self.tls13 {
            if outer != APPLICATION_DATA {
                return Err(alert(UNEXPECTED_MESSAGE, "a record type TLS 1.3 does not use here"));
            }
            let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
            let aad = Aad::from(<[u8; HEADER]>::try_from(&*header).expect("header length"));
            let plain = self
                .rx
                .key
                .open_in_place(nonce, aad, body)
                .map_err(|_| alert(BAD_RECORD_MAC, "a record that does not authenticate"))?;
            // RFC 8446 §5.4: padding counts; the whole inner plaintext is at most 2^14 + 1.
            if plain.len() > MAX_PLAINTEXT + 1 {
                return Err(alert(RECORD_OVERFLOW, "a record with more plaintext than TLS allows"));
            }
            // The inner content type is the last byte that is not padding.
            let end = plain.iter().rposition(|&b| b != 0).ok_or_else(|| {
                alert(UNEXPECTED_MESSAGE, "a record of padding with no content type")
            })?;
            (HEADER, plain[end], end)
        } else {
            // A record too short for its nonce or tag cannot authenticate: bad_record_mac, as
            // rustls (RFC 5246 §6.2.3.3 treats every decryption failure alike).
            let (nonce, start) = if self.rx.explicit_nonce {
                let Some(explicit) = body.get(..EXPLICIT_NONCE) else {
                    return Err(alert(BAD_RECORD_MAC, "a record shorter than its nonce"));
                };
                let mut nonce = self.rx.iv;
                nonce[4..].copy_from_slice(explicit);
                (nonce, EXPLICIT_NONCE)
            } else {
                (self.rx.nonce(), 0)
            };
            let Some(plain_len) = body.len().checked_sub(start + TAG) else {
                return Err(alert(BAD_RECORD_MAC, "a record shorter than its tag"));
            };
            let version = ProtocolVersion::from(u16::from_be_bytes([header[1], header[2]]));
            let aad = cipher::make_tls12_aad(self.rx.seq, outer.into(), version, plain_len);
            let nonce = Nonce::assume_unique_for_key(nonce);
            let plain = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(aad), &mut body[start..])
                .map_err(|_| alert(BAD_RECORD_MAC, "a record that does not authenticate"))?;
            if plain.len() > MAX_PLAINTEXT {
                return Err(alert(RECORD_OVERFLOW, "a record with more plaintext than TLS allows"));
            }
            (HEADER + start, outer, plain.len())
        };
        self.rx.seq += 1;
        Ok(opened)
    }

    /// An alert from the client (RFC 8446 §6; the order of checks is rustls').
    fn alert(&mut self, content: &[u8]) -> Result<Opened, Error> {
        let [level, description] = *content else {
            return Err(alert(DECODE_ERROR, "an alert that is not two bytes"));
        };
        if level != WARNING && level != FATAL {
            return Err(alert(ILLEGAL_PARAMETER, "an alert of an unknown level"));
        }
        if description == CLOSE_NOTIFY {
            return Ok(Opened::Closed);
        }
        if level == FATAL {
            return Err(Error::Received { description });
        }
        if self.warnings_left == 0 {
            return Err(alert(UNEXPECTED_MESSAGE, "too many warning alerts"));
        }
        self.warnings_left -= 1;
        // TLS 1.3 has no warnings but these two (§6.1): the level of any other alert is
        // meaningless, and a client sending one at warning level is answered as rustls does.
        if self.tls13 && description != USER_CANCELED {
            return Err(alert(DECODE_ERROR, "a TLS 1.3 error alert at warning level"));
        }
        Ok(Opened::Nothing)
    }

    /// The content of a TLS 1.3 handshake record: post-handshake messages from a client, of
    /// which only `KeyUpdate` is expected (no client certificates are asked for). A message may
    /// begin in one record and end in a later one; a key change must end its record (§5.1).
    fn handshake(&mut self, mut content: &[u8]) -> Result<(), Error> {
        if content.is_empty() {
            return Err(alert(UNEXPECTED_MESSAGE, "an empty handshake record"));
        }
        while !content.is_empty() {
            // Fill the message's header first, then the rest its length announces; a
            // `KeyUpdate` is the only message taken, so 5 bytes are all that is ever kept.
            let want =
                if self.partial_len < HANDSHAKE_HEADER { HANDSHAKE_HEADER } else { KEY_UPDATE_LEN };
            let n = (want - self.partial_len).min(content.len());
            self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&content[..n]);
            self.partial_len += n;
            content = &content[n..];
            if self.partial[0] != KEY_UPDATE {
                return Err(alert(UNEXPECTED_MESSAGE, "a handshake message other than KeyUpdate"));
            }
            if self.partial_len == HANDSHAKE_HEADER && self.partial[1..4] != [0, 0, 1] {
                return Err(alert(DECODE_ERROR, "a KeyUpdate whose length is not 1"));
            }
            if self.partial_len < KEY_UPDATE_LEN {
                continue;
            }
            self.partial_len = 0;
            if !content.is_empty() {
                return Err(alert(UNEXPECTED_MESSAGE, "a KeyUpdate not at the end of its record"));
            }
            self.key_update(self.partial[HANDSHAKE_HEADER])?;
        }
        Ok(())
    }

    /// The client's `KeyUpdate` with this `request_update`, checked before any key moves.
    fn key_update(&mut self, request: u8) -> Result<(), Error> {
        if self.key_updates_left == 0 {
            return Err(alert(UNEXPECTED_MESSAGE, "too many key updates"));
        }
        self.key_updates_left -= 1;
        match request {
            0 => {}
            1 => self.answer_key_update = true,
            _ => return Err(alert(ILLEGAL_PARAMETER, "a KeyUpdate with an unknown request")),
        }
        let (seq, secrets) = self
            .kernel
            .update_rx_secret()
            .map_err(|_| alert(INTERNAL_ERROR, "deriving the next receive key"))?;
        self.rx = Direction::new(seq, secrets, false)?;
        Ok(())
    }

    /// Sends a `KeyUpdate` (not asking for one back) under the current send key, then moves it
    /// on.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out);
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(|_| alert(INTERNAL_ERROR, "deriving the next send key"))?;
        self.tx = Direction::new(seq, secrets, false)?;
        self.answer_key_update = false;
        Ok(())
    }

    /// Appends application data to `out` as one record (`data` is at most
    /// [`MAX_PLAINTEXT`] bytes; `out` grows by at most `data.len() + OVERHEAD`, twice that
    /// when a key update goes first).
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_checked(APPLICATION_DATA, data, out)
    }

    /// Appends the `close_notify` alert to `out`.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_checked(ALERT, &[WARNING, CLOSE_NOTIFY], out)
    }

    /// Appends the fatal alert `description` to `out`.
    pub fn seal_alert(&mut self, description: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_checked(ALERT, &[FATAL, description], out)
    }

    fn seal_checked(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        debug_assert!(data.len() <= MAX_PLAINTEXT);
        // RFC 8446 §4.6.3: the answer to a client's request goes before our next record; the
        // requests that came meanwhile share it.
        let worn = self.tx.seq >= self.tx_limit.saturating_sub(1);
        if worn && !self.tls13 {
            return Err(alert(INTERNAL_ERROR, "the send key reached its usage limit"));
        }
        if worn || self.answer_key_update {
            self.update_tx(out)?;
        }
        self.seal_record(typ, data, out);
        Ok(())
    }

    fn seal_record(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) {
        let nonce = self.tx.nonce();
        let (outer, inner_type) = if self.tls13 { (APPLICATION_DATA, 1) } else { (typ, 0) };
        let explicit = if self.tx.explicit_nonce { EXPLICIT_NONCE } else { 0 };
        let len = explicit + data.len() + inner_type + TAG;
        out.extend_from_slice(&[outer, 3, 3]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&nonce[4..4 + explicit]);
        let body = out.len();
        out.extend_from_slice(data);
        if self.tls13 {
            out.push(typ);
        }
        let (tls13_aad, tls12_aad);
        let aad: &[u8] = if self.tls13 {
            tls13_aad = cipher::make_tls13_aad(len);
            &tls13_aad
        } else {
            let version = ProtocolVersion::TLSv1_2;
            tls12_aad = cipher::make_tls12_aad(self.tx.seq, typ.into(), version, data.len());
            &tls12_aad
        };
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[body..],
            )
            .expect("a record within the AEAD's length limit");
        out.extend_from_slice(tag.as_ref());
        self.tx.seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{
        client::{ClientConnectionData, UnbufferedClientConnection},
        crypto::{ring as provider, CryptoProvider},
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
        unbuffered::{ConnectionState, UnbufferedStatus},
        ClientConfig, RootCertStore, ServerConfig,
    };

    use super::*;

    /// A server's [`Records`] after an in-memory handshake, and the client's side of the keys,
    /// so that records can be written as a client would (or would not).
    struct Pair {
        server: Records,
        client_tx: Direction,
        client: KernelConnection<ClientConnectionData>,
        tls13: bool,
    }

    /// Runs one side of the handshake over `incoming` until it waits for the other side
    /// (false) or may send application data (true); what it sends goes to `outgoing`.
    macro_rules! step {
        ($conn:expr, $incoming:expr, $outgoing:expr) => {{
            loop {
                let UnbufferedStatus { discard, state } = $conn.process_tls_records($incoming);
                let done = match state.expect("the handshake") {
                    ConnectionState::EncodeTlsData(mut d) => {
                        let mut buf = vec![0; 1 << 16];
                        let n = d.encode(&mut buf).expect("room for the flight");
                        $outgoing.extend_from_slice(&buf[..n]);
                        None
                    }
                    ConnectionState::TransmitTlsData(t) => {
                        t.done();
                        None
                    }
                    ConnectionState::BlockedHandshake => Some(false),
                    ConnectionState::WriteTraffic(_) => Some(true),
                    _ => panic!("an unexpected state in the handshake"),
                };
                $incoming.drain(..discard);
                if let Some(done) = done {
                    break done;
                }
            }
        }};
    }

    impl Pair {
        fn new(suite: SupportedCipherSuite) -> Pair {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let cert = CertificateDer::from(ck.cert.der().to_vec());
            let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
            let provider = Arc::new(CryptoProvider {
                cipher_suites: vec![suite],
                ..provider::default_provider()
            });
            let mut server = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[suite.version()])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))
                .unwrap();
            server.enable_secret_extraction = true;
            let mut roots = RootCertStore::empty();
            roots.add(cert).unwrap();
            let mut client = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[suite.version()])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            client.enable_secret_extraction = true;
            let mut s = rustls::server::UnbufferedServerConnection::new(Arc::new(server)).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut c = UnbufferedClientConnection::new(Arc::new(client), name).unwrap();
            let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
            let (mut client_done, mut server_done) = (false, false);
            for _ in 0..10 {
                client_done = step!(c, &mut to_client, to_server);
                server_done = step!(s, &mut to_server, to_client);
                if client_done && server_done {
                    break;
                }
            }
            assert!(client_done && server_done, "the in-memory handshake did not finish");
            let (secrets, kernel) = s.dangerous_into_kernel_connection().unwrap();
            let (client_secrets, client) = c.dangerous_into_kernel_connection().unwrap();
            let tls13 = suite.version().version == ProtocolVersion::TLSv1_3;
            let (seq, tx) = client_secrets.tx;
            Pair {
                server: Records::new(secrets, kernel).unwrap(),
                client_tx: Direction::new(seq, tx, !tls13).unwrap(),
                client,
                tls13,
            }
        }

        /// A record as the client seals it: content of type `typ`, and in TLS 1.3 `padding`
        /// zeros after the inner content type.
        fn record(&mut self, typ: u8, content: &[u8], padding: usize) -> Vec<u8> {
            let tx = &mut self.client_tx;
            let nonce = tx.nonce();
            let mut body = content.to_vec();
            if self.tls13 {
                body.push(typ);
                body.resize(body.len() + padding, 0);
            }
            let explicit = if tx.explicit_nonce { EXPLICIT_NONCE } else { 0 };
            let len = explicit + body.len() + TAG;
            let outer = if self.tls13 { APPLICATION_DATA } else { typ };
            let mut record = vec![outer, 3, 3];
            record.extend_from_slice(&(len as u16).to_be_bytes());
            let aad = if self.tls13 {
                cipher::make_tls13_aad(len).to_vec()
            } else {
                let version = ProtocolVersion::TLSv1_2;
                cipher::make_tls12_aad(tx.seq, typ.into(), version, body.len()).to_vec()
            };
            let nonce_ = Nonce::assume_unique_for_key(nonce);
            tx.key.seal_in_place_append_tag(nonce_, Aad::from(aad), &mut body).unwrap();
            record.extend_from_slice(&nonce[4..4 + explicit]);
            record.extend_from_slice(&body);
            tx.seq += 1;
            record
        }

        /// The client's send key after its `KeyUpdate`.
        fn client_key_update(&mut self) {
            let (seq, secrets) = self.client.update_tx_secret().unwrap();
            self.client_tx = Direction::new(seq, secrets, false).unwrap();
        }

        /// `record` through [`Records::complete`] and [`Records::open`]; application data is
        /// returned as `Ok(Some(data))`.
        fn open(&mut self, mut record: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
            let len = self.server.complete(&record)?.expect("a whole record");
            assert_eq!(len, record.len());
            match self.server.open(&mut record)? {
                Opened::Data(range) => Ok(Some(record[range].to_vec())),
                Opened::Closed => Ok(Some(b"<closed>".to_vec())),
                Opened::Nothing => Ok(None),
            }
        }
    }

    fn tls13() -> Pair {
        Pair::new(provider::cipher_suite::TLS13_AES_128_GCM_SHA256)
    }

    fn tls12() -> Pair {
        Pair::new(provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    }

    /// The alert `result` sends, panicking with `what` when it is not an error.
    fn sent<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> Option<u8> {
        match result {
            Ok(v) => panic!("{what}: accepted ({v:?})"),
            Err(e) => e.alert(),
        }
    }

    const KU_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];
    const KU_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 1];

    #[test]
    fn application_data_in_both_versions() {
        for mut p in [tls13(), tls12()] {
            let r = p.record(APPLICATION_DATA, b"GET / HTTP/1.1\r\n\r\n", 0);
            assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"GET / HTTP/1.1\r\n\r\n"[..]));
        }
    }

    #[test]
    fn a_key_update_moves_the_receive_key_and_ends_its_record() {
        let mut p = tls13();
        let r = p.record(HANDSHAKE, &KU_NOT_REQUESTED, 0);
        assert_eq!(p.open(r).unwrap(), None);
        p.client_key_update();
        let r = p.record(APPLICATION_DATA, b"after", 0);
        assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"after"[..]));

        // Two in one record: the second would be read under a key that has moved.
        let mut p = tls13();
        let r = p.record(HANDSHAKE, &[KU_NOT_REQUESTED, KU_NOT_REQUESTED].concat(), 0);
        assert_eq!(sent(p.open(r), "two KeyUpdates"), Some(UNEXPECTED_MESSAGE));
        // A KeyUpdate and the beginning of another message.
        let mut p = tls13();
        let r = p.record(HANDSHAKE, &[&KU_NOT_REQUESTED[..], &[KEY_UPDATE]].concat(), 0);
        assert_eq!(sent(p.open(r), "a KeyUpdate and more"), Some(UNEXPECTED_MESSAGE));
    }

    #[test]
    fn a_key_update_may_span_records() {
        for split in 1..KEY_UPDATE_LEN {
            let mut p = tls13();
            let r = p.record(HANDSHAKE, &KU_NOT_REQUESTED[..split], 0);
            assert_eq!(p.open(r).unwrap(), None, "split at {split}");
            let r = p.record(HANDSHAKE, &KU_NOT_REQUESTED[split..], 0);
            assert_eq!(p.open(r).unwrap(), None, "split at {split}");
            p.client_key_update();
            let r = p.record(APPLICATION_DATA, b"after", 0);
            assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"after"[..]), "split at {split}");
        }
        // One byte a record.
        let mut p = tls13();
        for b in KU_NOT_REQUESTED {
            let r = p.record(HANDSHAKE, &[b], 0);
            assert_eq!(p.open(r).unwrap(), None);
        }
        p.client_key_update();
        let r = p.record(APPLICATION_DATA, b"after", 0);
        assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"after"[..]));
        // Anything else between the parts.
        let mut p = tls13();
        let r = p.record(HANDSHAKE, &KU_NOT_REQUESTED[..2], 0);
        assert_eq!(p.open(r).unwrap(), None);
        let r = p.record(APPLICATION_DATA, b"x", 0);
        assert_eq!(sent(p.open(r), "data inside a KeyUpdate"), Some(UNEXPECTED_MESSAGE));
    }

    #[test]
    fn malformed_key_updates_get_their_alerts() {
        let cases: [(&[u8], u8); 6] = [
            (&[KEY_UPDATE, 0, 0, 1, 2], ILLEGAL_PARAMETER),
            (&[KEY_UPDATE, 0, 0, 1, 0xff], ILLEGAL_PARAMETER),
            (&[KEY_UPDATE, 0, 0, 2, 0, 0], DECODE_ERROR),
            (&[KEY_UPDATE, 0, 0, 0], DECODE_ERROR),
            (&[KEY_UPDATE, 1, 0, 0], DECODE_ERROR),
            (&[1, 0, 0, 1, 0], UNEXPECTED_MESSAGE),
        ];
        for (message, want) in cases {
            let mut p = tls13();
            let r = p.record(HANDSHAKE, message, 0);
            assert_eq!(sent(p.open(r), &format!("{message:?}")), Some(want), "{message:?}");
        }
        let mut p = tls13();
        let r = p.record(HANDSHAKE, &[], 0);
        assert_eq!(sent(p.open(r), "an empty handshake record"), Some(UNEXPECTED_MESSAGE));
    }

    #[test]
    fn key_updates_between_data_are_bounded() {
        fn updates(p: &mut Pair, n: u8) {
            for _ in 0..n {
                let r = p.record(HANDSHAKE, &KU_NOT_REQUESTED, 0);
                assert_eq!(p.open(r).unwrap(), None);
                p.client_key_update();
            }
        }
        let mut p = tls13();
        updates(&mut p, KEY_UPDATES);
        // Data between them starts the count again.
        let r = p.record(APPLICATION_DATA, b"data", 0);
        assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"data"[..]));
        updates(&mut p, KEY_UPDATES);
        let r = p.record(HANDSHAKE, &KU_NOT_REQUESTED, 0);
        assert_eq!(sent(p.open(r), "33 key updates"), Some(UNEXPECTED_MESSAGE));
    }

    #[test]
    fn an_unknown_request_is_refused_before_the_receive_key_moves() {
        let mut p = tls13();
        let rx = p.server.rx.iv;
        let r = p.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 2], 0);
        assert_eq!(sent(p.open(r), "request 2"), Some(ILLEGAL_PARAMETER));
        assert_eq!(p.server.rx.iv, rx, "the receive key moved");
    }

    #[test]
    fn a_requested_key_update_is_answered_once_before_the_next_record() {
        let mut p = tls13();
        for _ in 0..3 {
            let r = p.record(HANDSHAKE, &KU_REQUESTED, 0);
            assert_eq!(p.open(r).unwrap(), None);
            p.client_key_update();
        }
        let mut out = Vec::new();
        p.server.seal(b"answer", &mut out).unwrap();
        // The KeyUpdate record (5 bytes, the content type, the tag), then the data.
        let first = HEADER + KEY_UPDATE_LEN + 1 + TAG;
        assert_eq!(out.len(), first + HEADER + b"answer".len() + 1 + TAG, "{out:?}");
        assert_eq!(p.server.tx.seq, 1, "one key update, then one record under the new key");
        let mut again = Vec::new();
        p.server.seal(b"answer", &mut again).unwrap();
        assert_eq!(again.len(), HEADER + b"answer".len() + 1 + TAG);
    }

    #[test]
    fn tls13_record_limits() {
        let p = tls13();
        let header = |len: usize| [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        assert!(p.server.complete(&header(MAX_CIPHERTEXT_TLS13)).unwrap().is_none());
        let over = p.server.complete(&header(MAX_CIPHERTEXT_TLS13 + 1));
        assert_eq!(sent(over, "2^14 + 257"), Some(RECORD_OVERFLOW));
        // Padding counts: inner plaintext of 2^14 + 1 is the most, whatever its content.
        let mut p = tls13();
        let r = p.record(APPLICATION_DATA, b"x", MAX_PLAINTEXT - 1);
        assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"x"[..]));
        let r = p.record(APPLICATION_DATA, b"x", MAX_PLAINTEXT);
        assert_eq!(sent(p.open(r), "padded to 2^14 + 2"), Some(RECORD_OVERFLOW));
        let mut p = tls13();
        let r = p.record(APPLICATION_DATA, &[b'x'; MAX_PLAINTEXT + 1], 0);
        assert_eq!(sent(p.open(r), "2^14 + 1 of content"), Some(RECORD_OVERFLOW));
        let mut p = tls13();
        let r = p.record(0, &[], 20);
        assert_eq!(sent(p.open(r), "all padding"), Some(UNEXPECTED_MESSAGE));
    }

    #[test]
    fn tls12_record_limits_and_short_records() {
        let p = tls12();
        let header = |len: usize| [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        assert!(p.server.complete(&header(MAX_CIPHERTEXT_TLS12)).unwrap().is_none());
        let over = p.server.complete(&header(MAX_CIPHERTEXT_TLS12 + 1));
        assert_eq!(sent(over, "2^14 + 2049"), Some(RECORD_OVERFLOW));
        let mut p = tls12();
        let r = p.record(APPLICATION_DATA, &[b'x'; MAX_PLAINTEXT + 1], 0);
        assert_eq!(sent(p.open(r), "2^14 + 1 of plaintext"), Some(RECORD_OVERFLOW));
        for len in [0, 5, EXPLICIT_NONCE, EXPLICIT_NONCE + TAG - 1] {
            let mut p = tls12();
            let mut r = vec![APPLICATION_DATA, 3, 3, 0, len as u8];
            r.resize(HEADER + len, 0x5a);
            assert_eq!(sent(p.open(r), &format!("{len} bytes")), Some(BAD_RECORD_MAC), "{len}");
        }
    }

    #[test]
    fn alerts_from_the_client() {
        for mut p in [tls13(), tls12()] {
            let r = p.record(ALERT, &[WARNING, CLOSE_NOTIFY], 0);
            assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"<closed>"[..]));
        }
        for mut p in [tls13(), tls12()] {
            let r = p.record(ALERT, &[FATAL, 40], 0);
            let e = p.open(r).expect_err("a fatal alert");
            assert!(matches!(e, Error::Received { description: 40 }), "{e:?}");
            assert_eq!(e.alert(), None, "a fatal alert is not answered");
        }
        for mut p in [tls13(), tls12()] {
            let r = p.record(ALERT, &[3, 40], 0);
            assert_eq!(sent(p.open(r), "level 3"), Some(ILLEGAL_PARAMETER));
        }
        for mut p in [tls13(), tls12()] {
            let r = p.record(ALERT, &[WARNING, 40, 0], 0);
            assert_eq!(sent(p.open(r), "three bytes"), Some(DECODE_ERROR));
        }
        // TLS 1.3: only user_canceled is a warning; TLS 1.2: warnings are ignored, 4 of them.
        let mut p = tls13();
        let r = p.record(ALERT, &[WARNING, USER_CANCELED], 0);
        assert_eq!(p.open(r).unwrap(), None);
        let r = p.record(ALERT, &[WARNING, 42], 0);
        assert_eq!(sent(p.open(r), "a TLS 1.3 warning"), Some(DECODE_ERROR));
        let mut p = tls12();
        for _ in 0..WARNINGS {
            let r = p.record(ALERT, &[WARNING, 100], 0);
            assert_eq!(p.open(r).unwrap(), None);
        }
        let r = p.record(ALERT, &[WARNING, 100], 0);
        assert_eq!(sent(p.open(r), "a fifth warning"), Some(UNEXPECTED_MESSAGE));
    }

    /// Random sequences of what a client may send after the handshake, against a model of
    /// what each must get: data comes back as sent, a `KeyUpdate` (whole or split) moves the
    /// key, and everything else ends the connection with its alert, never a panic.
    #[test]
    fn random_record_sequences_get_what_the_model_expects() {
        let mut rng = outpost_testkit::rng::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| rng.below(n as usize) as u64;
        let (mut pairs, mut opened, mut key_updates) = (0, 0, 0);
        while pairs < 40 {
            let v13 = pairs % 2 == 0;
            let mut p = if v13 { tls13() } else { tls12() };
            pairs += 1;
            // The model: bytes of a KeyUpdate the server holds, key updates since data,
            // warnings left.
            let (mut pending, mut updates, mut warnings) = (0usize, 0u8, WARNINGS);
            let last = 5 + next(60);
            for step in 0..=last {
                opened += 1;
                // Data, key updates (TLS 1.2 has none: data instead) with their pieces mostly in
                // a row, and warnings; then a record that must be refused. A sequence ends at its
                // first refusal.
                let roll = match if step == last { 37 + next(3) } else { next(37) } {
                    18..=33 if !v13 => 0,
                    // A message begun is mostly finished before anything else.
                    _ if pending > 0 && next(8) != 0 => 18,
                    roll => roll,
                };
                match roll {
                    0..=17 => {
                        let data: Vec<u8> = (0..next(48)).map(|_| next(256) as u8).collect();
                        let r = p.record(APPLICATION_DATA, &data, next(3) as usize);
                        if pending > 0 {
                            assert_eq!(
                                sent(p.open(r), "data in a message"),
                                Some(UNEXPECTED_MESSAGE)
                            );
                            break;
                        }
                        assert_eq!(p.open(r).unwrap(), Some(data));
                        updates = 0;
                    }
                    18..=33 => {
                        // The next piece of a KeyUpdate, 1 to 5 bytes of it.
                        let ku = if next(2) == 0 { KU_NOT_REQUESTED } else { KU_REQUESTED };
                        let n = (1 + next(KEY_UPDATE_LEN as u64) as usize)
                            .min(KEY_UPDATE_LEN - pending);
                        let r = p.record(HANDSHAKE, &ku[pending..pending + n], next(3) as usize);
                        let whole = pending + n == KEY_UPDATE_LEN;
                        if whole && updates == KEY_UPDATES {
                            assert_eq!(sent(p.open(r), "33 key updates"), Some(UNEXPECTED_MESSAGE));
                            break;
                        }
                        assert_eq!(p.open(r).unwrap(), None);
                        pending = (pending + n) % KEY_UPDATE_LEN;
                        if whole {
                            updates += 1;
                            key_updates += 1;
                            p.client_key_update();
                        }
                    }
                    34..=36 => {
                        let description = if v13 { USER_CANCELED } else { next(256) as u8 };
                        let r = p.record(ALERT, &[WARNING, description], 0);
                        if description == CLOSE_NOTIFY {
                            assert_eq!(p.open(r).unwrap().as_deref(), Some(&b"<closed>"[..]));
                            break;
                        }
                        if pending > 0 || warnings == 0 {
                            assert_eq!(sent(p.open(r), "a warning"), Some(UNEXPECTED_MESSAGE));
                            break;
                        }
                        assert_eq!(p.open(r).unwrap(), None);
                        warnings -= 1;
                    }
                    37 => {
                        // A record changed on the way: it does not authenticate.
                        let mut r = p.record(APPLICATION_DATA, b"x", 0);
                        let at = HEADER + next((r.len() - HEADER) as u64) as usize;
                        r[at] ^= 1 << next(8);
                        assert_eq!(sent(p.open(r), "a changed record"), Some(BAD_RECORD_MAC));
                        break;
                    }
                    _ => {
                        // Any other content, type or alert: refused with an alert, or a fatal
                        // alert taken as the end.
                        let typ = [ALERT, HANDSHAKE, 0, 20, 25, 255][next(6) as usize];
                        let content: Vec<u8> = (0..1 + next(6)).map(|_| next(256) as u8).collect();
                        let r = p.record(typ, &content, 0);
                        match p.open(r) {
                            Err(e @ Error::Received { .. }) => assert_eq!(e.alert(), None),
                            Err(e) => assert!(e.alert().is_some(), "{e:?}"),
                            // Content that happens to be valid (a KeyUpdate's first bytes, a
                            // close_notify or a tolerated warning) ends this sequence too.
                            Ok(_) => {}
                        }
                        break;
                    }
                }
            }
        }
        assert!(opened > 500 && key_updates > 50, "{opened} records, {key_updates} key updates");
    }

    #[test]
    fn tls12_refuses_renegotiation() {
        let mut p = tls12();
        let r = p.record(HANDSHAKE, &[1, 0, 0, 0], 0);
        assert_eq!(sent(p.open(r), "a ClientHello"), Some(UNEXPECTED_MESSAGE));
    }
}
