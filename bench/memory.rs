//! Resident memory per tracked resource: build an `Aggregator` in this process from generated
//! Event Streams batches (decoded by the real decoder) and read VmRSS before and after.
//! `bytes_per_resource` is read as a quiet server holds the state: after three seconds in which
//! the allocator is let give back what lies free, as the server's upkeep lets it once a second
//! (`tally::return_freed_memory`); `bytes_per_resource_at_once` is read right after the last
//! event.
//!
//! `memory RESOURCES [RECIPIENTS_PER_OPERATION]` prints one JSON object.

#[path = "procfs.rs"]
#[allow(dead_code)] // this program reads the resident set only
mod procfs;

use procfs::rss_bytes;
use std::time::Instant;
use tally::aggregator::{Aggregator, Limits};
use tally::event::Kind;
use tally::ingest::decode_events;
use tally::simulate::{Config, Mix, Scenario};

fn main() {
    let mut args = std::env::args().skip(1);
    let resources: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let per_op: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let cfg = Config {
        operations: resources.div_ceil(per_op),
        recipients: per_op,
        mix: Mix::Events,
        kinds: vec![Kind::Messages],
        fallback: 0.5,
        seed: 42,
        ..Config::default()
    };
    let agg = Aggregator::new(Limits {
        max_resources: u64::MAX,
        ..Limits::default()
    });
    let before = rss_bytes();
    let started = Instant::now();
    let mut events = 0u64;
    let now = 1_767_225_600_000 + 86_400_000;
    for i in 0..cfg.operations {
        for body in Scenario::event_batches_of(&cfg, i, 100) {
            for ev in decode_events(&body, now)
                .expect("generated JSON")
                .into_iter()
                .flatten()
            {
                agg.apply(&ev, now);
                events += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let at_once = rss_bytes();
    // What the server's upkeep does once a second: let the allocator give back what has lain
    // free past its purge delay (a second), a few times over, as a quiet server would.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        tally::return_freed_memory();
    }
    let after = rss_bytes();
    let census = agg.census();
    let per_resource = (after.saturating_sub(before)) as f64 / census.resources.max(1) as f64;
    let parts = agg.memory_parts();
    let per = |b: u64| (b as f64 / census.resources.max(1) as f64).round();
    let out = serde_json::json!({
        "parts_bytes_per_resource": {
            "slots": per(parts.slots),
            "slot_index": per(parts.slot_index),
            "extra_attempts": per(parts.extra_attempts),
            "links": per(parts.links),
            "other": per(parts.other),
        },
        "resources": census.resources,
        "attempts": census.attempts,
        "attempts_per_resource": census.attempts as f64 / census.resources.max(1) as f64,
        "operations": agg.operation_count(),
        "events": events,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_at_once_bytes": at_once,
        "bytes_per_resource_at_once": ((at_once.saturating_sub(before)) as f64 / census.resources.max(1) as f64).round(),
        "bytes_per_resource": per_resource.round(),
        "build_seconds": elapsed,
        "generate_decode_apply_events_per_s": (events as f64 / elapsed).round(),
    });
    println!("{out}");
}
