//! The form decoder: `parse_form` reads exactly what `form_urlencoded::parse` reads (or refuses
//! what it would patch with U+FFFD), and `decode_form` yields a bounded event or a skip reason.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::ingest::{decode_form, parse_form};
use tally_fuzz::{check_event, check_journal_round_trip, split_once, RX};

fuzz_target!(|data: &[u8]| {
    let (query, body) = split_once(data, b'\n');
    let lossy: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let params = match parse_form(body) {
        Ok(params) => {
            assert_eq!(params, lossy, "parse_form reads as form_urlencoded does");
            params
        }
        Err(_) => {
            assert!(
                lossy
                    .iter()
                    .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')),
                "refused a form that decodes to UTF-8: {lossy:?}"
            );
            lossy
        }
    };
    let query: Vec<(String, String)> = form_urlencoded::parse(query).into_owned().collect();
    if let Ok(event) = decode_form(&params, &query, RX) {
        check_event(&event, RX);
        check_journal_round_trip(&[event]);
    }
});
