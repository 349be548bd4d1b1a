//! Classic Programmable Messaging status callbacks: `application/x-www-form-urlencoded` bodies
//! (docs/contract.md, "Status callbacks").
//!
//! A callback names only the attempt (`MessageSid`) and its status. The links to a resource and an
//! operation come from the query string of the StatusCallback URL, where the sender put
//! `operationId` and `messageId`; without them the attempt stays unlinked until some other event
//! links its SID.

use super::BodyError;
use super::{
    bounded_address, bounded_id, default_messaging_channel, named_channel, parse_error_code,
    split_channel_prefix,
};
use crate::event::{AttemptEvent, AttemptStatus, Event, EventBody, Kind, SkipReason};

/// Decode one form-encoded status callback.
///
/// `params` are the decoded body pairs, `query` the decoded pairs of the request URL's query
/// string; `received_ms` (Unix milliseconds) is the event time, since classic callbacks carry
/// none. When a name repeats, its first non-empty value counts.
pub fn decode_form(
    params: &[(String, String)],
    query: &[(String, String)],
    received_ms: u64,
) -> Result<Event, SkipReason> {
    let param = |names: &[&str]| lookup(params, names);
    let status = status(
        param(&["EventType"]),
        param(&["MessageStatus", "SmsStatus"]),
    )?;
    let downstream_id = bounded_id(param(&["MessageSid", "SmsSid"]).map(str::to_owned))?
        .ok_or(SkipReason::MissingId)?;
    let operation_id =
        bounded_id(lookup(query, &["operationId", "operation_id"]).map(str::to_owned))?;
    let resource_id = bounded_id(lookup(query, &["messageId", "message_id"]).map(str::to_owned))?;
    // The link was put there by a Messages send; a recognisable prefix still has the last word.
    let kind = resource_id
        .as_deref()
        .map(|id| Kind::from_resource_id(id).unwrap_or(Kind::Messages));
    let (from, to) = (param(&["From"]), param(&["To"]));
    let channel = param(&["ChannelPrefix"])
        .and_then(named_channel)
        .or_else(|| from.and_then(|a| split_channel_prefix(a).0))
        .or_else(|| to.and_then(|a| split_channel_prefix(a).0))
        .unwrap_or_else(|| default_messaging_channel(Some(&downstream_id)));
    Ok(Event {
        time_ms: received_ms,
        body: EventBody::Attempt(AttemptEvent {
            kind,
            operation_id,
            resource_id,
            downstream_id: Some(downstream_id),
            attempt: None,
            channel: Some(channel),
            status,
            error_code: param(&["ErrorCode"]).and_then(parse_error_code),
            to: to.and_then(|a| bounded_address(split_channel_prefix(a).1)),
            tags: Vec::new(),
        }),
    })
}

/// Read a form-encoded body (or a query string) into its pairs, in order, repeats kept.
///
/// The same reading as `form_urlencoded::parse` (pairs split on `&`, empty pieces skipped, name
/// and value split at the first `=`, `+` as space, `%XX` decoded, a stray `%` kept), except that a
/// name or value that does not decode to UTF-8 makes the whole body unreadable instead of being
/// patched with U+FFFD: Twilio sends UTF-8, and two different byte strings must not read as one.
pub fn parse_form(input: &[u8]) -> Result<Vec<(String, String)>, BodyError> {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &b""[..]),
            };
            Ok((form_component(name)?, form_component(value)?))
        })
        .collect()
}

/// One name or value of a form body: `+` is a space, `%XY` the byte XY, and a `%` not followed
/// by two hex digits stands for itself. One pass, one allocation the size of the input.
fn form_component(raw: &[u8]) -> Result<String, BodyError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.iter().position(|&b| b == b'+' || b == b'%') {
        out.extend_from_slice(&rest[..at]);
        let (byte, used) = match rest[at] {
            b'+' => (b' ', 1),
            _ => match (
                rest.get(at + 1).and_then(hex),
                rest.get(at + 2).and_then(hex),
            ) {
                (Some(high), Some(low)) => (high << 4 | low, 3),
                _ => (b'%', 1),
            },
        };
        out.push(byte);
        rest = &rest[at + used..];
    }
    out.extend_from_slice(rest);
    String::from_utf8(out).map_err(|_| BodyError::FormNotUtf8)
}

fn hex(digit: &u8) -> Option<u8> {
    (*digit as char).to_digit(16).map(|d| d as u8)
}

/// The first non-empty value among `names`, in the order the names are given.
fn lookup<'a>(pairs: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| {
        pairs
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    })
}

/// `EventType=READ` is a read receipt whatever `MessageStatus` still says; otherwise the status
/// word decides. `opened` is an e-mail status and never comes from Programmable Messaging.
fn status(event_type: Option<&str>, word: Option<&str>) -> Result<AttemptStatus, SkipReason> {
    if event_type.is_some_and(|t| t.trim().eq_ignore_ascii_case("READ")) {
        return Ok(AttemptStatus::Read);
    }
    match word.and_then(AttemptStatus::parse) {
        Some(AttemptStatus::Opened) | None => Err(SkipReason::UnknownStatus),
        Some(status) => Ok(status),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{Channel, MAX_ID_BYTES};

    const RX: u64 = 1_700_000_000_000;
    const OP: &str = "comms_operation_01h9krwprkeee8fzqspvwy6nq8";
    const MSG: &str = "comms_message_01h9krwprkeee8fzqspvwy6nq8";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn linked() -> Vec<(String, String)> {
        pairs(&[("operationId", OP), ("messageId", MSG)])
    }

    fn attempt(params: &[(&str, &str)], query: &[(String, String)]) -> AttemptEvent {
        match decode_form(&pairs(params), query, RX).expect("decodes") {
            Event {
                time_ms: RX,
                body: EventBody::Attempt(attempt),
            } => attempt,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Twilio's documented example (outbound SMS → sent), plus `To`.
    const SMS_SENT: &[(&str, &str)] = &[
        ("AccountSid", "AC0000"),
        ("From", "+15017122661"),
        ("To", "+15558675310"),
        ("MessageSid", "SM0123"),
        ("MessageStatus", "sent"),
        ("SmsSid", "SM0123"),
        ("SmsStatus", "sent"),
    ];

    #[test]
    fn forms_read_as_form_urlencoded_reads_them_unless_they_are_not_utf8() {
        for body in [
            &b"MessageSid=SM1&MessageStatus=sent"[..],
            b"a=1&a=2&&=&b&c=%&d=%2&e=%zz&f=x=y&g=%2B+%20",
            b"To=%2B1555&Body=%C3%B1%E2%82%AC",
            b"",
            b"&&&",
        ] {
            let ours = parse_form(body).expect("UTF-8 forms read");
            let theirs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &b"MessageSid=SM%FF"[..],
            b"To=%C3%28",
            b"%FE=1",
            b"Body=\xff",
            b"x=%ED%A0%80",
        ] {
            assert_eq!(parse_form(body), Err(BodyError::FormNotUtf8));
        }
    }

    #[test]
    fn an_sms_callback_with_query_links() {
        assert_eq!(
            attempt(SMS_SENT, &linked()),
            AttemptEvent {
                kind: Some(Kind::Messages),
                operation_id: Some(OP.into()),
                resource_id: Some(MSG.into()),
                downstream_id: Some("SM0123".into()),
                attempt: None,
                channel: Some(Channel::Sms),
                status: AttemptStatus::Sent,
                error_code: None,
                to: Some("+15558675310".into()),
                tags: vec![],
            }
        );
    }

    #[test]
    fn an_sms_callback_without_query_links_stays_unlinked() {
        let got = attempt(SMS_SENT, &[]);
        assert_eq!(got.kind, None);
        assert_eq!(got.operation_id, None);
        assert_eq!(got.resource_id, None);
        assert_eq!(got.downstream_id.as_deref(), Some("SM0123"));
        assert_eq!(got.channel, Some(Channel::Sms));
    }

    #[test]
    fn an_mms_sid_means_mms() {
        let params = [("MessageSid", "MM0123"), ("MessageStatus", "delivered")];
        for query in [linked(), vec![]] {
            let got = attempt(&params, &query);
            assert_eq!(got.channel, Some(Channel::Mms));
            assert_eq!(got.status, AttemptStatus::Delivered);
        }
    }

    #[test]
    fn whatsapp_and_rcs_come_from_the_channel_prefix() {
        for (prefix, channel) in [("whatsapp", Channel::Whatsapp), ("rcs", Channel::Rcs)] {
            let to = format!("{prefix}:+15558675310");
            let params = [
                ("MessageSid", "SM1"),
                ("MessageStatus", "delivered"),
                ("ChannelPrefix", prefix),
                ("From", "MG123"),
                ("To", to.as_str()),
            ];
            for query in [linked(), vec![]] {
                let got = attempt(&params, &query);
                assert_eq!(got.channel, Some(channel));
                assert_eq!(got.to.as_deref(), Some("+15558675310"), "prefix stripped");
                assert_eq!(got.operation_id.is_some(), !query.is_empty());
            }
        }
    }

    #[test]
    fn an_address_prefix_names_the_channel_when_channel_prefix_is_absent() {
        let params = [
            ("MessageSid", "SM1"),
            ("MessageStatus", "sent"),
            ("From", "whatsapp:+1"),
            ("To", "whatsapp:+2"),
        ];
        assert_eq!(attempt(&params, &[]).channel, Some(Channel::Whatsapp));
    }

    #[test]
    fn event_type_read_is_a_read_receipt() {
        let params = [
            ("MessageSid", "SM1"),
            ("MessageStatus", "delivered"),
            ("EventType", "READ"),
            ("ChannelPrefix", "whatsapp"),
        ];
        assert_eq!(attempt(&params, &linked()).status, AttemptStatus::Read);
        let no_status = [("MessageSid", "SM1"), ("EventType", "read")];
        assert_eq!(attempt(&no_status, &[]).status, AttemptStatus::Read);
        let other = [
            ("MessageSid", "SM1"),
            ("MessageStatus", "sent"),
            ("EventType", "X"),
        ];
        assert_eq!(attempt(&other, &[]).status, AttemptStatus::Sent);
    }

    #[test]
    fn legacy_sms_names_are_accepted() {
        let params = [
            ("SmsSid", "SM7"),
            ("SmsStatus", "undelivered"),
            ("ErrorCode", "30005"),
        ];
        let got = attempt(&params, &[]);
        assert_eq!(got.downstream_id.as_deref(), Some("SM7"));
        assert_eq!(got.status, AttemptStatus::Undelivered);
        assert_eq!(got.error_code, Some(30005));
    }

    #[test]
    fn error_codes_are_parsed_and_junk_ignored() {
        let code = |c: &str| {
            attempt(
                &[
                    ("MessageSid", "SM1"),
                    ("MessageStatus", "failed"),
                    ("ErrorCode", c),
                ],
                &[],
            )
            .error_code
        };
        assert_eq!(code("30008"), Some(30008));
        assert_eq!(code("0"), None);
        assert_eq!(code("x"), None);
    }

    #[test]
    fn a_callback_without_a_sid_is_missing_id() {
        let params = pairs(&[("MessageStatus", "sent"), ("MessageSid", "")]);
        assert_eq!(
            decode_form(&params, &linked(), RX),
            Err(SkipReason::MissingId)
        );
    }

    #[test]
    fn missing_or_non_delivery_statuses_are_unknown() {
        for status in [
            "receiving",
            "received",
            "partially_delivered",
            "opened",
            "",
            "bogus",
        ] {
            let params = pairs(&[("MessageSid", "SM1"), ("MessageStatus", status)]);
            assert_eq!(
                decode_form(&params, &[], RX),
                Err(SkipReason::UnknownStatus),
                "{status}"
            );
        }
        let params = pairs(&[("MessageSid", "SM1")]);
        assert_eq!(
            decode_form(&params, &[], RX),
            Err(SkipReason::UnknownStatus)
        );
    }

    #[test]
    fn snake_case_query_links_are_accepted() {
        let query = pairs(&[("operation_id", OP), ("message_id", MSG)]);
        assert_eq!(attempt(SMS_SENT, &query), attempt(SMS_SENT, &linked()));
    }

    #[test]
    fn kind_comes_from_the_resource_prefix_else_messages() {
        let email = pairs(&[("messageId", "comms_email_1")]);
        assert_eq!(attempt(SMS_SENT, &email).kind, Some(Kind::Emails));
        let opaque = pairs(&[("messageId", "my-own-id")]);
        assert_eq!(attempt(SMS_SENT, &opaque).kind, Some(Kind::Messages));
        let only_operation = pairs(&[("operationId", OP)]);
        assert_eq!(attempt(SMS_SENT, &only_operation).kind, None);
    }

    #[test]
    fn the_first_non_empty_value_of_a_repeated_name_counts() {
        let params = [
            ("MessageSid", ""),
            ("MessageSid", "SM2"),
            ("MessageSid", "SM3"),
            ("MessageStatus", "sent"),
        ];
        assert_eq!(attempt(&params, &[]).downstream_id.as_deref(), Some("SM2"));
    }

    #[test]
    fn ids_longer_than_the_bound_are_rejected() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let params = pairs(&[("MessageSid", &long), ("MessageStatus", "sent")]);
        assert_eq!(decode_form(&params, &[], RX), Err(SkipReason::IdTooLong));
        let params = pairs(SMS_SENT);
        for key in ["operationId", "messageId"] {
            let query = pairs(&[(key, &long)]);
            assert_eq!(
                decode_form(&params, &query, RX),
                Err(SkipReason::IdTooLong),
                "{key}"
            );
        }
        let long_to = pairs(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "sent"),
            ("To", &long),
        ]);
        assert_eq!(
            attempt_of(&long_to).to,
            None,
            "a long address is dropped, not fatal"
        );
    }

    fn attempt_of(params: &[(String, String)]) -> AttemptEvent {
        match decode_form(params, &[], RX).unwrap().body {
            EventBody::Attempt(a) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn forms_read_as_form_urlencoded_reads_them(
            body in prop::collection::vec(prop::sample::select(
                b"%+=&aZ09fFgG\xc3\xb1\xff".to_vec()), 0..40),
        ) {
            let theirs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            match parse_form(&body) {
                Ok(ours) => prop_assert_eq!(ours, theirs),
                // form_urlencoded replaces what is not UTF-8; tally refuses it.
                Err(BodyError::FormNotUtf8) => prop_assert!(
                    theirs.iter().any(|(k, v)| k.contains(char::REPLACEMENT_CHARACTER) || v.contains(char::REPLACEMENT_CHARACTER))),
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }

        #[test]
        fn decode_form_never_panics(
            params in prop::collection::vec((
                prop_oneof![
                    prop::sample::select(vec!["MessageSid", "SmsSid", "MessageStatus",
                        "SmsStatus", "EventType", "ErrorCode", "ChannelPrefix", "To", "From"])
                        .prop_map(str::to_owned),
                    ".{0,10}",
                ],
                ".{0,300}",
            ), 0..12),
            query in prop::collection::vec((
                prop::sample::select(vec!["operationId", "messageId", "operation_id", "x"])
                    .prop_map(str::to_owned),
                ".{0,300}",
            ), 0..4),
            rx in any::<u64>(),
        ) {
            if let Ok(Event { body: EventBody::Attempt(a), time_ms }) = decode_form(&params, &query, rx) {
                prop_assert_eq!(time_ms, rx);
                prop_assert!(a.downstream_id.is_some());
                for id in [&a.operation_id, &a.resource_id, &a.downstream_id].into_iter().flatten() {
                    prop_assert!(!id.is_empty() && id.len() <= MAX_ID_BYTES);
                }
            }
        }
    }
}
