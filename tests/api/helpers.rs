//! The test harness: a real tally on 127.0.0.1:0, a client that signs like Twilio, CloudEvent
//! builders and a Prometheus text parser.

use actix_web::http::StatusCode;
use awc::Client;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tally::config::Settings;
use tally::signature::{sign, url_with_body_sha256};
use tally::startup::Application;
use tokio::sync::oneshot;

/// The primary auth token of every test app unless a test configures others.
pub const TOKEN: &str = "test-auth-token-primary";
/// A recipient phone number: must never show in metrics labels or logs.
pub const PHONE: &str = "+15558675310";
/// The sender number of the test messages.
pub const SENDER: &str = "+15017122661";
/// An event time Twilio could have sent (`time` of the test CloudEvents).
pub const EVENT_TIME: &str = "2024-04-05T06:20:00Z";

/// A running tally and everything a test needs to talk to it.
pub struct TestApp {
    pub port: u16,
    /// The admin listener's port, when `http.admin_listen` is set.
    pub admin_port: Option<u16>,
    /// `http://127.0.0.1:PORT`, which is also the base of the URLs Twilio signs.
    pub address: String,
    /// The token the `post_*` helpers sign with.
    pub token: String,
    pub client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<actix_web::rt::task::JoinHandle<anyhow::Result<()>>>,
}

/// A response with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Assert the status and that the body is tally's JSON error shape for it.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error content type: {:?}",
            self.header("content-type")
        );
        let body = self.json();
        assert_eq!(body["code"], json!(status), "{body}");
        assert_eq!(body["status"], json!(status), "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

/// A scratch directory for one test (a journal, say), removed when the test passes.
pub struct Scratch(pub std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh, empty scratch directory named after the test.
pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("tally-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

/// The environment every test app starts with; a test's own pairs come after and win.
fn base_env() -> Vec<(String, String)> {
    [
        ("TALLY_HTTP__LISTEN", "127.0.0.1:0"),
        ("TALLY_HTTP__WORKERS", "1"),
        ("TALLY_TWILIO__AUTH_TOKENS", TOKEN),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Start tally with the test defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Start tally with the test defaults overridden by `env` (`("TALLY_HTTP__…", "…")`).
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let mut pairs = base_env();
    // State in memory unless the test gives a data directory: the default directory is
    // relative to the working directory, which every test shares.
    if !env.iter().any(|(k, _)| *k == "TALLY_STORAGE__DIR") {
        pairs.push(("TALLY_STORAGE__MEMORY_ONLY".into(), "true".into()));
    }
    pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load(None, pairs).expect("test settings load");
    let token = settings
        .twilio
        .auth_tokens
        .expose()
        .first()
        .map(|t| t.to_string())
        .unwrap_or_else(|| TOKEN.to_owned());
    let app = Application::build(&settings).expect("the app builds");
    let port = app.port();
    let admin_port = app.admin_port();
    let recovery = app.recovery();
    let (tx, rx) = oneshot::channel::<()>();
    let server = actix_web::rt::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    // With a data directory the journal is replayed in the background: tests start once the
    // query API answers.
    recovery.wait().await.expect("start-up recovery succeeds");
    let mut app = attach(port, &token);
    app.admin_port = admin_port;
    app.shutdown = Some(tx);
    app.server = Some(server);
    app
}

/// A client for a tally started elsewhere (the real binary, say) listening on `port`: the
/// `post_*`, `get` and `metrics` helpers work as with [`spawn_app`]; stopping it is the
/// caller's business.
pub fn attach(port: u16, token: &str) -> TestApp {
    TestApp {
        port,
        admin_port: None,
        address: format!("http://127.0.0.1:{port}"),
        token: token.to_owned(),
        client: Client::builder().timeout(Duration::from_secs(10)).finish(),
        shutdown: None,
        server: None,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Resolve the shutdown future and wait for `run_until_stopped` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = self.server.take().expect("the server runs until stopped");
        server.await.expect("the server task does not panic")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.address, path_and_query)
    }

    async fn read(mut resp: awc::ClientResponse) -> Resp {
        let body = resp
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .expect("the response body is readable");
        Resp {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: body.to_vec(),
        }
    }

    /// `GET path` (with its query) from loopback, without credentials.
    pub async fn get(&self, path_and_query: &str) -> Resp {
        let resp = self
            .client
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("GET is answered");
        Self::read(resp).await
    }

    /// `GET path` with HTTP Basic credentials.
    pub async fn get_as(&self, path_and_query: &str, user: &str, password: &str) -> Resp {
        let resp = self
            .client
            .get(self.url(path_and_query))
            .basic_auth(user, password)
            .send()
            .await
            .expect("GET is answered");
        Self::read(resp).await
    }

    /// `POST` a body exactly as given: URL, content type, signature header and extra headers.
    pub async fn post_raw(
        &self,
        url: &str,
        content_type: Option<&str>,
        signature: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self.client.post(url);
        if let Some(ct) = content_type {
            req = req.insert_header(("content-type", ct));
        }
        if let Some(sig) = signature {
            req = req.insert_header(("x-twilio-signature", sig));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let resp = req.send_body(body).await.expect("POST is answered");
        Self::read(resp).await
    }

    /// The URL Twilio signs for an Event Streams body: our events URL plus `bodySHA256`.
    pub fn events_url(&self, body: &[u8]) -> String {
        url_with_body_sha256(&self.url("/twilio/events"), body)
    }

    /// Post a raw Event Streams body, signed by `token` over the URL with `bodySHA256`.
    pub async fn post_events_body_signed_by(&self, token: &str, body: Vec<u8>) -> Resp {
        let url = self.events_url(&body);
        let signature = sign(token, &url, &[]);
        self.post_raw(&url, Some("application/json"), Some(&signature), &[], body)
            .await
    }

    /// Post a raw Event Streams body signed with the app's token.
    pub async fn post_events_body(&self, body: Vec<u8>) -> Resp {
        self.post_events_body_signed_by(&self.token.clone(), body)
            .await
    }

    /// Post a batch of CloudEvents as Event Streams does: a JSON array, signed.
    pub async fn post_batch(&self, events: &[Value]) -> Resp {
        self.post_events_body(serde_json::to_vec(events).expect("serialisable"))
            .await
    }

    /// Post a batch and insist it was accepted; returns the summary.
    pub async fn apply_batch(&self, events: &[Value]) -> Value {
        let resp = self.post_batch(events).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "batch refused: {}",
            resp.text()
        );
        resp.json()
    }

    /// The URL of a classic status callback, with the StatusCallback query the sender chose.
    pub fn status_url(&self, query: &[(&str, &str)]) -> String {
        let base = self.url("/twilio/status");
        if query.is_empty() {
            return base;
        }
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            ser.append_pair(k, v);
        }
        format!("{base}?{}", ser.finish())
    }

    /// Post a classic form status callback signed over URL + sorted parameters.
    pub async fn post_form(&self, query: &[(&str, &str)], params: &[(&str, &str)]) -> Resp {
        let url = self.status_url(query);
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signature = sign(&self.token, &url, &owned);
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            ser.append_pair(k, v);
        }
        self.post_raw(
            &url,
            Some("application/x-www-form-urlencoded"),
            Some(&signature),
            &[],
            ser.finish().into_bytes(),
        )
        .await
    }

    /// `GET /v1/{family}/Operations/{id}`.
    pub async fn operation(&self, family: &str, id: &str) -> Resp {
        self.get(&format!("/v1/{family}/Operations/{id}")).await
    }

    /// The operation's JSON, which must exist.
    pub async fn operation_json(&self, family: &str, id: &str) -> Value {
        let resp = self.operation(family, id).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        resp.json()
    }

    /// `GET /v1/{family}/{id}`, which must exist.
    pub async fn resource_json(&self, family: &str, id: &str) -> Value {
        let resp = self.get(&format!("/v1/{family}/{id}")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        resp.json()
    }

    /// Scrape `/metrics`.
    pub async fn metrics(&self) -> Scrape {
        let resp = self.get("/metrics").await;
        assert_eq!(resp.status, StatusCode::OK);
        Scrape::parse(&resp.text())
    }
}

/// Classic callback parameters as Twilio sends them for an outbound SMS.
pub fn sms_params<'a>(sid: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("From", SENDER),
        ("To", PHONE),
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("MessageStatus", status),
        ("SmsStatus", status),
    ]
}

static NEXT_EVENT: AtomicU64 = AtomicU64::new(1);

/// A CloudEvent as Event Streams posts it, built up field by field.
#[derive(Debug, Clone)]
pub struct CloudEvent(Value);

impl CloudEvent {
    fn envelope(ty: &str, source: &str, data: Value) -> CloudEvent {
        let n = NEXT_EVENT.fetch_add(1, Ordering::Relaxed);
        CloudEvent(json!({
            "specversion": "1.0",
            "type": ty,
            "source": source,
            "id": format!("EZ{n:032x}"),
            "dataschema": format!("https://events-schemas.twilio.com/{ty}/1"),
            "datacontenttype": "application/json",
            "time": EVENT_TIME,
            "data": data,
        }))
    }

    /// `com.twilio.comms-api.message.<status>` for message `msg` of `op`, attempt `sid` over SMS.
    pub fn message(status: &str, op: &str, msg: &str, sid: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.message.{status}"),
            "/v1/Messages",
            json!({
                "operation_id": op,
                "message_id": msg,
                "downstream_id": sid,
                "from": {"address": SENDER, "channel": "SMS"},
                "to": {"address": PHONE, "channel": "phone"},
                "tags": {},
            }),
        )
    }

    /// `com.twilio.comms-api.email.<status>` for email `email` of `op`, sent to `address`.
    pub fn email(status: &str, op: &str, email: &str, address: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.email.{status}"),
            "/v1/Emails",
            json!({
                "operation_id": op,
                "email_id": email,
                "from": {"address": "noreply@example.com", "name": "Example"},
                "to": {"address": address, "name": "Recipient"},
            }),
        )
    }

    /// `com.twilio.comms-api.push-notification.<status>` for `notification` of `op` via FCM.
    pub fn push(status: &str, op: &str, notification: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.push-notification.{status}"),
            "/v1/PushNotifications",
            json!({
                "operation_id": op,
                "push_notification_id": notification,
                "to": {"token": "device-token-1", "provider": "FCM"},
            }),
        )
    }

    /// `com.twilio.comms-api.operation.<phase>`.
    pub fn operation(phase: &str, op: &str) -> CloudEvent {
        CloudEvent::envelope(
            &format!("com.twilio.comms-api.operation.{phase}"),
            "/v1/Operations",
            json!({"operation_id": op}),
        )
    }

    fn data(&mut self) -> &mut Map<String, Value> {
        self.0["data"].as_object_mut().expect("data is an object")
    }

    /// The sender address and channel (`SMS`, `RCS`, `WHATSAPP`).
    pub fn from(mut self, address: &str, channel: &str) -> CloudEvent {
        self.data().insert(
            "from".into(),
            json!({"address": address, "channel": channel}),
        );
        self
    }

    /// The recipient phone address.
    pub fn to(mut self, address: &str) -> CloudEvent {
        self.data()
            .insert("to".into(), json!({"address": address, "channel": "phone"}));
        self
    }

    pub fn attempt(mut self, n: u32) -> CloudEvent {
        self.data().insert("attempt".into(), json!(n.to_string()));
        self
    }

    pub fn error_code(mut self, code: u32) -> CloudEvent {
        self.data().insert("error_code".into(), json!(code));
        self
    }

    pub fn tag(mut self, key: &str, value: &str) -> CloudEvent {
        let data = self.data();
        let tags = data.entry("tags").or_insert_with(|| json!({}));
        tags[key] = json!(value);
        self
    }

    pub fn time(mut self, time: &str) -> CloudEvent {
        self.0["time"] = json!(time);
        self
    }

    pub fn json(self) -> Value {
        self.0
    }
}

/// A parsed `/metrics` scrape: every sample with its labels.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Scrape {
    /// Parse the Prometheus text exposition format (what tally emits of it).
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line without a value: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("sample value is not a number: {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unterminated labels: {line}"));
                    (name.to_owned(), parse_labels(rest))
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Scrape { samples }
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The value of the one sample of `name` with exactly these labels, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    pub fn label_values(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.samples.iter().flat_map(|s| {
            s.labels
                .iter()
                .map(move |(k, v)| (s.name.as_str(), k.as_str(), v.as_str()))
        })
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label is key=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.expect("label value is terminated");
        out.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}
