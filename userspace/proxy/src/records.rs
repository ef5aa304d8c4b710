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
//! What a server sees after the handshake, and what happens to it:
//! - application data: handed to the reader;
//! - `close_notify`: end of stream; a few other warnings are ignored (as rustls does), a fatal
//!   alert fails the connection;
//! - TLS 1.3 `KeyUpdate`: the receive key moves on, and when the client asks, ours does too
//!   after a `KeyUpdate` of our own; at most 32 between two application data records (as
//!   rustls and BoringSSL allow); any other handshake message (a TLS 1.2 renegotiation, a
//!   message split over records) is refused with an alert;
//! - a record that does not authenticate, is too long or malformed: the matching alert.
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
/// Largest ciphertext a peer may send: 2^14 + 256 in TLS 1.3, 2^14 + 2048 in TLS 1.2.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
/// Most bytes [`Records::seal`] adds to a plaintext.
pub const OVERHEAD: usize = HEADER + EXPLICIT_NONCE + 1 + TAG;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;

/// An alert we send before failing the connection (RFC 8446 §6.2), and why.
#[derive(Debug)]
pub struct Alert {
    pub description: u8,
    pub why: &'static str,
}

const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;

fn alert(description: u8, why: &'static str) -> Alert {
    Alert { description, why }
}

impl Alert {
    /// `internal_error`: our side cannot go on.
    pub fn internal(why: &'static str) -> Alert {
        alert(INTERNAL_ERROR, why)
    }
}

/// What one record held.
pub enum Opened {
    /// Application data at this range of the buffer (possibly empty).
    Data(std::ops::Range<usize>),
    /// The client's `close_notify`.
    Closed,
    /// A record with nothing for the reader (a key update, answered).
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
    fn new(seq: u64, secrets: ConnectionTrafficSecrets, tls12: bool) -> Result<Direction, Alert> {
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
    /// Warning alerts still ignored.
    warnings_left: u8,
    kernel: KernelConnection<ServerConnectionData>,
}

/// Key updates allowed between two application data records (rustls' and BoringSSL's bound).
const KEY_UPDATES: u8 = 32;
/// Warning alerts ignored on one connection (rustls' and BoringSSL's bound).
const WARNINGS: u8 = 4;

impl Records {
    /// Takes over from rustls once its handshake is complete and its records are sent.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Records, Alert> {
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
            warnings_left: WARNINGS,
            kernel,
        })
    }

    /// The length of the first record in `buf` when all of it is there.
    pub fn complete(buf: &[u8]) -> Result<Option<usize>, Alert> {
        let [_, _, _, hi, lo, ..] = *buf else { return Ok(None) };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        if len > MAX_CIPHERTEXT {
            return Err(alert(RECORD_OVERFLOW, "a record longer than TLS allows"));
        }
        Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens the record that is all of `record` (see [`complete`](Self::complete)) in place.
    /// A key update the client asks to be answered is sealed into `out`.
    pub fn open(&mut self, record: &mut [u8], out: &mut Vec<u8>) -> Result<Opened, Alert> {
        let (typ, body) = record.split_at_mut(HEADER);
        let outer = typ[0];
        let (start, typ, plain) = if self.tls13 {
            if outer != APPLICATION_DATA {
                return Err(alert(UNEXPECTED_MESSAGE, "a record type TLS 1.3 does not use here"));
            }
            let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
            let aad = Aad::from(<[u8; HEADER]>::try_from(&*typ).expect("header length"));
            let plain = self
                .rx
                .key
                .open_in_place(nonce, aad, body)
                .map_err(|_| alert(BAD_RECORD_MAC, "a record that does not authenticate"))?;
            // The inner content type is the last byte that is not padding.
            let end = plain.iter().rposition(|&b| b != 0).ok_or_else(|| {
                alert(UNEXPECTED_MESSAGE, "a record of padding with no content type")
            })?;
            (HEADER, plain[end], end)
        } else {
            let (nonce, start) = if self.rx.explicit_nonce {
                let Some(explicit) = body.get(..EXPLICIT_NONCE) else {
                    return Err(alert(DECODE_ERROR, "a record shorter than its nonce"));
                };
                let mut nonce = self.rx.iv;
                nonce[4..].copy_from_slice(explicit);
                (nonce, EXPLICIT_NONCE)
            } else {
                (self.rx.nonce(), 0)
            };
            let Some(plain_len) = body.len().checked_sub(start + TAG) else {
                return Err(alert(DECODE_ERROR, "a record shorter than its tag"));
            };
            let version = ProtocolVersion::from(u16::from_be_bytes([typ[1], typ[2]]));
            let aad = cipher::make_tls12_aad(self.rx.seq, outer.into(), version, plain_len);
            let nonce = Nonce::assume_unique_for_key(nonce);
            let plain = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(aad), &mut body[start..])
                .map_err(|_| alert(BAD_RECORD_MAC, "a record that does not authenticate"))?;
            (HEADER + start, outer, plain.len())
        };
        self.rx.seq += 1;
        if plain > MAX_PLAINTEXT {
            return Err(alert(RECORD_OVERFLOW, "a record with more plaintext than TLS allows"));
        }
        match typ {
            APPLICATION_DATA => {
                self.key_updates_left = KEY_UPDATES;
                Ok(Opened::Data(start..start + plain))
            }
            ALERT => match record[start..start + plain] {
                [_, 0] => Ok(Opened::Closed),
                [1, _] if self.warnings_left > 0 => {
                    self.warnings_left -= 1;
                    Ok(Opened::Nothing)
                }
                [_, _] => Err(alert(UNEXPECTED_MESSAGE, "the client sent an alert")),
                _ => Err(alert(DECODE_ERROR, "an alert that is not two bytes")),
            },
            HANDSHAKE if self.tls13 => {
                self.handshake(&record[start..start + plain], out)?;
                Ok(Opened::Nothing)
            }
            HANDSHAKE => Err(alert(UNEXPECTED_MESSAGE, "renegotiation is not supported")),
            _ => Err(alert(UNEXPECTED_MESSAGE, "an unexpected record type")),
        }
    }

    /// TLS 1.3 post-handshake messages from a client: only `KeyUpdate` (no client
    /// certificates are asked for), each whole within its record.
    fn handshake(&mut self, mut messages: &[u8], out: &mut Vec<u8>) -> Result<(), Alert> {
        while !messages.is_empty() {
            let [KEY_UPDATE, 0, 0, 1, request, ref rest @ ..] = *messages else {
                return Err(alert(UNEXPECTED_MESSAGE, "a handshake message other than KeyUpdate"));
            };
            if self.key_updates_left == 0 {
                return Err(alert(UNEXPECTED_MESSAGE, "too many key updates"));
            }
            self.key_updates_left -= 1;
            let (seq, secrets) = self
                .kernel
                .update_rx_secret()
                .map_err(|_| alert(INTERNAL_ERROR, "deriving the next receive key"))?;
            self.rx = Direction::new(seq, secrets, false)?;
            match request {
                0 => {}
                1 => self.update_tx(out)?,
                _ => return Err(alert(DECODE_ERROR, "a KeyUpdate with an unknown request")),
            }
            messages = rest;
        }
        Ok(())
    }

    /// Sends a `KeyUpdate` (not asking for one back) under the current send key, then moves it
    /// on.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Alert> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out);
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(|_| alert(INTERNAL_ERROR, "deriving the next send key"))?;
        self.tx = Direction::new(seq, secrets, false)?;
        Ok(())
    }

    /// Appends application data to `out` as one record (`data` is at most
    /// [`MAX_PLAINTEXT`] bytes; `out` grows by at most `data.len() + OVERHEAD`, twice that
    /// when a key update goes first).
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Alert> {
        self.seal_checked(APPLICATION_DATA, data, out)
    }

    /// Appends the `close_notify` alert to `out`.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Alert> {
        self.seal_checked(ALERT, &[1, 0], out)
    }

    /// Appends the fatal alert `a` to `out`.
    pub fn seal_alert(&mut self, a: &Alert, out: &mut Vec<u8>) -> Result<(), Alert> {
        self.seal_checked(ALERT, &[2, a.description], out)
    }

    fn seal_checked(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), Alert> {
        debug_assert!(data.len() <= MAX_PLAINTEXT);
        if self.tx.seq >= self.tx_limit.saturating_sub(1) {
            if !self.tls13 {
                return Err(alert(INTERNAL_ERROR, "the send key reached its usage limit"));
            }
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
