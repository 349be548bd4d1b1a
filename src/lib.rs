//! tally: Twilio delivery status callbacks in, live Operation state out.
//!
//! ```text
//!  Twilio ──POST /twilio/events (CloudEvents, bodySHA256)──┐
//!         ──POST /twilio/status (form, sorted params)──────┤
//!                                                          ▼
//!  routes::guard       listener (404) → source network (403) → in-flight slot (429)
//!  routes::callbacks   content type → body within limit and time → signature::Verifier (403)
//!                      → ingest::{decode_events, decode_form} → event::Event (skips counted)
//!                      → [journal append: durability seam]
//!                      → aggregator::Aggregator::apply  (DashMap of rollup::Operation;
//!                          attempts linked to resources, unlinked ones held until linked)
//!                      → metrics (received = applied + noop + rejected) → 200
//!                        (each change marks its operation in dirty::Dirty when Kafka is on)
//!  rollup::Operation   attempt lattice → resource status → stats buckets → OperationView
//!  readers             routes::query (/v1/…, Twilio-shaped: comms_api types), /metrics,
//!                      /healthz/details, /openapi.json (openapi: the whole HTTP interface)
//!  publisher           every kafka.flush_interval: dirty operations → record(&OperationView)
//!                      → idempotent producer, one record in flight per operation → Kafka
//!  simulate            acts as Twilio: a seeded scenario, signed requests, the state to expect,
//!                      and Twilio's REST API over it
//! ```

pub mod aggregator;
pub mod cidr;
pub mod cluster;
pub mod comms_api;
pub mod config;
pub mod datadir;
pub mod dirty;
pub mod event;
pub mod ingest;
pub mod intake;
pub mod journal;
pub mod metrics;
pub mod openapi;
pub mod publisher;
pub mod reconcile;
pub mod recovery;
pub mod rollup;
pub mod routes;
pub mod signature;
pub mod simulate;
pub mod snapshot;
pub mod startup;

/// The allocator of every program built on this crate: mimalloc (its version 3 line), without
/// transparent huge pages. Against the system allocator it replays a journal with about a
/// third less CPU and holds the same state in less memory; against its version 2 line it holds
/// the live server's state in 15 – 20 % less memory for the same CPU; without huge pages, the
/// kernel zeroes only the pages tally touches (figures in docs/performance.md, "Memory" and
/// "Recovery"). Fuzz builds keep the system allocator, so that the address sanitizer sees
/// every allocation.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lets the allocator give back to the system what has lain free for longer than its purge
/// delay (a second). mimalloc does that only from within a later free of a whole page of its
/// own, so a server that goes quiet after a burst (a recovery, a snapshot, a flood of
/// callbacks) would keep the burst's freed memory resident for as long as it stays quiet.
/// Allocating and freeing one large block is such a free; the block is never written, so it
/// is never resident either. The upkeep task calls this once a second (docs/operations.md,
/// "Sizing").
pub fn return_freed_memory() {
    const BLOCK_BYTES: usize = 16 << 20;
    let block: Vec<u8> = Vec::with_capacity(BLOCK_BYTES);
    std::hint::black_box(&block);
}
