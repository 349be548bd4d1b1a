//! The reconciler: reads Twilio's Communications REST API and folds what it reads into the
//! same lattice as callbacks, so that what Twilio never pushes (Emails, PushNotifications,
//! cancellations, scheduled messages, classic callbacks that failed) still comes out exact
//! (docs/reconcile.md).
//!
//! `plan.rs` decides, without IO, what to ask next; this file is the edge: it makes the HTTP
//! requests within the budget, turns answers into read events, journals and applies them like
//! callbacks (route label `reconcile`), and counts everything.

pub mod plan;

use crate::aggregator::Aggregator;
use crate::comms_api::{self, NextPage, OperationBody, OperationPage};
use crate::event::{
    AttemptStatus, Event, EventBody, Kind, OperationRead, ResourceRead, SkipReason, MAX_ID_BYTES,
};
use crate::ingest::{MAX_TAGS, MAX_TAG_KEY_BYTES, MAX_TAG_VALUE_BYTES};
use crate::intake::{admit, now_ms, Summary};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::recovery::Recovery;
use crate::rollup::{Bucket, OperationStatus};
use plan::{Call, OperationCheck, PlanConfig, Planner};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to read Twilio's API (from `[reconcile]`).
#[derive(Clone)]
pub struct ReconcileConfig {
    /// `https://comms.twilio.com`, without a trailing slash.
    pub api_base: String,
    pub username: String,
    pub password: SecretString,
    pub page_size: u32,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub plan: PlanConfig,
}

impl std::fmt::Debug for ReconcileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconcileConfig")
            .field("api_base", &self.api_base)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("plan", &self.plan)
            .finish()
    }
}

/// What the reconciler works on.
pub struct Reconciler {
    pub config: ReconcileConfig,
    pub aggregator: Arc<Aggregator>,
    pub journal: Option<Arc<Journal>>,
    pub recovery: Arc<Recovery>,
    pub metrics: Arc<Metrics>,
}

/// What an answer was, for the planner.
enum Answer {
    Ok(Vec<u8>),
    RateLimited(Option<u64>),
    NotFound,
    /// A 5xx, another 4xx, a timeout or a transport error, with its metrics code.
    Failed(String),
    /// A kept-alive connection the server had closed: nothing reached it.
    Stale,
}

fn rfc3339_s(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn parse_time(s: Option<&str>) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s?.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES
}

/// The read event of an operation body; `None` for a body without a usable id.
pub fn operation_event(kind: Kind, body: &OperationBody, now: u64) -> Option<Event> {
    if !valid_id(&body.id) {
        return None;
    }
    let s = &body.stats;
    let n = |v: Option<u64>| v.unwrap_or(0);
    Some(Event {
        time_ms: parse_time(body.created_at.as_deref()).unwrap_or(now),
        body: EventBody::OperationRead(OperationRead {
            operation_id: body.id.clone(),
            kind,
            status: body.status.as_deref().and_then(OperationStatus::parse),
            total: n(s.total),
            recipients: n(s.recipients),
            attempts: n(s.attempts),
            unaddressable: n(s.unaddressable),
        }),
    })
}

/// The read event of one resource of `operation_id`, or why it was skipped.
pub fn resource_event(
    kind: Kind,
    operation_id: &str,
    r: comms_api::ResourceSummary,
    created: Option<u64>,
    now: u64,
) -> Result<Event, SkipReason> {
    if r.id.is_empty() {
        return Err(SkipReason::MissingId);
    }
    if r.id.len() > MAX_ID_BYTES || r.to.as_ref().is_some_and(|t| t.len() > MAX_ID_BYTES) {
        return Err(SkipReason::IdTooLong);
    }
    let status = AttemptStatus::parse(&r.status).ok_or(SkipReason::UnknownStatus)?;
    let tags = r
        .tags
        .into_iter()
        .filter(|(k, v)| {
            !k.is_empty() && k.len() <= MAX_TAG_KEY_BYTES && v.len() <= MAX_TAG_VALUE_BYTES
        })
        .take(MAX_TAGS)
        .collect();
    Ok(Event {
        time_ms: created.unwrap_or(now),
        body: EventBody::ResourceRead(ResourceRead {
            kind,
            operation_id: operation_id.to_owned(),
            resource_id: r.id,
            status,
            to: r.to,
            tags,
        }),
    })
}

impl Reconciler {
    /// Run until the task is dropped: wait for start-up recovery, then read Twilio's API
    /// within the budget for ever.
    pub async fn run(self) {
        if self.recovery.wait().await.is_err() {
            return;
        }
        let client = awc::Client::builder()
            .timeout(self.config.request_timeout)
            .connector(awc::Connector::new().timeout(self.config.request_timeout))
            .finish();
        let mut planner = Planner::new(self.config.plan.clone(), now_ms());
        self.metrics
            .reconcile
            .budget
            .set(self.config.plan.requests_per_second);
        tracing::info!(
            api_base = %self.config.api_base,
            requests_per_second = self.config.plan.requests_per_second,
            "reconciling with Twilio's API"
        );
        let mut next_scan = 0;
        let mut next_report = now_ms() + 60_000;
        let mut next_gauges = 0;
        loop {
            let now = now_ms();
            if now >= next_scan {
                self.scan(&mut planner, now);
                next_scan = now + self.config.plan.interval_ms.min(10_000);
            }
            if now >= next_report {
                self.report_lasting_disagreements(&planner, now);
                next_report = now + 60_000;
            }
            match planner.next_call(now) {
                Ok(call) => self.make(&client, &mut planner, call).await,
                Err(at) => {
                    let wait = at.saturating_sub(now).clamp(1, 1000);
                    actix_web::rt::time::sleep(Duration::from_millis(wait)).await;
                }
            }
            // The gauges walk every live operation: once a second, not after every request.
            let now = now_ms();
            if now >= next_gauges {
                self.set_gauges(&planner, now);
                next_gauges = now + 1000;
            }
        }
    }

    fn set_gauges(&self, planner: &Planner, now: u64) {
        let metrics = &self.metrics.reconcile;
        let d = planner.disagreements();
        metrics.live_operations.set(planner.live_count() as i64);
        metrics.disagreeing_operations.set(d.operations as i64);
        metrics.disagreeing_resources.set(d.resources as i64);
        metrics.oldest_disagreement_seconds.set(
            d.oldest_since_ms
                .map_or(0.0, |s| now.saturating_sub(s) as f64 / 1000.0),
        );
        metrics
            .backoff_seconds
            .set(planner.paused_until_ms().saturating_sub(now) as f64 / 1000.0);
    }

    /// Once a minute, name the operations on which tally and Twilio have disagreed for ten
    /// checks' worth of time (at least ten minutes): the metrics count them, this says which.
    fn report_lasting_disagreements(&self, planner: &Planner, now: u64) {
        let lasting = (10 * self.config.plan.interval_ms).max(600_000);
        let oldest = planner.oldest_disagreements(now.saturating_sub(lasting), 5);
        for (id, since, diff) in oldest {
            tracing::warn!(
                operation = %id,
                for_seconds = now.saturating_sub(since) / 1000,
                resources = diff.resources,
                status_differs = diff.status,
                "reconcile: tally and Twilio still disagree on this operation"
            );
        }
    }

    /// Track every operation tally holds; forget those it no longer does.
    fn scan(&self, planner: &mut Planner, now: u64) {
        let ops = self.aggregator.operation_ids();
        let held: std::collections::HashSet<&str> =
            ops.iter().map(|(id, _, _)| id.as_str()).collect();
        planner.prune(|id| held.contains(id));
        for (id, kind, created) in &ops {
            planner.track(id, *kind, *created, now);
        }
    }

    fn url(&self, call: &Call) -> Result<String, String> {
        let base = &self.config.api_base;
        let page_url = |page: &Option<NextPage>| -> Option<Result<String, String>> {
            match page {
                Some(NextPage::Url(u)) if u.starts_with('/') => Some(Ok(format!("{base}{u}"))),
                Some(NextPage::Url(u)) if u.starts_with(&format!("{base}/")) => Some(Ok(u.clone())),
                // Credentials go to api_base only, never to a host a body names.
                Some(NextPage::Url(_)) => Some(Err("a next page outside api_base".into())),
                _ => None,
            }
        };
        let mut q = form_urlencoded::Serializer::new(String::new());
        let path = match call {
            Call::ListOperations {
                kind,
                start_ms,
                end_ms,
                page,
            } => {
                if let Some(u) = page_url(page) {
                    return u;
                }
                q.append_pair("startDate", &rfc3339_s(*start_ms));
                q.append_pair("endDate", &rfc3339_s(*end_ms));
                if let Some(NextPage::Token(t)) = page {
                    q.append_pair("pageToken", t);
                }
                format!("/v1/{}/Operations", comms_api::family(*kind))
            }
            Call::FetchOperation { kind, id } => {
                let id =
                    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
                return Ok(format!(
                    "{base}/v1/{}/Operations/{id}",
                    comms_api::family(*kind)
                ));
            }
            Call::ListResources {
                kind,
                operation_id,
                status,
                page,
            } => {
                if let Some(u) = page_url(page) {
                    return u;
                }
                q.append_pair("operationId", operation_id);
                q.append_pair("status", status.api_str());
                if let Some(NextPage::Token(t)) = page {
                    q.append_pair("pageToken", t);
                }
                format!("/v1/{}", comms_api::family(*kind))
            }
        };
        q.append_pair("pageSize", &self.config.page_size.to_string());
        Ok(format!("{base}{path}?{}", q.finish()))
    }

    async fn get(&self, client: &awc::Client, url: &str) -> Answer {
        let sent = client
            .get(url)
            .basic_auth(&self.config.username, self.config.password.expose_secret())
            .insert_header(("Accept", "application/json"))
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(awc::error::SendRequestError::Timeout) => return Answer::Failed("timeout".into()),
            Err(awc::error::SendRequestError::Connect(awc::error::ConnectError::Disconnected)) => {
                return Answer::Stale
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconcile: no answer");
                return Answer::Failed("error".into());
            }
        };
        let code = resp.status().as_u16();
        match code {
            200 => match resp.body().limit(self.config.max_response_bytes).await {
                Ok(b) => Answer::Ok(b.to_vec()),
                Err(e) => {
                    tracing::debug!(error = %e, "reconcile: answer not read");
                    Answer::Failed("error".into())
                }
            },
            429 => Answer::RateLimited(
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| s * 1000),
            ),
            404 => Answer::NotFound,
            other => Answer::Failed(other.to_string()),
        }
    }

    /// Make one request and act on its answer.
    async fn make(&self, client: &awc::Client, planner: &mut Planner, call: Call) {
        let endpoint = call.endpoint();
        let url = self.url(&call);
        let mut answer = match &url {
            Ok(url) => self.get(client, url).await,
            Err(why) => {
                tracing::warn!(endpoint, why, "reconcile: a page not followed");
                Answer::Failed("refused".into())
            }
        };
        if let (Answer::Stale, Ok(url)) = (&answer, &url) {
            // Once more on a new connection, within the budget like any request.
            self.count(endpoint, "stale");
            answer = match planner.take_token(now_ms()) {
                Ok(()) => self.get(client, url).await,
                Err(_) => Answer::Failed("error".into()),
            };
        }
        let code = match &answer {
            Answer::Ok(_) => "200",
            Answer::RateLimited(_) => "429",
            Answer::NotFound => "404",
            Answer::Failed(c) => c.as_str(),
            Answer::Stale => "stale",
        };
        self.count(endpoint, code);
        let now = now_ms();
        match answer {
            Answer::Ok(body) => {
                planner.succeeded();
                if let Err(why) = self.absorb(planner, &call, &body, now).await {
                    tracing::warn!(endpoint, error = %why, "reconcile: an answer not understood");
                    planner.failed(call, now);
                }
            }
            Answer::RateLimited(after) => planner.rate_limited(call, after, now),
            Answer::NotFound => match &call {
                Call::FetchOperation { id, .. }
                | Call::ListResources {
                    operation_id: id, ..
                } => planner.not_found(id),
                Call::ListOperations { kind, .. } => planner.operations_listed(*kind, None, now),
            },
            Answer::Stale => {
                planner.failed(call, now);
            }
            Answer::Failed(code) => {
                let wait = planner.failed(call, now);
                tracing::warn!(
                    endpoint,
                    code,
                    backoff_ms = wait,
                    "reconcile: request failed; backing off"
                );
            }
        }
    }

    fn count(&self, endpoint: &str, code: &str) {
        self.metrics
            .reconcile
            .requests
            .with_label_values(&[endpoint, code])
            .inc();
    }

    /// Journal and apply read events like callbacks (route `reconcile`).
    async fn fold(&self, events: Vec<Result<Event, SkipReason>>) -> Result<Summary, String> {
        admit(
            "reconcile",
            events,
            self.journal.as_deref(),
            &self.recovery,
            &self.aggregator,
            &self.metrics,
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Fold an answer and tell the planner what it showed.
    async fn absorb(
        &self,
        planner: &mut Planner,
        call: &Call,
        body: &[u8],
        now: u64,
    ) -> Result<(), String> {
        match call {
            Call::ListOperations { kind, .. } => {
                let page: OperationPage =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                for op in &page.operations {
                    self.operation_answer(planner, *kind, op, now).await?;
                }
                planner.operations_listed(*kind, page.pagination.next_page(), now);
            }
            Call::FetchOperation { kind, .. } => {
                let op: OperationBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                self.operation_answer(planner, *kind, &op, now).await?;
            }
            Call::ListResources {
                kind,
                operation_id,
                status,
                ..
            } => {
                let page =
                    comms_api::parse_resource_page(*kind, body).map_err(|e| e.to_string())?;
                let created = self
                    .aggregator
                    .operation(operation_id)
                    .map(|v| v.created_ms);
                let events = page
                    .items
                    .into_iter()
                    .map(|r| resource_event(*kind, operation_id, r, created, now))
                    .collect();
                let summary = self.fold(events).await?;
                self.listed(
                    planner,
                    operation_id,
                    *status,
                    page.next,
                    summary.applied > 0,
                    now,
                );
            }
        }
        Ok(())
    }

    async fn operation_answer(
        &self,
        planner: &mut Planner,
        kind: Kind,
        op: &OperationBody,
        now: u64,
    ) -> Result<(), String> {
        let Some(event) = operation_event(kind, op, now) else {
            return self
                .fold(vec![Err(SkipReason::MissingId)])
                .await
                .map(|_| ());
        };
        let created = event.time_ms;
        let summary = self.fold(vec![Ok(event)]).await?;
        planner.track(&op.id, kind, created, now);
        if let Some(view) = self.aggregator.operation(&op.id) {
            let check = OperationCheck {
                twilio: op.stats,
                twilio_status: op.status.as_deref().and_then(OperationStatus::parse),
                tally: &view.stats,
                tally_status: view.status,
                changed: summary.applied > 0,
            };
            planner.operation_read(&op.id, check, now);
        }
        Ok(())
    }

    fn listed(
        &self,
        planner: &mut Planner,
        id: &str,
        status: Bucket,
        next: Option<NextPage>,
        changed: bool,
        now: u64,
    ) {
        if let Some(view) = self.aggregator.operation(id) {
            planner.resources_listed(id, status, next, changed, &view.stats, view.status, now);
        }
    }
}
