//! The shapes of Twilio's Communications API, one set of serde types per kind, used both ways:
//! the query API serves them and the reconciler reads them from Twilio (docs/contract.md,
//! "The query API" and "Reconciliation").
//!
//! Fields are declared in Twilio's order, so a body serialised from these types keeps Twilio's
//! key order; tally's own extras come after Twilio's fields and are left out when absent.
//! Reading is lenient as Twilio's reference asks: unknown fields are ignored and a missing field
//! takes its default (`None`, empty), never an error.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `GET /v1/{Kind}/Operations/{id}` and each item of the operations list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OperationBody {
    pub id: String,
    /// `SCHEDULED`, `PROCESSING`, `COMPLETED` or `CANCELED`.
    pub status: Option<String>,
    pub stats: ApiStats,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// An operation's stats. Every field is optional: each kind shows its own set (docs/contract.md,
/// "Operation status and stats"), and a field a kind does not show is left out when written and
/// `None` when read.
///
/// Written in `order` when it is set (tally sets it to its kind's order, Twilio's fields first:
/// `rollup::operation::stat_names`), else in the order declared here; fields absent from `order`
/// follow it in declaration order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ApiStats {
    pub total: Option<u64>,
    pub recipients: Option<u64>,
    pub attempts: Option<u64>,
    pub unaddressable: Option<u64>,
    pub queued: Option<u64>,
    pub sent: Option<u64>,
    pub scheduled: Option<u64>,
    pub delivered: Option<u64>,
    pub read: Option<u64>,
    pub opened: Option<u64>,
    pub undelivered: Option<u64>,
    pub failed: Option<u64>,
    pub canceled: Option<u64>,
    /// The order the fields are written in; never read from a body.
    #[serde(skip)]
    pub order: Option<&'static [&'static str]>,
}

impl ApiStats {
    /// Every field with its name, in declaration order.
    fn entries(&self) -> [(&'static str, Option<u64>); 13] {
        [
            ("total", self.total),
            ("recipients", self.recipients),
            ("attempts", self.attempts),
            ("unaddressable", self.unaddressable),
            ("queued", self.queued),
            ("sent", self.sent),
            ("scheduled", self.scheduled),
            ("delivered", self.delivered),
            ("read", self.read),
            ("opened", self.opened),
            ("undelivered", self.undelivered),
            ("failed", self.failed),
            ("canceled", self.canceled),
        ]
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<u64>> {
        Some(match name {
            "total" => &mut self.total,
            "recipients" => &mut self.recipients,
            "attempts" => &mut self.attempts,
            "unaddressable" => &mut self.unaddressable,
            "queued" => &mut self.queued,
            "sent" => &mut self.sent,
            "scheduled" => &mut self.scheduled,
            "delivered" => &mut self.delivered,
            "read" => &mut self.read,
            "opened" => &mut self.opened,
            "undelivered" => &mut self.undelivered,
            "failed" => &mut self.failed,
            "canceled" => &mut self.canceled,
            _ => return None,
        })
    }

    /// Stats with exactly the fields `names` (in that order), each valued by `value`; a name
    /// that is not a stats field is skipped.
    pub fn ordered(names: &'static [&'static str], value: impl Fn(&str) -> u64) -> ApiStats {
        let mut s = ApiStats {
            order: Some(names),
            ..ApiStats::default()
        };
        for &n in names {
            if let Some(slot) = s.slot(n) {
                *slot = Some(value(n));
            }
        }
        s
    }
}

impl Serialize for ApiStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries = self.entries();
        let order = self.order.unwrap_or(&[]);
        let value = |n: &str| entries.iter().find(|(k, _)| *k == n).and_then(|e| e.1);
        let mut m = s.serialize_map(None)?;
        for &n in order {
            if let Some(v) = value(n) {
                m.serialize_entry(n, &v)?;
            }
        }
        for (n, v) in entries {
            if let (Some(v), false) = (v, order.contains(&n)) {
                m.serialize_entry(n, &v)?;
            }
        }
        m.end()
    }
}

/// `GET /v1/{Kind}/Operations`: the operations list (tally's and Twilio's). Pagination comes in
/// either style, a `next` URL or a `nextPageToken`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperationPage {
    pub operations: Vec<OperationBody>,
    pub pagination: Pagination,
}

/// The `pagination` object of every list. Messages and push notifications page with URLs
/// (`next`, `self`), Emails with a token (`nextPageToken`, `pageSize`); a reader accepts either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Pagination {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Option<String>>,
    #[serde(rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_: Option<String>,
}

impl Pagination {
    /// URL-style pagination, as Messages and push notifications page.
    pub fn urls(next: Option<String>, self_: String) -> Pagination {
        Pagination {
            next: Some(next),
            self_: Some(self_),
            ..Pagination::default()
        }
    }

    /// Token-style pagination, as Emails page.
    pub fn token(next_page_token: Option<String>, page_size: u64) -> Pagination {
        Pagination {
            next_page_token: Some(next_page_token),
            page_size: Some(page_size),
            ..Pagination::default()
        }
    }

    /// Where the next page is, in whichever style the body used: a URL or a bare token.
    pub fn next_page(&self) -> Option<NextPage> {
        if let Some(Some(url)) = &self.next {
            if !url.is_empty() {
                return Some(NextPage::Url(url.clone()));
            }
        }
        if let Some(Some(tok)) = &self.next_page_token {
            if !tok.is_empty() {
                return Some(NextPage::Token(tok.clone()));
            }
        }
        None
    }
}

/// Where the next page of a list is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextPage {
    /// A URL, absolute or relative to the API base.
    Url(String),
    /// A `pageToken` to add to the same request.
    Token(String),
}

/// One entry of `related`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Related {
    pub name: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// A Message's sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageFrom {
    pub address: Option<String>,
    pub channel: Option<String>,
    pub sender_id: Option<String>,
}

/// One of a Message's recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageTo {
    pub address: Option<String>,
    pub channel: Option<String>,
    pub contact_id: Option<String>,
}

/// One delivery attempt, as tally shows it on a resource fetched by id (an extra of tally's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AttemptBody {
    pub id: Option<String>,
    pub attempt: Option<String>,
    pub channel: Option<String>,
    pub status: String,
    pub error_code: Option<u32>,
}

/// tally's own fields after Twilio's on every resource it serves; absent (and left out) in
/// what Twilio sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Extras {
    /// The channel of the attempt that decides the status (`SMS`, `RCS`, `EMAIL`, `FCM`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The error code of the best failed attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// How many delivery attempts tally has seen for this resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_count: Option<u64>,
    /// Every attempt, on `GET /v1/{Kind}/{id}` and the errors list only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptBody>>,
}

/// One Message (`GET /v1/Messages` items).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageItem {
    pub id: String,
    pub from: Option<MessageFrom>,
    pub to: Vec<MessageTo>,
    pub status: String,
    pub related: Vec<Related>,
    pub tags: BTreeMap<String, Value>,
    pub scheduled_for: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    /// The operation, an extra of tally's: Twilio names it only in `related`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    #[serde(flatten)]
    pub extras: Extras,
}

/// An Email's sender or recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailAddress {
    pub address: Option<String>,
    pub name: Option<String>,
}

/// One Email (`GET /v1/Emails` items, under `data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EmailItem {
    pub id: String,
    pub from: Option<EmailAddress>,
    pub to: Option<EmailAddress>,
    /// Subject and body: Twilio's; tally never keeps them and writes `null`.
    pub content: Option<Value>,
    pub status: String,
    pub tags: BTreeMap<String, Value>,
    pub operation_id: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    #[serde(flatten)]
    pub extras: Extras,
}

/// A push notification's target device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushTo {
    pub token: Option<String>,
    pub provider: Option<String>,
}

/// One PushNotification (`GET /v1/PushNotifications` items, under `notifications`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PushItem {
    pub id: String,
    pub to: Vec<PushTo>,
    pub status: String,
    pub related: Vec<Related>,
    pub tags: BTreeMap<String, Value>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    /// The operation, an extra of tally's: Twilio names it only in `related`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    #[serde(flatten)]
    pub extras: Extras,
}

/// `GET /v1/Messages?operationId=…`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessagePage {
    pub messages: Vec<MessageItem>,
    pub pagination: Pagination,
}

/// `GET /v1/Emails?operationId=…`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailPage {
    pub data: Vec<EmailItem>,
    pub pagination: Pagination,
}

/// `GET /v1/PushNotifications?operationId=…`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushPage {
    pub notifications: Vec<PushItem>,
    pub pagination: Pagination,
}

/// `GET /v1/{Kind}/Operations/{id}/Errors`: the failed and undelivered resources of an
/// operation, each in its kind's item shape (`MessageItem`, `EmailItem`, `PushItem`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorPage<T> {
    pub errors: Vec<T>,
    pub pagination: Pagination,
}

/// What the reconciler needs of one resource read from Twilio, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSummary {
    pub id: String,
    /// The operation it belongs to, when the item names it (`operationId` or `related`).
    pub operation_id: Option<String>,
    pub status: String,
    /// The recipient address (a phone number, an email address, a device token).
    pub to: Option<String>,
    /// String-valued tags (others are ignored).
    pub tags: Vec<(String, String)>,
}

fn related_operation(related: &[Related]) -> Option<String> {
    related
        .iter()
        .find(|r| r.name == "operation" && !r.id.is_empty())
        .map(|r| r.id.clone())
}

fn string_tags(tags: &BTreeMap<String, Value>) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

impl MessageItem {
    pub fn summary(&self) -> ResourceSummary {
        ResourceSummary {
            id: self.id.clone(),
            operation_id: self
                .operation_id
                .clone()
                .or_else(|| related_operation(&self.related)),
            status: self.status.clone(),
            to: self.to.first().and_then(|t| t.address.clone()),
            tags: string_tags(&self.tags),
        }
    }
}

impl EmailItem {
    pub fn summary(&self) -> ResourceSummary {
        ResourceSummary {
            id: self.id.clone(),
            operation_id: self.operation_id.clone(),
            status: self.status.clone(),
            to: self.to.as_ref().and_then(|t| t.address.clone()),
            tags: string_tags(&self.tags),
        }
    }
}

impl PushItem {
    pub fn summary(&self) -> ResourceSummary {
        ResourceSummary {
            id: self.id.clone(),
            operation_id: self
                .operation_id
                .clone()
                .or_else(|| related_operation(&self.related)),
            status: self.status.clone(),
            to: self.to.first().and_then(|t| t.token.clone()),
            tags: string_tags(&self.tags),
        }
    }
}

/// A page of resources of any kind, as the reconciler uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourcePage {
    pub items: Vec<ResourceSummary>,
    pub next: Option<NextPage>,
}

/// Read a resource list body of `kind` (its own list key and item shape).
pub fn parse_resource_page(
    kind: crate::event::Kind,
    body: &[u8],
) -> Result<ResourcePage, serde_json::Error> {
    use crate::event::Kind;
    Ok(match kind {
        Kind::Messages => {
            let p: MessagePage = serde_json::from_slice(body)?;
            ResourcePage {
                items: p.messages.iter().map(MessageItem::summary).collect(),
                next: p.pagination.next_page(),
            }
        }
        Kind::Emails => {
            let p: EmailPage = serde_json::from_slice(body)?;
            ResourcePage {
                items: p.data.iter().map(EmailItem::summary).collect(),
                next: p.pagination.next_page(),
            }
        }
        Kind::PushNotifications => {
            let p: PushPage = serde_json::from_slice(body)?;
            ResourcePage {
                items: p.notifications.iter().map(PushItem::summary).collect(),
                next: p.pagination.next_page(),
            }
        }
    })
}

/// The path segment of a kind in Twilio's API (`Messages`, `Emails`, `PushNotifications`).
pub fn family(kind: crate::event::Kind) -> &'static str {
    use crate::event::Kind;
    match kind {
        Kind::Messages => "Messages",
        Kind::Emails => "Emails",
        Kind::PushNotifications => "PushNotifications",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    #[test]
    fn each_kinds_list_is_read_with_its_own_key_pagination_and_recipient_shape() {
        let m =
            br#"{"messages":[{"id":"comms_message_1","to":[{"address":"+1415","channel":"PHONE"}],
            "status":"SENT","related":[{"name":"operation","id":"comms_operation_1","uri":"/x"}],
            "tags":{"a":"b","n":1},"unknownField":true}],
            "pagination":{"next":"https://comms.twilio.com/v1/Messages?pageToken=t","self":"s"}}"#;
        let p = parse_resource_page(Kind::Messages, m).unwrap();
        assert_eq!(
            p.items[0].operation_id.as_deref(),
            Some("comms_operation_1")
        );
        assert_eq!(p.items[0].to.as_deref(), Some("+1415"));
        assert_eq!(p.items[0].tags, vec![("a".into(), "b".into())]);
        assert!(matches!(p.next, Some(NextPage::Url(_))));
        let e = br#"{"data":[{"id":"comms_email_1","to":{"address":"a@b.c","name":"A"},
            "status":"DELIVERED","operationId":"comms_operation_2"}],
            "pagination":{"nextPageToken":"abc","pageSize":50}}"#;
        let p = parse_resource_page(Kind::Emails, e).unwrap();
        assert_eq!(p.items[0].to.as_deref(), Some("a@b.c"));
        assert_eq!(p.next, Some(NextPage::Token("abc".into())));
        let n = br#"{"notifications":[{"id":"comms_notification_1","to":[{"token":"T","provider":"FCM"}],
            "status":"SENT"}],"pagination":{"next":null}}"#;
        let p = parse_resource_page(Kind::PushNotifications, n).unwrap();
        assert_eq!(p.items[0].to.as_deref(), Some("T"));
        assert_eq!(p.items[0].operation_id, None);
        assert_eq!(p.next, None);
    }

    #[test]
    fn an_operation_reads_with_missing_and_unknown_fields() {
        let o: OperationBody = serde_json::from_slice(
            br#"{"id":"comms_operation_1","status":"CANCELED","stats":{"total":2,"delivered":1,"weird":3},"extra":{}}"#,
        )
        .unwrap();
        assert_eq!(o.status.as_deref(), Some("CANCELED"));
        assert_eq!(
            (o.stats.total, o.stats.delivered, o.stats.read),
            (Some(2), Some(1), None)
        );
        assert_eq!(o.created_at, None);
    }

    #[test]
    fn stats_are_written_in_their_order_and_read_whatever_the_order() {
        const ORDER: &[&str] = &["total", "opened", "failed", "recipients", "weird"];
        let s = ApiStats::ordered(ORDER, |n| n.len() as u64);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"total":5,"opened":6,"failed":6,"recipients":10}"#);
        let back: ApiStats = serde_json::from_str(&text).unwrap();
        assert_eq!(back.order, None);
        assert_eq!(
            (back.total, back.opened, back.read),
            (Some(5), Some(6), None)
        );
        // Without an order: the declaration order.
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            r#"{"total":5,"recipients":10,"opened":6,"failed":6}"#
        );
    }

    #[test]
    fn a_written_email_has_twilios_keys_with_content_null() {
        let text = serde_json::to_string(&EmailItem::default()).unwrap();
        assert_eq!(
            text,
            r#"{"id":"","from":null,"to":null,"content":null,"status":"","tags":{},"operationId":null,"createdAt":null,"updatedAt":null}"#
        );
    }

    #[test]
    fn a_written_message_keeps_twilios_key_order_with_extras_after() {
        let item = MessageItem {
            id: "comms_message_1".into(),
            operation_id: Some("comms_operation_1".into()),
            extras: Extras {
                channel: Some("SMS".into()),
                attempt_count: Some(1),
                ..Extras::default()
            },
            ..MessageItem::default()
        };
        let text = serde_json::to_string(&item).unwrap();
        assert_eq!(
            text,
            r#"{"id":"comms_message_1","from":null,"to":[],"status":"","related":[],"tags":{},"scheduledFor":null,"createdAt":null,"updatedAt":null,"deletedAt":null,"operationId":"comms_operation_1","channel":"SMS","attemptCount":1}"#
        );
    }
}
