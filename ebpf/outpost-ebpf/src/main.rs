//! outpost's XDP programs.
//!
//! - `outpost_xdp`: the TLS version floor. Walks to TCP ([`packet`]), and for segments to a
//!   protected port classifies the ClientHello and applies the policy ([`tls`]), rewriting the
//!   packet into resets for `reject` ([`reset`]), and the redirect budget for `redirect`.
//!   Counters, policy and budgets live in [`maps`].
//! - `outpost_baseline`: counts and passes; the benchmark's baseline.
//! - `outpost_pass`: passes; for the client end of a veth pair in test topologies.
#![no_std]
#![no_main]
// `asm!` for the one atomic add of the redirect budget (`tls::atomic_add`); allowed for this
// crate by RUSTC_BOOTSTRAP, which dataplane's build script sets.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod maps;
mod packet;
mod reset;
mod tls;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    macros::xdp,
    programs::XdpContext,
};

/// What a packet the walk cannot read gets: anything we do not understand passes untouched.
const FAIL_POLICY: u32 = xdp_action::XDP_PASS;

#[xdp]
pub fn outpost_xdp(ctx: XdpContext) -> u32 {
    // Each packet is counted once, by what became of it (`Outcome::TERMINAL`): no count of all
    // packets on top, which cost every packet a second counter.
    let hdrs = match packet::walk(&ctx, maps::port_protected) {
        Ok(hdrs) => hdrs,
        Err(outcome) => {
            maps::count(outcome);
            return FAIL_POLICY;
        }
    };
    let maybe_tracked = tls::flow_may_exist(hdrs.flow_slot());
    // Application data and the common hello, of flows never tracked: without the hello logic.
    if !maybe_tracked && hdrs.payload_len > 0 && tls::untracked_passes(&ctx, &hdrs) {
        return xdp_action::XDP_PASS;
    }
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return FAIL_POLICY;
    };
    // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
    unsafe { (*scratch).seg = hdrs.segment(maybe_tracked) };
    match segment(ctx.ctx) {
        tls::RECORD => record(ctx.ctx),
        action => action,
    }
}

/// A sampled hello read in the recording mode ([`tls::record`]): a function of its own, beside
/// [`segment`], so that its loop's `may_goto` counter, which the kernel sets up on entry to
/// the function that holds the loop, is not set up for every packet in the entry.
#[inline(never)]
fn record(ctx: *mut xdp_md) -> u32 {
    tls::record(&XdpContext::new(ctx))
}

/// The segment in this CPU's scratch entry, which goes on to the hello logic ([`tls::handle`]).
///
/// A function of its own (a BPF-to-BPF call), so that the compiler allocates the registers of
/// the entry's path, the one nearly every packet takes, apart from those of the hello logic:
/// together, the entry spilled the header fields the walk read to the stack. The call and
/// return cost the segments that come here (hellos, tracked flows, FIN and RST) up to a few
/// tens of ns on CPUs with return-stack mitigations, against about 20 ns saved on every
/// segment of application data, which are nearly all of them.
///
/// The segment is read back from the map rather than passed on: the verifier then sees its
/// fields as unknown values, so that the many shapes of headers (VLAN tags, IP options,
/// extension headers) converge into one state before the hello logic.
#[inline(never)]
fn segment(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return FAIL_POLICY;
    };
    // Copied a word at a time, each read volatile (the compiler takes the values from the
    // map): a dozen instructions, where a volatile read of the whole segment loaded and stored
    // each field through a register and a spill slot (some 95).
    let mut seg = core::mem::MaybeUninit::<packet::Segment>::uninit();
    // SAFETY: this CPU's scratch entry, 8-byte aligned, written by the entry for this packet
    // (so its words hold a valid segment); `seg` is ours and aligned alike.
    let seg = unsafe {
        tls::copy_words(seg.as_mut_ptr(), &raw const (*scratch).seg);
        seg.assume_init_ref()
    };
    tls::handle(&ctx, seg)
}

/// Steps of the recording classifier (`tls::record_steps`), as a global function: the
/// verifier checks it once, on its own, where it prunes well; inside the classifier's loop it
/// compares whole states and followed every branch of a step's blocks of values apart.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn outpost_record_step(ctx: *mut xdp_md) -> u32 {
    tls::record_steps(&XdpContext::new(ctx));
    0
}

/// The quick read of a new hello (`tls::quick_read`): a global function, verified once on its
/// own, with the registers to itself.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn outpost_quick(ctx: *mut xdp_md) -> u32 {
    tls::quick_read(&XdpContext::new(ctx));
    0
}

/// Sends a sampled hello decided whole in its segment as its bytes (`tls::send_bytes`): a
/// global function, verified once on its own instead of on each way to a decision (the
/// classifier's and the recording one's).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn outpost_send_bytes(ctx: *mut xdp_md) -> u32 {
    tls::send_bytes(&XdpContext::new(ctx));
    0
}

/// The end of a sampled hello's handling, after the recording classifier (`tls::record`): a
/// function of its own, beside [`segment`] rather than under it, for the kernel's stack limit.
#[inline(never)]
fn finish_recorded(ctx: *mut xdp_md, progress: u32) -> u32 {
    tls::finish_recorded(&XdpContext::new(ctx), progress)
}

#[xdp]
pub fn outpost_baseline(_ctx: XdpContext) -> u32 {
    maps::bump(&maps::BASELINE_STATS, 0);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn outpost_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
