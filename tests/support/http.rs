//! The one raw HTTP/1.1 client: plain requests to a tally child process, and requests no
//! well-behaved client sends (bytes that are not UTF-8 in the request line, bodies that never
//! arrive, heads trickled a byte at a time).

use std::io::{self, Read, Write};
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
    try_connect(port).expect("connects")
}

fn try_connect(port: u16) -> io::Result<TcpStream> {
    let conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// Read one response: the head, then a `Content-Length` body (or until EOF without one).
pub fn read_response(conn: &mut TcpStream) -> RawResp {
    try_read_response(conn).expect("a response")
}

fn try_read_response(conn: &mut TcpStream) -> io::Result<RawResp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = |what: &str, buf: &[u8]| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed {what}: {:?}",
                String::from_utf8_lossy(buf)
            ),
        )
    };
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(closed("before a response head", &buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line: {head}")))?;
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    return Err(closed("inside the body", &body));
                }
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
    Ok(RawResp { status, head, body })
}

/// Send `request` on a fresh connection and read the response.
pub fn exchange(port: u16, request: &[u8]) -> RawResp {
    try_exchange(port, request).expect("an HTTP exchange")
}

/// [`exchange`], with a refused connection or a cut response as an error (for a server that may
/// be gone).
pub fn try_exchange(port: u16, request: &[u8]) -> io::Result<RawResp> {
    let mut conn = try_connect(port)?;
    conn.write_all(request)?;
    try_read_response(&mut conn)
}

/// One request with `Connection: close` on a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResp {
    try_request(port, method, target, headers, body).expect("an HTTP exchange")
}

/// [`request`], with a refused connection or a cut response as an error.
pub fn try_request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<RawResp> {
    let mut all: Vec<(&str, &str)> = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    let mut bytes = head(port, method, target, &all, body.len());
    bytes.extend_from_slice(body);
    try_exchange(port, &bytes)
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
