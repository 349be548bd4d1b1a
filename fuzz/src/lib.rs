//! What the fuzz targets share: input formats that realistic seeds can be written in, and the
//! invariants every decoded event and every aggregator state must keep.
//!
//! Input formats (so that `corpus/<target>/` holds readable samples):
//! - `form`: `query` `\n` `body`.
//! - `signature`: `token` `\n` `url` `\n` `header` `\n` `form params` `\n` `json body`.
//! - `ingest`: one request per line: `E <Event Streams body>` or `F <query>\t<form body>`.

use std::collections::BTreeMap;
use tally::aggregator::{Aggregator, Limits, ResourceFilter};
use tally::event::{Event, EventBody, Kind, MAX_ID_BYTES};
use tally::ingest::{MAX_TAGS, MAX_TAG_KEY_BYTES, MAX_TAG_VALUE_BYTES};
use tally::journal::{decode_record, encode_record, Record};

/// The receive time every target decodes at: 2023-11-14T22:13:20Z.
pub const RX: u64 = 1_700_000_000_000;
/// 2000-01-01 and 2201-01-01 in Unix ms: the event times `ingest` accepts from a payload.
const TIME_RANGE: std::ops::Range<u64> = 946_684_800_000..7_289_654_400_000;

/// Everything `ingest` promises about an event it let through.
pub fn check_event(e: &Event, received_ms: u64) {
    assert!(
        e.time_ms == received_ms || TIME_RANGE.contains(&e.time_ms),
        "time out of range: {e:?}"
    );
    let bounded = |id: &Option<String>| {
        assert!(
            id.as_ref()
                .is_none_or(|s| !s.is_empty() && s.len() <= MAX_ID_BYTES),
            "unbounded id: {e:?}"
        )
    };
    match &e.body {
        EventBody::Operation { operation_id, .. } => {
            bounded(&Some(operation_id.clone()));
        }
        EventBody::Attempt(a) => {
            for id in [
                &a.operation_id,
                &a.resource_id,
                &a.downstream_id,
                &a.attempt,
                &a.to,
            ] {
                bounded(id);
            }
            assert!(a.tags.len() <= MAX_TAGS, "too many tags: {e:?}");
            for (k, v) in &a.tags {
                assert!(!k.is_empty() && k.len() <= MAX_TAG_KEY_BYTES, "{e:?}");
                assert!(v.len() <= MAX_TAG_VALUE_BYTES, "{e:?}");
            }
        }
        // Reads come from the reconciler, never from a callback.
        EventBody::OperationRead(_) | EventBody::ResourceRead(_) => {
            panic!("ingest made a reconciler read: {e:?}")
        }
    }
}

/// A journal record of `events` reads back as itself, in the binary format the journal writes
/// and in the JSON format older journals hold (recovery depends on both).
pub fn check_journal_round_trip(events: &[Event]) {
    let record = Record {
        received_ms: RX,
        events: events.to_vec(),
    };
    let bytes = encode_record(&record).expect("a record encodes");
    assert_eq!(decode_record(&bytes).expect("a record reads back"), record);
    let json = serde_json::to_vec(&record).expect("a record serialises");
    assert_eq!(decode_record(&json).expect("a JSON record reads back"), record);
}

/// Split at the first `sep`: (before, after); all of it is `before` when there is none.
pub fn split_once(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// One request of the `ingest` input.
#[derive(Debug)]
pub enum Request<'a> {
    Events(&'a [u8]),
    Form { query: &'a [u8], body: &'a [u8] },
}

/// Read the `ingest` input: one request per line; lines of neither kind are ignored.
pub fn requests(data: &[u8]) -> Vec<Request<'_>> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| match line {
            [b'E', b' ', body @ ..] => Some(Request::Events(body)),
            [b'F', b' ', rest @ ..] => {
                let (query, body) = split_once(rest, b'\t');
                Some(Request::Form { query, body })
            }
            _ => None,
        })
        .collect()
}

/// Big enough bounds that nothing is evicted or dropped: the laws hold for what is kept.
pub fn roomy(keep_recipient_addresses: bool) -> Limits {
    Limits {
        max_held: 100_000,
        held_ttl_ms: u64::MAX / 4,
        max_resources: u64::MAX / 4,
        keep_recipient_addresses,
    }
}

/// Every operation's view, stats and resources, minus what records *when* and *how often*
/// (`updatedAt`, `version`): the part that must not depend on event order.
pub type State = BTreeMap<String, String>;

/// The order-independent state of `agg`, checking each operation's invariants on the way.
pub fn state(agg: &Aggregator) -> State {
    let mut out = State::new();
    let mut resources_total = 0u64;
    for kind in Kind::ALL {
        for view in agg.list_operations(kind, None, None, usize::MAX) {
            let stats = view.stats;
            assert_eq!(
                stats.bucket_sum(),
                stats.total,
                "buckets must sum to total: {view:?}"
            );
            let resources = agg
                .resources(&view.id, &ResourceFilter::default(), None, usize::MAX)
                .expect("a listed operation has resources");
            assert_eq!(resources.len() as u64, stats.total, "{view:?}");
            let attempts: usize = resources.iter().map(|r| r.resource.attempts.len()).sum();
            assert_eq!(attempts as u64, stats.attempts, "{view:?}");
            assert!(view.created_ms <= view.updated_ms.max(view.created_ms));
            for r in &resources {
                assert_eq!(r.status, r.resource.status());
            }
            resources_total += resources.len() as u64;
            let rendered: Vec<String> = resources
                .iter()
                .map(|r| {
                    let res = &r.resource;
                    format!(
                        "{} {:?} to={:?} tags={:?} created={} attempts={:?}",
                        res.id, r.status, res.to, res.tags, res.created_ms, res.attempts
                    )
                })
                .collect();
            out.insert(
                view.id.clone(),
                format!(
                    "{:?} {:?} {:?} created={} {:?}",
                    view.kind,
                    view.status,
                    stats.fields(),
                    view.created_ms,
                    rendered
                ),
            );
        }
    }
    assert_eq!(agg.census().resources, resources_total);
    assert_eq!(agg.resource_count(), resources_total);
    out
}
