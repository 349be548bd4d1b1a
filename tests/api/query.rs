//! The query API, shaped like Twilio's: lists with filters and paging, one resource, operations,
//! and JSON errors.

use crate::support::{
    app::{spawn_app, TestApp},
    cloudevent::CloudEvent,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const OP: &str = "comms_operation_01hqry000000000000000000001";
const MESSAGES: usize = 23;

fn message_id(n: usize) -> String {
    format!("comms_message_01hqry0000000000000000{n:05}")
}

/// What message `n` ends as (its resource status bucket, lowercase).
fn final_status(n: usize) -> &'static str {
    ["delivered", "sent", "queued", "failed", "read"][n % 5]
}

fn has_rcs(n: usize) -> bool {
    n.is_multiple_of(4)
}

fn campaign(n: usize) -> &'static str {
    if n.is_multiple_of(2) {
        "spring"
    } else {
        "autumn"
    }
}

fn in_eu(n: usize) -> bool {
    n.is_multiple_of(3)
}

/// Twenty-three messages: every fourth tried RCS first; tags `campaign` and sometimes `region`.
async fn seed_messages(app: &TestApp) {
    let mut events = vec![];
    for n in 0..MESSAGES {
        let msg = message_id(n);
        let tagged = |ev: CloudEvent| {
            let ev = ev.tag("campaign", campaign(n));
            if in_eu(n) {
                ev.tag("region", "eu")
            } else {
                ev
            }
        };
        if has_rcs(n) {
            events.push(
                tagged(
                    CloudEvent::message("failed", OP, &msg, &format!("SMrcs{n:05}"))
                        .from("rcs:agent", "RCS")
                        .error_code(63016),
                )
                .json(),
            );
        }
        let sms = format!("SMsms{n:05}");
        let mut ev = CloudEvent::message(final_status(n), OP, &msg, &sms);
        if final_status(n) == "failed" {
            ev = ev.error_code(30003);
        }
        events.push(tagged(ev).json());
    }
    app.apply_batch(&events).await;
}

/// A query-string filter and which seeded messages it must list.
type FilterCase = (&'static str, fn(usize) -> bool);

/// Follow `pagination.next` from `first` to the end; returns every page's ids.
async fn all_pages(app: &TestApp, first: &str, items_key: &str) -> Vec<Vec<String>> {
    let mut pages = vec![];
    let mut next = Some(first.to_owned());
    while let Some(url) = next {
        let resp = app.get(&url).await;
        assert_eq!(resp.status.as_u16(), 200, "{url}: {}", resp.text());
        let body = resp.json();
        let ids: Vec<String> = body[items_key]
            .as_array()
            .unwrap_or_else(|| panic!("{items_key} is a list: {body}"))
            .iter()
            .map(|m| m["id"].as_str().expect("an id").to_owned())
            .collect();
        pages.push(ids);
        next = body["pagination"]["next"].as_str().map(str::to_owned);
        assert!(pages.len() <= MESSAGES + 1, "paging terminates");
    }
    pages
}

#[actix_web::test]
async fn messages_are_listed_with_filters_across_every_page_without_loss_or_repeat() {
    // Arrange
    let app = spawn_app().await;
    seed_messages(&app).await;
    let cases: Vec<FilterCase> = vec![
        ("", |_| true),
        ("&status=delivered", |n| final_status(n) == "delivered"),
        ("&status=FAILED", |n| final_status(n) == "failed"),
        ("&status=read", |n| final_status(n) == "read"),
        ("&channel=rcs", has_rcs),
        ("&channel=SMS", |_| true),
        ("&channel=whatsapp", |_| false),
        ("&tags=campaign%3Aspring%3B", |n| campaign(n) == "spring"),
        ("&tags=campaign%3Aspring%3Bregion%3Aeu%3B", |n| {
            campaign(n) == "spring" && in_eu(n)
        }),
        ("&status=delivered&channel=rcs", |n| {
            final_status(n) == "delivered" && has_rcs(n)
        }),
    ];

    for (filter, wanted) in cases {
        // Act
        let first = format!("/v1/Messages?operationId={OP}&pageSize=4{filter}");
        let pages = all_pages(&app, &first, "messages").await;

        // Assert
        let expected: Vec<String> = (0..MESSAGES)
            .filter(|&n| wanted(n))
            .map(message_id)
            .collect();
        let listed: Vec<String> = pages.concat();
        assert_eq!(listed, expected, "filter {filter:?}");
        assert!(
            pages.iter().all(|p| p.len() <= 4),
            "filter {filter:?}: {pages:?}"
        );
        let unique: BTreeSet<_> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "filter {filter:?}: no repeats");
    }
}

#[actix_web::test]
async fn a_messages_page_has_twilios_shape() {
    // Arrange
    let app = spawn_app().await;
    seed_messages(&app).await;

    // Act
    let resp = app
        .get(&format!("/v1/Messages?operationId={OP}&pageSize=5"))
        .await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    let body = resp.json();
    let keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["messages", "pagination"]);
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(5));
    let first = &body["messages"][0];
    assert_eq!(first["id"], message_id(0));
    assert_eq!(first["operationId"], OP);
    assert_eq!(first["status"], "DELIVERED");
    assert_eq!(first["tags"], json!({"campaign": "spring", "region": "eu"}));
    let pagination = &body["pagination"];
    let next = pagination["next"].as_str().expect("a next page");
    assert!(
        next.starts_with(&format!("{}/v1/Messages?", app.address)),
        "{next}"
    );
    assert!(next.contains("pageToken="), "{next}");
    assert!(pagination["self"].as_str().is_some(), "{pagination}");
}

#[actix_web::test]
async fn one_message_is_fetched_with_its_attempts() {
    // Arrange
    let app = spawn_app().await;
    seed_messages(&app).await;
    let id = message_id(12); // RCS failed, then SMS queued.

    // Act
    let resp = app.get(&format!("/v1/Messages/{id}")).await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    let message = resp.json();
    assert_eq!(message["id"], id);
    assert_eq!(message["operationId"], OP);
    assert_eq!(message["status"], "QUEUED");
    assert_eq!(message["channel"], "SMS");
    assert_eq!(
        message["to"],
        json!([{"address": crate::support::cloudevent::PHONE, "channel": "PHONE", "contactId": null}])
    );
    assert_eq!(message["attemptCount"], 2);
    assert_eq!(
        message["related"],
        json!([{"name": "operation", "id": OP, "uri": format!("/Messages/Operations/{OP}")}])
    );
    let mut attempts: Vec<(Value, Value, Value, Value)> = message["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["id"].clone(),
                a["channel"].clone(),
                a["status"].clone(),
                a["errorCode"].clone(),
            )
        })
        .collect();
    attempts.sort_by_key(|a| a.0.to_string());
    assert_eq!(
        attempts,
        vec![
            (
                json!("SMrcs00012"),
                json!("RCS"),
                json!("FAILED"),
                json!(63016)
            ),
            (
                json!("SMsms00012"),
                json!("SMS"),
                json!("QUEUED"),
                Value::Null
            ),
        ]
    );
}

#[actix_web::test]
async fn emails_are_listed_in_the_emails_shape_and_paged_by_token() {
    // Arrange
    let app = spawn_app().await;
    let op = "comms_operation_01hqry000000000000000000002";
    let ids: Vec<String> = (0..7)
        .map(|n| format!("comms_email_01hqry00000000000000{n:05}"))
        .collect();
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let status = if n % 2 == 0 { "opened" } else { "delivered" };
            CloudEvent::email(status, op, id, &format!("user{n}@example.com")).json()
        })
        .collect();
    app.apply_batch(&events).await;

    // Act
    let mut pages: Vec<Value> = vec![];
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            None => format!("/v1/Emails?operationId={op}&pageSize=3"),
            Some(t) => format!("/v1/Emails?operationId={op}&pageSize=3&pageToken={t}"),
        };
        let resp = app.get(&url).await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
        let body = resp.json();
        token = body["pagination"]["nextPageToken"]
            .as_str()
            .map(str::to_owned);
        pages.push(body);
        if token.is_none() || pages.len() > 5 {
            break;
        }
    }

    // Assert
    assert_eq!(pages.len(), 3);
    for page in &pages {
        let keys: Vec<&String> = page.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["data", "pagination"], "{page}");
        let pagination_keys: Vec<&String> = page["pagination"]
            .as_object()
            .expect("object")
            .keys()
            .collect();
        assert_eq!(pagination_keys, ["nextPageToken", "pageSize"], "{page}");
        assert_eq!(page["pagination"]["pageSize"], 3);
    }
    assert_eq!(pages[2]["pagination"]["nextPageToken"], Value::Null);
    let listed: Vec<String> = pages
        .iter()
        .flat_map(|p| p["data"].as_array().expect("data").clone())
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(pages[0]["data"][0]["status"], "OPENED");
    assert_eq!(pages[0]["data"][1]["status"], "DELIVERED");
    let opened = app
        .get(&format!("/v1/Emails?operationId={op}&status=opened"))
        .await
        .json();
    assert_eq!(opened["data"].as_array().map(Vec::len), Some(4));
}

#[actix_web::test]
async fn push_notifications_are_listed_under_notifications() {
    // Arrange
    let app = spawn_app().await;
    let op = "comms_operation_01hqry000000000000000000003";
    let id = "comms_pushnotification_01hqry000000000001";
    app.apply_batch(&[CloudEvent::push("sent", op, id).json()])
        .await;

    // Act
    let resp = app
        .get(&format!("/v1/PushNotifications?operationId={op}"))
        .await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    let body = resp.json();
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["notifications", "pagination"]);
    assert_eq!(body["notifications"][0]["id"], id);
    assert_eq!(body["notifications"][0]["status"], "SENT");
    assert_eq!(body["notifications"][0]["channel"], "FCM");
    assert_eq!(body["pagination"]["next"], Value::Null);
    let one = app.resource_json("PushNotifications", id).await;
    assert_eq!(one["status"], "SENT");
}

#[actix_web::test]
async fn operations_are_listed_per_family_and_by_status() {
    // Arrange
    let app = spawn_app().await;
    let ops: Vec<String> = (0..5)
        .map(|n| format!("comms_operation_01hqryops0000000000000{n:04}"))
        .collect();
    let mut events = vec![];
    for (n, op) in ops.iter().enumerate() {
        events
            .push(CloudEvent::message("sent", op, &message_id(n), &format!("SMops{n:05}")).json());
        if n % 2 == 0 {
            events.push(CloudEvent::operation("completed", op).json());
        }
    }
    let email_op = "comms_operation_01hqryops0000000000000email";
    events.push(
        CloudEvent::email("sent", email_op, "comms_email_01hqryops1", "a@example.com").json(),
    );
    app.apply_batch(&events).await;

    // Act
    let pages = all_pages(&app, "/v1/Messages/Operations?pageSize=2", "operations").await;
    let completed = app
        .get("/v1/Messages/Operations?status=COMPLETED")
        .await
        .json();
    let emails = app.get("/v1/Emails/Operations").await.json();

    // Assert
    assert_eq!(pages.concat(), ops);
    assert_eq!(pages.len(), 3);
    let completed_ids: Vec<&str> = completed["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .map(|o| o["id"].as_str().expect("id"))
        .collect();
    assert_eq!(completed_ids, [&ops[0], &ops[2], &ops[4]]);
    let first = &completed["operations"][0];
    let keys: Vec<&String> = first.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 5, "{first}");
    assert_eq!(first["status"], "COMPLETED");
    assert_eq!(first["stats"]["sent"], 1);
    assert_eq!(emails["operations"].as_array().map(Vec::len), Some(1));
    assert_eq!(emails["operations"][0]["id"], email_op);
}

#[actix_web::test]
async fn unknown_ids_and_wrong_families_are_404_with_a_json_body_that_echoes_nothing() {
    // Arrange
    let app = spawn_app().await;
    seed_messages(&app).await;
    let email_op = "comms_operation_01hqry000000000000000000004";
    let email = "comms_email_01hqry0000000000000000004";
    app.apply_batch(&[CloudEvent::email("sent", email_op, email, "a@example.com").json()])
        .await;
    let paths = [
        "/v1/Messages/Operations/comms_operation_unknown".to_owned(),
        "/v1/Messages/comms_message_unknown".to_owned(),
        "/v1/Messages?operationId=comms_operation_unknown".to_owned(),
        "/v1/Messages/Operations/comms_operation_unknown/Errors".to_owned(),
        format!("/v1/Messages/Operations/{email_op}"),
        format!("/v1/Emails/Operations/{OP}"),
        format!("/v1/PushNotifications/Operations/{OP}"),
        format!("/v1/Messages/{email}"),
        format!("/v1/Emails?operationId={OP}"),
        format!("/v1/Calls/Operations/{OP}"),
        "/v2/anything".to_owned(),
    ];

    // Act
    let mut responses = Vec::new();
    for path in &paths {
        responses.push(app.get(path).await);
    }

    // Assert: error bodies never repeat what was asked for.
    for (path, resp) in paths.iter().zip(&responses) {
        resp.assert_json_error(404);
        for asked in path
            .split(['/', '?', '='])
            .filter(|part| part.starts_with("comms_") || *part == "Calls")
        {
            assert!(
                !resp.text().contains(asked),
                "{path} echoed {asked}: {}",
                resp.text()
            );
        }
    }
}

#[actix_web::test]
async fn bad_paging_and_filters_are_400_with_a_json_body() {
    // Arrange
    let app = spawn_app().await;
    seed_messages(&app).await;

    // Act
    let responses = [
        app.get(&format!("/v1/Messages?operationId={OP}&pageSize=0"))
            .await,
        app.get(&format!("/v1/Messages?operationId={OP}&pageSize=1001"))
            .await,
        app.get(&format!("/v1/Messages?operationId={OP}&pageSize=ten"))
            .await,
        app.get(&format!("/v1/Messages?operationId={OP}&pageSize=-1"))
            .await,
        app.get(&format!("/v1/Messages?operationId={OP}&pageToken=zz"))
            .await,
        app.get(&format!("/v1/Messages?operationId={OP}&status=lost"))
            .await,
        app.get(&format!("/v1/Messages?operationId={OP}&tags=nocolon"))
            .await,
        app.get("/v1/Messages?pageSize=5").await,
        app.get("/v1/Messages/Operations?pageSize=0").await,
        app.get("/v1/Messages/Operations?status=DONE").await,
    ];

    // Assert
    for resp in &responses {
        resp.assert_json_error(400);
        for asked in ["lost", "DONE", "nocolon", "zz", "ten"] {
            assert!(
                !resp.text().contains(asked),
                "echoed {asked}: {}",
                resp.text()
            );
        }
    }
    let max = app
        .get(&format!("/v1/Messages?operationId={OP}&pageSize=1000"))
        .await;
    assert_eq!(max.status.as_u16(), 200);
    assert_eq!(
        max.json()["messages"].as_array().map(Vec::len),
        Some(MESSAGES)
    );
}

#[actix_web::test]
async fn the_errors_of_an_operation_list_only_failed_and_undelivered_messages_across_pages() {
    // Arrange: messages 3, 8, 13 and 18 fail; the RCS failures rescued by SMS do not count.
    let app = spawn_app().await;
    seed_messages(&app).await;
    let mut undelivered = vec![];
    for n in [5usize, 10] {
        let msg = message_id(n);
        undelivered.push(
            CloudEvent::message("undelivered", OP, &msg, &format!("SMund{n:05}"))
                .error_code(30005)
                .json(),
        );
    }
    // Messages 5 and 10 were delivered; a second attempt reported undelivered does not make
    // them errors: a success beats a failure.
    app.apply_batch(&undelivered).await;

    // Act
    let pages = all_pages(
        &app,
        &format!("/v1/Messages/Operations/{OP}/Errors?pageSize=3"),
        "errors",
    )
    .await;
    let first_page = app
        .get(&format!("/v1/Messages/Operations/{OP}/Errors?pageSize=3"))
        .await
        .json();

    // Assert
    let failed: Vec<String> = [3usize, 8, 13, 18].into_iter().map(message_id).collect();
    assert_eq!(pages.concat(), failed);
    assert_eq!(pages.len(), 2);
    for error in first_page["errors"].as_array().expect("errors") {
        assert_eq!(error["status"], "FAILED", "{error}");
        // Message 8 failed over RCS (63016) and then SMS (30003): either code explains it.
        let code = error["errorCode"].as_u64().expect("an error code");
        assert!([30003, 63016].contains(&code), "{error}");
        let sms = error["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .find(|a| a["channel"] == "SMS")
            .expect("an SMS attempt");
        assert_eq!(sms["errorCode"], 30003, "{error}");
    }
}
