//! What a decided ClientHello looked like: the fields a client fingerprint (JA4) needs, the
//! server name and the source network, in one fixed-size `#[repr(C)]` record.
//!
//! The kernel sends one per sampled hello to userspace through a ring buffer, in one of two
//! forms: a hello decided whole in its first segment goes as its bytes with what the kernel
//! alone knows ([`HelloBytes`]), from which userspace makes the record with the same parser
//! (`hello::record_of_bytes`); a hello followed across segments, or decided before its end,
//! goes as the record the kernel filled while it read it. Userspace fills the same record from
//! the hellos it reads itself (the userspace floor). Lists keep wire order with GREASE values (RFC 8701) left out; a list
//! longer than its array keeps its first entries, counts all of them, and sets a
//! `TRUNCATED_*` flag, so a fingerprint is never computed from a partial list as if whole.

/// Cipher suites kept.
pub const RECORD_CIPHERS: usize = 96;
/// Extension types kept.
pub const RECORD_EXTENSIONS: usize = 40;
/// Signature algorithms kept.
pub const RECORD_SIGALGS: usize = 48;
/// Bytes of the server name kept (a power of two: the kernel masks indexes with it).
pub const RECORD_SNI: usize = 64;

/// The hello carried a `server_name` extension.
pub const FLAG_SNI: u8 = 1;
/// The hello carried an `application_layer_protocol_negotiation` extension.
pub const FLAG_ALPN: u8 = 1 << 1;
/// More cipher suites than [`RECORD_CIPHERS`].
pub const TRUNCATED_CIPHERS: u8 = 1 << 2;
/// More extensions than [`RECORD_EXTENSIONS`].
pub const TRUNCATED_EXTENSIONS: u8 = 1 << 3;
/// More signature algorithms than [`RECORD_SIGALGS`].
pub const TRUNCATED_SIGALGS: u8 = 1 << 4;
/// A server name longer than [`RECORD_SNI`] (the first bytes are kept).
pub const TRUNCATED_SNI: u8 = 1 << 5;
/// The hello spanned more than one TCP segment (the kernel followed the flow).
pub const FLAG_FOLLOWED: u8 = 1 << 6;
/// The record stops before the end of the hello: its version was conclusive (its
/// `supported_versions` read whole) and then the hello broke a framing rule, or the kernel
/// could not follow the rest of it (not in linear data, out of order, too many segments, no
/// room to keep it). Lists and counts hold what came before; a fingerprint from it is partial.
pub const FLAG_PARTIAL: u8 = 1 << 7;

/// One decided ClientHello.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloRecord {
    /// The client's network: the address with all but the first 24 (IPv4) or 48 (IPv6) bits
    /// zeroed, stored as [`crate::maps::FlowKey::src`] stores an address.
    pub src_net: [u32; 4],
    /// 4 or 6.
    pub family: u8,
    /// The offered [`crate::Version`], as `u8`.
    pub version: u8,
    /// The [`crate::Verdict`] given, as `u8`.
    pub verdict: u8,
    /// `FLAG_*` and `TRUNCATED_*` bits.
    pub flags: u8,
    /// Destination port (host order).
    pub dport: u16,
    /// `legacy_version` of the hello (wire value).
    pub legacy_version: u16,
    /// Highest non-GREASE value in `supported_versions` (wire value), 0 without the extension.
    pub max_supported: u16,
    /// Length of the first ALPN protocol name (0 without ALPN); with its first and last byte.
    pub alpn_len: u8,
    pub alpn_first: u8,
    pub alpn_last: u8,
    /// Bytes of `sni` used.
    pub sni_len: u8,
    /// Non-GREASE cipher suites, extensions and signature algorithms in the hello (all of
    /// them, also those past the arrays).
    pub n_ciphers: u16,
    pub n_extensions: u16,
    pub n_sigalgs: u16,
    pub _pad: u16,
    pub ciphers: [u16; RECORD_CIPHERS],
    pub extensions: [u16; RECORD_EXTENSIONS],
    pub sigalgs: [u16; RECORD_SIGALGS],
    /// The server name's first bytes (as sent; not validated).
    pub sni: [u8; RECORD_SNI],
}

impl HelloRecord {
    pub const fn new() -> Self {
        HelloRecord {
            src_net: [0; 4],
            family: 0,
            version: 0,
            verdict: 0,
            flags: 0,
            dport: 0,
            legacy_version: 0,
            max_supported: 0,
            alpn_len: 0,
            alpn_first: 0,
            alpn_last: 0,
            sni_len: 0,
            n_ciphers: 0,
            n_extensions: 0,
            n_sigalgs: 0,
            _pad: 0,
            ciphers: [0; RECORD_CIPHERS],
            extensions: [0; RECORD_EXTENSIONS],
            sigalgs: [0; RECORD_SIGALGS],
            sni: [0; RECORD_SNI],
        }
    }
}

impl Default for HelloRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `v` is a GREASE value (RFC 8701: `0x?a?a` with both bytes equal).
#[inline(always)]
pub const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for HelloRecord {}

/// What the kernel knows of a hello it sends as bytes ([`HelloBytes`]): the fields of a
/// [`HelloRecord`] that are not in the hello.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BytesHeader {
    /// As [`HelloRecord::src_net`].
    pub src_net: [u32; 4],
    /// 4 or 6.
    pub family: u8,
    /// The offered [`crate::Version`] the kernel decided, as `u8`.
    pub version: u8,
    /// The [`crate::Verdict`] given, as `u8`.
    pub verdict: u8,
    /// `FLAG_*` bits the kernel sets (none so far: such a hello was neither followed nor cut).
    pub flags: u8,
    /// Destination port (host order).
    pub dport: u16,
    /// Bytes of the hello in [`HelloBytes::bytes`], from its first record header on.
    pub len: u16,
}

/// A hello decided whole in its first segment, as the kernel sends it: its first `head.len`
/// bytes, in a ring entry of one of a few sizes ([`BYTES_CLASSES`]), as a ring entry's size
/// must be known when the program is verified. The sizes differ from a [`HelloRecord`]'s, which
/// is how a reader tells the two apart.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HelloBytes<const N: usize> {
    pub head: BytesHeader,
    pub bytes: [u8; N],
}

/// Hello bytes each size of [`HelloBytes`] holds, smallest first: entries of 256, 512, 1,024 and
/// 1,536 bytes. The largest takes the whole payload of a 1,500-byte frame; a longer hello is
/// sent as a record the kernel fills.
pub const BYTES_CLASSES: [usize; 4] = [232, 488, 1000, 1512];
/// The most hello bytes an entry holds.
pub const MAX_HELLO_BYTES: usize = BYTES_CLASSES[BYTES_CLASSES.len() - 1];

const _: () = {
    let mut i = 0;
    while i < BYTES_CLASSES.len() {
        let size = size_of::<BytesHeader>() + BYTES_CLASSES[i];
        assert!(size.is_multiple_of(8) && size != size_of::<HelloRecord>());
        i += 1;
    }
};
