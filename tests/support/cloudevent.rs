//! Builders for what Twilio sends: CloudEvents as Event Streams posts them, and the parameters
//! of a classic status callback.

use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// A recipient phone number: must never show in metrics labels or logs.
pub const PHONE: &str = "+15558675310";
/// The sender number of the test messages.
pub const SENDER: &str = "+15017122661";
/// An event time Twilio could have sent (`time` of the test CloudEvents).
pub const EVENT_TIME: &str = "2024-04-05T06:20:00Z";

/// Classic callback parameters as Twilio sends them for an outbound SMS.
pub fn sms_params<'a>(sid: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("From", SENDER),
        ("To", PHONE),
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("MessageStatus", status),
        ("SmsStatus", status),
    ]
}

static NEXT_EVENT: AtomicU64 = AtomicU64::new(1);

/// A CloudEvent as Event Streams posts it, built up field by field.
#[derive(Debug, Clone)]
pub struct CloudEvent(Value);

impl CloudEvent {
    fn envelope(ty: &str, source: &str, data: Value) -> CloudEvent {
        let n = NEXT_EVENT.fetch_add(1, Ordering::Relaxed);
        CloudEvent(json!({
            "specversion": "1.0",
            "type": ty,
            "source": source,
            "id": format!("EZ{n:032x}"),
            "dataschema": format!("https://events-schemas.twilio.com/{ty}/1"),
            "datacontenttype": "application/json",
            "time": EVENT_TIME,
            "data": data,
        }))
    }

    /// `com.twilio.comms-api.message.<status>` for message `msg` of `op`, attempt `sid` over SMS.
    pub fn message(status: &str, op: &str, msg: &str, sid: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.message.{status}"),
            "/v1/Messages",
            json!({
                "operation_id": op,
                "message_id": msg,
                "downstream_id": sid,
                "from": {"address": SENDER, "channel": "SMS"},
                "to": {"address": PHONE, "channel": "phone"},
                "tags": {},
            }),
        )
    }

    /// `com.twilio.comms-api.email.<status>` for email `email` of `op`, sent to `address`.
    pub fn email(status: &str, op: &str, email: &str, address: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.email.{status}"),
            "/v1/Emails",
            json!({
                "operation_id": op,
                "email_id": email,
                "from": {"address": "noreply@example.com", "name": "Example"},
                "to": {"address": address, "name": "Recipient"},
            }),
        )
    }

    /// `com.twilio.comms-api.push-notification.<status>` for `notification` of `op` via FCM.
    pub fn push(status: &str, op: &str, notification: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.push-notification.{status}"),
            "/v1/PushNotifications",
            json!({
                "operation_id": op,
                "push_notification_id": notification,
                "to": {"token": "device-token-1", "provider": "FCM"},
            }),
        )
    }

    /// `com.twilio.comms-api.operation.<phase>`.
    pub fn operation(phase: &str, op: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.operation.{phase}"),
            "/v1/Operations",
            json!({"operation_id": op}),
        )
    }

    fn data(&mut self) -> &mut Map<String, Value> {
        self.0["data"].as_object_mut().expect("data is an object")
    }

    /// The sender address and channel (`SMS`, `RCS`, `WHATSAPP`).
    pub fn from(mut self, address: &str, channel: &str) -> CloudEvent {
        self.data().insert(
            "from".into(),
            json!({"address": address, "channel": channel}),
        );
        self
    }

    /// The recipient phone address.
    pub fn to(mut self, address: &str) -> CloudEvent {
        self.data()
            .insert("to".into(), json!({"address": address, "channel": "phone"}));
        self
    }

    pub fn attempt(mut self, n: u32) -> CloudEvent {
        self.data().insert("attempt".into(), json!(n.to_string()));
        self
    }

    pub fn error_code(mut self, code: u32) -> CloudEvent {
        self.data().insert("error_code".into(), json!(code));
        self
    }

    pub fn tag(mut self, key: &str, value: &str) -> CloudEvent {
        let data = self.data();
        let tags = data.entry("tags").or_insert_with(|| json!({}));
        tags[key] = json!(value);
        self
    }

    pub fn time(mut self, time: &str) -> CloudEvent {
        self.0["time"] = json!(time);
        self
    }

    pub fn json(self) -> Value {
        self.0
    }
}

/// The body of an Event Streams request carrying `events`.
pub fn batch(events: impl IntoIterator<Item = CloudEvent>) -> Vec<u8> {
    let all: Vec<Value> = events.into_iter().map(CloudEvent::json).collect();
    serde_json::to_vec(&all).expect("serialisable")
}

/// One `message.<status>` event per message of `msgs` (of operation `op`), each over its own
/// attempt `SM<message id>`, as one Event Streams request body.
pub fn message_batch(status: &str, op: &str, msgs: &[String]) -> Vec<u8> {
    batch(
        msgs.iter()
            .map(|m| CloudEvent::message(status, op, m, &format!("SM{m}"))),
    )
}
