//! The query API, shaped like Twilio's Communications API so code written against Twilio works
//! against tally: `/v1/{Messages|Emails|PushNotifications}/…`.

use super::error::ApiError;
use crate::aggregator::{Aggregator, ResourceFilter, ResourceSnapshot};
use crate::event::{Channel, Kind};
use crate::rollup::operation::rfc3339_ms;
use crate::rollup::{Bucket, OperationStatus, OperationView, Stats};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Paging limits of the list endpoints.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    pub max_page_size: usize,
}

fn family(name: &str) -> Result<Kind, ApiError> {
    match name {
        "Messages" => Ok(Kind::Messages),
        "Emails" => Ok(Kind::Emails),
        "PushNotifications" => Ok(Kind::PushNotifications),
        _ => Err(ApiError::NotFound(
            "no such resource family: use Messages, Emails or PushNotifications",
        )),
    }
}

/// The list key Twilio uses for each family's items.
fn items_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Messages => "messages",
        Kind::Emails => "data",
        Kind::PushNotifications => "notifications",
    }
}

type Query = web::Query<HashMap<String, String>>;

struct Page {
    size: usize,
    after: Option<String>,
}

fn page(q: &HashMap<String, String>, limits: &PageLimits) -> Result<Page, ApiError> {
    let size = match q.get("pageSize") {
        None => limits.max_page_size.min(50),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 && n <= limits.max_page_size => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "pageSize must be an integer from 1 to {}",
                    limits.max_page_size
                )))
            }
        },
    };
    let after = match q.get("pageToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::BadRequest("pageToken is not valid".into()))?,
        ),
    };
    Ok(Page { size, after })
}

/// The pagination object in the family's own style: URLs for Messages and push
/// notifications, a bare token for Emails.
fn pagination(
    kind: Kind,
    req: &HttpRequest,
    q: &HashMap<String, String>,
    size: usize,
    last: Option<&str>,
) -> Value {
    let token = last.map(|id| hex::encode(id.as_bytes()));
    match kind {
        Kind::Emails => json!({"nextPageToken": token, "pageSize": size}),
        _ => {
            let url_with = |tok: Option<&str>| {
                let mut pairs: Vec<(&String, &String)> = q
                    .iter()
                    .filter(|(k, _)| k.as_str() != "pageToken")
                    .collect();
                pairs.sort();
                let mut ser = form_urlencoded::Serializer::new(String::new());
                for (k, v) in pairs {
                    ser.append_pair(k, v);
                }
                if let Some(t) = tok {
                    ser.append_pair("pageToken", t);
                }
                format!("{}?{}", req.path(), ser.finish())
            };
            json!({
                "next": token.as_deref().map(|t| url_with(Some(t))),
                "self": url_with(q.get("pageToken").map(String::as_str)),
            })
        }
    }
}

/// An operation as Twilio shows it. Serialised straight from this struct, never through a
/// `serde_json::Value` (whose maps sort their keys), so the fields and the stats keep Twilio's
/// order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OperationJson<'a> {
    id: &'a str,
    status: OperationStatus,
    stats: &'a Stats,
    created_at: String,
    updated_at: String,
}

/// Split `size + 1` fetched items into the page shown and, when there is more, the id of its
/// last item (the next page's token).
fn page_of<T>(items: &[T], size: usize, id: impl Fn(&T) -> &str) -> (&[T], Option<&str>) {
    let shown = &items[..items.len().min(size)];
    let last = if items.len() > size {
        shown.last().map(id)
    } else {
        None
    };
    (shown, last)
}

fn operation_json(v: &OperationView) -> OperationJson<'_> {
    OperationJson {
        id: &v.id,
        status: v.status,
        stats: &v.stats,
        created_at: rfc3339_ms(v.created_ms),
        updated_at: rfc3339_ms(v.updated_ms),
    }
}

/// The body of `GET /v1/{family}/Operations` (a struct for the same reason as [`OperationJson`]).
#[derive(Serialize)]
struct OperationList<'a> {
    operations: Vec<OperationJson<'a>>,
    pagination: Value,
}

fn resource_json(s: &ResourceSnapshot, with_attempts: bool) -> Value {
    let r = &s.resource;
    let best = r.best_attempt();
    let channel = best.and_then(|a| a.channel).map(Channel::as_api_str);
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    m.insert("operationId".into(), json!(s.operation_id));
    m.insert("status".into(), json!(s.status.api_str(s.kind)));
    m.insert("to".into(), json!({"address": r.to, "channel": channel}));
    m.insert("channel".into(), json!(channel));
    m.insert("errorCode".into(), json!(r.error_code()));
    m.insert("tags".into(), json!(r.tags));
    m.insert("attemptCount".into(), json!(r.attempts.len()));
    if with_attempts {
        let attempts: Vec<Value> = r
            .attempts
            .iter()
            .map(|a| {
                json!({
                    "id": a.downstream_id,
                    "attempt": a.attempt,
                    "channel": a.channel.map(Channel::as_api_str),
                    "status": a.status.as_str().to_ascii_uppercase(),
                    "errorCode": a.error_code,
                })
            })
            .collect();
        m.insert("attempts".into(), Value::Array(attempts));
    }
    m.insert(
        "related".into(),
        json!([{"name": "operation", "id": s.operation_id}]),
    );
    m.insert("createdAt".into(), json!(rfc3339_ms(r.created_ms)));
    m.insert("updatedAt".into(), json!(rfc3339_ms(r.updated_ms)));
    Value::Object(m)
}

/// The 404 for an unknown operation id (which it does not repeat: error bodies never echo the
/// request).
const OPERATION_NOT_FOUND: ApiError = ApiError::NotFound("operation not found");

/// `GET /v1/{family}/Operations/{id}`.
pub async fn get_operation(
    path: web::Path<(String, String)>,
    agg: web::Data<Aggregator>,
) -> Result<HttpResponse, ApiError> {
    let (fam, id) = path.into_inner();
    let kind = family(&fam)?;
    let view = agg
        .operation(&id)
        .filter(|v| v.kind == kind)
        .ok_or(OPERATION_NOT_FOUND)?;
    Ok(HttpResponse::Ok().json(operation_json(&view)))
}

/// `GET /v1/{family}/Operations`: operations of that family, optionally by `status`.
pub async fn list_operations(
    req: HttpRequest,
    path: web::Path<String>,
    q: Query,
    agg: web::Data<Aggregator>,
    limits: web::Data<PageLimits>,
) -> Result<HttpResponse, ApiError> {
    let kind = family(&path)?;
    let page = page(&q, &limits)?;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(OperationStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(
                "status must be one of SCHEDULED, PROCESSING, COMPLETED, CANCELED".into(),
            )
        })?),
    };
    let ops = agg.list_operations(kind, status, page.after.as_deref(), page.size + 1);
    let (shown, last) = page_of(&ops, page.size, |v| v.id.as_str());
    Ok(HttpResponse::Ok().json(OperationList {
        operations: shown.iter().map(operation_json).collect(),
        pagination: pagination(kind, &req, &q, page.size, last),
    }))
}

fn resource_filter(q: &HashMap<String, String>) -> Result<ResourceFilter, ApiError> {
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(Bucket::parse(s).ok_or_else(|| {
            let known: Vec<&str> = Bucket::ALL.into_iter().map(Bucket::api_str).collect();
            ApiError::BadRequest(format!("status must be one of {}", known.join(", ")))
        })?),
    };
    let channel = q.get("channel").map(|c| Channel::parse(c));
    let tags = match q.get("tags") {
        None => vec![],
        Some(t) => t
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once(':')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| ApiError::BadRequest("tags must look like k1:v1;k2:v2;".into()))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(ResourceFilter {
        status,
        channel,
        tags,
    })
}

/// `GET /v1/{family}?operationId=…`: the resources of one operation.
pub async fn list_resources(
    req: HttpRequest,
    path: web::Path<String>,
    q: Query,
    agg: web::Data<Aggregator>,
    limits: web::Data<PageLimits>,
) -> Result<HttpResponse, ApiError> {
    let kind = family(&path)?;
    let op_id = q
        .get("operationId")
        .ok_or_else(|| ApiError::BadRequest("operationId is required".into()))?;
    let page = page(&q, &limits)?;
    let filter = resource_filter(&q)?;
    if agg.operation(op_id).is_none_or(|v| v.kind != kind) {
        return Err(OPERATION_NOT_FOUND);
    }
    let items = agg
        .resources(op_id, &filter, page.after.as_deref(), page.size + 1)
        .ok_or(OPERATION_NOT_FOUND)?;
    let (shown, last) = page_of(&items, page.size, |s| s.resource.id.as_str());
    let mut body = Map::new();
    body.insert(
        items_key(kind).into(),
        Value::Array(shown.iter().map(|s| resource_json(s, false)).collect()),
    );
    body.insert(
        "pagination".into(),
        pagination(kind, &req, &q, page.size, last),
    );
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

/// `GET /v1/{family}/{id}`: one resource with its attempts.
pub async fn get_resource(
    path: web::Path<(String, String)>,
    agg: web::Data<Aggregator>,
) -> Result<HttpResponse, ApiError> {
    let (fam, id) = path.into_inner();
    let kind = family(&fam)?;
    let snap = agg
        .resource(&id)
        .filter(|s| s.kind == kind)
        .ok_or(ApiError::NotFound("resource not found"))?;
    Ok(HttpResponse::Ok().json(resource_json(&snap, true)))
}

/// `GET /v1/{family}/Operations/{id}/Errors`: failed and undelivered resources with their codes.
pub async fn list_errors(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: Query,
    agg: web::Data<Aggregator>,
    limits: web::Data<PageLimits>,
) -> Result<HttpResponse, ApiError> {
    let (fam, id) = path.into_inner();
    let kind = family(&fam)?;
    let page = page(&q, &limits)?;
    if agg.operation(&id).is_none_or(|v| v.kind != kind) {
        return Err(OPERATION_NOT_FOUND);
    }
    let mut items = Vec::new();
    for bucket in [Bucket::Failed, Bucket::Undelivered] {
        let filter = ResourceFilter {
            status: Some(bucket),
            ..ResourceFilter::default()
        };
        items.extend(
            agg.resources(&id, &filter, page.after.as_deref(), page.size + 1)
                .unwrap_or_default(),
        );
    }
    items.sort_by(|a, b| a.resource.id.cmp(&b.resource.id));
    items.truncate(page.size + 1);
    let (shown, last) = page_of(&items, page.size, |s| s.resource.id.as_str());
    let errors: Vec<Value> = shown.iter().map(|s| resource_json(s, true)).collect();
    Ok(HttpResponse::Ok().json(json!({
        "errors": errors,
        "pagination": pagination(kind, &req, &q, page.size, last),
    })))
}
