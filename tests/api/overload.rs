//! Overload: at most `http.max_inflight_callbacks` callbacks are handled at once; the rest get
//! 429 with Retry-After straight away, before their bodies are read, so neither the queue nor the
//! memory grows with the load.

use crate::support::http;
use crate::support::{
    app::{spawn_app_with, TestApp},
    cloudevent::CloudEvent,
    scratch, TOKEN,
};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tally::signature::sign;

const MSG: &str = "comms_message_01hoverload00000000000000001";

fn op(i: usize) -> String {
    format!("comms_operation_01hoverload0000000000{i:05}")
}

fn batch(op: &str) -> Vec<u8> {
    serde_json::to_vec(&[CloudEvent::message("delivered", op, MSG, "SM1").json()]).unwrap()
}

/// A signed request for `body` whose head and first half are sent; the rest waits.
fn half_sent(app: &TestApp, body: &[u8]) -> (TcpStream, Vec<u8>) {
    let url = app.events_url(body);
    let target = url.trim_start_matches(&app.address).to_owned();
    let signature = sign(TOKEN, &url, &[]);
    let mut request = http::head(
        app.port,
        "POST",
        &target,
        &[
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature", &signature),
        ],
        body.len(),
    );
    request.extend_from_slice(&body[..body.len() / 2]);
    let mut conn = http::connect(app.port);
    conn.write_all(&request).expect("half written");
    (conn, body[body.len() / 2..].to_vec())
}

async fn in_flight(app: &TestApp) -> f64 {
    app.metrics().await.sum("tally_callbacks_in_flight", &[])
}

async fn wait_in_flight(app: &TestApp, n: f64) {
    let started = Instant::now();
    while in_flight(app).await != n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "in flight never reached {n}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn when_every_callback_slot_is_busy_callbacks_get_429_at_once_with_retry_after() {
    // Arrange: two slots, both held by requests whose bodies are still coming.
    let app = spawn_app_with(&[
        ("TALLY_HTTP__MAX_INFLIGHT_CALLBACKS", "2"),
        ("TALLY_HTTP__BODY_READ_TIMEOUT", "30s"),
    ])
    .await;
    let (first, second) = (batch(&op(1)), batch(&op(2)));
    let holders = vec![half_sent(&app, &first), half_sent(&app, &second)];
    wait_in_flight(&app, 2.0).await;

    // Act: a third callback on each route, and one announcing 100 MB that it never sends.
    let started = Instant::now();
    let third = app.post_events_body(batch(&op(3))).await;
    let form = app
        .post_form(
            &[("operationId", &op(4)), ("messageId", MSG)],
            &[("MessageSid", "SM4"), ("MessageStatus", "sent")],
        )
        .await;
    let url = app.events_url(b"[]");
    let target = url.trim_start_matches(&app.address).to_owned();
    let huge = http::head(
        app.port,
        "POST",
        &target,
        &[
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature", &sign(TOKEN, &url, &[])),
        ],
        100 * 1024 * 1024,
    );
    let huge = http::exchange_async(app.port, huge).await;
    let shed_in = started.elapsed();

    // Assert: refused at once, with Retry-After, without touching any body.
    for resp in [&third, &form] {
        resp.assert_json_error(429);
        assert_eq!(resp.header("retry-after").as_deref(), Some("1"));
    }
    assert_eq!(huge.status, 429, "{}", huge.text());
    assert_eq!(huge.header("retry-after").as_deref(), Some("1"));
    assert!(shed_in < Duration::from_secs(5), "{shed_in:?}");
    assert_eq!(
        app.get("/healthz").await.status.as_u16(),
        200,
        "health is not gated"
    );
    let scrape = app.metrics().await;
    let refused = |route| {
        scrape.sum(
            "tally_callbacks_refused_total",
            &[("route", route), ("reason", "overload")],
        )
    };
    assert_eq!(refused("events"), 2.0);
    assert_eq!(refused("status"), 1.0);
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 0.0);
    assert_eq!(scrape.sum("tally_callbacks_in_flight", &[]), 2.0);

    // The held requests finish and are applied; then there is room again.
    let answers = actix_web::rt::task::spawn_blocking(move || {
        holders
            .into_iter()
            .map(|(mut conn, rest)| {
                conn.write_all(&rest).expect("rest written");
                http::read_response(&mut conn).status
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("holders");
    assert_eq!(answers, vec![200, 200]);
    wait_in_flight(&app, 0.0).await;
    let again = app.post_events_body(batch(&op(3))).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.text());
    for i in 1..=3 {
        assert_eq!(
            app.operation_json("Messages", &op(i)).await["stats"]["delivered"],
            1
        );
    }
}

#[actix_web::test]
async fn a_client_that_hangs_up_mid_body_gives_its_slot_back() {
    // Arrange: one slot, taken by a request whose body stops half-way.
    let app = spawn_app_with(&[
        ("TALLY_HTTP__MAX_INFLIGHT_CALLBACKS", "1"),
        ("TALLY_HTTP__BODY_READ_TIMEOUT", "30s"),
    ])
    .await;
    let (conn, _rest) = half_sent(&app, &batch(&op(7)));
    wait_in_flight(&app, 1.0).await;

    // Act
    drop(conn);
    wait_in_flight(&app, 0.0).await;
    let resp = app.post_events_body(batch(&op(8))).await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(app.operation("Messages", &op(7)).await.status.as_u16(), 404);
}

#[actix_web::test]
async fn a_flood_of_concurrent_callbacks_is_answered_200_or_429_and_the_books_balance() {
    // Arrange: a journal that syncs every request keeps each callback in flight a while.
    let dir = scratch("overload-flood");
    let app = spawn_app_with(&[
        ("TALLY_HTTP__MAX_INFLIGHT_CALLBACKS", "2"),
        ("TALLY_STORAGE__DIR", dir.to_str().expect("UTF-8 path")),
        ("TALLY_STORAGE__FSYNC", "always"),
    ])
    .await;
    let n = 64;

    // Act: 64 callbacks at once, each on its own connection.
    let answers = futures_util::future::join_all((0..n).map(|i| {
        let app = &app;
        async move { app.post_events_body(batch(&op(100 + i))).await }
    }))
    .await;

    // Assert: nothing but 200 or 429, and every 200 (and only those) applied.
    let ok = answers.iter().filter(|r| r.status.as_u16() == 200).count();
    let shed = answers.iter().filter(|r| r.status.as_u16() == 429).count();
    assert_eq!(
        ok + shed,
        n,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(ok >= 1, "some got through");
    assert!(
        shed >= 1,
        "64 at once over 2 slots that each wait for an fsync: some were shed"
    );
    wait_in_flight(&app, 0.0).await;
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_events_received_total", &[]), ok as f64);
    assert_eq!(
        scrape.sum("tally_callbacks_refused_total", &[("reason", "overload")]),
        shed as f64
    );
    assert_eq!(app.get("/readyz").await.json()["operations"], ok);
}
