//! WebSocket (RFC 6455) for the `websocket` scenario, hand-rolled for the little the bench uses:
//! the client's opening handshake and the origin's 101; single binary frames, masked from the
//! client and unmasked from the origin (section 5.2), which the origin echoes one by one.
//!
//! Not a general implementation: no extensions, no subprotocols; the client sends unfragmented
//! frames and expects its own frame back; the origin echoes each frame as it came (FIN bit and
//! opcode kept, so fragments would come back as the same fragments), answers a close with a
//! close, and closes the connection on anything a server must refuse (an unmasked frame, a
//! frame over [`MAX_PAYLOAD`]).

use std::fmt;

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::{read_more, Conn, OpError};

/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest payload either side accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest 101 response head the client reads.
const MAX_HEAD: usize = 16 * 1024;

pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Why a frame cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Payload length over [`MAX_PAYLOAD`] (or not minimal-encodable in a usize).
    TooLong,
    /// RSV bits set: no extension was negotiated.
    Reserved,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong => write!(f, "frame payload over {MAX_PAYLOAD} bytes"),
            FrameError::Reserved => f.write_str("RSV bits set without an extension"),
        }
    }
}

/// A frame's header, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// The first byte as sent: FIN and the opcode (RSV checked to be zero).
    pub fin_opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: usize,
    /// Bytes of header before the payload.
    pub len: usize,
}

impl Header {
    pub fn opcode(&self) -> u8 {
        self.fin_opcode & 0x0f
    }

    /// Header and payload.
    pub fn frame_len(&self) -> usize {
        self.len + self.payload_len
    }
}

/// The header at the start of `buf`; `None` until all of it is there.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let (payload_len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if payload_len > MAX_PAYLOAD as u64 {
        return Err(FrameError::TooLong);
    }
    let mask = if b1 & MASKED != 0 {
        let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
        at += 4;
        Some(m.try_into().expect("4 bytes"))
    } else {
        None
    };
    Ok(Some(Header { fin_opcode: b0, mask, payload_len: payload_len as usize, len: at }))
}

/// Appends one frame with `payload` (masked with `mask` when given) to `out`.
pub fn encode(out: &mut Vec<u8>, fin_opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    let m = if mask.is_some() { MASKED } else { 0 };
    out.push(fin_opcode);
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client (`outpost-load gen --op ws`).

/// One client connection's WebSocket state.
pub struct Client {
    /// xorshift64 state for masking keys. RFC 6455 asks for unpredictable keys so that a hostile
    /// script cannot choose the bytes on the wire; this client's payloads are its own, so a fast
    /// generator seeded from the system's random source is enough.
    rng: u64,
    /// Messages sent on this connection: written into each payload, so that an echo of an
    /// earlier message is told apart.
    sent: u64,
    out: Vec<u8>,
}

impl Client {
    /// The opening handshake on `conn`: GET with `Upgrade: websocket`, a 101 with the right
    /// `Sec-WebSocket-Accept`. Bytes after the 101 stay in `buf`.
    pub async fn open(
        conn: &mut Conn,
        host: &str,
        path: &str,
        buf: &mut Vec<u8>,
    ) -> Result<Client, OpError> {
        let rng = ring::rand::SystemRandom::new();
        let seed: [u8; 24] = ring::rand::generate(&rng)
            .map_err(|_| OpError::Http("no system randomness".into()))?
            .expose();
        let key = base64::engine::general_purpose::STANDARD.encode(&seed[..16]);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: outpost-load\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {key}\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.map_err(OpError::Io)?;
        buf.clear();
        let want = accept_key(key.as_bytes());
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    if resp.code != Some(101) {
                        return Err(OpError::Http(format!(
                            "upgrade answered {}",
                            resp.code.unwrap_or(0)
                        )));
                    }
                    let accept = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                        .map(|h| h.value);
                    if accept != Some(want.as_bytes()) {
                        return Err(OpError::Http("101 without the right accept key".into()));
                    }
                    buf.drain(..n);
                    break;
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                    read_more(conn, buf).await?
                }
                Ok(httparse::Status::Partial) => return Err(OpError::Http("101 too long".into())),
                Err(e) => return Err(OpError::Http(e.to_string())),
            }
        }
        let seed = u64::from_le_bytes(seed[16..].try_into().expect("8 bytes")) | 1;
        Ok(Client { rng: seed, sent: 0, out: Vec::with_capacity(64) })
    }

    /// Sends one binary message of `size` bytes and reads its echo, checking it byte for byte.
    pub async fn echo(
        &mut self,
        conn: &mut Conn,
        size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), OpError> {
        self.sent += 1;
        let mut payload = vec![b'w'; size];
        let seq = self.sent.to_be_bytes();
        let n = size.min(seq.len());
        payload[..n].copy_from_slice(&seq[seq.len() - n..]);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (self.rng as u32).to_ne_bytes();
        self.out.clear();
        encode(&mut self.out, FIN | OP_BINARY, Some(mask), &payload);
        conn.write_all(&self.out).await.map_err(OpError::Io)?;
        let h = loop {
            match parse_header(buf) {
                Ok(Some(h)) if buf.len() >= h.frame_len() => break h,
                Ok(_) => read_more(conn, buf).await?,
                Err(e) => return Err(OpError::Http(e.to_string())),
            }
        };
        let echo = &buf[h.len..h.frame_len()];
        let ok = h.fin_opcode == FIN | OP_BINARY && h.mask.is_none() && echo == payload;
        let what = match (h.opcode(), h.mask) {
            _ if ok => None,
            (OP_CLOSE, _) => Some("the server closed the WebSocket"),
            (_, Some(_)) => Some("a masked frame from the server"),
            _ => Some("an echo that differs from the message"),
        };
        buf.drain(..h.frame_len());
        match what {
            None => Ok(()),
            Some(what) => Err(OpError::Http(what.into())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The origin's side (`outpost-load origin`).

/// The 101 for a request with `Sec-WebSocket-Key: key`.
pub fn switching_protocols(key: &[u8]) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nServer: outpost-origin\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// Echoes frames until the client closes: each whole frame in `buf` goes back unmasked, all
/// of one read in one write. Returns on a close (answered with a close), end of stream, an
/// error, or a frame a server must refuse.
pub async fn echo_loop(stream: &mut tokio::net::TcpStream, mut buf: Vec<u8>) {
    let mut out = Vec::with_capacity(4096);
    let mut payload = Vec::with_capacity(256);
    loop {
        let mut used = 0;
        let mut close = false;
        while let Ok(Some(h)) = parse_header(&buf[used..]) {
            if buf.len() - used < h.frame_len() {
                break;
            }
            // Section 5.1: a server closes on an unmasked frame from a client.
            let Some(k) = h.mask else { return };
            payload.clear();
            let masked = &buf[used + h.len..used + h.frame_len()];
            payload.extend(masked.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            encode(&mut out, h.fin_opcode, None, &payload);
            used += h.frame_len();
            if h.opcode() == OP_CLOSE {
                close = true;
                break;
            }
        }
        if parse_header(&buf[used..]).is_err() {
            return;
        }
        buf.drain(..used);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        buf.reserve(4096);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        // Section 1.3's example.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn frames_round_trip() {
        for (len, header_len) in [(0, 2), (32, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            for mask in [None, Some([0x37, 0xfa, 0x21, 0x3d])] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut out = Vec::new();
                encode(&mut out, FIN | OP_BINARY, mask, &payload);
                let h = parse_header(&out)
                    .unwrap_or_else(|e| panic!("len {len} mask {mask:?}: {e}"))
                    .unwrap_or_else(|| panic!("len {len} mask {mask:?}: incomplete"));
                let want_len = header_len + if mask.is_some() { 4 } else { 0 };
                assert_eq!((h.len, h.payload_len, h.mask), (want_len, len, mask), "len {len}");
                assert_eq!(out.len(), h.frame_len());
                let k = mask.unwrap_or([0; 4]);
                let back: Vec<u8> =
                    out[h.len..].iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect();
                assert_eq!(back, payload, "len {len} mask {mask:?}");
                assert_eq!(parse_header(&out[..h.len - 1]), Ok(None), "len {len}");
            }
        }
    }

    #[test]
    fn rfc_6455_examples() {
        // Section 5.7: "Hello", unmasked and masked.
        let h = parse_header(&[0x81, 0x05, 0x48, 0x65]).expect("valid").expect("complete");
        assert_eq!((h.opcode(), h.payload_len, h.len, h.mask), (1, 5, 2, None));
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let h = parse_header(&masked).expect("valid").expect("complete");
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        let mut out = Vec::new();
        encode(&mut out, 0x81, h.mask, b"Hello");
        assert_eq!(out, masked);
    }

    #[test]
    fn refused_frames() {
        assert_eq!(parse_header(&[0xc2, 0x00]), Err(FrameError::Reserved));
        let mut huge = vec![0x82, 0x7f];
        huge.extend_from_slice(&(MAX_PAYLOAD as u64 + 1).to_be_bytes());
        assert_eq!(parse_header(&huge), Err(FrameError::TooLong));
    }
}
