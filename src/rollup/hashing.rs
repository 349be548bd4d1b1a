//! The hashers of tally's in-memory tables (docs/security.md says why these are safe here).
//!
//! Tables keyed by an id compare whole keys, so their hash decides only speed: they use
//! foldhash, seeded per process, several times cheaper than the standard library's SipHash on
//! ids of 30 to 40 bytes. The link tables ([`super::links`]) are the exception: they store a
//! fingerprint of each id's keyed SipHash instead of the id, so that nobody can aim two ids at
//! one fingerprint.

/// Hashing for tables that compare whole keys.
pub type FastHash = foldhash::fast::RandomState;
