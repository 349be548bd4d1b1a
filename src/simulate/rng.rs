//! A small seeded generator and the id shapes Twilio uses.

/// A small, fast, seeded generator (SplitMix64): enough for test data, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// `prefix` + 26 lowercase Crockford base32 characters, the first 0–7 (Twilio's id shape).
pub fn base32_id(rng: &mut Rng, prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 26);
    s.push_str(prefix);
    s.push(CROCKFORD[rng.below(8) as usize] as char);
    for _ in 0..25 {
        s.push(CROCKFORD[rng.below(32) as usize] as char);
    }
    s
}

/// `SM` + 32 lowercase hex digits.
pub fn sms_sid(rng: &mut Rng) -> String {
    format!("SM{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}
