//! Where decoded events enter the state, for callbacks and the reconciler alike: made durable
//! in the journal first, then applied and counted on their route's label (docs/architecture.md,
//! "The data path").

use crate::aggregator::{Aggregator, Outcome};
use crate::event::{Event, SkipReason};
use crate::journal::{Journal, Record};
use crate::metrics::Metrics;
use crate::recovery::{Deferred, Recovery};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why events could not be taken in.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("cannot make the events durable right now: {0}")]
    Unavailable(String),
    /// Start-up recovery's backlog is full; retry after the given seconds.
    #[error("{message}")]
    Recovering { message: String, retry_after: u64 },
}

/// What a request's events did: a callback's 200 body, and the reconciler's tally of a read.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub received: u64,
    pub applied: u64,
    pub noop: u64,
    pub rejected: u64,
    /// Events journalled during start-up recovery, applied once the replay ends (shown only
    /// then): `received = applied + noop + rejected + deferred`.
    #[serde(skip_serializing_if = "is_zero")]
    pub deferred: u64,
    /// Cluster mode, ingest: events produced to the events topic and acknowledged by Kafka, to
    /// be folded by the aggregate processes (shown only then):
    /// `received = forwarded + rejected`.
    #[serde(skip_serializing_if = "is_zero")]
    pub forwarded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Summary {
    /// Count events skipped at decoding, at once (they are never journalled or forwarded).
    fn reject(&mut self, route: &str, skipped: Vec<SkipReason>, metrics: &Metrics) {
        let mut counts = metrics.event_counts(route);
        for reason in skipped {
            counts.add(Err(reason), Outcome::Rejected(reason));
            self.add(Outcome::Rejected(reason));
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.received += 1;
        match outcome {
            Outcome::Applied(_) | Outcome::Held => self.applied += 1,
            Outcome::Noop => self.noop += 1,
            Outcome::Rejected(_) => self.rejected += 1,
        }
    }
}

/// Decoded events and the reasons of those skipped, the events without recipient addresses
/// unless they are kept.
fn split(
    decoded: Vec<Result<Event, SkipReason>>,
    keep_recipients: bool,
) -> (Vec<Event>, Vec<SkipReason>) {
    let mut skipped = Vec::new();
    // Collected into the decoded list's own buffer (the two element types have one size).
    let events = decoded
        .into_iter()
        .filter_map(|d| match d {
            Ok(mut e) => {
                if !keep_recipients {
                    e.forget_recipient();
                }
                Some(e)
            }
            Err(reason) => {
                skipped.push(reason);
                None
            }
        })
        .collect();
    (events, skipped)
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Make the decoded events durable (when a journal is configured), then apply and count
/// them, or, while start-up recovery runs, leave them to be applied (and counted) when the
/// replay ends (docs/architecture.md, Recovery). Skipped events are counted at once; nothing
/// is counted for a request that gets 503, since Twilio sends it again.
pub async fn admit(
    route: &'static str,
    decoded: Vec<Result<Event, SkipReason>>,
    journal: Option<&Journal>,
    recovery: &Recovery,
    agg: &Aggregator,
    metrics: &Metrics,
) -> Result<Summary, AdmitError> {
    let now = now_ms();
    let (events, skipped) = split(decoded, agg.keeps_recipient_addresses());
    let record = Record {
        received_ms: now,
        events,
    };
    // Room in the recovery backlog, taken before the append so that a refused request leaves
    // nothing in the journal.
    let reservation = match journal {
        Some(_) if !record.events.is_empty() => recovery
            .reserve(record.events.len() as u64)
            .map_err(|e| AdmitError::Recovering {
                message: e.to_string(),
                retry_after: recovery.retry_after_secs(),
            })?,
        _ => None,
    };
    let _applying = match journal {
        Some(j) => {
            let applying = j.applying().await;
            if !record.events.is_empty() {
                j.append(&record)
                    .await
                    .map_err(|e| AdmitError::Unavailable(e.to_string()))?;
            }
            Some(applying)
        }
        None => None,
    };
    let mut summary = Summary::default();
    let record = match reservation {
        None => Some(record),
        Some(room) => {
            let n = record.events.len() as u64;
            let back = recovery.defer(room, Deferred { route, record });
            if back.is_none() {
                summary.received += n;
                summary.deferred += n;
            }
            back.map(|d| d.record)
        }
    };
    let mut counts = metrics.event_counts(route);
    for e in record.iter().flat_map(|r| &r.events) {
        let outcome = agg.apply(e, now);
        counts.add(Ok(e), outcome);
        summary.add(outcome);
    }
    drop(counts);
    drop(_applying);
    summary.reject(route, skipped, metrics);
    if agg.over_capacity() {
        agg.evict_to_capacity();
    }
    Ok(summary)
}

/// Cluster mode, ingest: produce the decoded events to the events topic and wait for Kafka's
/// acknowledgement (docs/cluster.md, "Ingest"). Nothing is applied here: the aggregate process
/// owning each event's partition folds it. Skipped events are counted at once; nothing is
/// counted for a request that gets 503, since Twilio sends it again.
pub async fn forward(
    route: &'static str,
    decoded: Vec<Result<Event, SkipReason>>,
    forwarder: &crate::cluster::ingest::Forwarder,
    keep_recipients: bool,
    metrics: &Metrics,
) -> Result<Summary, AdmitError> {
    let (events, skipped) = split(decoded, keep_recipients);
    let n = events.len() as u64;
    if n > 0 {
        forwarder
            .forward(now_ms(), events)
            .await
            .map_err(AdmitError::Unavailable)?;
        metrics.count_forwarded(route, n);
    }
    let mut summary = Summary {
        received: n,
        forwarded: n,
        ..Summary::default()
    };
    summary.reject(route, skipped, metrics);
    Ok(summary)
}
