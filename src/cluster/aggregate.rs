//! The aggregate role: one member of the consumer group on the events topic. It folds the
//! partitions the group gives it into this process's aggregator; a newly assigned partition is
//! read from its start (restoring) up to where it ended at assignment, and only then is it live:
//! published and served. A revoked partition's operations are forgotten at once
//! (docs/cluster.md, "Aggregate").

use super::ingest::client_config;
use super::joins::{joined, link_of, Joins, Link};
use super::{partition_of, routing_key, Ownership, Partition};
use crate::aggregator::Aggregator;
use crate::aggregator::Outcome;
use crate::config::{ClusterSettings, KafkaSettings};
use crate::event::{AttemptEvent, Event, EventBody};
use crate::intake::now_ms;
use crate::journal::{decode_record, encode_record, Record};
use crate::metrics::{EventCounts, Metrics};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the rebalance callbacks need; they run inside `poll`, on the folder's thread.
pub struct FoldContext {
    topic: String,
    ownership: Arc<Ownership>,
    agg: Arc<Aggregator>,
    metrics: Arc<Metrics>,
    /// Partitions assigned whose end offset is still to be read (outside the callback).
    pending: Mutex<Vec<u32>>,
    /// Attempts that name no operation, and the links they wait for.
    joins: Mutex<Joins>,
    /// Produces link notices and joined attempts to the events topic.
    producer: ThreadedProducer<JoinContext>,
}

/// Counts what the folder's own producer delivered.
pub struct JoinContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for JoinContext {}

impl ProducerContext for JoinContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = match result {
            Ok(_) => "sent",
            Err((e, _)) => {
                tracing::warn!(error = %e, "cluster: a link notice or joined attempt was not delivered; the next restore of its partition sends it again");
                "failed"
            }
        };
        self.metrics
            .cluster_join_records
            .with_label_values(&[outcome])
            .inc();
    }
}

impl ClientContext for FoldContext {
    /// librdkafka's statistics give each partition's end as last fetched: the lag.
    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        let mut owned = self.ownership.write();
        for (p, s) in &topic.partitions {
            if let Some(part) = owned.get_mut(&(*p as u32)) {
                if s.hi_offset >= 0 {
                    part.end = s.hi_offset;
                }
            }
        }
    }
}

impl ConsumerContext for FoldContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts = partitions_of(tpl, &self.topic);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Every assigned partition is read from its start: this process's state for it
                // is rebuilt from the topic, whatever offset the group has committed.
                let mut from_start = TopicPartitionList::new();
                for e in tpl.elements() {
                    let _ = from_start.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Beginning,
                    );
                }
                let result = if cooperative {
                    consumer.incremental_assign(&from_start)
                } else {
                    consumer.assign(&from_start)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "cluster: cannot take the assigned partitions");
                    return;
                }
                self.assigned(&parts);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    // The group went on without this member (its session ran out while the
                    // broker or this process stalled); the client joins again by itself.
                    tracing::warn!("cluster: the group took this member's partitions away (session lost); the client joins again");
                }
                self.revoked(&parts);
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "cluster: cannot release the revoked partitions");
                }
            }
            other => tracing::error!(error = ?other, "cluster: rebalance error"),
        }
    }
}

/// The partitions of `topic` in `tpl`.
fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<u32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition() as u32)
        .collect()
}

impl FoldContext {
    fn assigned(&self, parts: &[u32]) {
        let now = now_ms();
        let mut owned = self.ownership.write();
        for &p in parts {
            owned.insert(
                p,
                Partition {
                    state: "restoring",
                    position: 0,
                    restore_to: None,
                    low: 0,
                    events: 0,
                    assigned_ms: now,
                    live_ms: None,
                    end: 0,
                },
            );
        }
        drop(owned);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(parts);
        self.metrics
            .cluster_rebalances
            .with_label_values(&["assigned"])
            .inc_by(parts.len() as u64);
        tracing::info!(partitions = ?parts, "cluster: partitions assigned; restoring them from the events topic");
    }

    fn revoked(&self, parts: &[u32]) {
        let mut owned = self.ownership.write();
        for p in parts {
            owned.remove(p);
            let _ = self
                .metrics
                .cluster_lag
                .remove_label_values(&[&p.to_string()]);
            let _ = self
                .metrics
                .cluster_restore_progress
                .remove_label_values(&[&p.to_string()]);
        }
        drop(owned);
        let n = self.ownership.partition_count();
        let gone = |key: &str| parts.contains(&partition_of(key, n));
        let forgotten = self.agg.forget_where(gone);
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget_where(gone);
        self.metrics
            .cluster_rebalances
            .with_label_values(&["revoked"])
            .inc_by(parts.len() as u64);
        tracing::info!(partitions = ?parts, operations = forgotten, "cluster: partitions revoked; their operations forgotten here");
    }

    /// Everything this process holds, forgotten: after a pause longer than the session timeout,
    /// the group has given its partitions to others.
    fn forget_all(&self) {
        let parts: Vec<u32> = self.ownership.read().keys().copied().collect();
        self.revoked(&parts);
    }
}

/// Runs the consumer on a thread of its own until `stop` is set.
pub struct Folder {
    consumer: BaseConsumer<FoldContext>,
    settings: ClusterSettings,
    /// When each partition's operations are published once more (the fence), by partition.
    fences: Vec<(Instant, u32)>,
    /// Per partition, the first offset found missing and how often it was read again.
    gaps: HashMap<u32, (i64, u32)>,
    fence_after: Duration,
    session_timeout: Duration,
}

impl Folder {
    pub fn new(
        k: &KafkaSettings,
        c: &ClusterSettings,
        ownership: Arc<Ownership>,
        agg: Arc<Aggregator>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Folder> {
        let url = c.advertise_url.clone().unwrap_or_default();
        // The client.id carries the advertised URL: the group's member list is how the other
        // processes find the owner of a partition (docs/cluster.md, "Queries").
        let mut config = client_config(k, &format!("{} {url}", k.client_id));
        for key in [
            "enable.idempotence",
            "acks",
            "message.timeout.ms",
            "linger.ms",
        ] {
            config.remove(key);
        }
        config
            .set("group.id", &c.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "1000");
        if k.librdkafka.get("partition.assignment.strategy").is_none() {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        // A caught-up folder waits at most this long for new events in one fetch: the end-to-end
        // latency from a callback to the operations topic (librdkafka's default is 500 ms).
        if k.librdkafka.get("fetch.wait.max.ms").is_none() {
            config.set("fetch.wait.max.ms", "20");
        }
        let ms = |key: &str, default: u64| {
            Duration::from_millis(
                k.librdkafka
                    .get(key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default),
            )
        };
        let mut produce = client_config(k, &format!("{}-joins", k.client_id));
        produce
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        let producer: ThreadedProducer<JoinContext> = produce
            .create_with_context(JoinContext {
                metrics: metrics.clone(),
            })
            .map_err(|e| anyhow::anyhow!("cannot create the folder's producer: {e}"))?;
        let limits = agg.limits();
        let ctx = FoldContext {
            topic: c.events_topic.clone(),
            ownership,
            agg,
            metrics,
            pending: Mutex::new(Vec::new()),
            joins: Mutex::new(Joins::new(limits.max_held, limits.held_ttl_ms)),
            producer,
        };
        let consumer: BaseConsumer<FoldContext> = config
            .create_with_context(ctx)
            .map_err(|e| anyhow::anyhow!("cannot create the events consumer: {e}"))?;
        Ok(Folder {
            consumer,
            settings: c.clone(),
            fences: Vec::new(),
            gaps: HashMap::new(),
            fence_after: ms("message.timeout.ms", 60_000) + c.fence_margin,
            session_timeout: ms("session.timeout.ms", 45_000),
        })
    }

    /// Start the folder's thread; it stops (leaving the group) once `stop` is set.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
        Ok(std::thread::Builder::new()
            .name("tally-cluster-fold".into())
            .spawn(move || {
                if let Err(e) = self.run(&stop) {
                    tracing::error!(error = %e, "cluster: the folder stopped");
                }
            })?)
    }

    fn ctx(&self) -> &FoldContext {
        self.consumer.context()
    }

    fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let topic = self.settings.events_topic.clone();
        // The partition count comes from the topic set-up; folding waits for it.
        while self.ctx().ownership.partition_count() == 0 {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.consumer.subscribe(&[&topic])?;
        let mut last_poll = Instant::now();
        let mut last_commit = Instant::now();
        let mut last_gauges = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now.duration_since(last_poll) > self.session_timeout {
                self.forget_after_pause(now.duration_since(last_poll));
            }
            last_poll = now;
            self.ctx().ownership.note_poll(now_ms());
            self.read_restore_targets();
            let live = match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition() as u32, m.offset());
                    let ctx = self.consumer.context();
                    let reread = gap(&ctx.ownership, &ctx.metrics, &mut self.gaps, p, offset)
                        .is_some_and(|from| self.reread(p, from, offset));
                    if reread {
                        None
                    } else {
                        fold(self.consumer.context(), p, offset, m.payload())
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cluster: consumer error");
                    None
                }
                None => None,
            };
            if let Some(p) = live {
                self.go_live(p);
            }
            self.fences_due();
            if last_commit.elapsed() >= self.settings.commit_interval {
                self.commit();
                last_commit = Instant::now();
            }
            if last_gauges.elapsed() >= Duration::from_millis(500) {
                self.follow_assignment(false);
                self.update_gauges();
                last_gauges = Instant::now();
            }
        }
        self.commit();
        let _ = self.ctx().producer.flush(Duration::from_secs(3));
        self.consumer.unsubscribe();
        Ok(())
    }

    /// After a pause longer than the session timeout the group may have moved this process's
    /// partitions on, and others may have published them since: forget them all, and restore
    /// from the start whatever the client still holds. The client learns from the group
    /// whether it still holds them, and revokes them through the rebalance callback if not.
    ///
    /// The client's own subscription is left alone: leaving and joining the group again from
    /// here races the client's own recovery from the lost session, and was seen to leave
    /// partitions assigned to this member that no process folded.
    fn forget_after_pause(&mut self, paused: Duration) {
        tracing::warn!(
            paused_ms = paused.as_millis() as u64,
            "cluster: this process was paused longer than the session timeout; forgetting its partitions and restoring what the group still gives it"
        );
        self.ctx().forget_all();
        self.fences.clear();
        self.follow_assignment(true);
    }

    /// Keep the partitions this process folds the same as the client's assignment. The
    /// rebalance callbacks keep them so; this catches any way they part (a pause, an
    /// assignment call that failed): a partition the client fetches that is not folded here is
    /// read again from its start and restored, and one folded here that the client no longer
    /// holds is forgotten. `after_pause`: this process has just forgotten everything, so every
    /// partition the client holds is expected to be restored (and not a warning).
    fn follow_assignment(&mut self, after_pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot read the client's assignment");
                return;
            }
        };
        let topic = &self.settings.events_topic;
        let held = partitions_of(&assignment, topic);
        let folded: Vec<u32> = self.ctx().ownership.read().keys().copied().collect();
        let gone: Vec<u32> = folded
            .iter()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        if !gone.is_empty() {
            tracing::warn!(partitions = ?gone, "cluster: partitions folded here are no longer assigned to this member; forgetting them");
            self.ctx().revoked(&gone);
        }
        for p in held.into_iter().filter(|p| !folded.contains(p)) {
            match self
                .consumer
                .seek(topic, p as i32, Offset::Beginning, Duration::from_secs(5))
            {
                Ok(()) => {
                    if after_pause {
                        tracing::info!(
                            partition = p,
                            "cluster: restoring a partition the client still holds after the pause"
                        );
                    } else {
                        tracing::warn!(
                            partition = p,
                            "cluster: a partition assigned to this member was not folded here; restoring it from the events topic"
                        );
                    }
                    self.ctx().assigned(&[p]);
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cluster: cannot read an assigned partition from its start yet; retrying")
                }
            }
        }
    }

    /// Read partition `p` again from offset `from`, as offsets before `got` were missing;
    /// whether it will be (if not, the record at `got` is folded now).
    fn reread(&self, p: u32, from: i64, got: i64) -> bool {
        tracing::warn!(
            partition = p,
            from,
            next = got,
            "cluster: the broker served a record with offsets missing before it; reading the partition again"
        );
        self.ctx()
            .metrics
            .cluster_offset_gaps
            .with_label_values(&["reread"])
            .inc();
        match self.consumer.seek(
            &self.settings.events_topic,
            p as i32,
            Offset::Offset(from),
            Duration::from_secs(5),
        ) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cluster: cannot read the partition again from the missing offset; going on");
                false
            }
        }
    }

    /// The end of each newly assigned partition: restoring folds up to it.
    fn read_restore_targets(&mut self) {
        let pending: Vec<u32> =
            std::mem::take(&mut *self.ctx().pending.lock().unwrap_or_else(|e| e.into_inner()));
        let topic = self.settings.events_topic.clone();
        for p in pending {
            match self
                .consumer
                .fetch_watermarks(&topic, p as i32, Duration::from_secs(5))
            {
                Ok((low, high)) => {
                    let mut owned = self.ctx().ownership.write();
                    let Some(part) = owned.get_mut(&p) else {
                        continue;
                    };
                    part.low = low;
                    part.restore_to = Some(high);
                    part.position = part.position.max(low);
                    let done = part.position >= high;
                    drop(owned);
                    if done {
                        self.go_live(p);
                    }
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cluster: cannot read the partition's end yet; retrying");
                    self.ctx()
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(p);
                }
            }
        }
    }
}

/// Whether the record at `offset` of partition `p` came with offsets missing before it, so that
/// the partition is to be read again first: the offset to read it from, if so.
///
/// The events topic is never compacted and tally writes it without transactions, so its offsets
/// have no holes: a record served with offsets missing before it means the broker skipped some.
/// Going on would skip those records for good. A broker may serve a later record before an
/// earlier one is stored, so the partition is first read again from the first missing offset;
/// one that serves nothing from an offset inside a stored batch of records (tansu does so: a
/// consumer resuming mid-batch, as one does after a rebalance paused it, gets the next batch) is
/// then read again from its start, which is always a batch's start. Should the same offsets be
/// missing after that, they are taken as absent (a topic set up by hand with compaction or
/// transactional producers can have real holes).
fn gap(
    ownership: &Ownership,
    metrics: &Metrics,
    gaps: &mut HashMap<u32, (i64, u32)>,
    p: u32,
    offset: i64,
) -> Option<i64> {
    let (expected, low) = {
        let owned = ownership.read();
        let part = owned.get(&p)?;
        // Before the partition's start is known (just assigned), offsets are not judged.
        part.restore_to?;
        (part.position, part.low)
    };
    if offset <= expected {
        if gaps.get(&p).is_some_and(|&(at, _)| at == offset) {
            gaps.remove(&p); // the hole is filled
        }
        return None;
    }
    let tries = match gaps.get(&p) {
        Some(&(at, tries)) if at == expected => tries,
        _ => 0,
    };
    let from = match tries {
        0 => expected,
        1 => low,
        _ => {
            gaps.remove(&p);
            tracing::warn!(
                partition = p,
                missing = expected,
                next = offset,
                "cluster: offsets of the events topic stayed missing when read again from the partition's start; going on without them"
            );
            metrics
                .cluster_offset_gaps
                .with_label_values(&["accepted"])
                .inc();
            return None;
        }
    };
    gaps.insert(p, (expected, tries + 1));
    Some(from)
}

/// Fold one record of partition `p`; the partition's number when this ended its restore.
fn fold(ctx: &FoldContext, p: u32, offset: i64, payload: Option<&[u8]>) -> Option<u32> {
    if !ctx.ownership.read().contains_key(&p) {
        return None; // revoked since it was fetched
    }
    let mut n = 0;
    match payload.map(decode_record) {
        Some(Ok(record)) => {
            n = record.events.len() as u64;
            let out = fold_events(ctx, p, &record);
            send(ctx, record.received_ms, out);
        }
        Some(Err(e)) => {
            tracing::error!(partition = p, offset, error = %e, "cluster: an events record does not decode; skipped");
        }
        None => {}
    }
    if ctx.agg.over_capacity() {
        ctx.agg.evict_to_capacity();
    }
    let mut owned = ctx.ownership.write();
    let part = owned.get_mut(&p)?;
    // A partition read again from an earlier offset folds what it has folded already: the
    // position and the count move on only with records not folded before.
    if offset >= part.position {
        part.position = offset + 1;
        part.events += n;
    }
    let done = !part.is_live() && part.restore_to.is_some_and(|end| part.position >= end);
    done.then_some(p)
}

/// Apply a record's events, and say what is to be produced: events by the partition they go to
/// (link notices, joined attempts).
fn fold_events(ctx: &FoldContext, p: u32, record: &Record) -> BTreeMap<u32, Vec<Event>> {
    let mut f = Folding {
        ctx,
        p,
        n: ctx.ownership.partition_count(),
        t: record.received_ms,
        out: BTreeMap::new(),
        joins: ctx.joins.lock().unwrap_or_else(|e| e.into_inner()),
        counts: ctx.metrics.event_counts("events_topic"),
    };
    for e in &record.events {
        let key = routing_key(e);
        match &e.body {
            EventBody::Attempt(a) if partition_of(key, f.n) != p => f.notice(a),
            EventBody::Attempt(a) if a.operation_id.is_none() => f.unlinked(e, a, key),
            EventBody::Attempt(a) => f.linking(e, a),
            _ => f.apply(e),
        }
    }
    f.finish()
}

/// One record being folded on partition `p` (of `n`), received at `t`.
struct Folding<'a> {
    ctx: &'a FoldContext,
    p: u32,
    n: u32,
    t: u64,
    out: BTreeMap<u32, Vec<Event>>,
    joins: std::sync::MutexGuard<'a, Joins>,
    /// The record's event counts, added to the counters when the folding ends.
    counts: EventCounts<'a>,
}

impl Folding<'_> {
    fn apply(&mut self, e: &Event) {
        let outcome = self.ctx.agg.apply(e, self.t);
        self.counts.add(Ok(e), outcome);
    }

    /// A joined attempt goes to its operation's partition: applied here when that is this one
    /// (its log holds the attempt already), produced there otherwise. `count`: whether it is
    /// counted now (an attempt that waited was counted when it came).
    fn deliver(&mut self, j: Event, count: bool) {
        let to = partition_of(routing_key(&j), self.n);
        if to == self.p {
            let outcome = self.ctx.agg.apply(&j, self.t);
            if count {
                self.counts.add(Ok(&j), outcome);
            }
        } else {
            if count {
                self.ctx.metrics.count_forwarded("events_topic", 1);
            }
            self.out.entry(to).or_default().push(j);
        }
    }

    /// The link of `key` (a SID or resource of this partition) is known: join what waited.
    fn release(&mut self, key: &str, link: &Link) {
        for (held, _) in self.joins.link(key, link.clone(), self.t) {
            if let EventBody::Attempt(h) = &held.body {
                self.deliver(joined(&held, h, link), false);
            }
        }
    }

    /// A link notice: an event of another partition, saying which operation this partition's
    /// SID or resource belongs to.
    fn notice(&mut self, a: &AttemptEvent) {
        let Some(link) = link_of(a) else { return };
        for k in [a.downstream_id.as_deref(), a.resource_id.as_deref()]
            .into_iter()
            .flatten()
        {
            if partition_of(k, self.n) == self.p {
                self.release(k, &link);
            }
        }
    }

    /// An attempt that names no operation: joined at once when its link is known, else it waits.
    fn unlinked(&mut self, e: &Event, a: &AttemptEvent, key: &str) {
        match self.joins.attempt(key, e, self.t) {
            Some(link) => self.deliver(joined(e, a, &link), true),
            None => self.counts.add(Ok(e), Outcome::Held),
        }
    }

    /// An attempt naming its operation. Seen here for the first time, its SID and resource are
    /// joined with what waits for them on this partition, and the other partitions of those
    /// keys get a notice (this same event).
    fn linking(&mut self, e: &Event, a: &AttemptEvent) {
        let mut notices = Vec::new();
        let mut here = Vec::new();
        if let Some(link) = link_of(a) {
            for (k, sid) in [
                (a.downstream_id.as_deref(), true),
                (a.resource_id.as_deref(), false),
            ] {
                let Some(k) = k.filter(|k| !self.ctx.agg.knows_link(k, sid)) else {
                    continue;
                };
                match partition_of(k, self.n) {
                    kp if kp == self.p => here.push((k, link.clone())),
                    kp if !notices.contains(&kp) => notices.push(kp),
                    _ => {}
                }
            }
        }
        self.apply(e);
        for (k, link) in here {
            self.release(k, &link);
        }
        for kp in notices {
            self.out.entry(kp).or_default().push(e.clone());
        }
    }

    fn finish(mut self) -> BTreeMap<u32, Vec<Event>> {
        let m = &self.ctx.metrics;
        m.cluster_joins
            .with_label_values(&["attempts"])
            .set(self.joins.held_events() as i64);
        m.cluster_joins
            .with_label_values(&["links"])
            .set(self.joins.link_count() as i64);
        m.cluster_joins_dropped
            .inc_by(std::mem::take(&mut self.joins.dropped));
        self.out
    }
}

/// Produce what folding a record gave: one record per partition.
fn send(ctx: &FoldContext, received_ms: u64, out: BTreeMap<u32, Vec<Event>>) {
    for (p, events) in out {
        let key = routing_key(&events[0]).to_owned();
        let payload = match encode_record(&Record {
            received_ms,
            events,
        }) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot encode a join record");
                continue;
            }
        };
        let rec = BaseRecord::to(&ctx.topic)
            .key(&key)
            .payload(&payload)
            .partition(p as i32);
        if let Err((e, _)) = ctx.producer.send(rec) {
            tracing::warn!(error = %e, "cluster: cannot queue a join record; the next restore of its partition sends it again");
            ctx.metrics
                .cluster_join_records
                .with_label_values(&["failed"])
                .inc();
        }
    }
}

impl Folder {
    /// Partition `p` is restored: publish every operation of it now, and once more when no
    /// record of a former owner can still land (the fence).
    fn go_live(&mut self, p: u32) {
        let ctx = self.ctx();
        let now = now_ms();
        let mut owned = ctx.ownership.write();
        let Some(part) = owned.get_mut(&p) else {
            return;
        };
        part.state = "live";
        part.live_ms = Some(now);
        let (events, took) = (part.events, now.saturating_sub(part.assigned_ms));
        drop(owned);
        let n = ctx.ownership.partition_count();
        let ops = ctx
            .agg
            .mark_changed_where(|id| partition_of(id, n) == p, now);
        tracing::info!(
            partition = p,
            events,
            operations = ops,
            took_ms = took,
            "cluster: partition restored; live"
        );
        self.fences.push((Instant::now() + self.fence_after, p));
    }

    fn fences_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.fences.drain(..).partition(|(t, _)| *t <= now);
        self.fences = later;
        let ctx = self.ctx();
        let n = ctx.ownership.partition_count();
        for (_, p) in due {
            if !ctx.ownership.read().get(&p).is_some_and(Partition::is_live) {
                continue;
            }
            let ops = ctx
                .agg
                .mark_changed_where(|id| partition_of(id, n) == p, now_ms());
            tracing::info!(
                partition = p,
                operations = ops,
                "cluster: fence passed; partition's operations published again"
            );
        }
    }

    /// Commit the positions folded, for lag tooling (a partition is always restored from its
    /// start, so nothing depends on them).
    fn commit(&self) {
        let owned = self.ctx().ownership.read();
        let mut tpl = TopicPartitionList::new();
        for (p, part) in owned.iter().filter(|(_, part)| part.position > 0) {
            let _ = tpl.add_partition_offset(
                &self.settings.events_topic,
                *p as i32,
                Offset::Offset(part.position),
            );
        }
        drop(owned);
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "cluster: commit failed");
            }
        }
    }

    fn update_gauges(&self) {
        let ctx = self.ctx();
        let owned = ctx.ownership.read();
        let mut live = 0;
        for (p, part) in owned.iter() {
            live += i64::from(part.is_live());
            let label = p.to_string();
            let end = part.end.max(part.position);
            ctx.metrics
                .cluster_lag
                .with_label_values(&[&label])
                .set((end - part.position).max(0));
            ctx.metrics
                .cluster_restore_progress
                .with_label_values(&[&label])
                .set(part.percent() / 100.0);
        }
        let total = owned.len() as i64;
        drop(owned);
        ctx.metrics
            .cluster_partitions
            .with_label_values(&["live"])
            .set(live);
        ctx.metrics
            .cluster_partitions
            .with_label_values(&["restoring"])
            .set(total - live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterRole;

    fn restoring(position: i64) -> Partition {
        Partition {
            state: "restoring",
            position,
            restore_to: Some(100),
            low: 0,
            events: 0,
            assigned_ms: 0,
            live_ms: None,
            end: 0,
        }
    }

    #[test]
    fn offsets_missing_before_a_record_are_read_again_then_taken_as_absent() {
        let ownership = Ownership::new(ClusterRole::Aggregate, 2_000);
        let metrics = Metrics::new();
        let mut gaps = HashMap::new();
        let mut part = restoring(5);
        part.low = 2;
        ownership.write().insert(3, part.clone());
        // The next offset, or one folded already: no gap.
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 5), None);
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 4), None);
        // A partition not folded here: nothing to read again.
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 4, 9), None);
        // 5 and 6 missing before 7: read again from 5, then from the partition's start.
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 7), Some(5));
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 7), Some(2));
        // Read from the start, the records folded already pass through.
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 2), None);
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 4), None);
        // Still missing: taken as absent, and counted.
        let accepted = || {
            metrics
                .cluster_offset_gaps
                .with_label_values(&["accepted"])
                .get()
        };
        assert_eq!(accepted(), 0);
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 7), None);
        assert_eq!(accepted(), 1);
        assert!(gaps.is_empty());
        // A hole that fills on a re-read leaves nothing behind.
        part.position = 8;
        ownership.write().insert(3, part.clone());
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 9), Some(8));
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 8), None);
        assert!(gaps.is_empty());
        assert_eq!(accepted(), 1);
        // Before the partition's start is known, offsets are not judged.
        part.restore_to = None;
        ownership.write().insert(3, part);
        assert_eq!(gap(&ownership, &metrics, &mut gaps, 3, 40), None);
    }
}
