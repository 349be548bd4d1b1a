//! librdkafka's callbacks: broker connection state from its statistics and errors, its log
//! lines to tracing.

use super::now_ms;
use super::status::KafkaStatus;
use crate::metrics::Metrics;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// librdkafka callbacks: broker state from its statistics and errors, its log lines to tracing.
pub(super) struct Context {
    pub(super) status: Arc<KafkaStatus>,
    pub(super) metrics: Arc<Metrics>,
    /// The producer reports broker state; the admin client only logs, quietly.
    pub(super) producer: bool,
}

impl Context {
    fn set_broker_up(&self, up: bool) {
        if self.producer {
            note_broker(&self.status, &self.metrics, up);
        }
    }
}

/// Record the producer's broker connection state, logging each change once.
pub(super) fn note_broker(status: &KafkaStatus, metrics: &Metrics, up: bool) {
    metrics.kafka.broker_up.set(up as i64);
    if status.broker_up.swap(up, Ordering::Relaxed) != up {
        if up {
            status.up_since_ms.store(now_ms(), Ordering::Relaxed);
            let since = status.down_since_ms.swap(0, Ordering::Relaxed);
            if since == 0 {
                tracing::info!("kafka: connected to the brokers");
            } else {
                let outage_s = now_ms().saturating_sub(since) as f64 / 1000.0;
                tracing::info!(outage_s, "kafka: connected to the brokers again");
            }
        } else {
            status.up_since_ms.store(0, Ordering::Relaxed);
            status.down_since_ms.store(now_ms(), Ordering::Relaxed);
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
