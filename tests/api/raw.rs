//! Raw HTTP/1.1 over TCP, for requests no well-behaved client sends: bytes that are not UTF-8 in
//! the request line, bodies that never arrive, heads trickled a byte at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// The head, lowercased, for header lookups.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn connect(port: u16) -> TcpStream {
    let conn = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    conn.set_nodelay(true).expect("nodelay");
    conn
}

/// Read one response: the head, then a `Content-Length` body (or until EOF without one).
pub fn read_response(conn: &mut TcpStream) -> RawResp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk).expect("response read");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = conn.read(&mut chunk).expect("body read");
                assert!(n > 0, "connection closed inside the body");
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            while let Ok(n) = conn.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    RawResp { status, head, body }
}

/// Send `request` on a fresh connection and read the response.
pub fn exchange(port: u16, request: &[u8]) -> RawResp {
    let mut conn = connect(port);
    conn.write_all(request).expect("request written");
    read_response(&mut conn)
}

/// [`exchange`] off the async runtime.
pub async fn exchange_async(port: u16, request: Vec<u8>) -> RawResp {
    actix_web::rt::task::spawn_blocking(move || exchange(port, &request))
        .await
        .expect("client task")
}

/// Whether the server closed `conn` (EOF or reset) within `within`, reading and discarding
/// whatever it sent first (a 408, say).
pub fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).expect("timeout set");
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request head, CRLF-terminated, with `Host` (as the signing helpers sign it) and
/// `Content-Length` filled in.
pub fn head(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    length: usize,
) -> Vec<u8> {
    let mut h = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    h.into_bytes()
}
