//! Who connects: hellos counted by (JA4, server name, first ALPN, offered version, verdict),
//! in a table of bounded size.
//!
//! The table keeps at most `capacity` rows. A new key when it is full takes the place of the
//! row with the smallest count (the least recently seen among equals), whose count goes to the
//! `other` row, kept per version and verdict: totals stay exact, memory stays bounded whatever
//! a flood of random hellos does, and a steady client's row, whose count grows, is not the one
//! that goes. Finding that row is a `BTreeSet` lookup; a hello for a row that exists is one
//! hash lookup and two `BTreeSet` updates.
//!
//! The table takes `&mut self`: the caller locks (a `Mutex<ClientTable>`), and can take the lock
//! once for a batch. [`Hello::of`] does the hashing (the JA4) before the lock.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use outpost_common::record::{HelloRecord, FLAG_ALPN, FLAG_SNI, RECORD_SNI, TRUNCATED_SNI};
use outpost_common::{Verdict, Version};
use serde::Serialize;

use crate::ja4::{ja4, Ja4};
use crate::text::{escape_bytes, push_escaped};

/// Rows kept by default.
pub const DEFAULT_CAPACITY: usize = 1000;
/// Source networks kept per row (the first ones seen).
pub const MAX_NETWORKS: usize = 4;

/// A client fingerprint: a JA4, or none because the record's lists were cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fingerprint {
    Ja4(Ja4),
    /// The record kept only part of a list ([`crate::Ja4Error::Truncated`]): shown as
    /// `unknown`, counted all the same.
    Unknown,
}

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        match self {
            Fingerprint::Ja4(j) => j.as_str(),
            Fingerprint::Unknown => "unknown",
        }
    }

    /// The known client's name, from [`crate::names`].
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Fingerprint::Ja4(j) => crate::names::name(j),
            Fingerprint::Unknown => None,
        }
    }
}

/// The server name of a hello as the record kept it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Sni {
    present: bool,
    truncated: bool,
    len: u8,
    bytes: [u8; RECORD_SNI],
}

impl Sni {
    fn of(rec: &HelloRecord) -> Sni {
        let mut s = Sni { present: false, truncated: false, len: 0, bytes: [0; RECORD_SNI] };
        if rec.flags & FLAG_SNI != 0 {
            let n = usize::from(rec.sni_len).min(RECORD_SNI);
            s.present = true;
            s.truncated = rec.flags & TRUNCATED_SNI != 0;
            s.len = n as u8;
            s.bytes[..n].copy_from_slice(&rec.sni[..n]);
        }
        s
    }

    /// Escaped (`\xNN`), with `…` when the record kept only the first bytes; `None` without
    /// the extension.
    fn show(&self) -> Option<String> {
        if !self.present {
            return None;
        }
        let mut s = escape_bytes(&self.bytes[..usize::from(self.len)]);
        if self.truncated {
            s.push('…');
        }
        Some(s)
    }
}

/// What the record keeps of the first ALPN value: its length and its two ends.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Alpn {
    present: bool,
    len: u8,
    first: u8,
    last: u8,
}

/// Registered ALPN ids (IANA) told apart by length, first and last byte (a test checks no two
/// collide). A value with the same three is shown by that name: a likely reading, as the record
/// keeps no more of it.
const KNOWN_ALPN: &[&str] = &[
    "h2",
    "http/1.1",
    "http/1.0",
    "http/0.9",
    "h3",
    "h2c",
    "spdy/3.1",
    "acme-tls/1",
    "dot",
    "doq",
    "ftp",
    "imap",
    "pop3",
    "managesieve",
    "xmpp-client",
    "xmpp-server",
    "mqtt",
    "postgresql",
    "smb",
    "irc",
    "coap",
    "sunrpc",
    "ntske/1",
    "webrtc",
    "c-webrtc",
];

impl Alpn {
    fn of(rec: &HelloRecord) -> Alpn {
        if rec.flags & FLAG_ALPN == 0 {
            return Alpn { present: false, len: 0, first: 0, last: 0 };
        }
        Alpn { present: true, len: rec.alpn_len, first: rec.alpn_first, last: rec.alpn_last }
    }

    /// `h2`, `http/1.1`; an unregistered value as its ends and length (`x…y (5 bytes)`), `""`
    /// for an empty one; `None` without the extension.
    fn show(&self) -> Option<String> {
        if !self.present {
            return None;
        }
        let (b0, b1) = (self.first, self.last);
        if let Some(known) = KNOWN_ALPN.iter().find(|k| {
            let k = k.as_bytes();
            k.len() == usize::from(self.len) && k[0] == b0 && k[k.len() - 1] == b1
        }) {
            return Some((*known).to_owned());
        }
        let mut s = String::new();
        match self.len {
            0 => {}
            1 => push_escaped(&mut s, b0),
            2 => {
                push_escaped(&mut s, b0);
                push_escaped(&mut s, b1);
            }
            n => {
                push_escaped(&mut s, b0);
                s.push('…');
                push_escaped(&mut s, b1);
                s.push_str(&format!(" ({n} bytes)"));
            }
        }
        Some(s)
    }
}

/// A source network: an IPv4 /24 or an IPv6 /48, as the record's `src_net` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    family: u8,
    words: [u32; 4],
}

impl Network {
    /// The record's network; `None` for a family other than 4 or 6. Masked again here, so a
    /// record with host bits set still shows (and groups as) its network.
    pub fn of(rec: &HelloRecord) -> Option<Network> {
        let mut words = rec.src_net;
        match rec.family {
            4 => {
                let o = words[0].to_ne_bytes();
                words = [u32::from_ne_bytes([o[0], o[1], o[2], 0]), 0, 0, 0];
            }
            6 => {
                let o = words[1].to_ne_bytes();
                words[1] = u32::from_ne_bytes([o[0], o[1], 0, 0]);
                words[2] = 0;
                words[3] = 0;
            }
            _ => return None,
        }
        Some(Network { family: rec.family, words })
    }
}

impl core::fmt::Display for Network {
    /// `192.0.2.0/24`, `2001:db8:1::/48`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.family == 4 {
            write!(f, "{}/24", Ipv4Addr::from(self.words[0].to_ne_bytes()))
        } else {
            let mut o = [0u8; 16];
            for (chunk, w) in o.chunks_exact_mut(4).zip(self.words) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            write!(f, "{}/48", Ipv6Addr::from(o))
        }
    }
}

/// What a row is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    fingerprint: Fingerprint,
    sni: Sni,
    alpn: Alpn,
    version: Version,
    verdict: Verdict,
}

/// A decided hello, ready to count: its key (JA4 computed) and source network.
#[derive(Clone, Copy)]
pub struct Hello {
    key: Key,
    network: Option<Network>,
}

/// Why a record cannot be counted.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRecord {
    /// `version` is not a [`Version`] discriminant.
    Version(u8),
    /// `verdict` is not a [`Verdict`] discriminant.
    Verdict(u8),
}

impl core::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BadRecord::Version(v) => write!(f, "record version {v} is no known version"),
            BadRecord::Verdict(v) => write!(f, "record verdict {v} is no known verdict"),
        }
    }
}

impl std::error::Error for BadRecord {}

fn verdict_from_u8(v: u8) -> Option<Verdict> {
    Verdict::ALL.into_iter().find(|d| *d as u8 == v)
}

impl Hello {
    /// The key of `rec` (its JA4 is computed here: call it outside the table's lock). A record
    /// whose lists were cut counts as [`Fingerprint::Unknown`].
    pub fn of(rec: &HelloRecord) -> Result<Hello, BadRecord> {
        let version = Version::from_u8(rec.version).ok_or(BadRecord::Version(rec.version))?;
        let verdict = verdict_from_u8(rec.verdict).ok_or(BadRecord::Verdict(rec.verdict))?;
        let fingerprint = ja4(rec).map_or(Fingerprint::Unknown, Fingerprint::Ja4);
        Ok(Hello {
            key: Key { fingerprint, sni: Sni::of(rec), alpn: Alpn::of(rec), version, verdict },
            network: Network::of(rec),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.key.fingerprint
    }
}

struct Row {
    key: Key,
    count: u64,
    first_seen: u64,
    last_seen: u64,
    networks: [Option<Network>; MAX_NETWORKS],
    /// When it was last counted, in table updates: orders rows of equal count for eviction.
    touched: u64,
}

/// The hellos of evicted rows, per version and verdict.
#[derive(Clone, Debug)]
struct Other {
    counts: [[u64; Verdict::COUNT]; Version::COUNT],
    /// `u64::MAX` until a row is evicted.
    first_seen: u64,
    last_seen: u64,
}

impl Default for Other {
    fn default() -> Other {
        Other { counts: Default::default(), first_seen: u64::MAX, last_seen: 0 }
    }
}

impl Other {
    fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }
}

/// Which rows a query returns.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only this offered version.
    pub version: Option<Version>,
    /// Only this verdict.
    pub verdict: Option<Verdict>,
    /// Only this server name (as shown, ASCII case-insensitive); `*.example.com` matches names
    /// under example.com; `-` matches hellos without one.
    pub sni: Option<String>,
    /// Only the first N rows by count.
    pub top: Option<usize>,
}

impl Query {
    fn keeps(&self, key: &Key) -> bool {
        self.version.is_none_or(|v| v == key.version)
            && self.verdict.is_none_or(|d| d == key.verdict)
            && self.sni.as_deref().is_none_or(|want| sni_matches(want, key.sni.show()))
    }
}

fn sni_matches(want: &str, sni: Option<String>) -> bool {
    match (want, sni) {
        ("-", None) => true,
        (_, None) => false,
        (want, Some(s)) => match want.strip_prefix("*.") {
            Some(parent) => {
                let s = s.to_ascii_lowercase();
                let parent = parent.to_ascii_lowercase();
                s.len() > parent.len() + 1
                    && s.ends_with(&parent)
                    && s.as_bytes()[s.len() - parent.len() - 1] == b'.'
            }
            None => s.eq_ignore_ascii_case(want),
        },
    }
}

/// One row, as shown and serialised (stable field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    /// The JA4, or `unknown`.
    pub ja4: String,
    /// The client's name when its JA4 is a known one.
    pub name: Option<&'static str>,
    /// The server name, escaped (`\xNN`), `…` at the end when cut; null without one.
    pub sni: Option<String>,
    /// The first ALPN value (see [`ClientTable`]'s docs); null without the extension.
    pub alpn: Option<String>,
    /// Offered version: `TLS1.0`, `SSLv3`, …, `unknown`.
    pub version: &'static str,
    /// `pass`, `drop`, `reject` or `redirect`.
    pub verdict: &'static str,
    pub count: u64,
    /// Unix ms.
    pub first_seen: u64,
    /// Unix ms.
    pub last_seen: u64,
    /// Up to [`MAX_NETWORKS`] source networks (`192.0.2.0/24`, `2001:db8:1::/48`).
    pub networks: Vec<String>,
}

/// Evicted rows' hellos for one version and verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OtherCount {
    pub version: &'static str,
    pub verdict: &'static str,
    pub count: u64,
}

/// The `other` row: hellos of rows evicted to make room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OtherRow {
    /// Always `other`.
    pub ja4: &'static str,
    pub count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Non-zero counts by version and verdict (those of the query).
    pub by: Vec<OtherCount>,
}

/// A query's answer, as `outpost clients --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every hello counted (rows and other), whatever the query.
    pub total: u64,
    /// Rows held (other not included) and the most there can be.
    pub rows_held: usize,
    pub capacity: usize,
    /// Rows evicted into other so far.
    pub evictions: u64,
    /// First flights that gave no record (userspace path) or records that could not be counted.
    pub parse_errors: u64,
    /// The rows the query kept, by count.
    pub rows: Vec<ClientRow>,
    pub other: OtherRow,
}

/// The bounded table of clients.
pub struct ClientTable {
    capacity: usize,
    /// Rows by slot; a new row takes an evicted one's slot.
    rows: Vec<Row>,
    index: HashMap<Key, u32>,
    /// (count, touched, slot) of every row: the first is the one to evict.
    by_count: BTreeSet<(u64, u64, u32)>,
    updates: u64,
    other: Other,
    evictions: u64,
    parse_errors: u64,
    total: u64,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable::new(DEFAULT_CAPACITY)
    }
}

impl ClientTable {
    /// A table of at most `capacity` rows (at least 1) plus other.
    pub fn new(capacity: usize) -> ClientTable {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        ClientTable {
            capacity,
            rows: Vec::new(),
            index: HashMap::new(),
            by_count: BTreeSet::new(),
            updates: 0,
            other: Other::default(),
            evictions: 0,
            parse_errors: 0,
            total: 0,
        }
    }

    /// Counts one decided hello seen at `now_ms` (unix ms).
    pub fn add(&mut self, hello: &Hello, now_ms: u64) {
        self.total += 1;
        self.updates += 1;
        let touched = self.updates;
        if let Some(&slot) = self.index.get(&hello.key) {
            let row = &mut self.rows[slot as usize];
            self.by_count.remove(&(row.count, row.touched, slot));
            row.count += 1;
            row.touched = touched;
            row.first_seen = row.first_seen.min(now_ms);
            row.last_seen = row.last_seen.max(now_ms);
            if let Some(net) = hello.network {
                if !row.networks.contains(&Some(net)) {
                    if let Some(free) = row.networks.iter_mut().find(|n| n.is_none()) {
                        *free = Some(net);
                    }
                }
            }
            self.by_count.insert((row.count, row.touched, slot));
            return;
        }
        let mut networks = [None; MAX_NETWORKS];
        networks[0] = hello.network;
        let row = Row {
            key: hello.key,
            count: 1,
            first_seen: now_ms,
            last_seen: now_ms,
            networks,
            touched,
        };
        let slot = if self.rows.len() < self.capacity {
            self.rows.push(row);
            (self.rows.len() - 1) as u32
        } else {
            let Some((_, _, slot)) = self.by_count.pop_first() else {
                return; // capacity >= 1: the set holds every row
            };
            let old = core::mem::replace(&mut self.rows[slot as usize], row);
            self.index.remove(&old.key);
            self.fold_into_other(&old);
            slot
        };
        self.index.insert(hello.key, slot);
        self.by_count.insert((1, touched, slot));
    }

    /// Counts `rec` ([`Hello::of`] then [`ClientTable::add`]); a record that cannot be counted
    /// is a parse error.
    pub fn observe(&mut self, rec: &HelloRecord, now_ms: u64) {
        match Hello::of(rec) {
            Ok(h) => self.add(&h, now_ms),
            Err(_) => self.parse_errors += 1,
        }
    }

    /// Counts a first flight that gave no hello record (truncated, malformed, not a hello).
    pub fn parse_error(&mut self) {
        self.parse_errors += 1;
    }

    fn fold_into_other(&mut self, old: &Row) {
        self.evictions += 1;
        let o = &mut self.other;
        o.counts[old.key.version as usize][old.key.verdict as usize] += old.count;
        o.first_seen = o.first_seen.min(old.first_seen);
        o.last_seen = o.last_seen.max(old.last_seen);
    }

    /// Hellos counted in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Rows held, other counted as one once it holds anything: at most capacity + 1.
    pub fn len(&self) -> usize {
        self.rows.len() + usize::from(self.other.total() > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn parse_errors(&self) -> u64 {
        self.parse_errors
    }

    /// Hellos in evicted rows, per `[Version as usize][Verdict as usize]`.
    pub fn other_counts(&self) -> [[u64; Verdict::COUNT]; Version::COUNT] {
        self.other.counts
    }

    /// The rows `q` keeps, by count (most first; the most recently seen first among equals).
    pub fn rows(&self, q: &Query) -> Vec<ClientRow> {
        let mut kept: Vec<&Row> = self.rows.iter().filter(|r| q.keeps(&r.key)).collect();
        kept.sort_unstable_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.key.fingerprint.cmp(&b.key.fingerprint))
        });
        kept.truncate(q.top.unwrap_or(usize::MAX));
        kept.into_iter().map(view).collect()
    }

    /// Every row, with its fingerprint, version and count: for aggregations (metrics,
    /// simulation) that need no strings.
    pub(crate) fn counts(&self) -> impl Iterator<Item = (Fingerprint, Version, Verdict, u64)> + '_ {
        self.rows.iter().map(|r| (r.key.fingerprint, r.key.version, r.key.verdict, r.count))
    }

    /// Every row's fingerprint, server name (shown), version and count.
    pub(crate) fn sni_counts(
        &self,
    ) -> impl Iterator<Item = (Fingerprint, Option<String>, Version, u64)> + '_ {
        self.rows.iter().map(|r| (r.key.fingerprint, r.key.sni.show(), r.key.version, r.count))
    }

    /// The answer to `q`, serialisable.
    pub fn report(&self, q: &Query) -> Report {
        let mut by = Vec::new();
        for v in Version::ALL {
            for d in Verdict::ALL {
                let count = self.other.counts[v as usize][d as usize];
                let kept = q.version.is_none_or(|x| x == v) && q.verdict.is_none_or(|x| x == d);
                if count > 0 && kept {
                    by.push(OtherCount { version: v.name(), verdict: d.name(), count });
                }
            }
        }
        Report {
            total: self.total,
            rows_held: self.rows.len(),
            capacity: self.capacity,
            evictions: self.evictions,
            parse_errors: self.parse_errors,
            rows: self.rows(q),
            other: OtherRow {
                ja4: "other",
                count: by.iter().map(|c| c.count).sum(),
                first_seen: if self.evictions == 0 { 0 } else { self.other.first_seen },
                last_seen: self.other.last_seen,
                by,
            },
        }
    }
}

fn view(r: &Row) -> ClientRow {
    ClientRow {
        ja4: r.key.fingerprint.as_str().to_owned(),
        name: r.key.fingerprint.name(),
        sni: r.key.sni.show(),
        alpn: r.key.alpn.show(),
        version: r.key.version.name(),
        verdict: r.key.verdict.name(),
        count: r.count,
        first_seen: r.first_seen,
        last_seen: r.last_seen,
        networks: r.networks.iter().flatten().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_common::record::TRUNCATED_CIPHERS;

    pub(crate) fn record(seed: u64) -> HelloRecord {
        let mut r = HelloRecord::new();
        r.version = Version::Tls13 as u8;
        r.verdict = Verdict::Pass as u8;
        r.family = 4;
        r.src_net = [u32::from_ne_bytes([198, 18, (seed % 7) as u8, 0]), 0, 0, 0];
        r.legacy_version = 0x0303;
        r.max_supported = 0x0304;
        r.n_ciphers = 2;
        r.ciphers[..2].copy_from_slice(&[0x1301, (seed & 0xffff) as u16]);
        r.n_extensions = 2;
        r.extensions[..2].copy_from_slice(&[0x002b, ((seed >> 16) & 0xffff) as u16]);
        r
    }

    #[test]
    fn counts_and_keys() {
        let mut t = ClientTable::new(10);
        let a = record(1);
        t.observe(&a, 1000);
        t.observe(&a, 3000);
        t.observe(&a, 2000);
        let mut b = a;
        b.verdict = Verdict::Reject as u8;
        t.observe(&b, 5000);
        let rows = t.rows(&Query::default());
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].count, rows[0].first_seen, rows[0].last_seen), (3, 1000, 3000));
        assert_eq!((rows[0].verdict, rows[1].verdict), ("pass", "reject"));
        assert_eq!(rows[0].networks, ["198.18.1.0/24"]);
        assert_eq!(t.total(), 4);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn networks_are_few_and_masked() {
        let mut t = ClientTable::new(10);
        for i in 0..10u8 {
            let mut r = record(1);
            r.src_net = [u32::from_ne_bytes([192, 0, i, 77]), 0, 0, 0];
            t.observe(&r, 1);
        }
        let rows = t.rows(&Query::default());
        assert_eq!(
            rows[0].networks,
            ["192.0.0.0/24", "192.0.1.0/24", "192.0.2.0/24", "192.0.3.0/24"]
        );
        let mut r = record(2);
        r.family = 6;
        let o = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1u8];
        for (i, w) in r.src_net.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        }
        t.observe(&r, 1);
        let q = Query { top: Some(10), ..Query::default() };
        let v6 = t.rows(&q).into_iter().find(|r| r.networks.iter().any(|n| n.contains(':')));
        assert_eq!(v6.map(|r| r.networks), Some(vec!["2001:db8:1::/48".to_owned()]));
        r.family = 9;
        t.observe(&r, 1);
        assert!(t.rows(&q).iter().any(|r| r.count == 2 && r.networks.len() == 1));
    }

    #[test]
    fn truncated_records_count_as_unknown() {
        let mut t = ClientTable::new(10);
        let mut r = record(1);
        r.flags |= TRUNCATED_CIPHERS;
        r.n_ciphers = 200;
        t.observe(&r, 1);
        t.observe(&r, 2);
        let rows = t.rows(&Query::default());
        assert_eq!((rows[0].ja4.as_str(), rows[0].count), ("unknown", 2));
        assert_eq!(t.total(), 2);
    }

    #[test]
    fn bad_records_are_parse_errors() {
        let mut t = ClientTable::new(10);
        let mut r = record(1);
        r.verdict = 9;
        t.observe(&r, 1);
        r.verdict = 0;
        r.version = 200;
        t.observe(&r, 1);
        t.parse_error();
        assert_eq!((t.parse_errors(), t.total(), t.len()), (3, 0, 0));
        assert_eq!(Hello::of(&r).err(), Some(BadRecord::Version(200)));
    }

    /// xorshift64*: random enough for distinct keys, no dependency.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn a_flood_of_random_hellos_stays_bounded_and_a_steady_client_keeps_its_row() {
        const K: usize = 1000;
        let mut t = ClientTable::new(K);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let steady = record(u64::MAX);
        let mut versions = [[0u64; Verdict::COUNT]; Version::COUNT];
        for i in 0..100_000u64 {
            let mut r = record(rng.next());
            r.verdict = (i % 4) as u8;
            r.version = 1 + (i % 6) as u8; // SSLv2 records all count as one unknown JA4
            versions[r.version as usize][r.verdict as usize] += 1;
            t.observe(&r, i);
            if i % 50 == 0 {
                t.observe(&steady, i);
            }
            assert!(t.len() <= K + 1, "{} rows after {i} hellos", t.len());
        }
        assert_eq!(t.total(), 100_000 + 2_000);
        let rows = t.rows(&Query::default());
        let held: u64 = rows.iter().map(|r| r.count).sum();
        assert_eq!(held + t.other.total(), t.total(), "rows and other add up to the total");
        assert_eq!(rows[0].count, 2_000, "the steady client is on top: {:?}", rows[0]);
        assert_eq!(rows[0].ja4, Hello::of(&steady).unwrap().fingerprint().as_str());
        assert!(t.evictions() >= 100_000 - K as u64, "{}", t.evictions());
        // Per version and verdict too, with the steady client's on top of its cell.
        let mut by = t.other_counts();
        for r in t.counts() {
            by[r.1 as usize][r.2 as usize] += r.3;
        }
        versions[Version::Tls13 as usize][Verdict::Pass as usize] += 2_000;
        assert_eq!(by, versions);
        assert!(t.index.len() == t.rows.len() && t.by_count.len() == t.rows.len());
    }

    #[test]
    fn eviction_takes_the_smallest_and_oldest() {
        let mut t = ClientTable::new(3);
        let (a, b, c, d) = (record(1), record(2), record(3), record(4));
        for _ in 0..3 {
            t.observe(&a, 1);
        }
        t.observe(&b, 2);
        t.observe(&b, 2);
        t.observe(&c, 3);
        t.observe(&d, 4); // c (count 1) goes
        let ja4s: Vec<String> = t.rows(&Query::default()).into_iter().map(|r| r.ja4).collect();
        let of = |r: &HelloRecord| Hello::of(r).unwrap().fingerprint().as_str().to_owned();
        assert_eq!(ja4s, [of(&a), of(&b), of(&d)]);
        let rep = t.report(&Query::default());
        assert_eq!((rep.other.count, rep.evictions, rep.other.first_seen), (1, 1, 3));
        assert_eq!(rep.other.by, [OtherCount { version: "TLS1.3", verdict: "pass", count: 1 }]);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn queries_filter_sort_and_cut() {
        let mut t = ClientTable::new(100);
        let mut n = 0;
        for (i, (v, d, sni)) in [
            (Version::Tls10, Verdict::Reject, &b"old.example.com"[..]),
            (Version::Tls12, Verdict::Pass, b"www.example.com"),
            (Version::Tls13, Verdict::Pass, b"EXAMPLE.com"),
            (Version::Tls13, Verdict::Pass, b"evil\x1b[2J"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = record(i as u64);
            (r.version, r.verdict) = (v as u8, d as u8);
            r.flags |= FLAG_SNI;
            r.sni[..sni.len()].copy_from_slice(sni);
            r.sni_len = sni.len() as u8;
            for _ in 0..=i {
                n += 1;
                t.observe(&r, n);
            }
        }
        t.observe(&record(9), 100); // no SNI
        let q = |version, verdict, sni: Option<&str>, top| Query {
            version,
            verdict,
            sni: sni.map(str::to_owned),
            top,
        };
        let snis =
            |q: Query| -> Vec<Option<String>> { t.rows(&q).into_iter().map(|r| r.sni).collect() };
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(snis(q(None, None, None, Some(2))), [s("evil\\x1b[2J"), s("EXAMPLE.com")]);
        assert_eq!(snis(q(Some(Version::Tls10), None, None, None)), [s("old.example.com")]);
        assert_eq!(snis(q(None, Some(Verdict::Pass), None, Some(1))), [s("evil\\x1b[2J")]);
        assert_eq!(snis(q(None, None, Some("example.COM"), None)), [s("EXAMPLE.com")]);
        assert_eq!(
            snis(q(None, None, Some("*.example.com"), None)),
            [s("www.example.com"), s("old.example.com")]
        );
        assert_eq!(snis(q(None, None, Some("-"), None)), [None]);
    }

    #[test]
    fn json_has_the_stable_field_names() {
        let mut t = ClientTable::new(1);
        let mut r = record(1);
        r.flags |= FLAG_SNI | FLAG_ALPN | TRUNCATED_SNI;
        r.sni[..3].copy_from_slice(b"a\nb");
        r.sni_len = 3;
        (r.alpn_len, r.alpn_first, r.alpn_last) = (8, b'h', b'1');
        t.observe(&r, 7);
        t.observe(&record(2), 8);
        let v = serde_json::to_value(t.report(&Query::default())).unwrap();
        let row = &v["rows"][0];
        let mut keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "alpn",
                "count",
                "first_seen",
                "ja4",
                "last_seen",
                "name",
                "networks",
                "sni",
                "verdict",
                "version"
            ]
        );
        assert_eq!(row["sni"], serde_json::Value::Null);
        assert_eq!(v["other"]["by"][0]["version"], "TLS1.3");
        assert_eq!(v["other"]["ja4"], "other");
        assert_eq!((v["total"].as_u64(), v["rows_held"].as_u64()), (Some(2), Some(1)));
        let first = view(&Row {
            key: Hello::of(&r).unwrap().key,
            count: 1,
            first_seen: 7,
            last_seen: 7,
            networks: [None; MAX_NETWORKS],
            touched: 0,
        });
        assert_eq!(
            (first.sni.as_deref(), first.alpn.as_deref()),
            (Some("a\\x0ab…"), Some("http/1.1"))
        );
    }

    #[test]
    fn alpn_shown_by_name_or_ends() {
        let show = |present, len, first, last| Alpn { present, len, first, last }.show();
        assert_eq!(show(false, 0, 0, 0), None);
        assert_eq!(show(true, 0, 0, 0).as_deref(), Some(""));
        assert_eq!(show(true, 2, b'h', b'2').as_deref(), Some("h2"));
        assert_eq!(show(true, 2, b'x', 0xff).as_deref(), Some("x\\xff"));
        assert_eq!(show(true, 9, 0x1b, b'z').as_deref(), Some("\\x1b…z (9 bytes)"));
        let mut seen = std::collections::HashSet::new();
        for k in KNOWN_ALPN {
            let b = k.as_bytes();
            assert!(seen.insert((b.len(), b[0], b[b.len() - 1])), "{k} collides");
        }
    }
}
