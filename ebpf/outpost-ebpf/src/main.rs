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

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use outpost_common::maps::Outcome;

/// What a packet the walk cannot read gets: anything we do not understand passes untouched.
const FAIL_POLICY: u32 = xdp_action::XDP_PASS;

#[xdp]
pub fn outpost_xdp(ctx: XdpContext) -> u32 {
    maps::count(Outcome::Packets);
    match packet::walk(&ctx, maps::port_protected) {
        Ok(seg) => {
            if seg.payload_len == 0 && seg.flags & (packet::TCP_FIN | packet::TCP_RST) == 0 {
                // SYN, pure ACK: nothing to classify and no flow state to consult.
                maps::count(Outcome::NoPayload);
                return xdp_action::XDP_PASS;
            }
            let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
                return FAIL_POLICY;
            };
            // SAFETY: this CPU's scratch entry; nothing else uses it while this program runs.
            // The volatile read makes the compiler take the values back from the map instead
            // of forwarding what it stored, which is the point of the round trip.
            let seg = unsafe {
                (*scratch).seg = seg;
                core::ptr::read_volatile(&(*scratch).seg)
            };
            tls::handle(&ctx, &seg)
        }
        Err(outcome) => {
            maps::count(outcome);
            FAIL_POLICY
        }
    }
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
