//! Every URL tally serves, on one screen.

pub mod auth;
pub mod callbacks;
pub mod error;
pub mod guard;
pub mod health;
pub mod query;

use actix_web::middleware::from_fn;
use actix_web::web;

/// Register every route. Shared state comes as `web::Data` from the app builder.
///
/// Callbacks pass `guard::callbacks` (listener, source network, in-flight bound) and answer
/// other methods with 405; `/metrics` and `/v1` pass `guard::admin_only` (listener).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/twilio/events")
            .wrap(from_fn(guard::callbacks))
            .route(web::post().to(callbacks::events))
            .default_service(web::to(guard::post_only)),
    )
    .service(
        web::resource("/twilio/status")
            .wrap(from_fn(guard::callbacks))
            .route(web::post().to(callbacks::status))
            .default_service(web::to(guard::post_only)),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/healthz/details", web::get().to(health::details))
    .route("/readyz", web::get().to(health::readyz))
    .service(
        web::resource("/metrics")
            .wrap(from_fn(guard::admin_only))
            .route(web::get().to(health::metrics)),
    )
    .service(
        web::scope("/v1")
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
