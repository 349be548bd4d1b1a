//! The wire: a scenario's deliveries as the requests Twilio sends, CloudEvents batched into
//! Event Streams requests and classic form callbacks, and their signatures.

use super::{Delivery, Scenario};
use crate::event::{AttemptStatus, Channel, Kind, Phase};
use crate::signature;
use serde_json::{json, Map, Value};

impl Scenario {
    pub(super) fn cloud_event(&self, d: &Delivery) -> Value {
        let op = &self.operations[d.op as usize];
        if d.resource == u32::MAX {
            let (phase, at) = op.phases[d.item as usize];
            let name = match phase {
                Phase::Scheduled => "scheduled",
                Phase::Processing => "processing",
                Phase::Completed => "completed",
            };
            return envelope(
                &format!("com.twilio.comms-api.operation.{name}"),
                "/v1/Operations",
                event_id(d),
                at,
                json!({"operation_id": op.id}),
            );
        }
        let r = &op.resources[d.resource as usize];
        let a = &r.attempts[d.attempt as usize];
        let rep = a.reports[d.item as usize];
        let status = rep.status.as_str();
        let mut data = Map::new();
        data.insert("operation_id".into(), json!(op.id));
        let (ty, source) = match op.kind {
            Kind::Messages => {
                data.insert("message_id".into(), json!(r.id));
                if let Some(sid) = &a.sid {
                    data.insert("downstream_id".into(), json!(sid));
                }
                data.insert("attempt".into(), json!(a.number.to_string()));
                data.insert(
                    "from".into(),
                    json!({"address": SENDER, "channel": a.channel.as_api_str()}),
                );
                data.insert("to".into(), json!({"address": r.to, "channel": "phone"}));
                ("com.twilio.comms-api.message", "/v1/Messages")
            }
            Kind::Emails => {
                data.insert("email_id".into(), json!(r.id));
                data.insert(
                    "from".into(),
                    json!({"address": "noreply@example.com", "name": "Example"}),
                );
                data.insert("to".into(), json!({"address": r.to, "name": "Recipient"}));
                ("com.twilio.comms-api.email", "/v1/Emails")
            }
            Kind::PushNotifications => {
                data.insert("push_notification_id".into(), json!(r.id));
                data.insert(
                    "to".into(),
                    json!({"token": r.to, "provider": a.channel.as_api_str()}),
                );
                (
                    "com.twilio.comms-api.push-notification",
                    "/v1/PushNotifications",
                )
            }
        };
        if let Some(code) = rep.error_code {
            data.insert("error_code".into(), json!(code.to_string()));
        }
        data.insert(
            "tags".into(),
            Value::Object(super::truth::tags(d.resource as usize)),
        );
        envelope(
            &format!("{ty}.{status}"),
            source,
            event_id(d),
            rep.at_ms,
            Value::Object(data),
        )
    }

    pub(super) fn form(&self, d: &Delivery, linked: bool) -> Request {
        let op = &self.operations[d.op as usize];
        let r = &op.resources[d.resource as usize];
        let a = &r.attempts[d.attempt as usize];
        let rep = a.reports[d.item as usize];
        let sid = a.sid.clone().unwrap_or_default();
        let (from, to) = match a.channel {
            Channel::Whatsapp => (format!("whatsapp:{SENDER}"), format!("whatsapp:{}", r.to)),
            Channel::Rcs => (format!("rcs:{SENDER}"), r.to.clone()),
            _ => (SENDER.to_owned(), r.to.clone()),
        };
        let status = rep.status.as_str().to_owned();
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), ACCOUNT_SID.into()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("From".into(), from),
            ("To".into(), to),
            ("MessageSid".into(), sid.clone()),
            ("SmsSid".into(), sid),
            ("MessageStatus".into(), status.clone()),
            ("SmsStatus".into(), status),
        ];
        match a.channel {
            Channel::Whatsapp => params.push(("ChannelPrefix".into(), "whatsapp".into())),
            Channel::Rcs => params.push(("ChannelPrefix".into(), "rcs".into())),
            _ => {}
        }
        if let Some(code) = rep.error_code {
            params.push(("ErrorCode".into(), code.to_string()));
        }
        if rep.status == AttemptStatus::Read {
            params.push(("EventType".into(), "READ".into()));
        }
        let query = if linked {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("operationId", &op.id);
            q.append_pair("messageId", &r.id);
            Some(q.finish())
        } else {
            None
        };
        Request::form(query, params)
    }
}

pub(super) const SENDER: &str = "+15017122661";
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

fn event_id(d: &Delivery) -> String {
    format!(
        "EZ{:08x}{:08x}{:04x}{:04x}{:08x}",
        d.op, d.resource, d.attempt, d.item, 0
    )
}

fn envelope(ty: &str, source: &str, id: String, at_ms: u64, data: Value) -> Value {
    let time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
    )
    .to_string();
    json!({
        "specversion": "1.0",
        "type": ty,
        "source": source,
        "id": id,
        "dataschema": "https://events-schemas.twilio.com/CommsApi/1",
        "datacontenttype": "application/json",
        "time": time,
        "data": data,
    })
}

/// One HTTP request of the scenario, not yet signed (the signature depends on the URL).
#[derive(Debug, Clone)]
pub struct Request {
    /// `/twilio/events` or `/twilio/status?…`.
    pub path_and_query: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The form parameters (signed with the URL); empty for Event Streams.
    pub params: Vec<(String, String)>,
    /// Reports carried.
    pub events: usize,
}

impl Request {
    pub(super) fn events(events: &[Value]) -> Request {
        Request {
            path_and_query: "/twilio/events".into(),
            content_type: "application/json",
            body: serde_json::to_vec(events).unwrap_or_default(),
            params: Vec::new(),
            events: events.len(),
        }
    }

    fn form(query: Option<String>, params: Vec<(String, String)>) -> Request {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &params {
            body.append_pair(k, v);
        }
        Request {
            path_and_query: match query {
                Some(q) => format!("/twilio/status?{q}"),
                None => "/twilio/status".into(),
            },
            content_type: "application/x-www-form-urlencoded",
            body: body.finish().into_bytes(),
            params,
            events: 1,
        }
    }

    /// Sign as Twilio does for a webhook whose public base URL is `base` (no trailing slash).
    /// Returns the path and query to request (with `bodySHA256` for Event Streams) and the
    /// `X-Twilio-Signature` value.
    pub fn sign(&self, base: &str, token: &str) -> (String, String) {
        let base = base.trim_end_matches('/');
        if self.params.is_empty() {
            let url = signature::url_with_body_sha256(
                &format!("{base}{}", self.path_and_query),
                &self.body,
            );
            let sig = signature::sign(token, &url, &[]);
            (url[base.len()..].to_owned(), sig)
        } else {
            let url = format!("{base}{}", self.path_and_query);
            let sig = signature::sign(token, &url, &self.params);
            (self.path_and_query.clone(), sig)
        }
    }
}
