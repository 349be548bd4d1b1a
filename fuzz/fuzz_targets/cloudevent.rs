//! The Event Streams decoder: any bytes in, a body error or one bounded event (or skip reason)
//! per element out; the bounded reader agrees with the unbounded one; a batch the hand reader
//! takes reads as serde reads it; records round-trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::ingest::cloudevent::{decode_batch_by_hand, decode_batch_in_one_pass};
use tally::ingest::{decode_events, decode_events_bounded, BodyError};
use tally_fuzz::{check_event, check_journal_round_trip, RX};

const BOUND: usize = 3;

fuzz_target!(|data: &[u8]| {
    for max in [BOUND, usize::MAX] {
        if let Some(by_hand) = decode_batch_by_hand(data, RX, max) {
            assert_eq!(Some(by_hand), decode_batch_in_one_pass(data, RX, max));
        }
    }
    let all = decode_events(data, RX);
    let bounded = decode_events_bounded(data, RX, BOUND);
    match (&all, &bounded) {
        (Ok(a), Ok(b)) => assert!(a == b && a.len() <= BOUND),
        (Ok(a), Err(BodyError::TooManyEvents { max: BOUND })) => assert!(a.len() > BOUND),
        // Past the bound the bounded reader stops before junk the full reader trips over.
        (Err(BodyError::NotJson), Err(BodyError::TooManyEvents { max: BOUND })) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        other => panic!("the bounded reader disagrees: {other:?}"),
    }
    if let Ok(decoded) = all {
        let events: Vec<_> = decoded.into_iter().flatten().collect();
        for e in &events {
            check_event(e, RX);
        }
        check_journal_round_trip(&events);
    }
});
