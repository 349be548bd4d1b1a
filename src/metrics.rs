//! Every metric tally exports, declared once on tally's own registry: one line in
//! [`Metrics`] or [`KafkaMetrics`] gives its field, type, name, labels and doc comment, which is
//! also its Prometheus help text and its row in the README's table (`tally metrics-doc`
//! prints it; a test holds the README to it). To add a metric, add its line there and count it
//! where it happens.
//!
//! Labels are bounded: routes, outcomes, reasons, kinds, statuses and channels come from fixed
//! sets; no id, address or free text is ever a label value.
//!
//! Event accounting has no gap: every event received is counted once in
//! `tally_events_received_total` and once in exactly one of `tally_events_applied_total`,
//! `tally_events_noop_total` or `tally_events_rejected_total` (or, on a cluster's ingest
//! process, `tally_events_forwarded_total`), so at every scrape
//! `received = applied + noop + rejected + forwarded`.

use crate::aggregator::{Aggregator, Outcome};
use crate::event::{Event, EventBody, Kind, SkipReason};
use crate::journal::Journal;
use crate::recovery::Recovery;
use crate::rollup::{fallback, OperationStatus};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry, TextEncoder,
};

mod declare;
use std::sync::atomic::Ordering;

declare::metric_set! {
    /// tally's metrics and the registry that owns them.
    pub struct Metrics {
        registry: Registry,
        /// The Kafka publisher's metrics.
        pub kafka: KafkaMetrics,
        /// The reconciler's metrics.
        pub reconcile: ReconcileMetrics,
        /// `tally_memory_limit_bytes`: the memory limit of tally's cgroup (a container's or a
        /// systemd unit's), registered only when there is one; beside the standard
        /// `process_*` metrics (resident memory, CPU, open files) of the process collector.
        pub memory_limit: Option<IntGauge>,
    }
    metrics METRICS {
        /// tally's version, as the `version` label; always 1.
        build_info: IntGaugeVec = "tally_build_info" ["version"];
        /// Callback requests by route (`events`, `status`) and HTTP status code.
        callbacks: IntCounterVec = "tally_callbacks_total" ["route", "code"];
        /// Callback requests refused for their X-Twilio-Signature or bodySHA256, by route and
        /// reason.
        signature_failures: IntCounterVec = "tally_signature_failures_total" ["route", "reason"];
        /// Callback requests turned away before their handler ran, by route and reason
        /// (`source_not_allowed`, `overload`).
        callbacks_refused: IntCounterVec = "tally_callbacks_refused_total" ["route", "reason"];
        /// Callback requests being handled now (at most http.max_inflight_callbacks).
        callbacks_in_flight: IntGauge = "tally_callbacks_in_flight";
        /// HTTP request latency by route, in seconds.
        request_duration: HistogramVec = "tally_http_request_duration_seconds" ["route"]
            buckets [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ];
        /// Events received in verified callbacks (one per CloudEvent in a batch, one per form
        /// callback), by route.
        events_received: IntCounterVec = "tally_events_received_total" ["route"];
        /// Events that changed state, by kind (`unlinked` while held), status and channel.
        events_applied: IntCounterVec = "tally_events_applied_total" ["kind", "status", "channel"];
        /// Events that changed nothing (duplicates and stale statuses, harmless by design), by
        /// route.
        events_noop: IntCounterVec = "tally_events_noop_total" ["route"];
        /// Events skipped, by reason.
        events_rejected: IntCounterVec = "tally_events_rejected_total" ["reason"];
        /// Messages that got a new attempt on another channel, by channel pair, the richer
        /// channel first (rollup::fallback says how the pair is oriented).
        channel_fallbacks: IntCounterVec = "tally_channel_fallbacks_total" ["from", "to"];
        /// Applied attempt events carrying a Twilio error code, by kind, channel and code class
        /// (the code itself when it is one of COMMON_ERROR_CODES, else `other`).
        delivery_errors: IntCounterVec = "tally_delivery_errors_total"
            ["kind", "channel", "code_class"];
        /// Attempt events held until something links them to a resource.
        held_attempts: IntGauge = "tally_held_attempts";
        /// Held attempt events dropped over the count or age bound.
        held_dropped: IntCounter = "tally_held_attempts_dropped_total";
        /// Operations tracked, by kind and status.
        operations: IntGaugeVec = "tally_operations" ["kind", "status"];
        /// Resources (Messages, Emails, PushNotifications) tracked.
        resources: IntGauge = "tally_resources";
        /// Delivery attempts tracked.
        attempts: IntGauge = "tally_attempts";
        /// Operations forgotten, by reason (`ttl`: unchanged for retention.ttl; `capacity`: over
        /// retention.max_resources).
        operations_evicted: IntCounterVec = "tally_operations_evicted_total" ["reason"];
        /// Query API requests refused for missing or wrong credentials, or a non-loopback
        /// client, by reason.
        api_auth_failures: IntCounterVec = "tally_api_auth_failures_total" ["reason"];
        /// Journal records (one per accepted request) made durable.
        journal_records: IntCounter = "tally_journal_records_total";
        /// Journal bytes written.
        journal_bytes: IntCounter = "tally_journal_bytes_total";
        /// Journal write groups; each ends with one fdatasync under fsync = "batch".
        journal_groups: IntCounter = "tally_journal_groups_total";
        /// Journal write or sync failures (callbacks get 503 meanwhile).
        journal_errors: IntCounter = "tally_journal_write_errors_total";
        /// Snapshots written.
        journal_snapshots: IntCounter = "tally_journal_snapshots_total";
        /// Torn or corrupt journal tails found and truncated at recovery.
        journal_truncated_tails: IntCounter = "tally_journal_truncated_tails_total";
        /// 1 while the journal accepts writes (or no journal is configured), 0 while writes
        /// fail.
        journal_healthy: IntGauge = "tally_journal_healthy";
        /// Journal bytes written since the last snapshot.
        journal_bytes_since_snapshot: IntGauge = "tally_journal_bytes_since_snapshot";
        /// Journal fdatasync latency, in seconds.
        journal_fsync: Histogram = "tally_journal_fsync_seconds"
            buckets [
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0,
            ];
        /// 1 while start-up recovery replays the snapshot and journal (callbacks are accepted,
        /// the query API answers 503), else 0.
        recovery_in_progress: IntGauge = "tally_recovery_in_progress";
        /// Bytes of snapshot and journal replayed by start-up recovery so far.
        recovery_replayed_bytes: IntGauge = "tally_recovery_replayed_bytes";
        /// Bytes of snapshot and journal start-up recovery has to replay.
        recovery_total_bytes: IntGauge = "tally_recovery_total_bytes";
        /// Journal records replayed by start-up recovery so far.
        recovery_replayed_records: IntGauge = "tally_recovery_replayed_records";
        /// Events of callbacks accepted during start-up recovery, waiting for the replay to
        /// end.
        recovery_backlog_events: IntGauge = "tally_recovery_backlog_events";
        /// Time start-up recovery took (so far, while it runs), in seconds.
        recovery_duration: Gauge = "tally_recovery_duration_seconds";
        /// Cluster mode, ingest: events produced to the events topic and acknowledged by Kafka,
        /// by route (counted once each in `tally_events_received_total` too).
        events_forwarded: IntCounterVec = "tally_events_forwarded_total" ["route"];
        /// Cluster mode, aggregate: partitions of the events topic this process owns, by state
        /// (`restoring`, `live`).
        cluster_partitions: IntGaugeVec = "tally_cluster_partitions" ["state"];
        /// Cluster mode, aggregate: per owned partition, offsets between the position folded and
        /// the partition's end (the consumer lag); the label is the partition number, bounded by
        /// the events topic's fixed partition count.
        cluster_lag: IntGaugeVec = "tally_cluster_partition_lag" ["partition"];
        /// Cluster mode, aggregate: per owned partition, the share of its restore done (0–1; 1
        /// once live).
        cluster_restore_progress: GaugeVec = "tally_cluster_restore_progress_ratio" ["partition"];
        /// Cluster mode: partitions assigned to this process and revoked from it.
        cluster_rebalances: IntCounterVec = "tally_cluster_rebalances_total" ["change"];
        /// Cluster mode, aggregate: attempts that name no operation waiting on this process's
        /// partitions for their link (`attempts`), and links kept for attempts still to come
        /// (`links`).
        cluster_joins: IntGaugeVec = "tally_cluster_joins_waiting" ["what"];
        /// Cluster mode, aggregate: attempts waiting for their link dropped by the bounds
        /// (`ingest.max_held_attempts`, `ingest.held_ttl`).
        cluster_joins_dropped: IntCounter = "tally_cluster_joins_dropped_total";
        /// Cluster mode, aggregate: records this process produced to the events topic (link
        /// notices and joined attempts), by outcome (`sent`, `failed`).
        cluster_join_records: IntCounterVec = "tally_cluster_join_records_total" ["outcome"];
        /// Cluster mode, aggregate: records of the events topic served with offsets missing
        /// before them, by what was done: `reread` (the partition read again, from the first
        /// missing offset, then from its start) or `accepted` (still missing after both; alert
        /// TallyClusterOffsetsSkipped).
        cluster_offset_gaps: IntCounterVec = "tally_cluster_offset_gaps_total" ["outcome"];
        /// Cluster mode: queries forwarded to the process owning their operation, by outcome
        /// (`ok`, `error`, `no_owner`).
        cluster_forwarded: IntCounterVec = "tally_cluster_forwarded_queries_total" ["outcome"];
    }
}

declare::metric_set! {
    /// The Kafka publisher's metrics. The `topic` label is the topic's role (`operations`,
    /// `resources`), never its configured name; `reason` is a librdkafka error code name (a
    /// fixed set) or `evicted`.
    pub struct KafkaMetrics {}
    metrics KAFKA_METRICS {
        /// 1 when Kafka publishing is configured (kafka.brokers not empty), else 0.
        enabled: IntGauge = "tally_kafka_enabled";
        /// Records the broker acknowledged, by topic role.
        records_delivered: IntCounterVec = "tally_kafka_records_delivered_total" ["topic"];
        /// Records not acknowledged, by topic role and reason; their operations stay dirty and
        /// are published again with their latest state.
        records_failed: IntCounterVec = "tally_kafka_records_failed_total" ["topic", "reason"];
        /// Operations with a change not yet acknowledged by the broker (waiting or in flight).
        dirty_operations: IntGauge = "tally_kafka_dirty_operations";
        /// Operations with a record in flight to the broker (a part of the dirty ones).
        in_flight_operations: IntGauge = "tally_kafka_in_flight_operations";
        /// Age of the oldest change not yet acknowledged by the broker, in seconds (0 when
        /// none).
        oldest_unpublished_age: Gauge = "tally_kafka_oldest_unpublished_seconds";
        /// Time from an operation's first unpublished change to the broker's acknowledgement,
        /// in seconds.
        publish_delay: Histogram = "tally_kafka_publish_delay_seconds"
            buckets [
                0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ];
        /// 1 while the producer is connected to at least one broker, else 0.
        broker_up: IntGauge = "tally_kafka_broker_up";
        /// 1 once the topic is known to exist (found or created), else 0, by topic role.
        topic_ready: IntGaugeVec = "tally_kafka_topic_ready" ["topic"];
        /// Producer replacements, by reason: `fatal` (librdkafka's fatal error), `timed_out`
        /// (records timed out), `fenced` (the broker refused the producer id or epoch),
        /// `stalled` (no acknowledgement while connected for kafka.stall_timeout).
        producer_restarts: IntCounterVec = "tally_kafka_producer_restarts_total" ["reason"];
        /// Seconds since the broker last acknowledged a record (-1 before the first).
        last_ack_age: Gauge = "tally_kafka_last_ack_age_seconds";
    }
}

declare::metric_set! {
    /// The reconciler's metrics (docs/reconcile.md). What it reads is counted like callback
    /// events, on the route label `reconcile` of `tally_events_*`. `endpoint` is
    /// `list_operations`, `fetch_operation` or `list_resources`; `code` an HTTP status, or
    /// `timeout`, `error` (no answer), `stale` (a kept-alive connection the server had closed:
    /// made again at once on a new one) or `refused` (a next page outside api_base).
    pub struct ReconcileMetrics {}
    metrics RECONCILE_METRICS {
        /// Requests made to Twilio's API, by endpoint and outcome code.
        requests: IntCounterVec = "tally_reconcile_requests_total" ["endpoint", "code"];
        /// The request budget (reconcile.requests_per_second); 0 when reconciliation is off.
        budget: Gauge = "tally_reconcile_budget_requests_per_second";
        /// Operations being kept in step with Twilio.
        live_operations: IntGauge = "tally_reconcile_live_operations";
        /// Live operations whose last whole check still disagreed with Twilio.
        disagreeing_operations: IntGauge = "tally_reconcile_disagreeing_operations";
        /// Resources by which they disagree: Twilio's excess over tally, summed over statuses.
        disagreeing_resources: IntGauge = "tally_reconcile_disagreeing_resources";
        /// How long the oldest disagreement has lasted, in seconds (0 when none).
        oldest_disagreement_seconds: Gauge = "tally_reconcile_oldest_disagreement_seconds";
        /// Seconds left of the pause Twilio asked for (429) or failures imposed (0 when none).
        backoff_seconds: Gauge = "tally_reconcile_backoff_seconds";
    }
}

/// The README's metrics table, generated from the declarations above (`tally metrics-doc`).
pub fn markdown_table() -> String {
    declare::markdown_table(&[METRICS, KAFKA_METRICS, RECONCILE_METRICS])
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let kafka = KafkaMetrics::declare(&registry);
        let reconcile = ReconcileMetrics::declare(&registry);
        let memory_limit = cgroup_memory_limit(
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            std::path::Path::new("/sys/fs/cgroup"),
        )
        .map(|limit| {
            let g = IntGauge::new(
                "tally_memory_limit_bytes",
                "Memory limit of tally's cgroup (container or systemd unit), in bytes; absent without one",
            )
            .expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g.set(i64::try_from(limit).unwrap_or(i64::MAX));
            g
        });
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, …
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        let m = Metrics::declare(&registry, registry.clone(), kafka, reconcile, memory_limit);
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.journal_healthy.set(1);
        for reason in SkipReason::ALL {
            m.events_rejected.with_label_values(&[reason.as_str()]);
        }
        for route in ["events", "status", "reconcile", "events_topic"] {
            m.events_received.with_label_values(&[route]);
            m.events_noop.with_label_values(&[route]);
        }
        for route in ["events", "status", "events_topic"] {
            m.events_forwarded.with_label_values(&[route]);
        }
        for state in ["restoring", "live"] {
            m.cluster_partitions.with_label_values(&[state]);
        }
        for change in ["assigned", "revoked"] {
            m.cluster_rebalances.with_label_values(&[change]);
        }
        for what in ["attempts", "links"] {
            m.cluster_joins.with_label_values(&[what]);
        }
        for outcome in ["sent", "failed"] {
            m.cluster_join_records.with_label_values(&[outcome]);
        }
        for outcome in ["reread", "accepted"] {
            m.cluster_offset_gaps.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "error", "no_owner"] {
            m.cluster_forwarded.with_label_values(&[outcome]);
        }
        for route in ["events", "status"] {
            for reason in ["source_not_allowed", "overload"] {
                m.callbacks_refused.with_label_values(&[route, reason]);
            }
        }
        for f in fallback::all_pairs() {
            m.channel_fallbacks
                .with_label_values(&[f.from.as_str(), f.to.as_str()]);
        }
        for reason in ["fatal", "timed_out", "fenced", "stalled"] {
            m.kafka.producer_restarts.with_label_values(&[reason]);
        }
        m.kafka.last_ack_age.set(-1.0);
        for topic in ["operations", "resources"] {
            m.kafka.records_delivered.with_label_values(&[topic]);
        }
        m
    }

    /// Counts of `route`'s events, added up here and to the counters when dropped: one label
    /// lookup per distinct set of labels in a request, not two or three per event.
    pub fn event_counts<'m>(&'m self, route: &'m str) -> EventCounts<'m> {
        EventCounts {
            metrics: self,
            route,
            received: 0,
            noop: 0,
            labelled: Vec::new(),
        }
    }

    /// Count `n` events of `route` produced to the events topic (cluster mode, ingest).
    pub fn count_forwarded(&self, route: &str, n: u64) {
        self.events_received.with_label_values(&[route]).inc_by(n);
        self.events_forwarded.with_label_values(&[route]).inc_by(n);
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

/// One counter's labels, among the counts of [`EventCounts`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// `tally_events_applied_total`: kind, status, channel.
    Applied([&'static str; 3]),
    /// `tally_delivery_errors_total`: kind, channel, error code class.
    DeliveryError([&'static str; 3]),
    /// `tally_events_rejected_total`: reason.
    Rejected(&'static str),
}

/// The event counters' increments of one request (see [`Metrics::event_counts`]).
pub struct EventCounts<'m> {
    metrics: &'m Metrics,
    route: &'m str,
    received: u64,
    noop: u64,
    /// Few distinct label sets in a request: a short list searched in order.
    labelled: Vec<(Counted, u64)>,
}

impl EventCounts<'_> {
    /// Count one event (or one skipped at decoding) and what applying it did.
    pub fn add(&mut self, ev: Result<&Event, SkipReason>, outcome: Outcome) {
        self.received += 1;
        match outcome {
            Outcome::Applied(kind) => self.applied(kind.as_str(), ev),
            Outcome::Held => self.applied("unlinked", ev),
            Outcome::Noop => self.noop += 1,
            Outcome::Rejected(reason) => self.bump(Counted::Rejected(reason.as_str())),
        }
    }

    fn applied(&mut self, kind: &'static str, ev: Result<&Event, SkipReason>) {
        let (status, channel) = labels_of(ev);
        self.bump(Counted::Applied([kind, status, channel]));
        if let Ok(Event {
            body: EventBody::Attempt(a),
            ..
        }) = ev
        {
            if let Some(code) = a.error_code {
                self.bump(Counted::DeliveryError([kind, channel, code_class(code)]));
            }
        }
    }

    fn bump(&mut self, counted: Counted) {
        match self.labelled.iter_mut().find(|(c, _)| *c == counted) {
            Some((_, n)) => *n += 1,
            None => self.labelled.push((counted, 1)),
        }
    }
}

impl Drop for EventCounts<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        if self.received > 0 {
            m.events_received
                .with_label_values(&[self.route])
                .inc_by(self.received);
        }
        if self.noop > 0 {
            m.events_noop
                .with_label_values(&[self.route])
                .inc_by(self.noop);
        }
        for (counted, n) in self.labelled.drain(..) {
            let (counter, labels): (_, &[&str]) = match &counted {
                Counted::Applied(l) => (&m.events_applied, l),
                Counted::DeliveryError(l) => (&m.delivery_errors, l),
                Counted::Rejected(reason) => (&m.events_rejected, std::slice::from_ref(reason)),
            };
            counter.with_label_values(labels).inc_by(n);
        }
    }
}

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
        Ok(EventBody::ResourceRead(r)) => (r.status.as_str(), "none"),
        Ok(EventBody::OperationRead(_)) => ("operation_read", "none"),
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

    /// The README's table between its two markers.
    fn readme_table() -> &'static str {
        let readme = include_str!("../README.md");
        let start = readme
            .find("src/metrics.rs. -->\n")
            .map(|at| at + "src/metrics.rs. -->\n".len())
            .expect("the README marks where its metrics table starts");
        let end = readme
            .find("<!-- end of the generated metrics table -->")
            .expect("the README marks where its metrics table ends");
        &readme[start..end]
    }

    #[test]
    fn the_readme_metrics_table_is_the_one_generated_from_the_declarations() {
        let generated = markdown_table();
        let readme = readme_table();
        if readme != generated {
            let only = |a: &str, b: &str| -> Vec<String> {
                a.lines()
                    .filter(|l| !b.lines().any(|m| m == *l))
                    .map(|l| format!("    {l}"))
                    .collect()
            };
            panic!(
                "README.md's metrics table differs from src/metrics.rs: replace it with the \
                 output of `tally metrics-doc`.\n  only in README.md:\n{}\n  only in the \
                 declarations:\n{}",
                only(readme, &generated).join("\n"),
                only(&generated, readme).join("\n")
            );
        }
    }

    #[test]
    fn every_family_exported_is_declared_once_with_its_help() {
        let metrics = Metrics::new();
        // A labelled family shows once it has a series: give every one a series first.
        metrics.callbacks.with_label_values(&["status", "200"]);
        metrics
            .signature_failures
            .with_label_values(&["status", "mismatch"]);
        metrics
            .events_applied
            .with_label_values(&["messages", "sent", "sms"]);
        metrics
            .delivery_errors
            .with_label_values(&["messages", "sms", "other"]);
        metrics
            .operations
            .with_label_values(&["messages", "PROCESSING"]);
        metrics.operations_evicted.with_label_values(&["ttl"]);
        metrics.api_auth_failures.with_label_values(&["missing"]);
        metrics
            .request_duration
            .with_label_values(&["status"])
            .observe(0.1);
        metrics
            .kafka
            .records_failed
            .with_label_values(&["operations", "evicted"]);
        metrics.kafka.topic_ready.with_label_values(&["operations"]);
        metrics.cluster_lag.with_label_values(&["0"]);
        metrics.cluster_restore_progress.with_label_values(&["0"]);
        metrics
            .reconcile
            .requests
            .with_label_values(&["fetch_operation", "200"]);
        // The process collector's `process_*` and the cgroup memory limit are outside the
        // declarations (the README names them below the table).
        let families: Vec<_> = metrics
            .registry
            .gather()
            .into_iter()
            .filter(|f| !f.name().starts_with("process_") && f.name() != "tally_memory_limit_bytes")
            .collect();
        let declared: Vec<&declare::MetricSpec> = METRICS
            .iter()
            .chain(KAFKA_METRICS)
            .chain(RECONCILE_METRICS)
            .collect();
        assert_eq!(families.len(), declared.len());
        for family in &families {
            let spec = declared
                .iter()
                .find(|s| s.name == family.name())
                .unwrap_or_else(|| panic!("{} is not in the tables", family.name()));
            assert_eq!(family.help(), spec.help(), "{}", spec.name);
        }
        let mut names: Vec<&str> = declared.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), declared.len(), "a name declared twice");
        assert!(declared.iter().all(|s| s.name.starts_with("tally_")));
    }

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
