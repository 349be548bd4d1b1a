//! Slow and greedy clients: heads trickled a byte at a time (slowloris), bodies that stall,
//! idle keep-alive connections, and more connections than a worker takes.

use crate::support::http;
use crate::support::{
    app::{spawn_app_with, TestApp},
    cloudevent::CloudEvent,
    TOKEN,
};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally::signature::sign;

const MSG: &str = "comms_message_01hslow0000000000000000000001";

/// Open `n` connections that each send the start of a request head and then one more header
/// byte every 200 ms, never finishing it, until `stop` is set or 20 s have passed.
fn slowloris(
    port: u16,
    n: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<TcpStream>> {
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut c = http::connect(port);
            c.write_all(b"POST /twilio/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .expect("head start written");
            c
        })
        .collect();
    std::thread::spawn(move || {
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(20) {
            for c in &mut conns {
                // A write fails once the server has closed the connection; that is the point.
                let _ = c.write_all(b"a");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        conns
    })
}

/// A signed one-event batch for `op`, answered within the client's 10 s timeout.
async fn deliver(app: &TestApp, op: &str) -> (u16, Duration) {
    let started = Instant::now();
    let resp = app
        .post_batch(&[CloudEvent::message("delivered", op, MSG, "SM1").json()])
        .await;
    (resp.status.as_u16(), started.elapsed())
}

#[actix_web::test]
async fn a_signed_callback_gets_through_while_hundreds_of_slowloris_connections_are_open() {
    // Arrange: 300 connections trickling their heads, the head timeout at 2 s.
    let app = spawn_app_with(&[("TALLY_HTTP__CLIENT_REQUEST_TIMEOUT", "2s")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let port = app.port;
    let trickler = {
        let stop = stop.clone();
        actix_web::rt::task::spawn_blocking(move || slowloris(port, 300, stop))
            .await
            .expect("connections opened")
    };

    // Act: while they trickle, a normal callback.
    let op = "comms_operation_01hslowloris00000000000001";
    let (status, took) = deliver(&app, op).await;
    stop.store(true, Ordering::SeqCst);
    let mut conns = actix_web::rt::task::spawn_blocking(move || trickler.join().expect("trickler"))
        .await
        .expect("joined");

    // Assert: served at once, and every slow connection is cut by the head timeout.
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(2),
        "the callback waited {took:?}"
    );
    assert_eq!(
        app.operation_json("Messages", op).await["stats"]["delivered"],
        1
    );
    let all_closed = actix_web::rt::task::spawn_blocking(move || {
        conns
            .iter_mut()
            .all(|c| http::closed_within(c, Duration::from_secs(5)))
    })
    .await
    .expect("checked");
    assert!(
        all_closed,
        "a slowloris connection outlived the head timeout"
    );
}

#[actix_web::test]
async fn when_slow_connections_fill_the_connection_limit_the_head_timeout_makes_room() {
    // Arrange: a worker takes 20 connections; 20 slowloris connections take them all.
    let app = spawn_app_with(&[
        ("TALLY_HTTP__MAX_CONNECTIONS", "20"),
        ("TALLY_HTTP__CLIENT_REQUEST_TIMEOUT", "1s"),
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let port = app.port;
    let trickler = {
        let stop = stop.clone();
        actix_web::rt::task::spawn_blocking(move || slowloris(port, 20, stop))
            .await
            .expect("connections opened")
    };

    // Act: the callback's connection waits in the backlog until the head timeout frees room.
    let op = "comms_operation_01hslowlimit0000000000001";
    let (status, took) = deliver(&app, op).await;
    stop.store(true, Ordering::SeqCst);
    actix_web::rt::task::spawn_blocking(move || drop(trickler.join()))
        .await
        .expect("joined");

    // Assert
    assert_eq!(status, 200, "served after {took:?}");
    assert_eq!(
        app.operation_json("Messages", op).await["stats"]["delivered"],
        1
    );
}

#[actix_web::test]
async fn a_body_that_stalls_gets_408_and_frees_its_slot() {
    // Arrange: one callback slot, a 1 s body timeout.
    let app = spawn_app_with(&[
        ("TALLY_HTTP__BODY_READ_TIMEOUT", "1s"),
        ("TALLY_HTTP__MAX_INFLIGHT_CALLBACKS", "1"),
    ])
    .await;
    let body = serde_json::to_vec(&[CloudEvent::message(
        "delivered",
        "comms_operation_01hslowbody00000000000001",
        MSG,
        "SM1",
    )
    .json()])
    .unwrap();
    let url = app.events_url(&body);
    let target = url.trim_start_matches(&app.address).to_owned();
    let signature = sign(TOKEN, &url, &[]);
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Twilio-Signature", signature.as_str()),
    ];
    let mut stalled = http::head(app.port, "POST", &target, &headers, body.len());
    stalled.extend_from_slice(&body[..body.len() / 2]);
    let chunked = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         X-Twilio-Signature: {signature}\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n[{{\"type\":\"x\"}},",
        app.port
    );

    // Act: each sends part of its body and then nothing.
    let started = Instant::now();
    let by_length = http::exchange_async(app.port, stalled).await;
    let by_chunks = http::exchange_async(app.port, chunked.into_bytes()).await;
    let took = started.elapsed();

    // Assert
    for resp in [&by_length, &by_chunks] {
        assert_eq!(resp.status, 408, "{}", resp.text());
        assert_eq!(resp.json()["code"], 408);
    }
    assert!(took < Duration::from_secs(8), "{took:?}");
    let scrape = app.metrics().await;
    assert_eq!(scrape.sum("tally_callbacks_total", &[("code", "408")]), 2.0);
    assert_eq!(scrape.sum("tally_events_received_total", &[]), 0.0);
    assert_eq!(scrape.sum("tally_callbacks_in_flight", &[]), 0.0);
    // The one slot is free again.
    let (status, _) = deliver(&app, "comms_operation_01hslowbodyafter000000001").await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_chunked_body_still_trickling_after_its_408_does_not_keep_its_connection() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_HTTP__BODY_READ_TIMEOUT", "1s")]).await;
    let url = app.events_url(b"[]");
    let target = url.trim_start_matches(&app.address).to_owned();
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         X-Twilio-Signature: {}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n[\r\n",
        app.port,
        sign(TOKEN, &url, &[])
    );
    let port = app.port;

    // Act: after the 408, the client goes on sending a one-byte chunk every 100 ms.
    let (status, closed_after) = actix_web::rt::task::spawn_blocking(move || {
        let mut conn = http::connect(port);
        conn.write_all(head.as_bytes()).expect("head written");
        let resp = http::read_response(&mut conn);
        let answered = Instant::now();
        let mut closed = None;
        while answered.elapsed() < Duration::from_secs(10) {
            if conn.write_all(b"1\r\n \r\n").is_err() {
                closed = Some(answered.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (resp.status, closed)
    })
    .await
    .expect("client");

    // Assert: the server closed the connection rather than draining the body for ever.
    assert_eq!(status, 408);
    let closed_after = closed_after.expect("the connection was still open 10 s after the 408");
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
}

#[actix_web::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time() {
    // Arrange
    let app = spawn_app_with(&[("TALLY_HTTP__KEEP_ALIVE", "1s")]).await;
    let port = app.port;

    // Act
    let (status, closed) = actix_web::rt::task::spawn_blocking(move || {
        let mut conn = http::connect(port);
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("request written");
        let resp = http::read_response(&mut conn);
        (
            resp.status,
            http::closed_within(&mut conn, Duration::from_secs(4)),
        )
    })
    .await
    .expect("client");

    // Assert
    assert_eq!(status, 200);
    assert!(closed, "the idle connection was kept open");
}
