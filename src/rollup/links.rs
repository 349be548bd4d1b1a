//! The link tables: from an id's keyed 64-bit hash to where that id lives (an operation's link
//! number, and for an attempt id its resource's slot), in as few bytes as a link can take.
//!
//! A table is split into shards, each a hash table behind its own lock. The hash picks the
//! shard by its high bits and is stored as a 32-bit fingerprint (its low half): a resource's
//! link is 8 bytes, an attempt's 12. Ids whose hashes share a shard and a fingerprint share a
//! bucket chain, so a lookup yields every value stored under the fingerprint (nearly always
//! none or one), and the caller keeps the one its operation confirms: a link is never trusted
//! until the operation holds the id, so two ids that meet in one fingerprint can never
//! misfile an event (docs/architecture.md, "Links").

use hashbrown::HashTable;
use std::sync::{PoisonError, RwLock};

#[derive(Clone, Copy)]
struct Entry<V> {
    fingerprint: u32,
    value: V,
}

/// The values stored under one fingerprint, copied out of the shard so that no lock is held
/// while the caller confirms them.
pub struct Candidates<V> {
    few: [Option<V>; 2],
    more: Vec<V>,
}

impl<V: Copy> Candidates<V> {
    fn push(&mut self, v: V) {
        match self.few.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(v),
            None => self.more.push(v),
        }
    }
}

impl<V: Copy> IntoIterator for Candidates<V> {
    type Item = V;
    type IntoIter = std::iter::Chain<
        std::iter::Flatten<std::array::IntoIter<Option<V>, 2>>,
        std::vec::IntoIter<V>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.few.into_iter().flatten().chain(self.more)
    }
}

/// A sharded table of links; `V` is what a link holds.
pub struct LinkTable<V> {
    shards: Box<[RwLock<HashTable<Entry<V>>>]>,
    /// How far the hash is shifted right to pick its shard (64 - log2 of the shard count).
    shift: u32,
}

/// The hash a shard's table files a fingerprint under: the fingerprint spread over 64 bits,
/// so that both the bucket (low bits) and the control byte (high bits) depend on all of it.
fn spread(fingerprint: u32) -> u64 {
    u64::from(fingerprint).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<V: Copy + PartialEq> LinkTable<V> {
    /// A table of `shards` shards (rounded up to a power of two).
    pub fn new(shards: usize) -> LinkTable<V> {
        let n = shards.max(1).next_power_of_two();
        LinkTable {
            shards: (0..n).map(|_| RwLock::new(HashTable::new())).collect(),
            shift: 64 - n.trailing_zeros(),
        }
    }

    /// A table with as many shards as the other concurrent maps of the state: four per core.
    pub fn for_this_machine() -> LinkTable<V> {
        LinkTable::new(std::thread::available_parallelism().map_or(1, |n| n.get() * 4))
    }

    fn shard(&self, hash: u64) -> &RwLock<HashTable<Entry<V>>> {
        // A shift by 64 (one shard) would overflow; `checked_shr` makes it shard 0.
        let i = hash.checked_shr(self.shift).unwrap_or(0) as usize;
        &self.shards[i]
    }

    /// Every value stored under the fingerprint of `hash`.
    pub fn candidates(&self, hash: u64) -> Candidates<V> {
        let fingerprint = hash as u32;
        let mut out = Candidates {
            few: [None; 2],
            more: Vec::new(),
        };
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for e in shard.iter_hash(spread(fingerprint)) {
            if e.fingerprint == fingerprint {
                out.push(e.value);
            }
        }
        out
    }

    /// Whether anything is stored under the fingerprint of `hash`.
    pub fn any(&self, hash: u64) -> bool {
        self.candidates(hash).into_iter().next().is_some()
    }

    /// Store `value` under the fingerprint of `hash` unless that very link is there already;
    /// true when it was stored.
    pub fn insert(&self, hash: u64, value: V) -> bool {
        let fingerprint = hash as u32;
        let h = spread(fingerprint);
        let mut shard = self
            .shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard
            .find(h, |e| e.fingerprint == fingerprint && e.value == value)
            .is_some()
        {
            return false;
        }
        shard.insert_unique(h, Entry { fingerprint, value }, |e| spread(e.fingerprint));
        true
    }

    /// Remove one link stored under the fingerprint of `hash` whose value `pick` says; true when
    /// one was removed.
    pub fn remove(&self, hash: u64, pick: impl Fn(&V) -> bool) -> bool {
        let fingerprint = hash as u32;
        let mut shard = self
            .shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.find_entry(spread(fingerprint), |e| {
            e.fingerprint == fingerprint && pick(&e.value)
        }) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            s.write().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Links stored.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the shards' tables have allocated (buckets and control bytes).
    pub fn allocated_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .allocation_size() as u64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash whose shard bits and fingerprint are given.
    fn hash(shard_bits: u64, fingerprint: u32) -> u64 {
        shard_bits << 32 | u64::from(fingerprint)
    }

    #[test]
    fn a_link_is_found_under_its_own_fingerprint_only() {
        let t: LinkTable<u32> = LinkTable::new(8);
        assert!(t.insert(hash(0x1234_5678, 7), 1));
        assert_eq!(
            t.candidates(hash(0x1234_5678, 7))
                .into_iter()
                .collect::<Vec<_>>(),
            [1]
        );
        assert!(!t.any(hash(0x1234_5678, 8)));
        // The same fingerprint in another shard is another key.
        assert!(!t.any(hash(0xF234_5678, 7)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn links_that_share_a_fingerprint_are_all_kept_and_all_returned() {
        let t: LinkTable<(u32, u32)> = LinkTable::new(4);
        let h = hash(3, 42);
        for v in [(1, 0), (2, 5), (3, 9), (4, 1)] {
            assert!(t.insert(h, v), "{v:?} stored");
        }
        assert!(!t.insert(h, (2, 5)), "the very same link is stored once");
        let mut got: Vec<_> = t.candidates(h).into_iter().collect();
        got.sort();
        assert_eq!(got, [(1, 0), (2, 5), (3, 9), (4, 1)]);
        assert!(t.remove(h, |v| v.0 == 2));
        assert!(!t.remove(h, |v| v.0 == 2));
        let mut got: Vec<_> = t.candidates(h).into_iter().collect();
        got.sort();
        assert_eq!(got, [(1, 0), (3, 9), (4, 1)]);
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn a_table_grows_and_still_finds_every_link() {
        let t: LinkTable<u32> = LinkTable::new(1);
        // Fingerprints chosen to collide in pairs, across several growths of the table.
        for i in 0..20_000u32 {
            assert!(t.insert(hash(0, i / 2), i));
        }
        for i in 0..20_000u32 {
            let got: Vec<_> = t.candidates(hash(0, i / 2)).into_iter().collect();
            assert!(got.contains(&i), "{i} found among {got:?}");
            assert_eq!(got.len(), 2);
        }
        assert!(t.allocated_bytes() >= 20_000 * 9);
    }
}
