//! The real `tally` binary: `serve` starts, becomes ready and stops on SIGTERM; `sign` signs as
//! Twilio does; logs keep secrets and personal data out; a bad config file is refused.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tally::signature::{sign, url_with_body_sha256};

const TOKEN: &str = "cli-test-auth-token-7f3a9c";
const PHONE: &str = "+15558675310";
const OTHER_PHONE: &str = "+15017122661";
const EMAIL: &str = "jane.doe@example.com";
const MESSAGE_BODY: &str = "Your one-time code is 912-337, do not share it";
const OP: &str = "comms_operation_01hcli000000000000000000001";
const MSG: &str = "comms_message_01hcli0000000000000000000001";
/// Query API credentials (`user:password`); neither part may show in a log line.
const CREDENTIALS: &str = "ops:cli-api-password-5d1e";

/// A scratch directory for one test, removed when the test passes (kept for a look when not).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("tally-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `tally serve` child process, killed (by its id) if a test panics before stopping it.
struct Served {
    child: Option<Child>,
    port: u16,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Served {
    fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Served {
        let port = free_port();
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
        cmd.arg("serve")
            .env_remove("RUST_LOG")
            .env("TALLY_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("TALLY_HTTP__WORKERS", "1")
            .env("TALLY_TWILIO__AUTH_TOKENS", TOKEN)
            .env("TALLY_STORAGE__MEMORY_ONLY", "true")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("tally starts");
        let served = Served {
            child: Some(child),
            port,
            stdout,
            stderr,
        };
        served.wait_ready();
        served
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = try_http(self.port, "GET", "/readyz", &[], b"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tally did not become ready; stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Send SIGTERM and wait (up to `budget`) for the exit; returns the status and elapsed time.
    fn terminate(&mut self, budget: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        loop {
            if let Some(status) = child.try_wait().expect("waitable") {
                return (status, started.elapsed());
            }
            if started.elapsed() > budget {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tally did not exit within {budget:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line tally wrote, stdout then stderr.
    fn output(&self) -> String {
        let mut all = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        all.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        all
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 exchange over a fresh connection: status code and body.
fn try_http(
    port: u16,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes())?;
    conn.write_all(body)?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_http(port, method, path, headers, body).expect("HTTP exchange")
}

/// `path?query` of a full URL on the local server.
fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

fn form_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.finish().into_bytes()
}

fn owned(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
    let mut served = Served::start(&dir, &[]);
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
    let mut served = Served::start(&dir, &[]);
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
    assert_eq!(printed, sign(TOKEN, &url, &owned(&params)));
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
    let mut served = Served::start(&dir, &[]);
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
fn post_personal_data(served: &Served) -> Vec<String> {
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
        let sig = sign(TOKEN, url, &owned(&params));
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
    let events_url = url_with_body_sha256(&format!("{}/twilio/events", served.base()), &body);
    let sig = sign(TOKEN, &events_url, &[]);
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
    let wrong = sign("not-the-token", &linked_url, &owned(&params));
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
    let garbage_url = url_with_body_sha256(&format!("{}/twilio/events", served.base()), &garbage);
    let sig = sign(TOKEN, &garbage_url, &[]);
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
    let mut served = Served::start(
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
    let served = Served::start(&dir, &[]);
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
