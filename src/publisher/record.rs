//! The pure encoding of tally's Kafka records: an operation's state, and optionally each changed
//! resource's. What the fields mean is in docs/kafka.md.

use crate::aggregator::ResourceSnapshot;
use crate::event::{Channel, Kind};
use crate::rollup::operation::rfc3339_ms;
use crate::rollup::{OperationStatus, OperationView, Stats};
use serde::Serialize;

/// One Kafka record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The operation id.
    pub key: String,
    /// JSON.
    pub value: Vec<u8>,
    /// `content-type` and `tally-kind`.
    pub headers: Vec<(&'static str, String)>,
}

/// The value of an operation record, fields in the order docs/kafka.md gives.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OperationValue<'a> {
    id: &'a str,
    kind: &'static str,
    status: OperationStatus,
    stats: Stats,
    created_at: String,
    updated_at: String,
    version: u64,
}

fn headers(kind: Kind) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("tally-kind", kind.as_str().to_owned()),
    ]
}

/// The record of one operation's state: key = operation id, JSON value
/// `{id, kind, status, stats, createdAt, updatedAt, version}`, headers `content-type` and
/// `tally-kind`.
pub fn record(view: &OperationView) -> Record {
    let value = OperationValue {
        id: &view.id,
        kind: view.kind.as_str(),
        status: view.status,
        stats: view.stats,
        created_at: rfc3339_ms(view.created_ms),
        updated_at: rfc3339_ms(view.updated_ms),
        version: view.version,
    };
    Record {
        key: view.id.clone(),
        value: serde_json::to_vec(&value).expect("plain data serialises"),
        headers: headers(view.kind),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptValue<'a> {
    id: Option<&'a str>,
    attempt: Option<&'a str>,
    channel: Option<&'static str>,
    status: String,
    error_code: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceValue<'a> {
    operation_id: &'a str,
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    to: Option<&'a str>,
    channel: Option<&'static str>,
    error_code: Option<u32>,
    tags: &'a std::collections::BTreeMap<String, String>,
    attempts: Vec<AttemptValue<'a>>,
    created_at: String,
    updated_at: String,
    operation_version: u64,
}

/// The record of one resource's state for `kafka.resources_topic`: key = its operation's id (so
/// it shares the operation's partition), the resource with every attempt (which channel was
/// tried, with which outcome and error code), and the operation's `version` at the time.
pub fn resource_record(s: &ResourceSnapshot, operation_version: u64) -> Record {
    let r = &s.resource;
    let value = ResourceValue {
        operation_id: &s.operation_id,
        kind: s.kind.as_str(),
        id: &r.id,
        status: s.status.api_str(s.kind),
        to: r.to.as_deref(),
        channel: r
            .best_attempt()
            .and_then(|a| a.channel)
            .map(Channel::as_api_str),
        error_code: r.error_code(),
        tags: &r.tags,
        attempts: r
            .attempts
            .iter()
            .map(|a| AttemptValue {
                id: a.downstream_id.as_deref(),
                attempt: a.attempt.as_deref(),
                channel: a.channel.map(Channel::as_api_str),
                status: a.status.as_str().to_ascii_uppercase(),
                error_code: a.error_code,
            })
            .collect(),
        created_at: rfc3339_ms(r.created_ms),
        updated_at: rfc3339_ms(r.updated_ms),
        operation_version,
    };
    Record {
        key: s.operation_id.clone(),
        value: serde_json::to_vec(&value).expect("plain data serialises"),
        headers: headers(s.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttemptEvent, AttemptStatus};
    use crate::rollup::Operation;

    fn view_of(kind: Kind) -> OperationView {
        let (res, ch) = match kind {
            Kind::Messages => ("comms_message_a", Channel::Sms),
            Kind::Emails => ("comms_email_a", Channel::Email),
            Kind::PushNotifications => ("comms_pushnotification_a", Channel::Fcm),
        };
        let mut op = Operation::new("comms_operation_1", 1_712_298_000_000, 1_712_298_000_000);
        let ev = AttemptEvent {
            kind: Some(kind),
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some(res.into()),
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: Some(ch),
            status: AttemptStatus::Delivered,
            error_code: None,
            to: Some("+15550100".into()),
            tags: vec![("campaign".into(), "spring".into())],
        };
        op.apply_attempt(res, &ev, 1_712_298_000_000, 1_712_298_001_500);
        op.view()
    }

    #[test]
    fn an_operation_record_is_keyed_by_id_with_the_documented_value_and_headers() {
        let rec = record(&view_of(Kind::Messages));
        assert_eq!(rec.key, "comms_operation_1");
        assert_eq!(
            std::str::from_utf8(&rec.value).unwrap(),
            concat!(
                r#"{"id":"comms_operation_1","kind":"messages","status":"PROCESSING","#,
                r#""stats":{"total":1,"recipients":1,"attempts":1,"unaddressable":0,"queued":0,"#,
                r#""sent":0,"scheduled":0,"delivered":1,"read":0,"undelivered":0,"failed":0,"#,
                r#""canceled":0},"createdAt":"2024-04-05T06:20:00.000Z","#,
                // The lattice height: 1 for the resource, 1 + 8 for its
                // delivered attempt, 3 for the kind noted (messages).
                r#""updatedAt":"2024-04-05T06:20:01.500Z","version":13}"#
            )
        );
        assert_eq!(
            rec.headers,
            vec![
                ("content-type", "application/json".to_owned()),
                ("tally-kind", "messages".to_owned())
            ]
        );
    }

    #[test]
    fn each_kind_names_itself_in_the_value_and_the_header_and_keeps_its_stats_fields() {
        for (kind, name, bucket) in [
            (Kind::Emails, "emails", "opened"),
            (
                Kind::PushNotifications,
                "push_notifications",
                "unaddressable",
            ),
        ] {
            let rec = record(&view_of(kind));
            let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
            assert_eq!(v["kind"], name);
            assert_eq!(rec.headers[1], ("tally-kind", name.to_owned()));
            assert!(v["stats"].get(bucket).is_some(), "{kind:?}: {v}");
            let text = std::str::from_utf8(&rec.value).unwrap();
            let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
            let order = [
                "id",
                "kind",
                "status",
                "stats",
                "createdAt",
                "updatedAt",
                "version",
            ];
            assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
            assert_eq!(v.as_object().unwrap().len(), order.len());
        }
    }

    #[test]
    fn a_resource_record_is_keyed_by_its_operation_and_lists_every_attempt() {
        let mut op = Operation::new("comms_operation_1", 0, 0);
        let mut rcs = AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some("comms_message_a".into()),
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: Some(Channel::Rcs),
            status: AttemptStatus::Failed,
            error_code: Some(30008),
            to: None,
            tags: vec![],
        };
        op.apply_attempt("comms_message_a", &rcs, 0, 0);
        rcs.downstream_id = Some("SM2".into());
        rcs.channel = Some(Channel::Sms);
        rcs.status = AttemptStatus::Delivered;
        rcs.error_code = None;
        op.apply_attempt("comms_message_a", &rcs, 0, 10);
        let snap = ResourceSnapshot {
            operation_id: op.id.clone(),
            kind: op.kind(),
            status: op.resource("comms_message_a").unwrap().status(),
            resource: op.resource("comms_message_a").unwrap().clone(),
        };
        let rec = resource_record(&snap, op.version());
        assert_eq!(rec.key, "comms_operation_1");
        let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
        assert_eq!(v["id"], "comms_message_a");
        assert_eq!(v["status"], "DELIVERED");
        assert_eq!(v["channel"], "SMS");
        // 1 (resource) + 1 + 6 + 1 (failed, with its error code) + 1 + 8 (delivered) + 3 (kind).
        assert_eq!(v["operationVersion"], 21);
        assert_eq!(v["attempts"][0]["channel"], "RCS");
        assert_eq!(v["attempts"][0]["status"], "FAILED");
        assert_eq!(v["attempts"][0]["errorCode"], 30008);
        assert_eq!(v["attempts"][1]["status"], "DELIVERED");
    }
}
