//! Signature canonicalisation and verification with fuzzed URL, parameters, header and body:
//! nothing panics; what `sign` produces verifies, in any parameter order and with repeats;
//! candidate URLs start with the URL as received and hold no duplicates; a JSON signature is
//! bound to its body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::signature::{candidate_urls, canonical_string, sign, url_with_body_sha256, Verifier};
use tally_fuzz::split_once;

fuzz_target!(|data: &[u8]| {
    let (token, rest) = split_once(data, b'\n');
    let (url, rest) = split_once(rest, b'\n');
    let (header, rest) = split_once(rest, b'\n');
    let (form, body) = split_once(rest, b'\n');
    let token = String::from_utf8_lossy(token);
    let url = String::from_utf8_lossy(url).into_owned();
    let params: Vec<(String, String)> = form_urlencoded::parse(form).into_owned().collect();
    let verifier = Verifier::new(&[token.as_ref()]);

    // Canonical string and candidates.
    let canonical = canonical_string(&url, &params);
    assert!(canonical.starts_with(&url));
    let candidates = candidate_urls(&url);
    assert_eq!(candidates.first(), Some(&url));
    assert!(candidates.len() <= 9, "{candidates:?}");
    for (i, c) in candidates.iter().enumerate() {
        assert!(!candidates[..i].contains(c), "duplicate candidate {c:?}");
    }

    // Whatever the header, no panic; a random header does not verify (unless it is the real one).
    let header = (!header.is_empty()).then_some(header);
    let signed = sign(&token, &url, &params);
    if verifier.verify_form(&url, &params, header).is_ok() {
        let h = header.expect("no header never verifies");
        assert!(
            candidates
                .iter()
                .any(|c| sign(&token, c, &params).as_bytes() == h),
            "a header verified that no candidate URL signs"
        );
    }
    let _ = verifier.verify_json(&url, body, header);

    // What Twilio signs verifies, whatever the parameter order and repeats.
    assert_eq!(
        verifier.verify_form(&url, &params, Some(signed.as_bytes())),
        Ok(())
    );
    let mut shuffled = params.clone();
    shuffled.reverse();
    shuffled.extend(params.iter().take(2).cloned());
    assert_eq!(
        verifier.verify_form(&url, &shuffled, Some(signed.as_bytes())),
        Ok(())
    );

    // A JSON signature covers the body through bodySHA256 (for URLs without a fragment or a
    // bodySHA256 of their own, which Twilio would not produce).
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let has_hash_param = form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "bodySHA256");
    if !url.contains('#') && !has_hash_param {
        let json_url = url_with_body_sha256(&url, body);
        let signature = sign(&token, &json_url, &[]);
        assert_eq!(
            verifier.verify_json(&json_url, body, Some(signature.as_bytes())),
            Ok(())
        );
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(verifier
            .verify_json(&json_url, &tampered, Some(signature.as_bytes()))
            .is_err());
    }
});
