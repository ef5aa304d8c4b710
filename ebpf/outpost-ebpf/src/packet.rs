//! The packet walk: Ethernet (up to two VLAN tags), IPv4 with options or IPv6 with its common
//! extension headers, TCP with options. [`ptr_at`] is the one place packet memory is reached.

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};
use outpost_common::{
    maps::{flow_slot, flow_slot_v4, FlowKey, Outcome},
    starts_app_data, Input,
};

/// EtherTypes, host order.
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags followed (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers the walk steps over.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers followed before giving up (and passing).
const MAX_IPV6_EXT: usize = 4;
/// IPv4 "more fragments" flag and offset mask, in the host-order flags+offset word.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Bound on any offset into the packet.
const OFFSET_MASK: usize = 0x7fff;

/// Payload bytes the classifier may address in one segment; covers jumbo frames. Offsets are
/// masked with it so the verifier sees them bounded.
pub const PAYLOAD_MASK: usize = 0x3fff;

/// `v`, as a value the compiler knows nothing of (`barrier_var` in libbpf): a mask applied to
/// it stays in the program even where the compiler can prove it changes nothing, because the
/// verifier, which tracks less, may need it to bound an offset. One register move (an empty
/// template leaves a line-info entry the kernel refuses).
#[inline(always)]
#[cfg_attr(not(target_arch = "bpf"), allow(unused_mut))]
fn opaque(mut v: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    // SAFETY: a move of the register to itself.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack));
    }
    v
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Outcome> {
    // Offsets that went through a map are unknown to the verifier: bound them. Real ones are
    // far below (at most two VLAN tags, four extension headers, and TCP options).
    let off = off & OFFSET_MASK;
    // LLVM rewrites `p + 1 > end` as `p >= end`, from which the verifier learns no range when
    // `p` has a variable offset; hiding a size of one keeps the `+ 1` in the check it sees.
    let size = if size_of::<T>() == 1 { core::hint::black_box(1) } else { size_of::<T>() };
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size > end {
        return Err(Outcome::Truncated);
    }
    Ok((start + off) as *mut T)
}

/// `load32` and `load16`: a header field of `$n` bytes at `p`, in the packet's order, in one
/// load. A header field is a byte array (`[u8; N]`), which the compiler reads a byte at a time,
/// as it may not assume that BPF allows unaligned loads; the kernel allows them on packets
/// where they are cheap (elsewhere it checks alignment, which the IP and TCP fields read here
/// have behind the driver's NET_IP_ALIGN). The byte loads, shifts and the spills they caused
/// were most of the walk. `p` must point into the packet, checked by [`ptr_at`].
macro_rules! field_load {
    ($name:ident, $t:ty, $n:literal, $width:literal) => {
        #[inline(always)]
        fn $name(p: *const [u8; $n]) -> $t {
            #[cfg(target_arch = "bpf")]
            {
                let v: u64;
                // SAFETY: the caller's `p` is inside the packet; the load touches nothing else.
                unsafe {
                    core::arch::asm!(
                        concat!("{v} = *(", $width, " *)({p} + 0)"),
                        p = in(reg) p,
                        v = lateout(reg) v,
                        options(pure, readonly, nostack, preserves_flags)
                    );
                }
                v as $t
            }
            // Host builds (clippy) only: the program never runs there.
            #[cfg(not(target_arch = "bpf"))]
            // SAFETY: as above.
            <$t>::from_ne_bytes(unsafe { *p })
        }
    };
}

field_load!(load32, u32, 4, "u32");
field_load!(load16, u16, 2, "u16");

/// A TCP segment to a protected port, as the walk found it.
pub struct Segment {
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Offset of the payload.
    pub payload: usize,
    /// Payload length per the IP header (not counting Ethernet padding).
    pub payload_len: usize,
    /// Host order.
    pub seq: u32,
    pub ack_seq: u32,
    pub flags: u8,
    pub ipv6: bool,
    /// What the flow filter said of the four-tuple: false proves the flow is not tracked.
    /// The entry consults it, once per segment, before the hello logic.
    pub maybe_tracked: bool,
}

/// A TCP segment to a protected port that carries payload, FIN or RST, as far as [`walk`] read
/// it. The four-tuple and sequence numbers stay in the packet until asked for: most such
/// segments (application data of flows not tracked) pass with only the filter's slot read
/// ([`Headers::flow_slot`]), and only the rest go on to the hello logic with a whole
/// [`Segment`] ([`Headers::segment`]).
#[derive(Clone, Copy)]
pub struct Headers {
    /// The IP header, checked by [`ptr_at`] for the family's fixed header (20 or 40 bytes).
    ip: *const u8,
    /// The TCP header, checked by [`ptr_at`] for its fixed 20 bytes.
    tcp: *const TcpHdr,
    pub l3: usize,
    pub l4: usize,
    pub payload: usize,
    pub payload_len: usize,
    /// The destination port, host order.
    pub dport: u16,
    pub flags: u8,
    pub ipv6: bool,
}

/// Walks to the TCP header. `Err` carries why the packet is not for us (it passes), which
/// includes, to any port, a segment that neither closes nor resets the flow and carries no
/// payload (SYN, pure ACK) or starts a TLS application-data record: nothing to classify and no
/// flow state to consult.
#[inline(always)]
pub fn walk(ctx: &XdpContext, protected: impl Fn(u16) -> bool) -> Result<Headers, Outcome> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    // IPv4 untagged, the common case, first, in a copy of the walk of its own: its IP header
    // at a constant offset, so the compiler needs no register, mask or check of a variable
    // one for it, and the IPv6 arm is not in its path.
    if ether_type == ETH_P_IPV4 {
        return walk_from(ctx, ETH_P_IPV4, EthHdr::LEN, protected);
    }
    let mut l3 = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, l3)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += VlanHdr::LEN;
    }
    walk_from(ctx, ether_type, l3, protected)
}

/// The rest of [`walk`]: from the network header, `ether_type` at `l3`.
#[inline(always)]
fn walk_from(
    ctx: &XdpContext,
    ether_type: u16,
    l3: usize,
    protected: impl Fn(u16) -> bool,
) -> Result<Headers, Outcome> {
    let (ip, l4, ip_end, ipv6) = match ether_type {
        ETH_P_IPV4 => {
            let p: *const Ipv4Hdr = ptr_at(ctx, l3)?;
            let ip = unsafe { &*p };
            // The protocol first: whatever else is wrong with a packet that is not TCP, it
            // passes as it came (every fragment carries the protocol).
            if ip.proto != IPPROTO_TCP {
                return Err(Outcome::NotTcp);
            }
            let ihl = ((ip.vihl & 0x0f) as usize) * 4;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
                return Err(Outcome::Truncated);
            }
            if u16::from_be(load16(&ip.frags)) & (IPV4_MF | IPV4_OFFSET) != 0 {
                return Err(Outcome::Fragment);
            }
            let tot_len = u16::from_be(load16(&ip.tot_len)) as usize;
            if tot_len < ihl {
                return Err(Outcome::Truncated);
            }
            (p as *const u8, l3 + ihl, l3 + tot_len, false)
        }
        ETH_P_IPV6 => {
            let p: *const Ipv6Hdr = ptr_at(ctx, l3)?;
            let ip = unsafe { &*p };
            let mut next = ip.next_hdr;
            let mut off = l3 + Ipv6Hdr::LEN;
            let ip_end = off + u16::from_be(load16(&ip.payload_len)) as usize;
            for _ in 0..MAX_IPV6_EXT {
                match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                        // next header(1), length in 8-byte units not counting the first(1).
                        let ext: *const [u8; 2] = ptr_at(ctx, off)?;
                        let ext = unsafe { *ext };
                        next = ext[0];
                        off += (ext[1] as usize + 1) * 8;
                    }
                    IPV6_FRAGMENT => return Err(Outcome::Fragment),
                    _ => break,
                }
            }
            if next != IPPROTO_TCP {
                return Err(match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => Outcome::ExtHeaders,
                    _ => Outcome::NotTcp,
                });
            }
            (p as *const u8, off, ip_end, true)
        }
        _ => return Err(Outcome::NotIp),
    };
    let tcp: *const TcpHdr = ptr_at(ctx, l4)?;
    // Data offset and flags: bytes 12 and 13 of the header, inside the 20 checked.
    let bits = unsafe { *((tcp as *const u8).add(12) as *const [u8; 2]) };
    let doff = ((bits[0] >> 4) as usize) * 4;
    let payload = l4 + doff;
    if doff < TcpHdr::LEN || payload > ip_end {
        return Err(Outcome::Truncated);
    }
    // Before the port, to any port: segments that neither close nor reset and either carry
    // nothing (a pure ACK, most of what a server receives while it sends) or start a TLS
    // application-data record (the first segment of nearly every request on an established
    // connection) need nothing of the port, not even the lookup that tells whether it is
    // protected. See [`app_data`] for why the second kind passes without its flow.
    if bits[1] & (TCP_FIN | TCP_RST) == 0 {
        if payload == ip_end {
            return Err(Outcome::NoPayload);
        }
        if app_data(ctx, payload, ip_end) {
            return Err(Outcome::NotHello);
        }
    }
    let dport = u16::from_be(load16(unsafe { &(*tcp).dest }));
    if !protected(dport) {
        return Err(Outcome::OtherPort);
    }
    Ok(Headers {
        ip,
        tcp,
        l3,
        l4,
        payload,
        payload_len: ip_end - payload,
        dport,
        flags: bits[1],
        ipv6,
    })
}

/// Whether the payload at `payload` (up to `ip_end`) starts a TLS application-data record.
/// Such a segment passes as `NotHello` without its flow being looked for, not even in the
/// filter (whose slot takes a hash of the four-tuple).
///
/// The one segment that could want a lookup and starts so is the continuation of a hello
/// being followed that happens to start with these three bytes (its bytes are the hello's, any
/// of them): it passes unread, the next segment then arrives out of order for the followed
/// flow, and the hello is left to userspace, which decides it with the same classifier
/// (`ToUserspace`), as for any hello the kernel cannot follow. A sender can cause that at will
/// anyway (by reordering its segments): it gains nothing here. The flows already blocked see
/// only retransmitted hellos from their clients, which never send application data before a
/// handshake.
#[inline(always)]
fn app_data(ctx: &XdpContext, payload: usize, ip_end: usize) -> bool {
    if ip_end - payload < 3 {
        return false;
    }
    match ptr_at::<[u8; 3]>(ctx, payload) {
        // SAFETY: ptr_at checked the three bytes are in the packet.
        Ok(head) => starts_app_data(unsafe { *head }),
        Err(_) => false,
    }
}

impl Headers {
    /// The [`FLOW_FILTER`](outpost_common::maps::FLOW_FILTER) slot of the segment's flow: for
    /// IPv4 from the four words it hashes, read straight from the packet.
    #[inline(always)]
    pub fn flow_slot(&self) -> u32 {
        if self.ipv6 {
            return flow_slot(&self.key());
        }
        // SAFETY: the walk checked the IPv4 header's 20 bytes and the TCP header's 20.
        let (ip, tcp) = unsafe { (&*(self.ip as *const Ipv4Hdr), &*self.tcp) };
        flow_slot_v4(
            load32(&ip.src_addr),
            load32(&ip.dst_addr),
            load16(&tcp.source),
            load16(&tcp.dest),
        )
    }

    /// The segment's four-tuple, as [`FlowKey`] stores it.
    #[inline(always)]
    fn key(&self) -> FlowKey {
        let mut key = FlowKey::default();
        // SAFETY: the walk checked the family's fixed IP header and the TCP header's 20 bytes.
        unsafe {
            if self.ipv6 {
                let ip = &*(self.ip as *const Ipv6Hdr);
                copy_words(&mut key.src, &ip.src_addr);
                copy_words(&mut key.dst, &ip.dst_addr);
                key.family = 6;
            } else {
                let ip = &*(self.ip as *const Ipv4Hdr);
                key.src[0] = load32(&ip.src_addr);
                key.dst[0] = load32(&ip.dst_addr);
                key.family = 4;
            }
            key.sport = load16(&(*self.tcp).source);
            key.dport = load16(&(*self.tcp).dest);
        }
        key
    }

    /// The whole segment, for the hello logic. `maybe_tracked`: what the filter said.
    #[inline(always)]
    pub fn segment(&self, maybe_tracked: bool) -> Segment {
        // SAFETY: the walk checked the TCP header's 20 bytes.
        let tcp = unsafe { &*self.tcp };
        Segment {
            key: self.key(),
            l3: self.l3,
            l4: self.l4,
            payload: self.payload,
            payload_len: self.payload_len,
            seq: u32::from_be(load32(&tcp.seq)),
            ack_seq: u32::from_be(load32(&tcp.ack_seq)),
            flags: self.flags,
            ipv6: self.ipv6,
            maybe_tracked,
        }
    }
}

#[inline(always)]
fn copy_words(dst: &mut [u32; 4], src: &[u8; 16]) {
    let words = src.as_ptr() as *const [u8; 4];
    for (i, w) in dst.iter_mut().enumerate() {
        // SAFETY: word `i` of the 16 bytes at `src`.
        *w = load32(unsafe { words.add(i) });
    }
}

/// The payload bytes of a segment that are in the packet's linear data, as classifier input.
pub struct Payload<'a> {
    ctx: &'a XdpContext,
    off: usize,
    len: usize,
}

impl<'a> Payload<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext, seg: &Segment) -> Payload<'a> {
        Payload::of(ctx, seg.payload, seg.payload_len)
    }

    /// The payload at `payload` of `payload_len` bytes (per the IP header).
    #[inline(always)]
    pub fn of(ctx: &'a XdpContext, payload: usize, payload_len: usize) -> Payload<'a> {
        let off = payload & PAYLOAD_MASK;
        let visible = ctx.data_end().saturating_sub(ctx.data() + off);
        let len = if payload_len < visible { payload_len } else { visible };
        Payload { ctx, off, len: len & PAYLOAD_MASK }
    }

    /// The same view rebuilt from its parts (they travel through a map between loop steps).
    #[inline(always)]
    pub fn at(ctx: &'a XdpContext, off: usize, len: usize) -> Payload<'a> {
        Payload { ctx, off: off & PAYLOAD_MASK, len: len & PAYLOAD_MASK }
    }

    pub fn offset(&self) -> usize {
        self.off
    }

    /// Whether the whole payload is in linear data (not in fragments of a multi-buffer frame).
    #[inline(always)]
    pub fn complete(&self, seg: &Segment) -> bool {
        self.len == seg.payload_len
    }
}

impl Input for Payload<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        match ptr_at::<u8>(self.ctx, self.off + (i & PAYLOAD_MASK)) {
            // SAFETY: ptr_at checked the byte is inside the packet.
            Ok(p) => unsafe { *p },
            Err(_) => 0,
        }
    }

    /// One bounds check for the `N` bytes (the recording mode reads lists and the server name
    /// in blocks this way), and loads straight from the packet (no copy on the stack, which
    /// would differ from one step of the classifier's loop to the next).
    #[inline(always)]
    fn each_byte<const N: usize>(&self, i: usize, mut f: impl FnMut(usize, u8)) -> bool {
        let Ok(p) = ptr_at::<[u8; N]>(self.ctx, self.off + (opaque(i) & PAYLOAD_MASK)) else {
            return false;
        };
        let p = p as *const u8;
        for k in 0..N {
            // SAFETY: ptr_at checked the N bytes are inside the packet.
            f(k, unsafe { *p.add(k) });
        }
        true
    }

    #[inline(always)]
    fn each_be16<const N: usize>(&self, i: usize, mut f: impl FnMut(u16)) -> bool {
        let Ok(p) = ptr_at::<[[u8; 2]; N]>(self.ctx, self.off + (opaque(i) & PAYLOAD_MASK)) else {
            return false;
        };
        let p = p as *const [u8; 2];
        for k in 0..N {
            // SAFETY: as above; one load of two bytes (see `load16`).
            f(u16::from_be(load16(unsafe { p.add(k) })));
        }
        true
    }
}
