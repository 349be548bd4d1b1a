//! What is reachable from where: a separate admin listener for `/metrics` and the query API, and
//! an allow-list of source networks for the callback routes.

use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::CloudEvent,
};
use serde_json::Value;

const OP: &str = "comms_operation_01hexposure000000000000001";
const MSG: &str = "comms_message_01hexposure00000000000000001";

fn event() -> Value {
    CloudEvent::message("delivered", OP, MSG, "SM1").json()
}

async fn get_on(app: &TestApp, port: u16, path: &str) -> (u16, String) {
    let mut resp = app
        .client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("answered");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[actix_web::test]
async fn with_an_admin_listener_metrics_and_the_query_api_leave_the_public_listener() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_HTTP__ADMIN_LISTEN", "127.0.0.1:0")]).await;
    let admin = app.admin_port.expect("an admin port");
    assert_ne!(admin, app.port);

    // Act: a callback on the public listener, then every kind of request on both.
    app.apply_batch(&[event()]).await;
    let operation = format!("/v1/Messages/Operations/{OP}");
    let public_metrics = get_on(&app, app.port, "/metrics").await;
    let public_query = get_on(&app, app.port, &operation).await;
    let public_health = get_on(&app, app.port, "/healthz").await;
    let public_ready = get_on(&app, app.port, "/readyz").await;
    let admin_metrics = get_on(&app, admin, "/metrics").await;
    let admin_query = get_on(&app, admin, &operation).await;
    let admin_health = get_on(&app, admin, "/readyz").await;
    let body = serde_json::to_vec(&[event()]).unwrap();
    let admin_url = app
        .events_url(&body)
        .replace(&format!(":{}/", app.port), &format!(":{admin}/"));
    let admin_callback = app
        .post_raw(&admin_url, Some("application/json"), None, &[], body)
        .await;

    // Assert
    assert_eq!(public_metrics.0, 404, "{}", public_metrics.1);
    assert!(
        public_metrics.1.contains("\"code\":404"),
        "{}",
        public_metrics.1
    );
    assert_eq!(public_query.0, 404, "{}", public_query.1);
    assert!(
        !public_query.1.contains("PROCESSING"),
        "nothing of it shows"
    );
    assert_eq!(public_health.0, 200);
    assert_eq!(public_ready.0, 200);
    assert_eq!(admin_metrics.0, 200);
    assert!(admin_metrics.1.contains("tally_events_applied_total"));
    assert_eq!(admin_query.0, 200, "{}", admin_query.1);
    assert!(admin_query.1.contains(OP));
    assert_eq!(admin_health.0, 200);
    admin_callback.assert_json_error(404);
}

#[actix_web::test]
async fn without_an_admin_listener_everything_is_served_on_one() {
    // Arrange
    let app = spawn_app().await;

    // Act
    app.apply_batch(&[event()]).await;

    // Assert
    assert_eq!(app.admin_port, None);
    assert_eq!(app.get("/metrics").await.status.as_u16(), 200);
    assert_eq!(app.operation_json("Messages", OP).await["id"], OP);
}

#[actix_web::test]
async fn callbacks_from_outside_the_allowed_networks_get_403_and_are_counted() {
    // Arrange: only Twilio Event Streams' published range, which 127.0.0.1 is not in.
    let app = spawn_app_with(&[("TALLY_HTTP__CALLBACK_ALLOW_NETWORKS", "35.90.102.128/25")]).await;

    // Act
    let events = app.post_batch(&[event()]).await;
    let form = app
        .post_form(
            &[("operationId", OP), ("messageId", MSG)],
            &[("MessageSid", "SM1"), ("MessageStatus", "sent")],
        )
        .await;
    let spoofed = app
        .post_raw(
            &app.events_url(b"[]"),
            Some("application/json"),
            None,
            &[("x-forwarded-for", "35.90.102.130")],
            b"[]".to_vec(),
        )
        .await;

    // Assert: refused before anything else, even with a forged X-Forwarded-For (not trusted).
    for resp in [&events, &form, &spoofed] {
        resp.assert_json_error(403);
    }
    let scrape = app.metrics().await;
    let refused = |route| {
        scrape.sum(
            "tally_callbacks_refused_total",
            &[("route", route), ("reason", "source_not_allowed")],
        )
    };
    assert_eq!(refused("events"), 2.0);
    assert_eq!(refused("status"), 1.0);
    assert_eq!(scrape.sum("tally_signature_failures_total", &[]), 0.0);
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 0.0);
    assert_eq!(app.operation("Messages", OP).await.status.as_u16(), 404);
    assert_eq!(app.get("/healthz").await.status.as_u16(), 200);
}

#[actix_web::test]
async fn callbacks_from_an_allowed_network_are_served() {
    // Arrange
    let app = spawn_app_with(&[(
        "TALLY_HTTP__CALLBACK_ALLOW_NETWORKS",
        "35.90.102.128/25, 127.0.0.0/8",
    )])
    .await;

    // Act
    let resp = app.post_batch(&[event()]).await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(app.operation_json("Messages", OP).await["id"], OP);
}

#[actix_web::test]
async fn behind_a_trusted_proxy_the_source_is_the_last_forwarded_address() {
    // Arrange
    let app = spawn_app_with(&[
        ("TALLY_HTTP__CALLBACK_ALLOW_NETWORKS", "35.90.102.128/25"),
        ("TALLY_HTTP__TRUST_FORWARDED_HEADERS", "true"),
    ])
    .await;
    let body = serde_json::to_vec(&[event()]).unwrap();
    let url = app.events_url(&body);
    let signature = tally::signature::sign(crate::support::TOKEN, &url, &[]);
    let post = |xff: &'static str| {
        let (app, url, signature, body) = (&app, url.clone(), signature.clone(), body.clone());
        async move {
            let headers: Vec<(&str, &str)> = if xff.is_empty() {
                vec![]
            } else {
                vec![("x-forwarded-for", xff)]
            };
            app.post_raw(
                &url,
                Some("application/json"),
                Some(&signature),
                &headers,
                body,
            )
            .await
        }
    };

    // Act
    let from_twilio = post("35.90.102.130").await;
    let spoofed_first = post("35.90.102.130, 203.0.113.9").await;
    let junk = post("not-an-address").await;
    let none = post("").await;

    // Assert: the proxy appends what it saw, so only the last entry is believed.
    assert_eq!(from_twilio.status.as_u16(), 200, "{}", from_twilio.text());
    spoofed_first.assert_json_error(403);
    junk.assert_json_error(403);
    none.assert_json_error(403);
}
