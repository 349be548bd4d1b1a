//! A batch in the shape Twilio sends it, read by hand into the same borrowed envelopes serde
//! fills (`wire.rs`), without serde's generic machinery: on a batch of Event Streams events,
//! reading the JSON was about two thirds of what decoding cost (docs/performance.md, "Batched
//! events: reading the JSON by hand").
//!
//! It reads a strict subset of JSON and gives up (`None`) on anything outside it, and the caller
//! then reads the body with serde as before. What it gives up on, so that whatever it does read
//! reads exactly as serde would have read it:
//! - a control character in a string (serde refuses it);
//! - an escape in a member's name or in a string tally reads (it would have to be decoded); in a
//!   string tally skips, an escape is only checked, as serde checks it;
//! - where tally reads a number, one that is not a plain non-negative integer of at most 19
//!   digits (serde reads the others in ways that depend on their spelling); a number tally skips
//!   need only be valid JSON;
//! - an element of the array that is not an object, and anything after the array;
//! - a member tally reads named twice in one object (in either spelling), which serde refuses;
//! - nesting deeper than [`MAX_DEPTH`], well inside serde's own limit;
//! - more than `max_events` elements.
//!
//! A test holds it to serde's reading on generated batches, and the `cloudevent` fuzz target on
//! arbitrary bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde_json::Number;

use super::wire::{Address, Data, Envelope, Loose};
use super::{decode_envelope, expected_events};
use crate::event::{Event, SkipReason};

/// Deepest nesting read (the array itself is depth 1); serde's own limit is 128.
const MAX_DEPTH: u32 = 64;

/// Longest integer read: every integer of 19 digits fits a u64.
const MAX_DIGITS: usize = 19;

/// Read a JSON array of CloudEvent objects and decode each as it is read; `None` when the body
/// is outside what this reader takes (see the module's comment).
pub(super) fn read_batch(
    text: &str,
    received_ms: u64,
    max_events: usize,
) -> Option<Vec<Result<Event, SkipReason>>> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let mut decoded = Vec::with_capacity(expected_events(text.len(), max_events));
    s.white();
    s.items(b'[', b']', |s| {
        if decoded.len() == max_events {
            return None;
        }
        let mut envelope = Envelope {
            ty: None,
            time: None,
            data: None,
        };
        s.envelope(&mut envelope)?;
        decoded.push(decode_envelope(&envelope, received_ms));
        Some(())
    })?;
    s.white();
    (s.at == s.bytes.len()).then_some(decoded)
}

/// Where the first `"`, `\\` or control character in `bytes` is. Eight bytes at a time: in each
/// mask below the lowest byte flagged is a real match (a false one can only sit above a real one),
/// so the lowest flagged byte of the three is the first match.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| at + p)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: u32,
}

/// Which of an object's members tally reads have been seen, one bit each.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// Mark member `bit` seen; `None` when it was already.
    fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// Skip JSON white space.
    #[inline]
    fn white(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters, borrowed from the body.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = &self.bytes[start..];
        let len = string_end(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are ASCII quotes in a `str`, so this is a whole UTF-8 slice.
        self.text.get(start..start + len)
    }

    /// Skip a string, checking its escapes as serde does.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = &self.bytes[self.at..];
            let len = string_end(rest)?;
            self.at += len + 1;
            match rest[len] {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.bytes.get(self.at..self.at + 4)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.at += 4;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// Skip a number: any that JSON allows.
    fn skip_number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// A plain non-negative integer.
    fn integer(&mut self) -> Option<Number> {
        let start = self.at;
        self.digits();
        let digits = &self.text[start..self.at];
        if digits.is_empty()
            || digits.len() > MAX_DIGITS
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        digits.parse::<u64>().ok().map(Number::from)
    }

    /// The literal `word` (`true`, `false` or `null`).
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// Read a `[…]` or `{…}` (opened by `open`, closed by `close`) one level deeper, handing each
    /// of its items to `item`, which reads it.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.white();
        if self.peek()? == close {
            self.at += 1;
        } else {
            loop {
                self.white();
                item(self)?;
                self.white();
                match self.next()? {
                    b',' => {}
                    b if b == close => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Read an object's members, handing each name to `member`, which reads the value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.items(b'{', b'}', |s| {
            let name = s.string()?;
            s.white();
            s.eat(b':')?;
            s.white();
            member(s, name)
        })
    }

    /// Skip an array's elements.
    fn skip_array(&mut self) -> Option<()> {
        self.items(b'[', b']', Self::skip_value)
    }

    /// Skip any value (a member tally does not read).
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'-' | b'0'..=b'9' => self.skip_number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'[' => self.skip_array(),
            b'{' => self.object(|s, _| s.skip_value()),
            _ => None,
        }
    }

    /// Any value as a [`Loose`], an object read by `object`; `null` is [`Loose::Other`].
    fn loose<T>(&mut self, object: impl FnOnce(&mut Self) -> Option<T>) -> Option<Loose<'a, T>> {
        Some(match self.peek()? {
            b'"' => Loose::Text(Cow::Borrowed(self.string()?)),
            b'0'..=b'9' => Loose::Number(self.integer()?),
            b't' => self.literal(b"true").map(|()| Loose::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Loose::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Loose::Other)?,
            b'[' => self.skip_array().map(|()| Loose::Other)?,
            b'{' => Loose::Object(object(self)?),
            _ => return None,
        })
    }

    /// A member that may be `null` (read as absent).
    fn optional<T>(
        &mut self,
        object: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<Loose<'a, T>>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        self.loose(object).map(Some)
    }

    /// A text-or-number member (an object in it is skipped).
    #[inline]
    fn plain(&mut self) -> Option<Option<Loose<'a>>> {
        self.optional(Self::ignored_object)
    }

    fn ignored_object(&mut self) -> Option<IgnoredAny> {
        self.object(|s, _| s.skip_value()).map(|()| IgnoredAny)
    }

    /// One CloudEvent into `envelope`: `type`, `time` and `data`; other attributes skipped.
    fn envelope(&mut self, envelope: &mut Envelope<'a>) -> Option<()> {
        let mut seen = Seen::default();
        self.object(|s, name| {
            match name {
                "type" => {
                    seen.first(0)?;
                    envelope.ty = s.plain()?;
                }
                "time" => {
                    seen.first(1)?;
                    envelope.time = s.plain()?;
                }
                "data" => {
                    seen.first(2)?;
                    // Read in place: the shape is a few hundred bytes, not worth moving.
                    if s.peek()? != b'{' {
                        envelope.data = s.optional(|_| None)?;
                        return Some(());
                    }
                    let Loose::Object(data) = envelope.data.insert(Loose::Object(Data::default()))
                    else {
                        return None;
                    };
                    s.data(data)?;
                }
                _ => s.skip_value()?,
            }
            Some(())
        })
    }

    /// The members of `data` tally reads, in either spelling, into `data`.
    fn data(&mut self, data: &mut Data<'a>) -> Option<()> {
        let mut seen = Seen::default();
        self.object(|s, name| {
            let (bit, field) = match name {
                "operation_id" | "operationId" => (0, &mut data.operation_id),
                "message_id" | "messageId" => (1, &mut data.message_id),
                "email_id" | "emailId" => (2, &mut data.email_id),
                "push_notification_id" | "pushNotificationId" => {
                    (3, &mut data.push_notification_id)
                }
                "notification_id" | "notificationId" => (4, &mut data.notification_id),
                "downstream_id" | "downstreamId" => (5, &mut data.downstream_id),
                "attempt" => (6, &mut data.attempt),
                "error_code" | "errorCode" => (7, &mut data.error_code),
                "channel" => (8, &mut data.channel),
                "message_sid" | "messageSid" => (9, &mut data.message_sid),
                "sms_sid" | "smsSid" => (10, &mut data.sms_sid),
                "message_status" | "messageStatus" => (11, &mut data.message_status),
                "channel_prefix" | "channelPrefix" => (12, &mut data.channel_prefix),
                "from" => {
                    seen.first(13)?;
                    data.from = s.optional(Self::address)?;
                    return Some(());
                }
                "to" => {
                    seen.first(14)?;
                    data.to = s.optional(Self::address)?;
                    return Some(());
                }
                "tags" => {
                    seen.first(15)?;
                    data.tags = s.optional(Self::tags)?;
                    return Some(());
                }
                _ => return s.skip_value(),
            };
            seen.first(bit)?;
            *field = s.plain()?;
            Some(())
        })
    }

    /// An address object.
    fn address(&mut self) -> Option<Address<'a>> {
        let mut address = Address {
            address: None,
            channel: None,
            provider: None,
        };
        let mut seen = Seen::default();
        self.object(|s, name| {
            let (bit, field) = match name {
                "address" => (0, &mut address.address),
                "channel" => (1, &mut address.channel),
                "provider" => (2, &mut address.provider),
                _ => return s.skip_value(),
            };
            seen.first(bit)?;
            *field = s.plain()?;
            Some(())
        })?;
        Some(address)
    }

    /// `tags`: every member, a later one of the same name replacing an earlier one.
    fn tags(&mut self) -> Option<BTreeMap<String, Loose<'a>>> {
        let mut tags = BTreeMap::new();
        self.object(|s, name| {
            let value = s.loose(Self::ignored_object)?;
            tags.insert(name.to_owned(), value);
            Some(())
        })?;
        Some(tags)
    }
}
