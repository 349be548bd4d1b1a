//! End-to-end tests: the real server on a free port, driven over HTTP as Twilio, Prometheus and
//! operators drive it. One binary (`spawn_app()` in `tests/support/app.rs`), one module per
//! concern.

mod auth;
mod batches;
mod callbacks;
mod exposure;
mod health;
mod hostile;
mod kafka;
mod limits;
mod metrics;
mod openapi;
mod overload;
mod privacy;
mod query;
mod shapes;
mod shutdown;
mod signatures;
mod simulate;
mod slow_clients;
#[path = "../support/mod.rs"]
mod support;
