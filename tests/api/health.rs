//! `/healthz` and `/readyz`.

use crate::support::app::{spawn_app, spawn_app_with};

#[actix_web::test]
async fn healthz_answers_200_while_the_server_runs() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let resp = app.get("/healthz").await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200);
    assert_eq!(resp.json()["status"], "ok");
}

#[actix_web::test]
async fn readyz_is_200_when_an_auth_token_is_configured() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let resp = app.get("/readyz").await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["problems"], serde_json::json!([]));
}

#[actix_web::test]
async fn readyz_is_503_with_a_reason_when_no_auth_token_is_configured() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_TWILIO__AUTH_TOKENS", "")]).await;

    // Act
    let resp = app.get("/readyz").await;

    // Assert
    assert_eq!(resp.status.as_u16(), 503, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["ready"], false);
    let problems = body["problems"].as_array().expect("problems is a list");
    assert_eq!(problems.len(), 1, "{body}");
    assert_eq!(problems[0]["component"], "signature");
    let message = problems[0]["message"].as_str().expect("a reason");
    assert!(message.contains("auth token"), "{message}");
    // And the liveness probe is unaffected.
    assert_eq!(app.get("/healthz").await.status.as_u16(), 200);
}
