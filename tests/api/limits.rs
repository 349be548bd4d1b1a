//! Requests refused before their content is looked at: wrong content type, too large, unreadable.

use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::{sms_params, CloudEvent},
    TOKEN,
};
use std::io::{Read, Write};
use std::time::Duration;
use tally::signature::sign;

const OP: &str = "comms_operation_01hlim000000000000000000001";
const LIMIT: usize = 2048;

/// A signed-looking batch of `n` events for `OP`, as bytes.
fn batch(n: usize) -> Vec<u8> {
    let events: Vec<_> = (0..n)
        .map(|i| {
            CloudEvent::message(
                "delivered",
                OP,
                &format!("comms_message_01hlim00000000000000000{i:05}"),
                &format!("SM4000000000000000000000000{i:05}"),
            )
            .json()
        })
        .collect();
    serde_json::to_vec(&events).expect("serialisable")
}

async fn assert_nothing_applied(app: &TestApp) {
    assert_eq!(app.operation("Messages", OP).await.status.as_u16(), 404);
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 0.0);
}

/// Send raw bytes on a fresh connection and read the first response's status code.
fn raw_exchange(port: u16, request: &[u8]) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout set");
    conn.write_all(request).expect("request written");
    let mut buf = vec![0u8; 8192];
    let mut got = 0;
    // Read until the headers and a JSON body (tally's error bodies are small) have arrived.
    loop {
        let n = conn.read(&mut buf[got..]).expect("response read");
        got += n;
        let text = String::from_utf8_lossy(&buf[..got]).into_owned();
        if n == 0 || (text.contains("\r\n\r\n") && text.trim_end().ends_with('}')) {
            let code = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no status line: {text}"));
            return (code, text);
        }
    }
}

#[actix_web::test]
async fn a_wrong_content_type_is_refused_with_415_and_a_json_body() {
    // Arrange
    let app = spawn_app().await;
    let body = batch(1);
    let url = app.events_url(&body);
    let signature = sign(TOKEN, &url, &[]);
    let status_url = app.status_url(&[("operationId", OP), ("messageId", "m")]);
    let params = sms_params("SM4", "delivered");
    let form: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let form_signature = sign(TOKEN, &status_url, &form);

    // Act
    let as_text = app
        .post_raw(
            &url,
            Some("text/plain"),
            Some(&signature),
            &[],
            body.clone(),
        )
        .await;
    let as_form = app
        .post_raw(
            &url,
            Some("application/x-www-form-urlencoded"),
            Some(&signature),
            &[],
            body.clone(),
        )
        .await;
    let without = app.post_raw(&url, None, Some(&signature), &[], body).await;
    let form_as_json = app
        .post_raw(
            &status_url,
            Some("application/json"),
            Some(&form_signature),
            &[],
            b"MessageSid=SM4&MessageStatus=delivered".to_vec(),
        )
        .await;

    // Assert
    for resp in [&as_text, &as_form, &without, &form_as_json] {
        resp.assert_json_error(415);
    }
    assert_nothing_applied(&app).await;
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_callbacks_total", &[("code", "415")]), 4.0);
}

#[actix_web::test]
async fn a_json_content_type_with_parameters_is_accepted() {
    // Arrange
    let app = spawn_app().await;
    let body = batch(1);
    let url = app.events_url(&body);
    let signature = sign(TOKEN, &url, &[]);

    // Act
    let resp = app
        .post_raw(
            &url,
            Some("application/json; charset=utf-8"),
            Some(&signature),
            &[],
            body,
        )
        .await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(app.operation("Messages", OP).await.status.as_u16(), 200);
}

#[actix_web::test]
async fn a_body_declared_larger_than_the_limit_is_refused_with_413() {
    // Arrange
    let limit = LIMIT.to_string();
    let app = spawn_app_with(&[("TALLY_HTTP__MAX_BODY_BYTES", &limit)]).await;
    let body = batch(20);
    assert!(body.len() > LIMIT);

    // Act
    let resp = app.post_events_body(body).await;

    // Assert
    resp.assert_json_error(413);
    assert_nothing_applied(&app).await;
}

#[actix_web::test]
async fn a_huge_declared_length_is_refused_before_any_body_is_sent() {
    // Arrange
    let limit = LIMIT.to_string();
    let app = spawn_app_with(&[("TALLY_HTTP__MAX_BODY_BYTES", &limit)]).await;
    let url = app.events_url(b"[]");
    let path = url.trim_start_matches(&app.address).to_owned();
    let signature = sign(TOKEN, &url, &[]);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         X-Twilio-Signature: {signature}\r\nContent-Length: 1000000000\r\n\r\n",
        app.port
    );

    // Act: no body follows; tally must answer from the headers alone.
    let port = app.port;
    let (code, text) =
        actix_web::rt::task::spawn_blocking(move || raw_exchange(port, request.as_bytes()))
            .await
            .expect("client task");

    // Assert
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("\"code\":413"), "{text}");
    assert_nothing_applied(&app).await;
}

#[actix_web::test]
async fn a_streamed_body_that_grows_past_the_limit_is_refused_with_413() {
    // Arrange
    let limit = LIMIT.to_string();
    let app = spawn_app_with(&[("TALLY_HTTP__MAX_BODY_BYTES", &limit)]).await;
    let body = batch(20);
    assert!(body.len() > LIMIT);
    let url = app.events_url(&body);
    let signature = sign(TOKEN, &url, &[]);
    let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> = body
        .chunks(512)
        .map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c)))
        .collect();

    // Act: chunked transfer encoding, so no Content-Length announces the size.
    let resp = app
        .client
        .post(&url)
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-twilio-signature", signature))
        .send_stream(futures_util::stream::iter(chunks))
        .await;

    // Assert
    let mut resp = resp.expect("answered");
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["code"], 413);
    assert_nothing_applied(&app).await;

    // And a chunked body within the limit is read whole and applied.
    let small = batch(2);
    assert!(small.len() < LIMIT);
    let url = app.events_url(&small);
    let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> = small
        .chunks(100)
        .map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c)))
        .collect();
    let resp = app
        .client
        .post(&url)
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-twilio-signature", sign(TOKEN, &url, &[])))
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .expect("answered");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        app.operation_json("Messages", OP).await["stats"]["delivered"],
        2
    );
}

#[actix_web::test]
async fn a_content_length_smaller_than_the_body_sent_applies_nothing() {
    // Arrange: the signature and bodySHA256 cover the whole body, the header claims 40 bytes.
    let app = spawn_app().await;
    let body = batch(2);
    let url = app.events_url(&body);
    let path = url.trim_start_matches(&app.address).to_owned();
    let signature = sign(TOKEN, &url, &[]);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         X-Twilio-Signature: {signature}\r\nContent-Length: 40\r\nConnection: close\r\n\r\n",
        app.port
    )
    .into_bytes();
    request.extend_from_slice(&body);

    // Act
    let port = app.port;
    let (code, text) = actix_web::rt::task::spawn_blocking(move || raw_exchange(port, &request))
        .await
        .expect("client task");

    // Assert: tally read 40 bytes, whose hash is not the signed one.
    assert_eq!(code, 403, "{text}");
    assert_nothing_applied(&app).await;
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum(
            "tally_signature_failures_total",
            &[("reason", "body_hash_mismatch")]
        ),
        1.0
    );
}

#[actix_web::test]
async fn a_signed_body_that_is_not_json_is_refused_with_400() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let not_json = app.post_events_body(b"this is not json".to_vec()).await;
    let truncated = app.post_events_body(b"[{\"type\":".to_vec()).await;
    let scalar = app.post_events_body(b"42".to_vec()).await;
    let empty = app.post_events_body(Vec::new()).await;

    // Assert
    for resp in [&not_json, &truncated, &scalar, &empty] {
        resp.assert_json_error(400);
        assert!(
            !resp.text().contains("this is not json"),
            "the body is not echoed"
        );
    }
    assert_nothing_applied(&app).await;
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum(
            "tally_callbacks_total",
            &[("route", "events"), ("code", "400")]
        ),
        4.0
    );
}
