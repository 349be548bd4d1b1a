//! The query API's credentials, and what never needs them.

use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::CloudEvent,
};

const OP: &str = "comms_operation_01hauth00000000000000000001";
const MSG: &str = "comms_message_01hauth0000000000000000001";

async fn spawn_guarded() -> TestApp {
    spawn_app_with(&[("TALLY_API__CREDENTIALS", "ops:pw,grafana:other-pw")]).await
}

#[actix_web::test]
async fn with_credentials_configured_the_query_api_answers_401_without_them() {
    // Arrange
    let app = spawn_guarded().await;
    app.apply_batch(&[CloudEvent::message("sent", OP, MSG, "SM7").json()])
        .await;
    let path = format!("/v1/Messages/Operations/{OP}");

    // Act
    let anonymous = app.get(&path).await;
    let wrong_password = app.get_as(&path, "ops", "wrong").await;
    let wrong_user = app.get_as(&path, "root", "pw").await;
    let not_basic = app
        .client
        .get(app.url(&path))
        .insert_header(("authorization", "Bearer pw"))
        .send()
        .await
        .expect("answered")
        .status();

    // Assert
    for resp in [&anonymous, &wrong_password, &wrong_user] {
        resp.assert_json_error(401);
        let challenge = resp.header("www-authenticate").expect("a challenge");
        assert!(challenge.starts_with("Basic"), "{challenge}");
        assert!(!resp.text().contains("pw"), "no credential echoed");
    }
    assert_eq!(not_basic.as_u16(), 401);
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum("tally_api_auth_failures_total", &[("reason", "missing")]),
        1.0
    );
    assert_eq!(
        scrape.sum("tally_api_auth_failures_total", &[("reason", "wrong")]),
        2.0
    );
}

#[actix_web::test]
async fn with_credentials_configured_the_query_api_answers_200_with_any_configured_pair() {
    // Arrange
    let app = spawn_guarded().await;
    app.apply_batch(&[CloudEvent::message("sent", OP, MSG, "SM7").json()])
        .await;

    // Act
    let ops = app
        .get_as(&format!("/v1/Messages/Operations/{OP}"), "ops", "pw")
        .await;
    let grafana = app
        .get_as(
            &format!("/v1/Messages?operationId={OP}"),
            "grafana",
            "other-pw",
        )
        .await;

    // Assert
    assert_eq!(ops.status.as_u16(), 200, "{}", ops.text());
    assert_eq!(ops.json()["stats"]["sent"], 1);
    assert_eq!(grafana.status.as_u16(), 200, "{}", grafana.text());
    assert_eq!(grafana.json()["messages"][0]["id"], MSG);
}

#[actix_web::test]
async fn callbacks_metrics_and_health_never_need_the_query_api_credentials() {
    // Arrange
    let app = spawn_guarded().await;

    // Act
    let callback = app
        .post_batch(&[CloudEvent::message("sent", OP, MSG, "SM7").json()])
        .await;
    let metrics = app.get("/metrics").await;
    let healthz = app.get("/healthz").await;
    let readyz = app.get("/readyz").await;

    // Assert
    assert_eq!(callback.status.as_u16(), 200, "{}", callback.text());
    assert_eq!(metrics.status.as_u16(), 200);
    assert_eq!(healthz.status.as_u16(), 200);
    assert_eq!(readyz.status.as_u16(), 200);
}

#[actix_web::test]
async fn without_credentials_the_query_api_answers_loopback_clients() {
    // Arrange
    let app = spawn_app().await;
    app.apply_batch(&[CloudEvent::message("sent", OP, MSG, "SM7").json()])
        .await;

    // Act
    let resp = app.get(&format!("/v1/Messages/Operations/{OP}")).await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(resp.json()["id"], OP);
}
