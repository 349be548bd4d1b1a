//! The hashers of tally's in-memory tables (docs/security.md says why these are safe here).
//!
//! Tables keyed by an id compare whole keys, so their hash decides only speed: they use
//! foldhash, seeded per process, several times cheaper than the standard library's SipHash on
//! ids of 30 to 40 bytes. Where a hash *is* the key (the 64-bit link fingerprints of ids, made
//! with a keyed SipHash so that nobody can aim two ids at one fingerprint), the table takes the
//! fingerprint as its own hash instead of hashing it again.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashing for tables that compare whole keys.
pub type FastHash = foldhash::fast::RandomState;

/// Hashing for tables whose `u64` keys are already uniform hashes.
pub type KeyIsHash = BuildHasherDefault<PassThrough>;

/// Takes a `u64` key as its hash. Anything else written to it is folded in with FNV-1a, so
/// it stays a correct (if slower) hasher for other keys.
#[derive(Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_u64_key_is_its_own_hash_and_other_keys_still_spread() {
        let h = KeyIsHash::default();
        assert_eq!(h.hash_one(0xdead_beef_u64), 0xdead_beef);
        assert_ne!(h.hash_one("a"), h.hash_one("b"));
    }
}
