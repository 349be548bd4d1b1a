//! `POST /twilio/events` (Event Streams) and `POST /twilio/status` (classic status callbacks).
//!
//! Each handler only sequences named steps: check the content type, read the body within the
//! limit, verify the signature over the URL Twilio called, decode, apply, count, respond.
//! Nothing of a request is applied before its signature holds.

use super::error::CallbackError;
use crate::aggregator::Aggregator;
use crate::cluster::Cluster;
use crate::ingest;
use crate::intake;
pub use crate::intake::{now_ms, Summary};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::recovery::Recovery;
use crate::signature::{SignatureError, Verifier};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

/// How the URL that Twilio signed is rebuilt from a request.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    /// The configured public base URL, without a trailing slash.
    pub public_url: Option<String>,
    pub trust_forwarded_headers: bool,
}

impl UrlPolicy {
    /// The full URL Twilio called: the public base (or scheme and host from the request), then
    /// the path and query exactly as received.
    pub fn signed_url(&self, req: &HttpRequest) -> String {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        format!("{}{}", self.base_url(req), path_and_query)
    }

    /// The base the request was made to, without a trailing slash: the public base when one is
    /// configured, else the scheme and host of the request (from `X-Forwarded-Proto` and
    /// `-Host` only when they are trusted). The query API's absolute page URLs start with it.
    pub fn base_url(&self, req: &HttpRequest) -> String {
        if let Some(base) = &self.public_url {
            return base.trim_end_matches('/').to_owned();
        }
        let header_str = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let forwarded = |name: &str| {
            if self.trust_forwarded_headers {
                header_str(name)
            } else {
                None
            }
        };
        let scheme = forwarded("x-forwarded-proto").unwrap_or_else(|| "http".to_owned());
        let host = forwarded("x-forwarded-host")
            .or_else(|| header_str("host"))
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        format!("{scheme}://{host}")
    }
}

/// How callback requests are checked: signature keys, signed-URL policy, body limits.
#[derive(Debug)]
pub struct Intake {
    pub verifier: Verifier,
    pub urls: UrlPolicy,
    pub max_body_bytes: usize,
    /// Most events one Event Streams request may carry (413 beyond).
    pub max_events_per_batch: usize,
    /// Longest time to receive a body once the head is in (408 beyond).
    pub body_read_timeout: Duration,
    /// Paces the log line of a refused signature, so a flood of forgeries cannot flood the log.
    pub signature_failure_log: LogThrottle,
}

/// At most one log line per interval for something that may come in floods (forged
/// callbacks). The occurrences in between are only counted, and the next line says how many;
/// the metrics count every one.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// A throttle that lets one line through per `interval` (zero: every line).
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            state: Mutex::default(),
        }
    }

    /// Whether the occurrence at `now` gets a log line: `Some(n)` when it does, `n` being how
    /// many occurrences went unlogged since the previous line; `None` when it is only counted.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last_line {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.unlogged += 1;
                None
            }
            _ => {
                state.last_line = Some(now);
                Some(std::mem::take(&mut state.unlogged))
            }
        }
    }
}

fn content_type_is(req: &HttpRequest, accept: fn(&str) -> bool) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| accept(&m))
}

fn is_json(m: &str) -> bool {
    m == "application/json"
        || m == "text/json"
        || (m.starts_with("application/") && m.ends_with("+json"))
}

fn is_form(m: &str) -> bool {
    m == "application/x-www-form-urlencoded"
}

/// Read the whole body, refusing it as soon as it passes `limit` (and at once when the declared
/// length already does).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, CallbackError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(CallbackError::TooLarge { limit });
    }
    // A body that arrives as one chunk (the usual case) is kept as it came, without a copy.
    let mut first: Option<web::Bytes> = None;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| CallbackError::Unreadable(e.to_string()))?;
        let so_far = first.as_ref().map_or(body.len(), web::Bytes::len);
        if so_far + chunk.len() > limit {
            return Err(CallbackError::TooLarge { limit });
        }
        if first.is_none() && body.is_empty() {
            first = Some(chunk);
            continue;
        }
        // A second chunk: from here on the body is gathered in one buffer.
        if let Some(earlier) = first.take() {
            let room = declared.unwrap_or(0).min(limit as u64) as usize;
            body.reserve(room.max(earlier.len() + chunk.len()));
            body.extend_from_slice(&earlier);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| body.freeze()))
}

/// Read the body within `intake`'s size limit and time limit.
async fn read_body_in_time(
    req: &HttpRequest,
    payload: web::Payload,
    intake: &Intake,
) -> Result<web::Bytes, CallbackError> {
    let timeout = intake.body_read_timeout;
    let mut read = std::pin::pin!(read_body(req, payload, intake.max_body_bytes));
    // A body that came with the head (the usual case) is read without arming a timer.
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    if let Poll::Ready(body) = first {
        return body;
    }
    actix_web::rt::time::timeout(timeout, read)
        .await
        .map_err(|_| CallbackError::BodyTimeout {
            seconds: timeout.as_secs_f64(),
        })?
}

/// The one `X-Twilio-Signature` header. Twilio sends exactly one; two are refused as malformed
/// rather than guessing which counts.
fn signature_header(req: &HttpRequest) -> Result<Option<&[u8]>, CallbackError> {
    let mut values = req.headers().get_all("x-twilio-signature");
    let first = values.next().map(|v| v.as_bytes());
    if values.next().is_some() {
        return Err(CallbackError::Signature(SignatureError::Malformed));
    }
    Ok(first)
}

/// Count the request and turn the result into a response.
fn finish(
    route: &str,
    started: Instant,
    intake: &Intake,
    metrics: &Metrics,
    result: Result<Summary, CallbackError>,
) -> HttpResponse {
    let resp = match &result {
        Ok(summary) => HttpResponse::Ok().json(summary),
        Err(e) => {
            if let CallbackError::Signature(s) = e {
                metrics
                    .signature_failures
                    .with_label_values(&[route, s.reason()])
                    .inc();
                if let Some(unlogged) = intake.signature_failure_log.admit(Instant::now()) {
                    tracing::warn!(
                        route,
                        reason = s.reason(),
                        unlogged_since_last_line = unlogged,
                        "callback signature rejected (tally_signature_failures_total counts all)"
                    );
                }
            } else {
                tracing::info!(route, error = %e, "callback refused");
            }
            actix_web::ResponseError::error_response(e)
        }
    };
    metrics
        .callbacks
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Where a callback's decoded events go: in cluster mode (ingest) to the events topic, else to
/// the journal and the state (aggregate-only processes take no callbacks).
async fn take_in(
    route: &'static str,
    decoded: Vec<Result<crate::event::Event, crate::event::SkipReason>>,
    req: &HttpRequest,
    agg: &Aggregator,
    metrics: &Metrics,
) -> Result<Summary, CallbackError> {
    if let Some(c) = req.app_data::<web::Data<Cluster>>() {
        let Some(f) = c.forwarder.as_ref() else {
            return Err(CallbackError::from(intake::AdmitError::Unavailable(
                "this process is an aggregate process (cluster.role); send callbacks to the ingest processes".into(),
            )));
        };
        return intake::forward(route, decoded, f, agg.keeps_recipient_addresses(), metrics)
            .await
            .map_err(CallbackError::from);
    }
    let journal = req.app_data::<web::Data<Journal>>().map(|j| j.get_ref());
    let Some(recovery) = req.app_data::<web::Data<Recovery>>() else {
        return Err(CallbackError::from(intake::AdmitError::Unavailable(
            "start-up is not finished".into(),
        )));
    };
    intake::admit(route, decoded, journal, recovery, agg, metrics)
        .await
        .map_err(CallbackError::from)
}

/// `POST /twilio/events`: a batch (or a single) CloudEvent from an Event Streams webhook sink.
pub async fn events(
    req: HttpRequest,
    payload: web::Payload,
    intake: web::Data<Intake>,
    agg: web::Data<Aggregator>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let started = Instant::now();
    let result = async {
        if !content_type_is(&req, is_json) {
            return Err(CallbackError::UnsupportedMediaType {
                expected: "application/json",
            });
        }
        let body = read_body_in_time(&req, payload, &intake).await?;
        let url = intake.urls.signed_url(&req);
        intake
            .verifier
            .verify_json(&url, &body, signature_header(&req)?)
            .map_err(CallbackError::Signature)?;
        let decoded = ingest::decode_events_bounded(&body, now_ms(), intake.max_events_per_batch)?;
        take_in("events", decoded, &req, &agg, &metrics).await
    }
    .await;
    finish("events", started, &intake, &metrics, result)
}

/// `POST /twilio/status`: one classic form-encoded status callback.
pub async fn status(
    req: HttpRequest,
    payload: web::Payload,
    intake: web::Data<Intake>,
    agg: web::Data<Aggregator>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let started = Instant::now();
    let result = async {
        if !content_type_is(&req, is_form) {
            return Err(CallbackError::UnsupportedMediaType {
                expected: "application/x-www-form-urlencoded",
            });
        }
        let body = read_body_in_time(&req, payload, &intake).await?;
        let params = ingest::parse_form(&body)?;
        let url = intake.urls.signed_url(&req);
        intake
            .verifier
            .verify_form(&url, &params, signature_header(&req)?)
            .map_err(CallbackError::Signature)?;
        let query = ingest::parse_form(req.query_string().as_bytes())?;
        let decoded = ingest::decode_form(&params, &query, now_ms());
        take_in("status", vec![decoded], &req, &agg, &metrics).await
    }
    .await;
    finish("status", started, &intake, &metrics, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_one_line_per_interval_and_the_next_line_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(throttle.admit(at(0)), Some(0));
        for ms in 1..=999 {
            assert_eq!(throttle.admit(at(ms)), None);
        }
        assert_eq!(throttle.admit(at(10_000)), Some(999));
        assert_eq!(throttle.admit(at(10_001)), None);
        assert_eq!(throttle.admit(at(25_000)), Some(1));
        // A clock read out of order is never a reason to log more.
        assert_eq!(throttle.admit(at(24_000)), None);
    }

    #[test]
    fn a_zero_interval_logs_every_occurrence() {
        let throttle = LogThrottle::new(Duration::ZERO);
        let now = Instant::now();
        assert!((0..100).all(|_| throttle.admit(now) == Some(0)));
    }
}
