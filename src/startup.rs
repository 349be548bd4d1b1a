//! Wiring: `Application::build(settings)` binds the listener (port 0 works) and connects every
//! part; `run_until_stopped(shutdown)` serves until the shutdown future resolves, then drains.

use crate::aggregator::{Aggregator, Limits};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::routes::auth::ApiAuth;
use crate::routes::callbacks::{now_ms, CallbackLimits, UrlPolicy};
use crate::routes::health::Health;
use crate::routes::query::PageLimits;
use crate::routes::{self, error::json_error};
use crate::signature::Verifier;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

/// A built, bound, not yet running tally.
pub struct Application {
    server: Server,
    port: u16,
    aggregator: web::Data<Aggregator>,
    sweep_interval: Duration,
    retention_ms: u64,
}

impl Application {
    /// Bind `http.listen` and wire every component.
    pub fn build(settings: &Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.http.listen)
            .with_context(|| format!("cannot listen on {}", settings.http.listen))?;
        let port = listener.local_addr()?.port();
        let tokens = settings.twilio.auth_tokens.expose();
        let health = web::Data::new(Health::default());
        if tokens.is_empty() {
            tracing::warn!(
                "no Twilio auth token configured (twilio.auth_tokens or TALLY_TWILIO__AUTH_TOKENS): every callback will be refused with 403"
            );
            health.set(
                "signature",
                Some("no Twilio auth token configured: callbacks cannot be verified".into()),
            );
        }
        let credentials = settings.api.credentials.expose();
        if credentials.is_empty() {
            tracing::warn!("api.credentials is empty: the query API answers loopback clients only");
        }
        if settings.storage.dir.is_some() {
            tracing::info!("storage.dir is set; state is kept in memory in this version");
        }
        let verifier = web::Data::new(Verifier::new(&tokens));
        let urls = web::Data::new(UrlPolicy {
            public_url: settings
                .http
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            trust_forwarded_headers: settings.http.trust_forwarded_headers,
        });
        let limits = web::Data::new(CallbackLimits {
            max_body_bytes: settings.http.max_body_bytes,
        });
        let pages = web::Data::new(PageLimits {
            max_page_size: settings.api.max_page_size,
        });
        let aggregator = web::Data::new(Aggregator::new(Limits {
            max_held: settings.ingest.max_held_attempts,
            held_ttl_ms: settings.ingest.held_ttl.as_millis() as u64,
        }));
        let metrics = web::Data::new(Metrics::new());
        let auth = web::Data::new(ApiAuth::new(&credentials));
        let agg = aggregator.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(verifier.clone())
                .app_data(urls.clone())
                .app_data(limits.clone())
                .app_data(pages.clone())
                .app_data(agg.clone())
                .app_data(metrics.clone())
                .app_data(auth.clone())
                .app_data(health.clone())
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    actix_web::error::InternalError::from_response(
                        e.to_string(),
                        json_error(
                            actix_web::http::StatusCode::BAD_REQUEST,
                            "invalid query string",
                        ),
                    )
                    .into()
                }))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    actix_web::error::InternalError::from_response(
                        e.to_string(),
                        json_error(actix_web::http::StatusCode::NOT_FOUND, "not found"),
                    )
                    .into()
                }))
                .configure(routes::configure)
                .default_service(web::to(|| async {
                    json_error(actix_web::http::StatusCode::NOT_FOUND, "no such route")
                }))
        })
        .disable_signals()
        .shutdown_timeout(settings.http.shutdown_timeout.as_secs().max(1));
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(addr = %settings.http.listen, port, "tally listening");
        Ok(Application {
            server,
            port,
            aggregator,
            sweep_interval: settings.retention.sweep_interval,
            retention_ms: settings.retention.ttl.as_millis() as u64,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serve until `shutdown` resolves; then stop accepting, drain in-flight requests within
    /// `http.shutdown_timeout`, and return.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let agg = self.aggregator.clone();
        let (every, ttl) = (self.sweep_interval, self.retention_ms);
        let sweeper = actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(every);
            loop {
                tick.tick().await;
                let now = now_ms();
                let evicted = agg.sweep(now.saturating_sub(ttl), now);
                if evicted > 0 {
                    tracing::info!(
                        evicted,
                        "retention: forgot operations unchanged for the ttl"
                    );
                }
            }
        });
        let server = self.server;
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            r = &mut server => r,
            _ = shutdown => {
                tracing::info!("shutting down: draining in-flight requests");
                handle.stop(true).await;
                server.await
            }
        };
        sweeper.abort();
        result.context("http server failed")
    }
}
