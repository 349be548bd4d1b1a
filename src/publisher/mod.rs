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

mod context;
mod record;
mod status;
mod topics;

pub use record::{record, resource_record, Record};
pub use status::KafkaStatus;
pub(crate) use topics::partition_count;

use context::{note_broker, Context};

use crate::aggregator::Aggregator;
use crate::config::KafkaSettings;
use crate::dirty::Change;
use crate::metrics::Metrics;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use status::TopicState;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which of tally's topics a record goes to; also the `topic` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Operations,
    Resources,
}

impl Role {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Role::Operations => "operations",
            Role::Resources => "resources",
        }
    }
}

type Deliveries = FuturesUnordered<Pin<Box<dyn Future<Output = Settled> + Send>>>;

/// A record's fate, as its delivery report tells it.
struct Settled {
    op: String,
    role: Role,
    result: Result<(), Failure>,
}

/// Why a record was not acknowledged: librdkafka's error code when it gave one (`None` when the
/// report was lost with a replaced producer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure(Option<RDKafkaErrorCode>);

impl Failure {
    fn of(e: &KafkaError) -> Failure {
        Failure(e.rdkafka_error_code())
    }

    /// The `reason` metric label: librdkafka's error code name, a fixed set.
    fn name(self) -> String {
        match self.0 {
            Some(code) => format!("{code:?}"),
            None => "Canceled".to_owned(),
        }
    }

    fn is_queue_full(self) -> bool {
        self.0 == Some(RDKafkaErrorCode::QueueFull)
    }

    fn is_unknown_topic(self) -> bool {
        matches!(
            self.0,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        )
    }

    /// Whether this failure means the producer cannot go on as it is, and which replacement
    /// reason it gives (the `reason` label of `tally_kafka_producer_restarts_total`).
    fn needs_new_producer(self) -> Option<Replace> {
        match self.0? {
            // After a timeout librdkafka continues under an epoch it bumped itself, which only
            // brokers that implement idempotent-producer epoch bumps accept: a new producer gets
            // a fresh producer id that every broker accepts.
            RDKafkaErrorCode::MessageTimedOut => Some(Replace::TimedOut),
            // The broker no longer knows or accepts this producer id, epoch or sequence.
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping => Some(Replace::Fenced),
            _ => None,
        }
    }
}

/// Why the producer is replaced; also the `reason` label of the replacement counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// librdkafka raised a fatal error.
    Fatal,
    /// Records timed out (an outage longer than `message.timeout.ms`, say).
    TimedOut,
    /// The broker refused the producer's id, epoch or sequence.
    Fenced,
    /// Records in flight, a broker connected, and no acknowledgement for `kafka.stall_timeout`.
    Stalled,
}

impl Replace {
    fn as_str(self) -> &'static str {
        match self {
            Replace::Fatal => "fatal",
            Replace::TimedOut => "timed_out",
            Replace::Fenced => "fenced",
            Replace::Stalled => "stalled",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Replace::Fatal => "fatal producer error",
            Replace::TimedOut => "records timed out",
            Replace::Fenced => "the broker refused the producer id or epoch",
            Replace::Stalled => "no acknowledgement while connected",
        }
    }
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
    /// Cluster mode: only operations whose partition is live here are published.
    gate: Option<Arc<crate::cluster::Ownership>>,
    recheck: Arc<Notify>,
    in_flight: HashMap<String, InFlight>,
    deliveries: Deliveries,
    /// Why the producer should be replaced, if it should (acted on at the next tick).
    restart: Option<Replace>,
    last_restart: Option<Instant>,
    last_gauges: Option<Instant>,
    /// When the broker last acknowledged a record.
    last_ack: Option<Instant>,
    /// Since when records have been in flight without a break (`None` while none are).
    in_flight_since: Option<Instant>,
    /// Operations whose records were in flight on a replaced producer: published once more
    /// after the given instant, so that a request the old producer had on the wire can never
    /// stay the newest record of its key.
    reconfirm: Vec<(Instant, Vec<String>)>,
}

/// How often the waiting-operations gauges and health details are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_millis(250);

/// Least time between two producer replacements.
const MIN_RESTART_INTERVAL: Duration = Duration::from_secs(5);

/// How long after a replacement the operations that had records in flight on the old producer
/// are published once more (the old producer's connections are closed by then, and a request
/// a broker had already read is long written).
const RECONFIRM_AFTER: Duration = Duration::from_secs(10);

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
            gate: None,
            recheck: Arc::new(Notify::new()),
            in_flight: HashMap::new(),
            deliveries: FuturesUnordered::new(),
            restart: None,
            last_restart: None,
            last_gauges: None,
            last_ack: None,
            in_flight_since: None,
            reconfirm: Vec::new(),
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

    /// Cluster mode: publish only the operations whose partition `ownership` says is live here
    /// (the others stay marked until it is, or are forgotten when their partition moves).
    pub fn gate_by(&mut self, ownership: Arc<crate::cluster::Ownership>) {
        self.gate = Some(ownership);
    }

    /// The status shown by `/healthz/details`.
    pub fn status(&self) -> Arc<KafkaStatus> {
        self.status.clone()
    }

    /// Start the topic set-up and the flush loop on the current runtime.
    pub fn start(self) -> PublisherHandle {
        let (tx, rx) = oneshot::channel();
        let setup = tokio::spawn(topics::topic_setup(
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
                    self.watch_for_stall();
                    self.replace_producer_if_needed();
                    self.reconfirm_due();
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
        let (gate, now) = (self.gate.as_deref(), now_ms());
        if gate.is_some_and(|g| !g.folder_is_current(now)) {
            return;
        }
        let mut taken = dirty
            .take(
                |id| in_flight.contains_key(id) || gate.is_some_and(|g| !g.may_publish(id, now)),
                MAX_PER_ROUND,
            )
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
                    Err(failure) => {
                        self.count_failure(role, failure);
                        entry.failed = true;
                        queue_full = failure.is_queue_full();
                        if queue_full {
                            break;
                        }
                    }
                }
            }
            if entry.pending == 0 {
                dirty.restore(id, entry.change);
            } else {
                if self.in_flight.is_empty() {
                    self.in_flight_since = Some(Instant::now());
                }
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

    fn send(&mut self, role: Role, op: &str, rec: &Record) -> Result<(), Failure> {
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
            .map_err(|(e, _)| Failure::of(&e))?;
        let op = op.to_owned();
        self.deliveries.push(Box::pin(fut.map(move |r| Settled {
            op,
            role,
            result: match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(Failure::of(&e)),
                Err(_) => Err(Failure(None)),
            },
        })));
        Ok(())
    }

    fn count_failure(&self, role: Role, failure: Failure) {
        self.metrics
            .kafka
            .records_failed
            .with_label_values(&[role.as_str(), &failure.name()])
            .inc();
        if failure.0 == Some(RDKafkaErrorCode::MessageTimedOut) {
            self.status
                .records_timed_out
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A delivery report arrived: done when the operation's last record is settled; a failure
    /// puts the mark back so that its newest state goes out next round.
    fn settle(&mut self, s: Settled) {
        match s.result {
            Ok(()) => {
                self.metrics
                    .kafka
                    .records_delivered
                    .with_label_values(&[s.role.as_str()])
                    .inc();
                self.last_ack = Some(Instant::now());
                // An acknowledgement proves a connection, even with statistics turned off.
                if !self.status.broker_up() {
                    note_broker(&self.status, &self.metrics, true);
                }
            }
            Err(failure) => {
                self.count_failure(s.role, failure);
                tracing::debug!(reason = %failure.name(), topic = s.role.as_str(), "kafka: record not delivered; will publish again");
                if let Some(why) = failure.needs_new_producer() {
                    self.restart.get_or_insert(why);
                }
                if failure.is_unknown_topic() {
                    // The topic went away (a broker that lost its data): set it up again.
                    self.status.set_topic(
                        s.role.as_str(),
                        false,
                        Some(format!("produce: {}", failure.name())),
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
        if self.in_flight.is_empty() {
            self.in_flight_since = None;
        }
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

    /// Records in flight, a broker connected, and nothing acknowledged for
    /// `kafka.stall_timeout`: whatever wedged the producer, a new one starts clean.
    fn watch_for_stall(&mut self) {
        let Some(since) = self.in_flight_since else {
            return;
        };
        if !self.status.broker_up() {
            return;
        }
        // The clock starts at the latest of: records going in flight, the last acknowledgement,
        // the connection coming up (records queued during an outage are not a stall).
        let quiet_ms = [
            since.elapsed().as_millis() as u64,
            self.last_ack
                .map_or(u64::MAX, |a| a.elapsed().as_millis() as u64),
            self.status.up_for_ms(),
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        if quiet_ms >= self.settings.stall_timeout.as_millis() as u64 {
            self.restart.get_or_insert(Replace::Stalled);
        }
    }

    fn update_gauges(&mut self) {
        self.last_gauges = Some(Instant::now());
        let last_ack_age = self.last_ack.map_or(-1.0, |t| t.elapsed().as_secs_f64());
        self.metrics.kafka.last_ack_age.set(last_ack_age);
        self.status.last_ack_age_ms.store(
            self.last_ack
                .map_or(u64::MAX, |t| t.elapsed().as_millis() as u64),
            Ordering::Relaxed,
        );
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

    /// Replace the producer when librdkafka raised a fatal error, or a record failed in a way
    /// that the same producer cannot get past (timed out, fenced), or it stalled while
    /// connected; at most once per `MIN_RESTART_INTERVAL`. What the old producer still holds
    /// is purged: its operations are published again, with their newest state, by the new one,
    /// and once more after `RECONFIRM_AFTER`.
    fn replace_producer_if_needed(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(error = ?code, reason, "kafka: fatal producer error");
            self.status.set_error(format!("fatal: {code:?}: {reason}"));
            self.restart = Some(Replace::Fatal);
        }
        let Some(why) = self.restart else {
            return;
        };
        if self
            .last_restart
            .is_some_and(|t| t.elapsed() < MIN_RESTART_INTERVAL)
        {
            return;
        }
        if why == Replace::TimedOut && !self.status.broker_up() {
            // A new producer would reach no broker either: replace the one in hand the moment a
            // broker answers again, before it sends anything under its self-bumped epoch.
            return;
        }
        self.restart = None;
        self.last_restart = Some(Instant::now());
        let p = match Self::producer(&self.config, &self.status, &self.metrics) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "kafka: cannot start a new producer");
                return;
            }
        };
        let in_flight: Vec<String> = self.in_flight.keys().cloned().collect();
        tracing::warn!(
            reason = why.describe(),
            operations_in_flight = in_flight.len(),
            "kafka: starting a new producer; what the old one held is published again"
        );
        self.status.note_replacement(why.describe());
        self.metrics
            .kafka
            .producer_restarts
            .with_label_values(&[why.as_str()])
            .inc();
        let old = std::mem::replace(&mut self.producer, p);
        // Fail whatever the old producer still holds now, instead of waiting for its timeouts
        // (the delivery reports put the marks back; until they arrive those operations stay in
        // flight, so nothing of theirs goes out on the new producer yet), then destroy it. Both
        // wait for librdkafka's threads: not on this runtime's thread.
        tokio::task::spawn_blocking(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            drop(old);
        });
        if !in_flight.is_empty() {
            self.reconfirm
                .push((Instant::now() + RECONFIRM_AFTER, in_flight));
        }
    }

    /// Mark again the operations whose records were on a replaced producer, once their time
    /// has come.
    fn reconfirm_due(&mut self) {
        if self
            .reconfirm
            .first()
            .is_none_or(|(at, _)| *at > Instant::now())
        {
            return;
        }
        let Some(dirty) = self.agg.dirty() else {
            return;
        };
        let now = now_ms();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reconfirm)
            .into_iter()
            .partition(|(at, _)| *at <= Instant::now());
        self.reconfirm = later;
        for id in due.into_iter().flat_map(|(_, ids)| ids) {
            if self.agg.operation(&id).is_some() {
                dirty.mark(&id, None, now);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
