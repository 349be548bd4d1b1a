//! The baseline of the throughput benchmark: actix-web answering 200 with no work, on the same
//! routes and worker count tally uses. `bare ADDR WORKERS`.
//!
//! The body is still read (and dropped): a handler that answers before reading it makes actix
//! close the connection, which would measure reconnects rather than the framework.

use actix_web::{web, App, HttpResponse, HttpServer};

async fn ok(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    actix_web::rt::System::new().block_on(async move {
        let mut server = HttpServer::new(|| {
            App::new()
                .route("/twilio/status", web::post().to(ok))
                .route("/twilio/events", web::post().to(ok))
        })
        .shutdown_timeout(1);
        if workers > 0 {
            server = server.workers(workers);
        }
        server.bind(addr)?.run().await
    })
}
