//! Topic set-up: each topic found, or created compacted, in the background.

use super::context::Context;
use super::status::KafkaStatus;
use super::Role;
use crate::config::KafkaSettings;
use crate::metrics::Metrics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Check that every topic exists, creating it when missing and allowed; retried with backoff
/// while it fails, re-checked every `topic_setup_retry` after, and at once whenever the flush
/// loop finds a topic gone. Never blocks callbacks.
pub(super) async fn topic_setup(
    settings: KafkaSettings,
    mut config: ClientConfig,
    status: Arc<KafkaStatus>,
    metrics: Arc<Metrics>,
    recheck: Arc<Notify>,
) {
    // Asking for a topic's metadata must not create it with the broker's defaults.
    config.set("allow.auto.create.topics", "false");
    // librdkafka's client delivers statistics and error events to a queue that an admin client
    // never reads (it reads only its own results): with statistics on, a long-lived admin client
    // would keep one statistics document a second for ever. Statistics off, and a new admin
    // client for each round of checks, dropped after it.
    config.set("statistics.interval.ms", "0");
    let mut topics = vec![(Role::Operations, settings.topic.clone())];
    if let Some(t) = &settings.resources_topic {
        topics.push((Role::Resources, t.clone()));
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(admin) = admin_client(&config, &status, &metrics) else {
            return;
        };
        let mut all_ready = true;
        for (role, name) in &topics {
            let was_ready = status_ready(&status, role.as_str());
            let result = match ensure_topic(&admin, name, &settings).await {
                // Not reaching the brokers says nothing about a topic already found: it stays
                // ready, so that publishing resumes the moment a broker answers instead of
                // after this loop's backoff. A topic that is really gone shows in the produce
                // errors, which ask for a check at once.
                Err(TopicProblem::Unreachable(why)) if was_ready => {
                    tracing::debug!(topic = %name, "kafka: topic re-check: {why}");
                    Ok("still assumed present (brokers unreachable)")
                }
                Err(p) => Err(p.to_string()),
                Ok(how) => Ok(how),
            };
            let ready = result.is_ok();
            metrics
                .kafka
                .topic_ready
                .with_label_values(&[role.as_str()])
                .set(ready as i64);
            match result {
                Ok(how) => {
                    tracing::debug!(topic = %name, "kafka: topic check: {how}");
                    if !was_ready {
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
        // Dropping it joins its polling thread: not on this runtime's thread.
        tokio::task::spawn_blocking(move || drop(admin));
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

/// A new admin client, or `None` (logged) when librdkafka refuses the configuration.
fn admin_client(
    config: &ClientConfig,
    status: &Arc<KafkaStatus>,
    metrics: &Arc<Metrics>,
) -> Option<Arc<AdminClient<Context>>> {
    let ctx = Context {
        status: status.clone(),
        metrics: metrics.clone(),
        producer: false,
    };
    match AdminClient::from_config_and_context(config, ctx) {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            tracing::error!(error = %e, "kafka: cannot create the admin client; topics are not checked");
            None
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

/// Why a topic check failed.
pub(crate) enum TopicProblem {
    /// No broker answered the metadata request.
    Unreachable(String),
    /// A broker answered: the topic is missing and cannot be created, or another error.
    Other(String),
}

impl std::fmt::Display for TopicProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicProblem::Unreachable(s) | TopicProblem::Other(s) => f.write_str(s),
        }
    }
}

/// The partition count of topic `name` as the brokers' metadata gives it: `None` when the topic
/// does not exist. Shared by the publisher's topics and the cluster's events topic.
pub(crate) async fn partition_count<C: ClientContext + 'static>(
    admin: &Arc<AdminClient<C>>,
    name: &str,
) -> Result<Option<usize>, TopicProblem> {
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
    .map_err(|e| TopicProblem::Other(format!("metadata task failed: {e}")))?
    .map_err(|e| TopicProblem::Unreachable(format!("cannot reach the brokers: {e}")))?;
    match found {
        Some((None, n)) if n > 0 => Ok(Some(n)),
        Some((Some(err), _))
            if RDKafkaErrorCode::from(err) != RDKafkaErrorCode::UnknownTopicOrPartition =>
        {
            Err(TopicProblem::Other(format!(
                "metadata: {:?}",
                RDKafkaErrorCode::from(err)
            )))
        }
        _ => Ok(None),
    }
}

/// Make sure `name` exists: found as is, or created (compacted) when allowed.
async fn ensure_topic(
    admin: &Arc<AdminClient<Context>>,
    name: &str,
    k: &KafkaSettings,
) -> Result<&'static str, TopicProblem> {
    if partition_count(admin, name).await?.is_some() {
        return Ok("found");
    }
    if !k.create_topics {
        return Err(TopicProblem::Other(
            "topic does not exist and kafka.create_topics is false".into(),
        ));
    }
    let replication = TopicReplication::Fixed(k.replication_factor);
    let new = NewTopic::new(name, k.partitions, replication).set("cleanup.policy", "compact");
    let opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| TopicProblem::Other(format!("create: {e}")))?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok("created (cleanup.policy=compact)"),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok("found"),
        Some(Err((_, code))) => Err(TopicProblem::Other(format!("create: {code:?}"))),
        None => Err(TopicProblem::Other("create: no result".into())),
    }
}
