//! Rewriting a segment into a TCP reset, for `reject`.
//!
//! One XDP invocation emits one packet, and both ends must learn. The hello itself becomes a
//! reset to the server (passed up with the hello's own sequence number, which is exactly what
//! the server expects next, so its stack closes the socket before the application reads a
//! byte). The client's retransmission of the unanswered hello then comes back to it as a reset
//! (XDP_TX), typically within a few hundred milliseconds.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr};
use outpost_common::maps::Outcome;

use crate::packet::{ptr_at, Segment, TCP_ACK, TCP_FIN, TCP_RST};

/// TTL / hop limit of resets sent to the client.
const REPLY_TTL: u8 = 64;
/// Largest TCP header.
const MAX_TCP_HDR: usize = 60;
/// Largest IPv4 header.
const MAX_IPV4_HDR: usize = 60;

/// Turns the segment into a RST|ACK from the client to the server, without payload.
#[inline(always)]
pub fn to_server(ctx: &XdpContext, seg: &Segment) -> Result<(), Outcome> {
    trim(ctx, seg)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, seg.l4)?;
    set_flags(ctx, seg, TCP_RST | TCP_ACK)?;
    unsafe { (*tcp).window = [0, 0] };
    finish(ctx, seg)
}

/// Turns the segment into a RST|ACK from the server back to the client, acknowledging all it
/// sent. The client's TCP options stay as they are: a reset is accepted whatever timestamps it
/// carries (RFC 7323 §5.3 exempts it from PAWS).
#[inline(always)]
pub fn to_client(ctx: &XdpContext, seg: &Segment) -> Result<(), Outcome> {
    trim(ctx, seg)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe { core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr) };
    if seg.ipv6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, seg.l3)?;
        unsafe {
            core::mem::swap(&mut (*ip).src_addr, &mut (*ip).dst_addr);
            (*ip).hop_limit = REPLY_TTL;
        }
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, seg.l3)?;
        unsafe {
            core::mem::swap(&mut (*ip).src_addr, &mut (*ip).dst_addr);
            (*ip).ttl = REPLY_TTL;
        }
    }
    let tcp: *mut TcpHdr = ptr_at(ctx, seg.l4)?;
    let fin = (seg.flags & TCP_FIN != 0) as u32;
    let ack = seg.seq.wrapping_add(seg.payload_len as u32).wrapping_add(fin);
    unsafe {
        core::mem::swap(&mut (*tcp).source, &mut (*tcp).dest);
        (*tcp).seq = seg.ack_seq.to_be_bytes();
        (*tcp).ack_seq = ack.to_be_bytes();
        (*tcp).window = [0, 0];
        (*tcp).urg_ptr = [0, 0];
    }
    set_flags(ctx, seg, TCP_RST | TCP_ACK)?;
    finish(ctx, seg)
}

/// Cuts the payload (and any Ethernet padding) off and fixes the IP length.
#[inline(always)]
fn trim(ctx: &XdpContext, seg: &Segment) -> Result<(), Outcome> {
    let len = ctx.data_end() - ctx.data();
    if len > seg.payload {
        let delta = (len - seg.payload) as i32;
        // SAFETY: shrinking the tail of the packet this program is running on.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -delta) } != 0 {
            return Err(Outcome::RewriteFailed);
        }
    }
    if seg.ipv6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, seg.l3)?;
        let plen = (seg.payload - seg.l3 - Ipv6Hdr::LEN) as u16;
        unsafe { (*ip).payload_len = plen.to_be_bytes() };
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, seg.l3)?;
        let tot = (seg.payload - seg.l3) as u16;
        unsafe { (*ip).tot_len = tot.to_be_bytes() };
    }
    Ok(())
}

#[inline(always)]
fn set_flags(ctx: &XdpContext, seg: &Segment, flags: u8) -> Result<(), Outcome> {
    let f: *mut u8 = ptr_at(ctx, seg.l4 + 13)?;
    unsafe { *f = flags };
    Ok(())
}

/// Recomputes the IPv4 header checksum and the TCP checksum (header only: no payload left).
#[inline(always)]
fn finish(ctx: &XdpContext, seg: &Segment) -> Result<(), Outcome> {
    let tcp_len = seg.payload - seg.l4;
    let mut sum: u32;
    if seg.ipv6 {
        // Pseudo-header: addresses, upper-layer length, next header.
        sum = sum_words(ctx, seg.l3 + 8, 32)?;
        sum += tcp_len as u32 + 6;
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, seg.l3)?;
        unsafe { (*ip).check = [0, 0] };
        let ihl = seg.l4 - seg.l3;
        let ip_sum = fold(sum_words(ctx, seg.l3, ihl.min(MAX_IPV4_HDR))?);
        unsafe { (*ip).check = (!ip_sum).to_be_bytes() };
        sum = sum_words(ctx, seg.l3 + 12, 8)?;
        sum += tcp_len as u32 + 6;
    }
    let tcp: *mut TcpHdr = ptr_at(ctx, seg.l4)?;
    unsafe { (*tcp).check = [0, 0] };
    sum += sum_words(ctx, seg.l4, tcp_len.min(MAX_TCP_HDR))?;
    let csum = !fold(sum);
    unsafe { (*tcp).check = csum.to_be_bytes() };
    Ok(())
}

/// One's-complement sum of `len` (even, at most 60) bytes at `off`.
#[inline(always)]
fn sum_words(ctx: &XdpContext, off: usize, len: usize) -> Result<u32, Outcome> {
    let mut sum = 0u32;
    for i in 0..MAX_TCP_HDR / 2 {
        if i * 2 >= len {
            break;
        }
        let w: *const [u8; 2] = ptr_at(ctx, off + i * 2)?;
        sum += u16::from_be_bytes(unsafe { *w }) as u32;
    }
    Ok(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
