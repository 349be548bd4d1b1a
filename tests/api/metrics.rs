//! `/metrics`: every event accounted for, bounded labels only.

use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::{sms_params, CloudEvent, PHONE, SENDER},
    scrape::Scrape,
};
use serde_json::json;

const OP: &str = "comms_operation_01hmet000000000000000000001";
const UK_PHONE: &str = "+447700900123";
const EMAIL_OP: &str = "comms_operation_01hmet000000000000000000002";

fn message_id(n: u32) -> String {
    format!("comms_message_01hmet00000000000000000{n:04}")
}

/// A bit of everything: applied, duplicate, stale, rejected, held, refused, two kinds.
async fn scenario(app: &TestApp) {
    let (m1, m2) = (message_id(1), message_id(2));
    let batch = vec![
        CloudEvent::operation("processing", OP).json(),
        CloudEvent::message("sent", OP, &m1, "SM60000000000000000000000000000001").json(),
        CloudEvent::message("delivered", OP, &m1, "SM60000000000000000000000000000001").json(),
        CloudEvent::message("failed", OP, &m2, "SM60000000000000000000000000000002")
            .from("rcs:agent", "RCS")
            .to(UK_PHONE)
            .error_code(63016)
            .json(),
        CloudEvent::message("bogus", OP, &m2, "SM60000000000000000000000000000002").json(),
        json!("not an event"),
        CloudEvent::email(
            "delivered",
            EMAIL_OP,
            "comms_email_01hmet000000000000001",
            "jane.doe@example.com",
        )
        .json(),
    ];
    app.apply_batch(&batch).await;
    // Duplicates and a stale status.
    app.apply_batch(&batch[1..3]).await;
    app.apply_batch(&[
        CloudEvent::message("sent", OP, &m1, "SM60000000000000000000000000000001").json(),
    ])
    .await;
    // A linked and an unlinked form callback.
    let link = [("operationId", OP), ("messageId", m2.as_str())];
    let linked = app
        .post_form(
            &link,
            &sms_params("SM60000000000000000000000000000003", "queued"),
        )
        .await;
    assert_eq!(linked.status.as_u16(), 200);
    let held = app
        .post_form(
            &[],
            &sms_params("SM60000000000000000000000000000099", "sent"),
        )
        .await;
    assert_eq!(held.status.as_u16(), 200);
    // Refusals.
    let unsigned = app
        .post_raw(
            &app.events_url(b"[]"),
            Some("application/json"),
            None,
            &[],
            b"[]".to_vec(),
        )
        .await;
    assert_eq!(unsigned.status.as_u16(), 403);
    assert_eq!(
        app.post_events_body(b"{".to_vec()).await.status.as_u16(),
        400
    );
}

#[actix_web::test]
async fn every_event_received_is_counted_once_as_applied_noop_or_rejected() {
    // Arrange
    let app = spawn_app().await;
    scenario(&app).await;

    // Act
    let scrape = app.metrics().await;

    // Assert
    let received = scrape.sum("tally_events_received_total", &[]);
    let applied = scrape.sum("tally_events_applied_total", &[]);
    let noop = scrape.sum("tally_events_noop_total", &[]);
    let rejected = scrape.sum("tally_events_rejected_total", &[]);
    assert_eq!(received, 7.0 + 2.0 + 1.0 + 2.0);
    assert_eq!(received, applied + noop + rejected);
    assert_eq!(rejected, 2.0);
    assert_eq!(noop, 3.0);
    assert_eq!(
        scrape.sum("tally_events_received_total", &[("route", "events")]),
        10.0
    );
    assert_eq!(
        scrape.sum("tally_events_received_total", &[("route", "status")]),
        2.0
    );
    assert_eq!(
        scrape.sum(
            "tally_events_rejected_total",
            &[("reason", "unknown_status")]
        ),
        1.0
    );
    assert_eq!(
        scrape.sum("tally_events_rejected_total", &[("reason", "malformed")]),
        1.0
    );
    assert_eq!(
        scrape.sum("tally_events_applied_total", &[("kind", "unlinked")]),
        1.0
    );
}

#[actix_web::test]
async fn callbacks_are_counted_by_route_and_status_code() {
    // Arrange
    let app = spawn_app().await;
    scenario(&app).await;

    // Act
    let scrape = app.metrics().await;

    // Assert
    let callbacks = |route: &str, code: &str| {
        scrape.get("tally_callbacks_total", &[("route", route), ("code", code)])
    };
    assert_eq!(callbacks("events", "200"), Some(3.0));
    assert_eq!(callbacks("events", "403"), Some(1.0));
    assert_eq!(callbacks("events", "400"), Some(1.0));
    assert_eq!(callbacks("status", "200"), Some(2.0));
    assert_eq!(
        scrape.sum(
            "tally_signature_failures_total",
            &[("route", "events"), ("reason", "missing")]
        ),
        1.0
    );
    assert!(
        scrape.sum(
            "tally_http_request_duration_seconds_count",
            &[("route", "events")]
        ) >= 5.0
    );
}

#[actix_web::test]
async fn gauges_mirror_the_operations_resources_and_held_attempts_tracked() {
    // Arrange
    let app = spawn_app().await;
    scenario(&app).await;

    // Act
    let scrape = app.metrics().await;

    // Assert
    let operations = |kind: &str, status: &str| {
        scrape.get("tally_operations", &[("kind", kind), ("status", status)])
    };
    assert_eq!(operations("messages", "PROCESSING"), Some(1.0));
    assert_eq!(operations("emails", "PROCESSING"), Some(1.0));
    assert_eq!(operations("messages", "COMPLETED"), Some(0.0));
    assert_eq!(operations("push_notifications", "PROCESSING"), Some(0.0));
    assert_eq!(scrape.sum("tally_operations", &[]), 2.0);
    assert_eq!(scrape.get("tally_resources", &[]), Some(3.0));
    assert_eq!(scrape.get("tally_attempts", &[]), Some(4.0));
    assert_eq!(scrape.get("tally_held_attempts", &[]), Some(1.0));
}

fn assert_no_unbounded_label_values(scrape: &Scrape, forbidden: &[&str]) {
    for (metric, label, value) in scrape.label_values() {
        for needle in forbidden {
            assert!(
                !value.contains(needle),
                "{metric}{{{label}={value:?}}} carries {needle:?}"
            );
        }
        let digits = value.chars().filter(char::is_ascii_digit).count();
        assert!(
            digits < 6 || label == "le",
            "{metric}{{{label}={value:?}}} looks like an id or a number"
        );
        assert!(value.len() <= 32, "{metric}{{{label}={value:?}}} is long");
    }
}

#[actix_web::test]
async fn no_label_value_carries_an_id_an_address_or_a_phone_number() {
    // Arrange
    let app = spawn_app().await;
    scenario(&app).await;

    // Act
    let scrape = app.metrics().await;

    // Assert
    assert!(scrape.samples.len() > 20, "a real scrape");
    assert_no_unbounded_label_values(
        &scrape,
        &[
            "comms_",
            "SM6",
            PHONE,
            SENDER,
            "5558675310",
            "@",
            "example.com",
            "rcs:",
            "AC0000",
        ],
    );
}

#[actix_web::test]
async fn a_new_attempt_on_another_channel_counts_one_fallback_and_error_codes_count_by_class() {
    // Arrange: the scenario's m2 failed on RCS (63016), then got a queued SMS attempt.
    let app = spawn_app().await;
    scenario(&app).await;
    let m3 = message_id(3);
    app.apply_batch(&[
        CloudEvent::message("failed", OP, &m3, "SM60000000000000000000000000000031")
            .from("whatsapp:+15017122661", "WHATSAPP")
            .error_code(12345)
            .json(),
        CloudEvent::message("undelivered", OP, &m3, "SM60000000000000000000000000000032")
            .error_code(30003)
            .json(),
    ])
    .await;
    // Duplicates of both attempts: no new attempt, no new fallback, no new error.
    app.apply_batch(&[
        CloudEvent::message("failed", OP, &m3, "SM60000000000000000000000000000031")
            .from("whatsapp:+15017122661", "WHATSAPP")
            .error_code(12345)
            .json(),
        CloudEvent::message("undelivered", OP, &m3, "SM60000000000000000000000000000032")
            .error_code(30003)
            .json(),
    ])
    .await;

    // Act
    let scrape = app.metrics().await;

    // Assert
    let fallbacks = |from: &str, to: &str| {
        scrape.get(
            "tally_channel_fallbacks_total",
            &[("from", from), ("to", to)],
        )
    };
    assert_eq!(fallbacks("rcs", "sms"), Some(1.0));
    assert_eq!(fallbacks("whatsapp", "sms"), Some(1.0));
    assert_eq!(fallbacks("rcs", "whatsapp"), Some(0.0), "declared at zero");
    assert_eq!(scrape.sum("tally_channel_fallbacks_total", &[]), 2.0);
    let errors = |channel: &str, class: &str| {
        scrape.get(
            "tally_delivery_errors_total",
            &[
                ("kind", "messages"),
                ("channel", channel),
                ("code_class", class),
            ],
        )
    };
    assert_eq!(errors("rcs", "63016"), Some(1.0));
    assert_eq!(errors("whatsapp", "other"), Some(1.0));
    assert_eq!(errors("sms", "30003"), Some(1.0));
    assert_eq!(scrape.sum("tally_delivery_errors_total", &[]), 3.0);
}

#[actix_web::test]
async fn a_held_attempt_released_on_another_channel_counts_as_a_fallback_once() {
    // Arrange: an RCS attempt of m4 fails; an SMS status callback for a SID nothing names yet
    // is held; then a Comms API event names that SID as m4's next attempt.
    let app = spawn_app().await;
    let m4 = message_id(4);
    let sms_sid = "SM60000000000000000000000000000042";
    app.apply_batch(&[CloudEvent::message(
        "failed",
        OP,
        &m4,
        "SM60000000000000000000000000000041",
    )
    .from("rcs:agent", "RCS")
    .error_code(30008)
    .json()])
        .await;
    let held = app.post_form(&[], &sms_params(sms_sid, "delivered")).await;
    assert_eq!(held.status.as_u16(), 200);

    // Act
    app.apply_batch(&[CloudEvent::message("sent", OP, &m4, sms_sid).json()])
        .await;
    let scrape = app.metrics().await;

    // Assert
    assert_eq!(
        scrape.get(
            "tally_channel_fallbacks_total",
            &[("from", "rcs"), ("to", "sms")]
        ),
        Some(1.0)
    );
    assert_eq!(scrape.sum("tally_channel_fallbacks_total", &[]), 1.0);
    assert_eq!(scrape.get("tally_held_attempts", &[]), Some(0.0));
}

#[actix_web::test]
async fn fallbacks_replayed_from_the_journal_at_start_up_are_not_counted_again() {
    // Arrange: a fallback counted by a first process that journals it.
    let dir =
        std::env::temp_dir().join(format!("tally-api-fallback-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let storage = dir.to_str().expect("UTF-8 path");
    let m5 = message_id(5);
    let first = spawn_app_with(&[("TALLY_STORAGE__DIR", storage)]).await;
    first
        .apply_batch(&[
            CloudEvent::message("failed", OP, &m5, "SM60000000000000000000000000000051")
                .from("rcs:agent", "RCS")
                .json(),
            CloudEvent::message("sent", OP, &m5, "SM60000000000000000000000000000052").json(),
        ])
        .await;
    let counted = |s: &Scrape| {
        s.get(
            "tally_channel_fallbacks_total",
            &[("from", "rcs"), ("to", "sms")],
        )
    };
    assert_eq!(counted(&first.metrics().await), Some(1.0));
    first.stop().await.expect("the first process stops cleanly");

    // Act: a second process recovers the same state from the journal.
    let second = spawn_app_with(&[("TALLY_STORAGE__DIR", storage)]).await;
    let scrape = second.metrics().await;

    // Assert: the state is back, the fallback is not counted twice.
    assert_eq!(scrape.get("tally_attempts", &[]), Some(2.0));
    assert_eq!(counted(&scrape), Some(0.0));
    second
        .stop()
        .await
        .expect("the second process stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
