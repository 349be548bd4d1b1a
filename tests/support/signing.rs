//! Requests signed as Twilio signs them, by tally's own signing code (`tally::signature`), so
//! no test keeps a copy that could drift; `tests/sdk_crosscheck.rs` holds that code to Twilio's
//! own SDK.

use tally::signature::{sign, url_with_body_sha256};

/// A form callback to `url` (as Twilio calls it, query included): the encoded body and its
/// `X-Twilio-Signature`.
pub fn form(token: &str, url: &str, params: &[(&str, &str)]) -> (Vec<u8>, String) {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (form_body(params), sign(token, url, &owned))
}

/// An Event Streams request to `url`: the URL Twilio calls (`url` plus `bodySHA256`) and its
/// `X-Twilio-Signature`.
pub fn events(token: &str, url: &str, body: &[u8]) -> (String, String) {
    let url = url_with_body_sha256(url, body);
    let signature = sign(token, &url, &[]);
    (url, signature)
}

/// `params` form-urlencoded, in the order given.
pub fn form_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.finish().into_bytes()
}

/// `path?query` of a full URL.
pub fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}
