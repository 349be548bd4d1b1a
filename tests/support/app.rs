//! tally in this process, on `127.0.0.1:0`, stopped by a future the test holds, and a client
//! that talks to it as Twilio, Prometheus and operators do.

use super::scrape::Scrape;
use super::signing;
use super::TOKEN;
use actix_web::http::StatusCode;
use awc::Client;
use serde_json::{json, Value};
use std::time::Duration;
use tally::config::Settings;
use tally::startup::Application;
use tokio::sync::oneshot;

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

    /// The URL of `path_and_query` on this app; an absolute URL (a page's `next`, say) as it is.
    pub fn url(&self, path_and_query: &str) -> String {
        if path_and_query.starts_with("http://") || path_and_query.starts_with("https://") {
            return path_and_query.to_owned();
        }
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
        // A pooled connection that the server closed while it sat idle fails at once: a GET is
        // idempotent, so it is sent once more on a new connection, as HTTP clients do.
        let mut retried = false;
        loop {
            match self.client.get(self.url(path_and_query)).send().await {
                Ok(resp) => return Self::read(resp).await,
                Err(awc::error::SendRequestError::Connect(_)) if !retried => retried = true,
                Err(e) => panic!("GET {path_and_query} is answered: {e:?}"),
            }
        }
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
        signing::events(&self.token, &self.url("/twilio/events"), body).0
    }

    /// Post a raw Event Streams body, signed by `token` over the URL with `bodySHA256`.
    pub async fn post_events_body_signed_by(&self, token: &str, body: Vec<u8>) -> Resp {
        let (url, signature) = signing::events(token, &self.url("/twilio/events"), &body);
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
        let (body, signature) = signing::form(&self.token, &url, params);
        self.post_raw(
            &url,
            Some("application/x-www-form-urlencoded"),
            Some(&signature),
            &[],
            body,
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
