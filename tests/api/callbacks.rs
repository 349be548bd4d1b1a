//! Signed callbacks in, Twilio-shaped operation state out.

use crate::support::{
    app::spawn_app,
    cloudevent::{sms_params, CloudEvent, PHONE},
};
use serde_json::json;

const OP: &str = "comms_operation_01h9krwprkeee8fzqspvwy6nq8";

fn message_id(n: u32) -> String {
    format!("comms_message_01h9krwprkeee8fzqspvwy6n{n:03}")
}

/// The raw body with `updatedAt` (the receive time, unknowable in advance) read from it.
fn updated_at(body: &serde_json::Value) -> String {
    let updated = body["updatedAt"].as_str().expect("updatedAt is a string");
    assert!(
        updated.ends_with('Z') && updated.len() == "2024-04-05T06:20:00.000Z".len(),
        "RFC 3339 UTC with milliseconds: {updated}"
    );
    updated.to_owned()
}

#[actix_web::test]
async fn a_signed_batch_is_applied_and_the_message_operation_shows_as_twilio_shows_it() {
    // Arrange
    let app = spawn_app().await;
    let (m1, m2, m3) = (message_id(1), message_id(2), message_id(3));
    let batch = vec![
        CloudEvent::operation("processing", OP)
            .time("2024-04-05T06:20:01Z")
            .json(),
        CloudEvent::message("sent", OP, &m1, "SM00000000000000000000000000000001").json(),
        CloudEvent::message("delivered", OP, &m1, "SM00000000000000000000000000000001")
            .time("2024-04-05T06:20:04Z")
            .json(),
        CloudEvent::message("queued", OP, &m2, "SM00000000000000000000000000000002")
            .time("2024-04-05T06:20:02Z")
            .json(),
        CloudEvent::message("delivered", OP, &m3, "SM00000000000000000000000000000003").json(),
        CloudEvent::message("read", OP, &m3, "SM00000000000000000000000000000003").json(),
    ];

    // Act
    let resp = app.post_batch(&batch).await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"received": 6, "applied": 6, "noop": 0, "rejected": 0})
    );
    let op = app.operation("Messages", OP).await;
    assert_eq!(op.status.as_u16(), 200, "{}", op.text());
    let updated = updated_at(&op.json());
    assert_eq!(
        op.text(),
        format!(
            concat!(
                r#"{{"id":"{OP}","status":"PROCESSING","#,
                r#""stats":{{"total":3,"recipients":3,"attempts":3,"unaddressable":0,"#,
                r#""queued":1,"sent":0,"scheduled":0,"delivered":1,"read":1,"#,
                r#""undelivered":0,"failed":0,"canceled":0}},"#,
                r#""createdAt":"2024-04-05T06:20:00.000Z","updatedAt":"{updated}"}}"#
            ),
            OP = OP,
            updated = updated
        )
    );
}

#[actix_web::test]
async fn an_email_operation_shows_opened_and_neither_read_nor_unaddressable() {
    // Arrange
    let app = spawn_app().await;
    let op = "comms_operation_01hemail0000000000000000001";
    let (e1, e2, e3) = (
        "comms_email_01hemail000000000000000000001",
        "comms_email_01hemail000000000000000000002",
        "comms_email_01hemail000000000000000000003",
    );
    let batch = vec![
        CloudEvent::email("delivered", op, e1, "jane.doe@example.com").json(),
        CloudEvent::email("opened", op, e1, "jane.doe@example.com").json(),
        CloudEvent::email("sent", op, e2, "john.roe@example.com").json(),
        CloudEvent::email("undelivered", op, e3, "nobody@example.com").json(),
        CloudEvent::operation("completed", op).json(),
    ];

    // Act
    let summary = app.apply_batch(&batch).await;

    // Assert
    assert_eq!(
        summary,
        json!({"received": 5, "applied": 5, "noop": 0, "rejected": 0})
    );
    let resp = app.operation("Emails", op).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    let updated = updated_at(&resp.json());
    assert_eq!(
        resp.text(),
        format!(
            concat!(
                r#"{{"id":"{op}","status":"COMPLETED","#,
                r#""stats":{{"total":3,"queued":0,"sent":1,"scheduled":0,"delivered":0,"#,
                r#""opened":1,"undelivered":1,"failed":0,"canceled":0,"#,
                r#""recipients":3,"attempts":3}},"#,
                r#""createdAt":"2024-04-05T06:20:00.000Z","updatedAt":"{updated}"}}"#
            ),
            op = op,
            updated = updated
        )
    );
}

#[actix_web::test]
async fn a_push_operation_shows_the_push_stats_field_set() {
    // Arrange
    let app = spawn_app().await;
    let op = "comms_operation_01hpush00000000000000000001";
    let (p1, p2, p3) = (
        "comms_pushnotification_01hpush0000000000001",
        "comms_pushnotification_01hpush0000000000002",
        "comms_pushnotification_01hpush0000000000003",
    );
    let batch = vec![
        CloudEvent::push("sent", op, p1).json(),
        CloudEvent::push("queued", op, p2).json(),
        CloudEvent::push("failed", op, p3).error_code(52134).json(),
    ];

    // Act
    let summary = app.apply_batch(&batch).await;

    // Assert
    assert_eq!(
        summary,
        json!({"received": 3, "applied": 3, "noop": 0, "rejected": 0})
    );
    let resp = app.operation("PushNotifications", op).await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    let updated = updated_at(&resp.json());
    assert_eq!(
        resp.text(),
        format!(
            concat!(
                r#"{{"id":"{op}","status":"PROCESSING","#,
                r#""stats":{{"total":3,"recipients":3,"attempts":3,"#,
                r#""queued":1,"sent":1,"delivered":0,"undelivered":0,"failed":1,"#,
                r#""unaddressable":0,"scheduled":0,"canceled":0}},"#,
                r#""createdAt":"2024-04-05T06:20:00.000Z","updatedAt":"{updated}"}}"#
            ),
            op = op,
            updated = updated
        )
    );
}

#[actix_web::test]
async fn an_rcs_failure_then_an_sms_fallback_leaves_the_message_queued_then_delivered() {
    // Arrange: m1 fails over RCS and falls back to SMS; m2 fails, m3 is undelivered for good.
    let app = spawn_app().await;
    let (m1, m2, m3) = (message_id(1), message_id(2), message_id(3));
    let rcs_failed = CloudEvent::message("failed", OP, &m1, "SMrcs0000000000000000000000000001")
        .from("rcs:brand_agent", "RCS")
        .attempt(1)
        .error_code(63016)
        .json();
    let sms_queued = CloudEvent::message("queued", OP, &m1, "SMsms0000000000000000000000000001")
        .attempt(2)
        .json();
    let sms_delivered =
        CloudEvent::message("delivered", OP, &m1, "SMsms0000000000000000000000000001")
            .attempt(2)
            .json();
    let others = vec![
        CloudEvent::message("failed", OP, &m2, "SM00000000000000000000000000000002")
            .error_code(30003)
            .json(),
        CloudEvent::message("undelivered", OP, &m3, "SM00000000000000000000000000000003")
            .error_code(30005)
            .json(),
    ];

    // Act 1: the RCS attempt fails, the SMS fallback is queued.
    app.apply_batch(&[rcs_failed]).await;
    let after_failure = app.resource_json("Messages", &m1).await;
    app.apply_batch(&[sms_queued]).await;
    let after_fallback = app.resource_json("Messages", &m1).await;

    // Assert 1
    assert_eq!(after_failure["status"], "FAILED", "{after_failure}");
    assert_eq!(after_failure["errorCode"], 63016);
    assert_eq!(after_fallback["status"], "QUEUED", "{after_fallback}");
    assert_eq!(after_fallback["channel"], "SMS");
    assert_eq!(after_fallback["attemptCount"], 2);

    // Act 2: the SMS is delivered; two other messages fail for good.
    app.apply_batch(&[sms_delivered]).await;
    app.apply_batch(&others).await;

    // Assert 2
    let message = app.resource_json("Messages", &m1).await;
    assert_eq!(message["status"], "DELIVERED", "{message}");
    let attempts = message["attempts"].as_array().expect("attempts listed");
    assert_eq!(attempts.len(), 2, "{message}");
    let rcs = attempts
        .iter()
        .find(|a| a["channel"] == "RCS")
        .expect("the RCS attempt");
    assert_eq!(rcs["status"], "FAILED");
    assert_eq!(rcs["errorCode"], 63016);
    let sms = attempts
        .iter()
        .find(|a| a["channel"] == "SMS")
        .expect("the SMS attempt");
    assert_eq!(sms["status"], "DELIVERED");
    assert_eq!(sms["id"], "SMsms0000000000000000000000000001");
    let stats = &app.operation_json("Messages", OP).await["stats"];
    assert_eq!(stats["total"], 3, "{stats}");
    assert_eq!(stats["attempts"], 4, "{stats}");
    assert_eq!(stats["delivered"], 1, "{stats}");
    assert_eq!(stats["failed"], 1, "{stats}");
    assert_eq!(stats["undelivered"], 1, "{stats}");
    assert_eq!(stats["queued"], 0, "{stats}");

    let errors = app
        .get(&format!("/v1/Messages/Operations/{OP}/Errors"))
        .await;
    assert_eq!(errors.status.as_u16(), 200, "{}", errors.text());
    let errors = errors.json();
    let listed: Vec<(String, String, u64)> = errors["errors"]
        .as_array()
        .expect("errors listed")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().expect("id").to_owned(),
                e["status"].as_str().expect("status").to_owned(),
                e["errorCode"].as_u64().expect("an error code"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (m2.clone(), "FAILED".to_owned(), 30003),
            (m3.clone(), "UNDELIVERED".to_owned(), 30005),
        ]
    );
}

#[actix_web::test]
async fn a_form_callback_linked_by_its_query_parameters_updates_its_message() {
    // Arrange
    let app = spawn_app().await;
    let m1 = message_id(1);
    let link = [("operationId", OP), ("messageId", m1.as_str())];
    let sid = "SM10000000000000000000000000000001";

    // Act
    let sent = app.post_form(&link, &sms_params(sid, "sent")).await;
    let delivered = app.post_form(&link, &sms_params(sid, "delivered")).await;
    let late_sent = app.post_form(&link, &sms_params(sid, "sent")).await;

    // Assert
    for resp in [&sent, &delivered] {
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
        assert_eq!(
            resp.json(),
            json!({"received": 1, "applied": 1, "noop": 0, "rejected": 0})
        );
    }
    assert_eq!(late_sent.status.as_u16(), 200);
    assert_eq!(
        late_sent.json(),
        json!({"received": 1, "applied": 0, "noop": 1, "rejected": 0})
    );
    let message = app.resource_json("Messages", &m1).await;
    assert_eq!(message["status"], "DELIVERED", "{message}");
    assert_eq!(message["operationId"], OP);
    assert_eq!(message["channel"], "SMS");
    assert_eq!(message["to"][0]["address"], PHONE);
    assert_eq!(message["attempts"][0]["id"], sid);
    let stats = &app.operation_json("Messages", OP).await["stats"];
    assert_eq!(stats["delivered"], 1, "{stats}");
    assert_eq!(stats["attempts"], 1, "{stats}");
}

#[actix_web::test]
async fn a_form_callback_with_only_a_message_sid_is_held_until_a_comms_event_names_it() {
    // Arrange
    let app = spawn_app().await;
    let m1 = message_id(1);
    let sid = "SM20000000000000000000000000000001";

    // Act 1: the delivery receipt arrives before anything links its SID.
    let held = app.post_form(&[], &sms_params(sid, "delivered")).await;

    // Assert 1
    assert_eq!(held.status.as_u16(), 200, "{}", held.text());
    assert_eq!(
        held.json(),
        json!({"received": 1, "applied": 1, "noop": 0, "rejected": 0})
    );
    let scrape = app.metrics().await;
    assert_eq!(scrape.get("tally_held_attempts", &[]), Some(1.0));
    assert_eq!(app.operation("Messages", OP).await.status.as_u16(), 404);

    // Act 2: the Comms API event names the attempt.
    app.apply_batch(&[CloudEvent::message("sent", OP, &m1, sid).json()])
        .await;

    // Assert 2: merged, and the late `sent` does not undo the held `delivered`.
    let message = app.resource_json("Messages", &m1).await;
    assert_eq!(message["status"], "DELIVERED", "{message}");
    assert_eq!(message["attemptCount"], 1, "{message}");
    let stats = &app.operation_json("Messages", OP).await["stats"];
    assert_eq!(stats["delivered"], 1, "{stats}");
    assert_eq!(stats["sent"], 0, "{stats}");
    let scrape = app.metrics().await;
    assert_eq!(scrape.get("tally_held_attempts", &[]), Some(0.0));
}
