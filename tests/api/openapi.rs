//! `GET /openapi.json`: the OpenAPI document of the whole HTTP interface, served where `/metrics`
//! is, and naming only routes tally has (schemathesis checks the responses against it:
//! scripts/ci/schemathesis).

use crate::support::app::{spawn_app, spawn_app_with, TestApp};
use serde_json::Value;

async fn get_on(app: &TestApp, port: u16, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let mut resp = app
        .client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("answered");
    let body = resp.body().limit(4 << 20).await.expect("body");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (resp.status().as_u16(), ct, body.to_vec())
}

#[actix_web::test]
async fn the_document_is_served_as_json_on_the_admin_listener_only() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_HTTP__ADMIN_LISTEN", "127.0.0.1:0")]).await;
    let admin = app.admin_port.expect("an admin port");

    // Act
    let (admin_status, ct, body) = get_on(&app, admin, "/openapi.json").await;
    let (public_status, _, _) = get_on(&app, app.port, "/openapi.json").await;

    // Assert
    assert_eq!(admin_status, 200);
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(body, tally::openapi::DOCUMENT.as_bytes());
    assert_eq!(public_status, 404);
}

#[actix_web::test]
async fn every_documented_path_is_a_route_and_every_route_is_documented() {
    // Arrange
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json();
    let paths = doc["paths"].as_object().expect("paths");

    // Act: each documented path, its parameters filled in, with its documented method.
    let mut unrouted = vec![];
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "comms_x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let resp = app.get(&concrete).await;
        let status = resp.status.as_u16();
        let documented_get = item.get("get").is_some();
        // A POST route answers GET with 405; a GET route answers with one of its own codes.
        let fine = if documented_get {
            status != 404 || !resp.text().contains("no such route")
        } else {
            status == 405
        };
        if !fine {
            unrouted.push(format!("{path}: {status} {}", resp.text()));
        }
    }

    // Assert
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
    for route in [
        "/twilio/events",
        "/twilio/status",
        "/healthz",
        "/healthz/details",
        "/readyz",
        "/readyz/queries",
        "/metrics",
        "/openapi.json",
        "/v1/Messages",
        "/v1/Messages/{messageId}",
        "/v1/Messages/Operations",
        "/v1/Messages/Operations/{operationId}",
        "/v1/Messages/Operations/{operationId}/Errors",
        "/v1/Emails",
        "/v1/Emails/{emailId}",
        "/v1/Emails/Operations",
        "/v1/Emails/Operations/{operationId}",
        "/v1/Emails/Operations/{operationId}/Errors",
        "/v1/PushNotifications",
        "/v1/PushNotifications/{pushNotificationId}",
        "/v1/PushNotifications/Operations",
        "/v1/PushNotifications/Operations/{operationId}",
        "/v1/PushNotifications/Operations/{operationId}/Errors",
    ] {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    assert_eq!(paths.len(), 23, "{:?}", paths.keys().collect::<Vec<_>>());
}
