//! What to do with a TCP segment to a protected port: classify a new hello, follow one across
//! segments, or handle a later segment of a flow already dropped or rejected.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{
        xdp_action, BPF_EXIST, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP,
    },
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use outpost_common::{
    budget::{Bucket, SourceKey},
    maps::{
        flow_slot, version_slot, FlowKey, FlowPhase, FlowState, Outcome, HELLO_RECORDS_WAKE_BYTES,
        KERNEL_RECORD_STEPS, KERNEL_STEPS, MAX_HELLO_SEGMENTS,
    },
    may_start_hello,
    record::{
        BytesHeader, HelloBytes, BYTES_CLASSES, FLAG_FOLLOWED, FLAG_PARTIAL, MAX_HELLO_BYTES,
    },
    HelloRecord, Input, Malformed, Mode, Policy, Progress, Verdict, Version,
};

use crate::{
    maps::{
        bump, count, mode_for, policy, Hello, Scratch, FLOWS, FLOW_FILTER, HELLO_RECORDS,
        RECORD_CONFIG, RECORD_FLOWS, REDIRECTS, REDIRECT_GLOBAL, REDIRECT_SOURCES, SCRATCH,
        VERSION_STATS,
    },
    packet::{Headers, Payload, Segment, PAYLOAD_MASK, TCP_RST},
    reset,
};

/// What [`handle`] returns for a sampled hello to be read in the recording mode: not an XDP
/// action, but "read it so" ([`record`], from the program's entry).
pub const RECORD: u32 = u32::MAX;

/// Handles a segment to a protected port that carries payload, FIN or RST, except for a
/// sampled hello that must be read in the recording mode, for which it returns [`RECORD`] with
/// everything set up for [`record`].
///
/// A sampled new hello is first read as any other: when it is decided and ends in this segment
/// (nearly all of them), its bytes go to userspace, which makes the record with the same parser
/// (`send_bytes`); the recording mode, which costs several times the plain one in the kernel,
/// is left to hellos followed across segments or decided before their end.
///
/// In three parts: [`begin`] finds the flow and sets up the parser (and the record of a sampled
/// hello) in the scratch entry, the classifier runs, and [`finish`] acts on the answer. What
/// the first part found goes through the scratch entry ([`Hello`]) and is read back: the
/// verifier then checks the classifier and what follows once, not once per way the first part
/// can take (a new hello or a followed one).
#[inline(always)]
pub fn handle(ctx: &XdpContext, seg: &Segment) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    let s = unsafe { &mut *s };
    if let Some(action) = begin(ctx, seg, s) {
        return action;
    }
    // A followed hello being recorded goes on in the recording mode.
    // SAFETY: a field of this CPU's scratch entry.
    let recording = unsafe { read_volatile(&s.hello.recording) };
    if recording == RECORD_ON || recording == RECORD_LOST {
        return RECORD;
    }
    let payload = Payload::new(ctx, seg);
    let progress = classify(ctx, &payload);
    if recording == RECORD_BYTES && !bytes_will_do(s, seg, &payload, progress) {
        // Read again from its first byte, in the recording mode.
        // SAFETY: the scratch entry's parser; all-zero is `HelloParser::new()`.
        unsafe { zero_words(&mut s.parser) };
        clear_record(s);
        // SAFETY: a field of this CPU's scratch entry.
        unsafe { write_volatile(&mut s.hello.recording, RECORD_ON) };
        return RECORD;
    }
    // Both read back: the verifier then goes on from one state whichever way the check went,
    // rather than checking what follows once per answer it knows there.
    // SAFETY: fields of this CPU's scratch entry.
    let (hello, progress) = unsafe { (read_volatile(&s.hello), decode(read_volatile(&s.result))) };
    finish::<true>(ctx, seg, s, &payload, progress, &hello)
}

/// Whether a sampled hello read plainly needs no second reading: decided, and ending in this
/// segment's linear data within [`MAX_HELLO_BYTES`] (its length and connection go into
/// `s.bytes`), or not a hello (nothing to record: the recording mode would find the same).
#[inline(always)]
fn bytes_will_do(
    s: &mut Scratch,
    seg: &Segment,
    payload: &Payload<'_>,
    progress: Progress,
) -> bool {
    match progress {
        Progress::Decided(_) => {
            let end = if s.quick_decided != 0 {
                s.quick.hello_end().map(u64::from)
            } else {
                s.parser.rest_in_record().map(|rest| s.pos as u64 + rest as u64)
            };
            let Some(end) = end else {
                return false;
            };
            if end > payload.len() as u64 || end > MAX_HELLO_BYTES as u64 {
                return false;
            }
            let b = &mut s.bytes;
            b.src_net = SourceKey::of(&seg.key.src, seg.key.family).addr;
            b.family = seg.key.family;
            b.flags = 0;
            b.dport = u16::from_be(seg.key.dport);
            b.len = end as u16;
            true
        }
        // Broken before its `supported_versions` was read (else it was decided): the recording
        // mode would not decide it either.
        Progress::NotHello | Progress::Malformed(_) => true,
        Progress::NeedMore | Progress::OutOfSteps => false,
    }
}

/// Reads the sampled hello that [`handle`] set up in the recording mode, and acts on the answer
/// as [`handle`] does ([`finish`]).
///
/// Called from the program's entry rather than from [`handle`]: each recording step is a call
/// (`outpost_record_step`), whose frame the kernel adds to those of its callers, and the hello
/// logic's frame with the entry's left it no room.
#[inline(always)]
pub fn record(ctx: &XdpContext) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    let s = unsafe { &mut *s };
    // SAFETY: as above; read back, as in `segment`.
    let seg = unsafe { read_volatile(&s.seg) };
    let payload = Payload::new(ctx, &seg);
    let progress = classify_recording(ctx, &payload);
    crate::finish_recorded(ctx.ctx, encode(progress))
}

/// The part of [`record`] after the classifier, a function of its own (see [`record`]).
#[inline(always)]
pub fn finish_recorded(ctx: &XdpContext, progress: u32) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    let s = unsafe { &mut *s };
    // SAFETY: as above.
    let seg = unsafe { read_volatile(&s.seg) };
    // SAFETY: as above.
    let hello = unsafe { read_volatile(&s.hello) };
    let payload = Payload::new(ctx, &seg);
    // Never a hello to send as bytes: read in the recording mode, it has its record.
    finish::<false>(ctx, &seg, s, &payload, decode(progress), &hello)
}

/// Finds the segment's flow and handles what needs no parser; else sets up the parser, the
/// record when the hello is sampled, and `s.hello`, and returns `None`.
#[inline(always)]
fn begin(ctx: &XdpContext, seg: &Segment, s: &mut Scratch) -> Option<u32> {
    let has_payload = seg.payload_len > 0;
    // Every segment with payload (or closing the flow) looks for state of its flow first: a
    // continuation of a hello can start with any byte. The filter answers for most of them
    // (application data of flows never tracked) without the hash lookup; the entry consulted
    // it (`untracked_passes`).
    let found = if seg.maybe_tracked { FLOWS.get_ptr(seg.key) } else { None };
    // The flow's scalars are copied; its parser goes straight into the scratch entry if the
    // hello goes on (a flow state on the stack took the program past the kernel's limit).
    // SAFETY: a plain value in the map.
    let mut known = found.map(|p| unsafe { Known::of(&*p) });
    if let Some(flow) = known {
        if flow.phase != FlowPhase::Following as u8 {
            if FlowState::covers_seq(flow.first_seq, flow.next_seq, seg.seq) {
                return Some(blocked_flow(ctx, seg, flow.phase));
            }
            // A new connection on the four-tuple of a blocked one (the client reused its
            // source port): the old verdict is not this connection's.
            flow_remove(&seg.key);
            count(Outcome::FlowReused);
            known = None;
        }
    }
    if !has_payload {
        if let Some(flow) = known {
            if seg.flags & TCP_RST != 0 {
                forget(&seg.key, flow.recording);
            }
        }
        count(Outcome::NoPayload);
        return Some(xdp_action::XDP_PASS);
    }
    match (known, found) {
        (Some(flow), Some(p)) => {
            if seg.seq == flow.first_seq {
                // The hello's first segment again (a retransmission): already seen; the hello
                // is still followed.
                count(Outcome::FollowNext);
                return Some(xdp_action::XDP_PASS);
            }
            if seg.seq != flow.next_seq {
                // Out of order: the stream cannot be followed here.
                forget(&seg.key, flow.recording);
                count(Outcome::ToUserspace);
                return Some(xdp_action::XDP_PASS);
            }
            // SAFETY: the entry found above; a plain value.
            // SAFETY: the entry's parser, 8-byte aligned in both (it holds a u64).
            unsafe { copy_words(&mut s.parser, &raw const (*p).parser) };
            let recording = if flow.recording == 0 {
                RECORD_OFF
            } else if let Some(r) = RECORD_FLOWS.get_ptr(seg.key) {
                // SAFETY: both are map values; the copy goes from one to the other.
                unsafe { copy_words(&mut s.record, r) };
                RECORD_ON
            } else {
                // Evicted: the parser goes on in its mode, into a record nobody will see.
                clear_record(s);
                RECORD_LOST
            };
            s.hello = Hello {
                first_seq: flow.first_seq,
                segments: flow.segments as u32,
                known: 1,
                recording,
            };
        }
        _ => {
            // Application data and other protocols: no parser run for them.
            let payload = Payload::new(ctx, seg);
            if payload.len() > 0 && !may_start_hello(payload.byte(0)) {
                count(Outcome::NotHello);
                return Some(xdp_action::XDP_PASS);
            }
            // SAFETY: the scratch entry's parser; all-zero is `HelloParser::new()`.
            unsafe { zero_words(&mut s.parser) };
            let recording = if sampled(s) { RECORD_BYTES } else { RECORD_OFF };
            s.hello = Hello { first_seq: seg.seq, segments: 0, known: 0, recording };
        }
    }
    None
}

/// Acts on the classifier's answer for the hello described by `hello`. `BYTES`: the hello may
/// be one to send as its bytes (`RECORD_BYTES`); false after the recording mode, so that the
/// call which sends them is not there, for the verifier or the kernel's stack limit.
#[inline(always)]
fn finish<const BYTES: bool>(
    ctx: &XdpContext,
    seg: &Segment,
    s: &mut Scratch,
    payload: &Payload<'_>,
    progress: Progress,
    hello: &Hello,
) -> u32 {
    let (segments, recording) = (hello.segments, hello.recording);
    let followed = segments > 0;
    let can_follow = payload.complete(seg) && segments + 1 < MAX_HELLO_SEGMENTS;
    // Recording reads to the end of the hello; when its version was conclusive earlier (its
    // `supported_versions` read), the plain mode would have decided already. Such a hello is
    // followed on only if it passes (for the rest of its record); any other verdict is given
    // now, in the segment where the plain mode gives it, with the record cut short.
    let conclusive = match progress {
        Progress::NeedMore | Progress::OutOfSteps if recording != RECORD_OFF => {
            s.parser.conclusive()
        }
        _ => None,
    };
    let decided = match (progress, conclusive) {
        (Progress::Decided(version), _) => Some(version),
        (_, Some(version))
            if !can_follow
                || progress != Progress::NeedMore
                || verdict_in_policy(&policy(), u16::from_be(seg.key.dport), version)
                    != Verdict::Pass =>
        {
            s.record.flags |= FLAG_PARTIAL;
            Some(version)
        }
        _ => None,
    };
    if let Some(version) = decided {
        count(if followed { Outcome::DecidedLater } else { Outcome::DecidedFirst });
        return decide::<BYTES>(ctx, s, seg, version, followed, hello.first_seq, recording);
    }
    match progress {
        Progress::NeedMore if can_follow => {
            // Written field by field into the scratch entry: built whole, it went through
            // the stack.
            // SAFETY: two parsers of the scratch entry, 8-byte aligned (`maps::Scratch`).
            unsafe { copy_words(&mut s.flow.parser, &s.parser) };
            stage(
                s,
                seg.seq.wrapping_add(seg.payload_len as u32),
                hello.first_seq,
                (segments + 1) as u8,
                FlowPhase::Following,
                (recording != RECORD_OFF) as u8,
            );
            if !flow_insert(&seg.key, &s.flow, hello.known != 0) {
                // Left to userspace, which records the hellos it decides itself.
                count(Outcome::FlowTableFull);
                if followed && recording != RECORD_OFF {
                    forget_record(&seg.key);
                }
            } else {
                count(Outcome::FollowNext);
                if recording == RECORD_ON {
                    // If the table refuses, the next segment finds no record and loses it.
                    keep_record(&seg.key, &s.record);
                }
            }
            xdp_action::XDP_PASS
        }
        other => {
            count(match other {
                Progress::NotHello if !followed => Outcome::NotHello,
                Progress::NotHello | Progress::Malformed(_) => Outcome::Malformed,
                _ => Outcome::ToUserspace,
            });
            if followed {
                forget(&seg.key, recording as u8);
            }
            xdp_action::XDP_PASS
        }
    }
}

/// What the hello logic needs of a flow found in [`FLOWS`], besides its parser.
#[derive(Clone, Copy)]
struct Known {
    first_seq: u32,
    next_seq: u32,
    segments: u8,
    phase: u8,
    recording: u8,
}

impl Known {
    #[inline(always)]
    fn of(f: &FlowState) -> Known {
        Known {
            first_seq: f.first_seq,
            next_seq: f.next_seq,
            segments: f.segments,
            phase: f.phase,
            recording: f.recording,
        }
    }
}

/// How a hello is read: plainly, into a record, or into a record that was lost (its partial
/// record evicted while the flow was followed); or, sampled, plainly, to be sent as its bytes
/// if it is decided whole in its first segment (else it is read again into a record).
pub const RECORD_OFF: u32 = 0;
pub const RECORD_ON: u32 = 1;
pub const RECORD_LOST: u32 = 2;
pub const RECORD_BYTES: u32 = 3;
/// Whether a new hello is recorded: recording on, and the `sample`th hello on this CPU since
/// the last one recorded.
#[inline(always)]
fn sampled(s: &mut Scratch) -> bool {
    let Some(config) = RECORD_CONFIG.get(0).filter(|c| c.records()) else {
        return false;
    };
    s.since_sampled += 1;
    if s.since_sampled < config.sample {
        return false;
    }
    s.since_sampled = 0;
    true
}

/// Zeroes the scratch record in place (all-zero is `HelloRecord::new()`).
#[inline(always)]
fn clear_record(s: &mut Scratch) {
    // SAFETY: the scratch entry's record, 8-byte aligned (`maps::Scratch`), plain integers.
    unsafe { zero_words(&mut s.record) };
}

/// Zeroes `*p` a word at a time. Assigning a value of this size (a new parser, a new record)
/// the compiler turns into a call to `memset`, which in BPF is a loop a byte at a time: it made
/// every hello some 40 ns slower. Volatile stores are not merged back into one.
///
/// # Safety
/// `p` is valid for writes, 8-byte aligned, and all-zero is a valid `T`.
#[inline(always)]
unsafe fn zero_words<T>(p: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let w = p.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: word `i` of `*p`, per the caller.
        unsafe { write_volatile(w.add(i), 0) };
    }
}

/// Copies `*src` to `*dst` a word at a time (see [`zero_words`]).
///
/// # Safety
/// Both are valid, 8-byte aligned, and do not overlap.
#[inline(always)]
pub unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: word `i` of each, per the caller.
        unsafe { write_volatile(d.add(i), read_volatile(s.add(i))) };
    }
}

/// Forgets the followed flow `key` and, if it was sampled, its partial record.
#[inline(always)]
fn forget(key: &FlowKey, recording: u8) {
    flow_remove(key);
    if recording != 0 {
        forget_record(key);
    }
}

/// Keeps the partial record of the sampled hello of `key` until its next segment (by
/// reference: the map's helpers copy it from the scratch entry, never the stack).
#[inline(always)]
fn keep_record(key: &FlowKey, record: &HelloRecord) {
    let _ = RECORD_FLOWS.insert(key, record, 0);
}

#[inline(always)]
fn forget_record(key: &FlowKey) {
    let _ = RECORD_FLOWS.remove(key);
}

/// Whether a flow in filter slot `slot` may be in [`FLOWS`]; false only when none can be.
#[inline(always)]
pub fn flow_may_exist(slot: u32) -> bool {
    match FLOW_FILTER.get(slot) {
        Some(n) => *n != 0,
        // Unreachable (the slot is masked), but an unknown answer must mean "look".
        None => true,
    }
}

/// A segment with payload of a flow that is not tracked (the filter said so: there is no flow
/// state to look for), which passes here, counted, unless it goes on to [`handle`]. Decided in
/// the entry from the packet's headers, before the four-tuple and sequence numbers are read and
/// the segment takes the round trip through the scratch map, so that only segments that go on
/// pay for those. Two kinds pass here:
/// - application data (or another protocol): the bulk of the traffic, `NotHello`;
/// - a new hello whole in this segment that the policy passes, nearly every hello an edge sees:
///   the quick reader reads it (`outpost_quick`), a version the policy passes on the segment's
///   port needs nothing of the segment but that port, and it is counted as [`decide`] counts
///   it (`DecidedFirst` and its version).
///
/// Anything else goes on to the hello logic as before, with nothing counted, and is read there
/// from its first byte: recording on (the sampling counts every new hello), a hello the quick
/// reader leaves to the parser (the SSLv2 format, one cut by its segment or record, broken
/// lengths), and a verdict other than pass (it needs the flow table, the budgets or a reset).
#[inline(always)]
pub fn untracked_passes(ctx: &XdpContext, hdrs: &Headers) -> bool {
    let payload = Payload::of(ctx, hdrs.payload, hdrs.payload_len);
    if payload.len() == 0 {
        return false;
    }
    if !may_start_hello(payload.byte(0)) {
        count(Outcome::NotHello);
        return true;
    }
    if RECORD_CONFIG.get(0).is_some_and(|c| c.records()) {
        return false;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    let s = unsafe { &mut *s };
    s.off = payload.offset() as u32;
    s.len = payload.len() as u32;
    // SAFETY: a field of this CPU's scratch entry, set by `outpost_quick` on an answer.
    unsafe { write_volatile(&mut s.quick_decided, 0) };
    crate::outpost_quick(ctx.ctx);
    // SAFETY: fields of this CPU's scratch entry, written by `outpost_quick`.
    let (decided, result) = unsafe { (read_volatile(&s.quick_decided), read_volatile(&s.result)) };
    if decided == 0 {
        return false;
    }
    let Progress::Decided(version) = decode(result) else {
        return false;
    };
    if verdict_in_policy(&policy(), hdrs.dport, version) != Verdict::Pass {
        return false;
    }
    count(Outcome::DecidedFirst);
    bump(&VERSION_STATS, version_slot(version, Verdict::Pass));
    true
}

/// Fills the scratch entry's flow state (its parser is set by the caller), from where it is
/// inserted: map memory rather than the stack, which the hello logic keeps within the kernel's
/// limit (with the recording step's frame on top of it).
#[inline(always)]
fn stage(s: &mut Scratch, next_seq: u32, first_seq: u32, segments: u8, phase: FlowPhase, rec: u8) {
    let f = &mut s.flow;
    f.next_seq = next_seq;
    f.first_seq = first_seq;
    f.segments = segments;
    f.phase = phase as u8;
    f.recording = rec;
}

/// Inserts or replaces the state of `key`; false if the table refused. `known`: the flow was
/// found in the table by this segment. The filter slot is raised before any insert that may
/// create the entry (a replacement that finds the entry gone, evicted or removed meanwhile,
/// is one), never after: a slot never reads lower than the entries of its flows.
#[inline(always)]
fn flow_insert(key: &FlowKey, state: &FlowState, known: bool) -> bool {
    if known && FLOWS.insert(key, state, BPF_EXIST as u64).is_ok() {
        return true;
    }
    let Some(slot) = FLOW_FILTER.get_ptr_mut(flow_slot(key)) else {
        return false;
    };
    // SAFETY: a slot of an array map; other CPUs change it only atomically.
    unsafe { atomic_add(slot, 1) };
    FLOWS.insert(key, state, 0).is_ok()
}

/// Forgets `key`. The slot is lowered only when this call removed the entry, so it pairs with
/// the raise that created it (two CPUs cannot both remove it).
#[inline(always)]
fn flow_remove(key: &FlowKey) {
    if FLOWS.remove(key).is_ok() {
        if let Some(slot) = FLOW_FILTER.get_ptr_mut(flow_slot(key)) {
            // SAFETY: as in `flow_insert`; adding 2^64 - 1 subtracts one.
            unsafe { atomic_add(slot, u64::MAX) };
        }
    }
}

const OUT_OF_STEPS: u32 = 0;
const NEED_MORE: u32 = 1;
const NOT_HELLO: u32 = 2;
const MALFORMED: u32 = 3;
/// `DECIDED + version`.
const DECIDED: u32 = 0x100;

/// [`Progress`] as a plain integer: storing the enum would copy its undefined padding, which
/// the verifier rightly refuses.
#[inline(always)]
fn encode(p: Progress) -> u32 {
    match p {
        Progress::OutOfSteps => OUT_OF_STEPS,
        Progress::NeedMore => NEED_MORE,
        Progress::NotHello => NOT_HELLO,
        Progress::Malformed(_) => MALFORMED,
        Progress::Decided(v) => DECIDED + v as u32,
    }
}

#[inline(always)]
fn decode(r: u32) -> Progress {
    match r {
        NEED_MORE => Progress::NeedMore,
        NOT_HELLO => Progress::NotHello,
        // Which rule broke is for host-side diagnostics; the kernel counts them together.
        MALFORMED => Progress::Malformed(Malformed::FieldLength),
        r if r >= DECIDED => {
            Progress::Decided(Version::from_u8((r - DECIDED) as u8).unwrap_or(Version::Unknown))
        }
        _ => Progress::OutOfSteps,
    }
}

/// Runs the classifier over the payload, resuming the parser in the scratch entry, for at most
/// [`KERNEL_STEPS`] steps.
///
/// The loop is bounded for the verifier by `may_goto` ([`can_loop`]) rather than by its
/// counter: everything it carries from one step to the next lives in the per-CPU scratch
/// entry, which `may_goto` makes the compiler read afresh on every step, so the verifier sees
/// the same state at the top of every iteration and checks one step, not every unrolled
/// iteration. Unlike `bpf_loop`, no call and return per step (the return is the expensive part
/// on CPUs with return-stack mitigations).
#[inline(always)]
fn classify(ctx: &XdpContext, input: &Payload<'_>) -> Progress {
    let Some(s) = start_loop(input) else {
        return Progress::OutOfSteps;
    };
    // SAFETY: a field of this CPU's scratch entry.
    unsafe { write_volatile(&mut s.quick_decided, 0) };
    // A new hello is read quickly first; the parser reads it from its first byte if that
    // gives up (`outpost_common::quick`).
    if s.hello.segments == 0 {
        crate::outpost_quick(ctx.ctx);
    }
    // One way out, at the top: leaving from where the answer is found would have the code
    // after the loop verified once per exit.
    while can_loop() && s.result == OUT_OF_STEPS && s.steps < KERNEL_STEPS as u32 {
        s.steps += 1;
        let input = Payload::at(ctx, s.off as usize, s.len as usize);
        let mut pos = s.pos;
        let step = s.parser.advance(&input, &mut pos);
        s.pos = pos;
        if let Some(p) = step {
            s.result = encode(p);
        }
    }
    // Read back rather than forwarded from the exits: as one unknown value, the code after
    // the loop is verified once, not once per way out of it.
    // SAFETY: a field of this CPU's scratch entry.
    decode(unsafe { read_volatile(&s.result) })
}

/// The quick read of a new hello in the scratch entry's payload (`outpost_common::quick`), from
/// `outpost_quick`: on an answer, `s.result` holds it and `s.quick_decided` is set; else
/// nothing is changed but `s.quick`. A function of its own, verified once on its own: its loop
/// keeps its state in registers (inside the hello logic, whose values fill the registers, each
/// step reloaded them from the stack) and is bounded by its count.
#[inline(always)]
pub fn quick_read(ctx: &XdpContext) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    let s = unsafe { &mut *s };
    let input = Payload::at(ctx, s.off as usize, s.len as usize);
    // In the entry, not on the stack: this function's frame adds to its callers'.
    if let Some(version) = s.quick.read(&input) {
        s.result = encode(Progress::Decided(version));
        s.quick_decided = 1;
    }
}

/// [`classify`] in the recording mode, into the scratch entry's record, for at most
/// [`KERNEL_RECORD_STEPS`] steps. A loop of its own, so the plain one stays as it was.
#[inline(always)]
fn classify_recording(ctx: &XdpContext, input: &Payload<'_>) -> Progress {
    let Some(s) = start_loop(input) else {
        return Progress::OutOfSteps;
    };
    while can_loop() && s.result == OUT_OF_STEPS && s.steps < KERNEL_RECORD_STEPS as u32 {
        crate::outpost_record_step(ctx.ctx);
    }
    // SAFETY: a field of this CPU's scratch entry.
    decode(unsafe { read_volatile(&s.result) })
}

/// Steps of [`classify_recording`] a call of `outpost_record_step` takes, unrolled: each call
/// and return costs (return-stack mitigations), and each step more per call costs the verifier
/// some 10,000 instructions. Four was about 10 % faster than two on the largest hellos.
pub const STEPS_PER_CALL: u32 = 4;

/// Up to [`STEPS_PER_CALL`] steps of [`classify_recording`] over the payload described in the
/// scratch entry, fewer if it answers or runs out of steps.
#[inline(always)]
pub fn record_steps(ctx: &XdpContext) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    let s = unsafe { &mut *s };
    let input = Payload::at(ctx, s.off as usize, s.len as usize);
    // Written out rather than a loop: straight code, which the verifier prunes well (the
    // compiler would not unroll a loop of a body this large).
    macro_rules! step {
        () => {
            if s.result == OUT_OF_STEPS && s.steps < KERNEL_RECORD_STEPS as u32 {
                s.steps += 1;
                // The position stays in the entry (not a copy on the stack: the frame of this
                // function adds to the entry's, under the kernel's 512 bytes).
                if let Some(p) = s.parser.advance_recording(&input, &mut s.pos, &mut s.record) {
                    s.result = encode(p);
                }
            }
        };
    }
    step!();
    step!();
    step!();
    step!();
    const { assert!(STEPS_PER_CALL == 4, "as many step!() as STEPS_PER_CALL") };
}

/// The scratch entry set up for a classifier loop over `input`.
#[inline(always)]
fn start_loop(input: &Payload<'_>) -> Option<&'static mut Scratch> {
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    let s = unsafe { &mut *s };
    s.off = input.offset() as u32;
    s.len = input.len() as u32;
    // Volatile: three adjacent zeros the compiler merges into a call to `memset` (see
    // `zero_words`).
    // SAFETY: fields of this CPU's scratch entry.
    unsafe {
        write_volatile(&mut s.pos, 0);
        write_volatile(&mut s.steps, 0);
        write_volatile(&mut s.result, OUT_OF_STEPS);
    }
    Some(s)
}

/// `may_goto`: false when the kernel's loop budget for this run is spent (millions of
/// iterations; never before [`KERNEL_STEPS`] here), which bounds the loop for the verifier.
/// The asm also stands for any memory write, so values kept in maps are loaded again after it.
#[inline(always)]
fn can_loop() -> bool {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `may_goto` only branches; it touches no memory the program can see.
    unsafe {
        core::arch::asm!("may_goto {}", label { return false; });
    }
    true
}

/// The verdict the policy gives `version` on port `dport` (host order), before the redirect
/// budget.
#[inline(always)]
fn verdict_in_policy(policy: &Policy, dport: u16, version: Version) -> Verdict {
    // A hello that meets the floor passes in every mode: the port's own is not looked up.
    let verdict = policy.verdict_in(Mode::Drop as u8, version);
    if verdict == Verdict::Pass {
        return verdict;
    }
    policy.verdict_in(mode_for(policy, dport), version)
}

/// A hello's version is known: count it and apply the policy. `first_seq` is where the hello
/// began (an earlier segment when it was followed); `recording`, how it was read.
#[inline(always)]
fn decide<const BYTES: bool>(
    ctx: &XdpContext,
    s: &mut Scratch,
    seg: &Segment,
    version: Version,
    followed: bool,
    first_seq: u32,
    recording: u32,
) -> u32 {
    let policy = policy();
    let mut verdict = verdict_in_policy(&policy, u16::from_be(seg.key.dport), version);
    // Only a redirect needs the time (a helper call: not paid by the other verdicts).
    let now = if verdict == Verdict::Redirect {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    if verdict == Verdict::Redirect && !within_budget(seg, &policy, now) {
        verdict = Verdict::Reject;
    }
    bump(&VERSION_STATS, version_slot(version, verdict));
    if BYTES && recording == RECORD_BYTES {
        s.bytes.version = version as u8;
        s.bytes.verdict = verdict as u8;
        crate::outpost_send_bytes(ctx.ctx);
    } else if recording != RECORD_OFF {
        send_record(s, seg, version, verdict, followed, recording);
    }
    let phase = match verdict {
        Verdict::Pass | Verdict::Redirect => {
            if followed {
                flow_remove(&seg.key);
            }
            if verdict == Verdict::Redirect {
                // If the table refuses, userspace budgets the hello itself: never more pages.
                let _ = REDIRECTS.insert(seg.key, now, 0);
            }
            return xdp_action::XDP_PASS;
        }
        Verdict::Drop => FlowPhase::Dropped,
        Verdict::Reject => FlowPhase::Rejected,
    };
    // Remembered so that retransmissions are handled without being counted again; if the
    // table refuses, a retransmission is classified (and counted) afresh, which still blocks it.
    // SAFETY: as in `begin`.
    unsafe { zero_words(&mut s.flow.parser) };
    stage(s, seg.seq.wrapping_add(seg.payload_len as u32), first_seq, 0, phase, 0);
    let _ = flow_insert(&seg.key, &s.flow, followed);
    if verdict == Verdict::Drop {
        return xdp_action::XDP_DROP;
    }
    match reset::to_server(ctx, seg) {
        Ok(()) => {
            count(Outcome::ResetServer);
            xdp_action::XDP_PASS
        }
        Err(_) => {
            count(Outcome::RewriteFailed);
            xdp_action::XDP_DROP
        }
    }
}

/// Completes the scratch record of a decided hello with what the parser does not know and
/// sends it. A full ring loses the record, never delays the packet: it is counted.
#[inline(always)]
fn send_record(
    s: &mut Scratch,
    seg: &Segment,
    version: Version,
    verdict: Verdict,
    followed: bool,
    recording: u32,
) {
    if followed {
        forget_record(&seg.key);
    }
    if recording != RECORD_ON {
        count(Outcome::RecordDropped);
        return;
    }
    let r = &mut s.record;
    // The client's network, never its address.
    r.src_net = SourceKey::of(&seg.key.src, seg.key.family).addr;
    r.family = seg.key.family;
    r.version = version as u8;
    r.verdict = verdict as u8;
    r.dport = u16::from_be(seg.key.dport);
    if followed {
        r.flags |= FLAG_FOLLOWED;
    }
    match HELLO_RECORDS.output::<HelloRecord>(&*r, wake_flags(size_of::<HelloRecord>())) {
        Ok(()) => count(Outcome::RecordSent),
        Err(_) => count(Outcome::RecordDropped),
    }
}

/// Sends the first `s.bytes.len` bytes of the payload of the segment in the scratch entry, the
/// whole of a sampled hello decided in it, with what the kernel knows of it besides
/// (`s.bytes`), in the smallest entry that holds them. Userspace makes the record
/// (`hello::record_of_bytes`). A full ring loses it, as in [`send_record`].
///
/// Called through the global function `outpost_send_bytes`, which the verifier checks once
/// rather than on every way to a decision; all it needs is in the scratch entry, as its frame
/// adds to the hello logic's under the kernel's 512 bytes.
#[inline(always)]
pub fn send_bytes(ctx: &XdpContext) {
    let Some(s) = SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, whose segment and header were written for this packet.
    let (n, off) =
        unsafe { (read_volatile(&(*s).bytes.len) as usize, read_volatile(&(*s).seg.payload)) };
    let off = (off & PAYLOAD_MASK) as u32;
    // SAFETY: as above.
    let head = unsafe { &(*s).bytes };
    let sent = if n <= BYTES_CLASSES[0] {
        send_as::<{ BYTES_CLASSES[0] }>(ctx, head, off, n)
    } else if n <= BYTES_CLASSES[1] {
        send_as::<{ BYTES_CLASSES[1] }>(ctx, head, off, n)
    } else if n <= BYTES_CLASSES[2] {
        send_as::<{ BYTES_CLASSES[2] }>(ctx, head, off, n)
    } else {
        send_as::<{ BYTES_CLASSES[3] }>(ctx, head, off, n)
    };
    count(if sent { Outcome::RecordSent } else { Outcome::RecordDropped });
}

/// [`send_bytes`] into an entry of `N` hello bytes: the bytes go straight from the packet into
/// the ring (`bpf_xdp_load_bytes`), with no copy on the way.
#[inline(always)]
fn send_as<const N: usize>(ctx: &XdpContext, head: &BytesHeader, off: u32, n: usize) -> bool {
    let Some(mut entry) = HELLO_RECORDS.reserve::<HelloBytes<N>>(0) else {
        return false;
    };
    let e = entry.as_mut_ptr();
    // At least one byte and at most N, in a form the verifier bounds the helper's length by.
    let len = (n as u32).clamp(1, N as u32);
    // SAFETY: the entry is ours until submitted or discarded, 8-byte aligned like the scratch
    // entry's header; `len` bytes fit its array.
    let rc = unsafe {
        copy_words(&raw mut (*e).head, head);
        bpf_xdp_load_bytes(ctx.ctx, off, (&raw mut (*e).bytes).cast(), len)
    };
    if rc != 0 {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return false;
    }
    // Asked after the reserve, which counts the entry as waiting already: fewer values live
    // across the helper calls, which kept this function's frame within the kernel's limit.
    let waiting = HELLO_RECORDS.query(BPF_RB_AVAIL_DATA as u64);
    let size = (size_of::<HelloBytes<N>>() + RING_HEADER) as u64;
    let crossing = waiting >= HELLO_RECORDS_WAKE_BYTES && waiting < HELLO_RECORDS_WAKE_BYTES + size;
    entry.submit((if crossing { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }) as u64);
    true
}

/// Bytes of the header the ring puts before each entry.
const RING_HEADER: usize = 8;

/// Submit flags for an entry of `size` bytes: the reader is woken when it takes what is
/// waiting past the threshold, once per batch (each wake-up is an interrupt); a reader that
/// looks on its own sees the rest.
#[inline(always)]
fn wake_flags(size: usize) -> u64 {
    let waiting = HELLO_RECORDS.query(BPF_RB_AVAIL_DATA as u64);
    let crossing =
        waiting < HELLO_RECORDS_WAKE_BYTES && waiting + size as u64 >= HELLO_RECORDS_WAKE_BYTES;
    (if crossing { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }) as u64
}

/// Takes a redirect token from the hello's source network, then from the whole data plane:
/// whether both had one left.
#[inline(always)]
fn within_budget(seg: &Segment, policy: &Policy, now: u64) -> bool {
    let source = SourceKey::of(&seg.key.src, seg.key.family);
    let bucket = match REDIRECT_SOURCES.get_ptr_mut(source) {
        Some(b) => b,
        None => {
            // NOEXIST: a bucket another CPU created meanwhile is kept, not reset.
            let _ = REDIRECT_SOURCES.insert(source, Bucket::new(now), BPF_NOEXIST as u64);
            match REDIRECT_SOURCES.get_ptr_mut(source) {
                Some(b) => b,
                None => return false,
            }
        }
    };
    if !take(bucket, now, policy.redirect_per_source) {
        return false;
    }
    match REDIRECT_GLOBAL.get_ptr_mut(0) {
        Some(b) => take(b, now, policy.redirect_rate),
        None => false,
    }
}

/// Takes a token from `bucket` (`rate` per period). The count goes up with an atomic add and
/// is read back: of hellos racing on two CPUs, each sees the other's token taken, so the last
/// one is never given twice (at worst both are refused). Only the refill at the start of a
/// period is a plain write, which a racing CPU may overwrite with the same values.
#[inline(always)]
fn take(bucket: *mut Bucket, now: u64, rate: u32) -> bool {
    if rate == 0 {
        return false;
    }
    // SAFETY: a value in a map, valid while the program runs; other CPUs touch it only as here.
    unsafe {
        if Bucket::expired(read_volatile(&(*bucket).refilled_ns), now) {
            write_volatile(bucket, Bucket::new(now));
        }
        atomic_add(&raw mut (*bucket).taken, 1);
        read_volatile(&(*bucket).taken) <= rate as u64
    }
}

/// `*p += v` as one atomic instruction (BPF_ATOMIC | BPF_ADD, "xadd", in every BPF ISA
/// version). Rust's atomics cannot express it: the BPF target has no compare-and-swap, so
/// `core` offers atomic loads and stores only.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's `p` is valid for writes; other CPUs change it only atomically.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
    // Host builds (clippy) only: the program never runs there.
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above.
    unsafe {
        *p += v;
    }
}

/// A segment of a flow whose hello was dropped or rejected.
#[inline(always)]
fn blocked_flow(ctx: &XdpContext, seg: &Segment, phase: u8) -> u32 {
    count(Outcome::FlowRepeat);
    if seg.flags & TCP_RST != 0 {
        // The client gave up: let the server clean up too, and forget the flow.
        flow_remove(&seg.key);
        return xdp_action::XDP_PASS;
    }
    if phase == FlowPhase::Dropped as u8 {
        return xdp_action::XDP_DROP;
    }
    match reset::to_client(ctx, seg) {
        Ok(()) => {
            count(Outcome::ResetClient);
            xdp_action::XDP_TX
        }
        Err(_) => {
            count(Outcome::RewriteFailed);
            xdp_action::XDP_DROP
        }
    }
}
