//! Health, readiness and metrics endpoints, and the query API's wait for start-up recovery.

use crate::aggregator::Aggregator;
use crate::cluster::Cluster;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::publisher::KafkaStatus;
use crate::recovery::Recovery;
use crate::routes::error::json_error;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use std::sync::RwLock;

/// What decides readiness, and details shown beside it. Later subsystems (the journal, the
/// Kafka publisher) register their own conditions here.
#[derive(Debug, Default)]
pub struct Health {
    problems: RwLock<Vec<(&'static str, String)>>,
}

impl Health {
    /// Set (`Some`) or clear (`None`) the problem reported by `component`.
    pub fn set(&self, component: &'static str, problem: Option<String>) {
        let mut p = self.problems.write().unwrap_or_else(|e| e.into_inner());
        p.retain(|(c, _)| *c != component);
        if let Some(msg) = problem {
            p.push((component, msg));
        }
    }

    fn snapshot(&self) -> Vec<(&'static str, String)> {
        self.problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: ready to accept callbacks (200), or not (503) with the reasons. Start-up
/// recovery does not make it fail: callbacks are taken (journalled, answered, applied after the
/// replay) from the first second, so a load balancer keeps sending them. The body says whether
/// the query API answers yet (`queries`) and how far recovery is.
///
/// In cluster mode it is per role (docs/cluster.md, "Operating"): an ingest process is ready
/// once it knows the events topic; an aggregate process once its folder is polling the group
/// and none of its partitions is restoring; `all` needs both.
pub async fn readyz(
    health: web::Data<Health>,
    agg: web::Data<Aggregator>,
    journal: Option<web::Data<Journal>>,
    recovery: web::Data<Recovery>,
    cluster: Option<web::Data<Cluster>>,
) -> HttpResponse {
    let mut problems = health.snapshot();
    if let Some(err) = journal.as_ref().and_then(|j| j.last_error()) {
        problems.push(("journal", err));
    }
    let (mut callbacks, mut queries) = (problems.is_empty(), recovery.is_done());
    let mut ready = callbacks;
    if let Some(c) = &cluster {
        let role = c.ownership.role();
        let topic_known = c.ownership.partition_count() > 0;
        if !topic_known {
            problems.push(("cluster", "the events topic is not known yet".into()));
        }
        callbacks = role.ingests() && topic_known && problems.is_empty();
        let (_, restoring) = c.ownership.counts();
        let polling = c.ownership.folder_is_current(crate::intake::now_ms());
        if role.aggregates() && !polling {
            problems.push((
                "cluster",
                "the folder has not polled the consumer group lately".into(),
            ));
        }
        if restoring > 0 {
            problems.push(("cluster", format!("{restoring} partitions restoring")));
        }
        queries = !role.aggregates() || (polling && restoring == 0 && topic_known);
        ready = (!role.ingests() || callbacks) && (!role.aggregates() || queries);
    }
    let body = serde_json::json!({
        "ready": ready,
        "callbacks": callbacks,
        "queries": queries,
        "recovery": recovery.details(),
        "problems": problems
            .iter()
            .map(|(c, m)| serde_json::json!({"component": c, "message": m}))
            .collect::<Vec<_>>(),
        "operations": agg.operation_count(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /readyz/queries`: the query API answers (200), or start-up recovery is still replaying
/// the journal (503 with `Retry-After` and its progress). For whatever reads `/v1`; the
/// callback path's probe is `/readyz`.
pub async fn readyz_queries(recovery: web::Data<Recovery>) -> HttpResponse {
    let body = serde_json::json!({
        "ready": recovery.is_done(),
        "recovery": recovery.details(),
    });
    if recovery.is_done() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, recovery.retry_after_secs()))
            .json(body)
    }
}

/// Middleware in front of the query API: 503 with `Retry-After` until start-up recovery is
/// done, so no reader ever sees a half-replayed state.
pub async fn after_recovery(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(recovery) = req.app_data::<web::Data<Recovery>>() {
        if !recovery.is_done() {
            let mut resp = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "start-up recovery is replaying the journal ({:.1}% done): the query API answers once it is over",
                    recovery.progress.percent()
                ),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(recovery.retry_after_secs()),
            );
            return Ok(req.into_response(resp));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `GET /healthz/details`: readiness with its reasons, plus details that never decide it (the
/// Kafka publisher: broker connection, topics, operations waiting to be published). Always 200.
pub async fn details(
    health: web::Data<Health>,
    kafka: web::Data<KafkaStatus>,
    agg: web::Data<Aggregator>,
    recovery: web::Data<Recovery>,
    metrics: web::Data<Metrics>,
    cluster: Option<web::Data<Cluster>>,
) -> HttpResponse {
    let problems = health.snapshot();
    let r = &metrics.reconcile;
    HttpResponse::Ok().json(serde_json::json!({
        "cluster": cluster.map_or_else(
            || serde_json::json!({"role": "single"}),
            |c| c.ownership.details()
        ),
        "ready": problems.is_empty(),
        "recovery": recovery.details(),
        "problems": problems
            .iter()
            .map(|(c, m)| serde_json::json!({"component": c, "message": m}))
            .collect::<Vec<_>>(),
        "operations": agg.operation_count(),
        "kafka": kafka.details(),
        "reconcile": {
            "enabled": r.budget.get() > 0.0,
            "requestsPerSecond": r.budget.get(),
            "liveOperations": r.live_operations.get(),
            "disagreeingOperations": r.disagreeing_operations.get(),
            "disagreeingResources": r.disagreeing_resources.get(),
            "oldestDisagreementSeconds": r.oldest_disagreement_seconds.get(),
            "backoffSeconds": r.backoff_seconds.get(),
        },
    }))
}

/// `GET /metrics`: Prometheus text exposition format.
pub async fn metrics(
    metrics: web::Data<Metrics>,
    agg: web::Data<Aggregator>,
    journal: Option<web::Data<Journal>>,
    recovery: web::Data<Recovery>,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render(&agg, journal.as_ref().map(|j| j.get_ref()), &recovery))
}
