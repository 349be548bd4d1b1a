//! Every URL tally serves, on one screen.

pub mod auth;
pub mod callbacks;
pub mod error;
pub mod guard;
pub mod health;
pub mod placement;
pub mod query;

use actix_web::dev::HttpServiceFactory;
use actix_web::middleware::from_fn;
use actix_web::{web, FromRequest, Handler, Responder, Route};

/// Register every route. Shared state comes as `web::Data` from the app builder.
///
/// Callbacks pass `guard::callbacks` (listener, source network, in-flight bound) and answer
/// other methods with 405; `/metrics`, `/openapi.json` and `/v1` pass `guard::admin_only`
/// (listener), and `/v1` then the credentials, `health::after_recovery` (503 until start-up
/// recovery is done) and, in cluster mode, `placement::route_query` (served here, forwarded to
/// the owner of the operation's partition, or 503 while it restores).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(callback("/twilio/events", callbacks::events))
        .service(callback("/twilio/status", callbacks::status))
        .route("/healthz", web::get().to(health::healthz))
        .route("/healthz/details", web::get().to(health::details))
        .route("/readyz", web::get().to(health::readyz))
        .route("/readyz/queries", web::get().to(health::readyz_queries))
        .service(admin("/metrics", web::get().to(health::metrics)))
        .service(admin("/openapi.json", web::get().to(crate::openapi::serve)))
        .service(
            web::scope("/v1")
                .wrap(from_fn(placement::route_query))
                .wrap(from_fn(health::after_recovery))
                .wrap(from_fn(auth::require_api_access))
                .wrap(from_fn(guard::admin_only))
                .route(
                    "/{family}/Operations",
                    web::get().to(query::list_operations),
                )
                .route(
                    "/{family}/Operations/{id}",
                    web::get().to(query::get_operation),
                )
                .route(
                    "/{family}/Operations/{id}/Errors",
                    web::get().to(query::list_errors),
                )
                .route("/{family}", web::get().to(query::list_resources))
                .route("/{family}/{id}", web::get().to(query::get_resource)),
        );
}

/// A callback route: POST to `handler` behind the callback guard, 405 for any other method.
fn callback<F, Args>(path: &str, handler: F) -> impl HttpServiceFactory
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .wrap(from_fn(guard::callbacks))
        .route(web::post().to(handler))
        .default_service(web::to(guard::post_only))
}

/// A route of the admin listener (when there is one).
fn admin(path: &str, route: Route) -> impl HttpServiceFactory {
    web::resource(path)
        .wrap(from_fn(guard::admin_only))
        .route(route)
}
