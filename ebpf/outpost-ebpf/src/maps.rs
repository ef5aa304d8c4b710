//! Map definitions. Names come from `outpost_common::maps`; pinned maps are shared by every
//! attachment and outlive the loader.

use crate::packet::Segment;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use outpost_common::{
    budget::{Bucket, SourceKey},
    maps::{
        FlowKey, FlowState, Outcome, RecordConfig, FLOW_CAPACITY, FLOW_FILTER_SLOTS,
        HELLO_RECORDS_BYTES, PORT_MODE_CAPACITY, PORT_WORDS, RECORD_FLOW_CAPACITY,
        REDIRECT_CAPACITY, REDIRECT_SOURCE_CAPACITY, VERSION_SLOTS,
    },
    quick::QuickHello,
    record::BytesHeader,
    HelloParser, HelloRecord, Policy,
};

/// The policy: floor and mode. Written by `outpost policy set`.
#[map(name = "policy")]
pub static POLICY: Array<Policy> = Array::pinned(1, 0);

/// Protected TCP ports, one bit each.
#[map(name = "ports")]
pub static PORTS: Array<u64> = Array::pinned(PORT_WORDS, 0);

/// Ports whose mode is not the policy's (e.g. one listener in redirect mode beside others in
/// reject). Consulted once per decided hello.
#[map(name = "port_modes")]
pub static PORT_MODES: HashMap<u16, u8> = HashMap::pinned(PORT_MODE_CAPACITY, 0);

/// The redirect budget per source network. Pinned, like the global one, so every attachment
/// of the program on this host shares one budget.
#[map(name = "redirect_sources")]
pub static REDIRECT_SOURCES: LruHashMap<SourceKey, Bucket> =
    LruHashMap::pinned(REDIRECT_SOURCE_CAPACITY, 0);

/// The redirect budget of the whole data plane.
#[map(name = "redirect_global")]
pub static REDIRECT_GLOBAL: Array<Bucket> = Array::pinned(1, 0);

/// Connections whose legacy hello went on to the legacy responder within the budget, for the
/// userspace floor to recognise (it takes the entry).
#[map(name = "redirects")]
pub static REDIRECTS: LruHashMap<FlowKey, u64> = LruHashMap::pinned(REDIRECT_CAPACITY, 0);

/// Hellos by offered version × verdict.
#[map(name = "version_stats")]
pub static VERSION_STATS: PerCpuArray<u64> = PerCpuArray::pinned(VERSION_SLOTS, 0);

/// What the walk and the classifier saw, by [`Outcome`].
#[map(name = "parse_stats")]
pub static PARSE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(Outcome::COUNT, 0);

/// Hellos followed across segments, and flows already dropped or rejected. Not pinned: a
/// reload starts with an empty table, which only costs following a few hellos again.
#[map(name = "flows")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(FLOW_CAPACITY, 0);

/// The counting filter in front of [`FLOWS`] (`outpost_common::maps::FLOW_FILTER`): a segment
/// whose slot is zero belongs to no tracked flow, and skips the hash lookup. Only the helpers in
/// `tls` (`flow_insert`, `flow_remove`) change [`FLOWS`], and they keep the filter in step.
#[map(name = "flow_filter")]
pub static FLOW_FILTER: Array<u64> = Array::with_max_entries(FLOW_FILTER_SLOTS, 0);

/// Records of sampled hellos, for userspace (`outpost_common::maps::HELLO_RECORDS`). Pinned,
/// so the reader need not be the loader.
#[map(name = "hello_records")]
pub static HELLO_RECORDS: RingBuf = RingBuf::pinned(HELLO_RECORDS_BYTES, 0);

/// Whether hellos are recorded, and one in how many. Pinned, like the policy: a reload keeps
/// what userspace set; as created it is off.
#[map(name = "record_config")]
pub static RECORD_CONFIG: Array<RecordConfig> = Array::pinned(1, 0);

/// The records so far of sampled hellos followed across segments. Not pinned, as [`FLOWS`].
#[map(name = "record_flows")]
pub static RECORD_FLOWS: LruHashMap<FlowKey, HelloRecord> =
    LruHashMap::with_max_entries(RECORD_FLOW_CAPACITY, 0);

/// Per-packet working state, kept in a map rather than on the stack so the verifier sees its
/// fields as unknown values. The segment found by the walk goes through here, so that the
/// many shapes of headers (VLAN tags, IP options, extension headers) converge into one state
/// before the hello logic; the classifier's loop body likewise converges after a step or two
/// instead of being explored once per parser state.
///
/// `#[repr(C)]`, with the record last after 8-byte fields, so that `parser`, `flow` and
/// `record` sit at multiples of 8 and are cleared and copied a word at a time
/// (`tls::zero_words`).
#[repr(C)]
pub struct Scratch {
    pub seg: Segment,
    pub parser: HelloParser,
    /// Payload offset and visible length.
    pub off: u32,
    pub len: u32,
    /// Bytes consumed so far.
    pub pos: usize,
    /// Parser steps taken so far.
    pub steps: u32,
    /// The encoded answer (`tls::encode`).
    pub result: u32,
    /// The hello being read: where it began, how (`tls::Hello`).
    pub hello: Hello,
    /// Hellos seen on this CPU since the last one sampled for recording. Kept here rather than
    /// in a map of its own: the entry is looked up for every hello anyway.
    pub since_sampled: u32,
    /// Non-zero when the quick read decided the hello (`tls::quick_read`); `quick` then says
    /// where it ends.
    pub quick_decided: u32,
    /// The quick read's state (`tls::quick_read`).
    pub quick: QuickHello,
    /// The header of a sampled hello sent as its bytes (`tls::send_bytes`), filled as its
    /// fields become known: its length and connection when it is found whole, the version and
    /// verdict when they are decided.
    pub bytes: BytesHeader,
    /// A flow state about to be inserted into [`FLOWS`] (`tls::stage`).
    pub flow: FlowState,
    /// The record of a sampled hello being read: filled by the parser, sent from here (it is
    /// too large for the BPF stack).
    pub record: HelloRecord,
}

// Word-aligned, for `tls::zero_words` and `tls::copy_words`.
const _: () = assert!(core::mem::offset_of!(Scratch, parser) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, flow) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, record) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, bytes) % 8 == 0);

/// The hello in the scratch entry's parser, as `tls::begin` found it.
#[derive(Clone, Copy)]
pub struct Hello {
    /// Sequence number of its first byte (an earlier segment when followed).
    pub first_seq: u32,
    /// Segments of it seen before this one.
    pub segments: u32,
    /// Non-zero when its flow was found in `FLOWS`.
    pub known: u32,
    /// How it is read: `tls::RECORD_OFF`, `RECORD_BYTES`, `RECORD_ON` or `RECORD_LOST`.
    pub recording: u32,
}

#[map(name = "scratch")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The baseline program's counter.
#[map(name = "baseline_stats")]
pub static BASELINE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(outcome: Outcome) {
    bump(&PARSE_STATS, outcome as u32);
}

#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(c) = map.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += 1 };
    }
}

/// Whether `port` (host order) is protected.
#[inline(always)]
pub fn port_protected(port: u16) -> bool {
    match PORTS.get(port as u32 >> 6) {
        Some(word) => word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

/// The mode for hellos to `port` (host order): its own, else the policy's.
#[inline(always)]
pub fn mode_for(policy: &Policy, port: u16) -> u8 {
    // SAFETY: a plain value copied out of the map.
    match unsafe { PORT_MODES.get(port) } {
        Some(m) => *m,
        None => policy.mode,
    }
}

/// The policy in force; a map never written by userspace means the built-in default.
#[inline(always)]
pub fn policy() -> Policy {
    match POLICY.get(0) {
        Some(p) if p.configured != 0 => *p,
        _ => Policy::DEFAULT,
    }
}
