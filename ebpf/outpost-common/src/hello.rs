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
//!
//! # Recording
//!
//! The same state machine also fills a [`HelloRecord`] when driven through
//! [`HelloParser::advance_recording`] (or [`record_hello`] for a whole first flight): it then
//! reads the cipher suites, every extension type and the contents of `server_name`,
//! `application_layer_protocol_negotiation` and `signature_algorithms` instead of skipping
//! them, and reads to the end of the hello before it decides, so that the record is whole even
//! when `supported_versions` comes early. It decides the same version as the plain mode: the
//! first `supported_versions` counts, and a hello that breaks the framing after that extension
//! was read is still decided by it (the record then carries [`FLAG_PARTIAL`]). What a recorded
//! extension holds inside is never a reason to fail a hello: an inconsistent inner length ends
//! the recording of that extension, and the rest of it is skipped as the plain mode skips it.
//! Lists are read in blocks of up to [`RUN_BYTES`] per step, values that straddle a chunk or
//! record boundary a field at a time. A parser is driven in one mode from its first byte on.

use crate::record::{
    is_grease, BytesHeader, HelloRecord, FLAG_ALPN, FLAG_PARTIAL, FLAG_SNI, RECORD_SNI,
    TRUNCATED_CIPHERS, TRUNCATED_EXTENSIONS, TRUNCATED_SIGALGS, TRUNCATED_SNI,
};
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
    /// Calls `f` with each of the `N` bytes from `i` (the parser only asks for `i + N <= len()`)
    /// and returns true; false, calling nothing, when the input cannot give them (the parser
    /// then gives up, [`Progress::OutOfSteps`]). Inputs that can check their bounds once for all
    /// of them override it: the kernel, where `N` checks are `N` branches for the verifier to
    /// follow.
    #[inline(always)]
    fn each_byte<const N: usize>(&self, i: usize, mut f: impl FnMut(usize, u8)) -> bool {
        if i + N > self.len() {
            return false;
        }
        for k in 0..N {
            f(k, self.byte(i + k));
        }
        true
    }
    /// [`each_byte`](Self::each_byte) for the `N` big-endian `u16` values from `i`.
    #[inline(always)]
    fn each_be16<const N: usize>(&self, i: usize, mut f: impl FnMut(u16)) -> bool {
        if i + 2 * N > self.len() {
            return false;
        }
        for k in 0..N {
            f((self.byte(i + 2 * k) as u16) << 8 | self.byte(i + 2 * k + 1) as u16);
        }
        true
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
pub(crate) const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// `server_name` (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0x0000;
/// `application_layer_protocol_negotiation` (RFC 7301).
const EXT_ALPN: u16 = 0x0010;
/// `signature_algorithms` (RFC 8446 §4.2.3).
const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
/// `host_name`, the only `NameType` of `server_name`.
const SNI_HOST_NAME: u32 = 0;
/// A recording step reads at most this many bytes of a list (cipher suites, signature
/// algorithms) or of the server name: one unrolled block of 32, 16, 8, 4, 2 (or, of the name,
/// 1) bytes, the largest that fits.
pub const RUN_BYTES: u32 = 32;
/// TLS record content type of handshake messages.
pub(crate) const RECORD_HANDSHAKE: u8 = 0x16;

/// Whether a stream whose first byte is `first` can be a ClientHello: a TLS handshake record,
/// or an SSLv2-format record header (high bit set). Anything else is not a hello, whatever
/// follows; the parser's first step decides the same way.
#[inline(always)]
pub fn may_start_hello(first: u8) -> bool {
    first == RECORD_HANDSHAKE || first & 0x80 != 0
}
/// Whether a segment whose first three bytes are `head` starts a TLS application-data record
/// (content type 23, record version 3.1 to 3.3): the first segment of nearly every request on
/// an established connection. Such a segment is not a hello, and the XDP program passes it
/// without looking for its flow (see `packet::app_data` in `outpost-ebpf` for why that is
/// safe for the rare continuation of a followed hello that starts with these bytes).
#[inline(always)]
pub fn starts_app_data(head: [u8; 3]) -> bool {
    head[0] == RECORD_APPLICATION_DATA && head[1] == 0x03 && head[2].wrapping_sub(1) < 3
}
/// TLS content type of application data.
const RECORD_APPLICATION_DATA: u8 = 0x17;
/// Handshake message type of ClientHello (also the SSLv2 CLIENT-HELLO message type).
pub(crate) const CLIENT_HELLO: u8 = 0x01;
/// Largest TLSPlaintext fragment.
pub(crate) const MAX_RECORD: u16 = 1 << 14;
/// legacy_version(2) + random(32) + session id len(1) + ciphers len(2) + one cipher(2) +
/// compression len(1) + one method(1).
pub(crate) const MIN_HELLO_BODY: u32 = 41;
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
    // Recording only; all above FINISHED, so inside the record and the hello for `consume`.
    /// Cipher suites, in runs (a value that straddles a boundary as a field).
    pub const CIPHER: u8 = 14;
    pub const SNI_LIST_LEN: u8 = 15;
    pub const SNI_TYPE: u8 = 16;
    pub const SNI_NAME_LEN: u8 = 17;
    /// The server name's bytes, in runs.
    pub const SNI_NAME: u8 = 18;
    pub const ALPN_LIST_LEN: u8 = 19;
    pub const ALPN_PROTO_LEN: u8 = 20;
    pub const ALPN_FIRST: u8 = 21;
    pub const ALPN_LAST: u8 = 22;
    pub const SIGALGS_LEN: u8 = 23;
    /// Signature algorithms, in runs (a value that straddles a boundary as a field).
    pub const SIGALG: u8 = 24;
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

/// Bytes each field state reads when recording.
#[inline(always)]
const fn recording_width(s: u8) -> u32 {
    match s {
        state::SNI_TYPE
        | state::SNI_NAME
        | state::ALPN_PROTO_LEN
        | state::ALPN_FIRST
        | state::ALPN_LAST => 1,
        _ => width(s),
    }
}

/// Record header: type(1) version(2) length(2).
const RECORD_HEADER: u32 = 5;
const FLAG_SEEN_RECORD: u8 = 1;
/// Recording: the first `supported_versions` was read whole; `best` is the answer.
const FLAG_SV_READ: u8 = 1 << 1;

/// What a mode does with what it reads: nothing (the plain classifier) or fill a record. A
/// constant per mode, so the plain mode compiles to the classifier without recording.
trait Sink {
    const RECORDING: bool;
    fn record(&mut self) -> Option<&mut HelloRecord>;
}

struct NoRecord;

impl Sink for NoRecord {
    const RECORDING: bool = false;
    #[inline(always)]
    fn record(&mut self) -> Option<&mut HelloRecord> {
        None
    }
}

impl Sink for HelloRecord {
    const RECORDING: bool = true;
    #[inline(always)]
    fn record(&mut self) -> Option<&mut HelloRecord> {
        Some(self)
    }
}

/// Resumable ClientHello parser; see the module docs. 40 bytes, all-zero when new.
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
    /// Bytes left of the list being read: `supported_versions`, and when recording the cipher
    /// suites, signature algorithms, or server name bytes still to copy.
    list_left: u16,
    legacy_version: u16,
    /// Best [`Version`] in `supported_versions` so far, as `Version as u8 + 1`; 0 for none.
    best: u8,
    state: u8,
    have: u8,
    rec_have: u8,
    flags: u8,
    _pad: u8,
    /// Recording: `msg_left` where the extension being read inside ends.
    ext_end: u16,
    _pad2: [u8; 6],
}

impl HelloParser {
    pub const fn new() -> Self {
        HelloParser {
            rec_acc: 0,
            acc: 0,
            skip: 0,
            msg_left: 0,
            rec_left: 0,
            list_left: 0,
            legacy_version: 0,
            best: 0,
            state: state::START,
            have: 0,
            rec_have: 0,
            flags: 0,
            _pad: 0,
            ext_end: 0,
            _pad2: [0; 6],
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

    /// [`feed`](Self::feed) in the recording mode: `rec` (new, or filled by the earlier
    /// chunks of the same hello) is filled as far as the chunk goes.
    pub fn feed_recording<I: Input + ?Sized>(
        &mut self,
        input: &I,
        rec: &mut HelloRecord,
    ) -> Progress {
        let mut pos = 0usize;
        for _ in 0..input.len() + 2 {
            if let Some(p) = self.advance_recording(input, &mut pos, rec) {
                return p;
            }
        }
        self.state = state::FINISHED;
        Progress::OutOfSteps
    }

    /// One step over `input` from `*pos`: `None` to go on, or the answer for this chunk
    /// ([`Progress::NeedMore`] once it is used up). For callers that drive the loop themselves
    /// (the kernel, through `bpf_loop`).
    #[inline(always)]
    pub fn advance<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> Option<Progress> {
        self.advance_in(input, pos, &mut NoRecord)
    }

    /// [`advance`](Self::advance) in the recording mode, filling `rec` (which starts as
    /// [`HelloRecord::new`]). With [`Progress::Decided`], `rec.version` holds the version;
    /// `verdict`, `dport` and the source network are the caller's to fill.
    #[inline(always)]
    pub fn advance_recording<I: Input + ?Sized>(
        &mut self,
        input: &I,
        pos: &mut usize,
        rec: &mut HelloRecord,
    ) -> Option<Progress> {
        self.advance_in(input, pos, rec)
    }

    #[inline(always)]
    fn advance_in<I: Input + ?Sized, R: Sink>(
        &mut self,
        input: &I,
        pos: &mut usize,
        sink: &mut R,
    ) -> Option<Progress> {
        let len = input.len();
        let mut p = self.step(input, pos, len, sink);
        if R::RECORDING {
            p = self.settle(p, sink);
        }
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

    /// Recording: a hello that breaks the framing after its `supported_versions` was read is
    /// decided by it, as the plain mode (which stops there) decides it; the record says it is
    /// cut short. The decided version goes into the record.
    #[inline(always)]
    fn settle<R: Sink>(&self, p: Progress, sink: &mut R) -> Progress {
        let p = match p {
            Progress::Malformed(m) if m != Malformed::Finished && self.sv_read() => {
                if let Some(r) = sink.record() {
                    r.flags |= FLAG_PARTIAL;
                }
                Progress::Decided(self.best_version())
            }
            p => p,
        };
        if let (Progress::Decided(v), Some(r)) = (p, sink.record()) {
            r.version = v as u8;
        }
        p
    }

    /// The hello can end (and be decided) with no further byte: all of it was read.
    #[inline(always)]
    fn can_finish_without_bytes(&self) -> bool {
        self.skip == 0
            && self.msg_left == 0
            && (self.state == state::EXTENSIONS_LEN || self.state == state::EXT_HEADER)
    }

    /// One step: a decision from what is known, one record header, one skip, one field, or
    /// (recording) one run of a list. Returns `NeedMore` to go on.
    #[inline(always)]
    fn step<I: Input + ?Sized, R: Sink>(
        &mut self,
        input: &I,
        pos: &mut usize,
        len: usize,
        sink: &mut R,
    ) -> Progress {
        // The hello ended without (more) extensions: decided by what was read.
        if self.can_finish_without_bytes() {
            if R::RECORDING && self.sv_read() {
                return Progress::Decided(self.best_version());
            }
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
        if R::RECORDING && self.have == 0 {
            if self.state == state::SNI_NAME {
                return self.name_run(input, pos, avail, sink);
            }
            if (self.state == state::CIPHER || self.state == state::SIGALG)
                && avail >= 2
                && self.list_left >= 2
            {
                return self.list_run(input, pos, avail, sink);
            }
        }
        let want = if R::RECORDING { recording_width(self.state) } else { width(self.state) };
        if self.state >= state::LEGACY_VERSION && want - self.have as u32 > self.msg_left {
            return Progress::Malformed(match self.state {
                state::LEGACY_VERSION..=state::EXTENSIONS_LEN => Malformed::FieldLength,
                state::EXT_HEADER => Malformed::ExtensionLength,
                _ => Malformed::SupportedVersions,
            });
        }
        let n = min(want - self.have as u32, avail);
        let at = *pos;
        // Counted before the bytes are read, so that nothing after the read depends on `n`.
        self.have += n as u8;
        self.consume(pos, n);
        let mut acc = self.acc;
        // The field's bytes from one read of the four at `at`, when the input has them all (in
        // the kernel: one bounds check rather than one per byte); only the first `n` are
        // taken, whatever follows them. The plain mode only (the recording mode's step is
        // verified on its own, and the verifier's count of it grew more than the plain one).
        let mut window = 0u32;
        let read =
            !R::RECORDING && input.each_byte::<4>(at, |_, b| window = (window << 8) | b as u32);
        if read {
            let n = n as u64 & 7;
            acc = (((acc as u64) << (8 * n)) | (window as u64 >> (8 * (4 - n)))) as u32;
        } else {
            for k in 0..4 {
                if k < n as usize {
                    acc = (acc << 8) | input.byte(at + k) as u32;
                }
            }
        }
        self.acc = acc;
        if self.have as u32 == want {
            self.acc = 0;
            self.have = 0;
            return self.field(acc, sink);
        }
        Progress::NeedMore
    }

    /// Recording: whole cipher suites or signature algorithms from this chunk and record, as
    /// one block of 16, 8, 4, 2 or 1 values: the largest that fits.
    #[inline(always)]
    fn list_run<I: Input + ?Sized, R: Sink>(
        &mut self,
        input: &I,
        pos: &mut usize,
        avail: u32,
        sink: &mut R,
    ) -> Progress {
        let values = min(avail, self.list_left as u32) / 2;
        // One block a step, of a size known to the compiler: the verifier follows five ways
        // through a step, where blocks chosen by each bit of `values` made it follow every
        // combination of them through the rest of the step.
        let taken = if values >= 16 {
            self.list_block::<_, _, 16>(input, *pos, sink)
        } else if values >= 8 {
            self.list_block::<_, _, 8>(input, *pos, sink)
        } else if values >= 4 {
            self.list_block::<_, _, 4>(input, *pos, sink)
        } else if values >= 2 {
            self.list_block::<_, _, 2>(input, *pos, sink)
        } else {
            self.list_block::<_, _, 1>(input, *pos, sink)
        };
        let Some(n) = taken else {
            return Progress::OutOfSteps;
        };
        self.list_left -= n as u16;
        self.consume(pos, n);
        if self.list_left == 0 {
            self.list_done();
        }
        Progress::NeedMore
    }

    /// Recording: the `N` values at `at` of the list being read; the bytes taken, or `None`
    /// when the input cannot give them (it promised them: the parser gives up).
    #[inline(always)]
    fn list_block<I: Input + ?Sized, R: Sink, const N: usize>(
        &self,
        input: &I,
        at: usize,
        sink: &mut R,
    ) -> Option<u32> {
        let Some(r) = sink.record() else {
            return Some(2 * N as u32);
        };
        let ok = if self.state == state::CIPHER {
            input.each_be16::<N>(at, |v| {
                push(&mut r.ciphers, &mut r.n_ciphers, &mut r.flags, TRUNCATED_CIPHERS, v)
            })
        } else {
            input.each_be16::<N>(at, |v| {
                push(&mut r.sigalgs, &mut r.n_sigalgs, &mut r.flags, TRUNCATED_SIGALGS, v)
            })
        };
        ok.then_some(2 * N as u32)
    }

    /// Recording: bytes of the server name from this chunk and record, as one block of 32, 16,
    /// 8, 4, 2 or 1 bytes: the largest that fits (one a step, as in `list_run`).
    #[inline(always)]
    fn name_run<I: Input + ?Sized, R: Sink>(
        &mut self,
        input: &I,
        pos: &mut usize,
        avail: u32,
        sink: &mut R,
    ) -> Progress {
        let n = min(avail, self.list_left as u32);
        let taken = if n >= 32 {
            name_block::<_, _, 32>(input, *pos, sink)
        } else if n >= 16 {
            name_block::<_, _, 16>(input, *pos, sink)
        } else if n >= 8 {
            name_block::<_, _, 8>(input, *pos, sink)
        } else if n >= 4 {
            name_block::<_, _, 4>(input, *pos, sink)
        } else if n >= 2 {
            name_block::<_, _, 2>(input, *pos, sink)
        } else {
            name_block::<_, _, 1>(input, *pos, sink)
        };
        let Some(n) = taken else {
            return Progress::OutOfSteps;
        };
        self.list_left -= n as u16;
        self.consume(pos, n);
        if self.list_left == 0 {
            self.extension_done();
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
    fn field<R: Sink>(&mut self, v: u32, sink: &mut R) -> Progress {
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
                if let Some(r) = sink.record() {
                    r.legacy_version = v as u16;
                }
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
                if let Some(r) = sink.record() {
                    r.legacy_version = v as u16;
                }
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
                if R::RECORDING {
                    self.list_left = v as u16;
                    self.state = state::CIPHER;
                } else {
                    self.skip = v;
                    self.state = state::COMPRESSION_LEN;
                }
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
                let typ = (v >> 16) as u16;
                if R::RECORDING && (typ != EXT_SUPPORTED_VERSIONS || self.sv_read()) {
                    // Only the first `supported_versions` decides, as in the plain mode.
                    self.extension(typ, ext_len, sink);
                } else if typ == EXT_SUPPORTED_VERSIONS {
                    if let Some(r) = sink.record() {
                        push(
                            &mut r.extensions,
                            &mut r.n_extensions,
                            &mut r.flags,
                            TRUNCATED_EXTENSIONS,
                            typ,
                        );
                    }
                    // list length(1) + two bytes per version, at least one.
                    if ext_len < 3 || ext_len & 1 == 0 {
                        return Progress::Malformed(Malformed::SupportedVersions);
                    }
                    self.list_left = ext_len as u16;
                    self.state = state::SV_LEN;
                } else {
                    self.skip = ext_len;
                }
            }
            state::SV_LEN => {
                if v + 1 != self.list_left as u32 {
                    return Progress::Malformed(Malformed::SupportedVersions);
                }
                self.list_left = v as u16;
                self.state = state::SV_VERSION;
            }
            state::SV_VERSION => {
                if let Some(version) = Version::from_wire(v as u16) {
                    if version as u8 + 1 > self.best {
                        self.best = version as u8 + 1;
                    }
                }
                if let Some(r) = sink.record() {
                    if !is_grease(v as u16) && v as u16 > r.max_supported {
                        r.max_supported = v as u16;
                    }
                }
                self.list_left -= 2;
                if self.list_left == 0 {
                    if R::RECORDING {
                        // Read on to the end of the hello, for the rest of the record.
                        self.flags |= FLAG_SV_READ;
                        self.state = state::EXT_HEADER;
                    } else {
                        return Progress::Decided(self.best_version());
                    }
                }
            }
            _ if R::RECORDING => self.recorded_field(v, sink),
            _ => return Progress::Malformed(Malformed::Finished),
        }
        Progress::NeedMore
    }

    /// Recording: an extension header of type `typ` (not the deciding `supported_versions`)
    /// was read; its body comes next.
    #[inline(always)]
    fn extension<R: Sink>(&mut self, typ: u16, ext_len: u32, sink: &mut R) {
        self.skip = ext_len;
        let Some(r) = sink.record() else { return };
        push(&mut r.extensions, &mut r.n_extensions, &mut r.flags, TRUNCATED_EXTENSIONS, typ);
        // `ext_len <= msg_left`, which is at most the extension block's u16 length.
        self.ext_end = (self.msg_left - ext_len) as u16;
        // A repeated extension (a protocol error the handshake refuses) is not read again.
        let next = match typ {
            EXT_SERVER_NAME if r.flags & FLAG_SNI == 0 => {
                r.flags |= FLAG_SNI;
                state::SNI_LIST_LEN
            }
            EXT_ALPN if r.flags & FLAG_ALPN == 0 => {
                r.flags |= FLAG_ALPN;
                state::ALPN_LIST_LEN
            }
            EXT_SIGNATURE_ALGORITHMS if r.n_sigalgs == 0 => state::SIGALGS_LEN,
            _ => return,
        };
        self.skip = 0;
        self.enter(next);
    }

    /// Recording: a whole field of a state inside a recorded list or extension was read.
    #[inline(always)]
    fn recorded_field<R: Sink>(&mut self, v: u32, sink: &mut R) {
        let Some(r) = sink.record() else { return };
        let left = self.extension_left();
        match self.state {
            state::CIPHER | state::SIGALG => {
                // A value that straddled a chunk or record boundary.
                list_value(r, self.state == state::CIPHER, v as u16);
                self.list_left = self.list_left.saturating_sub(2);
                if self.list_left == 0 {
                    self.list_done();
                }
            }
            // The list's length is not needed: the name's own length bounds what is read.
            state::SNI_LIST_LEN => self.enter(state::SNI_TYPE),
            state::SNI_TYPE if v == SNI_HOST_NAME => self.enter(state::SNI_NAME_LEN),
            state::SNI_NAME_LEN if v > 0 && v <= left => {
                if v > RECORD_SNI as u32 {
                    r.flags |= TRUNCATED_SNI;
                }
                self.list_left = min(v, RECORD_SNI as u32) as u16;
                self.state = state::SNI_NAME;
            }
            state::ALPN_LIST_LEN => self.enter(state::ALPN_PROTO_LEN),
            state::ALPN_PROTO_LEN if v > 0 && v <= left => {
                r.alpn_len = v as u8;
                self.enter(state::ALPN_FIRST);
            }
            state::ALPN_FIRST => {
                r.alpn_first = v as u8;
                r.alpn_last = v as u8;
                if r.alpn_len > 1 {
                    self.skip = r.alpn_len as u32 - 2;
                    self.enter(state::ALPN_LAST);
                } else {
                    self.extension_done();
                }
            }
            state::ALPN_LAST => {
                r.alpn_last = v as u8;
                self.extension_done();
            }
            state::SIGALGS_LEN if v > 0 && v & 1 == 0 && v <= left => {
                self.list_left = v as u16;
                self.state = state::SIGALG;
            }
            // An inner length that cannot be right, or a name that is not a host name: the
            // rest of the extension is skipped.
            _ => self.extension_done(),
        }
    }

    /// Recording: bytes left of the extension being read inside.
    #[inline(always)]
    fn extension_left(&self) -> u32 {
        self.msg_left.saturating_sub(self.ext_end as u32)
    }

    /// Recording: moves to inner state `s` if its field (after `skip`) is inside the extension,
    /// else skips what is left of it.
    #[inline(always)]
    fn enter(&mut self, s: u8) {
        if self.skip + recording_width(s) > self.extension_left() {
            self.extension_done();
        } else {
            self.state = s;
        }
    }

    /// Recording: the rest of the extension read inside is skipped; the next header follows.
    #[inline(always)]
    fn extension_done(&mut self) {
        self.skip = self.extension_left();
        self.state = state::EXT_HEADER;
    }

    /// Recording: the cipher suites or the signature algorithms were read whole.
    #[inline(always)]
    fn list_done(&mut self) {
        if self.state == state::CIPHER {
            self.state = state::COMPRESSION_LEN;
        } else {
            self.extension_done();
        }
    }

    /// Recording: whether the first `supported_versions` was read whole.
    #[inline(always)]
    fn sv_read(&self) -> bool {
        self.flags & FLAG_SV_READ != 0
    }

    /// The best known version in `supported_versions`.
    #[inline(always)]
    fn best_version(&self) -> Version {
        match self.best {
            0 => Version::Unknown,
            b => Version::from_u8(b - 1).unwrap_or(Version::Unknown),
        }
    }

    /// Recording: the offered version once it is conclusive before the end of the hello (its
    /// `supported_versions` was read whole), for a caller that cannot read to the end (the
    /// kernel, when it cannot follow the flow). `None` in the plain mode, which decides there.
    pub fn conclusive(&self) -> Option<Version> {
        if self.sv_read() {
            Some(self.best_version())
        } else {
            None
        }
    }

    /// The version offered by a hello without `supported_versions`.
    #[inline(always)]
    fn offered(&self) -> Version {
        Version::from_wire(self.legacy_version).unwrap_or(Version::Unknown)
    }

    /// Bytes of the hello after those consumed, when all of them are in the current TLS record
    /// (none of its record headers is still to come): the hello ends that many bytes on. For a
    /// caller that hands a decided hello on whole (the kernel, which sends the bytes of one that
    /// ends in its first segment); `None` when the hello goes on into another record. An
    /// SSLv2-format hello is decided by its first five bytes, which is where it ends for this.
    #[inline(always)]
    pub fn rest_in_record(&self) -> Option<u32> {
        if self.msg_left <= self.rec_left as u32 {
            Some(self.msg_left)
        } else {
            None
        }
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

/// Recording: the `N` bytes at `at` of the server name, stored after those read before.
#[inline(always)]
fn name_block<I: Input + ?Sized, R: Sink, const N: usize>(
    input: &I,
    at: usize,
    sink: &mut R,
) -> Option<u32> {
    let Some(r) = sink.record() else {
        return Some(N as u32);
    };
    let to = r.sni_len as usize;
    let ok = input.each_byte::<N>(at, |k, b| {
        // The name's length left never reaches past the end of `sni` (it starts at most
        // RECORD_SNI, with `sni_len` 0), so the mask alone bounds the index: beside a
        // comparison the compiler drops it, and the verifier loses the bound when the
        // comparison is made on a copy of the index.
        if let Some(slot) = r.sni.get_mut((to + k) & (RECORD_SNI - 1)) {
            *slot = b;
        }
    });
    r.sni_len = min((to + N) as u32, RECORD_SNI as u32) as u8;
    ok.then_some(N as u32)
}

/// Recording: a cipher suite or signature algorithm, GREASE left out.
#[inline(always)]
fn list_value(r: &mut HelloRecord, cipher: bool, v: u16) {
    if cipher {
        push(&mut r.ciphers, &mut r.n_ciphers, &mut r.flags, TRUNCATED_CIPHERS, v);
    } else {
        push(&mut r.sigalgs, &mut r.n_sigalgs, &mut r.flags, TRUNCATED_SIGALGS, v);
    }
}

/// Appends `v` to `list` unless it is GREASE, counting it also when the list is full (which
/// sets `truncated`).
#[inline(always)]
fn push<const N: usize>(list: &mut [u16; N], n: &mut u16, flags: &mut u8, truncated: u8, v: u16) {
    if is_grease(v) {
        return;
    }
    // The count goes through memory (a map value, in the kernel) rather than a register from
    // one value to the next: the verifier then sees each push start from the same unknown
    // count, instead of a range one higher per push that it would explore apart.
    // SAFETY: a valid, aligned `u16`.
    let i = unsafe { core::ptr::read_volatile(n) };
    if (i as usize) < N {
        // Masked as well as compared: the verifier bounds the store by the mask even where the
        // compiler compares a copy of the index.
        if let Some(slot) = list.get_mut(i as usize & (N.next_power_of_two() - 1)) {
            *slot = v;
        }
    } else {
        *flags |= truncated;
    }
    // A list of u16 values in at most 2^16 bytes never counts to 2^16.
    *n = i.wrapping_add(1);
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

/// Classifies a whole first flight at once in the recording mode: the answer, and the record
/// when the hello was decided (its `verdict`, `dport` and source network are the caller's to
/// fill). The answer is always [`classify`]'s.
pub fn record_hello(first_flight: &[u8]) -> (Progress, Option<HelloRecord>) {
    let mut rec = HelloRecord::new();
    let p = HelloParser::new().feed_recording(first_flight, &mut rec);
    match p {
        Progress::Decided(_) => (p, Some(rec)),
        _ => (p, None),
    }
}

/// The record of a hello the kernel sent as its bytes ([`HelloBytes`](crate::record::HelloBytes)):
/// [`record_hello`] over them, completed with what the kernel knew (`head`). The kernel sends
/// only hellos it decided whole from these bytes, so the host parser decides the same; should
/// it not (a kernel of another version), the record keeps the kernel's version with nothing
/// read and [`FLAG_PARTIAL`], so that it is still counted and never fingerprinted as whole.
pub fn record_of_bytes(head: &BytesHeader, bytes: &[u8]) -> HelloRecord {
    let bytes = &bytes[..min(head.len as u32, bytes.len() as u32) as usize];
    let mut r = match record_hello(bytes) {
        (Progress::Decided(_), Some(r)) => r,
        _ => {
            let mut r = HelloRecord::new();
            r.flags = FLAG_PARTIAL;
            r
        }
    };
    r.src_net = head.src_net;
    r.family = head.family;
    r.version = head.version;
    r.verdict = head.verdict;
    r.flags |= head.flags;
    r.dport = head.dport;
    r
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for HelloParser {}
