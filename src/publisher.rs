//! Kafka: every operation's latest state on a compacted topic, keyed by operation id.
//!
//! ```text
//!  Aggregator::apply ── change ──▶ dirty::Dirty (one mark per changed operation)
//!                                      │ every kafka.flush_interval
//!                                      ▼
//!  flush loop: take marks (skipping operations with a record in flight)
//!              → Aggregator::operation(id) → record(&view) → FutureProducer (idempotent, acks=all)
//!              ← delivery report: acked → done; failed → mark put back (newest state goes next)
//!  topic set-up (background): metadata → create when missing → re-check after UnknownTopic
//!  shutdown: publish every mark, wait for the acks, flush, within kafka.shutdown_timeout
//! ```
//!
//! Ordering: an operation has at most one record in flight, and each record carries the state
//! read *after* its mark was taken, so an operation's versions reach the topic in order. The
//! encoding (`record`, `resource_record`) is pure.

use crate::aggregator::{Aggregator, ResourceSnapshot};
use crate::config::KafkaSettings;
use crate::dirty::Change;
use crate::event::{Channel, Kind};
use crate::metrics::Metrics;
use crate::rollup::operation::rfc3339_ms;
use crate::rollup::{OperationStatus, OperationView, Stats};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};

/// One Kafka record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The operation id.
    pub key: String,
    /// JSON.
    pub value: Vec<u8>,
    /// `content-type` and `tally-kind`.
    pub headers: Vec<(&'static str, String)>,
}

/// The value of an operation record: domain.md §5, fields in this order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OperationValue<'a> {
    id: &'a str,
    kind: &'static str,
    status: OperationStatus,
    stats: Stats,
    created_at: String,
    updated_at: String,
    version: u64,
}

fn headers(kind: Kind) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("tally-kind", kind.as_str().to_owned()),
    ]
}

/// The record of one operation's state: key = operation id, JSON value
/// `{id, kind, status, stats, createdAt, updatedAt, version}`, headers `content-type` and
/// `tally-kind`.
pub fn record(view: &OperationView) -> Record {
    let value = OperationValue {
        id: &view.id,
        kind: view.kind.as_str(),
        status: view.status,
        stats: view.stats,
        created_at: rfc3339_ms(view.created_ms),
        updated_at: rfc3339_ms(view.updated_ms),
        version: view.version,
    };
    Record {
        key: view.id.clone(),
        value: serde_json::to_vec(&value).expect("plain data serialises"),
        headers: headers(view.kind),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptValue<'a> {
    id: Option<&'a str>,
    attempt: Option<&'a str>,
    channel: Option<&'static str>,
    status: String,
    error_code: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceValue<'a> {
    operation_id: &'a str,
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    to: Option<&'a str>,
    channel: Option<&'static str>,
    error_code: Option<u32>,
    tags: &'a std::collections::BTreeMap<String, String>,
    attempts: Vec<AttemptValue<'a>>,
    created_at: String,
    updated_at: String,
    operation_version: u64,
}

/// The record of one resource's state for `kafka.resources_topic`: key = its operation's id (so
/// it shares the operation's partition), the resource with every attempt (which channel was
/// tried, with which outcome and error code), and the operation's `version` at the time.
pub fn resource_record(s: &ResourceSnapshot, operation_version: u64) -> Record {
    let r = &s.resource;
    let value = ResourceValue {
        operation_id: &s.operation_id,
        kind: s.kind.as_str(),
        id: &r.id,
        status: s.status.api_str(s.kind),
        to: r.to.as_deref(),
        channel: r
            .best_attempt()
            .and_then(|a| a.channel)
            .map(Channel::as_api_str),
        error_code: r.error_code(),
        tags: &r.tags,
        attempts: r
            .attempts
            .iter()
            .map(|a| AttemptValue {
                id: a.downstream_id.as_deref(),
                attempt: a.attempt.as_deref(),
                channel: a.channel.map(Channel::as_api_str),
                status: a.status.as_str().to_ascii_uppercase(),
                error_code: a.error_code,
            })
            .collect(),
        created_at: rfc3339_ms(r.created_ms),
        updated_at: rfc3339_ms(r.updated_ms),
        operation_version,
    };
    Record {
        key: s.operation_id.clone(),
        value: serde_json::to_vec(&value).expect("plain data serialises"),
        headers: headers(s.kind),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which of tally's topics a record goes to; also the `topic` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Operations,
    Resources,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Operations => "operations",
            Role::Resources => "resources",
        }
    }
}

/// What one topic's set-up found.
#[derive(Debug, Clone, Serialize)]
struct TopicState {
    name: String,
    role: &'static str,
    ready: bool,
    problem: Option<String>,
}

/// What the publisher is doing, for `/healthz/details` (never for readiness: callbacks keep
/// flowing whatever Kafka does).
#[derive(Debug)]
pub struct KafkaStatus {
    enabled: bool,
    broker_up: AtomicBool,
    dirty: AtomicU64,
    in_flight: AtomicU64,
    oldest_ms: AtomicU64,
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    topics: Vec<TopicState>,
    last_error: Option<String>,
}

impl KafkaStatus {
    /// The status shown while publishing is off.
    pub fn disabled() -> KafkaStatus {
        KafkaStatus::new(false, Vec::new())
    }

    fn new(enabled: bool, topics: Vec<TopicState>) -> KafkaStatus {
        KafkaStatus {
            enabled,
            broker_up: AtomicBool::new(false),
            dirty: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(0),
            inner: Mutex::new(StatusInner {
                topics,
                last_error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every configured topic is known to exist.
    pub fn topics_ready(&self) -> bool {
        self.lock().topics.iter().all(|t| t.ready)
    }

    /// Whether the producer is connected to at least one broker.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    fn set_topic(&self, role: &'static str, ready: bool, problem: Option<String>) {
        let mut inner = self.lock();
        if let Some(t) = inner.topics.iter_mut().find(|t| t.role == role) {
            t.ready = ready;
            t.problem = problem;
        }
    }

    fn set_error(&self, e: String) {
        self.lock().last_error = Some(e);
    }

    /// A JSON snapshot for the health details endpoint.
    pub fn details(&self) -> serde_json::Value {
        if !self.enabled {
            return serde_json::json!({"enabled": false});
        }
        let inner = self.lock();
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0.0
        } else {
            now_ms().saturating_sub(oldest) as f64 / 1000.0
        };
        serde_json::json!({
            "enabled": true,
            "brokerUp": self.broker_up(),
            "topics": inner.topics,
            "dirtyOperations": self.dirty.load(Ordering::Relaxed),
            "inFlightOperations": self.in_flight.load(Ordering::Relaxed),
            "oldestUnpublishedChangeAgeSeconds": age,
            "lastError": inner.last_error,
        })
    }
}

/// librdkafka callbacks: broker state from its statistics and errors, its log lines to tracing.
struct Context {
    status: Arc<KafkaStatus>,
    metrics: Arc<Metrics>,
    /// The producer reports broker state; the admin client only logs, quietly.
    producer: bool,
}

impl Context {
    fn set_broker_up(&self, up: bool) {
        if self.producer {
            note_broker(&self.status, &self.metrics, up);
        }
    }
}

/// Record the producer's broker connection state, logging each change once.
fn note_broker(status: &KafkaStatus, metrics: &Metrics, up: bool) {
    metrics.kafka.broker_up.set(up as i64);
    if status.broker_up.swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!("kafka: connected to the brokers");
        } else {
            tracing::warn!(
                "kafka: no broker reachable; callbacks are still accepted and changed operations wait until a broker is back"
            );
        }
    }
}

#[derive(serde::Deserialize)]
struct RawStats {
    #[serde(default)]
    brokers: HashMap<String, RawBroker>,
}

#[derive(serde::Deserialize)]
struct RawBroker {
    #[serde(default)]
    state: String,
    #[serde(default)]
    source: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
                if self.producer =>
            {
                tracing::warn!(target: "librdkafka", "{fac}: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info if self.producer => {
                tracing::info!(target: "librdkafka", "{fac}: {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn stats_raw(&self, raw: &[u8]) {
        if let Ok(s) = serde_json::from_slice::<RawStats>(raw) {
            let up = s
                .brokers
                .values()
                .any(|b| b.state == "UP" && b.source != "internal");
            self.set_broker_up(up);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.set_broker_up(false),
            // Connection failures repeat at every reconnect; the state change above is logged.
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                tracing::debug!(target: "librdkafka", "{error}: {reason}")
            }
            _ if self.producer => {
                tracing::warn!(target: "librdkafka", "{error}: {reason}");
                self.status.set_error(format!("{error}: {reason}"));
            }
            _ => tracing::debug!(target: "librdkafka", "{error}: {reason}"),
        }
    }
}

type Deliveries = FuturesUnordered<Pin<Box<dyn Future<Output = Settled> + Send>>>;

/// A record's fate, as its delivery report tells it.
struct Settled {
    op: String,
    role: Role,
    result: Result<(), String>,
}

/// An operation whose records are in flight.
struct InFlight {
    change: Change,
    pending: usize,
    failed: bool,
}

/// The Kafka publisher: producer, admin client, and the state of both loops.
pub struct Publisher {
    settings: KafkaSettings,
    config: ClientConfig,
    producer: FutureProducer<Context>,
    agg: Arc<Aggregator>,
    metrics: Arc<Metrics>,
    status: Arc<KafkaStatus>,
    recheck: Arc<Notify>,
    in_flight: HashMap<String, InFlight>,
    deliveries: Deliveries,
    /// Why the producer should be replaced at the next tick, if it should.
    restart: Option<String>,
    last_restart: Option<Instant>,
    last_gauges: Option<Instant>,
}

/// How often the waiting-operations gauges and health details are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_millis(250);

/// Least time between two producer replacements for timed-out records.
const MIN_RESTART_INTERVAL: Duration = Duration::from_secs(30);

/// Most operations taken from the dirty set in one round; the rest wait for the next round.
const MAX_PER_ROUND: usize = 50_000;

/// Stops a running publisher and waits for its final publish.
pub struct PublisherHandle {
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl PublisherHandle {
    /// Ask for the final publish and wait for it (it keeps to `kafka.shutdown_timeout`; `budget`
    /// is a hard stop beyond that).
    pub async fn stop(mut self, budget: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            if tokio::time::timeout(budget, done).await.is_err() {
                tracing::warn!("kafka: final publish did not finish within its budget");
            }
        }
    }
}

fn client_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("client.id", &k.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", "1000")
        // A record not acknowledged within a minute fails; its operation is published again.
        .set("message.timeout.ms", "60000");
    for (key, value) in &k.librdkafka.0 {
        c.set(key, value);
    }
    c
}

fn error_name(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "Other".to_owned(),
    }
}

impl Publisher {
    /// Build the producer (a bad librdkafka property fails here, at start-up). Nothing connects
    /// yet in a way that could block: brokers are reached in the background.
    pub fn new(
        settings: &KafkaSettings,
        agg: Arc<Aggregator>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Publisher> {
        anyhow::ensure!(
            agg.dirty().is_some(),
            "the aggregator must track changes for the publisher"
        );
        let mut topics = vec![TopicState {
            name: settings.topic.clone(),
            role: Role::Operations.as_str(),
            ready: false,
            problem: Some("not checked yet".into()),
        }];
        if let Some(t) = &settings.resources_topic {
            topics.push(TopicState {
                name: t.clone(),
                role: Role::Resources.as_str(),
                ready: false,
                problem: Some("not checked yet".into()),
            });
        }
        for t in &topics {
            metrics
                .kafka
                .topic_ready
                .with_label_values(&[t.role])
                .set(0);
        }
        let status = Arc::new(KafkaStatus::new(true, topics));
        let config = client_config(settings);
        let producer = Self::producer(&config, &status, &metrics)?;
        metrics.kafka.enabled.set(1);
        Ok(Publisher {
            settings: settings.clone(),
            config,
            producer,
            agg,
            metrics,
            status,
            recheck: Arc::new(Notify::new()),
            in_flight: HashMap::new(),
            deliveries: FuturesUnordered::new(),
            restart: None,
            last_restart: None,
            last_gauges: None,
        })
    }

    fn producer(
        config: &ClientConfig,
        status: &Arc<KafkaStatus>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<FutureProducer<Context>> {
        let ctx = Context {
            status: status.clone(),
            metrics: metrics.clone(),
            producer: true,
        };
        FutureProducer::from_config_and_context(config, ctx)
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka producer: {e}"))
    }

    /// The status shown by `/healthz/details`.
    pub fn status(&self) -> Arc<KafkaStatus> {
        self.status.clone()
    }

    /// Start the topic set-up and the flush loop on the current runtime.
    pub fn start(self) -> PublisherHandle {
        let (tx, rx) = oneshot::channel();
        let setup = tokio::spawn(topic_setup(
            self.settings.clone(),
            self.config.clone(),
            self.status.clone(),
            self.metrics.clone(),
            self.recheck.clone(),
        ));
        let done = tokio::spawn(async move {
            self.run(rx).await;
            setup.abort();
        });
        PublisherHandle {
            stop: Some(tx),
            done: Some(done),
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.replace_producer_if_needed();
                    self.publish_round();
                    // Counting a large backlog walks it: a few times a second is enough.
                    if self.last_gauges.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL) {
                        self.update_gauges();
                    }
                }
                Some(s) = self.deliveries.next(), if !self.deliveries.is_empty() => self.settle(s),
                _ = &mut stop => break,
            }
        }
        self.final_publish().await;
    }

    /// Take the dirty operations that have nothing in flight and produce their latest state.
    fn publish_round(&mut self) {
        if !self.status.topics_ready() {
            return;
        }
        let agg = self.agg.clone();
        let Some(dirty) = agg.dirty() else {
            return;
        };
        let in_flight = &self.in_flight;
        let mut taken = dirty
            .take(|id| in_flight.contains_key(id), MAX_PER_ROUND)
            .into_iter();
        while let Some((id, change)) = taken.next() {
            let Some(view) = self.agg.operation(&id) else {
                // Forgotten by retention before it could be published.
                self.metrics
                    .kafka
                    .records_failed
                    .with_label_values(&[Role::Operations.as_str(), "evicted"])
                    .inc();
                continue;
            };
            let mut records = vec![(Role::Operations, record(&view))];
            if self.settings.resources_topic.is_some() {
                records.extend(
                    change
                        .resources
                        .iter()
                        .filter_map(|r| self.agg.resource(r))
                        .filter(|s| s.operation_id == id)
                        .map(|s| (Role::Resources, resource_record(&s, view.version))),
                );
            }
            let mut entry = InFlight {
                change,
                pending: 0,
                failed: false,
            };
            let mut queue_full = false;
            for (role, rec) in records {
                match self.send(role, &id, &rec) {
                    Ok(()) => entry.pending += 1,
                    Err(reason) => {
                        self.count_failure(role, &reason);
                        entry.failed = true;
                        queue_full = reason == "QueueFull";
                        if queue_full {
                            break;
                        }
                    }
                }
            }
            if entry.pending == 0 {
                dirty.restore(id, entry.change);
            } else {
                self.in_flight.insert(id, entry);
            }
            if queue_full {
                // librdkafka's queue is full: what is left waits for the next round.
                for (id, change) in taken.by_ref() {
                    dirty.restore(id, change);
                }
            }
        }
    }

    fn send(&mut self, role: Role, op: &str, rec: &Record) -> Result<(), String> {
        let topic = match role {
            Role::Operations => self.settings.topic.as_str(),
            Role::Resources => self.settings.resources_topic.as_deref().unwrap_or_default(),
        };
        let mut hs = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let fr = FutureRecord::to(topic)
            .key(rec.key.as_bytes())
            .payload(rec.value.as_slice())
            .headers(hs);
        let fut = self
            .producer
            .send_result(fr)
            .map_err(|(e, _)| error_name(&e))?;
        let op = op.to_owned();
        self.deliveries.push(Box::pin(fut.map(move |r| Settled {
            op,
            role,
            result: match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(error_name(&e)),
                Err(_) => Err("Canceled".to_owned()),
            },
        })));
        Ok(())
    }

    fn count_failure(&self, role: Role, reason: &str) {
        self.metrics
            .kafka
            .records_failed
            .with_label_values(&[role.as_str(), reason])
            .inc();
    }

    /// A delivery report arrived: done when the operation's last record is settled; a failure
    /// puts the mark back so that its newest state goes out next round.
    fn settle(&mut self, s: Settled) {
        match &s.result {
            Ok(()) => {
                self.metrics
                    .kafka
                    .records_delivered
                    .with_label_values(&[s.role.as_str()])
                    .inc();
                // An acknowledgement proves a connection, even with statistics turned off.
                if !self.status.broker_up() {
                    note_broker(&self.status, &self.metrics, true);
                }
            }
            Err(reason) => {
                self.count_failure(s.role, reason);
                tracing::debug!(reason = %reason, topic = s.role.as_str(), "kafka: record not delivered; will publish again");
                if reason == "MessageTimedOut" && self.status.broker_up() {
                    // Connected, yet nothing got through before the timeout: the producer may be
                    // wedged (a broker that lost its data and with it our producer id).
                    self.restart
                        .get_or_insert_with(|| "records timed out while connected".into());
                }
                if reason == "UnknownTopicOrPartition" || reason == "UnknownTopic" {
                    // The topic went away (a broker that lost its data): set it up again.
                    self.status.set_topic(
                        s.role.as_str(),
                        false,
                        Some(format!("produce: {reason}")),
                    );
                    self.metrics
                        .kafka
                        .topic_ready
                        .with_label_values(&[s.role.as_str()])
                        .set(0);
                    self.recheck.notify_one();
                }
            }
        }
        let Some(entry) = self.in_flight.get_mut(&s.op) else {
            return;
        };
        entry.pending -= 1;
        entry.failed |= s.result.is_err();
        if entry.pending > 0 {
            return;
        }
        let Some(entry) = self.in_flight.remove(&s.op) else {
            return;
        };
        if entry.failed {
            if let Some(d) = self.agg.dirty() {
                d.restore(s.op, entry.change);
            }
        } else {
            let delay = now_ms().saturating_sub(entry.change.since_ms);
            self.metrics
                .kafka
                .publish_delay
                .observe(delay as f64 / 1000.0);
        }
    }

    fn update_gauges(&mut self) {
        self.last_gauges = Some(Instant::now());
        let Some(dirty) = self.agg.dirty() else {
            return;
        };
        let waiting = dirty.len()
            + self
                .in_flight
                .keys()
                .filter(|id| !dirty.contains(id))
                .count();
        let oldest = self
            .in_flight
            .values()
            .map(|e| e.change.since_ms)
            .chain(dirty.oldest_ms())
            .min();
        let age = oldest.map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0);
        let k = &self.metrics.kafka;
        k.dirty_operations.set(waiting as i64);
        k.in_flight_operations.set(self.in_flight.len() as i64);
        k.oldest_unpublished_age.set(age);
        self.status.dirty.store(waiting as u64, Ordering::Relaxed);
        self.status
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        self.status
            .oldest_ms
            .store(oldest.unwrap_or(0), Ordering::Relaxed);
    }

    /// After a fatal error (the idempotent producer lost its sequence, say, to a broker that lost
    /// its data) librdkafka's producer is unusable: replace it. Likewise, at most every 30 s,
    /// when records time out while a broker is connected. Its records in flight fail and their
    /// operations are published again by the new one.
    fn replace_producer_if_needed(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(error = ?code, reason, "kafka: fatal producer error; starting a new producer");
            self.status.set_error(format!("fatal: {code:?}: {reason}"));
        } else if self.restart.is_some()
            && self
                .last_restart
                .is_none_or(|t| t.elapsed() >= MIN_RESTART_INTERVAL)
        {
            let why = self.restart.take().unwrap_or_default();
            tracing::warn!("kafka: {why}; starting a new producer");
            self.status.set_error(why);
        } else {
            return;
        }
        self.restart = None;
        self.last_restart = Some(Instant::now());
        match Self::producer(&self.config, &self.status, &self.metrics) {
            Ok(p) => {
                let old = std::mem::replace(&mut self.producer, p);
                self.metrics.kafka.producer_restarts.inc();
                // Destroying a producer waits for its threads: not on this runtime's thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::error!(error = %e, "kafka: cannot start a new producer"),
        }
    }

    /// Shutdown: publish every dirty operation (after its record in flight, if any), wait for the
    /// acknowledgements and flush, all within `kafka.shutdown_timeout`.
    async fn final_publish(mut self) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let before = self.agg.dirty().map_or(0, |d| d.len()) + self.in_flight.len();
        loop {
            self.publish_round();
            let dirty_left = self.agg.dirty().map_or(0, |d| d.len());
            if self.in_flight.is_empty() && (dirty_left == 0 || !self.status.topics_ready()) {
                break;
            }
            if self.deliveries.is_empty() {
                // Nothing in flight but marks left (librdkafka's queue was full): try again soon.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(10)))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.deliveries.next()).await {
                Ok(Some(s)) => self.settle(s),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let producer = self.producer.clone();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = tokio::task::spawn_blocking(move || producer.flush(left)).await;
        self.update_gauges();
        let unpublished = self.agg.dirty().map_or(0, |d| d.len()) + self.in_flight.len();
        if unpublished == 0 {
            tracing::info!(
                operations = before,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "kafka: published the final state of every changed operation"
            );
        } else {
            tracing::warn!(
                unpublished,
                reason = if self.status.topics_ready() {
                    "broker did not acknowledge in time"
                } else {
                    "topic not ready"
                },
                "kafka: shutting down with operations whose latest state is not on the topic"
            );
        }
    }
}

/// Check that every topic exists, creating it when missing and allowed; retried with backoff
/// while it fails, re-checked every `topic_setup_retry` after, and at once whenever the flush
/// loop finds a topic gone. Never blocks callbacks.
async fn topic_setup(
    settings: KafkaSettings,
    mut config: ClientConfig,
    status: Arc<KafkaStatus>,
    metrics: Arc<Metrics>,
    recheck: Arc<Notify>,
) {
    // Asking for a topic's metadata must not create it with the broker's defaults.
    config.set("allow.auto.create.topics", "false");
    let ctx = Context {
        status: status.clone(),
        metrics: metrics.clone(),
        producer: false,
    };
    let admin: AdminClient<Context> = match AdminClient::from_config_and_context(&config, ctx) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "kafka: cannot create the admin client; topics are not checked");
            return;
        }
    };
    let admin = Arc::new(admin);
    let mut topics = vec![(Role::Operations, settings.topic.clone())];
    if let Some(t) = &settings.resources_topic {
        topics.push((Role::Resources, t.clone()));
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut all_ready = true;
        for (role, name) in &topics {
            let result = ensure_topic(&admin, name, &settings).await;
            let ready = result.is_ok();
            metrics
                .kafka
                .topic_ready
                .with_label_values(&[role.as_str()])
                .set(ready as i64);
            match result {
                Ok(how) => {
                    tracing::debug!(topic = %name, "kafka: topic check: {how}");
                    if !status_ready(&status, role.as_str()) {
                        tracing::info!(topic = %name, "kafka: topic {how}");
                    }
                    status.set_topic(role.as_str(), true, None);
                }
                Err(problem) => {
                    all_ready = false;
                    tracing::warn!(topic = %name, retry_in = ?backoff, "kafka: topic not ready: {problem}");
                    status.set_topic(role.as_str(), false, Some(problem));
                }
            }
        }
        if all_ready {
            backoff = Duration::from_millis(500);
            // Look again now and then: a broker that lost its data has lost the topic too.
            tokio::select! {
                _ = recheck.notified() => {}
                _ = tokio::time::sleep(settings.topic_setup_retry) => {}
            }
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(settings.topic_setup_retry);
        }
    }
}

fn status_ready(status: &KafkaStatus, role: &str) -> bool {
    status
        .lock()
        .topics
        .iter()
        .any(|t| t.role == role && t.ready)
}

/// Make sure `name` exists: found as is, or created (compacted) when allowed.
async fn ensure_topic(
    admin: &Arc<AdminClient<Context>>,
    name: &str,
    k: &KafkaSettings,
) -> Result<&'static str, String> {
    let a = admin.clone();
    let topic = name.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        a.inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| (t.error(), t.partitions().len()))
            })
    })
    .await
    .map_err(|e| format!("metadata task failed: {e}"))?
    .map_err(|e| format!("cannot reach the brokers: {e}"))?;
    match found {
        Some((None, n)) if n > 0 => return Ok("found"),
        Some((Some(err), _))
            if RDKafkaErrorCode::from(err) != RDKafkaErrorCode::UnknownTopicOrPartition =>
        {
            return Err(format!("metadata: {:?}", RDKafkaErrorCode::from(err)));
        }
        _ => {}
    }
    if !k.create_topics {
        return Err("topic does not exist and kafka.create_topics is false".into());
    }
    let replication = TopicReplication::Fixed(k.replication_factor);
    let new = NewTopic::new(name, k.partitions, replication).set("cleanup.policy", "compact");
    let opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| format!("create: {e}"))?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok("created (cleanup.policy=compact)"),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok("found"),
        Some(Err((_, code))) => Err(format!("create: {code:?}")),
        None => Err("create: no result".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttemptEvent, AttemptStatus};
    use crate::rollup::Operation;

    fn view_of(kind: Kind) -> OperationView {
        let (res, ch) = match kind {
            Kind::Messages => ("comms_message_a", Channel::Sms),
            Kind::Emails => ("comms_email_a", Channel::Email),
            Kind::PushNotifications => ("comms_pushnotification_a", Channel::Fcm),
        };
        let mut op = Operation::new("comms_operation_1", 1_712_298_000_000, 1_712_298_000_000);
        let ev = AttemptEvent {
            kind: Some(kind),
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some(res.into()),
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: Some(ch),
            status: AttemptStatus::Delivered,
            error_code: None,
            to: Some("+15550100".into()),
            tags: vec![("campaign".into(), "spring".into())],
        };
        op.apply_attempt(res, &ev, 1_712_298_000_000, 1_712_298_001_500);
        op.view()
    }

    #[test]
    fn an_operation_record_is_keyed_by_id_with_the_documented_value_and_headers() {
        let rec = record(&view_of(Kind::Messages));
        assert_eq!(rec.key, "comms_operation_1");
        assert_eq!(
            std::str::from_utf8(&rec.value).unwrap(),
            concat!(
                r#"{"id":"comms_operation_1","kind":"messages","status":"PROCESSING","#,
                r#""stats":{"total":1,"recipients":1,"attempts":1,"unaddressable":0,"queued":0,"#,
                r#""sent":0,"scheduled":0,"delivered":1,"read":0,"undelivered":0,"failed":0,"#,
                r#""canceled":0},"createdAt":"2024-04-05T06:20:00.000Z","#,
                r#""updatedAt":"2024-04-05T06:20:01.500Z","version":1}"#
            )
        );
        assert_eq!(
            rec.headers,
            vec![
                ("content-type", "application/json".to_owned()),
                ("tally-kind", "messages".to_owned())
            ]
        );
    }

    #[test]
    fn each_kind_names_itself_in_the_value_and_the_header_and_keeps_its_stats_fields() {
        for (kind, name, bucket) in [
            (Kind::Emails, "emails", "opened"),
            (
                Kind::PushNotifications,
                "push_notifications",
                "unaddressable",
            ),
        ] {
            let rec = record(&view_of(kind));
            let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
            assert_eq!(v["kind"], name);
            assert_eq!(rec.headers[1], ("tally-kind", name.to_owned()));
            assert!(v["stats"].get(bucket).is_some(), "{kind:?}: {v}");
            let text = std::str::from_utf8(&rec.value).unwrap();
            let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
            let order = [
                "id",
                "kind",
                "status",
                "stats",
                "createdAt",
                "updatedAt",
                "version",
            ];
            assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
            assert_eq!(v.as_object().unwrap().len(), order.len());
        }
    }

    #[test]
    fn a_resource_record_is_keyed_by_its_operation_and_lists_every_attempt() {
        let mut op = Operation::new("comms_operation_1", 0, 0);
        let mut rcs = AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some("comms_message_a".into()),
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: Some(Channel::Rcs),
            status: AttemptStatus::Failed,
            error_code: Some(30008),
            to: None,
            tags: vec![],
        };
        op.apply_attempt("comms_message_a", &rcs, 0, 0);
        rcs.downstream_id = Some("SM2".into());
        rcs.channel = Some(Channel::Sms);
        rcs.status = AttemptStatus::Delivered;
        rcs.error_code = None;
        op.apply_attempt("comms_message_a", &rcs, 0, 10);
        let snap = ResourceSnapshot {
            operation_id: op.id.clone(),
            kind: op.kind(),
            status: op.resource("comms_message_a").unwrap().status(),
            resource: op.resource("comms_message_a").unwrap().clone(),
        };
        let rec = resource_record(&snap, op.version);
        assert_eq!(rec.key, "comms_operation_1");
        let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
        assert_eq!(v["id"], "comms_message_a");
        assert_eq!(v["status"], "DELIVERED");
        assert_eq!(v["channel"], "SMS");
        assert_eq!(v["operationVersion"], 2);
        assert_eq!(v["attempts"][0]["channel"], "RCS");
        assert_eq!(v["attempts"][0]["status"], "FAILED");
        assert_eq!(v["attempts"][0]["errorCode"], 30008);
        assert_eq!(v["attempts"][1]["status"], "DELIVERED");
    }

    #[test]
    fn tally_sets_idempotence_and_acks_and_passes_librdkafka_options_through() {
        let mut s = crate::config::Settings::load(None, vec![]).unwrap().kafka;
        s.brokers = vec!["a:9092".into(), "b:9092".into()];
        s.librdkafka
            .0
            .insert("compression.type".into(), "lz4".into());
        let c = client_config(&s);
        assert_eq!(c.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("client.id"), Some("tally"));
    }
}
