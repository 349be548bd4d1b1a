//! Compact storage for what an operation tracks per resource and per attempt (the memory figures
//! and target are in docs/performance.md).
//!
//! Twilio's ids have two common shapes that fit in 16 bytes: a known prefix (`comms_message_`,
//! `comms_operation_`, …) followed by 26 lowercase Crockford base32 characters whose first is
//! `0`–`7` (3 + 25 × 5 = 128 bits), and a two-letter prefix (`SM`, `MM`) followed by 32
//! lowercase hex digits (128 bits). Strings of at most 16 bytes (phone numbers, attempt
//! numbers) are kept inline too. Anything else goes to the heap unchanged, so an id always reads
//! back exactly as it came in.

use std::fmt;

/// Prefixes of base32 ids, by form number (`FORM_BASE32 + index`).
const BASE32_PREFIXES: [&str; 6] = [
    "comms_message_",
    "comms_operation_",
    "comms_email_",
    "comms_pushnotification_",
    "comms_notification_",
    "comms_sender_",
];
/// Prefixes of hex SIDs, by form number (`FORM_HEX + index`).
const HEX_PREFIXES: [&str; 4] = ["SM", "MM", "IM", "NO"];

const FORM_BASE32: u8 = 32;
const FORM_HEX: u8 = 64;
const INLINE_MAX: usize = 16;

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Value of each byte as a lowercase Crockford digit (`0xff`: not one).
const CROCKFORD_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[CROCKFORD[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Value of each byte as a lowercase hex digit (`0xff`: not one).
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn crockford_value(c: u8) -> Option<u8> {
    let v = CROCKFORD_VALUE[c as usize];
    (v != 0xff).then_some(v)
}

fn hex_value(c: u8) -> Option<u8> {
    let v = HEX_VALUE[c as usize];
    (v != 0xff).then_some(v)
}

/// An id or short string, 24 bytes, most often without a heap allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// `form`: `0..=16` an inline string of that length, `FORM_BASE32 + i` a base32 id with
    /// prefix `i`, `FORM_HEX + i` a hex SID with prefix `i`.
    Packed {
        form: u8,
        bytes: [u8; 16],
    },
    Other(Box<str>),
}

impl Id {
    pub fn new(s: &str) -> Id {
        if let Some(id) = Id::pack(s) {
            return id;
        }
        Id::Other(s.into())
    }

    fn pack(s: &str) -> Option<Id> {
        let b = s.as_bytes();
        if b.len() <= INLINE_MAX {
            let mut bytes = [0u8; 16];
            bytes[..b.len()].copy_from_slice(b);
            return Some(Id::Packed {
                form: b.len() as u8,
                bytes,
            });
        }
        if !s.starts_with("comms_") {
            return Id::pack_hex(s);
        }
        for (i, p) in BASE32_PREFIXES.iter().enumerate() {
            if let Some(rest) = s.strip_prefix(p) {
                let r = rest.as_bytes();
                if r.len() != 26 || !(b'0'..=b'7').contains(&r[0]) {
                    return None;
                }
                let mut v: u128 = (r[0] - b'0') as u128;
                for &c in &r[1..] {
                    v = (v << 5) | crockford_value(c)? as u128;
                }
                return Some(Id::Packed {
                    form: FORM_BASE32 + i as u8,
                    bytes: v.to_be_bytes(),
                });
            }
        }
        None
    }

    fn pack_hex(s: &str) -> Option<Id> {
        for (i, p) in HEX_PREFIXES.iter().enumerate() {
            if let Some(rest) = s.strip_prefix(p) {
                let r = rest.as_bytes();
                if r.len() != 32 {
                    return None;
                }
                let mut bytes = [0u8; 16];
                for (k, pair) in r.chunks(2).enumerate() {
                    bytes[k] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
                }
                return Some(Id::Packed {
                    form: FORM_HEX + i as u8,
                    bytes,
                });
            }
        }
        None
    }

    /// Append the id's text to `out`.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Id::Other(s) => out.push_str(s),
            Id::Packed { form, bytes } => {
                let form = *form;
                if form as usize <= INLINE_MAX {
                    // Inline bytes were copied from a `&str`, so they are valid UTF-8.
                    out.push_str(std::str::from_utf8(&bytes[..form as usize]).unwrap_or(""));
                } else if form >= FORM_HEX {
                    out.push_str(HEX_PREFIXES[(form - FORM_HEX) as usize]);
                    for b in bytes {
                        out.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
                        out.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
                    }
                } else {
                    out.push_str(BASE32_PREFIXES[(form - FORM_BASE32) as usize]);
                    let v = u128::from_be_bytes(*bytes);
                    out.push(char::from(b'0' + (v >> 125) as u8));
                    for k in (0..25).rev() {
                        out.push(char::from(CROCKFORD[((v >> (5 * k)) & 31) as usize]));
                    }
                }
            }
        }
    }

    pub fn as_string(&self) -> String {
        let mut s = String::with_capacity(48);
        self.write_to(&mut s);
        s
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn twilio_shaped_ids_fit_in_16_bytes_and_read_back_exactly() {
        for s in [
            "comms_message_01h9krwprkeee8fzqspvwy6nq8",
            "comms_operation_7zzzzzzzzzzzzzzzzzzzzzzzzz",
            "comms_email_00000000000000000000000000",
            "SM0123456789abcdef0123456789abcdef",
            "MMffffffffffffffffffffffffffffffff",
            "+15558675310",
            "1",
            "",
        ] {
            let id = Id::new(s);
            assert!(matches!(id, Id::Packed { .. }), "{s}");
            assert_eq!(id.as_string(), s);
        }
        assert_eq!(std::mem::size_of::<Id>(), 24);
        assert_eq!(std::mem::size_of::<Option<Id>>(), 24);
    }

    #[test]
    fn other_shapes_are_kept_as_they_came() {
        for s in [
            "comms_message_81h9krwprkeee8fzqspvwy6nq8", // first char over 7
            "comms_message_01H9KRWPRKEEE8FZQSPVWY6NQ8", // uppercase
            "comms_message_01h9krwprkeee8fzqspvwy6nq",  // 25 chars
            "comms_message_01h9krwprkeee8fzqspvwy6nq8x", // 27 chars
            "SM0123456789ABCDEF0123456789ABCDEF",       // uppercase hex
            "a-much-longer-id-that-has-no-known-shape",
        ] {
            let id = Id::new(s);
            assert!(matches!(id, Id::Other(_)), "{s}");
            assert_eq!(id.as_string(), s);
        }
    }

    proptest! {
        #[test]
        fn any_string_round_trips(s in ".{0,60}") {
            prop_assert_eq!(Id::new(&s).as_string(), s);
        }

        #[test]
        fn any_base32_id_round_trips(first in 0u8..8, rest in prop::collection::vec(0usize..32, 25)) {
            let mut s = String::from("comms_operation_");
            s.push(char::from(b'0' + first));
            for r in rest { s.push(char::from(CROCKFORD[r])); }
            let id = Id::new(&s);
            let packed = matches!(id, Id::Packed { .. });
            prop_assert!(packed);
            prop_assert_eq!(id.as_string(), s);
        }
    }
}
