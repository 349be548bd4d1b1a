//! Twilio's bytes in, domain [`Event`](crate::event::Event)s out.
//!
//! Two doors, one vocabulary: [`decode_events`] reads an Event Streams body (CloudEvents, JSON),
//! [`decode_form`] reads a classic form-encoded status callback. Both are pure: no IO, no clock
//! (the receive time is an argument), so every tolerance rule below is a plain unit test.
//!
//! A body that cannot be read at all is a [`BodyError`] (the route answers 400). Inside a readable
//! body every event stands alone: a bad one becomes a [`SkipReason`] and never poisons the batch.
//!
//! What is bounded here so nothing downstream has to care: ids (operation, resource, downstream,
//! attempt) longer than [`MAX_ID_BYTES`] reject the event ([`SkipReason::IdTooLong`]); tags are
//! capped at [`MAX_TAGS`] pairs of at most [`MAX_TAG_KEY_BYTES`] / [`MAX_TAG_VALUE_BYTES`] (longer
//! pairs are dropped, never fatal); a recipient address longer than [`MAX_ID_BYTES`] is dropped.

pub mod callback;
pub mod cloudevent;

pub use callback::{decode_form, parse_form};
pub use cloudevent::{decode_events, decode_events_bounded};

use crate::event::{Channel, SkipReason, MAX_ID_BYTES};

/// Most tag pairs kept per event (Twilio allows 10; the rest are dropped, not fatal).
pub const MAX_TAGS: usize = 32;
/// Longest tag key kept, in bytes (Twilio documents 128 characters).
pub const MAX_TAG_KEY_BYTES: usize = 128;
/// Longest tag value kept, in bytes (Twilio documents 256 characters).
pub const MAX_TAG_VALUE_BYTES: usize = 256;

/// A request body that cannot be read at all (HTTP 400). The message is safe to show: it never
/// echoes any of the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON: a syntax error, invalid UTF-8, an empty body, or nesting deeper than the parser's
    /// recursion limit (128).
    #[error("body is not valid JSON")]
    NotJson,
    /// Valid JSON, but a scalar (string, number, boolean, null) rather than an array or object.
    #[error("body is neither a JSON array nor a JSON object")]
    NotArrayOrObject,
    /// A form body or query string whose names or values are not UTF-8 once decoded.
    #[error("form parameters are not valid UTF-8")]
    FormNotUtf8,
    /// A batch of more events than the configured bound (HTTP 413).
    #[error("batch holds more than {max} events")]
    TooManyEvents { max: usize },
}

/// An id as found in the payload: `None` when absent or empty, [`SkipReason::IdTooLong`] when over
/// [`MAX_ID_BYTES`]. Ids are opaque: no pattern is checked and nothing is trimmed.
fn bounded_id(id: Option<String>) -> Result<Option<String>, SkipReason> {
    match id {
        None => Ok(None),
        Some(id) if id.is_empty() => Ok(None),
        Some(id) if id.len() > MAX_ID_BYTES => Err(SkipReason::IdTooLong),
        Some(id) => Ok(Some(id)),
    }
}

/// Keep one tag pair if the bounds allow; an empty key or an oversized pair is dropped.
fn push_tag(tags: &mut Vec<(String, String)>, key: &str, value: String) {
    if tags.len() >= MAX_TAGS
        || key.is_empty()
        || key.len() > MAX_TAG_KEY_BYTES
        || value.len() > MAX_TAG_VALUE_BYTES
    {
        return;
    }
    tags.push((key.to_owned(), value));
}

/// A Twilio error code from its text form. `0`, blanks and junk mean "no error code".
fn parse_error_code(s: &str) -> Option<u32> {
    s.trim().parse::<u32>().ok().filter(|&code| code != 0)
}

/// Split a channel prefix off an address: `whatsapp:+1555…` → (`Whatsapp`, `+1555…`).
///
/// Only a short alphabetic word before the first `:` counts as a prefix, so phone numbers and
/// e-mail addresses pass through untouched. A `tel:`/`phone:`/`sms:` prefix says "plain phone
/// number", which is what no prefix says too, so it is stripped but names no channel.
fn split_channel_prefix(address: &str) -> (Option<Channel>, &str) {
    let Some((prefix, rest)) = address.split_once(':') else {
        return (None, address);
    };
    if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_alphabetic()) {
        return (None, address);
    }
    let channel = match prefix.to_ascii_lowercase().as_str() {
        "tel" | "phone" | "sms" => None,
        other => Some(Channel::parse(other)),
    };
    (channel, rest)
}

/// The channel of a classic Programmable Messaging attempt that names none: SMS, or MMS for an
/// `MM…` SID.
fn default_messaging_channel(sid: Option<&str>) -> Channel {
    match sid {
        Some(sid) if sid.starts_with("MM") => Channel::Mms,
        _ => Channel::Sms,
    }
}

/// A recipient address worth keeping: non-empty and no longer than an id.
fn bounded_address(address: &str) -> Option<String> {
    (!address.is_empty() && address.len() <= MAX_ID_BYTES).then(|| address.to_owned())
}

/// Parse a channel name given explicitly by Twilio. `phone` (an address kind, not a delivery
/// channel) and blanks say nothing.
fn named_channel(name: &str) -> Option<Channel> {
    let name = name.trim();
    if name.is_empty() || name.eq_ignore_ascii_case("phone") {
        None
    } else {
        Some(Channel::parse(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_but_never_pattern_checked() {
        assert_eq!(bounded_id(None), Ok(None));
        assert_eq!(bounded_id(Some(String::new())), Ok(None));
        assert_eq!(
            bounded_id(Some(" odd id ".into())),
            Ok(Some(" odd id ".into()))
        );
        let max = "x".repeat(MAX_ID_BYTES);
        assert_eq!(bounded_id(Some(max.clone())), Ok(Some(max)));
        assert_eq!(
            bounded_id(Some("x".repeat(MAX_ID_BYTES + 1))),
            Err(SkipReason::IdTooLong)
        );
    }

    #[test]
    fn tags_are_capped_in_number_and_size() {
        let mut tags = Vec::new();
        push_tag(&mut tags, "", "empty key".into());
        push_tag(&mut tags, &"k".repeat(MAX_TAG_KEY_BYTES + 1), "v".into());
        push_tag(&mut tags, "k", "v".repeat(MAX_TAG_VALUE_BYTES + 1));
        assert!(tags.is_empty());
        for i in 0..100 {
            push_tag(&mut tags, &format!("k{i}"), "v".into());
        }
        assert_eq!(tags.len(), MAX_TAGS);
    }

    #[test]
    fn error_codes_parse_leniently() {
        assert_eq!(parse_error_code("30003"), Some(30003));
        assert_eq!(parse_error_code(" 30008 "), Some(30008));
        assert_eq!(parse_error_code("0"), None);
        assert_eq!(parse_error_code(""), None);
        assert_eq!(parse_error_code("abc"), None);
        assert_eq!(parse_error_code("-1"), None);
        assert_eq!(parse_error_code("99999999999"), None);
    }

    #[test]
    fn channel_prefixes_are_split_off_addresses() {
        assert_eq!(
            split_channel_prefix("whatsapp:+15558675310"),
            (Some(Channel::Whatsapp), "+15558675310")
        );
        assert_eq!(
            split_channel_prefix("rcs:+15558675310"),
            (Some(Channel::Rcs), "+15558675310")
        );
        assert_eq!(
            split_channel_prefix("messenger:12345"),
            (Some(Channel::Other), "12345")
        );
        assert_eq!(split_channel_prefix("tel:+1555"), (None, "+1555"));
        assert_eq!(split_channel_prefix("+15558675310"), (None, "+15558675310"));
        assert_eq!(split_channel_prefix("a@b.c"), (None, "a@b.c"));
        assert_eq!(split_channel_prefix(":x"), (None, ":x"));
        assert_eq!(split_channel_prefix("+1:2"), (None, "+1:2"));
    }

    #[test]
    fn phone_is_not_a_delivery_channel() {
        assert_eq!(named_channel("phone"), None);
        assert_eq!(named_channel("PHONE"), None);
        assert_eq!(named_channel(" "), None);
        assert_eq!(named_channel("WHATSAPP"), Some(Channel::Whatsapp));
        assert_eq!(named_channel("APNs"), Some(Channel::Apns));
    }

    #[test]
    fn body_errors_are_short_and_safe() {
        assert_eq!(BodyError::NotJson.to_string(), "body is not valid JSON");
        assert_eq!(
            BodyError::NotArrayOrObject.to_string(),
            "body is neither a JSON array nor a JSON object"
        );
    }
}
