//! Every URL tally serves, on one screen.

pub mod auth;
pub mod callbacks;
pub mod error;
pub mod health;
pub mod query;

use actix_web::middleware::from_fn;
use actix_web::web;

/// Register every route. Shared state comes as `web::Data` from the app builder.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/twilio/events", web::post().to(callbacks::events))
        .route("/twilio/status", web::post().to(callbacks::status))
        .route("/healthz", web::get().to(health::healthz))
        .route("/healthz/details", web::get().to(health::details))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .service(
            web::scope("/v1")
                .wrap(from_fn(auth::require_api_access))
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
