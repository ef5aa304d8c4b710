//! The redirect budget: how many legacy hellos a second may go on to the legacy responder, in
//! all and per source network, so that a flood of legacy hellos cannot turn the courtesy of an
//! explanatory page into handshakes burned in userspace.
//!
//! Each budget is a token bucket of `rate` tokens that refills whole once a period
//! ([`PERIOD_NS`], one second) has passed since it last did; it refills when the first hello
//! after that arrives, so a burst from a quiet source starts a fresh period. A flood of any
//! size from one source within one second gets at most `per_source` redirects, and at most
//! `rate` go on from every source together; every other legacy hello is rejected.
//!
//! The kernel keeps the buckets in maps (per source network in an LRU hash, the global one in
//! an array) and takes tokens with an atomic add, so two CPUs can never both take the last one;
//! the userspace floor keeps its own with [`Bucket::take`] when no XDP program decided first.

/// Length of a budget period.
pub const PERIOD_NS: u64 = 1_000_000_000;

/// A source network: the IPv4 /24 or IPv6 /48 a hello came from, its address words as in
/// [`crate::maps::FlowKey`] with the host bits cleared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u32; 4],
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Host bits cleared: the first three octets of an IPv4 address (a /24), the first six of an
/// IPv6 address (a /48). Words hold the address octets in memory order, as on the wire.
const V4_MASK: u32 = u32::from_ne_bytes([0xff, 0xff, 0xff, 0]);
const V6_MASK_1: u32 = u32::from_ne_bytes([0xff, 0xff, 0, 0]);

impl SourceKey {
    /// The network of `src` (words as in `FlowKey::src`) in `family`.
    #[inline(always)]
    pub const fn of(src: &[u32; 4], family: u8) -> SourceKey {
        let addr = if family == 6 {
            [src[0], src[1] & V6_MASK_1, 0, 0]
        } else {
            [src[0] & V4_MASK, 0, 0, 0]
        };
        SourceKey { addr, family, _pad: [0; 3] }
    }
}

/// One budget: the start of its current period and the tokens taken in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Monotonic time the bucket last refilled, ns.
    pub refilled_ns: u64,
    /// Tokens taken since (may exceed the rate: every refused hello counts too).
    pub taken: u64,
}

impl Bucket {
    /// A bucket whose period starts at `now_ns`, nothing taken.
    pub const fn new(now_ns: u64) -> Bucket {
        Bucket { refilled_ns: now_ns, taken: 0 }
    }

    /// Whether the period that began at `refilled_ns` is over at `now_ns`.
    #[inline(always)]
    pub const fn expired(refilled_ns: u64, now_ns: u64) -> bool {
        now_ns.wrapping_sub(refilled_ns) >= PERIOD_NS
    }

    /// Takes a token at `now_ns` from a bucket of `rate` per period: whether one was left.
    pub fn take(&mut self, now_ns: u64, rate: u32) -> bool {
        if Bucket::expired(self.refilled_ns, now_ns) {
            *self = Bucket::new(now_ns);
        }
        self.taken += 1;
        self.taken <= rate as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let v4 = |o: [u8; 4]| [u32::from_ne_bytes(o), 0, 0, 0];
        let a = SourceKey::of(&v4([198, 18, 10, 1]), 4);
        assert_eq!(a, SourceKey::of(&v4([198, 18, 10, 254]), 4));
        assert_ne!(a, SourceKey::of(&v4([198, 18, 11, 1]), 4));
        let v6 = |o: [u8; 16]| {
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        };
        let mut x = [0x20, 0x01, 0, 2, 0, 0x10, 0xab, 0xcd, 1, 2, 3, 4, 5, 6, 7, 8];
        let b = SourceKey::of(&v6(x), 6);
        x[6] = 0xff;
        x[15] = 0xff;
        assert_eq!(b, SourceKey::of(&v6(x), 6), "same /48");
        x[5] = 0x11;
        assert_ne!(b, SourceKey::of(&v6(x), 6), "another /48");
        assert_ne!(SourceKey::of(&[0; 4], 4), SourceKey::of(&[0; 4], 6));
    }

    #[test]
    fn a_period_gives_rate_tokens_then_refills_whole() {
        let mut b = Bucket::new(10);
        let got = (0..1000).filter(|i| b.take(10 + i * 900_000, 5)).count();
        assert_eq!(got, 5, "1,000 takes within 0.9 s");
        // The first take after the period ends refills it.
        assert!(b.take(10 + PERIOD_NS, 5));
        assert_eq!((0..10).filter(|_| b.take(10 + PERIOD_NS + 1, 5)).count(), 4);
        let mut none = Bucket::new(0);
        assert!(!none.take(1, 0), "rate 0 lets nothing through");
    }
}
