//! The ClientHello classifier: which protocol version does a client offer?
//!
//! [`HelloParser`] is a resumable parser over the client's first bytes. It is fed consecutive
//! chunks of the TCP stream (one segment at a time in the kernel, whatever was read so far in
//! userspace) and answers as soon as the answer is conclusive:
//!
//! - the highest known version (SSLv3..TLS 1.3) in `supported_versions`, once that extension has
//!   been read whole (GREASE and unknown values ignored; none known means
//!   [`Version::Unknown`]);
//! - else `legacy_version`, once the end of the extensions (or of the hello) shows that there is
//!   no `supported_versions`;
//! - SSLv2 for an SSLv2-format hello.
//!
//! The record-layer version is never used. A hello may span several TLS records and any number
//! of segments; until one of the conditions above holds the answer is [`Progress::NeedMore`],
//! never a guess from a partial view.
//!
//! The state is a small `#[repr(C)]` value so the kernel can keep it in a map between
//! segments. Work per call is bounded by a step budget (each step reads one field, skips one
//! span, or reads one record header), which keeps the eBPF verifier's job small.

use crate::version::Version;

/// A bounded byte cursor over one chunk of the stream.
pub trait Input {
    /// Number of bytes in this chunk.
    fn len(&self) -> usize;
    /// The byte at `i`. The parser only asks for `i < len()`.
    fn byte(&self, i: usize) -> u8;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Input for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        self.get(i).copied().unwrap_or(0)
    }
}

/// What the bytes seen so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not conclusive yet: feed the next bytes of the stream.
    NeedMore,
    /// The offered version.
    Decided(Version),
    /// The stream does not start with a ClientHello (another protocol, or another TLS message).
    NotHello,
    /// It started like a ClientHello and then broke a length or framing rule.
    Malformed(Malformed),
    /// The step budget ran out inside this chunk. The parser cannot resume; the caller decides
    /// elsewhere (the kernel leaves such hellos to userspace).
    OutOfSteps,
}

/// How a hello broke the rules. The discriminants index counters.
#[repr(u8)]
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A record inside the hello is not a handshake record, or not TLS-versioned (major 3).
    RecordType = 0,
    /// A record of length zero or longer than 2^14 bytes.
    RecordLength = 1,
    /// The hello's length is shorter than its fixed fields.
    HelloLength = 2,
    /// A session id, cipher suite or compression list length that cannot be right.
    FieldLength = 3,
    /// The extension block does not end where the hello ends, or an extension overruns it.
    ExtensionLength = 4,
    /// A `supported_versions` extension whose list length is inconsistent.
    SupportedVersions = 5,
    /// Fed again after a final answer.
    Finished = 6,
}

/// `supported_versions` (RFC 8446 §4.2.1).
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// TLS record content type of handshake messages.
const RECORD_HANDSHAKE: u8 = 0x16;

/// Whether a stream whose first byte is `first` can be a ClientHello: a TLS handshake record,
/// or an SSLv2-format record header (high bit set). Anything else is not a hello, whatever
/// follows; the parser's first step decides the same way.
#[inline(always)]
pub fn may_start_hello(first: u8) -> bool {
    first == RECORD_HANDSHAKE || first & 0x80 != 0
}
/// Handshake message type of ClientHello (also the SSLv2 CLIENT-HELLO message type).
const CLIENT_HELLO: u8 = 0x01;
/// Largest TLSPlaintext fragment.
const MAX_RECORD: u16 = 1 << 14;
/// legacy_version(2) + random(32) + session id len(1) + ciphers len(2) + one cipher(2) +
/// compression len(1) + one method(1).
const MIN_HELLO_BODY: u32 = 41;
/// Bytes of random between legacy_version and the session id.
const RANDOM_LEN: u32 = 32;
/// Bytes of an SSLv2 CLIENT-HELLO after its 2-byte header: type, version, three lengths.
const SSL2_MIN_BODY: u32 = 9;

/// Parser states. Each field state reads `width(state)` bytes.
mod state {
    pub const START: u8 = 0;
    pub const SSL2_HEAD: u8 = 1;
    pub const SSL2_VERSION: u8 = 2;
    pub const HS_TYPE: u8 = 3;
    pub const HS_LEN: u8 = 4;
    pub const LEGACY_VERSION: u8 = 5;
    pub const SESSION_ID_LEN: u8 = 6;
    pub const CIPHERS_LEN: u8 = 7;
    pub const COMPRESSION_LEN: u8 = 8;
    pub const EXTENSIONS_LEN: u8 = 9;
    pub const EXT_HEADER: u8 = 10;
    pub const SV_LEN: u8 = 11;
    pub const SV_VERSION: u8 = 12;
    pub const FINISHED: u8 = 13;
}

/// Bytes each field state reads.
#[inline(always)]
const fn width(s: u8) -> u32 {
    match s {
        state::SSL2_HEAD | state::HS_LEN => 3,
        state::EXT_HEADER => 4,
        state::HS_TYPE | state::SESSION_ID_LEN | state::COMPRESSION_LEN | state::SV_LEN => 1,
        _ => 2,
    }
}

/// Record header: type(1) version(2) length(2).
const RECORD_HEADER: u32 = 5;
const FLAG_SEEN_RECORD: u8 = 1;

/// Resumable ClientHello parser; see the module docs. 32 bytes, all-zero when new.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloParser {
    /// Record header bytes read so far (big-endian, `rec_have` of them).
    rec_acc: u64,
    /// Field bytes read so far (big-endian, `have` of them).
    acc: u32,
    /// Bytes to skip before the next field.
    skip: u32,
    /// Bytes of the ClientHello body not consumed yet (set by the length field).
    msg_left: u32,
    /// Payload bytes left in the current record; 0 means a record header comes next.
    rec_left: u16,
    /// Bytes left of the `supported_versions` extension being read.
    sv_left: u16,
    legacy_version: u16,
    /// Best [`Version`] in `supported_versions` so far, as `Version as u8 + 1`; 0 for none.
    best: u8,
    state: u8,
    have: u8,
    rec_have: u8,
    flags: u8,
    _pad: u8,
}

impl HelloParser {
    pub const fn new() -> Self {
        HelloParser {
            rec_acc: 0,
            acc: 0,
            skip: 0,
            msg_left: 0,
            rec_left: 0,
            sv_left: 0,
            legacy_version: 0,
            best: 0,
            state: state::START,
            have: 0,
            rec_have: 0,
            flags: 0,
            _pad: 0,
        }
    }

    /// Feeds the next chunk of the stream, with a budget large enough for any chunk (every
    /// step but the first consumes at least one byte).
    pub fn feed<I: Input + ?Sized>(&mut self, input: &I) -> Progress {
        self.feed_bounded(input, input.len() + 2)
    }

    /// Feeds the next chunk of the stream, taking at most `steps` steps. With a constant
    /// `steps` the loop is bounded for the verifier.
    #[inline(always)]
    pub fn feed_bounded<I: Input + ?Sized>(&mut self, input: &I, steps: usize) -> Progress {
        let mut pos = 0usize;
        for _ in 0..steps {
            if let Some(p) = self.advance(input, &mut pos) {
                return p;
            }
        }
        // The position within this chunk is lost: the parser cannot resume.
        self.state = state::FINISHED;
        Progress::OutOfSteps
    }

    /// One step over `input` from `*pos`: `None` to go on, or the answer for this chunk
    /// ([`Progress::NeedMore`] once it is used up). For callers that drive the loop themselves
    /// (the kernel, through `bpf_loop`).
    #[inline(always)]
    pub fn advance<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> Option<Progress> {
        let len = input.len();
        let p = self.step(input, pos, len);
        if p != Progress::NeedMore {
            if p != Progress::Malformed(Malformed::Finished) {
                self.state = state::FINISHED;
            }
            return Some(p);
        }
        if *pos >= len && !self.can_finish_without_bytes() {
            return Some(Progress::NeedMore);
        }
        None
    }

    /// The hello can end (and be decided) with no further byte: all of it was read.
    #[inline(always)]
    fn can_finish_without_bytes(&self) -> bool {
        self.skip == 0
            && self.msg_left == 0
            && (self.state == state::EXTENSIONS_LEN || self.state == state::EXT_HEADER)
    }

    /// One step: a decision from what is known, one record header, one skip, or one field.
    /// Returns `NeedMore` to go on.
    #[inline(always)]
    fn step<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize, len: usize) -> Progress {
        // The hello ended without (more) extensions: decided by what was read.
        if self.can_finish_without_bytes() {
            return Progress::Decided(self.offered());
        }
        if self.state == state::FINISHED {
            return Progress::Malformed(Malformed::Finished);
        }
        if *pos >= len {
            return Progress::NeedMore;
        }
        if self.state == state::START {
            let b = input.byte(*pos);
            if !may_start_hello(b) {
                return Progress::NotHello;
            }
            self.state = if b == RECORD_HANDSHAKE { state::HS_TYPE } else { state::SSL2_HEAD };
            return Progress::NeedMore;
        }
        let framed = self.state >= state::HS_TYPE;
        let mut avail = (len - *pos) as u32;
        if framed {
            if self.rec_left == 0 {
                return self.record_header(input, pos, avail);
            }
            avail = min(avail, self.rec_left as u32);
        }
        if self.skip > 0 {
            let n = min(self.skip, avail);
            self.skip -= n;
            self.consume(pos, n);
            return Progress::NeedMore;
        }
        let want = width(self.state);
        if self.state >= state::LEGACY_VERSION && want - self.have as u32 > self.msg_left {
            return Progress::Malformed(match self.state {
                state::LEGACY_VERSION..=state::EXTENSIONS_LEN => Malformed::FieldLength,
                state::EXT_HEADER => Malformed::ExtensionLength,
                _ => Malformed::SupportedVersions,
            });
        }
        let n = min(want - self.have as u32, avail);
        let mut acc = self.acc;
        for k in 0..4 {
            if k < n as usize {
                acc = (acc << 8) | input.byte(*pos + k) as u32;
            }
        }
        self.acc = acc;
        self.have += n as u8;
        self.consume(pos, n);
        if self.have as u32 == want {
            self.acc = 0;
            self.have = 0;
            return self.field(acc);
        }
        Progress::NeedMore
    }

    /// Reads (part of) a record header.
    #[inline(always)]
    fn record_header<I: Input + ?Sized>(
        &mut self,
        input: &I,
        pos: &mut usize,
        avail: u32,
    ) -> Progress {
        let n = min(RECORD_HEADER - self.rec_have as u32, avail);
        let mut acc = self.rec_acc;
        for k in 0..RECORD_HEADER as usize {
            if k < n as usize {
                acc = (acc << 8) | input.byte(*pos + k) as u64;
            }
        }
        *pos += n as usize;
        self.rec_have += n as u8;
        self.rec_acc = acc;
        if self.rec_have as u32 != RECORD_HEADER {
            return Progress::NeedMore;
        }
        self.rec_have = 0;
        self.rec_acc = 0;
        let typ = (acc >> 32) as u8;
        let major = (acc >> 24) as u8;
        let rec_len = acc as u16;
        let first = self.flags & FLAG_SEEN_RECORD == 0;
        self.flags |= FLAG_SEEN_RECORD;
        if typ != RECORD_HANDSHAKE || major != 0x03 {
            // 0x16 followed by anything but a TLS version: some other protocol.
            return if first {
                Progress::NotHello
            } else {
                Progress::Malformed(Malformed::RecordType)
            };
        }
        if rec_len == 0 || rec_len > MAX_RECORD {
            return Progress::Malformed(Malformed::RecordLength);
        }
        self.rec_left = rec_len;
        Progress::NeedMore
    }

    #[inline(always)]
    fn consume(&mut self, pos: &mut usize, n: u32) {
        *pos += n as usize;
        if self.state >= state::HS_TYPE {
            self.rec_left -= n as u16;
        }
        if self.state >= state::LEGACY_VERSION {
            self.msg_left -= n;
        }
    }

    /// A whole field `v` of the current state was read.
    #[inline(always)]
    fn field(&mut self, v: u32) -> Progress {
        match self.state {
            state::SSL2_HEAD => {
                // 2-byte header with the high bit set, then CLIENT-HELLO.
                let body = (v >> 8) & 0x7fff;
                if body < SSL2_MIN_BODY || v as u8 != CLIENT_HELLO {
                    return Progress::NotHello;
                }
                self.state = state::SSL2_VERSION;
            }
            state::SSL2_VERSION => {
                // SSL 2.0 (0x0002), or an SSLv3/TLS client in SSLv2-compatible format.
                return if v == 0x0002 || v >> 8 == 0x03 {
                    Progress::Decided(Version::Sslv2)
                } else {
                    Progress::NotHello
                };
            }
            state::HS_TYPE => {
                if v as u8 != CLIENT_HELLO {
                    return Progress::NotHello;
                }
                self.state = state::HS_LEN;
            }
            state::HS_LEN => {
                if v < MIN_HELLO_BODY {
                    return Progress::Malformed(Malformed::HelloLength);
                }
                self.msg_left = v;
                self.state = state::LEGACY_VERSION;
            }
            state::LEGACY_VERSION => {
                self.legacy_version = v as u16;
                self.skip = RANDOM_LEN;
                self.state = state::SESSION_ID_LEN;
            }
            state::SESSION_ID_LEN => {
                if v > 32 || v > self.msg_left {
                    return Progress::Malformed(Malformed::FieldLength);
                }
                self.skip = v;
                self.state = state::CIPHERS_LEN;
            }
            state::CIPHERS_LEN => {
                if v < 2 || v & 1 != 0 || v > self.msg_left {
                    return Progress::Malformed(Malformed::FieldLength);
                }
                self.skip = v;
                self.state = state::COMPRESSION_LEN;
            }
            state::COMPRESSION_LEN => {
                if v < 1 || v > self.msg_left {
                    return Progress::Malformed(Malformed::FieldLength);
                }
                self.skip = v;
                self.state = state::EXTENSIONS_LEN;
            }
            state::EXTENSIONS_LEN => {
                // The extension block is the rest of the hello, exactly.
                if v != self.msg_left {
                    return Progress::Malformed(Malformed::ExtensionLength);
                }
                self.state = state::EXT_HEADER;
            }
            state::EXT_HEADER => {
                let ext_len = v & 0xffff;
                if ext_len > self.msg_left {
                    return Progress::Malformed(Malformed::ExtensionLength);
                }
                if (v >> 16) as u16 == EXT_SUPPORTED_VERSIONS {
                    // list length(1) + two bytes per version, at least one.
                    if ext_len < 3 || ext_len & 1 == 0 {
                        return Progress::Malformed(Malformed::SupportedVersions);
                    }
                    self.sv_left = ext_len as u16;
                    self.state = state::SV_LEN;
                } else {
                    self.skip = ext_len;
                }
            }
            state::SV_LEN => {
                if v + 1 != self.sv_left as u32 {
                    return Progress::Malformed(Malformed::SupportedVersions);
                }
                self.sv_left = v as u16;
                self.state = state::SV_VERSION;
            }
            state::SV_VERSION => {
                if let Some(version) = Version::from_wire(v as u16) {
                    if version as u8 + 1 > self.best {
                        self.best = version as u8 + 1;
                    }
                }
                self.sv_left -= 2;
                if self.sv_left == 0 {
                    return Progress::Decided(match self.best {
                        0 => Version::Unknown,
                        b => Version::from_u8(b - 1).unwrap_or(Version::Unknown),
                    });
                }
            }
            _ => return Progress::Malformed(Malformed::Finished),
        }
        Progress::NeedMore
    }

    /// The version offered by a hello without `supported_versions`.
    #[inline(always)]
    fn offered(&self) -> Version {
        Version::from_wire(self.legacy_version).unwrap_or(Version::Unknown)
    }

    /// `legacy_version` of the hello, once read (0 before).
    pub fn legacy_version(&self) -> u16 {
        self.legacy_version
    }

    /// Whether any byte has been taken in (the parser has left its initial state).
    pub fn started(&self) -> bool {
        self.state != state::START
    }
}

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

/// Classifies a whole first flight at once.
pub fn classify(first_flight: &[u8]) -> Progress {
    HelloParser::new().feed(first_flight)
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for HelloParser {}
