//! The domain vocabulary: what `ingest` produces from Twilio's bytes and `rollup` consumes.
//!
//! Everything here is parsed and bounded: no raw status strings, no unbounded ids, no open-ended
//! channel names travel past the edge.

use std::fmt;

/// Longest id (operation, resource or attempt) accepted, in bytes (docs/contract.md, "Ids").
pub const MAX_ID_BYTES: usize = 256;

/// The family of an operation, which decides its stats field set and query routes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    Messages,
    Emails,
    PushNotifications,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Messages, Kind::Emails, Kind::PushNotifications];

    /// The name used in Kafka headers, metrics labels and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Messages => "messages",
            Kind::Emails => "emails",
            Kind::PushNotifications => "push_notifications",
        }
    }

    /// Guess the kind from a resource id prefix (`comms_message_…`, `comms_email_…`, …).
    pub fn from_resource_id(id: &str) -> Option<Kind> {
        if id.starts_with("comms_message_") {
            Some(Kind::Messages)
        } else if id.starts_with("comms_email_") {
            Some(Kind::Emails)
        } else if id.starts_with("comms_pushnotification_") || id.starts_with("comms_notification_")
        {
            Some(Kind::PushNotifications)
        } else {
            None
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The channel an attempt went through. A bounded set: anything else is `Other`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Channel {
    Sms,
    Mms,
    Rcs,
    Whatsapp,
    Email,
    Fcm,
    Apns,
    Other,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::Sms,
        Channel::Mms,
        Channel::Rcs,
        Channel::Whatsapp,
        Channel::Email,
        Channel::Fcm,
        Channel::Apns,
        Channel::Other,
    ];

    /// Parse a channel name as Twilio spells it (`SMS`, `rcs`, `whatsapp`, `APNs`, …).
    pub fn parse(s: &str) -> Channel {
        match s.trim().to_ascii_lowercase().as_str() {
            "sms" | "phone" => Channel::Sms,
            "mms" => Channel::Mms,
            "rcs" => Channel::Rcs,
            "whatsapp" => Channel::Whatsapp,
            "email" => Channel::Email,
            "fcm" => Channel::Fcm,
            "apns" => Channel::Apns,
            _ => Channel::Other,
        }
    }

    /// Lowercase name used in metrics labels and query filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Mms => "mms",
            Channel::Rcs => "rcs",
            Channel::Whatsapp => "whatsapp",
            Channel::Email => "email",
            Channel::Fcm => "fcm",
            Channel::Apns => "apns",
            Channel::Other => "other",
        }
    }

    /// Uppercase name as Twilio's API shows it (`SMS`, `RCS`, `WHATSAPP`, …).
    pub fn as_api_str(self) -> &'static str {
        match self {
            Channel::Sms => "SMS",
            Channel::Mms => "MMS",
            Channel::Rcs => "RCS",
            Channel::Whatsapp => "WHATSAPP",
            Channel::Email => "EMAIL",
            Channel::Fcm => "FCM",
            Channel::Apns => "APNS",
            Channel::Other => "OTHER",
        }
    }
}

/// A delivery attempt's status. The declaration order is the attempt lattice (docs/contract.md,
/// "Statuses: the lattices"; join = maximum); `Opened` ranks with `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AttemptStatus {
    Scheduled,
    Accepted,
    Queued,
    Canceled,
    Sending,
    Sent,
    Failed,
    Undelivered,
    Delivered,
    Read,
    Opened,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 11] = [
        AttemptStatus::Scheduled,
        AttemptStatus::Accepted,
        AttemptStatus::Queued,
        AttemptStatus::Canceled,
        AttemptStatus::Sending,
        AttemptStatus::Sent,
        AttemptStatus::Failed,
        AttemptStatus::Undelivered,
        AttemptStatus::Delivered,
        AttemptStatus::Read,
        AttemptStatus::Opened,
    ];

    /// Parse a delivery status in any case. `None` for words that are not delivery states
    /// (`receiving`, `received`, `inbound`, `partially_delivered`, unknown words).
    pub fn parse(s: &str) -> Option<AttemptStatus> {
        let s = s.trim();
        let pick = |w: &str| s.eq_ignore_ascii_case(w);
        Some(if pick("scheduled") {
            AttemptStatus::Scheduled
        } else if pick("accepted") {
            AttemptStatus::Accepted
        } else if pick("queued") {
            AttemptStatus::Queued
        } else if pick("canceled") || pick("cancelled") {
            AttemptStatus::Canceled
        } else if pick("sending") {
            AttemptStatus::Sending
        } else if pick("sent") {
            AttemptStatus::Sent
        } else if pick("failed") {
            AttemptStatus::Failed
        } else if pick("undelivered") {
            AttemptStatus::Undelivered
        } else if pick("delivered") {
            AttemptStatus::Delivered
        } else if pick("read") {
            AttemptStatus::Read
        } else if pick("opened") {
            AttemptStatus::Opened
        } else {
            return None;
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Scheduled => "scheduled",
            AttemptStatus::Accepted => "accepted",
            AttemptStatus::Queued => "queued",
            AttemptStatus::Canceled => "canceled",
            AttemptStatus::Sending => "sending",
            AttemptStatus::Sent => "sent",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Undelivered => "undelivered",
            AttemptStatus::Delivered => "delivered",
            AttemptStatus::Read => "read",
            AttemptStatus::Opened => "opened",
        }
    }
}

/// What an operation-level event says about the operation's progress.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Phase {
    Scheduled,
    Processing,
    Completed,
}

/// One delivery event, parsed and bounded.
///
/// Its ids are `String`s, or borrowed (`Event<&str>`) where an event is applied straight from
/// the bytes it was read from. Either way it encodes to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event<S = String> {
    /// Event time in Unix milliseconds: the CloudEvent `time` when valid, else receive time.
    pub time_ms: u64,
    pub body: EventBody<S>,
}

impl<S: Text> Event<S> {
    /// Drop the recipient address (`[privacy] keep_recipient_addresses = false`); true when
    /// there was one.
    pub fn forget_recipient(&mut self) -> bool {
        match &mut self.body {
            EventBody::Attempt(a) => a.to.take().is_some(),
            EventBody::ResourceRead(r) => r.to.take().is_some(),
            EventBody::Operation { .. } | EventBody::OperationRead(_) => false,
        }
    }

    /// The same event with texts of its own.
    pub fn to_owned_event(&self) -> Event {
        let body = match &self.body {
            EventBody::Operation {
                operation_id,
                kind,
                phase,
            } => EventBody::Operation {
                operation_id: operation_id.to_string(),
                kind: *kind,
                phase: *phase,
            },
            EventBody::Attempt(a) => EventBody::Attempt(a.to_owned_event()),
            EventBody::OperationRead(r) => EventBody::OperationRead(r.clone()),
            EventBody::ResourceRead(r) => EventBody::ResourceRead(r.clone()),
        };
        Event {
            time_ms: self.time_ms,
            body,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventBody<S = String> {
    /// `com.twilio.comms-api.operation.*`.
    Operation {
        operation_id: S,
        kind: Option<Kind>,
        phase: Phase,
    },
    /// A status of one delivery attempt, from a Comms API event, a classic Messaging event, or
    /// a form-encoded status callback.
    Attempt(AttemptEvent<S>),
    /// An operation as read from Twilio's REST API by the reconciler (docs/reconcile.md).
    /// Variants are appended, never inserted: the journal stores them by index.
    OperationRead(OperationRead),
    /// One resource as read from Twilio's REST API by the reconciler: Twilio's verdict on its
    /// status at the time of the read. Not an attempt: it adds none.
    ResourceRead(ResourceRead),
}

/// What a read of `GET /v1/{Kind}/Operations/{id}` says, folded as joins (docs/contract.md,
/// "Reconciliation").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperationRead {
    pub operation_id: String,
    pub kind: Kind,
    /// `None` when Twilio's status word is not one tally knows.
    pub status: Option<crate::rollup::OperationStatus>,
    pub total: u64,
    pub recipients: u64,
    pub attempts: u64,
    pub unaddressable: u64,
}

/// What a resource list item read from Twilio says about one resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceRead {
    pub kind: Kind,
    pub operation_id: String,
    pub resource_id: String,
    pub status: AttemptStatus,
    /// The recipient address, when the read shows one.
    pub to: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl AttemptStatus {
    /// Whether a resource read in this status has Twilio's final word on it (delivered,
    /// read/opened, undelivered, failed, canceled), rather than a status still in flight.
    pub fn is_terminal_read(self) -> bool {
        matches!(
            self,
            AttemptStatus::Delivered
                | AttemptStatus::Read
                | AttemptStatus::Opened
                | AttemptStatus::Undelivered
                | AttemptStatus::Failed
                | AttemptStatus::Canceled
        )
    }
}

/// A status report for one attempt. The links (`operation_id`, `resource_id`) may be missing:
/// classic callbacks often carry only the attempt SID until something links it.
///
/// Its texts are `String`s, or borrowed (`AttemptEvent<&str>`) where an event is applied
/// straight from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptEvent<S = String> {
    pub kind: Option<Kind>,
    pub operation_id: Option<S>,
    /// The Message, Email or PushNotification id.
    pub resource_id: Option<S>,
    /// The SM…/MM… SID (or provider id) of this attempt.
    pub downstream_id: Option<S>,
    /// Twilio's attempt number or name, a string.
    pub attempt: Option<S>,
    pub channel: Option<Channel>,
    pub status: AttemptStatus,
    pub error_code: Option<u32>,
    /// The recipient address (`to.address`, or `To` in a form callback).
    pub to: Option<S>,
    pub tags: Vec<(S, S)>,
}

/// The text of an [`AttemptEvent`]: `String` or `&str`.
pub trait Text: std::ops::Deref<Target = str> {}

impl<T: std::ops::Deref<Target = str>> Text for T {}

impl<S: Text> AttemptEvent<S> {
    /// The same attempt with texts of its own.
    pub fn to_owned_event(&self) -> AttemptEvent {
        let own = |s: &Option<S>| s.as_deref().map(str::to_owned);
        AttemptEvent {
            kind: self.kind,
            operation_id: own(&self.operation_id),
            resource_id: own(&self.resource_id),
            downstream_id: own(&self.downstream_id),
            attempt: own(&self.attempt),
            channel: self.channel,
            status: self.status,
            error_code: self.error_code,
            to: own(&self.to),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Why an event in a request was skipped. A bounded set: used as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Not a JSON object, `data` not an object (nor a JSON string holding one), or a member
    /// named twice.
    Malformed,
    /// An event type tally does not handle.
    UnknownType,
    /// A status that is not a delivery state (`receiving`, `inbound`, unknown words).
    UnknownStatus,
    /// A required id is missing.
    MissingId,
    /// An id longer than [`MAX_ID_BYTES`].
    IdTooLong,
    /// An attempt with nothing that links it to a resource, nor an id to hold it under.
    Unlinkable,
}

impl SkipReason {
    pub const ALL: [SkipReason; 6] = [
        SkipReason::Malformed,
        SkipReason::UnknownType,
        SkipReason::UnknownStatus,
        SkipReason::MissingId,
        SkipReason::IdTooLong,
        SkipReason::Unlinkable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Malformed => "malformed",
            SkipReason::UnknownType => "unknown_type",
            SkipReason::UnknownStatus => "unknown_status",
            SkipReason::MissingId => "missing_id",
            SkipReason::IdTooLong => "id_too_long",
            SkipReason::Unlinkable => "unlinkable",
        }
    }
}
