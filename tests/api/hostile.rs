//! The bad-input matrix: what anyone on the internet can send to the callback routes. Each test
//! asserts the exact status code, that nothing was applied, and that tally still answers and
//! applies a good callback afterwards (docs/security.md lists every input and its outcome).

use crate::support::http;
use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::CloudEvent,
    TOKEN,
};
use actix_web::http::Method;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tally::signature::{sign, url_with_body_sha256};

const OP: &str = "comms_operation_01hhostile00000000000000001";
const MSG: &str = "comms_message_01hhostile0000000000000000001";
const MB: usize = 1024 * 1024;

/// Nothing changed state: no event applied, no operation known.
async fn assert_nothing_applied(app: &TestApp) {
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_events_applied_total", &[]), 0.0);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.text());
    assert_eq!(ready.json()["operations"], 0);
}

/// tally still answers, and still applies a good callback.
async fn assert_healthy(app: &TestApp) {
    assert_eq!(app.get("/healthz").await.status.as_u16(), 200);
    let op = "comms_operation_01hhostilehealthy0000000001";
    app.apply_batch(&[CloudEvent::message("delivered", op, MSG, "SMhealthy").json()])
        .await;
    let stats = &app.operation_json("Messages", op).await["stats"];
    assert_eq!(stats["delivered"], 1, "{stats}");
}

/// Post `body` to `/twilio/events`, correctly signed.
async fn post_signed(app: &TestApp, body: Vec<u8>) -> crate::support::app::Resp {
    app.post_events_body(body).await
}

/// A form body posted to `/twilio/status?query`, signed over what tally would read.
async fn post_form_body(app: &TestApp, query: &str, body: &[u8]) -> crate::support::app::Resp {
    let url = if query.is_empty() {
        app.url("/twilio/status")
    } else {
        app.url(&format!("/twilio/status?{query}"))
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let signature = sign(TOKEN, &url, &params);
    app.post_raw(
        &url,
        Some("application/x-www-form-urlencoded"),
        Some(&signature),
        &[],
        body.to_vec(),
    )
    .await
}

fn summary(resp: &crate::support::app::Resp) -> Value {
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    resp.json()
}

#[actix_web::test]
async fn truncated_and_invalid_json_is_refused_with_400() {
    // Arrange
    let app = spawn_app().await;
    let good = serde_json::to_vec(&[
        CloudEvent::message("delivered", OP, MSG, "SM1").json(),
        CloudEvent::operation("completed", OP).json(),
    ])
    .unwrap();
    let mut bodies: Vec<Vec<u8>> = vec![
        good[..good.len() / 2].to_vec(),
        good[..good.len() - 1].to_vec(),
        good[..1].to_vec(),
    ];
    for junk in [
        &b"{\"a\":}"[..],
        b"[1,]",
        b"NaN",
        b"{'type':'x'}",
        b"[{}]]",
        b"[\"\xff\xfe\"]",
        b"\x00\x00\x00",
        b"[{\"type\":\"com.twilio.comms-api.message.sent\"}",
    ] {
        bodies.push(junk.to_vec());
    }

    // Act
    let mut codes = vec![];
    for body in bodies.clone() {
        let resp = post_signed(&app, body).await;
        resp.assert_json_error(400);
        codes.push(resp.status.as_u16());
    }
    // Unsigned junk never reaches the parser: the signature is checked first.
    let unsigned = app
        .post_raw(
            &app.events_url(b"{"),
            Some("application/json"),
            None,
            &[],
            b"{".to_vec(),
        )
        .await;

    // Assert
    assert_eq!(codes.len(), bodies.len());
    unsigned.assert_json_error(403);
    assert_nothing_applied(&app).await;
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 0.0);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn json_nested_ten_thousand_levels_deep_is_refused_with_400_without_a_crash() {
    // Arrange
    let app = spawn_app().await;
    let arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let in_data = json!([{
        "type": "com.twilio.comms-api.message.sent",
        "data": {"operation_id": OP, "message_id": MSG,
                 "nested": serde_json::from_str::<Value>(
                     &format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap()},
    }]);
    // The 10,000 levels inside `data` as a JSON string: decoded per event, so one event fails.
    let in_data_string = json!([{
        "type": "com.twilio.comms-api.message.sent",
        "data": arrays.clone(),
    }]);

    // Act
    let deep_arrays = post_signed(&app, arrays.into_bytes()).await;
    let deep_objects = post_signed(&app, objects.into_bytes()).await;
    let as_string = post_signed(&app, serde_json::to_vec(&in_data_string).unwrap()).await;

    // Assert
    deep_arrays.assert_json_error(400);
    deep_objects.assert_json_error(400);
    assert_eq!(
        summary(&as_string),
        json!({"received": 1, "applied": 0, "noop": 0, "rejected": 1})
    );
    assert_nothing_applied(&app).await;
    // 100 levels (within the parser's limit of 128) inside data are just an unknown field.
    let fine = post_signed(&app, serde_json::to_vec(&in_data).unwrap()).await;
    assert_eq!(summary(&fine)["applied"], 1);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn a_declared_100_mb_body_is_refused_with_413_before_any_of_it_is_sent() {
    // Arrange: the default 4 MiB limit; the head announces 100 MB and no byte of it follows.
    let app = spawn_app().await;
    let url = app.events_url(b"[]");
    let target = url.trim_start_matches(&app.address).to_owned();
    let signature = sign(TOKEN, &url, &[]);
    let request = http::head(
        app.port,
        "POST",
        &target,
        &[
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature", &signature),
        ],
        100 * MB,
    );

    // Act: a server that waited for the body would leave this read hanging (and fail it).
    let resp = http::exchange_async(app.port, request).await;

    // Assert
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["code"], 413);
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn a_streamed_100_mb_body_is_cut_off_with_413_at_the_limit() {
    // Arrange: chunked, so no length is announced; the sender would go on for 100 MB.
    let app = spawn_app().await;
    let url = app.events_url(b"[]");
    let target = url.trim_start_matches(&app.address).to_owned();
    let signature = sign(TOKEN, &url, &[]);
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         X-Twilio-Signature: {signature}\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.port
    );
    let answered = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut conn = http::connect(app.port);
    let mut writer = conn.try_clone().expect("clone");
    let (answered_w, sent_w) = (answered.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        writer.write_all(head.as_bytes()).expect("head written");
        let chunk = [b' '; 64 * 1024];
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        while !answered_w.load(Ordering::SeqCst) && sent_w.load(Ordering::SeqCst) < 100 * MB {
            if writer.write_all(&frame).is_err() {
                break;
            }
            sent_w.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });

    // Act
    let resp = actix_web::rt::task::spawn_blocking(move || {
        let resp = http::read_response(&mut conn);
        answered.store(true, Ordering::SeqCst);
        resp
    })
    .await
    .expect("reader");
    let sent_when_answered = sent.load(Ordering::SeqCst);
    sender.join().expect("sender");

    // Assert: refused at the 4 MiB limit, long before the 100 MB were sent.
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(
        sent_when_answered < 32 * MB,
        "answered only after {sent_when_answered} bytes"
    );
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

/// `[{},{},…]`: a million of the smallest events JSON can hold (3 MB, within the 4 MiB limit).
fn a_million_empty_events() -> Vec<u8> {
    let mut body = Vec::with_capacity(3_000_001);
    body.push(b'[');
    for i in 0..1_000_000 {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{}");
    }
    body.push(b']');
    body
}

#[actix_web::test]
async fn a_batch_of_a_million_tiny_events_is_refused_with_413_by_default() {
    // Arrange
    let app = spawn_app().await;
    let empty = a_million_empty_events();
    assert!(empty.len() < 4 * MB);
    let mut typed = Vec::with_capacity(14 * MB);
    typed.push(b'[');
    for i in 0..1_000_000 {
        if i > 0 {
            typed.push(b',');
        }
        typed.extend_from_slice(b"{\"type\":\"x\"}");
    }
    typed.push(b']');

    // Act
    let by_count = post_signed(&app, empty).await;
    // The typed batch announced by its length (13 MB); the head alone decides, so none of
    // the body needs sending (a sender still writing would only see the connection close).
    let url = app.events_url(&typed);
    let target = url.trim_start_matches(&app.address).to_owned();
    let by_size = http::exchange_async(
        app.port,
        http::head(
            app.port,
            "POST",
            &target,
            &[
                ("Content-Type", "application/json"),
                ("X-Twilio-Signature", &sign(TOKEN, &url, &[])),
            ],
            typed.len(),
        ),
    )
    .await;

    // Assert: within the size limit, the event bound refuses it; past it, the size limit does.
    by_count.assert_json_error(413);
    assert!(
        by_count.text().contains("10000 events"),
        "{}",
        by_count.text()
    );
    assert_eq!(by_size.status, 413, "{}", by_size.text());
    assert!(typed.len() > 12 * MB);
    assert_nothing_applied(&app).await;
    assert_eq!(
        app.metrics().await.sum("tally_events_received_total", &[]),
        0.0
    );
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn a_batch_of_a_million_tiny_events_within_raised_limits_is_read_and_each_event_counted() {
    // Arrange
    // A million events hold the worker thread for seconds in a debug build on a busy machine,
    // and actix's clock for head deadlines only ticks between requests: a longer head timeout
    // keeps the follow-up requests of this test from a spurious 408 (the reason the default
    // bound is 10 000 events).
    let app = spawn_app_with(&[
        ("TALLY_HTTP__MAX_EVENTS_PER_BATCH", "1000000"),
        ("TALLY_HTTP__CLIENT_REQUEST_TIMEOUT", "120s"),
    ])
    .await;

    let body = a_million_empty_events();
    let url = app.events_url(&body);
    // A debug build under a loaded machine may take well over the helpers' 10 s for this.
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .finish();

    // Act
    let mut resp = client
        .post(&url)
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-twilio-signature", sign(TOKEN, &url, &[])))
        .send_body(body)
        .await
        .expect("answered");
    let resp = crate::support::app::Resp {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.body().await.expect("body").to_vec(),
    };

    // Assert: every event stood alone and was skipped as malformed; the books balance.
    assert_eq!(
        summary(&resp),
        json!({"received": 1_000_000, "applied": 0, "noop": 0, "rejected": 1_000_000})
    );
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum("tally_events_rejected_total", &[("reason", "malformed")]),
        1_000_000.0
    );
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn ids_of_a_megabyte_are_skipped_or_refused_and_never_stored() {
    // Arrange
    let app = spawn_app().await;
    let huge = "x".repeat(MB);
    let event = json!([{
        "type": "com.twilio.comms-api.message.delivered",
        "data": {"operation_id": huge, "message_id": MSG, "downstream_id": "SM1"},
    }]);
    let form = format!("MessageSid={huge}&MessageStatus=delivered");
    let query = format!("operationId={huge}&messageId={MSG}");
    let url = app.url(&format!("/twilio/status?{query}"));
    let target = url.trim_start_matches(&app.address).to_owned();

    // Act
    let in_event = post_signed(&app, serde_json::to_vec(&event).unwrap()).await;
    let in_form = post_form_body(&app, &format!("operationId={OP}"), form.as_bytes()).await;
    let body = b"MessageSid=SM1&MessageStatus=delivered".to_vec();
    let mut request = http::head(
        app.port,
        "POST",
        &target,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.len(),
    );
    request.extend_from_slice(&body);
    let in_url = http::exchange_async(app.port, request).await;

    // Assert: in a body, the event is skipped (id_too_long); in the URL, the request head is
    // over actix's 128 KiB head limit and refused outright.
    assert_eq!(summary(&in_event)["rejected"], 1);
    assert_eq!(summary(&in_form)["rejected"], 1);
    assert_eq!(in_url.status, 431, "{}", in_url.text());
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum("tally_events_rejected_total", &[("reason", "id_too_long")]),
        2.0
    );
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn invalid_utf8_in_form_values_and_the_query_is_refused_with_400() {
    // Arrange
    let app = spawn_app().await;
    let linked = format!("operationId={OP}&messageId={MSG}");

    // Act
    let encoded = post_form_body(
        &app,
        &linked,
        b"MessageSid=SM%FF%FE&MessageStatus=delivered",
    )
    .await;
    let raw_byte = post_form_body(
        &app,
        &linked,
        b"MessageSid=SM1&MessageStatus=delivered&To=\xff",
    )
    .await;
    let surrogate = post_form_body(
        &app,
        &linked,
        b"MessageSid=SM1&MessageStatus=sent&x=%ED%A0%80",
    )
    .await;
    let in_query = post_form_body(
        &app,
        &format!("operationId=%C3%28&messageId={MSG}"),
        b"MessageSid=SM1&MessageStatus=delivered",
    )
    .await;
    // A byte that is not even ASCII in the request line: the HTTP parser refuses the head.
    let body = b"MessageSid=SM1&MessageStatus=delivered";
    let mut request = b"POST /twilio/status?operationId=\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\
Content-Type: application/x-www-form-urlencoded\r\n"
        .to_vec();
    request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    request.extend_from_slice(body);
    let in_request_line = http::exchange_async(app.port, request).await;

    // Assert
    for resp in [&encoded, &raw_byte, &surrogate, &in_query] {
        resp.assert_json_error(400);
        assert!(resp.text().contains("UTF-8"), "{}", resp.text());
    }
    assert_eq!(in_request_line.status, 400);
    assert_nothing_applied(&app).await;

    // Invalid UTF-8 percent-encoded in an Event Streams URL is only bytes under the signature:
    // the URL is compared as sent, and the events still apply.
    let body = serde_json::to_vec(&[CloudEvent::message("sent", OP, MSG, "SM1").json()]).unwrap();
    let url = url_with_body_sha256(&app.url("/twilio/events?tenant=%FF%FE"), &body);
    let resp = app
        .post_raw(
            &url,
            Some("application/json"),
            Some(&sign(TOKEN, &url, &[])),
            &[],
            body,
        )
        .await;
    assert_eq!(summary(&resp)["applied"], 1);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn duplicate_and_empty_parameters_are_read_first_non_empty_and_never_crash() {
    // Arrange
    let app = spawn_app().await;
    let other_op = "comms_operation_01hhostileother00000000001";

    // Act
    let missing_sid = post_form_body(
        &app,
        &format!("operationId={OP}&messageId={MSG}"),
        b"MessageSid=&MessageStatus=delivered",
    )
    .await;
    let empty_everything =
        post_form_body(&app, "&&=&==&", b"&&=&==&MessageSid=&MessageStatus=&").await;
    let nothing = post_form_body(&app, "", b"").await;
    let before = app.metrics().await.sum("tally_events_applied_total", &[]);
    let duplicated = post_form_body(
        &app,
        &format!("operationId={OP}&operationId={other_op}&messageId=&messageId={MSG}"),
        b"MessageSid=SM1&MessageStatus=&MessageStatus=sent&MessageStatus=delivered&To=&To=%2B1",
    )
    .await;

    // Assert
    assert_eq!(summary(&missing_sid)["rejected"], 1);
    assert_eq!(summary(&empty_everything)["rejected"], 1);
    assert_eq!(summary(&nothing)["rejected"], 1);
    let scrape = app.metrics().await;
    // The status is read first: an empty or absent one is unknown_status, then the SID.
    assert_eq!(
        scrape.sum("tally_events_rejected_total", &[("reason", "missing_id")]),
        1.0
    );
    assert_eq!(
        scrape.sum(
            "tally_events_rejected_total",
            &[("reason", "unknown_status")]
        ),
        2.0
    );
    assert_eq!(before, 0.0, "nothing applied by the empty ones");
    assert_eq!(summary(&duplicated)["applied"], 1);
    let stats = &app.operation_json("Messages", OP).await["stats"];
    assert_eq!(
        stats["sent"], 1,
        "the first non-empty value counts: {stats}"
    );
    assert_eq!(
        app.operation("Messages", other_op).await.status.as_u16(),
        404
    );
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn missing_doubled_non_base64_and_wrong_length_signatures_are_refused_with_403() {
    // Arrange
    let app = spawn_app().await;
    let body = serde_json::to_vec(&[CloudEvent::message("sent", OP, MSG, "SM1").json()]).unwrap();
    let url = app.events_url(&body);
    let good = sign(TOKEN, &url, &[]);
    let other = sign("another-token", &url, &[]);
    let form_url = app.status_url(&[("operationId", OP), ("messageId", MSG)]);
    let form = b"MessageSid=SM1&MessageStatus=sent".to_vec();
    let form_good = sign(
        TOKEN,
        &form_url,
        &form_urlencoded::parse(&form)
            .into_owned()
            .collect::<Vec<_>>(),
    );
    let post =
        |url: String, ct: &'static str, body: Vec<u8>, headers: Vec<(&'static str, String)>| {
            let app = &app;
            async move {
                let mut req = app.client.post(url).insert_header(("content-type", ct));
                for (k, v) in headers {
                    req = req.append_header((k, v));
                }
                let mut resp = req.send_body(body).await.expect("answered");
                let status = resp.status().as_u16();
                let json: Value = resp.json().await.expect("a JSON error body");
                (status, json)
            }
        };
    let sig = "x-twilio-signature";
    let cases: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        ("missing", vec![]),
        ("empty", vec![(sig, String::new())]),
        (
            "doubled, both good",
            vec![(sig, good.clone()), (sig, good.clone())],
        ),
        (
            "doubled, good and bad",
            vec![(sig, good.clone()), (sig, other.clone())],
        ),
        ("comma-joined", vec![(sig, format!("{good}, {good}"))]),
        ("non-base64", vec![(sig, "!".repeat(28))]),
        (
            "base64url alphabet",
            vec![(
                sig,
                good.replace('+', "-").replace('/', "_").replace('=', "A"),
            )],
        ),
        ("too short", vec![(sig, good[..27].to_owned())]),
        ("too long", vec![(sig, format!("{good}AAAA"))]),
        ("21 bytes", vec![(sig, "A".repeat(28))]),
        ("SHA-256 sized", vec![(sig, "A".repeat(43) + "=")]),
        ("wrong token", vec![(sig, other.clone())]),
    ];

    // Act
    let mut refused = vec![];
    for (name, headers) in &cases {
        let (status, body_json) = post(
            url.clone(),
            "application/json",
            body.clone(),
            headers.clone(),
        )
        .await;
        refused.push((name, status, body_json));
        let (status, _) = post(
            form_url.clone(),
            "application/x-www-form-urlencoded",
            form.clone(),
            headers
                .iter()
                .map(|(k, v)| (*k, v.replace(&good, &form_good)))
                .collect(),
        )
        .await;
        assert_eq!(status, 403, "form, {name}");
    }

    // Assert
    for (name, status, body_json) in &refused {
        assert_eq!(*status, 403, "{name}: {body_json}");
        assert_eq!(body_json["code"], 403, "{name}");
    }
    let scrape = app.metrics().await;
    for route in ["events", "status"] {
        let failures = |reason| {
            scrape.sum(
                "tally_signature_failures_total",
                &[("route", route), ("reason", reason)],
            )
        };
        assert_eq!(failures("missing"), 1.0, "{route}");
        assert_eq!(failures("mismatch"), 1.0, "{route}");
        assert_eq!(failures("malformed"), (cases.len() - 2) as f64, "{route}");
    }
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn a_body_sha256_repeated_in_the_query_must_match_every_time() {
    // Arrange
    let app = spawn_app().await;
    let body = serde_json::to_vec(&[CloudEvent::message("sent", OP, MSG, "SM1").json()]).unwrap();
    let hash = tally::signature::body_sha256_hex(&body);
    let other_hash = tally::signature::body_sha256_hex(b"[]");
    let signed_post = |query: String| {
        let app = &app;
        let body = body.clone();
        async move {
            let url = app.url(&format!("/twilio/events?{query}"));
            let signature = sign(TOKEN, &url, &[]);
            app.post_raw(&url, Some("application/json"), Some(&signature), &[], body)
                .await
        }
    };

    // Act
    let differing = signed_post(format!("bodySHA256={hash}&bodySHA256={other_hash}")).await;
    let differing_reversed =
        signed_post(format!("bodySHA256={other_hash}&bodySHA256={hash}")).await;
    let empty_second = signed_post(format!("bodySHA256={hash}&bodySHA256=")).await;
    let uppercase = signed_post(format!("bodySHA256={}", hash.to_uppercase())).await;
    let absent = signed_post("tenant=1".into()).await;

    // Assert
    for resp in [&differing, &differing_reversed, &empty_second, &uppercase] {
        resp.assert_json_error(403);
    }
    absent.assert_json_error(403);
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum(
            "tally_signature_failures_total",
            &[("reason", "body_hash_mismatch")]
        ),
        4.0
    );
    assert_eq!(
        scrape.sum(
            "tally_signature_failures_total",
            &[("reason", "body_hash_missing")]
        ),
        1.0
    );
    assert_nothing_applied(&app).await;
    // The same hash twice is consistent, and accepted.
    let same_twice = signed_post(format!("bodySHA256={hash}&bodySHA256={hash}")).await;
    assert_eq!(summary(&same_twice)["applied"], 1);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn wrong_and_missing_content_types_are_refused_with_415() {
    // Arrange
    let app = spawn_app().await;
    let body = serde_json::to_vec(&[CloudEvent::message("sent", OP, MSG, "SM1").json()]).unwrap();
    let url = app.events_url(&body);
    let signature = sign(TOKEN, &url, &[]);
    let form_url = app.status_url(&[("operationId", OP), ("messageId", MSG)]);
    let form = b"MessageSid=SM1&MessageStatus=sent".to_vec();
    let form_signature = sign(
        TOKEN,
        &form_url,
        &form_urlencoded::parse(&form)
            .into_owned()
            .collect::<Vec<_>>(),
    );

    // Act
    let mut responses = vec![];
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("application/jsonp"),
        Some(""),
        None,
    ] {
        responses.push(
            app.post_raw(&url, ct, Some(&signature), &[], body.clone())
                .await,
        );
    }
    for ct in [
        Some("application/json"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        responses.push(
            app.post_raw(&form_url, ct, Some(&form_signature), &[], form.clone())
                .await,
        );
    }

    // Assert
    for resp in &responses {
        resp.assert_json_error(415);
    }
    assert_eq!(
        app.metrics()
            .await
            .sum("tally_callbacks_total", &[("code", "415")]),
        responses.len() as f64
    );
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn methods_other_than_post_get_405_with_an_allow_header_and_a_json_body() {
    // Arrange
    let app = spawn_app().await;

    // Act and assert
    for path in ["/twilio/events", "/twilio/status"] {
        for method in [
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::from_bytes(b"PROPFIND").unwrap(),
        ] {
            let mut resp = app
                .client
                .request(method.clone(), app.url(path))
                .send_body("[]")
                .await
                .expect("answered");
            assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
            assert_eq!(
                resp.headers().get("allow").and_then(|v| v.to_str().ok()),
                Some("POST"),
                "{method} {path}"
            );
            let body: Value = resp.json().await.expect("a JSON error body");
            assert_eq!(body["code"], 405);
        }
        let head = app
            .client
            .head(app.url(path))
            .send()
            .await
            .expect("answered");
        assert_eq!(head.status().as_u16(), 405);
        assert_eq!(
            head.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("POST")
        );
    }
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn unknown_event_types_and_statuses_are_counted_and_skipped() {
    // Arrange
    let app = spawn_app().await;
    let data = json!({"operation_id": OP, "message_id": MSG, "downstream_id": "SM1"});
    let batch: Vec<Value> = [
        "com.twilio.comms-api.message.exploded",
        "com.twilio.comms-api.message.inbound-received",
        "com.twilio.comms-api.operation.canceled",
        "com.example.unrelated",
        "",
        "com.twilio.comms-api.message.",
        "com.twilio.messaging.message.receiving",
    ]
    .iter()
    .map(|ty| json!({"specversion": "1.0", "type": ty, "data": data}))
    .chain([json!({"type": 42, "data": data}), json!({"data": data})])
    .collect();

    // Act
    let events = post_signed(&app, serde_json::to_vec(&batch).unwrap()).await;
    let mut forms = vec![];
    for status in [
        "receiving",
        "received",
        "inbound",
        "partially_delivered",
        "banana",
        "opened",
    ] {
        forms.push(
            post_form_body(
                &app,
                &format!("operationId={OP}&messageId={MSG}"),
                format!("MessageSid=SM1&MessageStatus={status}").as_bytes(),
            )
            .await,
        );
    }

    // Assert
    assert_eq!(
        summary(&events),
        json!({"received": 9, "applied": 0, "noop": 0, "rejected": 9})
    );
    for resp in &forms {
        assert_eq!(summary(resp)["rejected"], 1);
    }
    let scrape = app.metrics().await;
    let rejected = |reason| scrape.sum("tally_events_rejected_total", &[("reason", reason)]);
    // An unknown status under a known family prefix is unknown_status; the rest unknown_type.
    assert_eq!(rejected("unknown_type"), 3.0);
    assert_eq!(rejected("unknown_status"), 4.0 + 6.0);
    assert_eq!(rejected("malformed"), 2.0);
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn data_that_is_a_number_null_or_another_non_object_is_skipped() {
    // Arrange
    let app = spawn_app().await;
    let ty = "com.twilio.comms-api.message.delivered";
    let batch: Vec<Value> = [
        json!(42),
        json!(null),
        json!("42"),
        json!("null"),
        json!([{"operation_id": OP}]),
        json!(true),
        json!(1e308),
    ]
    .into_iter()
    .map(|data| json!({"type": ty, "data": data}))
    .chain([json!({"type": ty}), json!(7), json!(null), json!([])])
    .collect();

    // Act
    let resp = post_signed(&app, serde_json::to_vec(&batch).unwrap()).await;
    let scalar = post_signed(&app, b"42".to_vec()).await;
    let null = post_signed(&app, b"null".to_vec()).await;

    // Assert: null and absent data read as empty (missing ids); the rest are malformed.
    assert_eq!(
        summary(&resp),
        json!({"received": 11, "applied": 0, "noop": 0, "rejected": 11})
    );
    let scrape = app.metrics().await;
    let rejected = |reason| scrape.sum("tally_events_rejected_total", &[("reason", reason)]);
    assert_eq!(rejected("missing_id"), 2.0);
    assert_eq!(rejected("malformed"), 9.0);
    scalar.assert_json_error(400);
    null.assert_json_error(400);
    assert_nothing_applied(&app).await;
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn times_in_the_year_9999_fall_back_to_the_receive_time() {
    // Arrange
    let app = spawn_app().await;
    let before = std::time::SystemTime::now();
    let batch: Vec<Value> = [
        "9999-12-31T23:59:59Z",
        "+10000-01-01T00:00:00Z",
        "9999-99-99T99:99:99Z",
        "2025-01-01T00:00:00+99:00",
        "0000-01-01T00:00:00Z",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| {
        CloudEvent::message("sent", OP, &format!("{MSG}{i}"), &format!("SM{i}"))
            .time(t)
            .json()
    })
    .collect();

    // Act
    let resp = post_signed(&app, serde_json::to_vec(&batch).unwrap()).await;

    // Assert: applied, with createdAt the receive time rather than any of those.
    assert_eq!(summary(&resp)["applied"], 5);
    let op = app.operation_json("Messages", OP).await;
    let created = op["createdAt"].as_str().expect("createdAt");
    let created = humantime::parse_rfc3339(created).expect("RFC 3339");
    assert!(
        created >= before - std::time::Duration::from_secs(1),
        "{op}"
    );
    assert!(created <= std::time::SystemTime::now(), "{op}");
    assert_healthy(&app).await;
}
