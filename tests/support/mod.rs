//! The test harness every test binary shares (`tests/api`, `tests/cli.rs`,
//! `tests/durability.rs`, `tests/kafka_e2e.rs`):
//!
//! - [`app`]: tally in this process on `127.0.0.1:0`, with a client that signs as Twilio does;
//! - [`process`]: the real `tally` binary as a child process;
//! - [`http`]: the one raw HTTP/1.1 client, for the child process and for requests no
//!   well-behaved client sends;
//! - [`signing`]: requests signed as Twilio signs them, by tally's own signing code;
//! - [`cloudevent`]: CloudEvent and form-callback builders;
//! - [`scrape`]: a reader of the Prometheus text format;
//! - [`kafka_records`]: Kafka traffic, a topic reader and the record checks;
//! - [`ordered`]: JSON with its keys in document order, for tests about key order;
//! - here: [`free_port`] and [`scratch`] directories.
//!
//! Each test binary uses a part of it, so unused items are allowed here (and only here).
#![allow(dead_code)]

pub mod app;
pub mod cloudevent;
pub mod http;
pub mod kafka_records;
pub mod ordered;
pub mod process;
pub mod scrape;
pub mod signing;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The primary auth token of every tally the tests start, unless a test configures others.
pub const TOKEN: &str = "test-auth-token-primary";

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A scratch directory for one test, removed when the test passes (kept for a look when not, or
/// when `TALLY_TEST_KEEP` is set).
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("TALLY_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh, empty scratch directory named after the test binary's process and `name`.
pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("tally-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}
