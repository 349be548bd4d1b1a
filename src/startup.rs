//! Wiring: `Application::build(settings)` binds the listener (port 0 works) and connects every
//! part; `run_until_stopped(shutdown)` serves until the shutdown future resolves, then drains.

use crate::aggregator::Aggregator;
use crate::cluster::aggregate::Folder;
use crate::cluster::{ingest, owners::Owners, Cluster, Ownership};
use crate::config::{ClusterRole, KafkaSettings, Settings};
use crate::datadir::DataDir;
use crate::dirty::Dirty;
use crate::journal::{self, Journal};
use crate::metrics::Metrics;
use crate::publisher::{KafkaStatus, Publisher};
use crate::reconcile::Reconciler;
use crate::recovery::Recovery;
use crate::routes::auth::ApiAuth;
use crate::routes::callbacks::{now_ms, Intake, LogThrottle, UrlPolicy};
use crate::routes::guard::{CallbackGate, Listeners};
use crate::routes::health::Health;
use crate::routes::query::PageLimits;
use crate::routes::{self, error::json_error};
use crate::signature::Verifier;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What cluster mode adds to a process (docs/cluster.md).
struct ClusterParts {
    shared: web::Data<Cluster>,
    folder: Option<Folder>,
    settings: Settings,
}

impl ClusterParts {
    /// Find the events topic in the background and start the folder (aggregate roles).
    fn start(
        self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
        let s = &self.settings;
        actix_web::rt::spawn(ingest::ensure_events_topic(
            s.kafka.clone(),
            s.cluster.clone(),
            s.retention.ttl,
            self.shared.ownership.clone(),
        ));
        self.folder.map(|f| f.spawn(stop)).transpose()
    }

    /// Wait for the folder to leave the group, so that its partitions move at once rather than
    /// after the session timeout; bounded, since leaving needs a broker.
    async fn stop(folder: Option<std::thread::JoinHandle<()>>) {
        let Some(t) = folder else { return };
        let joined = tokio::task::spawn_blocking(move || t.join());
        if tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("cluster: the folder did not leave the group within 5 s; the group will notice when its session times out");
        }
    }
}

/// Start publishing once the replay is over: what Kafka gets is whole state.
fn start_publisher(
    publisher: Publisher,
    recovery: web::Data<Recovery>,
    agg: web::Data<Aggregator>,
) -> tokio::task::JoinHandle<Option<crate::publisher::PublisherHandle>> {
    actix_web::rt::spawn(async move {
        recovery.wait().await.ok()?;
        let recovered = agg.mark_all_changed(now_ms());
        tracing::info!(
            recovered,
            "kafka: recovery done; publishing starts with every operation held"
        );
        Some(publisher.start())
    })
}

/// A built, bound, not yet running tally.
pub struct Application {
    server: Server,
    port: u16,
    admin_port: Option<u16>,
    aggregator: web::Data<Aggregator>,
    journal: Option<web::Data<Journal>>,
    sweep_interval: Duration,
    retention_ms: u64,
    snapshot_interval: Duration,
    snapshot_bytes: u64,
    publisher: Option<Publisher>,
    /// Cluster mode: the shared ownership, the folder (aggregate) and the topic set-up.
    cluster: Option<ClusterParts>,
    kafka_shutdown: Duration,
    recovery: web::Data<Recovery>,
    /// Reads Twilio's API once recovery is done (when `[reconcile]` is on).
    reconciler: Option<Reconciler>,
    /// The data directory's lock, held until the application is dropped (or the process ends).
    _data_dir: Option<DataDir>,
}

impl Application {
    /// Bind `http.listen` and wire every component.
    pub fn build(settings: &Settings) -> anyhow::Result<Application> {
        // Before anything else: a second process on the same directory stops here. In cluster
        // mode the events topic keeps what the journal would: no data directory, no journal.
        let data_dir = lock_data_dir(settings)?;
        let listener = TcpListener::bind(settings.http.listen)
            .with_context(|| format!("cannot listen on {}", settings.http.listen))?;
        let port = listener.local_addr()?.port();
        let health = web::Data::new(Health::default());
        let intake = intake(settings, &health);
        let (gate, listeners, admin_listener) = hardening(settings)?;
        let admin_port = listeners.admin.map(|a| a.port());
        let aggregator = web::Data::new(Aggregator::new(settings.limits()));
        let journal = open_journal(settings, data_dir.as_ref())?;
        let recovery = web::Data::new(match &journal {
            None => Recovery::done(),
            Some(_) => Recovery::replaying(settings.storage.max_recovery_backlog_events),
        });
        let retention_ms = settings.retention.ttl.as_millis() as u64;
        let metrics = web::Data::new(Metrics::new());
        let (mut publisher, kafka_status) = if settings.cluster.role == ClusterRole::Ingest {
            // An ingest process holds no state: nothing to publish.
            (None, web::Data::new(KafkaStatus::disabled()))
        } else {
            kafka_publisher(&settings.kafka, &aggregator, &metrics)?
        };
        let cluster = cluster_parts(settings, &aggregator, &metrics, publisher.as_mut())?;
        let reconciler = reconcile_config(settings).map(|config| Reconciler {
            config,
            aggregator: aggregator.clone().into_inner(),
            journal: journal.clone().map(web::Data::into_inner),
            recovery: recovery.clone().into_inner(),
            metrics: metrics.clone().into_inner(),
        });
        if let (Some(owned), Some(j)) = (&data_dir, &journal) {
            spawn_recovery(Replay {
                dir: owned.path().to_owned(),
                journal: j.clone(),
                agg: aggregator.clone(),
                metrics: metrics.clone(),
                recovery: recovery.clone(),
                retention_ms,
                threads: settings.storage.recovery_threads,
            })?;
        }
        let shared = Shared {
            journal: journal.clone(),
            intake,
            gate,
            listeners,
            pages: web::Data::new(PageLimits {
                max_page_size: settings.api.max_page_size,
            }),
            aggregator: aggregator.clone(),
            metrics,
            auth: web::Data::new(api_auth(settings)),
            health,
            kafka_status,
            recovery: recovery.clone(),
            cluster: cluster.as_ref().map(|c| c.shared.clone()),
        };
        let server = http_server(settings, shared, listener, admin_listener)?;
        tracing::info!(addr = %settings.http.listen, port, "tally listening");
        Ok(Application {
            server,
            port,
            admin_port,
            aggregator,
            journal,
            sweep_interval: settings.retention.sweep_interval,
            retention_ms,
            snapshot_interval: settings.storage.snapshot_interval,
            snapshot_bytes: settings.storage.snapshot_bytes,
            publisher,
            cluster,
            kafka_shutdown: settings.kafka.shutdown_timeout,
            reconciler,
            recovery,
            _data_dir: data_dir,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's bound port, when `http.admin_listen` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// Start-up recovery's state: `wait()` resolves once the query API answers.
    pub fn recovery(&self) -> std::sync::Arc<Recovery> {
        self.recovery.clone().into_inner()
    }

    /// Serve until `shutdown` resolves (or start-up recovery fails); then stop accepting, drain
    /// in-flight requests within `http.shutdown_timeout`, and return.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let maintenance = actix_web::rt::spawn(maintain(
            self.aggregator.clone(),
            self.journal.clone(),
            self.recovery.clone(),
            Schedule {
                sweep_every: self.sweep_interval,
                retention_ms: self.retention_ms,
                snapshot_every: self.snapshot_interval,
                snapshot_bytes: self.snapshot_bytes,
            },
        ));
        let kafka = self
            .publisher
            .map(|p| start_publisher(p, self.recovery.clone(), self.aggregator.clone()));
        let stop_folder = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let folder_thread = match self.cluster {
            Some(c) => c.start(stop_folder.clone())?,
            None => None,
        };
        // Reconciling starts once the replay is over too (it waits for it).
        let reconciler = self.reconciler.map(|r| actix_web::rt::spawn(r.run()));
        let recovery = self.recovery.clone();
        let recovery_failed = async move {
            match recovery.wait().await {
                Err(why) => why,
                Ok(()) => std::future::pending().await,
            }
        };
        let server = self.server;
        let mut server = std::pin::pin!(server);
        let mut failure = None;
        let result = tokio::select! {
            r = &mut server => r,
            _ = shutdown => {
                tracing::info!("shutting down: draining in-flight requests");
                // The stop command is handled by the server future itself, so it must be polled
                // while the stop completes: awaiting the handle alone would wait forever.
                let (stopped, ()) = tokio::join!(&mut server, handle.stop(true));
                stopped
            }
            why = recovery_failed => {
                tracing::error!(error = %why, "start-up recovery failed: stopping (callbacks journalled meanwhile stay on disk)");
                failure = Some(why);
                let (stopped, ()) = tokio::join!(&mut server, handle.stop(true));
                stopped
            }
        };
        maintenance.abort();
        if let Some(r) = reconciler {
            r.abort();
        }
        if let Some(starter) = kafka {
            if self.recovery.is_done() {
                if let Ok(Some(kafka)) = starter.await {
                    // Requests are drained: publish the final state of every changed operation.
                    kafka
                        .stop(self.kafka_shutdown + Duration::from_secs(1))
                        .await;
                }
            } else {
                starter.abort();
            }
        }
        stop_folder.store(true, Ordering::Relaxed);
        ClusterParts::stop(folder_thread).await;
        if let Some(j) = &self.journal {
            j.close();
        }
        if let Some(why) = failure {
            anyhow::bail!("start-up recovery failed: {why}");
        }
        result.context("http server failed")
    }
}

/// Take the data directory's lock (when state is kept on disk), logging where the data lives.
fn lock_data_dir(settings: &Settings) -> anyhow::Result<Option<DataDir>> {
    let Some(dir) = settings
        .storage
        .data_dir()
        .filter(|_| settings.cluster.role == ClusterRole::Single)
    else {
        return Ok(None);
    };
    let owned = DataDir::acquire(&dir)?;
    tracing::info!(
        dir = %owned.path().display(),
        pid = std::process::id(),
        "data directory: the journal and snapshots are kept here (locked by this process)"
    );
    Ok(Some(owned))
}

/// What the callback handlers share: the verifier, the URL policy and the body limits. Says on
/// `health` (and in the log) when no auth token is configured.
fn intake(settings: &Settings, health: &Health) -> web::Data<Intake> {
    let tokens = settings.twilio.auth_tokens.expose();
    if tokens.is_empty() {
        tracing::warn!(
            "no Twilio auth token configured (twilio.auth_tokens or TALLY_TWILIO__AUTH_TOKENS): every callback will be refused with 403"
        );
        health.set(
            "signature",
            Some("no Twilio auth token configured: callbacks cannot be verified".into()),
        );
    }
    web::Data::new(Intake {
        verifier: Verifier::new(&tokens),
        urls: UrlPolicy {
            public_url: settings
                .http
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            trust_forwarded_headers: settings.http.trust_forwarded_headers,
        },
        max_body_bytes: settings.http.max_body_bytes,
        max_events_per_batch: settings.http.max_events_per_batch,
        body_read_timeout: settings.http.body_read_timeout,
        signature_failure_log: LogThrottle::new(settings.log.signature_failure_interval),
    })
}

fn api_auth(settings: &Settings) -> ApiAuth {
    let credentials = settings.api.credentials.expose();
    if credentials.is_empty() {
        tracing::warn!("api.credentials is empty: the query API answers loopback clients only");
    }
    ApiAuth::new(&credentials)
}

/// Open the journal in the data directory, on a fresh segment after every existing one
/// (callbacks are journalled there while the older segments are replayed); `None` in memory.
fn open_journal(
    settings: &Settings,
    data_dir: Option<&DataDir>,
) -> anyhow::Result<Option<web::Data<Journal>>> {
    let Some(owned) = data_dir else {
        if settings.cluster.role == ClusterRole::Single {
            tracing::warn!(
                "storage.memory_only = true: state lives in memory only and a restart forgets it"
            );
        }
        return Ok(None);
    };
    let dir = owned.path();
    let j = Journal::open(settings.storage.journal_config(dir))
        .with_context(|| format!("cannot open the journal in {}", dir.display()))?;
    tracing::info!(
        dir = %dir.display(),
        fsync = ?settings.storage.fsync,
        segment = j.first_segment(),
        "journal open"
    );
    Ok(Some(web::Data::new(j)))
}

/// Everything the HTTP handlers share, handed to each worker's `App`.
#[derive(Clone)]
struct Shared {
    journal: Option<web::Data<Journal>>,
    intake: web::Data<Intake>,
    gate: web::Data<CallbackGate>,
    listeners: web::Data<Listeners>,
    pages: web::Data<PageLimits>,
    aggregator: web::Data<Aggregator>,
    metrics: web::Data<Metrics>,
    auth: web::Data<ApiAuth>,
    health: web::Data<Health>,
    kafka_status: web::Data<KafkaStatus>,
    recovery: web::Data<Recovery>,
    cluster: Option<web::Data<Cluster>>,
}

/// Bind the HTTP server on its listeners, with the slow-client limits of `[http]`.
fn http_server(
    settings: &Settings,
    shared: Shared,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
) -> anyhow::Result<Server> {
    let mut server = HttpServer::new(move || {
        let s = shared.clone();
        let app = App::new();
        let app = match s.journal {
            Some(j) => app.app_data(j),
            None => app,
        };
        let app = match s.cluster {
            Some(c) => app.app_data(c),
            None => app,
        };
        app.app_data(s.intake)
            .app_data(s.gate)
            .app_data(s.listeners)
            .app_data(s.pages)
            .app_data(s.aggregator)
            .app_data(s.metrics)
            .app_data(s.auth)
            .app_data(s.health)
            .app_data(s.kafka_status)
            .app_data(s.recovery)
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
    // Slow and greedy clients: head and disconnect timeouts, keep-alive, connections.
    let mut server = server
        .client_request_timeout(settings.http.client_request_timeout)
        .client_disconnect_timeout(settings.http.client_disconnect_timeout)
        .keep_alive(settings.http.keep_alive)
        .max_connections(settings.http.max_connections)
        .listen(listener)?;
    if let Some(admin) = admin_listener {
        server = server.listen(admin)?;
    }
    Ok(server.run())
}

/// What the recovery thread needs.
struct Replay {
    dir: std::path::PathBuf,
    journal: web::Data<Journal>,
    agg: web::Data<Aggregator>,
    metrics: web::Data<Metrics>,
    recovery: web::Data<Recovery>,
    retention_ms: u64,
    threads: usize,
}

/// Replay the snapshot and the journal segments older than the journal's first one on a thread
/// of its own, while callbacks are taken; then retention, then the callbacks' backlog, then the
/// query API (docs/architecture.md, Recovery).
fn spawn_recovery(r: Replay) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("tally-recovery".into())
        .spawn(move || {
            let before = r.journal.first_segment();
            let progress = &r.recovery.progress;
            let report = match journal::recover_before(&r.dir, &r.agg, before, progress, r.threads) {
                Ok(report) => report,
                Err(e) => {
                    r.recovery
                        .fail(format!("cannot recover from {}: {e}", r.dir.display()));
                    return;
                }
            };
            r.journal
                .stats
                .truncated_tails
                .store(report.truncated_tails, Ordering::Relaxed);
            // Fallbacks replayed from the journal were counted by the process that received them.
            r.agg.take_fallbacks();
            let now = now_ms();
            r.agg.sweep(now.saturating_sub(r.retention_ms), now);
            r.agg.evict_to_capacity();
            let mut backlog = 0;
            r.recovery.finish(|item| {
                let mut counts = r.metrics.event_counts(item.route);
                for e in &item.record.events {
                    let outcome = r.agg.apply(e, item.record.received_ms);
                    counts.add(Ok(e), outcome);
                }
                backlog += item.record.events.len();
            });
            if r.agg.over_capacity() {
                r.agg.evict_to_capacity();
            }
            tracing::info!(
                elapsed_ms = r.recovery.elapsed().as_millis() as u64,
                records = report.records,
                events = report.events,
                backlog_events = backlog,
                operations = r.agg.operation_count(),
                "recovery complete: the callbacks taken meanwhile are applied; the query API answers"
            );
        })?;
    Ok(())
}

/// Kafka publishing: off without brokers (said in one log line); else the aggregator marks
/// changed operations and a publisher (started by `run_until_stopped` once recovery is done)
/// publishes them. What was recovered from the journal is published again in full: which of it
/// reached the topic before the restart is not known.
fn kafka_publisher(
    settings: &KafkaSettings,
    aggregator: &web::Data<Aggregator>,
    metrics: &web::Data<Metrics>,
) -> anyhow::Result<(Option<Publisher>, web::Data<KafkaStatus>)> {
    if !settings.enabled() {
        tracing::info!("kafka.brokers is empty: publishing to Kafka is off");
        return Ok((None, web::Data::new(KafkaStatus::disabled())));
    }
    aggregator.track_changes(Dirty::new(settings.resources_topic.is_some()));
    let publisher = Publisher::new(
        settings,
        aggregator.clone().into_inner(),
        metrics.clone().into_inner(),
    )?;
    let status = web::Data::from(publisher.status());
    tracing::info!(
        brokers = %settings.brokers.join(","),
        topic = %settings.topic,
        resources_topic = settings.resources_topic.as_deref().unwrap_or("off"),
        flush_interval = ?settings.flush_interval,
        "kafka: publishing operations (once start-up recovery is done)"
    );
    Ok((Some(publisher), status))
}

/// The reconciler's settings, when `[reconcile]` is on; off in cluster mode (said at start-up),
/// where its reads would bypass the events topic.
fn reconcile_config(settings: &Settings) -> Option<crate::reconcile::ReconcileConfig> {
    let config = settings.reconcile.config(settings.retention.ttl)?;
    if settings.cluster.role != ClusterRole::Single {
        tracing::warn!("[reconcile] is not available in cluster mode yet (its reads would bypass the events topic): reconciliation is off");
        return None;
    }
    Some(config)
}

/// Cluster mode's parts (none for `role = "single"`): the ownership the publisher and the query
/// API consult, the events producer (ingest), the folder (aggregate), the group reader.
fn cluster_parts(
    settings: &Settings,
    aggregator: &web::Data<Aggregator>,
    metrics: &web::Data<Metrics>,
    publisher: Option<&mut Publisher>,
) -> anyhow::Result<Option<ClusterParts>> {
    let c = &settings.cluster;
    if c.role == ClusterRole::Single {
        return Ok(None);
    }
    // A folder that has not polled for longer than this may have lost its partitions
    // unknowingly: publishing pauses until it polls again.
    let ownership = std::sync::Arc::new(Ownership::new(c.role, 2_000));
    let forwarder = if c.role.ingests() {
        Some(ingest::Forwarder::new(
            &settings.kafka,
            c,
            ownership.clone(),
        )?)
    } else {
        None
    };
    let folder = if c.role.aggregates() {
        if let Some(p) = publisher {
            p.gate_by(ownership.clone());
        }
        Some(Folder::new(
            &settings.kafka,
            c,
            ownership.clone(),
            aggregator.clone().into_inner(),
            metrics.clone().into_inner(),
        )?)
    } else {
        None
    };
    tracing::info!(
        role = c.role.as_str(),
        events_topic = %c.events_topic,
        group_id = %c.group_id,
        advertise_url = c.advertise_url.as_deref().unwrap_or(""),
        "cluster mode"
    );
    Ok(Some(ClusterParts {
        shared: web::Data::new(Cluster {
            ownership,
            forwarder,
            owners: Owners::new(&settings.kafka, c)?,
        }),
        folder,
        settings: settings.clone(),
    }))
}

/// The callback gate, the listener split and the admin listener (docs/security.md).
fn hardening(
    settings: &Settings,
) -> anyhow::Result<(
    web::Data<CallbackGate>,
    web::Data<Listeners>,
    Option<TcpListener>,
)> {
    let http = &settings.http;
    if !http.callback_allow_networks.is_empty() {
        let networks: Vec<String> = http
            .callback_allow_networks
            .0
            .iter()
            .map(|c| c.to_string())
            .collect();
        tracing::info!(networks = %networks.join(","), "callbacks accepted from these networks only");
    }
    let gate = CallbackGate::new(
        http.callback_allow_networks.clone(),
        http.trust_forwarded_headers,
        http.max_inflight_callbacks,
    );
    let admin_listener = match http.admin_listen {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on http.admin_listen {addr}"))?,
        ),
    };
    let admin = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    if let Some(addr) = admin {
        tracing::info!(%addr, "admin listener: /metrics and /v1 are served here only");
    }
    Ok((
        web::Data::new(gate),
        web::Data::new(Listeners { admin }),
        admin_listener,
    ))
}

struct Schedule {
    sweep_every: Duration,
    retention_ms: u64,
    snapshot_every: Duration,
    snapshot_bytes: u64,
}

/// Background upkeep, once a second: retention sweeps, snapshots when due, a probe write while
/// the journal is failing so that tally notices by itself when the disk is back, and a nudge
/// that lets the allocator give back memory freed a while ago ([`crate::return_freed_memory`]). Neither
/// sweeps nor snapshots run before start-up recovery is done: the state is not whole yet.
async fn maintain(
    agg: web::Data<Aggregator>,
    journal: Option<web::Data<Journal>>,
    recovery: web::Data<Recovery>,
    s: Schedule,
) {
    let mut tick = actix_web::rt::time::interval(Duration::from_secs(1));
    let mut last_sweep = Instant::now();
    let mut last_snapshot = Instant::now();
    loop {
        tick.tick().await;
        crate::return_freed_memory();
        if !recovery.is_done() {
            if let Some(j) = journal.as_ref().filter(|j| j.last_error().is_some()) {
                if j.probe().await.is_ok() {
                    tracing::info!("journal writable again: accepting callbacks");
                }
            }
            continue;
        }
        if last_sweep.elapsed() >= s.sweep_every {
            last_sweep = Instant::now();
            let now = now_ms();
            let evicted = agg.sweep(now.saturating_sub(s.retention_ms), now);
            if evicted > 0 {
                tracing::info!(
                    evicted,
                    "retention: forgot operations unchanged for the ttl"
                );
            }
        }
        let Some(j) = &journal else { continue };
        if j.last_error().is_some() {
            if j.probe().await.is_ok() {
                tracing::info!("journal writable again: accepting callbacks");
            }
            continue;
        }
        let pending = j.stats.bytes_since_snapshot.load(Ordering::Relaxed);
        let due = (pending > 0 && last_snapshot.elapsed() >= s.snapshot_every)
            || pending >= s.snapshot_bytes;
        if due {
            last_snapshot = Instant::now();
            if let Err(e) = j.snapshot(agg.clone().into_inner()).await {
                tracing::error!(error = %e, "snapshot failed; will retry");
            }
        }
    }
}
