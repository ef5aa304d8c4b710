//! Map names, keys and values shared by the XDP program and userspace.
//!
//! Maps pinned under [`PIN_DIR`] outlive the loader: stats survive a userspace restart and
//! `bpftool map dump pinned /sys/fs/bpf/outpost/<name>` reads them.

use crate::hello::HelloParser;
use crate::version::{Verdict, Version};

/// Where maps and attachment links are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/outpost";

/// `Policy`, one entry (array).
pub const POLICY: &str = "policy";
/// Protected TCP ports as a bitmap: entry `port / 64`, bit `port % 64` (array of u64).
pub const PORTS: &str = "ports";
/// Per-CPU u64 counters indexed by [`version_slot`].
pub const VERSION_STATS: &str = "version_stats";
/// Per-CPU u64 counters indexed by [`Outcome`].
pub const PARSE_STATS: &str = "parse_stats";
/// LRU hash [`FlowKey`] → [`FlowState`]: hellos followed across segments, and flows already
/// dropped or rejected (so retransmissions are handled without being counted again).
pub const FLOWS: &str = "flows";
/// Array of u64 counters indexed by [`flow_slot`]: a counting filter in front of [`FLOWS`]. A
/// slot is raised before a flow is inserted and lowered after one is removed, so a slot of zero
/// proves that no flow hashing to it is in the table and the lookup can be skipped. LRU
/// evictions lower nothing: they leave slots too high, which only costs a lookup.
pub const FLOW_FILTER: &str = "flow_filter";
/// Per-CPU counter of the baseline program used by the benchmark.
pub const BASELINE_STATS: &str = "baseline_stats";
/// Hash port (host order, u16) → [`crate::Mode`] (u8): ports whose mode is not the policy's.
pub const PORT_MODES: &str = "port_modes";
/// LRU hash [`crate::budget::SourceKey`] → [`crate::budget::Bucket`]: the redirect budget of
/// each source network.
pub const REDIRECT_SOURCES: &str = "redirect_sources";
/// One [`crate::budget::Bucket`] (array): the redirect budget of the whole data plane.
pub const REDIRECT_GLOBAL: &str = "redirect_global";
/// LRU hash [`FlowKey`] → u64 (monotonic ns): connections whose legacy hello the program
/// passed on to the legacy responder within the budget. The userspace floor takes its entry
/// when the hello reaches it, and serves such a connection without taking from a budget of its
/// own; a legacy hello without an entry (the kernel left it to userspace) is budgeted there.
pub const REDIRECTS: &str = "redirects";

/// Ring buffer of [`crate::record::HelloRecord`]s: one per sampled decided hello. Pinned, so a
/// process other than the loader (`outpost` reading records) can consume it; one consumer at a
/// time, as every record goes to whichever reader takes it first.
pub const HELLO_RECORDS: &str = "hello_records";
/// One [`RecordConfig`] (array): whether hellos are recorded, and one in how many.
pub const RECORD_CONFIG: &str = "record_config";
/// LRU hash [`FlowKey`] → [`crate::record::HelloRecord`]: the records of sampled hellos being
/// followed across segments, until they are decided.
pub const RECORD_FLOWS: &str = "record_flows";

/// Names of the XDP programs in the object.
pub const PROG_FLOOR: &str = "outpost_xdp";
/// Counts and passes: the benchmark's baseline.
pub const PROG_BASELINE: &str = "outpost_baseline";
/// Passes everything: for the client side of a veth pair, where XDP_TX frames from the other
/// side are only delivered when an XDP program is attached.
pub const PROG_PASS: &str = "outpost_pass";

/// Entries of the [`PORTS`] bitmap.
pub const PORT_WORDS: u32 = 65536 / 64;
/// Entries of the [`FLOWS`] map.
pub const FLOW_CAPACITY: u32 = 65536;
/// Slots of the [`FLOW_FILTER`] (a power of two, 4× [`FLOW_CAPACITY`]: with the table full, an
/// untracked flow still finds its slot empty about 78 % of the time).
pub const FLOW_FILTER_SLOTS: u32 = 1 << 18;
/// Entries of the [`PORT_MODES`] map.
pub const PORT_MODE_CAPACITY: u32 = 256;
/// Source networks the [`REDIRECT_SOURCES`] map keeps a budget for (the least recently seen
/// go first: a network that went quiet gets a full bucket back anyway).
pub const REDIRECT_SOURCE_CAPACITY: u32 = 65536;
/// Entries of the [`REDIRECTS`] map: redirected connections not yet taken by userspace (it
/// takes each within a round trip; the budget bounds how many arrive per second).
pub const REDIRECT_CAPACITY: u32 = 16384;
/// Bytes of the [`HELLO_RECORDS`] ring (a power of two, a multiple of the page size): about
/// 4,000 hellos sent as their bytes (264 bytes with the ring's header, for most of them), or
/// 2,000 records of 480, for the consumer to fall behind by.
pub const HELLO_RECORDS_BYTES: u32 = 1024 * 1024;
/// Bytes of records waiting in [`HELLO_RECORDS`] from which the kernel wakes the reader (a
/// quarter of the ring: about 1,000 small entries). Below it a record is sent without a
/// wake-up. Each wake-up is an interrupt the sending CPU raises (a VM exit in a guest): one per
/// record, the ring's default while the reader keeps up, cost more than the rest of recording
/// together, and one per 32 KiB of a 256 KiB ring still cost 20-40 ns a record (2026-12-05).
/// A reader waits with a timeout (`HelloRecords::POLL`), which bounds how long a lone record
/// waits. A ring pinned by an older version (256 KiB) never reaches it: its reader wakes on the
/// timeout only, until `outpost detach --all --purge`.
pub const HELLO_RECORDS_WAKE_BYTES: u64 = 256 * 1024;
/// Entries of the [`RECORD_FLOWS`] map: sampled hellos in flight across segments.
pub const RECORD_FLOW_CAPACITY: u32 = 4096;
/// Segments a hello is followed across before it is left to userspace.
pub const MAX_HELLO_SEGMENTS: u32 = 4;
/// Parser steps the kernel takes per segment (a step reads a field or skips a span). A
/// typical browser hello needs about 60.
pub const KERNEL_STEPS: usize = 160;

/// Parser steps the kernel takes per segment of a sampled hello, read in the recording mode:
/// lists come in runs of `hello::RUN_BYTES`, but every extension takes a step or three. A
/// browser hello of ~1.9 kB needs about 90.
pub const KERNEL_RECORD_STEPS: usize = 256;

/// Whether and how often the kernel records hellos ([`RECORD_CONFIG`]). All-zero (the map as
/// created) is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordConfig {
    /// Non-zero: record.
    pub enabled: u32,
    /// Record one hello in `sample` on each CPU (1: every hello); 0 records none.
    pub sample: u32,
}

impl RecordConfig {
    /// Whether some hellos are recorded.
    #[inline(always)]
    pub fn records(&self) -> bool {
        self.enabled != 0 && self.sample != 0
    }
}

/// Slots of the [`VERSION_STATS`] counters.
pub const VERSION_SLOTS: u32 = (Version::COUNT * Verdict::COUNT) as u32;

/// Index of the counter for `version` × `verdict`.
#[inline(always)]
pub const fn version_slot(version: Version, verdict: Verdict) -> u32 {
    version as u32 * Verdict::COUNT as u32 + verdict as u32
}

/// What the packet walk and the classifier saw; each is a counter in [`PARSE_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every packet the program saw. Not counted by the kernel, which counts each packet once,
    /// by what became of it (one of [`Outcome::TERMINAL`], as the benchmark's baseline counts
    /// each packet once): userspace sums those into this slot (`Stats`).
    Packets = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, more than two VLAN tags, …): passed.
    NotIp = 1,
    /// IP but not TCP: passed.
    NotTcp = 2,
    /// IPv4 fragment or IPv6 fragment header: passed untouched.
    Fragment = 3,
    /// IPv6 extension header chain longer than the walk follows, or of an unknown kind: passed.
    ExtHeaders = 4,
    /// Headers cut short or inconsistent (lengths past the packet): passed.
    Truncated = 5,
    /// TCP to a port that is not protected (but for what `NoPayload` and `NotHello` count
    /// before the port).
    OtherPort = 6,
    /// TCP without payload: SYN or ACK to any port (checked before the port), or FIN or RST to
    /// a protected port of no flow being handled.
    NoPayload = 7,
    /// Payload that does not start a ClientHello (and no hello is being followed); a segment
    /// that starts a TLS application-data record and neither closes nor resets, to any port
    /// (checked before the port).
    NotHello = 8,
    /// A hello decided from its first segment.
    DecidedFirst = 9,
    /// A hello decided from a later segment.
    DecidedLater = 10,
    /// A hello that ends past this segment: followed to the next one (also the first segment
    /// of a followed hello seen again, a retransmission: still followed).
    FollowNext = 11,
    /// A hello left to userspace: out of order, too many segments, or too many steps.
    ToUserspace = 12,
    /// A hello that broke the rules: failed open (passed).
    Malformed = 13,
    /// The flow table was full and refused a hello to follow: left to userspace.
    FlowTableFull = 14,
    /// A later segment of a dropped or rejected flow (a retransmission, or the client's reset):
    /// handled, the hello not counted again.
    FlowRepeat = 15,
    /// Reject: the hello was turned into a reset to the server.
    ResetServer = 16,
    /// Reject: a reset was sent back to the client.
    ResetClient = 17,
    /// Reject could not rewrite the packet (e.g. the tail could not be trimmed): dropped.
    RewriteFailed = 18,
    /// A new connection on the four-tuple of a dropped or rejected flow (a reused source
    /// port): the old flow is forgotten and the new hello judged on its own.
    FlowReused = 19,
    /// A sampled hello's record went into the [`HELLO_RECORDS`] ring.
    RecordSent = 20,
    /// A sampled hello's record was lost: the ring was full (no consumer, or a slow one), or
    /// its partial record was evicted while the hello was followed. The hello was handled all
    /// the same.
    RecordDropped = 21,
}

impl Outcome {
    pub const ALL: [Outcome; 22] = [
        Outcome::Packets,
        Outcome::NotIp,
        Outcome::NotTcp,
        Outcome::Fragment,
        Outcome::ExtHeaders,
        Outcome::Truncated,
        Outcome::OtherPort,
        Outcome::NoPayload,
        Outcome::NotHello,
        Outcome::DecidedFirst,
        Outcome::DecidedLater,
        Outcome::FollowNext,
        Outcome::ToUserspace,
        Outcome::Malformed,
        Outcome::FlowTableFull,
        Outcome::FlowRepeat,
        Outcome::ResetServer,
        Outcome::ResetClient,
        Outcome::RewriteFailed,
        Outcome::FlowReused,
        Outcome::RecordSent,
        Outcome::RecordDropped,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The outcomes that end a packet's handling, `NotIp` to `FlowRepeat` in [`ALL`](Self::ALL):
    /// the kernel counts every packet in exactly one of them (the others come on top: a reset
    /// sent, a record sent, a reused flow), so that a packet that passes early costs one
    /// counter, as the baseline's; their sum is [`Outcome::Packets`].
    pub const TERMINAL: &'static [Outcome] =
        Self::ALL.split_at(Outcome::FlowRepeat as usize + 1).0.split_at(Outcome::NotIp as usize).1;

    /// The name used by `outpost stats` and `/metrics`.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Packets => "packets",
            Outcome::NotIp => "not_ip",
            Outcome::NotTcp => "not_tcp",
            Outcome::Fragment => "ip_fragment",
            Outcome::ExtHeaders => "ipv6_ext_headers",
            Outcome::Truncated => "truncated",
            Outcome::OtherPort => "other_port",
            Outcome::NoPayload => "no_payload",
            Outcome::NotHello => "not_hello",
            Outcome::DecidedFirst => "decided_first_segment",
            Outcome::DecidedLater => "decided_later_segment",
            Outcome::FollowNext => "followed_to_next_segment",
            Outcome::ToUserspace => "left_to_userspace",
            Outcome::Malformed => "malformed_failed_open",
            Outcome::FlowTableFull => "flow_table_full",
            Outcome::FlowRepeat => "repeat_of_blocked_flow",
            Outcome::ResetServer => "reset_to_server",
            Outcome::ResetClient => "reset_to_client",
            Outcome::RewriteFailed => "rewrite_failed",
            Outcome::FlowReused => "blocked_flow_reused",
            Outcome::RecordSent => "hello_record_sent",
            Outcome::RecordDropped => "hello_record_dropped",
        }
    }
}

/// A TCP flow, client to server. IPv4 addresses sit in the first word, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order, as on the wire.
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// The [`FLOW_FILTER`] slot of `key`: a multiplicative hash of the four-tuple's words.
#[inline(always)]
pub fn flow_slot(key: &FlowKey) -> u32 {
    let mut h = v4_words(key.src[0], key.dst[0], key.sport, key.dport);
    h ^= (key.src[1] ^ key.src[2] ^ key.src[3]).rotate_left(13);
    h ^= (key.dst[1] ^ key.dst[2] ^ key.dst[3]).rotate_left(19);
    mix_slot(h)
}

/// [`flow_slot`] of an IPv4 four-tuple, from its words as the packet holds them (addresses
/// and ports as [`FlowKey`] stores them): the same slot, without a key whose other address
/// words are zero. The XDP program's path for data segments reads only these.
#[inline(always)]
pub fn flow_slot_v4(src: u32, dst: u32, sport: u16, dport: u16) -> u32 {
    mix_slot(v4_words(src, dst, sport, dport))
}

/// The words every four-tuple's slot hashes: the first of each address and the ports.
#[inline(always)]
fn v4_words(src: u32, dst: u32, sport: u16, dport: u16) -> u32 {
    src ^ dst.rotate_left(7) ^ (((sport as u32) << 16) | dport as u32)
}

#[inline(always)]
fn mix_slot(mut h: u32) -> u32 {
    h = h.wrapping_mul(0x9e37_79b1);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85eb_ca77);
    (h >> 14) & (FLOW_FILTER_SLOTS - 1)
}

/// What is known of a flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowPhase {
    /// A hello is being followed; `parser` holds its state.
    Following = 0,
    /// The hello was dropped: later segments are dropped too.
    Dropped = 1,
    /// The hello was rejected and the server reset: later segments draw a reset to the client.
    Rejected = 2,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    pub parser: HelloParser,
    /// Following: sequence number the next segment must carry. Dropped or rejected: the end
    /// of the segment that decided (host order).
    pub next_seq: u32,
    /// Sequence number of the hello's first byte (host order): a retransmission of it passes.
    pub first_seq: u32,
    /// Segments of the hello seen so far.
    pub segments: u8,
    /// [`FlowPhase`].
    pub phase: u8,
    /// Following: non-zero when the hello is sampled; `parser` is then in the recording mode
    /// and the record so far is in [`RECORD_FLOWS`].
    pub recording: u8,
    pub _pad: [u8; 5],
}

#[cfg(feature = "std")]
impl FlowKey {
    /// The key the XDP program gives the connection from `client` to `server` (IPv4-mapped
    /// IPv6 addresses, as a dual-stack socket reports IPv4 peers, count as IPv4).
    pub fn of_connection(client: std::net::SocketAddr, server: std::net::SocketAddr) -> FlowKey {
        let mut key = FlowKey {
            sport: client.port().to_be(),
            dport: server.port().to_be(),
            ..FlowKey::default()
        };
        let (src, family) = words(client.ip());
        key.src = src;
        key.dst = words(server.ip()).0;
        key.family = family;
        key
    }
}

/// An address as the XDP program stores it, and its family (4 or 6).
#[cfg(feature = "std")]
pub fn words(ip: std::net::IpAddr) -> ([u32; 4], u8) {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    match ip {
        std::net::IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], 4),
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], 6)
        }
    }
}

impl FlowState {
    /// For a dropped or rejected flow: true when a segment at `seq` belongs to the blocked
    /// connection (a retransmission of its hello, or what follows it such as a FIN). Any other
    /// sequence number is a new connection on the same four-tuple, whose initial sequence
    /// number is random. Wraps around like TCP sequence space.
    pub fn covers(&self, seq: u32) -> bool {
        Self::covers_seq(self.first_seq, self.next_seq, seq)
    }

    /// [`covers`](Self::covers) for a flow's `first_seq` and `next_seq` copied out of the map.
    #[inline(always)]
    pub fn covers_seq(first_seq: u32, next_seq: u32, seq: u32) -> bool {
        seq.wrapping_sub(first_seq) <= next_seq.wrapping_sub(first_seq)
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::version::Policy;
    unsafe impl aya::Pod for Policy {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for RecordConfig {}
    unsafe impl aya::Pod for crate::budget::SourceKey {}
    unsafe impl aya::Pod for crate::budget::Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense() {
        let mut seen = [false; VERSION_SLOTS as usize];
        for v in Version::ALL {
            for d in Verdict::ALL {
                let s = version_slot(v, d) as usize;
                assert!(!seen[s], "slot {s} used twice");
                seen[s] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn terminal_outcomes_are_not_ip_to_flow_repeat() {
        let t = Outcome::TERMINAL;
        assert_eq!((t.len(), t[0], t[t.len() - 1]), (15, Outcome::NotIp, Outcome::FlowRepeat));
        for o in [Outcome::Packets, Outcome::ResetServer, Outcome::RecordSent, Outcome::FlowReused]
        {
            assert!(!t.contains(&o), "{o:?}");
        }
    }

    #[test]
    fn the_ipv4_slot_is_the_keys_slot() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            // xorshift: spread values over all four words.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (src, dst, ports) = (x as u32, (x >> 32) as u32, x.rotate_left(21) as u32);
            let key = FlowKey {
                src: [src, 0, 0, 0],
                dst: [dst, 0, 0, 0],
                sport: ports as u16,
                dport: (ports >> 16) as u16,
                family: 4,
                _pad: [0; 3],
            };
            assert_eq!(flow_slot_v4(src, dst, key.sport, key.dport), flow_slot(&key), "{key:?}");
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn connection_keys_match_the_wire() {
        let client: std::net::SocketAddr = "198.18.10.1:40000".parse().unwrap();
        let server: std::net::SocketAddr = "198.18.10.2:443".parse().unwrap();
        let k = FlowKey::of_connection(client, server);
        // As the program reads them: address bytes in wire order, ports as on the wire.
        assert_eq!(k.src[0].to_ne_bytes(), [198, 18, 10, 1]);
        assert_eq!(k.dport.to_ne_bytes(), [0x01, 0xbb]);
        assert_eq!(k.family, 4);
        let mapped: std::net::SocketAddr = "[::ffff:198.18.10.1]:40000".parse().unwrap();
        assert_eq!(FlowKey::of_connection(mapped, server), k);
        let v6: std::net::SocketAddr = "[2001:2:0:10::1]:40000".parse().unwrap();
        let k6 = FlowKey::of_connection(v6, "[2001:2:0:10::2]:443".parse().unwrap());
        assert_eq!((k6.family, k6.src[0].to_ne_bytes()), (6, [0x20, 0x01, 0, 2]));
        assert_eq!(k6.src[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn blocked_flow_covers_its_hello_and_nothing_else() {
        let flow = |first_seq: u32, next_seq: u32| FlowState {
            parser: HelloParser::new(),
            next_seq,
            first_seq,
            segments: 0,
            phase: FlowPhase::Rejected as u8,
            recording: 0,
            _pad: [0; 5],
        };
        let f = flow(1000, 1517);
        for seq in [1000, 1200, 1517] {
            assert!(f.covers(seq), "{seq}");
        }
        for seq in [999, 1518, 0, u32::MAX, 3_000_000_000] {
            assert!(!f.covers(seq), "{seq}");
        }
        // Across the wrap of sequence space.
        let f = flow(u32::MAX - 10, 500);
        assert!(f.covers(u32::MAX) && f.covers(0) && f.covers(500));
        assert!(!f.covers(501) && !f.covers(u32::MAX - 11));
    }

    #[test]
    fn layouts_are_stable() {
        assert_eq!(size_of::<HelloParser>(), 40);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowState>(), 56);
        assert_eq!(size_of::<RecordConfig>(), 8);
        assert_eq!(size_of::<crate::record::HelloRecord>(), 472);
        assert_eq!(size_of::<crate::record::BytesHeader>(), 24);
        assert_eq!(size_of::<crate::record::HelloBytes<232>>(), 256);
        assert_eq!(size_of::<crate::Policy>(), 12);
        assert_eq!(size_of::<crate::budget::SourceKey>(), 20);
        assert_eq!(size_of::<crate::budget::Bucket>(), 16);
    }
}
