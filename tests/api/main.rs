//! End-to-end tests: the real server on a free port, driven over HTTP as Twilio, Prometheus and
//! operators drive it. One binary (`spawn_app()` in `helpers`), one module per concern.

mod auth;
mod batches;
mod callbacks;
mod health;
mod helpers;
mod limits;
mod metrics;
mod query;
mod shutdown;
mod signatures;
mod simulate;
