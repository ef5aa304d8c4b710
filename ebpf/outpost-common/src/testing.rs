//! First flights built to order, for tests (`std` feature only).
//!
//! [`ClientHello`] writes a TLS ClientHello with a chosen `legacy_version`, optional
//! `supported_versions`, any other extensions in any order, padding to an exact size, and
//! framing into TLS records of chosen sizes; [`ClientHello::sslv3`] starts from an SSLv3 hello
//! and [`sslv2`] writes an SSLv2-format CLIENT-HELLO. The builder writes what it is told,
//! including what no client would send (oversize or empty records, lengths that lie), so a
//! test can aim at one rule of the classifier at a time.
//!
//! ```
//! use outpost_common::testing::ClientHello;
//! use outpost_common::{hello::classify, Progress, Version};
//!
//! // GREASE and TLS 1.3 in `supported_versions`, after a padding extension that makes the
//! // hello span two 1500-byte segments, in two TLS records.
//! let flight = ClientHello::tls(0x0303)
//!     .pad_to(2000)
//!     .supported_versions(&[0x0a0a, 0x0304])
//!     .records(&[1000])
//!     .build();
//! assert_eq!(flight.len(), 2000);
//! assert_eq!(classify(&flight), Progress::Decided(Version::Tls13));
//! ```

use std::vec;
use std::vec::Vec;

/// `server_name` (RFC 6066 §3).
pub const EXT_SERVER_NAME: u16 = 0x0000;
/// `application_layer_protocol_negotiation` (RFC 7301).
pub const EXT_ALPN: u16 = 0x0010;
/// `padding` (RFC 7685).
pub const EXT_PADDING: u16 = 0x0015;
/// `supported_versions` (RFC 8446 §4.2.1).
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;

/// TLS record content type of handshake messages.
const RECORD_HANDSHAKE: u8 = 0x16;
/// Handshake message type of ClientHello, and SSLv2 message type of CLIENT-HELLO.
const CLIENT_HELLO: u8 = 0x01;
/// Record header: type(1) version(2) length(2).
const RECORD_HEADER: usize = 5;
/// Extension header: type(2) length(2).
const EXT_HEADER: usize = 4;

/// The ClientHello random. Distinct bytes, several of which (0x16, 0x01, 0x03, 0x2b) would
/// mislead a parser that read the random as a field.
const RANDOM: [u8; 32] = [
    0x16, 0x03, 0x01, 0x2b, 0x00, 0x2b, 0x03, 0x04, 0x80, 0x01, 0x7f, 0xff, 0x0a, 0x0a, 0x11, 0x22,
    0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0, 0xe1, 0xd2, 0xc3,
];

/// A ClientHello and its record framing. Start from [`ClientHello::tls`] or
/// [`ClientHello::sslv3`], adjust, then [`build`](ClientHello::build).
///
/// Extensions are written in the order they are added; [`supported_versions`] and [`pad_to`]
/// take their place in that order too, so "padding before `supported_versions`" is
/// `.pad_to(n).supported_versions(..)`.
///
/// [`supported_versions`]: ClientHello::supported_versions
/// [`pad_to`]: ClientHello::pad_to
#[derive(Clone, Debug)]
pub struct ClientHello {
    record_version: u16,
    handshake_type: u8,
    legacy_version: u16,
    session_id: Vec<u8>,
    /// The cipher_suites vector's bytes: raw, so a test can make its length odd.
    cipher_suites: Vec<u8>,
    compression_methods: Vec<u8>,
    /// `None`: no extensions block at all (SSLv3, and TLS 1.0 clients that offer none).
    extensions: Option<Vec<Extension>>,
    /// Target length of the whole flight; see [`ClientHello::pad_to`].
    pad_to: Option<usize>,
    framing: Framing,
    /// Written instead of the true handshake length.
    declared_handshake_len: Option<u32>,
    /// Written instead of the true extensions block length.
    declared_extensions_len: Option<u16>,
}

#[derive(Clone, Debug)]
enum Extension {
    /// Bytes of the extensions block as they are, header included.
    Bytes(Vec<u8>),
    /// The padding extension, sized when the hello is built.
    Padding,
}

#[derive(Clone, Debug)]
enum Framing {
    /// Payload sizes of the first records, in order, until the message runs out; whatever is
    /// left goes into one more record.
    Leading(Vec<usize>),
    /// Every record carries this many bytes of the message, the last one what is left.
    Every(usize),
}

impl ClientHello {
    /// A TLS hello with `legacy_version`, record version 0x0301 (what clients send), a 32-byte
    /// session id, three cipher suites, null compression and an empty extensions block. The
    /// whole message goes in one record.
    pub fn tls(legacy_version: u16) -> Self {
        ClientHello {
            record_version: 0x0301,
            handshake_type: CLIENT_HELLO,
            legacy_version,
            session_id: vec![0x5e; 32],
            cipher_suites: suites(&[0x1301, 0xc02f, 0x002f]),
            compression_methods: vec![0x00],
            extensions: Some(Vec::new()),
            pad_to: None,
            framing: Framing::Leading(Vec::new()),
            declared_handshake_len: None,
            declared_extensions_len: None,
        }
    }

    /// An SSLv3 hello: legacy and record version 0x0300, no session id, two SSLv3 cipher
    /// suites, no extensions block.
    pub fn sslv3() -> Self {
        ClientHello {
            record_version: 0x0300,
            session_id: Vec::new(),
            cipher_suites: suites(&[0x002f, 0x000a]),
            extensions: None,
            ..ClientHello::tls(0x0300)
        }
    }

    /// The version in every record header (the classifier must ignore it).
    pub fn record_version(mut self, v: u16) -> Self {
        self.record_version = v;
        self
    }

    /// The handshake message type, 1 (ClientHello) unless changed.
    pub fn handshake_type(mut self, t: u8) -> Self {
        self.handshake_type = t;
        self
    }

    /// The session id, any length (a real one has at most 32 bytes).
    pub fn session_id(mut self, id: &[u8]) -> Self {
        self.session_id = id.to_vec();
        self
    }

    pub fn cipher_suites(mut self, list: &[u16]) -> Self {
        self.cipher_suites = suites(list);
        self
    }

    /// The cipher_suites vector's bytes as given, e.g. an odd number of them.
    pub fn cipher_suites_raw(mut self, bytes: &[u8]) -> Self {
        self.cipher_suites = bytes.to_vec();
        self
    }

    pub fn compression_methods(mut self, methods: &[u8]) -> Self {
        self.compression_methods = methods.to_vec();
        self
    }

    /// Drops the extensions block altogether, as SSLv3 and some TLS 1.0 clients do.
    pub fn no_extensions(mut self) -> Self {
        self.extensions = None;
        self
    }

    /// Appends extension `ext_type` with `data` (its length is written for it).
    pub fn extension(self, ext_type: u16, data: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(EXT_HEADER + data.len());
        put_u16(&mut bytes, ext_type);
        put_vec16(&mut bytes, data);
        self.raw_extension(&bytes)
    }

    /// Appends `bytes` to the extensions block as they are: a header with a length that lies,
    /// half a header, anything.
    pub fn raw_extension(mut self, bytes: &[u8]) -> Self {
        self.extensions_mut().push(Extension::Bytes(bytes.to_vec()));
        self
    }

    /// Appends `supported_versions` listing `versions` (any values: GREASE, drafts, unknown).
    pub fn supported_versions(self, versions: &[u16]) -> Self {
        let mut data = Vec::with_capacity(1 + 2 * versions.len());
        let list = suites(versions);
        data.push(u8::try_from(list.len()).expect("supported_versions list over 255 bytes"));
        data.extend_from_slice(&list);
        self.extension(EXT_SUPPORTED_VERSIONS, &data)
    }

    /// Appends a padding extension (0x0015) sized so that the whole first flight, record
    /// headers included, is `total` bytes. Its place among the extensions is where this is
    /// called; at most one per hello.
    ///
    /// # Panics
    /// In [`build`](ClientHello::build), if no padding length gives exactly `total` bytes
    /// (the hello is already longer, or with tiny records every extra byte adds a header).
    pub fn pad_to(mut self, total: usize) -> Self {
        assert!(self.pad_to.is_none(), "pad_to: one padding extension per hello");
        self.pad_to = Some(total);
        self.extensions_mut().push(Extension::Padding);
        self
    }

    /// Frames the message into records of these payload sizes, in order, until it runs out;
    /// what is left after them goes into one more record. `&[100]` gives two records, the
    /// first with 100 bytes; a 0 gives an empty record.
    pub fn records(mut self, sizes: &[usize]) -> Self {
        self.framing = Framing::Leading(sizes.to_vec());
        self
    }

    /// Frames the message into records of `size` bytes each (the last one shorter).
    pub fn record_size(mut self, size: usize) -> Self {
        assert!(size > 0, "record_size: records need at least one byte");
        self.framing = Framing::Every(size);
        self
    }

    /// Writes `len` as the handshake message length instead of the true one.
    pub fn declare_handshake_len(mut self, len: u32) -> Self {
        self.declared_handshake_len = Some(len);
        self
    }

    /// Writes `len` as the extensions block length instead of the true one.
    pub fn declare_extensions_len(mut self, len: u16) -> Self {
        self.declared_extensions_len = Some(len);
        self
    }

    /// The first flight: the handshake message framed into records.
    pub fn build(&self) -> Vec<u8> {
        let message = self.handshake();
        let mut out = Vec::with_capacity(message.len() + RECORD_HEADER);
        let mut at = 0;
        for size in self.record_sizes(message.len()) {
            out.push(RECORD_HANDSHAKE);
            put_u16(&mut out, self.record_version);
            put_u16(&mut out, u16::try_from(size).expect("record over 65535 bytes"));
            out.extend_from_slice(&message[at..at + size]);
            at += size;
        }
        out
    }

    /// The handshake message alone: type, length, body.
    pub fn handshake(&self) -> Vec<u8> {
        let unpadded = self.message(0).len();
        let padding = match self.pad_to {
            Some(total) => self.padding_for(total, unpadded),
            None => 0,
        };
        self.message(padding)
    }

    /// The message with a padding extension of `padding` bytes, if it has one.
    fn message(&self, padding: usize) -> Vec<u8> {
        let mut body = Vec::new();
        put_u16(&mut body, self.legacy_version);
        body.extend_from_slice(&RANDOM);
        put_vec8(&mut body, &self.session_id);
        put_vec16(&mut body, &self.cipher_suites);
        put_vec8(&mut body, &self.compression_methods);
        if let Some(extensions) = &self.extensions {
            let mut block = Vec::new();
            for e in extensions {
                match e {
                    Extension::Bytes(b) => block.extend_from_slice(b),
                    Extension::Padding => {
                        put_u16(&mut block, EXT_PADDING);
                        put_vec16(&mut block, &vec![0; padding]);
                    }
                }
            }
            let true_len = u16::try_from(block.len()).expect("extensions block over 65535 bytes");
            put_u16(&mut body, self.declared_extensions_len.unwrap_or(true_len));
            body.extend_from_slice(&block);
        }
        let mut message = Vec::with_capacity(4 + body.len());
        message.push(self.handshake_type);
        let true_len = u32::try_from(body.len()).expect("hello over 2^24 bytes");
        put_u24(&mut message, self.declared_handshake_len.unwrap_or(true_len));
        message.extend_from_slice(&body);
        message
    }

    /// Padding bytes that make the flight `total` bytes long, given the message length with
    /// an empty padding extension. The flight grows by at least one byte per padding byte, so
    /// the search walks down from the most padding that could fit.
    fn padding_for(&self, total: usize, unpadded: usize) -> usize {
        let flight = |padding: usize| {
            let len = unpadded + padding;
            len + RECORD_HEADER * self.record_sizes(len).len()
        };
        let mut padding = total.saturating_sub(unpadded + RECORD_HEADER);
        while padding > 0 && flight(padding) > total {
            padding -= 1;
        }
        assert_eq!(flight(padding), total, "pad_to({total}): no padding length fits exactly");
        padding
    }

    /// Payload sizes of the records carrying a message of `len` bytes.
    fn record_sizes(&self, len: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = len;
        match &self.framing {
            Framing::Leading(leading) => {
                for &size in leading {
                    if left == 0 {
                        break;
                    }
                    let size = size.min(left);
                    sizes.push(size);
                    left -= size;
                }
                if left > 0 {
                    sizes.push(left);
                }
            }
            Framing::Every(size) => {
                while left > 0 {
                    let size = (*size).min(left);
                    sizes.push(size);
                    left -= size;
                }
            }
        }
        sizes
    }

    fn extensions_mut(&mut self) -> &mut Vec<Extension> {
        self.extensions.get_or_insert_with(Vec::new)
    }
}

/// An SSLv2-format CLIENT-HELLO (SSL 2.0, appendix B; RFC 6101 appendix E.2 for the form SSLv3
/// and TLS clients sent for compatibility): 2-byte header with the high bit set, message type
/// 1, `version` (0x0002 for SSL 2.0, 0x0300 or up for a newer client), three cipher specs, no
/// session id, a 16-byte challenge.
pub fn sslv2(version: u16) -> Vec<u8> {
    // SSL_CK_RC4_128_WITH_MD5, SSL_CK_DES_192_EDE3_CBC_WITH_MD5, TLS_RSA_WITH_AES_128_CBC_SHA.
    const CIPHER_SPECS: [u8; 9] = [0x01, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x2f];
    const CHALLENGE: [u8; 16] = [0xc4; 16];
    let mut body = vec![CLIENT_HELLO];
    put_u16(&mut body, version);
    put_u16(&mut body, CIPHER_SPECS.len() as u16);
    put_u16(&mut body, 0);
    put_u16(&mut body, CHALLENGE.len() as u16);
    body.extend_from_slice(&CIPHER_SPECS);
    body.extend_from_slice(&CHALLENGE);
    let mut out = Vec::with_capacity(2 + body.len());
    put_u16(&mut out, 0x8000 | body.len() as u16);
    out.extend_from_slice(&body);
    out
}

/// A list of u16 values, big-endian.
fn suites(list: &[u16]) -> Vec<u8> {
    list.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u24(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes()[1..]);
}

/// `data` behind a 1-byte length.
fn put_vec8(out: &mut Vec<u8>, data: &[u8]) {
    out.push(u8::try_from(data.len()).expect("vector over 255 bytes"));
    out.extend_from_slice(data);
}

/// `data` behind a 2-byte length.
fn put_vec16(out: &mut Vec<u8>, data: &[u8]) {
    put_u16(out, u16::try_from(data.len()).expect("vector over 65535 bytes"));
    out.extend_from_slice(data);
}

/// Holds the quick reader ([`crate::quick`]) to the parser on `input`: where it answers, it
/// answers what the parser answers for the same bytes fed whole, and ends the hello where the
/// parser does. Returns whether it answered.
pub fn quick_agrees(what: &str, input: &[u8]) -> bool {
    use crate::hello::{HelloParser, Progress};
    let mut quick = crate::quick::QuickHello::default();
    let Some(version) = quick.read(input) else {
        return false;
    };
    let mut parser = HelloParser::new();
    let mut pos = 0;
    let mut answer = None;
    for _ in 0..input.len() + 2 {
        answer = parser.advance(input, &mut pos);
        if answer.is_some() {
            break;
        }
    }
    assert_eq!(answer, Some(Progress::Decided(version)), "{what}: quick read of {input:02x?}");
    assert_eq!(
        quick.hello_end(),
        parser.rest_in_record().map(|rest| (pos as u32) + rest),
        "{what}: the hello's end, quick read of {input:02x?}"
    );
    true
}
