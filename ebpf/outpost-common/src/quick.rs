//! A quick read of the common ClientHello: a TLS hello whose deciding bytes all lie in its first
//! record and in the chunk at hand (in the kernel, the segment that starts the connection's
//! stream). Nearly every hello is one.
//!
//! [`HelloParser`](crate::HelloParser) reads any hello, in any number of records and segments,
//! a field per step, with its state kept between steps (in the kernel, in a map, so that the
//! verifier checks one step). That costs some 130 BPF instructions a field. This reader walks
//! the same fields straight through: the fixed part at known offsets, then the extension
//! headers in one loop, and reads `supported_versions` when it meets it. [`QuickHello::read`]
//! answers with the version the parser decides for the same bytes, or with `None` for anything
//! it does not read itself (an SSLv2-format hello, a record or segment boundary before the
//! decision, a long version list, any broken length or framing rule), and the caller then runs
//! the parser from the first byte as before. So it can never
//! decide differently from the parser; the tests hold it to that on captures, crafted,
//! random and mutated input.

use core::cmp::min;

use crate::{
    hello::{
        Input, CLIENT_HELLO, EXT_SUPPORTED_VERSIONS, MAX_RECORD, MIN_HELLO_BODY, RECORD_HANDSHAKE,
    },
    version::Version,
};

/// Extension headers the reader skips at most, beyond which the hello is left to the parser:
/// browsers send 10-20 extensions.
const QUICK_EXTENSIONS: usize = 32;
/// Versions of `supported_versions` read at most (browsers offer 2-4, GREASE included).
const QUICK_VERSIONS: usize = 8;
/// Record header, handshake type and length, legacy_version, random, session id length.
const FIXED: usize = 5 + 4 + 2 + 32 + 1;

/// Where [`QuickHello::skip`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// [`QUICK_EXTENSIONS`] skipped and the hello goes on: left to the parser.
    Skipped,
    /// `supported_versions` is at `pos`.
    Versions,
    /// The hello ended without it.
    End,
    /// Not a hello this reader reads.
    GiveUp,
}

/// How a step of [`QuickHello`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quick {
    /// Read on: [`QuickHello::skip`], then [`QuickHello::decide`].
    More,
    /// The version the parser decides for these bytes.
    Decided(Version),
    /// Not a hello this reader reads: leave it to the parser.
    GiveUp,
}

/// The reader's state: 24 bytes, `#[repr(C)]` so the kernel keeps it in its scratch map entry
/// (a global BPF function's frame adds to its callers'). Offsets are kept as `u32` and worked
/// on as `usize` (no masking of 32-bit results in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuickHello {
    /// Offset of the next extension header.
    pos: u32,
    /// Offset where the hello ends.
    end: u32,
    /// Offset where the first record ends.
    rec_end: u32,
    /// Offset where what this reader may read ends: the hello, its first record or the input,
    /// whichever ends first.
    lim: u32,
    legacy_version: u16,
    _pad: [u16; 3],
}

impl QuickHello {
    /// Reads `input` from its first byte: the version the parser decides for these bytes, or
    /// `None` for a hello this reader leaves to the parser. [`hello_end`](Self::hello_end)
    /// then says where a decided hello ends.
    #[inline(always)]
    pub fn read<I: Input + ?Sized>(&mut self, input: &I) -> Option<Version> {
        let mut step = self.start(input);
        if step == Quick::More {
            let next = self.skip(input);
            step = self.decide(input, next);
        }
        match step {
            Quick::Decided(version) => Some(version),
            Quick::More | Quick::GiveUp => None,
        }
    }

    /// Reads the record header and the hello's fixed fields up to its extensions: [`Quick::More`]
    /// with the first extension header next, or the answer for a hello without extensions.
    #[inline(always)]
    fn start<I: Input + ?Sized>(&mut self, input: &I) -> Quick {
        let mut head = [0u8; 11];
        if !input.each_byte::<11>(0, |k, b| head[k] = b) {
            return Quick::GiveUp;
        }
        let rec_len = u16::from_be_bytes([head[3], head[4]]);
        let body = u32::from_be_bytes([0, head[6], head[7], head[8]]);
        if head[0] != RECORD_HANDSHAKE
            || head[1] != 0x03
            || rec_len == 0
            || rec_len > MAX_RECORD
            || head[5] != CLIENT_HELLO
            || body < MIN_HELLO_BODY
        {
            return Quick::GiveUp;
        }
        let rec_end = 5 + rec_len as usize;
        let end = 9 + body as usize;
        let lim = min(end, min(rec_end, input.len()));
        self.rec_end = rec_end as u32;
        self.end = end as u32;
        self.lim = lim as u32;
        self.legacy_version = u16::from_be_bytes([head[9], head[10]]);
        // The session id, its length at a fixed offset.
        let Some(sid) = self.field::<1, _>(input, FIXED - 1) else {
            return Quick::GiveUp;
        };
        if sid > 32 {
            return Quick::GiveUp;
        }
        let at = FIXED + sid;
        let Some(ciphers) = self.field::<2, _>(input, at) else {
            return Quick::GiveUp;
        };
        if ciphers < 2 || ciphers & 1 != 0 {
            return Quick::GiveUp;
        }
        let at = at + 2 + ciphers;
        let Some(compression) = self.field::<1, _>(input, at) else {
            return Quick::GiveUp;
        };
        if compression < 1 {
            return Quick::GiveUp;
        }
        let at = at + 1 + compression;
        // The parser checks each skip against the hello only by the field after it.
        if at > end {
            return Quick::GiveUp;
        }
        if at == end {
            return self.ended();
        }
        // The extension block is the rest of the hello, exactly.
        match self.field::<2, _>(input, at) {
            Some(n) if n == end - at - 2 => {}
            _ => return Quick::GiveUp,
        }
        self.pos = (at + 2) as u32;
        Quick::More
    }

    /// Skips extensions, reading each header, until `supported_versions` (the first decides,
    /// as in the parser), the end of the hello, or [`QUICK_EXTENSIONS`] of them: then
    /// [`Next::Versions`], [`Next::End`] or [`Next::Skipped`], for [`decide`](Self::decide).
    #[inline(always)]
    fn skip<I: Input + ?Sized>(&mut self, input: &I) -> Next {
        let (end, lim) = (self.end as usize, self.lim as usize);
        let mut at = self.pos as usize;
        let mut next = Next::Skipped;
        for _ in 0..QUICK_EXTENSIONS {
            if at >= end {
                // Only `at == end`: each step checks what it skips against the end.
                next = Next::End;
                break;
            }
            // Type and length, two big-endian values under one bounds check.
            let (mut typ, mut len) = (0u16, 0usize);
            let mut k = 0;
            if at + 4 > lim
                || !input.each_be16::<2>(at, |v| {
                    if k == 0 {
                        typ = v;
                    } else {
                        len = v as usize;
                    }
                    k += 1;
                })
            {
                next = Next::GiveUp;
                break;
            }
            // The header was inside the hello (`lim <= end`).
            let body = at + 4;
            if len > end - body {
                next = Next::GiveUp;
                break;
            }
            if typ == EXT_SUPPORTED_VERSIONS {
                next = Next::Versions;
                break;
            }
            at = body + len;
        }
        self.pos = at as u32;
        next
    }

    /// The answer after [`skip`](Self::skip) stopped: the hello ended without
    /// `supported_versions`, or the version list of the one at `pos`.
    #[inline(always)]
    fn decide<I: Input + ?Sized>(&self, input: &I, next: Next) -> Quick {
        match next {
            Next::End => return self.ended(),
            Next::Versions => {}
            Next::Skipped | Next::GiveUp => return Quick::GiveUp,
        }
        let at = self.pos as usize;
        let (Some(header), Some(n)) =
            (self.field::<4, _>(input, at), self.field::<1, _>(input, at + 4))
        else {
            return Quick::GiveUp;
        };
        let (body, len) = (at + 4, header & 0xffff);
        // List length(1) + two bytes per version, at least one; the list fills the extension.
        if len < 3
            || n & 1 != 0
            || n + 1 != len
            || n > 2 * QUICK_VERSIONS
            || body + len > self.lim as usize
        {
            return Quick::GiveUp;
        }
        let versions = n / 2;
        let mut best = 0u8;
        for k in 0..QUICK_VERSIONS {
            if k < versions {
                let mut v = 0u16;
                if !input.each_be16::<1>(body + 1 + 2 * k, |w| v = w) {
                    return Quick::GiveUp;
                }
                if let Some(version) = Version::from_wire(v) {
                    best = best.max(version as u8 + 1);
                }
            }
        }
        Quick::Decided(match best {
            0 => Version::Unknown,
            b => Version::from_u8(b - 1).unwrap_or(Version::Unknown),
        })
    }

    /// Where the hello ends when it ends in its first record, for a caller that hands a decided
    /// hello on whole (the parser's `rest_in_record` after the same decision, as an offset).
    pub fn hello_end(&self) -> Option<u32> {
        (self.end <= self.rec_end).then_some(self.end)
    }

    /// The `N`-byte big-endian field at `at`, if what this reader may read holds it.
    #[inline(always)]
    fn field<const N: usize, I: Input + ?Sized>(&self, input: &I, at: usize) -> Option<usize> {
        if at + N > self.lim as usize {
            return None;
        }
        let mut v = 0usize;
        input.each_byte::<N>(at, |_, b| v = v << 8 | b as usize).then_some(v)
    }

    /// The answer for a hello that ends without `supported_versions`, once all of it is in
    /// its first record and the input (the parser reads the bytes it skips).
    #[inline(always)]
    fn ended(&self) -> Quick {
        if self.lim == self.end {
            Quick::Decided(Version::from_wire(self.legacy_version).unwrap_or(Version::Unknown))
        } else {
            Quick::GiveUp
        }
    }
}
