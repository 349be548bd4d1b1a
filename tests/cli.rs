//! The real `tally` binary: `serve` starts, becomes ready and stops on SIGTERM; `sign` signs as
//! Twilio does; logs keep secrets and personal data out; a bad config file is refused.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::process::Tally;
use support::signing::{self, form_body, path_of};
use support::{scratch, TOKEN};
use tally::signature::{sign, url_with_body_sha256};

const PHONE: &str = "+15558675310";
const OTHER_PHONE: &str = "+15017122661";
const EMAIL: &str = "jane.doe@example.com";
const MESSAGE_BODY: &str = "Your one-time code is 912-337, do not share it";
const OP: &str = "comms_operation_01hcli000000000000000000001";
const MSG: &str = "comms_message_01hcli0000000000000000000001";
/// Query API credentials (`user:password`); neither part may show in a log line.
const CREDENTIALS: &str = "ops:cli-api-password-5d1e";

/// One request to a served tally on a fresh connection: the status code and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let resp = support::http::request(port, method, path, headers, body);
    (resp.status, resp.text())
}

/// Run `tally sign …` and return its stdout.
fn tally_sign(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("sign")
        .args(args)
        .output()
        .expect("tally sign runs");
    assert!(
        out.status.success(),
        "tally sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The value after `prefix` on the line that starts with it.
fn line_value(output: &str, prefix: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {output:?}"))
        .trim()
        .to_owned()
}

fn classic_params<'a>(sid: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", OTHER_PHONE),
        ("To", PHONE),
        ("Body", MESSAGE_BODY),
        ("MessageSid", sid),
        ("MessageStatus", status),
    ]
}

fn events_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([
        {
            "specversion": "1.0",
            "type": "com.twilio.comms-api.message.delivered",
            "source": "/v1/Messages",
            "id": "EZ00000000000000000000000000000001",
            "time": "2024-04-05T06:20:00Z",
            "datacontenttype": "application/json",
            "data": {
                "operation_id": OP,
                "message_id": MSG,
                "downstream_id": "SM80000000000000000000000000000001",
                "from": {"address": OTHER_PHONE, "channel": "SMS"},
                "to": {"address": PHONE, "channel": "phone"},
                "content": {"body": MESSAGE_BODY}
            }
        },
        {
            "specversion": "1.0",
            "type": "com.twilio.comms-api.email.delivered",
            "source": "/v1/Emails",
            "id": "EZ00000000000000000000000000000002",
            "data": {
                "operation_id": "comms_operation_01hcli000000000000000000002",
                "email_id": "comms_email_01hcli00000000000000000001",
                "to": {"address": EMAIL, "name": "Jane Doe"}
            }
        },
        {"type": "com.twilio.comms-api.message.bogus", "data": {"to": {"address": PHONE}}}
    ]))
    .expect("serialisable")
}

#[test]
fn serve_becomes_ready_and_exits_0_within_10_seconds_of_sigterm() {
    // Arrange
    let dir = scratch("sigterm");
    let mut served = Tally::start(&dir, &[]);
    let (code, body) = http(served.port, "GET", "/readyz", &[], b"");
    assert_eq!(code, 200, "{body}");
    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = TcpStream::connect(("127.0.0.1", served.port)).expect("connects");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("written");
    let mut buf = [0u8; 512];
    let _ = idle.read(&mut buf).expect("answered");

    // Act
    let (status, elapsed) = served.terminate(Duration::from_secs(10));

    // Assert
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        served.output()
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        served.output().contains("tally listening"),
        "{}",
        served.output()
    );
}

#[test]
fn sign_prints_the_form_signature_twilio_sends_and_the_server_accepts_it() {
    // Arrange
    let dir = scratch("sign-form");
    let mut served = Tally::start(&dir, &[]);
    let url = format!(
        "{}/twilio/status?operationId={OP}&messageId={MSG}",
        served.base()
    );
    let params = [
        ("MessageSid", "SM90000000000000000000000000000001"),
        ("MessageStatus", "delivered"),
        ("To", PHONE),
        ("ErrorCode", ""),
    ];

    // Act
    let mut args = vec!["--token", TOKEN, "--url", url.as_str()];
    let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for p in &pairs {
        args.extend(["--form", p.as_str()]);
    }
    let printed = line_value(&tally_sign(&args), "X-Twilio-Signature:");
    let (code, body) = http(
        served.port,
        "POST",
        path_of(&url),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", &printed),
        ],
        &form_body(&params),
    );

    // Assert
    assert_eq!(printed, signing::form(TOKEN, &url, &params).1);
    assert_eq!(code, 200, "{body}");
    let (code, op) = http(
        served.port,
        "GET",
        &format!("/v1/Messages/Operations/{OP}"),
        &[],
        b"",
    );
    assert_eq!(code, 200, "{op}");
    assert!(op.contains("\"delivered\":1"), "{op}");
    let (status, _) = served.terminate(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn sign_json_prints_the_url_with_body_sha256_and_a_signature_the_server_accepts() {
    // Arrange
    let dir = scratch("sign-json");
    let mut served = Tally::start(&dir, &[]);
    let body = events_body();
    let file = dir.join("batch.json");
    std::fs::write(&file, &body).expect("body written");
    let url = format!("{}/twilio/events", served.base());

    // Act
    let out = tally_sign(&[
        "--token",
        TOKEN,
        "--url",
        &url,
        "--json",
        file.to_str().expect("UTF-8 path"),
    ]);
    let signed_url = line_value(&out, "url:");
    let signature = line_value(&out, "X-Twilio-Signature:");
    let (code, summary) = http(
        served.port,
        "POST",
        path_of(&signed_url),
        &[
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature", &signature),
        ],
        &body,
    );

    // Assert
    assert_eq!(signed_url, url_with_body_sha256(&url, &body));
    assert_eq!(signature, sign(TOKEN, &signed_url, &[]));
    assert_eq!(code, 200, "{summary}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&summary).expect("JSON summary"),
        serde_json::json!({"received": 3, "applied": 2, "noop": 0, "rejected": 1})
    );
    let (status, _) = served.terminate(Duration::from_secs(10));
    assert!(status.success());
}

/// Post accepted and refused callbacks full of personal data; return every signature sent.
fn post_personal_data(served: &Tally) -> Vec<String> {
    let mut signatures = vec![];
    let port = served.port;
    let form_ct = ("Content-Type", "application/x-www-form-urlencoded");
    let json_ct = ("Content-Type", "application/json");

    // Accepted: a linked and an unlinked form callback, and an Event Streams batch.
    let linked_url = format!(
        "{}/twilio/status?operationId={OP}&messageId={MSG}",
        served.base()
    );
    for (url, sid) in [
        (linked_url.as_str(), "SMa0000000000000000000000000000001"),
        (
            &*format!("{}/twilio/status", served.base()),
            "SMa0000000000000000000000000000002",
        ),
    ] {
        let params = classic_params(sid, "delivered");
        let sig = signing::form(TOKEN, url, &params).1;
        let (code, body) = http(
            port,
            "POST",
            path_of(url),
            &[form_ct, ("X-Twilio-Signature", &sig)],
            &form_body(&params),
        );
        assert_eq!(code, 200, "{body}");
        signatures.push(sig);
    }
    let body = events_body();
    let (events_url, sig) =
        signing::events(TOKEN, &format!("{}/twilio/events", served.base()), &body);
    let (code, answer) = http(
        port,
        "POST",
        path_of(&events_url),
        &[json_ct, ("X-Twilio-Signature", &sig)],
        &body,
    );
    assert_eq!(code, 200, "{answer}");
    signatures.push(sig);

    // Refused: wrong token, tampered body, non-JSON body, wrong content type.
    let params = classic_params("SMa0000000000000000000000000000003", "failed");
    let wrong = signing::form("not-the-token", &linked_url, &params).1;
    let (code, _) = http(
        port,
        "POST",
        path_of(&linked_url),
        &[form_ct, ("X-Twilio-Signature", &wrong)],
        &form_body(&params),
    );
    assert_eq!(code, 403);
    signatures.push(wrong.clone());
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let (code, _) = http(
        port,
        "POST",
        path_of(&events_url),
        &[json_ct, ("X-Twilio-Signature", &signatures[2])],
        &tampered,
    );
    assert_eq!(code, 403);
    let garbage = format!("To={PHONE}&Email={EMAIL}&Body={MESSAGE_BODY}").into_bytes();
    let (garbage_url, sig) =
        signing::events(TOKEN, &format!("{}/twilio/events", served.base()), &garbage);
    let (code, _) = http(
        port,
        "POST",
        path_of(&garbage_url),
        &[json_ct, ("X-Twilio-Signature", &sig)],
        &garbage,
    );
    assert_eq!(code, 400);
    signatures.push(sig);
    let (code, _) = http(
        port,
        "POST",
        path_of(&linked_url),
        &[
            ("Content-Type", "text/plain"),
            ("X-Twilio-Signature", &wrong),
        ],
        &garbage,
    );
    assert_eq!(code, 415);

    // The rest of a hostile day: the query API with good and bad credentials, a doubled
    // signature, a body over the limit, a form that is not UTF-8, a method that is not POST.
    let basic = |creds: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    };
    let (code, shown) = http(
        port,
        "GET",
        &format!("/v1/Messages/{MSG}"),
        &[("Authorization", &basic(CREDENTIALS))],
        b"",
    );
    assert_eq!(code, 200, "{shown}");
    assert!(
        shown.contains(PHONE),
        "the API shows the address; the logs must not"
    );
    let (code, _) = http(
        port,
        "GET",
        "/v1/Messages/Operations/x",
        &[("Authorization", &basic("ops:wrong-password-7c2b"))],
        b"",
    );
    assert_eq!(code, 401);
    let (code, _) = http(
        port,
        "POST",
        path_of(&events_url),
        &[
            json_ct,
            ("X-Twilio-Signature", &signatures[2]),
            ("X-Twilio-Signature", &signatures[2]),
        ],
        &body,
    );
    assert_eq!(code, 403);
    let oversized = format!("[{}]", format!("\"{PHONE} {EMAIL}\",").repeat(1000));
    let (code, _) = http(
        port,
        "POST",
        path_of(&events_url),
        &[json_ct, ("X-Twilio-Signature", &signatures[2])],
        oversized.as_bytes(),
    );
    assert_eq!(code, 413);
    let (code, _) = http(
        port,
        "POST",
        path_of(&linked_url),
        &[form_ct, ("X-Twilio-Signature", &wrong)],
        format!("To={PHONE}&Body=%FF{MESSAGE_BODY}").as_bytes(),
    );
    assert_eq!(code, 400);
    let (code, _) = http(port, "PUT", "/twilio/events", &[json_ct], &body);
    assert_eq!(code, 405);
    signatures
}

fn assert_logs_keep_secrets_and_personal_data_out(level: &str) {
    // Arrange
    let dir = scratch(&format!("pii-{level}"));
    let mut served = Tally::start(
        &dir,
        &[
            ("TALLY_LOG__LEVEL", level),
            ("TALLY_API__CREDENTIALS", CREDENTIALS),
            ("TALLY_HTTP__MAX_BODY_BYTES", "16384"),
        ],
    );

    // Act
    let signatures = post_personal_data(&served);
    let (status, _) = served.terminate(Duration::from_secs(10));

    // Assert
    assert!(status.success());
    let output = served.output();
    assert!(
        output.contains("callback signature rejected"),
        "the refusals were logged at {level}:\n{output}"
    );
    let digits_only = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let mut forbidden: Vec<String> = vec![
        TOKEN.into(),
        "not-the-token".into(),
        PHONE.into(),
        digits_only(PHONE),
        OTHER_PHONE.into(),
        digits_only(OTHER_PHONE),
        "%2B15558675310".into(),
        EMAIL.into(),
        "jane.doe".into(),
        "jane.doe%40example.com".into(),
        MESSAGE_BODY.into(),
        "one-time code".into(),
        "912-337".into(),
        "cli-api-password-5d1e".into(),
        "wrong-password-7c2b".into(),
        "b3BzOmNsaS1hcGktcGFzc3dvcmQtNWQxZQ".into(),
    ];
    forbidden.extend(signatures);
    for (n, line) in output.lines().enumerate() {
        for secret in &forbidden {
            assert!(
                !line.contains(secret.as_str()),
                "line {} of tally's output at {level} shows {secret:?}: {line}",
                n + 1
            );
        }
    }
}

#[test]
fn logs_at_info_show_no_token_signature_phone_number_email_or_message_body() {
    assert_logs_keep_secrets_and_personal_data_out("info");
}

#[test]
fn logs_at_debug_show_no_token_signature_phone_number_email_or_message_body() {
    assert_logs_keep_secrets_and_personal_data_out("debug");
}

#[test]
fn logs_at_trace_show_no_token_signature_phone_number_email_or_message_body() {
    assert_logs_keep_secrets_and_personal_data_out("trace");
}

#[test]
fn a_flood_of_forged_callbacks_logs_a_line_or_two_and_counts_every_one() {
    // Arrange: the default pacing, one line per 10 s.
    const FORGED: usize = 300;
    let dir = scratch("forged");
    let served = Tally::start(&dir, &[]);
    let body = form_body(&classic_params(
        "SM80000000000000000000000000000009",
        "sent",
    ));
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Twilio-Signature", "Zm9yZ2VkLXNpZ25hdHVyZS0wMDAwMDAwMDA="),
    ];

    // Act
    for _ in 0..FORGED {
        let (code, _) = http(served.port, "POST", "/twilio/status", &headers, &body);
        assert_eq!(code, 403);
    }

    // Assert
    let (_, scrape) = http(served.port, "GET", "/metrics", &[], b"");
    let counted: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("tally_signature_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, FORGED as f64, "{scrape}");
    let output = served.output();
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("signature rejected"))
        .collect();
    assert!(
        (1..=2).contains(&lines.len()),
        "{} log lines for {FORGED} forged callbacks:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

#[test]
fn simulate_dump_writes_requests_signed_as_twilio_signs_them() {
    // Arrange
    let dir = scratch("simulate-dump");
    let file = dir.join("requests.tsv");
    let target = "http://127.0.0.1:9";

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["simulate", "--target", target, "--token", TOKEN])
        .args([
            "--operations",
            "2",
            "--recipients",
            "3",
            "--kinds",
            "messages,emails",
        ])
        .args([
            "--mix",
            "both",
            "--quiet",
            "--dump",
            file.to_str().expect("UTF-8 path"),
        ])
        .output()
        .expect("tally simulate runs");

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = std::fs::read_to_string(&file).expect("the dump is written");
    let (mut forms, mut batches) = (0, 0);
    for line in dump.lines() {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        let [path, signature, content_type, body] = fields[..] else {
            panic!("not four fields: {line}");
        };
        let url = format!("{target}{path}");
        let params: Vec<(String, String)> = if content_type.starts_with("application/json") {
            batches += 1;
            vec![]
        } else {
            forms += 1;
            form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect()
        };
        assert_eq!(signature, sign(TOKEN, &url, &params), "{line}");
    }
    assert!(
        forms > 0 && batches > 0,
        "both doors: {forms} forms, {batches} batches"
    );
}

#[test]
fn an_unknown_key_in_the_config_file_stops_serve_with_a_message_naming_it() {
    // Arrange
    let dir = scratch("bad-config");
    let config = dir.join("tally.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:0\"\nmax_body_bites = 1024\n",
    )
    .expect("config written");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--config", config.to_str().expect("UTF-8 path")])
        .env_remove("RUST_LOG")
        .output()
        .expect("tally runs");

    // Assert
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.max_body_bites"), "{stderr}");
}

#[test]
fn check_config_accepts_a_valid_file_and_prints_no_secret() {
    // Arrange
    let dir = scratch("check-config");
    let config = dir.join("tally.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"0.0.0.0:8080\"\npublic_url = \"https://hook:pass-w0rd@tally.example.com\"\n\n[storage]\ndir = \"/var/lib/tally\"\n",
    )
    .expect("config written");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "check-config",
            "--config",
            config.to_str().expect("UTF-8 path"),
        ])
        .env("TALLY_TWILIO__AUTH_TOKENS", TOKEN)
        .output()
        .expect("tally runs");

    // Assert
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("listen: 0.0.0.0:8080"), "{stdout}");
    assert!(stdout.contains("twilio auth tokens: 1"), "{stdout}");
    assert!(stdout.contains("https://***@tally.example.com"), "{stdout}");
    assert!(
        !stdout.contains(TOKEN) && !stdout.contains("pass-w0rd"),
        "{stdout}"
    );
    assert!(!dir.join("journal").exists(), "check-config starts nothing");
}

#[test]
fn check_config_refuses_an_unknown_key_naming_it() {
    // Arrange
    let dir = scratch("check-config-bad");
    let config = dir.join("tally.toml");
    std::fs::write(&config, "[retention]\nttl_days = 7\n").expect("config written");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "check-config",
            "--config",
            config.to_str().expect("UTF-8 path"),
        ])
        .output()
        .expect("tally runs");

    // Assert
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retention.ttl_days"), "{stderr}");
}
