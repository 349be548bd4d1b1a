//! `tally simulate --serve-api`: Twilio's Communications REST API over a scenario's ground
//! truth (`truth.rs`), for a reconciler to read: the operations list, an operation by id and the
//! resources list of each kind, behind HTTP Basic auth, with a seeded share of `429` answers and
//! an added latency. It counts what it served per endpoint and status at `GET /stats`.
//! Every body is written with the `comms_api` types.

use super::listing::{parse_time, ListQuery};
use super::plan::keyed;
use super::truth::{resource_statuses, OperationTruth, ResourceTruth, Truth};
use crate::comms_api::{family, EmailPage, MessagePage, OperationBody, OperationPage, PushPage};
use crate::event::Kind;
use actix_web::{dev::Server, web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The largest `pageSize` a request may ask for (Twilio's limit).
pub const MAX_PAGE_SIZE: usize = 1000;

/// How to serve. `Debug` leaves out the password.
#[derive(Clone)]
pub struct ApiConfig {
    /// Where to listen, e.g. `127.0.0.1:0`.
    pub listen: String,
    pub username: String,
    pub password: String,
    /// Share of requests answered `429` with `Retry-After: 1`.
    pub share_429: f64,
    /// Added before every answer.
    pub latency: Duration,
    /// Page size when a request gives none.
    pub page_size: usize,
    /// Seeds the `429` decisions.
    pub seed: u64,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("username", &self.username)
            .field("share_429", &self.share_429)
            .field("latency", &self.latency)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

struct State {
    truth: Arc<Truth>,
    cfg: ApiConfig,
    /// Requests that passed authentication, numbering the `429` decisions.
    numbered: AtomicU64,
    /// Requests served, by endpoint and status code.
    counts: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
}

/// A running API: its base URL (`http://127.0.0.1:PORT`) and the server (stop it with its
/// handle, or let it run).
pub struct Served {
    pub url: String,
    pub server: Server,
    pub counts: Counts,
}

/// The served API's request counts, read from outside the server.
#[derive(Clone)]
pub struct Counts(web::Data<State>);

impl Counts {
    /// What `GET /stats` answers: requests served by endpoint and status, and their total.
    pub fn json(&self) -> serde_json::Value {
        stats_json(&self.0)
    }
}

/// Bind and start serving; must run inside an actix system. The server ignores signals, so
/// SIGTERM or SIGINT ends the process as usual.
pub fn start(truth: Arc<Truth>, cfg: ApiConfig) -> anyhow::Result<Served> {
    let listen = cfg.listen.clone();
    let state = web::Data::new(State {
        truth,
        cfg,
        numbered: AtomicU64::new(0),
        counts: Mutex::new(BTreeMap::new()),
    });
    let shared = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .default_service(web::to(handle))
    })
    .workers(1)
    .disable_signals()
    .bind(&listen)
    .map_err(|e| anyhow::anyhow!("--serve-api {listen}: cannot listen: {e}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("--serve-api {listen}: no address bound"))?;
    Ok(Served {
        url: format!("http://{addr}"),
        server: server.run(),
        counts: Counts(state),
    })
}

/// Which endpoint a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Stats,
    Operations(Kind),
    Operation(Kind, String),
    Resources(Kind),
    Unknown,
}

impl Endpoint {
    fn parse(path: &str) -> Endpoint {
        if path == "/stats" {
            return Endpoint::Stats;
        }
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let kind = |s: &str| Kind::ALL.into_iter().find(|k| family(*k) == s);
        match parts[..] {
            ["", "v1", fam] => kind(fam).map_or(Endpoint::Unknown, Endpoint::Resources),
            ["", "v1", fam, "Operations"] => {
                kind(fam).map_or(Endpoint::Unknown, Endpoint::Operations)
            }
            ["", "v1", fam, "Operations", id] if !id.is_empty() => {
                kind(fam).map_or(Endpoint::Unknown, |k| Endpoint::Operation(k, id.to_owned()))
            }
            _ => Endpoint::Unknown,
        }
    }

    /// The label requests are counted under.
    fn label(&self) -> String {
        match self {
            Endpoint::Stats => "GET /stats".into(),
            Endpoint::Operations(k) => format!("GET /v1/{}/Operations", family(*k)),
            Endpoint::Operation(k, _) => format!("GET /v1/{}/Operations/{{id}}", family(*k)),
            Endpoint::Resources(k) => format!("GET /v1/{}", family(*k)),
            Endpoint::Unknown => "other".into(),
        }
    }
}

fn error(status: u16, message: &str) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(code).json(json!({
        "code": 20000 + u32::from(status),
        "message": message,
        "status": status,
    }))
}

async fn handle(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let endpoint = Endpoint::parse(req.path());
    if endpoint == Endpoint::Stats {
        return stats(&state);
    }
    let resp = if req.method() != actix_web::http::Method::GET {
        error(405, "only GET is served")
    } else if !authorized(&req, &state.cfg) {
        let mut r = error(401, "authenticate with HTTP Basic");
        r.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Basic realm=\"simulate\""),
        );
        r
    } else if throttled(&state) {
        let mut r = error(429, "too many requests");
        r.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        r
    } else {
        if !state.cfg.latency.is_zero() {
            actix_web::rt::time::sleep(state.cfg.latency).await;
        }
        answer(&req, &endpoint, &state)
    };
    let mut counts = state.counts.lock().unwrap_or_else(|e| e.into_inner());
    *counts
        .entry(endpoint.label())
        .or_default()
        .entry(resp.status().as_u16())
        .or_default() += 1;
    resp
}

fn authorized(req: &HttpRequest, cfg: &ApiConfig) -> bool {
    use base64::Engine;
    let Some(value) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let want = format!("{}:{}", cfg.username, cfg.password);
    bool::from(decoded.ct_eq(want.as_bytes()))
}

/// True for the seeded share of authenticated requests answered `429`.
fn throttled(state: &State) -> bool {
    if state.cfg.share_429 <= 0.0 {
        return false;
    }
    let n = state.numbered.fetch_add(1, Ordering::Relaxed);
    keyed(state.cfg.seed, 0x0429_0429, &[n]).chance(state.cfg.share_429)
}

/// `GET /stats`: requests served per endpoint and status code, and their total.
fn stats(state: &State) -> HttpResponse {
    HttpResponse::Ok().json(stats_json(state))
}

fn stats_json(state: &State) -> serde_json::Value {
    let counts = state.counts.lock().unwrap_or_else(|e| e.into_inner());
    let total: u64 = counts.values().flat_map(|m| m.values()).sum();
    let endpoints: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(label, by)| {
            let by: serde_json::Map<String, serde_json::Value> =
                by.iter().map(|(s, n)| (s.to_string(), json!(n))).collect();
            (label.clone(), serde_json::Value::Object(by))
        })
        .collect();
    json!({"total": total, "endpoints": endpoints})
}

const OPERATION_STATUSES: [&str; 4] = ["SCHEDULED", "PROCESSING", "COMPLETED", "CANCELED"];

fn answer(req: &HttpRequest, endpoint: &Endpoint, state: &State) -> HttpResponse {
    let truth = &state.truth;
    let size = state.cfg.page_size;
    match endpoint {
        Endpoint::Operation(kind, id) => truth
            .operations
            .iter()
            .find(|o| o.kind() == *kind && o.id() == id)
            .map_or_else(
                || error(404, &format!("no {} operation {id}", family(*kind))),
                |o| HttpResponse::Ok().json(o.body()),
            ),
        Endpoint::Operations(kind) => match ListQuery::parse(req, size, &OPERATION_STATUSES) {
            Err(e) => error(400, &e),
            Ok(q) => operations(req, *kind, &q, truth),
        },
        Endpoint::Resources(kind) => match ListQuery::parse(req, size, &resource_statuses(*kind)) {
            Err(e) => error(400, &e),
            Ok(q) => resources(req, *kind, &q, truth),
        },
        Endpoint::Stats | Endpoint::Unknown => error(404, "no such resource"),
    }
}

fn operations(req: &HttpRequest, kind: Kind, q: &ListQuery, truth: &Truth) -> HttpResponse {
    let bound = |name: &str, default: u64| match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => parse_time(name, v),
    };
    let (from, to) = match (bound("startDate", 0), bound("endDate", u64::MAX)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return error(400, &e),
    };
    let matching: Vec<&OperationTruth> = truth
        .operations
        .iter()
        .filter(|o| o.kind() == kind && o.created_ms >= from && o.created_ms < to)
        .filter(|o| q.admits(o.status()))
        .collect();
    let (page, next) = q.page(&matching);
    HttpResponse::Ok().json(OperationPage {
        operations: page
            .iter()
            .map(|o| o.body())
            .collect::<Vec<OperationBody>>(),
        pagination: q.pagination(req, kind, next),
    })
}

fn resources(req: &HttpRequest, kind: Kind, q: &ListQuery, truth: &Truth) -> HttpResponse {
    let op_id = q.get("operationId").filter(|v| !v.is_empty());
    let matching: Vec<(&OperationTruth, &ResourceTruth)> = truth
        .operations
        .iter()
        .filter(|o| o.kind() == kind && op_id.is_none_or(|id| o.id() == id))
        .flat_map(|o| o.resources.iter().map(move |r| (o, r)))
        .filter(|(_, r)| q.admits(&r.status))
        .collect();
    let (page, next) = q.page(&matching);
    let pagination = q.pagination(req, kind, next);
    match kind {
        Kind::Messages => HttpResponse::Ok().json(MessagePage {
            messages: page.iter().map(|(o, r)| r.message(o)).collect(),
            pagination,
        }),
        Kind::Emails => HttpResponse::Ok().json(EmailPage {
            data: page.iter().map(|(o, r)| r.email(o)).collect(),
            pagination,
        }),
        Kind::PushNotifications => HttpResponse::Ok().json(PushPage {
            notifications: page.iter().map(|(o, r)| r.push(o)).collect(),
            pagination,
        }),
    }
}

/// Now as Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoint_and_kind_and_nothing_else() {
        use Endpoint as E;
        assert_eq!(E::parse("/stats"), E::Stats);
        assert_eq!(E::parse("/v1/Emails"), E::Resources(Kind::Emails));
        assert_eq!(
            E::parse("/v1/PushNotifications/Operations"),
            E::Operations(Kind::PushNotifications)
        );
        assert_eq!(
            E::parse("/v1/Messages/Operations/comms_operation_1"),
            E::Operation(Kind::Messages, "comms_operation_1".into())
        );
        for other in [
            "/",
            "/v1",
            "/v1/Faxes",
            "/v1/Messages/x",
            "/v1/Messages/Operations/a/b",
        ] {
            assert_eq!(E::parse(other), E::Unknown, "{other}");
        }
        assert_eq!(
            E::parse("/v1/Messages/Operations/x").label(),
            "GET /v1/Messages/Operations/{id}"
        );
    }

    #[test]
    fn the_api_configs_debug_output_shows_no_password() {
        let cfg = ApiConfig {
            listen: "127.0.0.1:0".into(),
            username: "AC1".into(),
            password: "secret-password-xyz".into(),
            share_429: 0.0,
            latency: Duration::ZERO,
            page_size: 50,
            seed: 1,
        };
        let shown = format!("{cfg:?}");
        assert!(
            shown.contains("AC1") && !shown.contains("secret-password-xyz"),
            "{shown}"
        );
    }
}
