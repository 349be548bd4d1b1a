//! The ingest role: a callback's decoded events are produced to the events topic, one record per
//! routing key on the partition tally computes for it, and the callback is answered 200 only
//! once Kafka acknowledged every one of them (docs/cluster.md, "Ingest").

use super::{partition_of, routing_key, Ownership, DEFAULT_EVENTS_PARTITIONS};
use crate::config::{ClusterSettings, KafkaSettings};
use crate::event::Event;
use crate::journal::{encode_record, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Produces callbacks' events to the events topic.
pub struct Forwarder {
    /// Replaced after a record timed out or the producer failed fatally: an idempotent producer
    /// goes on after a timeout only under an epoch it bumped itself, which not every broker
    /// accepts; a new one gets a fresh producer id.
    producer: std::sync::RwLock<(FutureProducer, Instant)>,
    config: ClientConfig,
    topic: String,
    ownership: Arc<Ownership>,
    timeout: Duration,
}

/// The librdkafka configuration of tally's clients in cluster mode: the brokers, then the
/// pass-through properties.
pub fn client_config(k: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("client.id", client_id);
    for (key, value) in &k.librdkafka.0 {
        c.set(key, value);
    }
    c
}

impl Forwarder {
    /// Build the producer; the events topic is found (or created) in the background by
    /// [`ensure_events_topic`], and callbacks get 503 until it is.
    pub fn new(
        k: &KafkaSettings,
        c: &ClusterSettings,
        ownership: Arc<Ownership>,
    ) -> anyhow::Result<Forwarder> {
        let mut config = client_config(k, &format!("{}-ingest", k.client_id));
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                c.produce_timeout.as_millis().max(1).to_string(),
            );
        let producer: FutureProducer = config
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create the events producer: {e}"))?;
        Ok(Forwarder {
            producer: std::sync::RwLock::new((producer, Instant::now())),
            config,
            topic: c.events_topic.clone(),
            ownership,
            timeout: c.produce_timeout,
        })
    }

    /// Produce `events` (received at `received_ms`), one record per routing key, and wait for
    /// every acknowledgement. Err: the reason to answer 503.
    pub async fn forward(&self, received_ms: u64, events: Vec<Event>) -> Result<(), String> {
        let n = self.ownership.partition_count();
        if n == 0 {
            return Err(format!(
                "the events topic {:?} is not known yet (brokers unreachable, or the topic is missing)",
                self.topic
            ));
        }
        let mut by_key: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for e in events {
            by_key
                .entry(routing_key(&e).to_owned())
                .or_default()
                .push(e);
        }
        let mut deliveries = Vec::with_capacity(by_key.len());
        for (key, events) in by_key {
            let payload = encode_record(&Record {
                received_ms,
                events,
            })
            .map_err(|e| e.to_string())?;
            let rec = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(&payload)
                .partition(partition_of(&key, n) as i32);
            let producer = self.producer();
            match producer.send_result(rec) {
                Ok(d) => deliveries.push(d),
                Err((e, _)) => return Err(format!("cannot queue the events: {e}")),
            }
        }
        let all = futures_util::future::join_all(deliveries);
        match tokio::time::timeout(self.timeout + Duration::from_millis(500), all).await {
            Err(_) => Err("Kafka did not acknowledge the events in time".into()),
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => {
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut)
                                || self.producer().client().fatal_error().is_some()
                            {
                                self.replace_producer();
                            }
                            return Err(format!("Kafka refused the events: {e}"));
                        }
                        Err(_) => return Err("the events producer went away".into()),
                    }
                }
                Ok(())
            }
        }
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// A new producer, at most one every 5 seconds.
    fn replace_producer(&self) {
        let mut p = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if p.1.elapsed() < Duration::from_secs(5) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(new) => {
                tracing::warn!("cluster: the events producer timed out or failed; replaced");
                *p = (new, Instant::now());
            }
            Err(e) => tracing::error!(error = %e, "cluster: cannot replace the events producer"),
        }
    }

    /// Wait for what is queued, within `budget` (shutdown).
    pub fn flush(&self, budget: Duration) {
        let _ = self.producer().flush(budget);
    }
}

/// Find the events topic (creating it when missing and `kafka.create_topics`), and note its
/// partition count; retried every few seconds until it succeeds. The partition count is read
/// once: it is fixed for the topic's life.
pub async fn ensure_events_topic(
    k: KafkaSettings,
    c: ClusterSettings,
    retention: Duration,
    ownership: Arc<Ownership>,
) {
    let mut wait = Duration::from_millis(200);
    loop {
        match find_or_create(&k, &c, retention).await {
            Ok(n) => {
                ownership.set_partition_count(n);
                tracing::info!(topic = %c.events_topic, partitions = n, "events topic ready");
                return;
            }
            Err(e) => {
                tracing::warn!(topic = %c.events_topic, error = %e, "events topic not ready; retrying");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

async fn find_or_create(
    k: &KafkaSettings,
    c: &ClusterSettings,
    retention: Duration,
) -> Result<u32, String> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        client_config(k, &format!("{}-admin", k.client_id))
            .create()
            .map_err(|e| format!("admin client: {e}"))?,
    );
    if let Some(n) = crate::publisher::partition_count(&admin, &c.events_topic)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(n as u32);
    }
    if !k.create_topics {
        return Err("the events topic does not exist and kafka.create_topics is false".into());
    }
    let partitions = if k.partitions > 0 {
        k.partitions
    } else {
        DEFAULT_EVENTS_PARTITIONS
    };
    // Kept longer than tally keeps an operation, so that a restore always finds every event of
    // every operation still held.
    let retention_ms = (retention + Duration::from_secs(86_400))
        .as_millis()
        .to_string();
    let new = NewTopic::new(
        &c.events_topic,
        partitions,
        TopicReplication::Fixed(k.replication_factor),
    )
    .set("cleanup.policy", "delete")
    .set("retention.ms", &retention_ms);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| format!("create: {e}"))?;
    match results.into_iter().next() {
        Some(Ok(_)) => {
            tracing::info!(topic = %c.events_topic, partitions, retention_ms, "events topic created");
            Err("created; reading its metadata next".into())
        }
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
            Err("created by another process; reading its metadata next".into())
        }
        Some(Err((_, code))) => Err(format!("create: {code:?}")),
        None => Err("create: no result".into()),
    }
}
