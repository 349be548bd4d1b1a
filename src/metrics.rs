//! Every metric tally exports, declared once with its doc line, on tally's own registry.
//!
//! Labels are bounded: routes, outcomes, reasons, kinds, statuses and channels come from fixed
//! sets; no id, address or free text is ever a label value.
//!
//! Event accounting has no gap: every event received is counted once in
//! `tally_events_received_total` and once in exactly one of `tally_events_applied_total`,
//! `tally_events_noop_total` or `tally_events_rejected_total`, so at every scrape
//! `received = applied + noop + rejected`.

use crate::aggregator::{Aggregator, Outcome};
use crate::event::{Event, EventBody, Kind, SkipReason};
use crate::journal::Journal;
use crate::recovery::Recovery;
use crate::rollup::{fallback, OperationStatus};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;

/// tally's metrics and the registry that owns them.
pub struct Metrics {
    registry: Registry,
    /// Callback requests by route (`events`, `status`) and HTTP status code.
    pub callbacks: IntCounterVec,
    /// Rejected signatures by route and reason.
    pub signature_failures: IntCounterVec,
    /// Callback requests turned away before their handler ran, by route and reason
    /// (`source_not_allowed`, `overload`).
    pub callbacks_refused: IntCounterVec,
    /// Callback requests being handled now (bounded by http.max_inflight_callbacks).
    pub callbacks_in_flight: IntGauge,
    /// HTTP request latency by route, in seconds.
    pub request_duration: HistogramVec,
    /// Events received (one per CloudEvent in a batch, one per form callback), by route.
    pub events_received: IntCounterVec,
    /// Events that changed state, by kind (`unlinked` while held), status and channel.
    pub events_applied: IntCounterVec,
    /// Events that changed nothing (duplicates, stale statuses): harmless by design.
    pub events_noop: IntCounterVec,
    /// Events skipped, by reason.
    pub events_rejected: IntCounterVec,
    /// Messages that got a new attempt on another channel, by channel pair (see
    /// `rollup::fallback` for how the pair is oriented).
    pub channel_fallbacks: IntCounterVec,
    /// Applied attempt events that carry a Twilio error code, by kind, channel and code class
    /// (the code itself when it is one of [`COMMON_ERROR_CODES`], else `other`).
    pub delivery_errors: IntCounterVec,
    /// Attempt events held until something links them to a resource.
    pub held_attempts: IntGauge,
    /// Held attempt events dropped over the count or age bound.
    pub held_dropped: IntCounter,
    /// Operations tracked, by kind and status.
    pub operations: IntGaugeVec,
    /// Resources (Messages, Emails, PushNotifications) tracked.
    pub resources: IntGauge,
    /// Delivery attempts tracked.
    pub attempts: IntGauge,
    /// Operations forgotten, by reason (`ttl`: unchanged for retention.ttl; `capacity`: over
    /// retention.max_resources).
    pub operations_evicted: IntCounterVec,
    /// Query API requests refused for missing or wrong credentials, or a non-loopback client.
    pub api_auth_failures: IntCounterVec,
    /// The Kafka publisher's metrics.
    pub kafka: KafkaMetrics,
    /// Journal records (one per accepted request) made durable.
    pub journal_records: IntCounter,
    /// Journal bytes written.
    pub journal_bytes: IntCounter,
    /// Journal write groups (each ends with one fdatasync under `fsync = "batch"`).
    pub journal_groups: IntCounter,
    /// Journal write or sync failures.
    pub journal_errors: IntCounter,
    /// Snapshots written.
    pub journal_snapshots: IntCounter,
    /// Torn or corrupt journal tails found and truncated at recovery.
    pub journal_truncated_tails: IntCounter,
    /// 1 while the journal accepts writes, 0 while they fail.
    pub journal_healthy: IntGauge,
    /// Journal bytes written since the last snapshot.
    pub journal_bytes_since_snapshot: IntGauge,
    /// Journal fdatasync latency in seconds.
    pub journal_fsync: prometheus::Histogram,
    /// Start-up recovery: 1 while the snapshot and journal are replayed, else 0.
    pub recovery_in_progress: IntGauge,
    /// Bytes of snapshot and journal replayed by start-up recovery so far.
    pub recovery_replayed_bytes: IntGauge,
    /// Bytes of snapshot and journal start-up recovery has to replay.
    pub recovery_total_bytes: IntGauge,
    /// Journal records replayed by start-up recovery so far.
    pub recovery_replayed_records: IntGauge,
    /// Events of callbacks accepted during recovery, waiting for the replay to end.
    pub recovery_backlog_events: IntGauge,
    /// Time start-up recovery has taken (so far, while it runs).
    pub recovery_duration: Gauge,
    /// The memory limit of tally's cgroup (a container's or a systemd unit's), when it has one;
    /// beside the standard `process_*` metrics (resident memory, CPU, open files).
    pub memory_limit: Option<IntGauge>,
}

/// The Kafka publisher's metrics. The `topic` label is the topic's role (`operations`,
/// `resources`), never its configured name; `reason` is a librdkafka error code name (a fixed
/// enum) or `evicted`.
pub struct KafkaMetrics {
    /// 1 when publishing is configured (kafka.brokers not empty), else 0.
    pub enabled: IntGauge,
    /// Records the broker acknowledged, by topic.
    pub records_delivered: IntCounterVec,
    /// Records not acknowledged, by topic and reason; their operations stay dirty and are
    /// published again with their latest state.
    pub records_failed: IntCounterVec,
    /// Operations with a change not yet acknowledged by the broker (waiting or in flight).
    pub dirty_operations: IntGauge,
    /// Of those, operations with a record in flight.
    pub in_flight_operations: IntGauge,
    /// Age of the oldest change not yet acknowledged by the broker, in seconds (0 when none).
    pub oldest_unpublished_age: Gauge,
    /// Time from an operation's first unpublished change to the broker's acknowledgement.
    pub publish_delay: Histogram,
    /// 1 while the producer has a connection up to at least one broker, else 0.
    pub broker_up: IntGauge,
    /// 1 once the topic is known to exist (found or created), else 0, by topic.
    pub topic_ready: IntGaugeVec,
    /// Producer replacements, by reason: `fatal` (librdkafka's fatal error), `timed_out`
    /// (records timed out), `fenced` (the broker refused the producer id or epoch), `stalled`
    /// (no acknowledgement while connected for `kafka.stall_timeout`).
    pub producer_restarts: IntCounterVec,
    /// Seconds since the broker last acknowledged a record (-1 before the first).
    pub last_ack_age: Gauge,
}

impl KafkaMetrics {
    fn new(r: &Registry) -> KafkaMetrics {
        let publish_delay = Histogram::with_opts(
            HistogramOpts::new(
                "tally_kafka_publish_delay_seconds",
                "Time from an operation's first unpublished change to the broker's acknowledgement",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(publish_delay.clone()))
            .expect("registered once");
        let oldest_unpublished_age = Gauge::new(
            "tally_kafka_oldest_unpublished_seconds",
            "Age of the oldest change not yet acknowledged by the broker (0 when none)",
        )
        .expect("valid metric");
        r.register(Box::new(oldest_unpublished_age.clone()))
            .expect("registered once");
        let last_ack_age = Gauge::new(
            "tally_kafka_last_ack_age_seconds",
            "Seconds since the broker last acknowledged a record (-1 before the first)",
        )
        .expect("valid metric");
        r.register(Box::new(last_ack_age.clone()))
            .expect("registered once");
        let topic_ready = IntGaugeVec::new(
            Opts::new(
                "tally_kafka_topic_ready",
                "1 once the topic is known to exist (found or created), by topic role",
            ),
            &["topic"],
        )
        .expect("valid metric");
        r.register(Box::new(topic_ready.clone()))
            .expect("registered once");
        let m = KafkaMetrics {
            enabled: gauge(
                r,
                "tally_kafka_enabled",
                "1 when Kafka publishing is configured, else 0",
            ),
            records_delivered: counter_vec(
                r,
                "tally_kafka_records_delivered_total",
                "Records the broker acknowledged, by topic role",
                &["topic"],
            ),
            records_failed: counter_vec(
                r,
                "tally_kafka_records_failed_total",
                "Records not acknowledged (their operations are published again), by topic role and reason",
                &["topic", "reason"],
            ),
            dirty_operations: gauge(
                r,
                "tally_kafka_dirty_operations",
                "Operations with a change not yet acknowledged by the broker",
            ),
            in_flight_operations: gauge(
                r,
                "tally_kafka_in_flight_operations",
                "Operations with a record in flight to the broker",
            ),
            oldest_unpublished_age,
            publish_delay,
            broker_up: gauge(
                r,
                "tally_kafka_broker_up",
                "1 while the producer is connected to at least one broker",
            ),
            topic_ready,
            producer_restarts: counter_vec(
                r,
                "tally_kafka_producer_restarts_total",
                "Producer replacements, by reason (fatal, timed_out, fenced, stalled)",
                &["reason"],
            ),
            last_ack_age,
        };
        for reason in ["fatal", "timed_out", "fenced", "stalled"] {
            m.producer_restarts.with_label_values(&[reason]);
        }
        for topic in ["operations", "resources"] {
            m.records_delivered.with_label_values(&[topic]);
        }
        m
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("tally_build_info", "tally's version; always 1"),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone()))
            .expect("registered once");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tally_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        r.register(Box::new(request_duration.clone()))
            .expect("registered once");
        let operations = IntGaugeVec::new(
            Opts::new("tally_operations", "Operations tracked, by kind and status"),
            &["kind", "status"],
        )
        .expect("valid metric");
        r.register(Box::new(operations.clone()))
            .expect("registered once");
        let m = Metrics {
            callbacks: counter_vec(
                &r,
                "tally_callbacks_total",
                "Callback requests by route and HTTP status code",
                &["route", "code"],
            ),
            signature_failures: counter_vec(
                &r,
                "tally_signature_failures_total",
                "Callback requests refused for their X-Twilio-Signature or bodySHA256, by reason",
                &["route", "reason"],
            ),
            callbacks_refused: counter_vec(
                &r,
                "tally_callbacks_refused_total",
                "Callback requests turned away before their handler ran, by route and reason",
                &["route", "reason"],
            ),
            callbacks_in_flight: gauge(
                &r,
                "tally_callbacks_in_flight",
                "Callback requests being handled now (at most http.max_inflight_callbacks)",
            ),
            request_duration,
            events_received: counter_vec(
                &r,
                "tally_events_received_total",
                "Events received in verified callbacks, by route",
                &["route"],
            ),
            events_applied: counter_vec(
                &r,
                "tally_events_applied_total",
                "Events that changed state, by kind, status and channel",
                &["kind", "status", "channel"],
            ),
            events_noop: counter_vec(
                &r,
                "tally_events_noop_total",
                "Events that changed nothing (duplicates and stale statuses), by route",
                &["route"],
            ),
            events_rejected: counter_vec(
                &r,
                "tally_events_rejected_total",
                "Events skipped, by reason",
                &["reason"],
            ),
            channel_fallbacks: counter_vec(
                &r,
                "tally_channel_fallbacks_total",
                "Messages that got a new attempt on another channel, by channel pair (richer channel first)",
                &["from", "to"],
            ),
            delivery_errors: counter_vec(
                &r,
                "tally_delivery_errors_total",
                "Applied attempt events carrying a Twilio error code, by kind, channel and code class (common codes by number, the rest as other)",
                &["kind", "channel", "code_class"],
            ),
            held_attempts: gauge(
                &r,
                "tally_held_attempts",
                "Attempt events held until something links them to a resource",
            ),
            held_dropped: counter(
                &r,
                "tally_held_attempts_dropped_total",
                "Held attempt events dropped over the count or age bound",
            ),
            operations,
            resources: gauge(&r, "tally_resources", "Resources tracked"),
            attempts: gauge(&r, "tally_attempts", "Delivery attempts tracked"),
            operations_evicted: counter_vec(
                &r,
                "tally_operations_evicted_total",
                "Operations forgotten, by reason (ttl, capacity)",
                &["reason"],
            ),
            api_auth_failures: counter_vec(
                &r,
                "tally_api_auth_failures_total",
                "Query API requests refused, by reason",
                &["reason"],
            ),
            journal_records: counter(
                &r,
                "tally_journal_records_total",
                "Journal records (one per accepted request) made durable",
            ),
            journal_bytes: counter(&r, "tally_journal_bytes_total", "Journal bytes written"),
            journal_groups: counter(
                &r,
                "tally_journal_groups_total",
                "Journal write groups; each ends with one fdatasync under fsync=batch",
            ),
            journal_errors: counter(
                &r,
                "tally_journal_write_errors_total",
                "Journal write or sync failures (callbacks get 503 meanwhile)",
            ),
            journal_snapshots: counter(&r, "tally_journal_snapshots_total", "Snapshots written"),
            journal_truncated_tails: counter(
                &r,
                "tally_journal_truncated_tails_total",
                "Torn or corrupt journal tails found and truncated at recovery",
            ),
            journal_healthy: gauge(
                &r,
                "tally_journal_healthy",
                "1 while the journal accepts writes (or no journal is configured), 0 while writes fail",
            ),
            journal_bytes_since_snapshot: gauge(
                &r,
                "tally_journal_bytes_since_snapshot",
                "Journal bytes written since the last snapshot",
            ),
            journal_fsync: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "tally_journal_fsync_seconds",
                        "Journal fdatasync latency",
                    )
                    .buckets(vec![
                        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            recovery_in_progress: gauge(
                &r,
                "tally_recovery_in_progress",
                "1 while start-up recovery replays the snapshot and journal (callbacks are accepted, the query API answers 503), else 0",
            ),
            recovery_replayed_bytes: gauge(
                &r,
                "tally_recovery_replayed_bytes",
                "Bytes of snapshot and journal replayed by start-up recovery so far",
            ),
            recovery_total_bytes: gauge(
                &r,
                "tally_recovery_total_bytes",
                "Bytes of snapshot and journal start-up recovery has to replay",
            ),
            recovery_replayed_records: gauge(
                &r,
                "tally_recovery_replayed_records",
                "Journal records replayed by start-up recovery so far",
            ),
            recovery_backlog_events: gauge(
                &r,
                "tally_recovery_backlog_events",
                "Events of callbacks accepted during start-up recovery, waiting for the replay to end",
            ),
            recovery_duration: {
                let g = Gauge::new(
                    "tally_recovery_duration_seconds",
                    "Time start-up recovery took (so far, while it runs)",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            memory_limit: cgroup_memory_limit(
                &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
                std::path::Path::new("/sys/fs/cgroup"),
            )
            .map(|limit| {
                let g = gauge(
                    &r,
                    "tally_memory_limit_bytes",
                    "Memory limit of tally's cgroup (container or systemd unit), in bytes; absent without one",
                );
                g.set(i64::try_from(limit).unwrap_or(i64::MAX));
                g
            }),
            kafka: KafkaMetrics::new(&r),
            registry: r,
        };
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, …
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        m.journal_healthy.set(1);
        for reason in SkipReason::ALL {
            m.events_rejected.with_label_values(&[reason.as_str()]);
        }
        for route in ["events", "status"] {
            m.events_received.with_label_values(&[route]);
            m.events_noop.with_label_values(&[route]);
            for reason in ["source_not_allowed", "overload"] {
                m.callbacks_refused.with_label_values(&[route, reason]);
            }
        }
        for f in fallback::all_pairs() {
            m.channel_fallbacks
                .with_label_values(&[f.from.as_str(), f.to.as_str()]);
        }
        m
    }

    /// Count one event's outcome (see the module doc for the accounting rule).
    pub fn count_event(&self, route: &str, ev: Result<&Event, SkipReason>, outcome: Outcome) {
        self.events_received.with_label_values(&[route]).inc();
        match outcome {
            Outcome::Applied(kind) => self.count_applied(kind.as_str(), ev),
            Outcome::Held => self.count_applied("unlinked", ev),
            Outcome::Noop => self.events_noop.with_label_values(&[route]).inc(),
            Outcome::Rejected(reason) => self
                .events_rejected
                .with_label_values(&[reason.as_str()])
                .inc(),
        }
    }

    fn count_applied(&self, kind: &str, ev: Result<&Event, SkipReason>) {
        let (status, channel) = labels_of(ev);
        self.events_applied
            .with_label_values(&[kind, status, channel])
            .inc();
        if let Ok(Event {
            body: EventBody::Attempt(a),
            ..
        }) = ev
        {
            if let Some(code) = a.error_code {
                self.delivery_errors
                    .with_label_values(&[kind, channel, code_class(code)])
                    .inc();
            }
        }
    }

    /// Refresh the gauges that mirror the aggregator, then encode every metric.
    pub fn render(
        &self,
        agg: &Aggregator,
        journal: Option<&Journal>,
        recovery: &Recovery,
    ) -> String {
        if let Some(j) = journal {
            self.sync_journal(j);
        }
        self.sync_recovery(recovery);
        let census = agg.census();
        for kind in Kind::ALL {
            for status in OperationStatus::ALL {
                let n = census.operations.get(&(kind, status)).copied().unwrap_or(0);
                self.operations
                    .with_label_values(&[kind.as_str(), status.as_str()])
                    .set(n as i64);
            }
        }
        self.resources.set(census.resources as i64);
        self.attempts.set(census.attempts as i64);
        self.held_attempts.set(census.held as i64);
        // Fallbacks seen while replaying were counted by the process that received them:
        // start-up drops them once the replay ends, so they are not taken before.
        let fallbacks = if recovery.is_done() {
            agg.take_fallbacks()
        } else {
            Vec::new()
        };
        for (f, n) in fallbacks {
            self.channel_fallbacks
                .with_label_values(&[f.from.as_str(), f.to.as_str()])
                .inc_by(n);
        }
        sync_counter(&self.held_dropped, agg.held_dropped());
        sync_counter(
            &self.operations_evicted.with_label_values(&["ttl"]),
            agg.evicted_ttl(),
        );
        sync_counter(
            &self.operations_evicted.with_label_values(&["capacity"]),
            agg.evicted_capacity(),
        );
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    fn sync_recovery(&self, r: &Recovery) {
        let p = &r.progress;
        self.recovery_in_progress.set(i64::from(!r.is_done()));
        self.recovery_replayed_bytes
            .set(p.bytes.load(Ordering::Relaxed) as i64);
        self.recovery_total_bytes
            .set(p.total_bytes.load(Ordering::Relaxed) as i64);
        self.recovery_replayed_records
            .set(p.records.load(Ordering::Relaxed) as i64);
        self.recovery_backlog_events.set(r.backlog_events() as i64);
        self.recovery_duration.set(r.elapsed().as_secs_f64());
    }

    fn sync_journal(&self, j: &Journal) {
        let st = &j.stats;
        sync_counter(&self.journal_records, st.records.load(Ordering::Relaxed));
        sync_counter(&self.journal_bytes, st.bytes.load(Ordering::Relaxed));
        sync_counter(&self.journal_groups, st.groups.load(Ordering::Relaxed));
        sync_counter(&self.journal_errors, st.errors.load(Ordering::Relaxed));
        sync_counter(
            &self.journal_snapshots,
            st.snapshots.load(Ordering::Relaxed),
        );
        sync_counter(
            &self.journal_truncated_tails,
            st.truncated_tails.load(Ordering::Relaxed),
        );
        self.journal_bytes_since_snapshot
            .set(st.bytes_since_snapshot.load(Ordering::Relaxed) as i64);
        self.journal_healthy
            .set(if j.last_error().is_some() { 0 } else { 1 });
        let samples =
            std::mem::take(&mut *st.fsync_micros.lock().unwrap_or_else(|e| e.into_inner()));
        for us in samples {
            self.journal_fsync.observe(us as f64 / 1e6);
        }
    }
}

/// Twilio error codes common enough to get their own `code_class` label value; every other
/// code counts as `other`, so the label stays bounded. Messaging: queue overflow (30001),
/// unreachable, blocked, unknown or landline handsets and carrier filtering (30003–30008),
/// price and size limits, A2P 10DLC and toll-free registration (30022–30034), provider timeout
/// (30410), invalid or unsubscribed recipients (21211, 21408, 21610, 21614); WhatsApp: unknown
/// address, outside the 24-hour window, rate limits and Meta's own refusals (63003–63049).
pub const COMMON_ERROR_CODES: &[&str] = &[
    "21211", "21408", "21610", "21614", "30001", "30002", "30003", "30004", "30005", "30006",
    "30007", "30008", "30009", "30010", "30019", "30022", "30023", "30024", "30032", "30034",
    "30410", "63003", "63016", "63018", "63024", "63032", "63049",
];

/// The `code_class` label value of a Twilio error code: the code when it is common, else
/// `other`.
pub fn code_class(code: u32) -> &'static str {
    let code = code.to_string();
    COMMON_ERROR_CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("other")
}

/// The memory limit that applies to this process's cgroup, from `/proc/self/cgroup`'s text and
/// the cgroup file system mounted at `root`: the smallest limit set on its cgroup or any parent
/// (cgroup v2 `memory.max`, v1 `memory/…/memory.limit_in_bytes`). `None` when nothing limits it.
fn cgroup_memory_limit(proc_self_cgroup: &str, root: &std::path::Path) -> Option<u64> {
    // v1 reports "unlimited" as a huge page-aligned number.
    const UNLIMITED: u64 = 1 << 62;
    let read = |file: std::path::PathBuf| -> Option<u64> {
        let text = std::fs::read_to_string(file).ok()?;
        text.trim().parse::<u64>().ok().filter(|n| *n < UNLIMITED)
    };
    let mut best: Option<u64> = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (root.to_owned(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The cgroup and its parents; inside a container whose cgroup is its root, the path
        // may not exist under the mount, and the mount's own root is the container's cgroup.
        let rel = std::path::Path::new(path.trim_start_matches('/'));
        for dir in rel.ancestors() {
            if let Some(limit) = read(base.join(dir).join(file)) {
                best = Some(best.map_or(limit, |b| b.min(limit)));
            }
        }
    }
    best
}

/// Raise a counter to a total kept elsewhere.
fn sync_counter(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn labels_of(ev: Result<&Event, SkipReason>) -> (&'static str, &'static str) {
    match ev.map(|e| &e.body) {
        Ok(EventBody::Attempt(a)) => (
            a.status.as_str(),
            a.channel.map(|c| c.as_str()).unwrap_or("unknown"),
        ),
        Ok(EventBody::Operation { phase, .. }) => (
            match phase {
                crate::event::Phase::Scheduled => "operation_scheduled",
                crate::event::Phase::Processing => "operation_processing",
                crate::event::Phase::Completed => "operation_completed",
            },
            "none",
        ),
        Err(_) => ("unknown", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_error_codes_are_their_own_class_and_the_rest_are_other() {
        assert_eq!(code_class(30003), "30003");
        assert_eq!(code_class(63016), "63016");
        assert_eq!(code_class(30008), "30008");
        assert_eq!(code_class(12345), "other");
        assert_eq!(code_class(0), "other");
        assert_eq!(code_class(u32::MAX), "other");
    }

    #[test]
    fn the_memory_limit_is_the_smallest_on_the_cgroup_path_in_v2_and_v1_and_none_without() {
        let root = std::env::temp_dir().join(format!("tally-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |p: &str, v: &str| {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        };
        write("memory.max", "max\n");
        write("system.slice/memory.max", "8589934592\n");
        write("system.slice/tally.service/memory.max", "4294967296\n");
        write(
            "memory/docker/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write("memory/memory.limit_in_bytes", "2147483648\n");

        let v2 = cgroup_memory_limit("0::/system.slice/tally.service\n", &root);
        let v2_parent = cgroup_memory_limit("0::/system.slice\n", &root);
        let v2_none = cgroup_memory_limit("0::/\n", &root);
        let v1 = cgroup_memory_limit("4:cpu,cpuacct:/docker/abc\n7:memory:/docker/abc\n", &root);
        let v1_unlimited_leaf =
            cgroup_memory_limit("7:memory:/docker/abc\n", &root.join("nowhere"));

        assert_eq!(v2, Some(4 << 30));
        assert_eq!(v2_parent, Some(8 << 30));
        assert_eq!(v2_none, None, "\"max\" is no limit");
        assert_eq!(
            v1,
            Some(2 << 30),
            "the unlimited leaf defers to the mount's root"
        );
        assert_eq!(v1_unlimited_leaf, None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_common_code_list_is_sorted_unique_and_numeric() {
        let mut sorted = COMMON_ERROR_CODES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, COMMON_ERROR_CODES);
        assert!(COMMON_ERROR_CODES
            .iter()
            .all(|c| c.len() == 5 && c.parse::<u32>().is_ok()));
    }
}
