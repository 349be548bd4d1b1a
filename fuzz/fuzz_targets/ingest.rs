//! The whole ingest path behind verification: decode each request, apply it to an aggregator,
//! and check the laws after every request: stats buckets sum to total, totals match resources
//! and attempts; applying everything again changes nothing; the reverse order ends in the same
//! state (when the events never link one id to two parents); a snapshot restores the same
//! state; with `keep_recipient_addresses = false` no address is kept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use tally::aggregator::{Aggregator, Outcome};
use tally::event::{Event, EventBody};
use tally::ingest::{decode_events_bounded, decode_form, parse_form};
use tally_fuzz::{check_event, requests, roomy, state, Request, RX};

/// Decode one request as the routes do; bodies they would refuse contribute nothing.
fn decode(req: &Request<'_>, received_ms: u64) -> Vec<Event> {
    match req {
        Request::Events(body) => decode_events_bounded(body, received_ms, 64)
            .map(|d| d.into_iter().flatten().collect())
            .unwrap_or_default(),
        Request::Form { query, body } => match (parse_form(query), parse_form(body)) {
            (Ok(q), Ok(p)) => decode_form(&p, &q, received_ms).into_iter().collect(),
            _ => vec![],
        },
    }
}

/// Whether some id is linked to two different parents by the events themselves: then the first
/// link wins and order matters, which Twilio's own events never do.
fn conflicting_links(events: &[Event]) -> bool {
    let mut parent: HashMap<(u8, String), String> = HashMap::new();
    let mut conflict = false;
    let mut link = |kind: u8, child: &str, up: &str| {
        let known = parent
            .entry((kind, child.to_owned()))
            .or_insert_with(|| up.to_owned());
        conflict |= known != up;
    };
    for e in events {
        if let EventBody::Attempt(a) = &e.body {
            if let (Some(r), Some(o)) = (&a.resource_id, &a.operation_id) {
                link(0, r, o);
            }
            if let (Some(s), Some(r)) = (&a.downstream_id, &a.resource_id) {
                link(1, s, r);
            }
            if let (Some(s), Some(o)) = (&a.downstream_id, &a.operation_id) {
                link(2, s, o);
            }
        }
    }
    conflict
}

fuzz_target!(|data: &[u8]| {
    let reqs = requests(data);
    if reqs.len() > 64 {
        return;
    }
    let mut events = Vec::new();
    let agg = Aggregator::new(roomy(true));
    for (i, req) in reqs.iter().enumerate() {
        let now = RX + i as u64 * 1000;
        for e in decode(req, now) {
            check_event(&e, now);
            agg.apply(&e, now);
            events.push((e, now));
        }
        state(&agg);
    }
    let settled = state(&agg);

    // Idempotent: everything again changes nothing.
    let later = RX + 10_000_000;
    for (e, _) in &events {
        let outcome = agg.apply(e, later);
        assert!(
            matches!(outcome, Outcome::Noop | Outcome::Rejected(_)),
            "applying {e:?} again gave {outcome:?}"
        );
    }
    assert_eq!(state(&agg), settled, "applying again changed the state");

    // A snapshot restores the same state.
    let mut snapshot = Vec::new();
    tally::snapshot::write_to(&mut snapshot, &agg).expect("snapshot writes");
    let restored = Aggregator::new(roomy(true));
    let read = std::sync::atomic::AtomicU64::new(0);
    tally::snapshot::load_from(&snapshot[..], &restored, 2, &read).expect("reads back");
    assert_eq!(state(&restored), settled, "snapshot round trip");

    // Order does not matter.
    let plain: Vec<Event> = events.iter().map(|(e, _)| e.clone()).collect();
    if !conflicting_links(&plain) {
        let reversed = Aggregator::new(roomy(true));
        for (e, now) in events.iter().rev() {
            reversed.apply(e, *now);
        }
        assert_eq!(
            state(&reversed),
            settled,
            "the reverse order ended elsewhere"
        );
    }

    // Privacy: nothing keeps an address.
    let private = Aggregator::new(roomy(false));
    for (e, now) in &events {
        private.apply(e, *now);
    }
    for line in state(&private).values() {
        assert!(!line.contains("to=Some"), "an address was kept: {line}");
    }
});
