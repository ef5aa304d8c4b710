//! A seeded generator for tests that explore inputs: the same sequence on every run, so a
//! failure reproduces, and no dependency. xorshift64* (Vigna, 2016); never for anything that
//! must be unpredictable.

/// xorshift64*, from a seed.
pub struct XorShift(u64);

impl XorShift {
    /// A generator started at `seed`; zero, where xorshift would stay, is replaced.
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` from the output's high half (its best bits); 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        let high = self.next_u64() >> 32;
        if n == 0 {
            0
        } else {
            (high % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn same_seed_same_sequence_and_below_stays_below() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert!((0..1000).all(|_| a.below(10) < 10));
        assert_eq!(a.below(0), 0);
        let mut z = XorShift::new(0);
        assert_ne!(z.next_u64(), 0, "a zero seed must not stay at zero");
    }
}
