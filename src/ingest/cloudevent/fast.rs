//! The fast path of [`decode_events`](super::decode_events): Comms API attempt and operation
//! events in the shape Twilio sends them (snake_case `data` as an object, string or integer
//! ids, address objects) are deserialised straight into borrowed fields, without building a
//! `serde_json::Value` tree. Anything else (classic Messaging events, camelCase keys, `data` as
//! a string, floats where ids go, duplicate keys, …) returns `None` and takes the tolerant path,
//! so both paths always agree: a property test holds them to it.

use super::{classify, event_time_text, EventType, ATTEMPT_PREFIXES, OPERATION_PREFIX};
use crate::event::{AttemptEvent, Channel, Event, EventBody, Kind, SkipReason};
use crate::ingest::{
    bounded_address, bounded_id, named_channel, parse_error_code, push_tag, split_channel_prefix,
};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// A value where tally reads text.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    /// An integer, as `serde_json` would print it.
    Int(String),
    /// Anything else (a float, a boolean, an array, an object): the fast path gives up.
    Other,
}

impl<'a> Scalar<'a> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v.to_string()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar<'a>, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A tag value: text (strings, integers, booleans), skipped (null, arrays, objects), or a float,
/// whose text only the tolerant path prints the way it always has.
#[allow(dead_code)]
enum TagValue<'a> {
    Text(Cow<'a, str>),
    Skip,
    Float,
}

impl<'de: 'a, 'a> Deserialize<'de> for TagValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TagValue<'a>, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Str(s) => TagValue::Text(s),
            Scalar::Int(n) => TagValue::Text(Cow::Owned(n)),
            Scalar::Other => TagValue::Skip,
        })
    }
}

/// `tags`: an object (later duplicates win, as in a `serde_json` map), or anything else, which
/// carries no tags.
enum Tags<'a> {
    Map(BTreeMap<Cow<'a, str>, TagValue<'a>>),
    None,
    /// A float somewhere the tolerant path formats itself.
    GiveUp,
}

struct TagsVisitor;

impl<'de> Visitor<'de> for TagsVisitor {
    type Value = Tags<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tags")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tags<'de>, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<Cow<'de, str>, RawTag<'de>>()? {
            match v.0 {
                Some(v) => {
                    out.insert(k, v);
                }
                None => return drain(map),
            }
        }
        Ok(Tags::Map(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tags<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Tags::None)
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
    fn visit_unit<E>(self) -> Result<Tags<'de>, E> {
        Ok(Tags::None)
    }
}

fn drain<'de, A: MapAccess<'de>>(mut map: A) -> Result<Tags<'de>, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(Tags::GiveUp)
}

/// A tag value (`None` is never produced today; kept so a future shape can give up).
struct RawTag<'a>(Option<TagValue<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for RawTag<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawTag<'a>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTag<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tag value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Text(Cow::Borrowed(v)))))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Text(Cow::Owned(v.to_owned())))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Text(Cow::Owned(v.to_string())))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Text(Cow::Owned(v.to_string())))))
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Float)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Text(Cow::Owned(v.to_string())))))
            }
            fn visit_unit<E>(self) -> Result<RawTag<'de>, E> {
                Ok(RawTag(Some(TagValue::Skip)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawTag<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawTag(Some(TagValue::Skip)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTag<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawTag(Some(TagValue::Skip)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Tags<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tags<'a>, D::Error> {
        d.deserialize_any(TagsVisitor)
    }
}

#[derive(Deserialize)]
struct Address<'a> {
    #[serde(borrow)]
    address: Option<Scalar<'a>>,
    #[serde(borrow)]
    channel: Option<Scalar<'a>>,
    #[serde(borrow)]
    provider: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    operation_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    message_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    email_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    push_notification_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    notification_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    downstream_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    attempt: Option<Scalar<'a>>,
    #[serde(borrow)]
    error_code: Option<Scalar<'a>>,
    #[serde(borrow)]
    channel: Option<Scalar<'a>>,
    #[serde(borrow)]
    from: Option<Address<'a>>,
    #[serde(borrow)]
    to: Option<Address<'a>>,
    #[serde(borrow)]
    tags: Option<Tags<'a>>,
    // The camelCase spellings: when one is present, the tolerant path decides.
    #[serde(rename = "operationId")]
    operation_id_camel: Option<IgnoredAny>,
    #[serde(rename = "messageId")]
    message_id_camel: Option<IgnoredAny>,
    #[serde(rename = "emailId")]
    email_id_camel: Option<IgnoredAny>,
    #[serde(rename = "pushNotificationId")]
    push_notification_id_camel: Option<IgnoredAny>,
    #[serde(rename = "notificationId")]
    notification_id_camel: Option<IgnoredAny>,
    #[serde(rename = "downstreamId")]
    downstream_id_camel: Option<IgnoredAny>,
    #[serde(rename = "errorCode")]
    error_code_camel: Option<IgnoredAny>,
}

impl Data<'_> {
    fn has_camel(&self) -> bool {
        self.operation_id_camel.is_some()
            || self.message_id_camel.is_some()
            || self.email_id_camel.is_some()
            || self.push_notification_id_camel.is_some()
            || self.notification_id_camel.is_some()
            || self.downstream_id_camel.is_some()
            || self.error_code_camel.is_some()
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Scalar<'a>>,
    #[serde(borrow)]
    time: Option<Scalar<'a>>,
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

/// An id as text, or `Err(())` to give up (a float, a boolean, an array or an object).
fn id_text(v: &Option<Scalar<'_>>) -> Result<Option<String>, ()> {
    match v {
        None => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s.clone().into_owned())),
        Some(Scalar::Int(n)) => Ok(Some(n.clone())),
        Some(Scalar::Other) => Err(()),
    }
}

fn error_code(v: &Option<Scalar<'_>>) -> Result<Option<u32>, ()> {
    match v {
        None => Ok(None),
        Some(Scalar::Str(s)) => Ok(parse_error_code(s)),
        Some(Scalar::Int(n)) => Ok(n
            .parse::<u64>()
            .ok()
            .and_then(|c| u32::try_from(c).ok())
            .filter(|&c| c != 0)),
        Some(Scalar::Other) => Err(()),
    }
}

fn address_channel(a: &Option<Address<'_>>) -> Option<Channel> {
    let a = a.as_ref()?;
    [&a.channel, &a.provider]
        .into_iter()
        .filter_map(|v| v.as_ref().and_then(Scalar::as_str))
        .find_map(named_channel)
}

fn address_text(a: &Option<Address<'_>>) -> Option<String> {
    let raw = a.as_ref()?.address.as_ref()?.as_str()?;
    bounded_address(split_channel_prefix(raw).1)
}

/// Decode one CloudEvent the fast way, or `None` when the tolerant path must decide.
pub(super) fn decode(raw: &str, received_ms: u64) -> Option<Result<Event, SkipReason>> {
    let env: Envelope<'_> = serde_json::from_str(raw).ok()?;
    let ty = match &env.ty {
        Some(Scalar::Str(t)) => t,
        // No `type`, or not a string: the tolerant path reports it.
        _ => return None,
    };
    // Only the families this path knows; the rest (classic events, unknown types) go slow.
    let known = super::strip_prefix_ci(ty.trim(), OPERATION_PREFIX).is_some()
        || ATTEMPT_PREFIXES
            .iter()
            .any(|(p, _)| super::strip_prefix_ci(ty.trim(), p).is_some());
    if !known {
        return None;
    }
    let class = match classify(ty) {
        Ok(c) => c,
        Err(reason) => return Some(Err(reason)),
    };
    let data = env.data.as_ref()?;
    if data.has_camel() {
        return None;
    }
    let time_ms = event_time_text(env.time.as_ref().and_then(Scalar::as_str), received_ms);
    let body = match class {
        EventType::Operation(phase) => {
            let id = match bounded_id(id_text(&data.operation_id).ok()?) {
                Ok(Some(id)) => id,
                Ok(None) => return Some(Err(SkipReason::MissingId)),
                Err(r) => return Some(Err(r)),
            };
            EventBody::Operation {
                operation_id: id,
                kind: None,
                phase,
            }
        }
        EventType::Attempt { kind, status } => match attempt(kind, status, data)? {
            Ok(a) => EventBody::Attempt(a),
            Err(r) => return Some(Err(r)),
        },
        EventType::Classic { .. } => return None,
    };
    Some(Ok(Event { time_ms, body }))
}

fn attempt(
    kind: Kind,
    status: crate::event::AttemptStatus,
    data: &Data<'_>,
) -> Option<Result<AttemptEvent, SkipReason>> {
    let resource = match kind {
        Kind::Messages => id_text(&data.message_id).ok()?,
        Kind::Emails => id_text(&data.email_id).ok()?,
        Kind::PushNotifications => match id_text(&data.push_notification_id).ok()? {
            Some(id) => Some(id),
            None => id_text(&data.notification_id).ok()?,
        },
    };
    let operation = id_text(&data.operation_id).ok()?;
    let downstream = id_text(&data.downstream_id).ok()?;
    let attempt_no = id_text(&data.attempt).ok()?;
    let error = error_code(&data.error_code).ok()?;
    let tags = match &data.tags {
        None => Vec::new(),
        Some(Tags::None) => Vec::new(),
        Some(Tags::GiveUp) => return None,
        Some(Tags::Map(m)) => {
            let mut kept = Vec::new();
            for (k, v) in m {
                match v {
                    TagValue::Text(t) => push_tag(&mut kept, k, t.clone().into_owned()),
                    TagValue::Skip => {}
                    TagValue::Float => return None,
                }
            }
            kept
        }
    };
    let built = (|| {
        let operation_id = bounded_id(operation)?;
        let resource_id = bounded_id(resource)?;
        let downstream_id = bounded_id(downstream)?;
        let attempt = bounded_id(attempt_no)?;
        if operation_id.is_none() && resource_id.is_none() && downstream_id.is_none() {
            return Err(SkipReason::MissingId);
        }
        let channel = address_channel(&data.from)
            .or_else(|| address_channel(&data.to))
            .or_else(|| {
                data.channel
                    .as_ref()
                    .and_then(Scalar::as_str)
                    .and_then(named_channel)
            })
            .or((kind == Kind::Emails).then_some(Channel::Email));
        Ok(AttemptEvent {
            kind: Some(kind),
            operation_id,
            resource_id,
            downstream_id,
            attempt,
            channel,
            status,
            error_code: error,
            to: address_text(&data.to),
            tags,
        })
    })();
    Some(built)
}

#[cfg(test)]
mod tests {
    use super::super::decode_event;
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const RX: u64 = 1_700_000_000_000;

    fn slow(raw: &str) -> Result<Event, SkipReason> {
        let v: Value = serde_json::from_str(raw).expect("test JSON");
        decode_event(&v, RX)
    }

    fn agree(raw: &str) -> bool {
        fast_agrees(raw).is_some()
    }

    /// `Some(took_fast_path)` when both paths agree, `None` when they differ.
    fn fast_agrees(raw: &str) -> Option<bool> {
        match decode(raw, RX) {
            None => Some(false),
            Some(f) => (f == slow(raw)).then_some(true),
        }
    }

    #[test]
    fn the_shape_twilio_sends_takes_the_fast_path() {
        let ev = json!({
            "specversion": "1.0", "type": "com.twilio.comms-api.message.delivered",
            "source": "/v1/Messages", "id": "EZ1", "time": "2025-01-01T00:00:00.000Z",
            "data": {"operation_id": "comms_operation_01h", "message_id": "comms_message_01h",
                     "downstream_id": "SM1", "attempt": "1", "error_code": "30003",
                     "from": {"address": "+15017122661", "channel": "RCS"},
                     "to": {"address": "+15558675310", "channel": "phone"},
                     "tags": {"b": "2", "a": 1, "c": true, "d": null}}
        })
        .to_string();
        assert_eq!(fast_agrees(&ev), Some(true));
        let op = json!({"type": "com.twilio.comms-api.operation.completed",
                        "data": {"operation_id": "comms_operation_01h"}})
        .to_string();
        assert_eq!(fast_agrees(&op), Some(true));
    }

    #[test]
    fn shapes_it_is_unsure_of_go_the_tolerant_way() {
        for ev in [
            json!({"type": "com.twilio.messaging.message.sent", "data": {"messageSid": "SM1"}}),
            json!({"type": "com.twilio.comms-api.message.sent",
                   "data": {"operationId": "o", "message_id": "m"}}),
            json!({"type": "com.twilio.comms-api.message.sent", "data": "{\"operation_id\":\"o\"}"}),
            json!({"type": "com.twilio.comms-api.message.sent", "data": {"attempt": 1.5}}),
            json!({"type": "com.twilio.comms-api.message.sent",
                   "data": {"operation_id": "o", "tags": {"x": 2.5}}}),
            json!({"type": 7, "data": {}}),
            json!({"type": "com.twilio.comms-api.message.sent"}),
        ] {
            assert_eq!(fast_agrees(&ev.to_string()), Some(false), "{ev}");
        }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-z0-9_]{0,12}".prop_map(Value::from),
            Just(json!("comms_message_01h9krwprkeee8fzqspvwy6nq8")),
            any::<u32>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(json!(0)),
            Just(json!(1.5)),
            Just(json!(true)),
            Just(Value::Null),
            Just(json!([1, 2])),
            Just(json!({"k": "v"})),
            Just(json!("x".repeat(300))),
            Just(json!(" 30003 ")),
        ]
    }

    fn address() -> impl Strategy<Value = Value> {
        prop_oneof![
            (
                prop::option::of(scalar()),
                prop::option::of(prop_oneof![
                    Just(json!("SMS")),
                    Just(json!("rcs")),
                    Just(json!("WHATSAPP")),
                    Just(json!("phone")),
                    Just(json!("")),
                    scalar()
                ]),
                prop::option::of(prop_oneof![
                    Just(json!("FCM")),
                    Just(json!("APNs")),
                    scalar()
                ]),
            )
                .prop_map(|(a, c, p)| {
                    let mut m = serde_json::Map::new();
                    if let Some(a) = a {
                        m.insert("address".into(), a);
                    }
                    if let Some(c) = c {
                        m.insert("channel".into(), c);
                    }
                    if let Some(p) = p {
                        m.insert("provider".into(), p);
                    }
                    Value::Object(m)
                }),
            Just(json!("whatsapp:+15558675310")),
            scalar(),
        ]
    }

    fn data() -> impl Strategy<Value = Value> {
        let keys = prop::sample::subsequence(
            vec![
                "operation_id",
                "message_id",
                "email_id",
                "push_notification_id",
                "notification_id",
                "downstream_id",
                "attempt",
                "error_code",
                "channel",
                "operationId",
                "messageId",
                "errorCode",
            ],
            0..=12,
        );
        (
            keys,
            prop::collection::vec(scalar(), 12),
            prop::option::of(address()),
            prop::option::of(address()),
            prop::option::of(prop_oneof![
                prop::collection::btree_map("[a-z.]{0,6}", scalar(), 0..40).prop_map(|m| json!(m)),
                scalar()
            ]),
        )
            .prop_map(|(keys, values, from, to, tags)| {
                let mut m = serde_json::Map::new();
                for (k, v) in keys.into_iter().zip(values) {
                    m.insert(k.into(), v);
                }
                if let Some(f) = from {
                    m.insert("from".into(), f);
                }
                if let Some(t) = to {
                    m.insert("to".into(), t);
                }
                if let Some(t) = tags {
                    m.insert("tags".into(), t);
                }
                Value::Object(m)
            })
    }

    fn event_type() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                "com.twilio.comms-api.message.delivered",
                "com.twilio.comms-api.message.READ",
                "com.twilio.comms-api.message.opened",
                "com.twilio.comms-api.message.receiving",
                "com.twilio.comms-api.email.opened",
                "com.twilio.comms-api.push-notification.sent",
                " com.twilio.comms-api.pushnotification.failed ",
                "com.twilio.comms-api.operation.completed",
                "com.twilio.comms-api.operation.bogus",
                "com.twilio.messaging.message.sent",
                "com.twilio.voice.call.completed",
            ])
            .prop_map(Value::from),
            scalar(),
        ]
    }

    proptest! {
        #[test]
        fn the_fast_path_always_agrees_with_the_tolerant_one(
            ty in prop::option::of(event_type()),
            time in prop::option::of(prop_oneof![
                Just(json!("2025-01-01T00:00:00.000Z")),
                Just(json!("junk")),
                scalar()
            ]),
            data in prop::option::of(prop_oneof![data(), scalar()]),
        ) {
            let mut m = serde_json::Map::new();
            if let Some(t) = ty { m.insert("type".into(), t); }
            if let Some(t) = time { m.insert("time".into(), t); }
            if let Some(d) = data { m.insert("data".into(), d); }
            let raw = Value::Object(m).to_string();
            prop_assert!(agree(&raw), "{}", raw);
        }
    }
}
