//! What to do with a TCP segment to a protected port: classify a new hello, follow one across
//! segments, or handle a later segment of a flow already dropped or rejected.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{xdp_action, BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use outpost_common::{
    budget::{Bucket, SourceKey},
    maps::{
        flow_slot, version_slot, FlowKey, FlowPhase, FlowState, Outcome, KERNEL_STEPS,
        MAX_HELLO_SEGMENTS,
    },
    may_start_hello, HelloParser, Input, Malformed, Mode, Policy, Progress, Verdict, Version,
};

use crate::{
    maps::{
        bump, count, mode_for, policy, FLOWS, FLOW_FILTER, REDIRECTS, REDIRECT_GLOBAL,
        REDIRECT_SOURCES, SCRATCH, VERSION_STATS,
    },
    packet::{Payload, Segment, TCP_RST},
    reset,
};

/// Handles a segment to a protected port that carries payload, FIN or RST.
pub fn handle(ctx: &XdpContext, seg: &Segment) -> u32 {
    let has_payload = seg.payload_len > 0;
    // Every segment with payload (or closing the flow) looks for state of its flow first: a
    // continuation of a hello can start with any byte. The filter answers for most of them
    // (application data of flows never tracked) without the hash lookup; the entry consulted
    // it (`untracked_data`).
    let mut known = if seg.maybe_tracked {
        // SAFETY: a plain value copied out of the map.
        FLOWS.get_ptr(seg.key).map(|p| unsafe { *p })
    } else {
        None
    };
    if let Some(flow) = known {
        if flow.phase != FlowPhase::Following as u8 {
            if flow.covers(seg.seq) {
                return blocked_flow(ctx, seg, &flow);
            }
            // A new connection on the four-tuple of a blocked one (the client reused its
            // source port): the old verdict is not this connection's.
            flow_remove(&seg.key);
            count(Outcome::FlowReused);
            known = None;
        }
    }
    if !has_payload {
        if seg.flags & TCP_RST != 0 && known.is_some() {
            flow_remove(&seg.key);
        }
        count(Outcome::NoPayload);
        return xdp_action::XDP_PASS;
    }
    let payload = Payload::new(ctx, seg);
    let (mut parser, segments) = match known {
        Some(flow) => {
            if seg.seq == flow.first_seq {
                // The hello's first segment again (a retransmission): already seen.
                return xdp_action::XDP_PASS;
            }
            if seg.seq != flow.next_seq {
                // Out of order: the stream cannot be followed here.
                flow_remove(&seg.key);
                count(Outcome::ToUserspace);
                return xdp_action::XDP_PASS;
            }
            (flow.parser, flow.segments as u32)
        }
        None => {
            // Application data and other protocols: no parser run for them.
            if payload.len() > 0 && !may_start_hello(payload.byte(0)) {
                count(Outcome::NotHello);
                return xdp_action::XDP_PASS;
            }
            (HelloParser::new(), 0)
        }
    };
    let progress = classify(ctx, &mut parser, &payload);
    let followed = segments > 0;
    // Where the hello began: this segment, or the first one followed.
    let first_seq = known.map_or(seg.seq, |f| f.first_seq);
    match progress {
        Progress::Decided(version) => {
            count(if followed { Outcome::DecidedLater } else { Outcome::DecidedFirst });
            decide(ctx, seg, version, followed, first_seq)
        }
        Progress::NeedMore if payload.complete(seg) && segments + 1 < MAX_HELLO_SEGMENTS => {
            let state = FlowState {
                parser,
                next_seq: seg.seq.wrapping_add(seg.payload_len as u32),
                first_seq,
                segments: (segments + 1) as u8,
                phase: FlowPhase::Following as u8,
                _pad: [0; 6],
            };
            if !flow_insert(&seg.key, &state, known.is_some()) {
                count(Outcome::FlowTableFull);
            } else {
                count(Outcome::FollowNext);
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
                flow_remove(&seg.key);
            }
            xdp_action::XDP_PASS
        }
    }
}

/// Whether `seg` is application data (or another protocol) of a flow that is not tracked:
/// the bulk of the traffic, which passes as `NotHello` without the parser. Decided in the
/// entry, before the segment takes the round trip through the scratch map, so that only
/// segments that go on to [`handle`] pay for it. The filter comes first: a continuation of a
/// tracked hello can start with any byte. Its answer is kept in the segment for [`handle`].
#[inline(always)]
pub fn untracked_data(ctx: &XdpContext, seg: &mut Segment) -> bool {
    seg.maybe_tracked = flow_may_exist(&seg.key);
    if seg.payload_len == 0 || seg.maybe_tracked {
        return false;
    }
    let payload = Payload::new(ctx, seg);
    payload.len() > 0 && !may_start_hello(payload.byte(0))
}

/// Whether a flow keyed `key` may be in [`FLOWS`]; false only when none can be.
#[inline(always)]
fn flow_may_exist(key: &FlowKey) -> bool {
    match FLOW_FILTER.get(flow_slot(key)) {
        Some(n) => *n != 0,
        // Unreachable (the slot is masked), but an unknown answer must mean "look".
        None => true,
    }
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

/// Runs the classifier over the payload, resuming `parser`, for at most [`KERNEL_STEPS`] steps.
///
/// The loop is bounded for the verifier by `may_goto` ([`can_loop`]) rather than by its
/// counter: everything it carries from one step to the next lives in the per-CPU scratch
/// entry, which `may_goto` makes the compiler read afresh on every step, so the verifier sees
/// the same state at the top of every iteration and checks one step, not every unrolled
/// iteration. Unlike `bpf_loop`, no call and return per step (the return is the expensive part
/// on CPUs with return-stack mitigations).
#[inline(always)]
fn classify(ctx: &XdpContext, parser: &mut HelloParser, input: &Payload<'_>) -> Progress {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Progress::OutOfSteps;
    };
    // SAFETY: this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    let s = unsafe { &mut *s };
    s.parser = *parser;
    s.off = input.offset() as u32;
    s.len = input.len() as u32;
    s.pos = 0;
    s.steps = 0;
    s.result = OUT_OF_STEPS;
    // One way out, at the top: leaving from where the answer is found would have the code
    // after the loop verified once per exit.
    while can_loop() && s.result == OUT_OF_STEPS && s.steps < KERNEL_STEPS as u32 {
        s.steps += 1;
        let input = Payload::at(ctx, s.off as usize, s.len as usize);
        let mut pos = s.pos as usize;
        let step = s.parser.advance(&input, &mut pos);
        s.pos = pos as u32;
        if let Some(p) = step {
            s.result = encode(p);
        }
    }
    *parser = s.parser;
    // Read back rather than forwarded from the exits: as one unknown value, the code after
    // the loop is verified once, not once per way out of it.
    // SAFETY: a field of this CPU's scratch entry.
    decode(unsafe { read_volatile(&s.result) })
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

/// A hello's version is known: count it and apply the policy. `first_seq` is where the hello
/// began (an earlier segment when it was followed).
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    seg: &Segment,
    version: Version,
    followed: bool,
    first_seq: u32,
) -> u32 {
    let policy = policy();
    // A hello that meets the floor passes in every mode: the port's own is not looked up.
    let mut verdict = policy.verdict_in(Mode::Drop as u8, version);
    if verdict != Verdict::Pass {
        verdict = policy.verdict_in(mode_for(&policy, u16::from_be(seg.key.dport)), version);
    }
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
    let state = FlowState {
        parser: HelloParser::new(),
        next_seq: seg.seq.wrapping_add(seg.payload_len as u32),
        first_seq,
        segments: 0,
        phase: phase as u8,
        _pad: [0; 6],
    };
    // Remembered so that retransmissions are handled without being counted again; if the
    // table refuses, a retransmission is classified (and counted) afresh, which still blocks it.
    let _ = flow_insert(&seg.key, &state, followed);
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
fn blocked_flow(ctx: &XdpContext, seg: &Segment, flow: &FlowState) -> u32 {
    if seg.flags & TCP_RST != 0 {
        // The client gave up: let the server clean up too, and forget the flow.
        flow_remove(&seg.key);
        return xdp_action::XDP_PASS;
    }
    count(Outcome::FlowRepeat);
    if flow.phase == FlowPhase::Dropped as u8 {
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
