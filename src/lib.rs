//! tally: Twilio delivery status callbacks in, live Operation state out.
//!
//! ```text
//!  Twilio ──POST /twilio/events (CloudEvents, bodySHA256)──┐
//!         ──POST /twilio/status (form, sorted params)──────┤
//!                                                          ▼
//!  routes::callbacks   content type → body within limit → signature::Verifier (403)
//!                      → ingest::{decode_events, decode_form} → event::Event (skips counted)
//!                      → [journal append: durability seam]
//!                      → aggregator::Aggregator::apply  (DashMap of rollup::Operation;
//!                          attempts linked to resources, unlinked ones held until linked)
//!                      → metrics (received = applied + noop + rejected) → 200
//!  rollup::Operation   attempt lattice → resource status → stats buckets → OperationView
//!  readers             routes::query (/v1/…, Twilio-shaped), /metrics, [publisher: Kafka seam]
//!  simulate            acts as Twilio: a seeded scenario, signed requests, the state to expect
//! ```

pub mod aggregator;
pub mod config;
pub mod event;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod rollup;
pub mod routes;
pub mod signature;
pub mod simulate;
pub mod startup;
