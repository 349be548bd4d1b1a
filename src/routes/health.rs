//! Health, readiness and metrics endpoints.

use crate::aggregator::Aggregator;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::publisher::KafkaStatus;
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

/// `GET /readyz`: ready to accept callbacks (200), or not (503) with the reasons.
pub async fn readyz(
    health: web::Data<Health>,
    agg: web::Data<Aggregator>,
    journal: Option<web::Data<Journal>>,
) -> HttpResponse {
    let mut problems = health.snapshot();
    if let Some(err) = journal.as_ref().and_then(|j| j.last_error()) {
        problems.push(("journal", err));
    }
    let body = serde_json::json!({
        "ready": problems.is_empty(),
        "problems": problems
            .iter()
            .map(|(c, m)| serde_json::json!({"component": c, "message": m}))
            .collect::<Vec<_>>(),
        "operations": agg.operation_count(),
    });
    if problems.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /healthz/details`: readiness with its reasons, plus details that never decide it (the
/// Kafka publisher: broker connection, topics, operations waiting to be published). Always 200.
pub async fn details(
    health: web::Data<Health>,
    kafka: web::Data<KafkaStatus>,
    agg: web::Data<Aggregator>,
) -> HttpResponse {
    let problems = health.snapshot();
    HttpResponse::Ok().json(serde_json::json!({
        "ready": problems.is_empty(),
        "problems": problems
            .iter()
            .map(|(c, m)| serde_json::json!({"component": c, "message": m}))
            .collect::<Vec<_>>(),
        "operations": agg.operation_count(),
        "kafka": kafka.details(),
    }))
}

/// `GET /metrics`: Prometheus text exposition format.
pub async fn metrics(
    metrics: web::Data<Metrics>,
    agg: web::Data<Aggregator>,
    journal: Option<web::Data<Journal>>,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render(&agg, journal.as_ref().map(|j| j.get_ref())))
}
