//! Twilio's own Python SDK as an independent signer: a real component where one can run here.
//!
//! `tests/support/twilio_signer.py` makes up random callbacks (unicode, empty and repeated keys,
//! `+`, `'`, `&`, userinfo, IPv6, odd ports, JSON bodies) and signs them with
//! `twilio.request_validator.RequestValidator`. Everything the SDK signed must verify here, and
//! nothing tampered with may.
//!
//! The interpreter is `$TALLY_TEST_PYTHON` (default `python3`) and must have the `twilio`
//! package; `scripts/test` sets that up.

use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use tally::signature::{self, SignatureError, Verifier};

/// Enough cases to hit every generator branch many times; signing them takes well under a second.
const CASES: usize = 1500;
/// Fixed, so a failure names a case that reproduces.
const SEED: u64 = 2026;

/// One request signed by the SDK (field meanings in the script's docstring).
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Case {
    Form {
        url: String,
        params: Vec<(String, String)>,
        token: String,
        signature: String,
        received_url: String,
        sdk_accepts_received: bool,
    },
    Json {
        base_url: String,
        url: String,
        body: String,
        body_sha256: String,
        token: String,
        signature: String,
        received_url: String,
        sdk_accepts_received: bool,
    },
}

impl Case {
    fn token(&self) -> &str {
        match self {
            Case::Form { token, .. } | Case::Json { token, .. } => token,
        }
    }

    fn signed_url(&self) -> &str {
        match self {
            Case::Form { url, .. } | Case::Json { url, .. } => url,
        }
    }

    fn received(&self) -> (&str, bool) {
        match self {
            Case::Form {
                received_url,
                sdk_accepts_received,
                ..
            }
            | Case::Json {
                received_url,
                sdk_accepts_received,
                ..
            } => (received_url, *sdk_accepts_received),
        }
    }

    fn header(&self) -> Option<&[u8]> {
        match self {
            Case::Form { signature, .. } | Case::Json { signature, .. } => {
                Some(signature.as_bytes())
            }
        }
    }

    /// Verify this case's signature with its own token at `url` (params or body unchanged).
    fn verify_at(&self, url: &str) -> Result<(), SignatureError> {
        let verifier = Verifier::new(&[self.token()]);
        match self {
            Case::Form { params, .. } => verifier.verify_form(url, params, self.header()),
            Case::Json { body, .. } => verifier.verify_json(url, body.as_bytes(), self.header()),
        }
    }
}

fn python() -> String {
    std::env::var("TALLY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The SDK-signed cases, generated once per test binary.
fn sdk_cases() -> &'static [Case] {
    static CASES_ONCE: OnceLock<Vec<Case>> = OnceLock::new();
    CASES_ONCE.get_or_init(generate_cases)
}

fn generate_cases() -> Vec<Case> {
    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import twilio"])
        .output()
        .unwrap_or_else(|e| panic!("{}", setup_hint(&python, &e.to_string())));
    assert!(
        probe.status.success(),
        "{}",
        setup_hint(&python, &String::from_utf8_lossy(&probe.stderr))
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/twilio_signer.py"
    );
    let output = Command::new(&python)
        .arg(script)
        .arg(CASES.to_string())
        .arg(SEED.to_string())
        .output()
        .expect("run twilio_signer.py");
    assert!(
        output.status.success(),
        "twilio_signer.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cases: Vec<Case> = String::from_utf8(output.stdout)
        .expect("signer output is UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(cases.len(), CASES);
    cases
}

fn setup_hint(python: &str, error: &str) -> String {
    format!(
        "Twilio's Python SDK is needed as the independent signer, but `{python} -c 'import twilio'` \
         failed: {error}\nRun `scripts/test`, which creates a venv with the `twilio` package and \
         points TALLY_TEST_PYTHON at it (or set TALLY_TEST_PYTHON to an interpreter that has it)."
    )
}

#[test]
fn every_request_signed_by_the_sdk_verifies() {
    for case in sdk_cases() {
        assert_eq!(case.verify_at(case.signed_url()), Ok(()), "{case:?}");
    }
}

#[test]
fn sign_matches_the_sdk_byte_for_byte() {
    for case in sdk_cases() {
        match case {
            Case::Form {
                url,
                params,
                token,
                signature,
                ..
            } => assert_eq!(&signature::sign(token, url, params), signature, "{case:?}"),
            Case::Json {
                base_url,
                url,
                body,
                body_sha256,
                token,
                signature,
                ..
            } => {
                assert_eq!(&signature::body_sha256_hex(body.as_bytes()), body_sha256);
                assert_eq!(
                    &signature::url_with_body_sha256(base_url, body.as_bytes()),
                    url
                );
                assert_eq!(&signature::sign(token, url, &[]), signature, "{case:?}");
            }
        }
    }
}

#[test]
fn whatever_the_sdk_accepts_on_another_port_verifies_too() {
    let mut port_changed = 0;
    for case in sdk_cases() {
        let (received, sdk_accepts) = case.received();
        if sdk_accepts {
            assert_eq!(case.verify_at(received), Ok(()), "at {received}: {case:?}");
            port_changed += usize::from(received != case.signed_url());
        }
    }
    assert!(port_changed >= 50, "only {port_changed} port-changed cases");
}

#[test]
fn a_query_signed_with_percent_27_verifies_when_received_with_a_raw_apostrophe() {
    let mut checked = 0;
    for case in sdk_cases() {
        let url = case.signed_url();
        let Some((head, query)) = url.split_once('?') else {
            continue;
        };
        if query.contains("%27") && !query.contains('\'') {
            let received = format!("{head}?{}", query.replace("%27", "'"));
            assert_eq!(case.verify_at(&received), Ok(()), "at {received}: {case:?}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} apostrophe cases");
}

#[test]
fn tampered_requests_do_not_verify() {
    for (i, case) in sdk_cases().iter().enumerate() {
        let url = case.signed_url();
        let verifier = Verifier::new(&[case.token()]);
        let header = case.header();

        let wrong_token = Verifier::new(&[format!("{}x", case.token())]);
        let other_url = format!("{url}{}x=1", if url.contains('?') { "&" } else { "?" });

        match case {
            Case::Form { params, .. } => {
                assert_eq!(
                    wrong_token.verify_form(url, params, header),
                    Err(SignatureError::Mismatch),
                    "wrong token: {case:?}"
                );
                assert_eq!(
                    verifier.verify_form(&other_url, params, header),
                    Err(SignatureError::Mismatch),
                    "changed URL: {case:?}"
                );

                let mut added = params.clone();
                added.push(("Tampered\u{0}".to_owned(), "1".to_owned()));
                assert_eq!(
                    verifier.verify_form(url, &added, header),
                    Err(SignatureError::Mismatch),
                    "added param: {case:?}"
                );

                if !params.is_empty() {
                    // NUL never occurs in generated values, so this value is new to its key.
                    let mut changed = params.clone();
                    changed[i % params.len()].1.push('\u{0}');
                    assert_eq!(
                        verifier.verify_form(url, &changed, header),
                        Err(SignatureError::Mismatch),
                        "changed value: {case:?}"
                    );
                }
            }
            Case::Json { body, .. } => {
                let body = body.as_bytes();
                assert_eq!(
                    wrong_token.verify_json(url, body, header),
                    Err(SignatureError::Mismatch),
                    "wrong token: {case:?}"
                );
                assert_eq!(
                    verifier.verify_json(&other_url, body, header),
                    Err(SignatureError::Mismatch),
                    "changed URL: {case:?}"
                );

                let mut changed = body.to_vec();
                match changed.len() {
                    0 => changed.push(b' '),
                    len => changed[i % len] ^= 0x01,
                }
                assert_eq!(
                    verifier.verify_json(url, &changed, header),
                    Err(SignatureError::BodyHashMismatch),
                    "changed body byte: {case:?}"
                );
            }
        }
    }
}
