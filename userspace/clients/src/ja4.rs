//! JA4, the TLS client fingerprint of FoxIO's `technical_details/JA4.md` (BSD-3), from a
//! [`HelloRecord`].
//!
//! `t13d1516h2_8daaf6152771_e5627efa2ab1`: protocol, version, SNI or not, cipher and extension
//! counts, the first ALPN value's ends; the truncated sha256 of the sorted cipher suites; that of
//! the sorted extensions (without SNI and ALPN), `_`, and the signature algorithms in wire order.
//!
//! Edge cases the spec defines, and what is done here:
//! - GREASE is ignored everywhere; the record keeps none.
//! - Version: the highest `supported_versions` value when the extension has a non-GREASE one,
//!   else `legacy_version`; `13` `12` `11` `10` `s3`, `s2` for 0x0002, `d1` `d2` `d3` for the
//!   DTLS values, `00` for anything else (drafts such as 0x7f1c, future versions).
//! - Counts are two digits, capped at `99`; SCSVs (0x00ff, 0x5600) count as ciphers.
//! - ALPN: `00` without the extension, with an empty list or an empty first value; one byte
//!   counts as first and last; if either end is not ASCII alphanumeric, the first hex digit of
//!   the first byte and the last hex digit of the last byte (`0xab 0xcd` gives `ad`). ja4plus
//!   1.4.0 departs from the spec here (`9` for bytes over 0x7f); no fixture exercises it.
//! - An empty cipher list hashes to `000000000000`, as does an empty extension list once SNI
//!   and ALPN are left out; without signature algorithms the string hashed has no `_`.
//!
//! A list longer than the record keeps cannot be hashed: [`ja4`] answers
//! [`Ja4Error::Truncated`] (or [`Ja4Error::Partial`] for a record that stops before the end of
//! its hello), never a fingerprint of a partial list. An SSLv2-format hello has none either
//! ([`Ja4Error::Sslv2Format`]; no reference computes one). The protocol is always `t`:
//! outpost reads TLS over TCP only.

use core::fmt;
use std::str::FromStr;

use outpost_common::record::{
    HelloRecord, FLAG_ALPN, FLAG_PARTIAL, FLAG_SNI, RECORD_CIPHERS, RECORD_EXTENSIONS,
    RECORD_SIGALGS, TRUNCATED_CIPHERS, TRUNCATED_EXTENSIONS, TRUNCATED_SIGALGS,
};
use outpost_common::Version;
use sha2::{Digest, Sha256};

/// `server_name`, left out of the extension hash (its presence is the `d`/`i`).
const EXT_SNI: u16 = 0x0000;
/// `application_layer_protocol_negotiation`, left out of the extension hash.
const EXT_ALPN: u16 = 0x0010;
/// Length of a JA4: `a` (10) `_` `b` (12) `_` `c` (12).
pub const JA4_LEN: usize = 36;
/// What an empty list "hashes" to.
const EMPTY_HASH: &str = "000000000000";

/// A JA4 fingerprint: 36 ASCII bytes, `Copy`, cheap to hash and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ja4([u8; JA4_LEN]);

/// Why a record gives no JA4.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ja4Error {
    /// A list (ciphers, extensions or signature algorithms) was longer than the record keeps:
    /// its hash would be of a partial list. The `TRUNCATED_*` flags of the record.
    Truncated(u8),
    /// The record stops before the end of the hello (`FLAG_PARTIAL`: the version was
    /// conclusive, then the hello broke off or could not be followed): its lists are partial.
    Partial,
    /// An SSLv2-format hello: its 3-byte cipher specs and missing extensions have no JA4
    /// (the spec names `s2` but neither it nor any implementation says how to read one).
    Sslv2Format,
}

impl fmt::Display for Ja4Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ja4Error::Truncated(flags) => {
                let mut lists = Vec::new();
                for (bit, name) in [
                    (TRUNCATED_CIPHERS, "cipher suites"),
                    (TRUNCATED_EXTENSIONS, "extensions"),
                    (TRUNCATED_SIGALGS, "signature algorithms"),
                ] {
                    if flags & bit != 0 {
                        lists.push(name);
                    }
                }
                write!(f, "the record keeps only part of its {}", lists.join(", "))
            }
            Ja4Error::Partial => f.write_str("the record stops before the end of the hello"),
            Ja4Error::Sslv2Format => f.write_str("an SSLv2-format hello has no JA4"),
        }
    }
}

impl std::error::Error for Ja4Error {}

/// Why a string is not a JA4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotJa4;

impl fmt::Display for NotJa4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a JA4 (36 characters: a_b_c, b and c 12 lowercase hex digits)")
    }
}

impl std::error::Error for NotJa4 {}

impl Ja4 {
    /// The fingerprint as text.
    pub fn as_str(&self) -> &str {
        // Built from ASCII only (new and from_str check it).
        core::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The readable part: `t13d1516h2`.
    pub fn a(&self) -> &str {
        &self.as_str()[..10]
    }
}

impl FromStr for Ja4 {
    type Err = NotJa4;

    /// Parses `t13d1516h2_8daaf6152771_e5627efa2ab1`; only the shape is checked.
    fn from_str(s: &str) -> Result<Ja4, NotJa4> {
        let b = s.as_bytes();
        let hex = |r: &[u8]| r.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if b.len() != JA4_LEN
            || b[10] != b'_'
            || b[23] != b'_'
            || !b[..10].iter().all(u8::is_ascii_alphanumeric)
            || !hex(&b[11..23])
            || !hex(&b[24..])
        {
            return Err(NotJa4);
        }
        let mut out = [0; JA4_LEN];
        out.copy_from_slice(b);
        Ok(Ja4(out))
    }
}

impl fmt::Display for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ja4({})", self.as_str())
    }
}

impl serde::Serialize for Ja4 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The JA4 of `rec`, or why it has none.
pub fn ja4(rec: &HelloRecord) -> Result<Ja4, Ja4Error> {
    let lists = Lists::of(rec)?;
    let mut out = [0u8; JA4_LEN];
    out[..10].copy_from_slice(&part_a(rec));
    out[10] = b'_';
    out[11..23].copy_from_slice(&hash12(lists.sorted_ciphers_text().as_bytes()));
    out[23] = b'_';
    match lists.extension_text() {
        Some(text) => out[24..].copy_from_slice(&hash12(text.as_bytes())),
        None => out[24..].copy_from_slice(EMPTY_HASH.as_bytes()),
    }
    Ok(Ja4(out))
}

/// The raw JA4 (`JA4_r`): part a, then the sorted cipher suites, the sorted extensions without
/// SNI and ALPN, and the signature algorithms, as the hex lists that [`ja4`] hashes.
pub fn ja4_r(rec: &HelloRecord) -> Result<String, Ja4Error> {
    let lists = Lists::of(rec)?;
    let a = part_a(rec);
    let mut s = String::with_capacity(16 + 5 * (lists.ciphers.len() + lists.extensions.len()));
    s.push_str(core::str::from_utf8(&a).unwrap_or("?"));
    s.push('_');
    s.push_str(&lists.sorted_ciphers_text());
    s.push('_');
    s.push_str(&lists.extension_text().unwrap_or_default());
    Ok(s)
}

/// The lists of a record, checked whole.
struct Lists<'a> {
    ciphers: &'a [u16],
    extensions: &'a [u16],
    sigalgs: &'a [u16],
}

impl<'a> Lists<'a> {
    fn of(rec: &'a HelloRecord) -> Result<Lists<'a>, Ja4Error> {
        if rec.version == Version::Sslv2 as u8 {
            return Err(Ja4Error::Sslv2Format);
        }
        if rec.flags & FLAG_PARTIAL != 0 {
            return Err(Ja4Error::Partial);
        }
        // A count past the array without its flag is a truncation all the same.
        let mut cut = rec.flags & (TRUNCATED_CIPHERS | TRUNCATED_EXTENSIONS | TRUNCATED_SIGALGS);
        for (n, cap, bit) in [
            (rec.n_ciphers, RECORD_CIPHERS, TRUNCATED_CIPHERS),
            (rec.n_extensions, RECORD_EXTENSIONS, TRUNCATED_EXTENSIONS),
            (rec.n_sigalgs, RECORD_SIGALGS, TRUNCATED_SIGALGS),
        ] {
            if usize::from(n) > cap {
                cut |= bit;
            }
        }
        if cut != 0 {
            return Err(Ja4Error::Truncated(cut));
        }
        Ok(Lists {
            ciphers: &rec.ciphers[..usize::from(rec.n_ciphers)],
            extensions: &rec.extensions[..usize::from(rec.n_extensions)],
            sigalgs: &rec.sigalgs[..usize::from(rec.n_sigalgs)],
        })
    }

    fn sorted_ciphers_text(&self) -> String {
        let mut v = self.ciphers.to_vec();
        v.sort_unstable();
        hex_list(&v)
    }

    /// The string the extension hash is of, `None` when no extension is left once SNI and ALPN
    /// are (the spec's `000000000000`).
    fn extension_text(&self) -> Option<String> {
        let mut v: Vec<u16> =
            self.extensions.iter().copied().filter(|&e| e != EXT_SNI && e != EXT_ALPN).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let mut s = hex_list(&v);
        if !self.sigalgs.is_empty() {
            s.push('_');
            s.push_str(&hex_list(self.sigalgs));
        }
        Some(s)
    }
}

/// `t13d1516h2`.
fn part_a(rec: &HelloRecord) -> [u8; 10] {
    let mut a = [0u8; 10];
    a[0] = b't';
    a[1..3].copy_from_slice(version_code(rec));
    a[3] = if rec.flags & FLAG_SNI != 0 { b'd' } else { b'i' };
    a[4..6].copy_from_slice(&two_digits(rec.n_ciphers));
    a[6..8].copy_from_slice(&two_digits(rec.n_extensions));
    a[8..10].copy_from_slice(&alpn_code(rec));
    a
}

/// The version's two characters (`max_supported` is already GREASE-free).
fn version_code(rec: &HelloRecord) -> &'static [u8; 2] {
    let v = if rec.max_supported != 0 { rec.max_supported } else { rec.legacy_version };
    match v {
        0x0304 => b"13",
        0x0303 => b"12",
        0x0302 => b"11",
        0x0301 => b"10",
        0x0300 => b"s3",
        0x0002 => b"s2",
        0xfeff => b"d1",
        0xfefd => b"d2",
        0xfefc => b"d3",
        _ => b"00",
    }
}

fn two_digits(n: u16) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

/// The first ALPN value's first and last characters, by the spec's rules.
fn alpn_code(rec: &HelloRecord) -> [u8; 2] {
    if rec.flags & FLAG_ALPN == 0 || rec.alpn_len == 0 {
        return *b"00";
    }
    let (first, last) = (rec.alpn_first, rec.alpn_last);
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        [first, last]
    } else {
        [HEX[usize::from(first >> 4)], HEX[usize::from(last & 0xf)]]
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_list(v: &[u16]) -> String {
    let mut s = String::with_capacity(v.len() * 5);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        for shift in [12, 8, 4, 0] {
            s.push(char::from(HEX[usize::from((x >> shift) & 0xf)]));
        }
    }
    s
}

/// The first 12 lowercase hex digits of sha256(`text`); [`EMPTY_HASH`] for empty text.
fn hash12(text: &[u8]) -> [u8; 12] {
    let mut out = [b'0'; 12];
    if text.is_empty() {
        return out;
    }
    let digest = Sha256::digest(text);
    for (i, b) in digest.iter().take(6).enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own example (JA4.md, "Example" and "Raw Output").
    fn spec_example() -> HelloRecord {
        let mut r = HelloRecord::new();
        r.version = Version::Tls13 as u8; // new() says SSLv2 (0)
        let ciphers = [
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
            0x009c, 0x009d, 0x002f, 0x0035,
        ];
        let exts = [
            0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
            0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
        ];
        let sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601];
        r.ciphers[..ciphers.len()].copy_from_slice(&ciphers);
        r.extensions[..exts.len()].copy_from_slice(&exts);
        r.sigalgs[..sigs.len()].copy_from_slice(&sigs);
        r.n_ciphers = ciphers.len() as u16;
        r.n_extensions = exts.len() as u16;
        r.n_sigalgs = sigs.len() as u16;
        r.legacy_version = 0x0303;
        r.max_supported = 0x0304;
        r.flags = FLAG_SNI | FLAG_ALPN;
        (r.alpn_len, r.alpn_first, r.alpn_last) = (2, b'h', b'2');
        r
    }

    fn a_of(r: &HelloRecord) -> String {
        ja4(r).map(|j| j.a().to_owned()).unwrap_or_else(|e| format!("{e}"))
    }

    #[test]
    fn spec_example_and_its_raw_form() {
        let r = spec_example();
        assert_eq!(ja4(&r).unwrap().as_str(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            ja4_r(&r).unwrap(),
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,\
             cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,\
             0804,0401,0503,0805,0501,0806,0601"
        );
    }

    #[test]
    fn without_sigalgs_the_hashed_string_has_no_underscore() {
        let mut r = spec_example();
        r.n_sigalgs = 0;
        // JA4.md: "0005,...,ff01 = 6d807ffa2a79".
        assert!(ja4(&r).unwrap().as_str().ends_with("_6d807ffa2a79"), "{:?}", ja4(&r));
    }

    #[test]
    fn empty_lists_give_zeros() {
        let mut r = spec_example();
        r.n_ciphers = 0;
        assert_eq!(&ja4(&r).unwrap().as_str()[4..6], "00");
        assert_eq!(&ja4(&r).unwrap().as_str()[11..23], "000000000000");
        // Only SNI and ALPN left: the sorted list is empty.
        r.extensions[..2].copy_from_slice(&[0x0000, 0x0010]);
        r.n_extensions = 2;
        r.n_sigalgs = 0;
        let j = ja4(&r).unwrap();
        assert_eq!(j.as_str(), "t13d0002h2_000000000000_000000000000");
        assert_eq!(ja4_r(&r).unwrap(), "t13d0002h2__");
    }

    #[test]
    fn versions() {
        let mut r = spec_example();
        for (max, legacy, want) in [
            (0x0304, 0x0303, "13"),
            (0, 0x0303, "12"),
            (0, 0x0302, "11"),
            (0, 0x0301, "10"),
            (0, 0x0300, "s3"),
            (0, 0x0002, "s2"),
            (0, 0xfefd, "d2"),
            (0x7f1c, 0x0303, "00"),
            (0x0305, 0x0303, "00"),
            (0, 0x0200, "00"),
            (0, 0x1234, "00"),
        ] {
            (r.max_supported, r.legacy_version) = (max, legacy);
            assert_eq!(&a_of(&r)[1..3], want, "max_supported {max:#x} legacy {legacy:#x}");
        }
    }

    #[test]
    fn counts_cap_at_99_and_sni_letter() {
        let mut r = spec_example();
        r.n_ciphers = 95; // within the array: still hashable
        r.n_extensions = 40;
        assert_eq!(&a_of(&r)[3..8], "d9540");
        r.flags &= !FLAG_SNI;
        assert_eq!(&a_of(&r)[3..4], "i");
        let mut cap = HelloRecord::new();
        cap.version = Version::Tls12 as u8;
        cap.n_ciphers = 96;
        assert_eq!(two_digits(150), *b"99");
        assert_eq!(&a_of(&cap)[4..6], "96");
    }

    #[test]
    fn alpn_rules_of_the_spec() {
        let mut r = spec_example();
        for (flag, len, first, last, want) in [
            (FLAG_ALPN, 8, b'h', b'1', "h1"),
            (FLAG_ALPN, 1, b'b', b'b', "bb"),
            (FLAG_ALPN, 1, 0xab, 0xab, "ab"),
            (FLAG_ALPN, 2, 0xab, 0xcd, "ad"),
            (FLAG_ALPN, 2, 0x30, 0xab, "3b"),
            (FLAG_ALPN, 4, 0x30, 0xcd, "3d"),
            (FLAG_ALPN, 4, 0x30, 0x31, "01"),
            (FLAG_ALPN, 3, b'_', b'x', "58"),
            (FLAG_ALPN, 0, 0, 0, "00"),
            (0, 2, b'h', b'2', "00"),
        ] {
            r.flags = (r.flags & !FLAG_ALPN) | flag;
            (r.alpn_len, r.alpn_first, r.alpn_last) = (len, first, last);
            assert_eq!(&a_of(&r)[8..10], want, "alpn len {len} {first:#x}..{last:#x}");
        }
    }

    #[test]
    fn truncated_lists_give_no_fingerprint() {
        for (flag, set) in [
            (TRUNCATED_CIPHERS, (|r: &mut HelloRecord| r.n_ciphers = 97) as fn(&mut HelloRecord)),
            (TRUNCATED_EXTENSIONS, |r| r.n_extensions = 41),
            (TRUNCATED_SIGALGS, |r| r.n_sigalgs = 49),
        ] {
            let mut r = spec_example();
            r.flags |= flag;
            assert_eq!(ja4(&r), Err(Ja4Error::Truncated(flag)));
            assert_eq!(ja4_r(&r), Err(Ja4Error::Truncated(flag)));
            // A count past the array is a truncation even without its flag.
            let mut r = spec_example();
            set(&mut r);
            assert_eq!(ja4(&r), Err(Ja4Error::Truncated(flag)));
        }
        let mut r = spec_example();
        r.flags |= outpost_common::record::TRUNCATED_SNI;
        assert!(ja4(&r).is_ok(), "a long server name does not touch the hashes");
        r.flags |= FLAG_PARTIAL;
        assert_eq!((ja4(&r), ja4_r(&r)), (Err(Ja4Error::Partial), Err(Ja4Error::Partial)));
    }

    #[test]
    fn sslv2_format_hellos_have_none() {
        let mut r = spec_example();
        r.version = Version::Sslv2 as u8;
        assert_eq!(ja4(&r), Err(Ja4Error::Sslv2Format));
        r.version = Version::Tls10 as u8;
        assert!(ja4(&r).is_ok(), "only the classifier's SSLv2 verdict counts, not the fields");
    }

    #[test]
    fn parses_its_own_text_and_nothing_else() {
        let j = ja4(&spec_example()).unwrap();
        assert_eq!(j.as_str().parse::<Ja4>(), Ok(j));
        for bad in [
            "",
            "t13d1516h2_8daaf6152771_e5627efa2ab",
            "t13d1516h2_8daaf6152771-e5627efa2ab1",
            "t13d1516h2_8DAAF6152771_e5627efa2ab1",
            "t13d1516h\n_8daaf6152771_e5627efa2ab1",
        ] {
            assert_eq!(bad.parse::<Ja4>(), Err(NotJa4), "{bad:?}");
        }
    }
}
