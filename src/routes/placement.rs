//! Cluster mode, the query API on any process (docs/cluster.md, "Queries"): a request for one
//! operation is answered here when its partition is live here, forwarded to its owner when
//! another process owns it, and answered 503 with `Retry-After` while it restores or has no
//! owner. Lists that span operations gather every owner's share.

use super::error::json_error;
use crate::cluster::owners::FORWARDED;
use crate::cluster::{Cluster, Placement};
use crate::metrics::Metrics;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

/// Seconds a client is asked to wait while a partition restores or finds an owner.
const RETRY_AFTER_SECS: u64 = 2;

pub fn unavailable(why: &str) -> HttpResponse {
    let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, why);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(RETRY_AFTER_SECS),
    );
    resp
}

/// The operation a `/v1` request is about, when it names one.
fn operation_of(req: &ServiceRequest) -> Option<String> {
    let parts: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", _, "Operations", id] | ["v1", _, "Operations", id, "Errors"] => {
            Some((*id).to_owned())
        }
        ["v1", _] => form_urlencoded::parse(req.query_string().as_bytes())
            .find(|(k, _)| k == "operationId")
            .map(|(_, v)| v.into_owned()),
        _ => None,
    }
}

/// Whether the request was forwarded by another process (then it is answered from what is
/// held here, never forwarded again).
pub fn is_forwarded(req: &HttpRequest) -> bool {
    req.headers().contains_key(FORWARDED)
}

/// The `/v1` middleware: serve, forward or refuse by the operation's placement.
pub async fn route_query(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(cluster) = req.app_data::<web::Data<Cluster>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(op) = operation_of(&req) else {
        // Lists across operations and resources by id: their handlers gather.
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let resp = match cluster.ownership.placement(&op) {
        Placement::Here => return Ok(next.call(req).await?.map_into_boxed_body()),
        Placement::Restoring(pct) => unavailable(&format!(
            "this operation's partition is being restored on this process ({pct:.1}% done)"
        )),
        Placement::Unknown => unavailable("the events topic's partitions are not known yet"),
        Placement::Elsewhere(_) if is_forwarded(req.request()) => {
            unavailable("this operation's partition moved while the query was forwarded")
        }
        Placement::Elsewhere(p) => {
            let metrics = req.app_data::<web::Data<Metrics>>().cloned();
            let count = |outcome: &str| {
                if let Some(m) = &metrics {
                    m.cluster_forwarded.with_label_values(&[outcome]).inc();
                }
            };
            match cluster.owners.owner_of(p).await {
                Ok(Some(url)) if Some(&url) != cluster.owners.own_url.as_ref() => {
                    match forward(&cluster, &url, req.request()).await {
                        Ok(r) => {
                            count("ok");
                            r
                        }
                        Err(e) => {
                            count("error");
                            unavailable(&format!(
                                "the owner of this operation's partition did not answer: {e}"
                            ))
                        }
                    }
                }
                Ok(_) => {
                    count("no_owner");
                    unavailable("this operation's partition has no live owner right now")
                }
                Err(e) => {
                    count("error");
                    unavailable(&e)
                }
            }
        }
    };
    Ok(req.into_response(resp))
}

/// Send `req` (its path, query and credentials) to the process at `base`, and hand back its
/// answer as it came.
pub async fn forward(
    cluster: &Cluster,
    base: &str,
    req: &HttpRequest,
) -> Result<HttpResponse, String> {
    let (status, content_type, retry_after, body) = fetch(cluster, base, req).await?;
    let mut out = HttpResponse::build(status);
    if let Some(ct) = content_type {
        out.insert_header((header::CONTENT_TYPE, ct));
    }
    if let Some(ra) = retry_after {
        out.insert_header((header::RETRY_AFTER, ra));
    }
    Ok(out.body(body))
}

type Fetched = (
    StatusCode,
    Option<header::HeaderValue>,
    Option<header::HeaderValue>,
    web::Bytes,
);

/// `GET` the same path and query from the process at `base`, marked as forwarded.
pub async fn fetch(cluster: &Cluster, base: &str, req: &HttpRequest) -> Result<Fetched, String> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut out = awc::Client::new()
        .get(&url)
        .timeout(cluster.owners.timeout)
        .insert_header((FORWARDED, "1"));
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        out = out.insert_header((header::AUTHORIZATION, auth.clone()));
    }
    let mut resp = out.send().await.map_err(|e| e.to_string())?;
    let body = resp
        .body()
        .limit(64 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok());
    let ra = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok());
    Ok((status, ct, ra, body))
}

/// A list across operations in cluster mode: the pages of the same request from every other
/// owner (answered from what each holds), and whether any of them had more. Err: the 503 to
/// answer, when a partition has no owner, one restores, or an owner does not answer.
pub async fn gather_operations(
    cluster: &Cluster,
    req: &HttpRequest,
) -> Result<(Vec<crate::comms_api::OperationBody>, bool), HttpResponse> {
    let own = &cluster.ownership;
    let (_, restoring) = own.counts();
    if restoring > 0 {
        return Err(unavailable(&format!(
            "{restoring} partitions are being restored on this process: the list would be incomplete"
        )));
    }
    if is_forwarded(req) {
        return Ok((Vec::new(), false));
    }
    let map = cluster.owners.map().await.map_err(|e| unavailable(&e))?;
    let n = own.partition_count();
    if n == 0 || (0..n).any(|p| !map.contains_key(&p)) {
        return Err(unavailable(
            "some partitions have no owner right now: the list would be incomplete",
        ));
    }
    let mut urls: Vec<&String> = map.values().collect();
    urls.sort();
    urls.dedup();
    let mut items = Vec::new();
    let mut more = false;
    for url in urls {
        if Some(url) == cluster.owners.own_url.as_ref() {
            continue;
        }
        let (status, _, _, body) = fetch(cluster, url, req)
            .await
            .map_err(|e| unavailable(&format!("an owner did not answer: {e}")))?;
        if status != StatusCode::OK {
            return Err(unavailable(&format!("an owner answered {status}")));
        }
        let page: crate::comms_api::OperationPage = serde_json::from_slice(&body)
            .map_err(|e| unavailable(&format!("an owner's page does not read: {e}")))?;
        more |= page.pagination.next.flatten().is_some()
            || page.pagination.next_page_token.flatten().is_some();
        items.extend(page.operations);
    }
    Ok((items, more))
}

/// A resource asked for by its own id, which does not say its operation: ask every other owner.
/// Some: the first owner's 200, or a 503 when one could not answer; None: nobody has it.
pub async fn find_elsewhere(cluster: &Cluster, req: &HttpRequest) -> Option<HttpResponse> {
    if is_forwarded(req) {
        return None;
    }
    let map = match cluster.owners.map().await {
        Ok(m) => m,
        Err(e) => return Some(unavailable(&e)),
    };
    let mut urls: Vec<&String> = map.values().collect();
    urls.sort();
    urls.dedup();
    let mut unanswered = None;
    for url in urls {
        if Some(url) == cluster.owners.own_url.as_ref() {
            continue;
        }
        match forward(cluster, url, req).await {
            Ok(resp) if resp.status() == StatusCode::OK => return Some(resp),
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {}
            Ok(resp) => unanswered = Some(format!("an owner answered {}", resp.status())),
            Err(e) => unanswered = Some(format!("an owner did not answer: {e}")),
        }
    }
    unanswered.map(|why| unavailable(&why))
}
