//! Event Streams bodies: CloudEvents 1.0 in JSON, as Twilio's webhook sink posts them.
//!
//! Three families are understood (docs/contract.md, "Event Streams events"):
//! - `com.twilio.comms-api.operation.{scheduled,processing,completed}` → [`EventBody::Operation`];
//! - `com.twilio.comms-api.{message,email,push-notification}.<status>` → an attempt whose kind is
//!   the family and whose status is the rest of the type;
//! - `com.twilio.messaging.message.<status>` → a classic Programmable Messaging attempt, linked to
//!   its operation through `tags["Twilio.operation_info"]` when Twilio put it there.
//!
//! Everything else about the envelope is forgiven: `data` as an object or as a JSON string holding
//! one, snake_case or camelCase keys, a missing or junk `time` (receive time is used instead) and
//! any `datacontenttype`. Unknown members are ignored; a member named twice (in one spelling or
//! both) makes the event malformed. Each event is read once, straight into the borrowed shapes of
//! `cloudevent/wire.rs`.

use std::cell::Cell;
use std::fmt;
use std::time::UNIX_EPOCH;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

mod scan;
mod wire;

use super::{bounded_id, default_messaging_channel, named_channel, BodyError};
use crate::event::{
    AttemptEvent, AttemptStatus, Channel, Event, EventBody, Kind, Phase, SkipReason,
};
use wire::{address_channel, address_text, error_code, id_text, tag_map, tags};
use wire::{Data, Envelope, Loose};

/// Decode the raw body of `POST /twilio/events`: a JSON array of CloudEvents, or one CloudEvent
/// object.
///
/// Fails only when the body cannot be read at all: not JSON (including nesting beyond the parser's
/// recursion limit), or JSON that is neither an array nor an object. Otherwise returns one entry
/// per event, in body order, each decoded on its own: the event, or why it was skipped.
/// `received_ms` (Unix milliseconds) stands in for an event's missing or unusable `time`.
pub fn decode_events(
    body: &[u8],
    received_ms: u64,
) -> Result<Vec<Result<Event, SkipReason>>, BodyError> {
    decode_events_bounded(body, received_ms, usize::MAX)
}

/// [`decode_events`] for a body that may carry at most `max_events` events: a longer array is
/// [`BodyError::TooManyEvents`], refused as soon as element `max_events + 1` has been read and
/// before any event is decoded. An array in the shape Twilio sends is read by hand
/// (`cloudevent/scan.rs`); anything else in one serde pass into at most `max_events` borrowed
/// envelopes; when that pass fails it is split into borrowed raw elements (16 bytes each,
/// bounded by the body size limit) and read element by element. Either way a hostile body
/// cannot make tally build more than `max_events` envelopes or decoded events.
pub fn decode_events_bounded(
    body: &[u8],
    received_ms: u64,
    max_events: usize,
) -> Result<Vec<Result<Event, SkipReason>>, BodyError> {
    // A UTF-8 byte order mark is not JSON, but some proxies add one; it carries no meaning.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let read = decode_batch_by_hand(body, received_ms, max_events)
            .or_else(|| decode_batch_in_one_pass(body, received_ms, max_events));
        return match read {
            Some(decoded) => Ok(decoded),
            None => decode_batch_by_element(body, received_ms, max_events),
        };
    }
    // One event object (or junk): read whole, which also holds it to the parser's depth limit.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => {
            let text = std::str::from_utf8(body).map_err(|_| BodyError::NotJson)?;
            Ok(vec![decode_event(text, received_ms)])
        }
        Ok(_) => Err(BodyError::NotArrayOrObject),
        Err(_) => Err(BodyError::NotJson),
    }
}

/// A batch read by hand (`cloudevent/scan.rs`): its events, `None` where the hand reader gives
/// way to serde. Public, with [`decode_batch_in_one_pass`], for the fuzz target that holds the
/// two readers to one reading.
#[doc(hidden)]
pub fn decode_batch_by_hand(
    body: &[u8],
    received_ms: u64,
    max_events: usize,
) -> Option<Vec<Result<Event, SkipReason>>> {
    scan::read_batch(std::str::from_utf8(body).ok()?, received_ms, max_events)
}

/// A batch read in one pass, each element straight into its envelope and decoded as soon as it
/// is read: what Twilio sends. `None` when that pass fails for any reason (a body that is not
/// UTF-8; an element that is not an object, or names a member twice; a syntax error; more than
/// `max_events` elements; nesting too deep): the body is then split into its elements first and
/// each is read on its own, which tells those apart and skips only the bad elements. Both ways
/// decode each event from the same envelope, so a batch reads the same either way (a test holds
/// them to it); the split costs a second pass over the body.
#[doc(hidden)]
pub fn decode_batch_in_one_pass(
    body: &[u8],
    received_ms: u64,
    max_events: usize,
) -> Option<Vec<Result<Event, SkipReason>>> {
    // The members it skips are not checked for UTF-8 as they are read, and the element by
    // element read refuses a body that is not UTF-8 anywhere: checked whole first.
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let decoded = EnvelopeArray {
        max_events,
        received_ms,
        expected: expected_events(body.len(), max_events),
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(decoded)
}

/// Fewest bytes an Event Streams event takes in a batch (its `type` alone is about 40): room for
/// a body's events is reserved up front from its length, so that the list seldom moves as it
/// grows.
const MIN_EVENT_BYTES: usize = 256;

/// About how many events a batch body of `len` bytes holds, at most `max_events`.
fn expected_events(len: usize, max_events: usize) -> usize {
    (len / MIN_EVENT_BYTES + 1).min(max_events)
}

/// Reads a JSON array of CloudEvent objects, decoding each as it is read (its envelope borrows
/// from the body and is dropped at once), failing on element `max_events + 1`.
struct EnvelopeArray {
    max_events: usize,
    received_ms: u64,
    /// Room reserved for the decoded events.
    expected: usize,
}

impl<'de> DeserializeSeed<'de> for EnvelopeArray {
    type Value = Vec<Result<Event, SkipReason>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeArray {
    type Value = Vec<Result<Event, SkipReason>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of CloudEvent objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut decoded = Vec::with_capacity(self.expected);
        while let Some(ObjectEnvelope(envelope)) = seq.next_element()? {
            if decoded.len() == self.max_events {
                return Err(de::Error::custom("too many events"));
            }
            decoded.push(decode_envelope(&envelope, self.received_ms));
        }
        Ok(decoded)
    }
}

/// An envelope read from a JSON object only: serde's derived structs also read arrays (their
/// fields by position), which an element of the batch read on its own is not allowed to be.
struct ObjectEnvelope<'a>(Envelope<'a>);

impl<'de> serde::Deserialize<'de> for ObjectEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = ObjectEnvelope<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CloudEvent object")
            }

            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ObjectEnvelope)
            }
        }
        d.deserialize_map(Object)
    }
}

/// A batch split into its raw elements first, then each read on its own (see
/// [`decode_batch_in_one_pass`]).
fn decode_batch_by_element(
    body: &[u8],
    received_ms: u64,
    max_events: usize,
) -> Result<Vec<Result<Event, SkipReason>>, BodyError> {
    let elements = split_batch(body, max_events)?;
    let mut decoded = Vec::with_capacity(elements.len());
    for raw in elements {
        decoded.push(decode_element(raw.get(), received_ms).ok_or(BodyError::NotJson)?);
    }
    Ok(decoded)
}

/// The elements of a JSON array body, unread, or why the body is refused.
fn split_batch(body: &[u8], max_events: usize) -> Result<Vec<&RawValue>, BodyError> {
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    BoundedArray {
        max_events,
        too_many: &too_many,
    }
    .deserialize(&mut de)
    .and_then(|elements| de.end().map(|()| elements))
    .map_err(|_| match too_many.get() {
        true => BodyError::TooManyEvents { max: max_events },
        false => BodyError::NotJson,
    })
}

/// Reads a JSON array into raw elements, refusing it as soon as element `max_events + 1` has
/// been read. `too_many` tells that refusal from a syntax error.
struct BoundedArray<'a> {
    max_events: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of CloudEvents")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            if elements.len() == self.max_events {
                self.too_many.set(true);
                return Err(de::Error::custom("too many events"));
            }
            elements.push(element);
        }
        Ok(elements)
    }
}

/// One element of a batch: the event, or why it was skipped. `None` when the element is not an
/// object and nests deeper than the parser's recursion limit: the whole body is then unreadable,
/// as it would be without the surrounding array.
fn decode_element(raw: &str, received_ms: u64) -> Option<Result<Event, SkipReason>> {
    if raw.trim_start().starts_with('{') {
        Some(decode_event(raw, received_ms))
    } else {
        serde_json::from_str::<Value>(raw)
            .ok()
            .map(|_| Err(SkipReason::Malformed))
    }
}

/// First event-time accepted: 2000-01-01T00:00:00Z. Anything earlier is a broken clock.
const MIN_TIME_MS: u64 = 946_684_800_000;
/// First event-time refused: 2201-01-01T00:00:00Z (years up to 2200 are accepted).
const END_TIME_MS: u64 = 7_289_654_400_000;

/// What a CloudEvent `type` says, before `data` is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType<'a> {
    Operation(Phase),
    /// A Comms API attempt event; the status is the type's last segment.
    Attempt {
        kind: Kind,
        status: AttemptStatus,
    },
    /// A classic Messaging attempt event; `status` is the type's last segment, not yet parsed.
    Classic {
        status: &'a str,
    },
}

const OPERATION_PREFIX: &str = "com.twilio.comms-api.operation.";
const CLASSIC_PREFIX: &str = "com.twilio.messaging.message.";
const ATTEMPT_PREFIXES: [(&str, Kind); 5] = [
    ("com.twilio.comms-api.message.", Kind::Messages),
    ("com.twilio.comms-api.email.", Kind::Emails),
    (
        "com.twilio.comms-api.push-notification.",
        Kind::PushNotifications,
    ),
    // No push event type is published yet; accept the other spellings Twilio uses for the
    // family in case the eventual name follows one of them (docs/contract.md).
    (
        "com.twilio.comms-api.push_notification.",
        Kind::PushNotifications,
    ),
    (
        "com.twilio.comms-api.pushnotification.",
        Kind::PushNotifications,
    ),
];

/// `s` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then_some(&s[prefix.len()..])
}

/// Sort an event by its `type`; a Comms API status word is judged here, before `data` is opened.
fn classify(ty: &str) -> Result<EventType<'_>, SkipReason> {
    let ty = ty.trim();
    if let Some(phase) = strip_prefix_ci(ty, OPERATION_PREFIX) {
        let phase = match phase.to_ascii_lowercase().as_str() {
            "scheduled" => Phase::Scheduled,
            "processing" => Phase::Processing,
            "completed" => Phase::Completed,
            _ => return Err(SkipReason::UnknownType),
        };
        return Ok(EventType::Operation(phase));
    }
    if let Some(status) = strip_prefix_ci(ty, CLASSIC_PREFIX) {
        return Ok(EventType::Classic { status });
    }
    let (kind, status) = ATTEMPT_PREFIXES
        .iter()
        .find_map(|&(prefix, kind)| strip_prefix_ci(ty, prefix).map(|status| (kind, status)))
        .ok_or(SkipReason::UnknownType)?;
    let status = attempt_status(status, kind)?;
    Ok(EventType::Attempt { kind, status })
}

/// A delivery status, or [`SkipReason::UnknownStatus`]. `opened` is an e-mail status only: on a
/// message or push attempt it is not a delivery state tally can place.
fn attempt_status(word: &str, kind: Kind) -> Result<AttemptStatus, SkipReason> {
    match AttemptStatus::parse(word) {
        Some(AttemptStatus::Opened) if kind != Kind::Emails => Err(SkipReason::UnknownStatus),
        Some(status) => Ok(status),
        None => Err(SkipReason::UnknownStatus),
    }
}

/// Decode one event object.
fn decode_event(raw: &str, received_ms: u64) -> Result<Event, SkipReason> {
    let envelope: Envelope = serde_json::from_str(raw).map_err(|_| SkipReason::Malformed)?;
    decode_envelope(&envelope, received_ms)
}

/// The event an envelope holds, or why it is skipped.
fn decode_envelope(envelope: &Envelope<'_>, received_ms: u64) -> Result<Event, SkipReason> {
    // `type` is the one required attribute tally cannot do without.
    let ty = envelope
        .ty
        .as_ref()
        .and_then(Loose::as_text)
        .ok_or(SkipReason::Malformed)?;
    let ty = classify(ty)?;
    // Absent or `null` data reads as empty, so the event fails on the id it lacks rather than as
    // malformed; a JSON string holding an object reads as that object.
    let body = match &envelope.data {
        None => event_body(ty, &Data::default()),
        Some(Loose::Object(data)) => event_body(ty, data),
        Some(Loose::Text(text)) => match serde_json::from_str::<Loose<Data>>(text) {
            Ok(Loose::Object(data)) => event_body(ty, &data),
            _ => Err(SkipReason::Malformed),
        },
        Some(_) => Err(SkipReason::Malformed),
    }?;
    let time = envelope.time.as_ref().and_then(Loose::as_text);
    Ok(Event {
        time_ms: event_time_ms(time, received_ms),
        body,
    })
}

/// What an event of type `ty` says, read from its `data`.
fn event_body(ty: EventType<'_>, data: &Data<'_>) -> Result<EventBody, SkipReason> {
    Ok(match ty {
        EventType::Operation(phase) => EventBody::Operation {
            operation_id: bounded_id(id_text(data.operation_id.as_ref()))?
                .ok_or(SkipReason::MissingId)?,
            // Operation events carry only `operation_id`, so the kind is left to whichever
            // attempt event names it.
            kind: None,
            phase,
        },
        EventType::Attempt { kind, status } => {
            EventBody::Attempt(attempt_event(Family::Comms(kind), status, data)?)
        }
        EventType::Classic { status } => {
            // `messageStatus` is the authoritative status of the moment; the type suffix stands
            // in when it is missing.
            let word = data
                .message_status
                .as_ref()
                .and_then(Loose::as_text)
                .unwrap_or(status);
            let status = attempt_status(word, Kind::Messages)?;
            EventBody::Attempt(attempt_event(Family::Classic, status, data)?)
        }
    })
}

/// Which family an attempt event belongs to: the two spell their ids and channels differently.
#[derive(Clone, Copy)]
enum Family {
    /// `com.twilio.comms-api.{message,email,push-notification}.*`.
    Comms(Kind),
    /// `com.twilio.messaging.message.*`.
    Classic,
}

/// The attempt an event of `family` reports.
fn attempt_event(
    family: Family,
    status: AttemptStatus,
    data: &Data<'_>,
) -> Result<AttemptEvent, SkipReason> {
    // A classic event links to its operation through a tag; explicit fields, should a future
    // schema carry them, win over it.
    let [info_operation, info_resource, info_attempt] = match family {
        Family::Classic => operation_info(data),
        Family::Comms(_) => Default::default(),
    };
    // The first of the alternative members present counts, even when it is junk.
    let resource = match family {
        Family::Comms(Kind::Emails) => data.email_id.as_ref(),
        Family::Comms(Kind::PushNotifications) => data
            .push_notification_id
            .as_ref()
            .or(data.notification_id.as_ref()),
        Family::Comms(Kind::Messages) | Family::Classic => data.message_id.as_ref(),
    };
    let downstream = match family {
        Family::Comms(_) => data.downstream_id.as_ref(),
        Family::Classic => data.message_sid.as_ref().or(data.sms_sid.as_ref()),
    };
    let operation_id = bounded_id(id_text(data.operation_id.as_ref()).or(info_operation))?;
    let resource_id = bounded_id(id_text(resource).or(info_resource))?;
    let downstream_id = bounded_id(id_text(downstream))?;
    let attempt = bounded_id(id_text(data.attempt.as_ref()).or(info_attempt))?;
    if operation_id.is_none() && resource_id.is_none() && downstream_id.is_none() {
        return Err(SkipReason::MissingId);
    }
    let (from, to) = (data.from.as_ref(), data.to.as_ref());
    let (kind, channel) = match family {
        // `from.channel` names the sender channel (SMS, RCS, WHATSAPP); a recipient's channel is
        // often just `phone`, which names no delivery channel, so the sender is asked first.
        Family::Comms(kind) => (
            Some(kind),
            address_channel(from)
                .or_else(|| address_channel(to))
                .or_else(|| text_channel(data.channel.as_ref()))
                .or((kind == Kind::Emails).then_some(Channel::Email)),
        ),
        Family::Classic => (
            resource_id.as_deref().and_then(Kind::from_resource_id),
            Some(
                text_channel(data.channel_prefix.as_ref())
                    .or_else(|| address_channel(from))
                    .or_else(|| address_channel(to))
                    .unwrap_or_else(|| default_messaging_channel(downstream_id.as_deref())),
            ),
        ),
    };
    Ok(AttemptEvent {
        kind,
        operation_id,
        resource_id,
        downstream_id,
        attempt,
        channel,
        status,
        error_code: error_code(data.error_code.as_ref()),
        to: address_text(to),
        tags: tags(data),
    })
}

/// A channel named by a string member (`channel`, `channelPrefix`).
fn text_channel(value: Option<&Loose<'_>>) -> Option<Channel> {
    value.and_then(Loose::as_text).and_then(named_channel)
}

/// The tag Twilio puts on classic attempts created by a Comms API send.
const OPERATION_INFO_TAG: &str = "Twilio.operation_info";

/// `comms_operation_…,comms_message_…,attempt` split into its three parts; blanks are absent.
fn operation_info(data: &Data<'_>) -> [Option<String>; 3] {
    let info = tag_map(data)
        .and_then(|tags| tags.get(OPERATION_INFO_TAG))
        .and_then(Loose::as_text)
        .unwrap_or_default();
    let mut parts = info
        .split(',')
        .map(str::trim)
        .map(|part| (!part.is_empty()).then(|| part.to_owned()));
    [(); 3].map(|()| parts.next().flatten())
}

/// The event time: `time` when it is an RFC 3339 timestamp between the years 2000 and 2200, else
/// the receive time.
fn event_time_ms(time: Option<&str>, received_ms: u64) -> u64 {
    time.and_then(parse_time_ms)
        .filter(|ms| (MIN_TIME_MS..END_TIME_MS).contains(ms))
        .unwrap_or(received_ms)
}

/// RFC 3339 (`2025-01-01T00:00:00.000Z`, lowercase `t`/`z`, or a `±hh:mm` offset) to Unix ms.
fn parse_time_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    // Longer than any sane timestamp (nanoseconds and an offset fit in 35 bytes).
    if text.len() > 64 || !text.is_ascii() {
        return None;
    }
    let text = text.to_ascii_uppercase();
    // humantime reads UTC only (`Z` or `+00:00`): fold any other offset in by hand.
    let (utc_text, offset_ms) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((local, offset)) if local.len() >= 19 && is_offset(offset) => {
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (
                format!("{local}Z"),
                sign * (hours * 3_600_000 + minutes * 60_000),
            )
        }
        _ => (text, 0),
    };
    let local = humantime::parse_rfc3339(&utc_text).ok()?;
    let local_ms = i64::try_from(local.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
    u64::try_from(local_ms.checked_sub(offset_ms)?).ok()
}

/// `+hh:mm` or `-hh:mm`, two ASCII digits each.
fn is_offset(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[3] == b':'
        && [b[1], b[2], b[4], b[5]].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::MAX_ID_BYTES;
    use crate::ingest::MAX_TAGS;

    /// A fixed receive time: 2023-11-14T22:13:20Z.
    const RX: u64 = 1_700_000_000_000;
    const OP: &str = "comms_operation_01h9krwprkeee8fzqspvwy6nq8";
    const MSG: &str = "comms_message_01h9krwprkeee8fzqspvwy6nq8";
    const EMAIL: &str = "comms_email_01h9krwprkeee8fzqspvwy6nq8";
    const PUSH: &str = "comms_pushnotification_01h9krwprkeee8fzqspvwy6nq8";

    /// Decode a body that must hold exactly one event.
    fn one(body: Value) -> Result<Event, SkipReason> {
        let mut events = decode_events(body.to_string().as_bytes(), RX).expect("readable body");
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    fn attempt(body: Value) -> AttemptEvent {
        match one(body).expect("decodes").body {
            EventBody::Attempt(attempt) => attempt,
            other => panic!("not an attempt: {other:?}"),
        }
    }

    fn comms(ty: &str, data: Value) -> Value {
        json!({"specversion": "1.0", "type": ty, "source": "/x", "id": "EV1",
               "datacontenttype": "application/json", "time": "2025-01-01T00:00:00.000Z",
               "data": data})
    }

    fn message_data() -> Value {
        json!({"operation_id": OP, "message_id": MSG, "account_sid": "AC1",
               "downstream_id": "SM0123", "attempt": "1",
               "from": {"address": "+15017122661", "channel": "SMS"},
               "to": {"address": "+15558675310", "channel": "phone"},
               "tags": {"campaign": "spring"}})
    }

    /// 2025-01-01T00:00:00Z in Unix ms.
    const T2025: u64 = 1_735_689_600_000;

    #[test]
    fn operation_events_set_the_phase() {
        for (word, phase) in [
            ("scheduled", Phase::Scheduled),
            ("processing", Phase::Processing),
            ("completed", Phase::Completed),
        ] {
            let ty = format!("com.twilio.comms-api.operation.{word}");
            let event = one(comms(&ty, json!({"operation_id": OP}))).unwrap();
            assert_eq!(
                event,
                Event {
                    time_ms: T2025,
                    body: EventBody::Operation {
                        operation_id: OP.into(),
                        kind: None,
                        phase
                    }
                }
            );
        }
    }

    #[test]
    fn operation_event_without_an_operation_id_is_missing_id() {
        let ty = "com.twilio.comms-api.operation.completed";
        assert_eq!(one(comms(ty, json!({}))), Err(SkipReason::MissingId));
        assert_eq!(
            one(comms(ty, json!({"operation_id": ""}))),
            Err(SkipReason::MissingId)
        );
        assert_eq!(
            one(comms(ty, json!({"operation_id": {}}))),
            Err(SkipReason::MissingId)
        );
        assert_eq!(
            one(json!({"type": ty})),
            Err(SkipReason::MissingId),
            "absent data reads as empty"
        );
    }

    #[test]
    fn an_unpublished_operation_phase_is_an_unknown_type() {
        let ty = "com.twilio.comms-api.operation.canceled";
        assert_eq!(
            one(comms(ty, json!({"operation_id": OP}))),
            Err(SkipReason::UnknownType)
        );
    }

    #[test]
    fn a_message_event_carries_every_field() {
        let got = attempt(comms(
            "com.twilio.comms-api.message.delivered",
            message_data(),
        ));
        assert_eq!(
            got,
            AttemptEvent {
                kind: Some(Kind::Messages),
                operation_id: Some(OP.into()),
                resource_id: Some(MSG.into()),
                downstream_id: Some("SM0123".into()),
                attempt: Some("1".into()),
                channel: Some(Channel::Sms),
                status: AttemptStatus::Delivered,
                error_code: None,
                to: Some("+15558675310".into()),
                tags: vec![("campaign".into(), "spring".into())],
            }
        );
    }

    #[test]
    fn every_message_status_is_read_from_the_type() {
        for (word, status) in [
            ("queued", AttemptStatus::Queued),
            ("sent", AttemptStatus::Sent),
            ("delivered", AttemptStatus::Delivered),
            ("undelivered", AttemptStatus::Undelivered),
            ("failed", AttemptStatus::Failed),
            ("read", AttemptStatus::Read),
        ] {
            let ty = format!("com.twilio.comms-api.message.{word}");
            let got = attempt(comms(&ty, message_data()));
            assert_eq!(got.status, status, "{ty}");
            assert_eq!(got.kind, Some(Kind::Messages));
        }
    }

    #[test]
    fn email_events_include_opened() {
        let data = json!({"operation_id": OP, "email_id": EMAIL,
                          "to": {"address": "a@example.com", "name": "A"}});
        for (word, status) in [
            ("queued", AttemptStatus::Queued),
            ("sent", AttemptStatus::Sent),
            ("delivered", AttemptStatus::Delivered),
            ("undelivered", AttemptStatus::Undelivered),
            ("failed", AttemptStatus::Failed),
            ("opened", AttemptStatus::Opened),
        ] {
            let ty = format!("com.twilio.comms-api.email.{word}");
            let got = attempt(comms(&ty, data.clone()));
            assert_eq!(got.status, status);
            assert_eq!(got.kind, Some(Kind::Emails));
            assert_eq!(got.resource_id.as_deref(), Some(EMAIL));
            assert_eq!(got.channel, Some(Channel::Email), "an email goes by email");
            assert_eq!(got.to.as_deref(), Some("a@example.com"));
        }
    }

    #[test]
    fn opened_is_an_email_status_only() {
        let ty = "com.twilio.comms-api.message.opened";
        assert_eq!(
            one(comms(ty, message_data())),
            Err(SkipReason::UnknownStatus)
        );
    }

    #[test]
    fn push_events_take_their_channel_from_the_provider() {
        let data = json!({"operationId": OP, "pushNotificationId": PUSH,
                          "to": {"token": "tok", "provider": "APNs"}});
        let got = attempt(comms("com.twilio.comms-api.push-notification.sent", data));
        assert_eq!(got.kind, Some(Kind::PushNotifications));
        assert_eq!(got.status, AttemptStatus::Sent);
        assert_eq!(got.resource_id.as_deref(), Some(PUSH));
        assert_eq!(got.channel, Some(Channel::Apns));
        assert_eq!(got.to, None, "device tokens are not addresses");

        let data = json!({"operation_id": OP, "notification_id": "comms_notification_1"});
        let got = attempt(comms("com.twilio.comms-api.push-notification.failed", data));
        assert_eq!(got.resource_id.as_deref(), Some("comms_notification_1"));
    }

    #[test]
    fn camel_case_and_snake_case_keys_decode_alike() {
        let snake = json!({"operation_id": OP, "message_id": MSG, "downstream_id": "SM1",
                           "attempt": "2", "error_code": "30003",
                           "from": {"address": "+1", "channel": "RCS"}});
        let camel = json!({"operationId": OP, "messageId": MSG, "downstreamId": "SM1",
                           "attempt": "2", "errorCode": "30003",
                           "from": {"address": "+1", "channel": "RCS"}});
        let ty = "com.twilio.comms-api.message.failed";
        let got = attempt(comms(ty, snake.clone()));
        assert_eq!(got, attempt(comms(ty, camel)));
        assert_eq!(got.error_code, Some(30003));
        assert_eq!(got.channel, Some(Channel::Rcs));

        let snake_email = json!({"operation_id": OP, "email_id": EMAIL});
        let camel_email = json!({"operationId": OP, "emailId": EMAIL});
        let ty = "com.twilio.comms-api.email.sent";
        assert_eq!(
            attempt(comms(ty, snake_email)),
            attempt(comms(ty, camel_email))
        );
    }

    #[test]
    fn data_may_be_a_json_string_holding_an_object() {
        let ty = "com.twilio.comms-api.message.sent";
        let as_object = one(comms(ty, message_data()));
        let as_string = one(comms(ty, Value::String(message_data().to_string())));
        assert_eq!(as_object, as_string);
        assert!(as_object.is_ok());
    }

    #[test]
    fn a_member_named_twice_makes_only_that_event_malformed() {
        let ty = "com.twilio.comms-api.message.sent";
        let good = comms(ty, message_data()).to_string();
        let both_spellings = comms(ty, json!({"operation_id": OP, "operationId": OP})).to_string();
        let same_name_twice =
            format!(r#"{{"type":"{ty}","data":{{"message_id":"{MSG}","message_id":"{MSG}"}}}}"#);
        let type_twice = format!(r#"{{"type":"{ty}","type":"{ty}","data":{{"message_id":"m"}}}}"#);
        let body = format!("[{good},{both_spellings},{same_name_twice},{type_twice},{good}]");
        let got = decode_events(body.as_bytes(), RX).unwrap();
        assert!(got[0].is_ok() && got[4].is_ok());
        assert_eq!(got[1..4], [const { Err(SkipReason::Malformed) }; 3]);
    }

    #[test]
    fn a_tag_named_twice_keeps_its_last_value() {
        let ty = "com.twilio.comms-api.message.sent";
        let body = format!(
            r#"[{{"type":"{ty}","data":{{"message_id":"m","tags":{{"a":"1","a":"2"}}}}}}]"#
        );
        let got = decode_events(body.as_bytes(), RX)
            .unwrap()
            .remove(0)
            .unwrap();
        let EventBody::Attempt(got) = got.body else {
            panic!("not an attempt")
        };
        assert_eq!(got.tags, vec![("a".into(), "2".into())]);
    }

    #[test]
    fn floats_read_as_json_prints_them() {
        let ty = "com.twilio.comms-api.message.sent";
        let got = attempt(comms(
            ty,
            json!({"message_id": MSG, "attempt": 1.5, "tags": {"x": 2.5, "big": 1e300}}),
        ));
        assert_eq!(got.attempt.as_deref(), Some("1.5"));
        assert_eq!(
            got.tags,
            vec![("big".into(), "1e+300".into()), ("x".into(), "2.5".into())]
        );
    }

    #[test]
    fn white_space_and_unknown_members_at_any_depth_are_ignored() {
        let ty = "com.twilio.comms-api.message.sent";
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let event =
            format!(r#"{{"type":"{ty}","x":{deep},"data":{{"message_id":"m","y":{deep}}}}}"#);
        let body = format!(" [ \n{event} ,\t{event}\r\n] ");
        let got = decode_events(body.as_bytes(), RX).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(Result::is_ok), "{got:?}");
    }

    #[test]
    fn data_that_is_not_an_object_is_malformed() {
        let ty = "com.twilio.comms-api.message.sent";
        for data in [
            json!(1),
            json!([1]),
            json!(true),
            json!("[1]"),
            json!("not json"),
            json!(""),
        ] {
            assert_eq!(one(comms(ty, data)), Err(SkipReason::Malformed));
        }
    }

    #[test]
    fn a_single_object_and_a_one_element_array_decode_alike() {
        let event = comms("com.twilio.comms-api.message.sent", message_data());
        let single = decode_events(event.to_string().as_bytes(), RX).unwrap();
        let batch = decode_events(json!([event]).to_string().as_bytes(), RX).unwrap();
        assert_eq!(single, batch);
        assert_eq!(single.len(), 1);
        assert!(decode_events(b"[]", RX).unwrap().is_empty());
    }

    #[test]
    fn time_is_used_when_valid_and_receive_time_otherwise() {
        let ty = "com.twilio.comms-api.operation.processing";
        let at = |time: Value| {
            let mut event = comms(ty, json!({"operation_id": OP}));
            event["time"] = time;
            one(event).unwrap().time_ms
        };
        assert_eq!(at(json!("2025-01-01T00:00:00Z")), T2025);
        assert_eq!(at(json!("2025-01-01T00:00:00.250Z")), T2025 + 250);
        assert_eq!(at(json!("2025-01-01t00:00:00z")), T2025);
        assert_eq!(at(json!("2025-01-01T02:30:00+02:30")), T2025);
        assert_eq!(at(json!("2024-12-31T19:00:00.5-05:00")), T2025 + 500);
        assert_eq!(at(json!("2025-01-01T00:00:00+00:00")), T2025);
        // Junk, absent, wrong type, no zone, out-of-range offsets and absurd years.
        for junk in [
            json!("yesterday"),
            json!(""),
            json!(null),
            json!(1_735_689_600),
            json!({"t": 1}),
            json!("2025-01-01 00:00:00"),
            json!("2025-01-01T00:00:00+24:00"),
            json!("2025-01-01T00:00:00+-1:00"),
            json!("2025-01-01T00:00:00+01:+1"),
            json!("2025-13-01T00:00:00Z"),
            json!("1970-01-01T00:00:00Z"),
            json!("1999-12-31T23:59:59.999Z"),
            json!("2201-01-01T00:00:00Z"),
            json!("9999-12-31T23:59:59Z"),
            json!("2025-01-01T00:00:00ÅZ"),
        ] {
            assert_eq!(at(junk.clone()), RX, "{junk}");
        }
        assert_eq!(at(json!("2000-01-01T00:00:00Z")), MIN_TIME_MS);
        assert_eq!(at(json!("2200-12-31T23:59:59.999Z")), END_TIME_MS - 1);
        let mut missing = comms(ty, json!({"operation_id": OP}));
        missing.as_object_mut().unwrap().remove("time");
        assert_eq!(one(missing).unwrap().time_ms, RX);
    }

    #[test]
    fn junk_datacontenttype_and_extra_fields_are_ignored() {
        let mut event = comms("com.twilio.comms-api.message.sent", message_data());
        event["datacontenttype"] = json!("2025-10-08T07:17:02.363Z");
        event["extension"] = json!({"anything": [1, 2, 3]});
        event["data"]["brand_new_field"] = json!(42);
        assert!(one(event).is_ok());
    }

    #[test]
    fn a_bad_element_is_skipped_while_the_rest_of_the_batch_decodes() {
        let good = comms("com.twilio.comms-api.message.sent", message_data());
        let body = json!([
            good,
            17,
            "text",
            null,
            {"no_type": true},
            {"type": 5},
            comms("com.twilio.comms-api.message.sent", json!(12)),
            comms("com.twilio.voice.call.completed", json!({})),
            comms("com.twilio.comms-api.message.receiving", message_data()),
            comms("com.twilio.comms-api.message.sent", json!({"attempt": "1"})),
            good,
        ]);
        let got = decode_events(body.to_string().as_bytes(), RX).unwrap();
        let skips: Vec<_> = got.iter().map(|r| r.as_ref().err().copied()).collect();
        assert_eq!(
            skips,
            vec![
                None,
                Some(SkipReason::Malformed),
                Some(SkipReason::Malformed),
                Some(SkipReason::Malformed),
                Some(SkipReason::Malformed),
                Some(SkipReason::Malformed),
                Some(SkipReason::Malformed),
                Some(SkipReason::UnknownType),
                Some(SkipReason::UnknownStatus),
                Some(SkipReason::MissingId),
                None,
            ]
        );
        assert_eq!(got[0], got[10]);
    }

    #[test]
    fn unknown_types_are_skipped() {
        for ty in [
            "com.twilio.messaging.inbound-message.received",
            "com.twilio.voice.status-callback.call.completed",
            "com.twilio.comms-api.sender.created",
            "com.twilio.comms-api.message",
            "",
        ] {
            assert_eq!(
                one(comms(ty, message_data())),
                Err(SkipReason::UnknownType),
                "{ty}"
            );
        }
    }

    #[test]
    fn type_matching_ignores_ascii_case() {
        let got = attempt(comms(
            "COM.Twilio.Comms-API.Message.DELIVERED",
            message_data(),
        ));
        assert_eq!(got.status, AttemptStatus::Delivered);
    }

    #[test]
    fn statuses_that_are_not_delivery_states_are_unknown() {
        for word in [
            "receiving",
            "received",
            "partially_delivered",
            "inbound-received",
            "group",
        ] {
            let ty = format!("com.twilio.comms-api.message.{word}");
            assert_eq!(
                one(comms(&ty, message_data())),
                Err(SkipReason::UnknownStatus),
                "{ty}"
            );
            let ty = format!("com.twilio.messaging.message.{word}");
            assert_eq!(
                one(comms(&ty, json!({"messageSid": "SM1"}))),
                Err(SkipReason::UnknownStatus),
                "{ty}"
            );
        }
        let classic = json!({"messageSid": "SM1", "messageStatus": "PARTIALLY_DELIVERED"});
        assert_eq!(
            one(comms("com.twilio.messaging.message.delivered", classic)),
            Err(SkipReason::UnknownStatus),
            "messageStatus wins over the type suffix"
        );
    }

    fn classic_data() -> Value {
        json!({"messageSid": "SM0a1b", "timestamp": "2025-01-01T00:00:01Z", "accountSid": "AC1",
               "eventName": "com.twilio.messaging.message.delivered", "apiVersion": "2010-04-01",
               "from": "+15017122661", "to": "+15558675310", "messageStatus": "DELIVERED",
               "errorCode": null, "numberOfSegments": 1,
               "tags": {"Twilio.operation_info": format!("{OP},{MSG},2"), "campaign": "spring"}})
    }

    #[test]
    fn a_classic_event_is_linked_through_the_operation_info_tag() {
        let got = attempt(comms(
            "com.twilio.messaging.message.delivered",
            classic_data(),
        ));
        assert_eq!(
            got,
            AttemptEvent {
                kind: Some(Kind::Messages),
                operation_id: Some(OP.into()),
                resource_id: Some(MSG.into()),
                downstream_id: Some("SM0a1b".into()),
                attempt: Some("2".into()),
                channel: Some(Channel::Sms),
                status: AttemptStatus::Delivered,
                error_code: None,
                to: Some("+15558675310".into()),
                tags: vec![
                    ("Twilio.operation_info".into(), format!("{OP},{MSG},2")),
                    ("campaign".into(), "spring".into()),
                ],
            }
        );
    }

    #[test]
    fn a_classic_event_without_the_tag_stays_unlinked() {
        let data = json!({"messageSid": "MM99", "messageStatus": "SENT", "to": "+1555"});
        let got = attempt(comms("com.twilio.messaging.message.sent", data));
        assert_eq!(got.operation_id, None);
        assert_eq!(got.resource_id, None);
        assert_eq!(got.kind, None, "kind comes only from a linked resource id");
        assert_eq!(got.downstream_id.as_deref(), Some("MM99"));
        assert_eq!(got.channel, Some(Channel::Mms), "an MM… SID is MMS");
        assert_eq!(got.status, AttemptStatus::Sent);

        let partial = json!({"messageSid": "SM1", "tags": {"Twilio.operation_info": OP}});
        let got = attempt(comms("com.twilio.messaging.message.queued", partial));
        assert_eq!(got.operation_id.as_deref(), Some(OP));
        assert_eq!(got.resource_id, None);
        assert_eq!(
            got.status,
            AttemptStatus::Queued,
            "status from the type suffix"
        );
    }

    #[test]
    fn a_classic_event_with_no_id_at_all_is_missing_id() {
        let data = json!({"messageStatus": "SENT", "tags": {"Twilio.operation_info": ",,"}});
        assert_eq!(
            one(comms("com.twilio.messaging.message.sent", data)),
            Err(SkipReason::MissingId)
        );
    }

    #[test]
    fn classic_channels_come_from_the_prefix_field_then_the_addresses() {
        let ty = "com.twilio.messaging.message.read";
        let channel = |data: Value| attempt(comms(ty, data)).channel;
        assert_eq!(
            channel(json!({"messageSid": "SM1", "from": "whatsapp:+1", "to": "whatsapp:+2"})),
            Some(Channel::Whatsapp)
        );
        assert_eq!(
            channel(json!({"messageSid": "SM1", "from": "+1", "to": "rcs:+2"})),
            Some(Channel::Rcs)
        );
        assert_eq!(
            channel(json!({"messageSid": "SM1", "channelPrefix": "rcs", "to": "+2"})),
            Some(Channel::Rcs)
        );
        assert_eq!(channel(json!({"messageSid": "SM1"})), Some(Channel::Sms));
        let got = attempt(comms(ty, json!({"messageSid": "SM1", "to": "whatsapp:+2"})));
        assert_eq!(
            got.to.as_deref(),
            Some("+2"),
            "the prefix is not part of the address"
        );
    }

    #[test]
    fn comms_channels_prefer_the_sender_and_ignore_phone() {
        let ty = "com.twilio.comms-api.message.sent";
        let channel = |from: Value, to: Value| {
            attempt(comms(
                ty,
                json!({"message_id": MSG, "from": from, "to": to}),
            ))
            .channel
        };
        let phone = json!({"address": "+2", "channel": "phone"});
        assert_eq!(
            channel(
                json!({"address": "+1", "channel": "WHATSAPP"}),
                phone.clone()
            ),
            Some(Channel::Whatsapp)
        );
        assert_eq!(channel(json!(null), phone.clone()), None);
        assert_eq!(
            channel(json!({"address": "+1", "channel": "PHONE"}), phone),
            None
        );
        assert_eq!(
            channel(json!(null), json!({"address": "+2", "channel": "RCS"})),
            Some(Channel::Rcs)
        );
        assert_eq!(
            channel(
                json!({"address": "+1", "channel": "SMS"}),
                json!({"address": "+2", "channel": "RCS"})
            ),
            Some(Channel::Sms)
        );
        assert_eq!(
            channel(
                json!({"address": "+1", "channel": "carrier-pigeon"}),
                json!(null)
            ),
            Some(Channel::Other)
        );
    }

    #[test]
    fn error_codes_may_be_strings_or_integers() {
        let ty = "com.twilio.messaging.message.failed";
        let code = |value: Value| {
            attempt(comms(ty, json!({"messageSid": "SM1", "errorCode": value}))).error_code
        };
        assert_eq!(code(json!(30008)), Some(30008));
        assert_eq!(code(json!("30008")), Some(30008));
        assert_eq!(code(json!(0)), None);
        assert_eq!(code(json!("")), None);
        assert_eq!(code(json!("E30008")), None);
        assert_eq!(code(json!(-5)), None);
        assert_eq!(code(json!(30008.5)), None);
        assert_eq!(code(json!(u64::MAX)), None);
        assert_eq!(code(json!([30008])), None);

        let ty = "com.twilio.comms-api.message.failed";
        let got = attempt(comms(ty, json!({"message_id": MSG, "error_code": 30003})));
        assert_eq!(got.error_code, Some(30003));
    }

    #[test]
    fn attempt_may_be_a_number() {
        let ty = "com.twilio.comms-api.message.sent";
        let got = attempt(comms(ty, json!({"message_id": MSG, "attempt": 3})));
        assert_eq!(got.attempt.as_deref(), Some("3"));
    }

    #[test]
    fn an_attempt_event_needs_some_id() {
        let ty = "com.twilio.comms-api.message.sent";
        assert_eq!(
            one(comms(ty, json!({"attempt": "1"}))),
            Err(SkipReason::MissingId)
        );
        for data in [
            json!({"operation_id": OP}),
            json!({"message_id": MSG}),
            json!({"downstream_id": "SM1"}),
        ] {
            assert!(one(comms(ty, data)).is_ok());
        }
    }

    #[test]
    fn ids_longer_than_the_bound_are_rejected() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let ty = "com.twilio.comms-api.message.sent";
        for key in ["operation_id", "message_id", "downstream_id", "attempt"] {
            let mut data = message_data();
            data[key] = json!(long);
            assert_eq!(one(comms(ty, data)), Err(SkipReason::IdTooLong), "{key}");
        }
        let camel = json!({"operationId": OP, "messageId": long});
        assert_eq!(one(comms(ty, camel)), Err(SkipReason::IdTooLong));
        let op = "com.twilio.comms-api.operation.completed";
        assert_eq!(
            one(comms(op, json!({"operation_id": long}))),
            Err(SkipReason::IdTooLong)
        );
        let classic = "com.twilio.messaging.message.sent";
        let tag =
            json!({"messageSid": "SM1", "tags": {"Twilio.operation_info": format!("{long},m,1")}});
        assert_eq!(one(comms(classic, tag)), Err(SkipReason::IdTooLong));
        let at_bound = "x".repeat(MAX_ID_BYTES);
        assert!(one(comms(ty, json!({"message_id": at_bound}))).is_ok());
    }

    #[test]
    fn tags_are_stringified_and_bounded() {
        let mut tag_map = serde_json::Map::new();
        tag_map.insert("n".into(), json!(7));
        tag_map.insert("b".into(), json!(true));
        tag_map.insert("null".into(), json!(null));
        tag_map.insert("obj".into(), json!({"a": 1}));
        tag_map.insert("long".into(), json!("v".repeat(300)));
        let got = attempt(comms(
            "com.twilio.comms-api.message.sent",
            json!({"message_id": MSG, "tags": tag_map}),
        ));
        let mut tags = got.tags;
        tags.sort();
        assert_eq!(
            tags,
            vec![("b".into(), "true".into()), ("n".into(), "7".into())]
        );

        let many: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("k{i:03}"), json!("v"))).collect();
        let got = attempt(comms(
            "com.twilio.comms-api.message.sent",
            json!({"message_id": MSG, "tags": many}),
        ));
        assert_eq!(got.tags.len(), MAX_TAGS);
    }

    #[test]
    fn a_long_address_is_dropped_not_fatal() {
        let to = json!({"address": "1".repeat(MAX_ID_BYTES + 1), "channel": "phone"});
        let got = attempt(comms(
            "com.twilio.comms-api.message.sent",
            json!({"message_id": MSG, "to": to}),
        ));
        assert_eq!(got.to, None);
    }

    #[test]
    fn unreadable_bodies_are_body_errors() {
        for body in [
            &b""[..],
            b"   ",
            b"not json",
            b"{",
            b"[1,",
            b"\xff\xfe",
            b"{\"a\":1} x",
        ] {
            assert_eq!(decode_events(body, RX), Err(BodyError::NotJson));
        }
        for body in [&b"1"[..], b"\"text\"", b"null", b"true", b"-0.5"] {
            assert_eq!(decode_events(body, RX), Err(BodyError::NotArrayOrObject));
        }
    }

    #[test]
    fn a_batch_longer_than_the_bound_is_refused_whole_and_early() {
        let event = comms("com.twilio.comms-api.message.sent", message_data());
        let three = json!([event, event, event]).to_string();
        assert_eq!(
            decode_events_bounded(three.as_bytes(), RX, 3)
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            decode_events_bounded(three.as_bytes(), RX, 2),
            Err(BodyError::TooManyEvents { max: 2 })
        );
        // Parsing stops at element max + 1: what follows is never looked at, even junk.
        assert_eq!(
            decode_events_bounded(b"[{},{},{} this is never read", RX, 2),
            Err(BodyError::TooManyEvents { max: 2 })
        );
        // Junk before the bound is still junk; a single object counts as one event.
        assert_eq!(
            decode_events_bounded(b"[{},x", RX, 2),
            Err(BodyError::NotJson)
        );
        let single = event.to_string();
        assert_eq!(
            decode_events_bounded(single.as_bytes(), RX, 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(decode_events_bounded(b"[]", RX, 1), Ok(vec![]));
        assert_eq!(
            decode_events_bounded(b"\"x\\n\"", RX, 1),
            Err(BodyError::NotArrayOrObject)
        );
    }

    #[test]
    fn a_byte_order_mark_is_tolerated() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(
            comms("com.twilio.comms-api.message.sent", message_data())
                .to_string()
                .as_bytes(),
        );
        assert!(decode_events(&body, RX).unwrap()[0].is_ok());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(
            decode_events(deep(100_000).as_bytes(), RX),
            Err(BodyError::NotJson)
        );
        let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert_eq!(
            decode_events(deep_object.as_bytes(), RX),
            Err(BodyError::NotJson)
        );
        // Nesting hidden inside a `data` string is the element's problem only.
        let event = comms(
            "com.twilio.comms-api.message.sent",
            Value::String(deep(100_000)),
        );
        assert_eq!(one(event), Err(SkipReason::Malformed));
    }

    /// Arbitrary JSON, biased toward the keys and words this module looks at so the proptest
    /// reaches past the first `match`.
    fn arb_json() -> impl Strategy<Value = Value> {
        arb_json_of(false)
    }

    /// Like [`arb_json`], but only with leaves the hand reader takes wherever they are (no
    /// escapes in strings, no numbers but non-negative integers) and no `data` smuggled in as a
    /// string, so that most batches of it are read by hand.
    fn arb_tame_json() -> impl Strategy<Value = Value> {
        arb_json_of(true)
    }

    /// An envelope of a type tally reads, its `data` from `data` and its `time` from the regex
    /// `time`.
    fn arb_envelope(
        data: impl Strategy<Value = Value>,
        time: &'static str,
    ) -> impl Strategy<Value = Value> {
        let types = prop::sample::select(vec![
            "com.twilio.comms-api.message.delivered",
            "com.twilio.comms-api.email.opened",
            "com.twilio.comms-api.operation.completed",
            "com.twilio.messaging.message.sent",
        ]);
        (types, data, time)
            .prop_map(|(ty, data, time)| json!({"type": ty, "time": time, "data": data}))
    }

    /// A `data` object of the members tally reads (in both spellings), each holding a leaf the
    /// hand reader takes or an object, so that every case puts the reading of members to work.
    fn arb_tame_data() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "operation_id",
            "operationId",
            "message_id",
            "messageId",
            "email_id",
            "emailId",
            "push_notification_id",
            "pushNotificationId",
            "notification_id",
            "notificationId",
            "downstream_id",
            "downstreamId",
            "attempt",
            "error_code",
            "errorCode",
            "channel",
            "from",
            "to",
            "tags",
            "message_sid",
            "messageSid",
            "sms_sid",
            "smsSid",
            "message_status",
            "messageStatus",
            "channel_prefix",
            "channelPrefix",
            "other",
        ]);
        let value = prop_oneof![
            4 => prop::sample::select(vec![
                "comms_message_1", "comms_operation_1", "comms_email_1", "SM1", "30003", "sent",
                "SMS", "WHATSAPP", "email", "fcm", "whatsapp:+1", "+15551234567", "",
            ]).prop_map(Value::from),
            1 => any::<u16>().prop_map(Value::from),
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            2 => arb_tame_json(),
            2 => prop::collection::btree_map(
                prop::sample::select(vec!["address", "channel", "provider", "token", "campaign"]),
                prop::sample::select(vec!["SMS", "RCS", "apn", "+15551234567", "x"]),
                0..4,
            ).prop_map(|m| json!(m)),
        ];
        prop::collection::vec((names, value), 0..10).prop_map(|pairs| {
            Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
    }

    fn arb_json_of(tame: bool) -> BoxedStrategy<Value> {
        let words = prop::sample::select(vec![
            "type",
            "data",
            "time",
            "tags",
            "from",
            "to",
            "channel",
            "provider",
            "address",
            "operation_id",
            "operationId",
            "message_id",
            "messageId",
            "email_id",
            "downstream_id",
            "attempt",
            "error_code",
            "errorCode",
            "messageSid",
            "messageStatus",
            "channelPrefix",
            "Twilio.operation_info",
            "com.twilio.comms-api.message.sent",
            "com.twilio.comms-api.email.opened",
            "com.twilio.comms-api.operation.completed",
            "com.twilio.messaging.message.delivered",
            "com.twilio.comms-api.push-notification.",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00+99:99",
            "whatsapp:+1",
            "phone",
            "MM1",
            "comms_message_1,",
            "",
            ":",
            "\u{1F600}",
        ]);
        let tame_leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u32>().prop_map(Value::from),
            words.clone().prop_map(Value::from),
        ];
        if tame {
            return tame_leaf
                .prop_recursive(5, 64, 8, move |inner| {
                    prop_oneof![
                        prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                        prop::collection::vec((words.clone(), inner), 0..8).prop_map(|pairs| {
                            Value::Object(
                                pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                            )
                        }),
                    ]
                })
                .boxed();
        }
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            words.clone().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((words.clone(), inner.clone()), 0..8).prop_map(|pairs| {
                    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
                // `data` smuggled in as a string.
                inner.prop_map(|v| Value::String(v.to_string())),
            ]
        })
        .boxed()
    }

    /// What the body reads as when serde reads it: the one pass, or element by element.
    fn read_by_serde(body: &str, max: usize) -> Result<Vec<Result<Event, SkipReason>>, BodyError> {
        decode_batch_in_one_pass(body.as_bytes(), 7, max)
            .map_or_else(|| decode_batch_by_element(body.as_bytes(), 7, max), Ok)
    }

    #[test]
    fn a_batch_as_twilio_sends_it_is_read_by_hand_and_reads_as_serde_reads_it() {
        let odd = json!({
            "type": "com.twilio.comms-api.message.failed", "time": 5, "id": {"x": "\u{e9}\n/"},
            "extra": [-0.5e3, 1E+2, 0, true, null, [[{}]]],
            "data": {
                "messageId": MSG, "operationId": OP, "attempt": 2, "error_code": 30003,
                "channel": ["x"], "from": "whatsapp:+1", "to": null, "email_id": null,
                "downstream_id": {"a": [1, -2.5, "\u{e9}\t"]},
                "tags": {"a": 1, "b": true, "c": null, "d": {"x": 1}, "e": [1], "f": "text"},
                "unknown": [{"deep": [[[]]]}],
            },
        });
        let batch = json!([
            comms("com.twilio.comms-api.message.delivered", message_data()),
            comms(
                "com.twilio.comms-api.operation.completed",
                json!({"operation_id": "comms_operation_01"})
            ),
            comms("com.twilio.messaging.message.delivered", classic_data()),
            comms("com.twilio.comms-api.message.bogus", message_data()),
            {"type": {"not": "text"}, "data": []},
            {"type": "com.twilio.comms-api.email.opened", "data": "not an object"},
            {"type": "com.twilio.comms-api.push-notification.sent", "data": 7},
            odd,
        ]);
        for body in [
            batch.to_string(),
            serde_json::to_string_pretty(&batch).unwrap(),
            "[]".to_owned(),
            " \t\r\n[ ] \n".to_owned(),
        ] {
            let by_hand = scan::read_batch(&body, 7, 100).expect("read by hand");
            assert_eq!(
                Some(&by_hand),
                decode_batch_in_one_pass(body.as_bytes(), 7, 100).as_ref()
            );
            assert_eq!(decode_events(body.as_bytes(), 7), Ok(by_hand));
        }
        // A tag named twice keeps its last value, as serde keeps it.
        let twice = r#"[{"type":"com.twilio.comms-api.message.sent","data":{"message_id":"m","tags":{"a":"1","a":"2"}}}]"#;
        let by_hand = scan::read_batch(twice, 7, 100).expect("read by hand");
        assert_eq!(
            Some(by_hand),
            decode_batch_in_one_pass(twice.as_bytes(), 7, 100)
        );
    }

    #[test]
    fn the_hand_reader_gives_way_to_serde_on_what_it_does_not_take_and_the_body_reads_alike() {
        let sent = |data: &str| {
            format!(r#"[{{"type":"com.twilio.comms-api.message.sent","id":"e1","data":{data}}}]"#)
        };
        let deep = format!(
            r#"{{"message_id":"m","x":{}1{}}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        let two = format!(
            "{},{}",
            &sent(r#"{"message_id":"m"}"#)[..sent(r#"{"message_id":"m"}"#).len() - 1],
            &sent(r#"{"message_id":"n"}"#)[1..]
        );
        let cases = [
            // An escape in a string tally reads, or in a member's name.
            sent(r#"{"message_id":"m\u00e9"}"#),
            r#"[{"type":"com.twilio.comms-api.message.sent","da\u0074a":{"message_id":"m"}}]"#.to_owned(),
            sent(r#"{"message_\u0069d":"m"}"#),
            // `data` as a string holding an object.
            sent(r#""{\"message_id\":\"m\"}""#),
            // Numbers that are not plain non-negative integers, where tally reads them.
            sent(r#"{"message_id":"m","attempt":1.0}"#),
            sent(r#"{"message_id":"m","error_code":-1}"#),
            sent(r#"{"message_id":"m","attempt":12345678901234567890}"#),
            // A member tally reads named twice, in one spelling or both.
            sent(r#"{"message_id":"m","messageId":"n"}"#),
            sent(r#"{"message_id":"m","message_id":null}"#),
            sent(r#"{"message_id":"m","from":{"address":"+1"},"from":null}"#),
            sent(r#"{"message_id":"m","from":{"channel":"SMS","channel":"RCS"}}"#),
            r#"[{"type":"com.twilio.comms-api.message.sent","type":"x","data":{"message_id":"m"}}]"#.to_owned(),
            // Too deep, though serde reads it.
            sent(&deep),
            // Not JSON, or not a batch of objects.
            sent(r#"{"message_id":"m","attempt":01}"#),
            sent("{\"message_id\":\"m\u{1}\"}"),
            sent(r#"{"message_id":"m","x":"\q"}"#),
            sent(r#"{"message_id":"m","x":"\u12g4"}"#),
            sent(r#"{"message_id":"m","x":1.}"#),
            sent(r#"{"message_id":"m","x":-}"#),
            sent(r#"{"message_id":"m","x":tru}"#),
            sent(r#"{"message_id":"m",}"#),
            format!("{} x", sent(r#"{"message_id":"m"}"#)),
            format!("[1,{}", &sent(r#"{"message_id":"m"}"#)[1..]),
            "[".to_owned(),
        ];
        for body in &cases {
            assert_eq!(scan::read_batch(body, 7, 100), None, "read by hand: {body}");
            assert_eq!(
                decode_events(body.as_bytes(), 7),
                read_by_serde(body, 100),
                "{body}"
            );
        }
        // Past the bound.
        assert_eq!(scan::read_batch(&two, 7, 2).map(|d| d.len()), Some(2));
        assert_eq!(scan::read_batch(&two, 7, 1), None);
        assert_eq!(
            decode_events_bounded(two.as_bytes(), 7, 1),
            Err(BodyError::TooManyEvents { max: 1 })
        );
    }

    #[test]
    fn a_batch_as_twilio_sends_it_is_read_in_one_pass_and_reads_as_element_by_element() {
        let body = json!([
            comms("com.twilio.comms-api.message.delivered", message_data()),
            comms(
                "com.twilio.comms-api.operation.completed",
                json!({"operation_id": "comms_operation_01"})
            ),
            {"type": "com.twilio.messaging.message.sent", "data": classic_data().to_string()},
            comms("com.twilio.comms-api.message.sent", json!({"message_id": "x\u{e9}\n"})),
            comms("com.twilio.comms-api.message.bogus", message_data()),
        ])
        .to_string();
        let one_pass = decode_batch_in_one_pass(body.as_bytes(), 7, 100).expect("one pass");
        assert_eq!(one_pass.len(), 5);
        assert_eq!(
            one_pass,
            decode_batch_by_element(body.as_bytes(), 7, 100).unwrap()
        );
        // Past the bound, or with an element that is not an object, the one pass gives way.
        assert!(decode_batch_in_one_pass(body.as_bytes(), 7, 4).is_none());
        let with_junk = format!("[1,{}", &body[1..]);
        assert!(decode_batch_in_one_pass(with_junk.as_bytes(), 7, 100).is_none());
        assert_eq!(decode_events(with_junk.as_bytes(), 7).unwrap().len(), 6);
        // Bytes that are not UTF-8, even in a member tally skips, make the body unreadable.
        let mut not_utf8 = body.clone().into_bytes();
        let at = body.find("\"type\"").unwrap();
        not_utf8.splice(at..at, *b"\"skipped\": \"\xff\", ");
        assert!(decode_batch_in_one_pass(&not_utf8, 7, 100).is_none());
        assert_eq!(decode_events(&not_utf8, 7), Err(BodyError::NotJson));
    }

    proptest! {
        #[test]
        fn a_batch_read_by_hand_reads_as_serde_reads_it(
            elements in prop::collection::vec(
                prop_oneof![
                    arb_json(),
                    arb_tame_json(),
                    arb_envelope(arb_tame_data(), "[0-9T:.Z-]{0,30}"),
                ],
                0..6,
            ),
            pretty in any::<bool>(),
            max in 0usize..8,
            rx in any::<u64>(),
        ) {
            let batch = Value::Array(elements);
            let body = match pretty {
                true => serde_json::to_string_pretty(&batch).unwrap(),
                false => batch.to_string(),
            };
            if let Some(by_hand) = scan::read_batch(&body, rx, max) {
                prop_assert_eq!(Some(by_hand), decode_batch_in_one_pass(body.as_bytes(), rx, max));
            }
        }

        #[test]
        fn a_batch_read_in_one_pass_reads_as_element_by_element(
            elements in prop::collection::vec(
                prop_oneof![
                    arb_json(),
                    arb_envelope(arb_json(), ".{0,30}"),
                ],
                0..6,
            ),
            max in 0usize..8,
            rx in any::<u64>(),
        ) {
            let body = Value::Array(elements).to_string();
            if let Some(one_pass) = decode_batch_in_one_pass(body.as_bytes(), rx, max) {
                prop_assert_eq!(Ok(one_pass), decode_batch_by_element(body.as_bytes(), rx, max));
            }
        }

        #[test]
        fn decode_events_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512),
                                               rx in any::<u64>()) {
            let _ = decode_events(&body, rx);
        }

        #[test]
        fn decode_events_never_panics_on_json(value in arb_json(), rx in any::<u64>()) {
            let _ = decode_events(value.to_string().as_bytes(), rx);
        }

        #[test]
        fn decode_events_never_panics_on_envelopes(
            ty in prop::sample::select(vec![
                "com.twilio.comms-api.message.", "com.twilio.comms-api.email.",
                "com.twilio.comms-api.push-notification.", "com.twilio.comms-api.operation.",
                "com.twilio.messaging.message.",
            ]),
            status in "[a-zA-Z_-]{0,12}",
            time in ".{0,40}",
            data in arb_json(),
            rx in any::<u64>(),
        ) {
            let body = json!([{"type": format!("{ty}{status}"), "time": time, "data": data}]);
            let got = decode_events(body.to_string().as_bytes(), rx).unwrap();
            prop_assert_eq!(got.len(), 1);
            if let Ok(event) = &got[0] {
                // Every id and tag that gets through is bounded.
                if let EventBody::Attempt(a) = &event.body {
                    for id in [&a.operation_id, &a.resource_id, &a.downstream_id, &a.attempt]
                        .into_iter()
                        .flatten()
                    {
                        prop_assert!(!id.is_empty() && id.len() <= MAX_ID_BYTES);
                    }
                    prop_assert!(a.tags.len() <= MAX_TAGS);
                }
            }
        }
    }
}
