//! In-process shutdown: the server is a function of a listener and a shutdown future.

use crate::support::app::spawn_app;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[actix_web::test]
async fn resolving_the_shutdown_future_stops_the_server_even_with_an_idle_keep_alive_connection() {
    // Arrange: a client that made one request and keeps its connection open, idle.
    let app = spawn_app().await;
    let port = app.port;
    let idle = std::thread::spawn(move || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
        conn.write_all(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n",
        )
        .expect("request written");
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).expect("response read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        conn
    });
    let conn = actix_web::rt::task::spawn_blocking(move || idle.join().expect("client thread"))
        .await
        .expect("client task");

    // Act
    let started = Instant::now();
    let result = actix_web::rt::time::timeout(Duration::from_secs(10), app.stop()).await;

    // Assert
    let elapsed = started.elapsed();
    let result = result.expect("run_until_stopped returns");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "shutdown took {elapsed:?}"
    );
    let closed = actix_web::rt::task::spawn_blocking(move || {
        let mut conn = conn;
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout set");
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    })
    .await
    .expect("client task");
    assert!(closed, "the idle connection was closed by the server");
}
