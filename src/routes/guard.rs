//! What turns a request away before any handler work: the listener it came in on, the network
//! it came from, and how many callbacks are already in flight (docs/security.md).
//!
//! Order for callbacks: listener (404) → source network (403) → in-flight slot (429, without
//! reading the body). A refused source never takes a slot, and a request that gets no slot
//! costs tally no more than its head.

use super::error::GateError;
use crate::cidr::NetworkList;
use crate::metrics::Metrics;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::Stream;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;

type BoxedPayloadStream = Pin<Box<dyn Stream<Item = Result<web::Bytes, PayloadError>>>>;

/// Which listener serves what: with an admin address, the public listener serves callbacks and
/// health only, and the admin listener `/metrics`, the query API and health only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listeners {
    /// The admin listener's bound address, when `http.admin_listen` is set.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    fn on_admin(&self, req: &ServiceRequest) -> Option<bool> {
        self.admin
            .map(|admin| req.request().app_config().local_addr() == admin)
    }
}

/// Who may call the callback routes, and how many at once.
#[derive(Debug, Clone)]
pub struct CallbackGate {
    /// Source networks allowed; empty allows every source.
    pub allow: NetworkList,
    /// Take the source from the last `X-Forwarded-For` entry (the one trusted proxy's view).
    pub trust_forwarded_headers: bool,
    slots: Arc<Semaphore>,
}

impl CallbackGate {
    pub fn new(allow: NetworkList, trust_forwarded_headers: bool, max_inflight: usize) -> Self {
        CallbackGate {
            allow,
            trust_forwarded_headers,
            slots: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    /// The client's address as far as tally can tell.
    fn source(&self, req: &HttpRequest) -> Option<IpAddr> {
        if self.trust_forwarded_headers {
            let last = req
                .headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .last();
            if let Some(ip) = last {
                // A proxy that sets the header sets it to an address; anything else is refused.
                return ip.parse().ok();
            }
        }
        req.peer_addr().map(|a| a.ip())
    }

    fn source_allowed(&self, req: &HttpRequest) -> bool {
        self.allow.is_empty() || self.source(req).is_some_and(|ip| self.allow.contains(ip))
    }
}

fn route_label(req: &ServiceRequest) -> &'static str {
    if req.path().ends_with("/events") {
        "events"
    } else {
        "status"
    }
}

fn refuse(req: ServiceRequest, err: GateError) -> ServiceResponse<BoxBody> {
    let resp = actix_web::ResponseError::error_response(&err);
    req.into_response(resp)
}

/// Middleware in front of `/twilio/*`. The request body is handed to the handler through a
/// [`SharedPayload`] and the original is kept until the response is sent (see there).
pub async fn callbacks(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let payload = Rc::new(RefCell::new(req.take_payload()));
    let shared: BoxedPayloadStream = Box::pin(SharedPayload(payload.clone()));
    req.set_payload(Payload::from(shared));
    let res = gate_callback(req, next).await?;
    Ok(res.map_body(|_, body| {
        BoxBody::new(KeepsPayload {
            body,
            _payload: payload,
        })
    }))
}

async fn gate_callback(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let listeners = req
        .app_data::<web::Data<Listeners>>()
        .map(|l| *l.get_ref())
        .unwrap_or_default();
    if listeners.on_admin(&req) == Some(true) {
        return Ok(refuse(req, GateError::NotOnThisListener));
    }
    let (Some(gate), Some(metrics)) = (
        req.app_data::<web::Data<CallbackGate>>().cloned(),
        req.app_data::<web::Data<Metrics>>().cloned(),
    ) else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    let route = route_label(&req);
    if !gate.source_allowed(req.request()) {
        metrics
            .callbacks_refused
            .with_label_values(&[route, "source_not_allowed"])
            .inc();
        tracing::debug!(route, "callback refused: source network not allowed");
        return Ok(refuse(req, GateError::SourceNotAllowed));
    }
    let Ok(_slot) = gate.slots.clone().try_acquire_owned() else {
        metrics
            .callbacks_refused
            .with_label_values(&[route, "overload"])
            .inc();
        return Ok(refuse(req, GateError::Overloaded));
    };
    let _counted = InFlight::enter(&metrics);
    next.call(req).await.map(|r| r.map_into_boxed_body())
}

/// One callback in `tally_callbacks_in_flight`, for as long as it lives: dropped with the
/// request future even when a client disconnects mid-request.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(metrics: &Metrics) -> InFlight {
        metrics.callbacks_in_flight.inc();
        InFlight(metrics.callbacks_in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The request body, read by the handler through this stream while the middleware keeps the
/// original alive.
///
/// Why: when a response goes out before the body was read whole (413, 408, 429, 403), actix
/// closes the connection if the body is still owned by someone, but *drains* a chunked body
/// whose owner is gone, for as long as the client keeps sending. A client that trickles a
/// chunked body would then hold its connection for ever after its 408. Kept alive until the
/// response is sent, the body is never dropped early, and the connection is closed instead.
struct SharedPayload(Rc<RefCell<Payload>>);

impl Stream for SharedPayload {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_next(cx)
    }
}

/// A response body that owns the request body until it has been sent (see [`SharedPayload`]).
struct KeepsPayload {
    body: BoxBody,
    _payload: Rc<RefCell<Payload>>,
}

impl MessageBody for KeepsPayload {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// Middleware in front of `/metrics` and `/v1`: 404 on the public listener when an admin
/// listener is configured.
pub async fn admin_only(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let listeners = req
        .app_data::<web::Data<Listeners>>()
        .map(|l| *l.get_ref())
        .unwrap_or_default();
    if listeners.on_admin(&req) == Some(false) {
        return Ok(refuse(req, GateError::NotOnThisListener));
    }
    next.call(req).await.map(|r| r.map_into_boxed_body())
}

/// Any method but POST on a callback route.
pub async fn post_only() -> HttpResponse {
    actix_web::ResponseError::error_response(&GateError::MethodNotAllowed { allow: "POST" })
}
