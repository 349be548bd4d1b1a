//! The query API, shaped like Twilio's Communications API so code written against Twilio works
//! against tally: `/v1/{Messages|Emails|PushNotifications}/…`.

use super::callbacks::Intake;
use super::error::ApiError;
use super::placement;
use crate::aggregator::{Aggregator, ResourceFilter, ResourceSnapshot};
use crate::cluster::Cluster;
use crate::comms_api::{
    ApiStats, AttemptBody, EmailAddress, EmailItem, EmailPage, ErrorPage, Extras, MessageItem,
    MessagePage, MessageTo, OperationBody, OperationPage, Pagination, PushItem, PushPage, PushTo,
    Related,
};
use crate::event::{Channel, Kind};
use crate::rollup::operation::{rfc3339_ms, stat_names};
use crate::rollup::{Bucket, OperationStatus, OperationView};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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

/// The pagination object in the family's own style: absolute URLs for Messages and push
/// notifications (`base` is the public base URL, else the request's scheme and host), a bare
/// token for Emails.
fn pagination(
    kind: Kind,
    base: &str,
    req: &HttpRequest,
    q: &HashMap<String, String>,
    size: usize,
    last: Option<&str>,
) -> Pagination {
    let token = last.map(|id| hex::encode(id.as_bytes()));
    match kind {
        Kind::Emails => Pagination::token(token, size as u64),
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
                let query = ser.finish();
                if query.is_empty() {
                    format!("{base}{}", req.path())
                } else {
                    format!("{base}{}?{query}", req.path())
                }
            };
            Pagination::urls(
                token.as_deref().map(|t| url_with(Some(t))),
                url_with(q.get("pageToken").map(String::as_str)),
            )
        }
    }
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

/// An operation as Twilio shows it, its stats in its kind's order.
fn operation_body(v: &OperationView) -> OperationBody {
    OperationBody {
        id: v.id.clone(),
        status: Some(v.status.as_str().to_owned()),
        stats: ApiStats::ordered(stat_names(v.kind), |n| v.stats.get(n)),
        created_at: Some(rfc3339_ms(v.created_ms)),
        updated_at: Some(rfc3339_ms(v.updated_ms)),
    }
}

/// One resource in its kind's shape (Twilio's fields, then tally's extras).
#[derive(Serialize)]
#[serde(untagged)]
enum ResourceBody {
    Message(MessageItem),
    Email(EmailItem),
    Push(PushItem),
}

/// The `channel` of a Message recipient's address: `PHONE` for an E.164 number, else unknown.
fn address_channel(address: &str) -> Option<String> {
    let digits = address.strip_prefix('+')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| "PHONE".to_owned())
}

/// The `related` entry naming the operation, its `uri` relative to the API base (`/v1`).
fn related_operation(kind: Kind, op_id: &str) -> Vec<Related> {
    vec![Related {
        name: "operation".into(),
        id: op_id.to_owned(),
        uri: Some(format!(
            "/{}/Operations/{op_id}",
            crate::comms_api::family(kind)
        )),
    }]
}

/// A push notification's device: tally keeps no device token (it is not an address), so only
/// the provider of the deciding attempt shows (`FCM`, `APNS`); empty when that is unknown too.
fn push_to(r: &crate::rollup::Resource) -> Vec<PushTo> {
    let provider = r
        .best_attempt()
        .and_then(|a| a.channel)
        .filter(|c| matches!(c, Channel::Fcm | Channel::Apns))
        .map(|c| c.as_api_str().to_owned());
    if r.to.is_none() && provider.is_none() {
        return vec![];
    }
    vec![PushTo {
        token: r.to.clone(),
        provider,
    }]
}

/// tally's extras of a resource; `attempts` only on a fetch by id and the errors list.
fn extras(s: &ResourceSnapshot, with_attempts: bool) -> Extras {
    let r = &s.resource;
    let attempts = with_attempts.then(|| {
        r.attempts
            .iter()
            .map(|a| AttemptBody {
                id: a.downstream_id.clone(),
                attempt: a.attempt.clone(),
                channel: a.channel.map(|c| c.as_api_str().to_owned()),
                status: a.status.as_str().to_ascii_uppercase(),
                error_code: a.error_code,
            })
            .collect()
    });
    Extras {
        channel: r
            .best_attempt()
            .and_then(|a| a.channel)
            .map(|c| c.as_api_str().to_owned()),
        error_code: r.error_code(),
        attempt_count: Some(r.attempts.len() as u64),
        attempts,
    }
}

fn resource_body(s: &ResourceSnapshot, with_attempts: bool) -> ResourceBody {
    let r = &s.resource;
    let status = s.status.api_str(s.kind).to_owned();
    let tags: BTreeMap<String, serde_json::Value> = r
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let created_at = Some(rfc3339_ms(r.created_ms));
    let updated_at = Some(rfc3339_ms(r.updated_ms));
    let extras = extras(s, with_attempts);
    match s.kind {
        Kind::Messages => ResourceBody::Message(MessageItem {
            id: r.id.clone(),
            from: None,
            to: r
                .to
                .iter()
                .map(|a| MessageTo {
                    address: Some(a.clone()),
                    channel: address_channel(a),
                    contact_id: None,
                })
                .collect(),
            status,
            related: related_operation(s.kind, &s.operation_id),
            tags,
            scheduled_for: None,
            created_at,
            updated_at,
            deleted_at: None,
            operation_id: Some(s.operation_id.clone()),
            extras,
        }),
        Kind::Emails => ResourceBody::Email(EmailItem {
            id: r.id.clone(),
            from: None,
            to: r.to.as_ref().map(|a| EmailAddress {
                address: Some(a.clone()),
                name: None,
            }),
            content: None,
            status,
            tags,
            operation_id: Some(s.operation_id.clone()),
            created_at,
            updated_at,
            extras,
        }),
        Kind::PushNotifications => ResourceBody::Push(PushItem {
            id: r.id.clone(),
            to: push_to(r),
            status,
            related: related_operation(s.kind, &s.operation_id),
            tags,
            created_at,
            updated_at,
            deleted_at: None,
            operation_id: Some(s.operation_id.clone()),
            extras,
        }),
    }
}

/// A page of resources under the kind's own list key (`messages`, `data`, `notifications`).
fn resource_page(kind: Kind, items: Vec<ResourceBody>, pagination: Pagination) -> HttpResponse {
    let (mut messages, mut data, mut notifications) = (vec![], vec![], vec![]);
    for item in items {
        match item {
            ResourceBody::Message(m) => messages.push(m),
            ResourceBody::Email(e) => data.push(e),
            ResourceBody::Push(p) => notifications.push(p),
        }
    }
    match kind {
        Kind::Messages => HttpResponse::Ok().json(MessagePage {
            messages,
            pagination,
        }),
        Kind::Emails => HttpResponse::Ok().json(EmailPage { data, pagination }),
        Kind::PushNotifications => HttpResponse::Ok().json(PushPage {
            notifications,
            pagination,
        }),
    }
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
    Ok(HttpResponse::Ok().json(operation_body(&view)))
}

/// `GET /v1/{family}/Operations`: operations of that family, optionally by `status`.
pub async fn list_operations(
    req: HttpRequest,
    path: web::Path<String>,
    q: Query,
    agg: web::Data<Aggregator>,
    limits: web::Data<PageLimits>,
    intake: web::Data<Intake>,
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
    let mut bodies: Vec<OperationBody> = ops.iter().map(operation_body).collect();
    // In cluster mode every owner's share, gathered (docs/cluster.md, "Queries").
    let mut more_elsewhere = false;
    if let Some(c) = req.app_data::<web::Data<Cluster>>() {
        match placement::gather_operations(c, &req).await {
            Ok((remote, more)) => {
                bodies.extend(remote);
                more_elsewhere = more;
            }
            Err(resp) => return Ok(resp),
        }
        bodies.sort_by(|a, b| a.id.cmp(&b.id));
        bodies.dedup_by(|a, b| a.id == b.id);
    }
    let (shown, mut last) = page_of(&bodies, page.size, |b| b.id.as_str());
    if last.is_none() && more_elsewhere {
        // An owner had more than a page: the next page starts after this one.
        last = shown.last().map(|b| b.id.as_str());
    }
    let base = intake.urls.base_url(&req);
    Ok(HttpResponse::Ok().json(OperationPage {
        operations: shown.to_vec(),
        pagination: pagination(kind, &base, &req, &q, page.size, last),
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
    intake: web::Data<Intake>,
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
    let base = intake.urls.base_url(&req);
    Ok(resource_page(
        kind,
        shown.iter().map(|s| resource_body(s, false)).collect(),
        pagination(kind, &base, &req, &q, page.size, last),
    ))
}

/// `GET /v1/{family}/{id}`: one resource with its attempts (in cluster mode, from whichever
/// owner has it).
pub async fn get_resource(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    agg: web::Data<Aggregator>,
) -> Result<HttpResponse, ApiError> {
    let (fam, id) = path.into_inner();
    let kind = family(&fam)?;
    let found = agg.resource(&id).filter(|s| s.kind == kind);
    if found.is_none() {
        if let Some(c) = req.app_data::<web::Data<Cluster>>() {
            if let Some(resp) = placement::find_elsewhere(c, &req).await {
                return Ok(resp);
            }
        }
    }
    let snap = found.ok_or(ApiError::NotFound("resource not found"))?;
    Ok(HttpResponse::Ok().json(resource_body(&snap, true)))
}

/// `GET /v1/{family}/Operations/{id}/Errors`: failed and undelivered resources with their codes.
pub async fn list_errors(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: Query,
    agg: web::Data<Aggregator>,
    limits: web::Data<PageLimits>,
    intake: web::Data<Intake>,
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
    let base = intake.urls.base_url(&req);
    Ok(HttpResponse::Ok().json(ErrorPage {
        errors: shown.iter().map(|s| resource_body(s, true)).collect(),
        pagination: pagination(kind, &base, &req, &q, page.size, last),
    }))
}
