//! The JSON shapes of an Event Streams body, read straight into borrowed fields (no
//! `serde_json::Value` tree per event), and the few readings tally makes of them.
//!
//! Every member tally looks at is a [`Loose`] value: whatever JSON Twilio (or anyone) put there
//! deserialises, and the reading decides what is usable. So a junk member never fails the parse;
//! only a member named twice (in either spelling) does, and the event is then malformed.
//! Members tally does not know are skipped without being built, at any depth.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{value::MapAccessDeserializer, Deserializer, IgnoredAny, MapAccess, SeqAccess};
use serde::de::{Error, Visitor};
use serde::Deserialize;
use serde_json::Number;

use crate::event::Channel;
use crate::ingest::split_channel_prefix;
use crate::ingest::{bounded_address, named_channel, parse_error_code, push_tag};

/// One CloudEvent. Attributes other than `type`, `time` and `data` are ignored.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Option<Loose<'a>>,
    #[serde(borrow)]
    pub time: Option<Loose<'a>>,
    /// An object, or a JSON string holding one; read by [`super::decode_event`].
    #[serde(borrow)]
    pub data: Option<Loose<'a, Data<'a>>>,
}

/// The members of `data` tally reads, in either spelling: snake_case (the Comms API events) or
/// camelCase (the classic Messaging events, and some senders of the others).
#[derive(Deserialize, Default)]
pub(super) struct Data<'a> {
    #[serde(borrow, alias = "operationId")]
    pub operation_id: Option<Loose<'a>>,
    #[serde(borrow, alias = "messageId")]
    pub message_id: Option<Loose<'a>>,
    #[serde(borrow, alias = "emailId")]
    pub email_id: Option<Loose<'a>>,
    #[serde(borrow, alias = "pushNotificationId")]
    pub push_notification_id: Option<Loose<'a>>,
    /// One push sample spells the resource `comms_notification_…` and names its field so.
    #[serde(borrow, alias = "notificationId")]
    pub notification_id: Option<Loose<'a>>,
    #[serde(borrow, alias = "downstreamId")]
    pub downstream_id: Option<Loose<'a>>,
    #[serde(borrow)]
    pub attempt: Option<Loose<'a>>,
    #[serde(borrow, alias = "errorCode")]
    pub error_code: Option<Loose<'a>>,
    #[serde(borrow)]
    pub channel: Option<Loose<'a>>,
    #[serde(borrow)]
    pub from: Option<Loose<'a, Address<'a>>>,
    #[serde(borrow)]
    pub to: Option<Loose<'a, Address<'a>>>,
    #[serde(borrow)]
    pub tags: Option<Loose<'a, BTreeMap<String, Loose<'a>>>>,
    // Classic Messaging members.
    #[serde(borrow, alias = "messageSid")]
    pub message_sid: Option<Loose<'a>>,
    #[serde(borrow, alias = "smsSid")]
    pub sms_sid: Option<Loose<'a>>,
    #[serde(borrow, alias = "messageStatus")]
    pub message_status: Option<Loose<'a>>,
    #[serde(borrow, alias = "channelPrefix")]
    pub channel_prefix: Option<Loose<'a>>,
}

/// An address object: `{address, channel}` for phones and e-mail, `{token, provider}` for push.
#[derive(Deserialize)]
pub(super) struct Address<'a> {
    #[serde(borrow)]
    pub address: Option<Loose<'a>>,
    #[serde(borrow)]
    pub channel: Option<Loose<'a>>,
    #[serde(borrow)]
    pub provider: Option<Loose<'a>>,
}

/// A JSON value where tally expects text, a number or (for `T` other than [`IgnoredAny`]) an
/// object of shape `T`. `null` is never one: an `Option<Loose>` reads it as `None`.
pub(super) enum Loose<'a, T = IgnoredAny> {
    /// A string, borrowed from the body when it holds no escapes.
    Text(Cow<'a, str>),
    /// A number, printed later as `serde_json` prints it.
    Number(Number),
    Bool(bool),
    /// An object read as `T`.
    Object(T),
    /// An array (skipped unread), or a `null` outside an `Option`.
    Other,
}

impl<T> Loose<'_, T> {
    /// The text of a string; `None` for anything else.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Loose::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Loose<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor(PhantomData))
    }
}

struct LooseVisitor<'a, T>(PhantomData<(&'a (), T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for LooseVisitor<'a, T> {
    type Value = Loose<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Loose::Text(Cow::Owned(v)))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Loose::Number(v.into()))
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Loose::Number(v.into()))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(v).map_or(Loose::Other, Loose::Number))
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Loose::Object)
    }
}

/// An id-like member as text: a string, or a number (Twilio's `attempt` is a string in one
/// client and a number in others). Anything else is junk and reads as absent.
pub(super) fn id_text<T>(value: Option<&Loose<'_, T>>) -> Option<String> {
    match value? {
        Loose::Text(text) => Some(text.clone().into_owned()),
        Loose::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `error_code`: an integer or a string holding one. Junk and `0` read as absent.
pub(super) fn error_code(value: Option<&Loose<'_>>) -> Option<u32> {
    match value? {
        Loose::Number(n) => n
            .as_u64()
            .and_then(|code| u32::try_from(code).ok())
            .filter(|&code| code != 0),
        Loose::Text(text) => parse_error_code(text),
        _ => None,
    }
}

/// The channel an address names: `channel` (or push's `provider`) on an address object, or a
/// `whatsapp:`-style prefix on a plain address string.
pub(super) fn address_channel(value: Option<&Loose<'_, Address<'_>>>) -> Option<Channel> {
    match value? {
        Loose::Object(address) => [&address.channel, &address.provider]
            .into_iter()
            .filter_map(|member| member.as_ref().and_then(Loose::as_text))
            .find_map(named_channel),
        Loose::Text(address) => split_channel_prefix(address).0,
        _ => None,
    }
}

/// The address itself, from `address` or a plain string, without any channel prefix.
pub(super) fn address_text(value: Option<&Loose<'_, Address<'_>>>) -> Option<String> {
    let raw = match value? {
        Loose::Object(address) => address.address.as_ref()?.as_text()?,
        Loose::Text(address) => address,
        _ => return None,
    };
    bounded_address(split_channel_prefix(raw).1)
}

/// The tags, when `tags` is an object (a later duplicate key wins).
pub(super) fn tag_map<'b, 'a>(data: &'b Data<'a>) -> Option<&'b BTreeMap<String, Loose<'a>>> {
    match data.tags.as_ref()? {
        Loose::Object(tags) => Some(tags),
        _ => None,
    }
}

/// `tags` as bounded string pairs, in key order. Numbers and booleans are stringified; nulls,
/// arrays and objects are skipped; oversized pairs and pairs past the cap are dropped.
pub(super) fn tags(data: &Data<'_>) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for (key, value) in tag_map(data).into_iter().flatten() {
        let value = match value {
            Loose::Text(text) => text.clone().into_owned(),
            Loose::Number(n) => n.to_string(),
            Loose::Bool(b) => b.to_string(),
            Loose::Object(_) | Loose::Other => continue,
        };
        push_tag(&mut kept, key, value);
    }
    kept
}
