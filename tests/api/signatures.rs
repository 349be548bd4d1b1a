//! X-Twilio-Signature at the door: nothing unsigned is applied, every refusal is counted.

use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::{sms_params, CloudEvent},
    TOKEN,
};
use tally::signature::{sign, url_with_body_sha256};

const OP: &str = "comms_operation_01hsig000000000000000000001";
const MSG: &str = "comms_message_01hsig0000000000000000000001";
const SID: &str = "SM30000000000000000000000000000001";

fn batch_body() -> Vec<u8> {
    serde_json::to_vec(&[CloudEvent::message("delivered", OP, MSG, SID).json()])
        .expect("serialisable")
}

/// Post `body` to the events URL with the given URL and signature header, as JSON.
async fn post_events(app: &TestApp, url: &str, signature: Option<&str>, body: Vec<u8>) -> u16 {
    let resp = app
        .post_raw(url, Some("application/json"), signature, &[], body)
        .await;
    if resp.status.as_u16() == 403 {
        resp.assert_json_error(403);
    }
    resp.status.as_u16()
}

async fn assert_nothing_applied(app: &TestApp) {
    let resp = app.operation("Messages", OP).await;
    assert_eq!(resp.status.as_u16(), 404, "{}", resp.text());
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 0.0);
    assert_eq!(scrape.get("tally_resources", &[]), Some(0.0));
}

#[actix_web::test]
async fn unsigned_or_badly_signed_event_batches_are_refused_with_403_and_counted_by_reason() {
    // Arrange
    let app = spawn_app().await;
    let body = batch_body();
    let good_url = app.events_url(&body);
    let good_signature = sign(TOKEN, &good_url, &[]);
    let bare_url = app.url("/twilio/events");
    let other_body_url = url_with_body_sha256(&bare_url, b"[]");

    // Act
    let missing = post_events(&app, &good_url, None, body.clone()).await;
    let malformed = post_events(&app, &good_url, Some("not base64 at all"), body.clone()).await;
    let short = post_events(&app, &good_url, Some("c2hvcnQ="), body.clone()).await;
    let wrong = post_events(
        &app,
        &good_url,
        Some(&sign("some-other-token", &good_url, &[])),
        body.clone(),
    )
    .await;
    let wrong_hash = post_events(
        &app,
        &other_body_url,
        Some(&sign(TOKEN, &other_body_url, &[])),
        body.clone(),
    )
    .await;
    let absent_hash = post_events(
        &app,
        &bare_url,
        Some(&sign(TOKEN, &bare_url, &[])),
        body.clone(),
    )
    .await;
    let reused = post_events(&app, &bare_url, Some(&good_signature), body.clone()).await;

    // Assert
    assert_eq!(
        [
            missing,
            malformed,
            short,
            wrong,
            wrong_hash,
            absent_hash,
            reused
        ],
        [403; 7]
    );
    assert_nothing_applied(&app).await;
    let scrape = app.metrics().await;
    let failures = |reason: &str| {
        scrape.sum(
            "tally_signature_failures_total",
            &[("route", "events"), ("reason", reason)],
        )
    };
    assert_eq!(failures("missing"), 1.0);
    assert_eq!(failures("malformed"), 2.0);
    assert_eq!(failures("mismatch"), 1.0);
    assert_eq!(failures("body_hash_mismatch"), 1.0);
    assert_eq!(failures("body_hash_missing"), 2.0);
    assert_eq!(
        scrape.sum(
            "tally_callbacks_total",
            &[("route", "events"), ("code", "403")]
        ),
        7.0
    );

    // And the same body, properly signed, is then accepted.
    let accepted = post_events(&app, &good_url, Some(&good_signature), body).await;
    assert_eq!(accepted, 200);
    assert_eq!(app.operation("Messages", OP).await.status.as_u16(), 200);
}

#[actix_web::test]
async fn unsigned_or_badly_signed_form_callbacks_are_refused_with_403() {
    // Arrange
    let app = spawn_app().await;
    let query = [("operationId", OP), ("messageId", MSG)];
    let url = app.status_url(&query);
    let params = sms_params(SID, "delivered");
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let form = |params: &[(&str, &str)]| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            ser.append_pair(k, v);
        }
        ser.finish().into_bytes()
    };
    let ct = Some("application/x-www-form-urlencoded");
    let good = sign(TOKEN, &url, &owned);
    // The signature over the URL alone, without the parameters.
    let url_only = sign(TOKEN, &url, &[]);
    let mut tampered = params.clone();
    tampered[6] = ("MessageStatus", "read");

    // Act
    let missing = app.post_raw(&url, ct, None, &[], form(&params)).await;
    let malformed = app.post_raw(&url, ct, Some("!!"), &[], form(&params)).await;
    let unsorted = app
        .post_raw(&url, ct, Some(&url_only), &[], form(&params))
        .await;
    let changed = app
        .post_raw(&url, ct, Some(&good), &[], form(&tampered))
        .await;
    let elsewhere = app
        .post_raw(&app.status_url(&[]), ct, Some(&good), &[], form(&params))
        .await;

    // Assert
    for resp in [&missing, &malformed, &unsorted, &changed, &elsewhere] {
        resp.assert_json_error(403);
    }
    assert_nothing_applied(&app).await;
    let scrape = app.metrics().await;
    let failures = |reason: &str| {
        scrape.sum(
            "tally_signature_failures_total",
            &[("route", "status"), ("reason", reason)],
        )
    };
    assert_eq!(failures("missing"), 1.0);
    assert_eq!(failures("malformed"), 1.0);
    assert_eq!(failures("mismatch"), 3.0);
}

#[actix_web::test]
async fn during_a_token_rotation_both_configured_tokens_are_accepted_and_no_other() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_TWILIO__AUTH_TOKENS", "new-primary-token,old-token")]).await;

    // Act
    let with_old = app
        .post_events_body_signed_by("old-token", batch_body())
        .await;
    let with_new = app
        .post_events_body_signed_by("new-primary-token", batch_body())
        .await;
    let with_unknown = app
        .post_events_body_signed_by("revoked-token", batch_body())
        .await;

    // Assert
    assert_eq!(with_old.status.as_u16(), 200, "{}", with_old.text());
    assert_eq!(
        with_old.json(),
        serde_json::json!({"received": 1, "applied": 1, "noop": 0, "rejected": 0})
    );
    assert_eq!(with_new.status.as_u16(), 200, "{}", with_new.text());
    with_unknown.assert_json_error(403);
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum("tally_signature_failures_total", &[("reason", "mismatch")]),
        1.0
    );
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 2.0);
}

#[actix_web::test]
async fn with_a_public_url_the_signature_must_cover_the_public_url() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_HTTP__PUBLIC_URL", "https://tally.example.com/")]).await;
    let body = batch_body();
    let public = url_with_body_sha256("https://tally.example.com/twilio/events", &body);
    let local = app.events_url(&body);

    // Act: the request reaches us locally either way; only what was signed differs.
    let signed_local =
        post_events(&app, &local, Some(&sign(TOKEN, &local, &[])), body.clone()).await;
    let nothing_yet = app.operation("Messages", OP).await.status.as_u16();
    let signed_public = post_events(&app, &local, Some(&sign(TOKEN, &public, &[])), body).await;

    // Assert
    assert_eq!(signed_local, 403);
    assert_eq!(nothing_yet, 404);
    assert_eq!(signed_public, 200);
    assert_eq!(app.operation("Messages", OP).await.status.as_u16(), 200);
}

async fn post_through_proxy(app: &TestApp, signed_for: &str, body: Vec<u8>) -> u16 {
    let local = app.events_url(&body);
    let signature = sign(TOKEN, signed_for, &[]);
    app.post_raw(
        &local,
        Some("application/json"),
        Some(&signature),
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "tally.example.com"),
        ],
        body,
    )
    .await
    .status
    .as_u16()
}

#[actix_web::test]
async fn forwarded_headers_rebuild_the_signed_url_only_when_trusted() {
    // Arrange
    let trusting = spawn_app_with(&[("TALLY_HTTP__TRUST_FORWARDED_HEADERS", "true")]).await;
    let distrusting = spawn_app().await;
    let body = batch_body();
    let public = url_with_body_sha256("https://tally.example.com/twilio/events", &body);

    // Act
    let trusted_local =
        post_through_proxy(&trusting, &trusting.events_url(&body), body.clone()).await;
    let trusted_public = post_through_proxy(&trusting, &public, body.clone()).await;
    let distrusted_public = post_through_proxy(&distrusting, &public, body.clone()).await;
    let distrusted_local =
        post_through_proxy(&distrusting, &distrusting.events_url(&body), body).await;

    // Assert
    assert_eq!(
        trusted_local, 403,
        "the forwarded URL replaces the local one"
    );
    assert_eq!(trusted_public, 200);
    assert_eq!(distrusted_public, 403, "forwarded headers are ignored");
    assert_eq!(distrusted_local, 200);
    for app in [&trusting, &distrusting] {
        let stats = &app.operation_json("Messages", OP).await["stats"];
        assert_eq!(stats["delivered"], 1, "{stats}");
    }
}
