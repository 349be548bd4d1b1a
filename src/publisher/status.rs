//! What the publisher is doing, for `/healthz/details` and the gauges.

use super::now_ms;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What one topic's set-up found.
#[derive(Debug, Clone, Serialize)]
pub(super) struct TopicState {
    pub(super) name: String,
    pub(super) role: &'static str,
    pub(super) ready: bool,
    pub(super) problem: Option<String>,
}

/// What the publisher is doing, for `/healthz/details` (never for readiness: callbacks keep
/// flowing whatever Kafka does).
#[derive(Debug)]
pub struct KafkaStatus {
    enabled: bool,
    pub(super) broker_up: AtomicBool,
    pub(super) dirty: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) oldest_ms: AtomicU64,
    /// Milliseconds since the broker last acknowledged a record; `u64::MAX` before the first.
    pub(super) last_ack_age_ms: AtomicU64,
    /// When the producer lost its last broker connection (Unix ms), 0 while connected.
    pub(super) down_since_ms: AtomicU64,
    /// When the producer's broker connection last came up (Unix ms), 0 while down.
    pub(super) up_since_ms: AtomicU64,
    pub(super) records_timed_out: AtomicU64,
    replacements: AtomicU64,
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
pub(super) struct StatusInner {
    pub(super) topics: Vec<TopicState>,
    last_error: Option<String>,
    last_replacement: Option<(String, u64)>,
}

impl KafkaStatus {
    /// The status shown while publishing is off.
    pub fn disabled() -> KafkaStatus {
        KafkaStatus::new(false, Vec::new())
    }

    pub(super) fn new(enabled: bool, topics: Vec<TopicState>) -> KafkaStatus {
        KafkaStatus {
            enabled,
            broker_up: AtomicBool::new(false),
            dirty: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(0),
            last_ack_age_ms: AtomicU64::new(u64::MAX),
            down_since_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            records_timed_out: AtomicU64::new(0),
            replacements: AtomicU64::new(0),
            inner: Mutex::new(StatusInner {
                topics,
                last_error: None,
                last_replacement: None,
            }),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
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

    pub(super) fn set_topic(&self, role: &'static str, ready: bool, problem: Option<String>) {
        let mut inner = self.lock();
        if let Some(t) = inner.topics.iter_mut().find(|t| t.role == role) {
            t.ready = ready;
            t.problem = problem;
        }
    }

    pub(super) fn set_error(&self, e: String) {
        self.lock().last_error = Some(e);
    }

    /// How long the broker connection has been up, in ms (0 while down).
    pub(super) fn up_for_ms(&self) -> u64 {
        match self.up_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            t => now_ms().saturating_sub(t),
        }
    }

    /// A producer replacement, and why.
    pub(super) fn note_replacement(&self, why: &str) {
        self.replacements.fetch_add(1, Ordering::Relaxed);
        self.lock().last_replacement = Some((why.to_owned(), now_ms()));
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
        let secs = |ms: u64| ms as f64 / 1000.0;
        let down_since = self.down_since_ms.load(Ordering::Relaxed);
        let last_ack = self.last_ack_age_ms.load(Ordering::Relaxed);
        let last_replacement = inner.last_replacement.as_ref().map(|(why, at)| {
            serde_json::json!({"reason": why, "agoSeconds": secs(now_ms().saturating_sub(*at))})
        });
        serde_json::json!({
            "enabled": true,
            "brokerUp": self.broker_up(),
            "brokerDownForSeconds": (down_since != 0).then(|| secs(now_ms().saturating_sub(down_since))),
            "lastAcknowledgementAgeSeconds": (last_ack != u64::MAX).then(|| secs(last_ack)),
            "recordsTimedOut": self.records_timed_out.load(Ordering::Relaxed),
            "producerReplacements": self.replacements.load(Ordering::Relaxed),
            "lastProducerReplacement": last_replacement,
            "topics": inner.topics,
            "dirtyOperations": self.dirty.load(Ordering::Relaxed),
            "inFlightOperations": self.in_flight.load(Ordering::Relaxed),
            "oldestUnpublishedChangeAgeSeconds": age,
            "lastError": inner.last_error,
        })
    }
}
