//! Cluster mode (docs/cluster.md): ingest processes produce every event to the events topic,
//! partitioned by operation; aggregate processes, one consumer group, fold the partitions they
//! own and publish and serve those operations. Kafka is the only coordination.
//!
//! ```text
//!  callback → ingest::Forwarder ── record per routing key, partition = partition_of(key) ──▶ events topic
//!  events topic ── consumer group ──▶ aggregate::Folder (one thread): assigned → restore from the
//!      partition's start → live; revoked → forget its operations
//!  Ownership: which partitions this process owns, restoring or live; gates publishing and queries
//! ```

pub mod aggregate;
pub mod ingest;
pub mod joins;
pub mod owners;

use crate::config::ClusterRole;
use crate::event::{Event, EventBody};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::RwLock;

/// Partitions of an events topic tally creates when `kafka.partitions` is -1: room for 32
/// aggregate processes, a count that stays cheap for one (docs/cluster.md, "Partitions").
pub const DEFAULT_EVENTS_PARTITIONS: i32 = 32;

/// The events topic's partition of `key`: CRC-32 (IEEE) of its UTF-8 bytes, modulo the number of
/// partitions. Fixed for the topic's life; every process computes it alike.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

/// The key an event is routed by: its operation id; for an attempt that names no operation, the
/// key it waits under for its link: its resource id, else its attempt SID (a classic callback
/// carries only the SID).
pub fn routing_key(ev: &Event) -> &str {
    match &ev.body {
        EventBody::Operation { operation_id, .. } => operation_id,
        EventBody::OperationRead(r) => &r.operation_id,
        EventBody::ResourceRead(r) => &r.operation_id,
        EventBody::Attempt(a) => a
            .operation_id
            .as_deref()
            .or(a.resource_id.as_deref())
            .or(a.downstream_id.as_deref())
            .unwrap_or(""),
    }
}

/// What the HTTP handlers share of cluster mode.
pub struct Cluster {
    pub ownership: std::sync::Arc<Ownership>,
    /// Ingest (and all): produces callbacks' events to the events topic.
    pub forwarder: Option<ingest::Forwarder>,
    /// Finds the process owning a partition, to forward queries to it.
    pub owners: owners::Owners,
}

/// Where one owned partition stands.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    /// `restoring` until the position reaches `restore_to`, then `live`.
    pub state: &'static str,
    /// The next offset to fold.
    pub position: i64,
    /// The partition's end when it was assigned: restoring folds up to here.
    pub restore_to: Option<i64>,
    /// The partition's start when it was assigned.
    pub low: i64,
    /// Events folded since assignment.
    pub events: u64,
    /// When it was assigned and when it went live (Unix ms).
    pub assigned_ms: u64,
    pub live_ms: Option<u64>,
    /// The partition's end as the consumer last saw it (for the lag).
    pub end: i64,
}

impl Partition {
    pub fn is_live(&self) -> bool {
        self.state == "live"
    }

    /// Share of the restore done, 0–100.
    pub fn percent(&self) -> f64 {
        match self.restore_to {
            Some(end) if end > self.low => ((self.position - self.low) as f64 * 100.0
                / (end - self.low) as f64)
                .clamp(0.0, 100.0),
            _ => 100.0,
        }
    }
}

/// Whether an operation can be served here.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Not in cluster mode, or owned here and live.
    Here,
    /// Owned here, still restoring (share done).
    Restoring(f64),
    /// Owned by another process, or by none right now.
    Elsewhere(u32),
    /// The events topic's partition count is not known yet.
    Unknown,
}

/// This process's share of the cluster: shared by the folder (which writes it), the publisher
/// and the query API (which read it).
#[derive(Debug)]
pub struct Ownership {
    role: ClusterRole,
    partitions: AtomicU32,
    owned: RwLock<BTreeMap<u32, Partition>>,
    /// When the folder last polled the consumer (Unix ms): a process whose folder has not polled
    /// lately (paused, starved) may have lost its partitions without knowing, so it publishes
    /// nothing until it polls again.
    last_poll_ms: AtomicU64,
    /// Longest gap since that poll under which publishing goes on.
    poll_grace_ms: u64,
}

impl Ownership {
    pub fn new(role: ClusterRole, poll_grace_ms: u64) -> Ownership {
        Ownership {
            role,
            partitions: AtomicU32::new(0),
            owned: RwLock::new(BTreeMap::new()),
            last_poll_ms: AtomicU64::new(0),
            poll_grace_ms,
        }
    }

    pub fn role(&self) -> ClusterRole {
        self.role
    }

    /// The events topic's partition count (0 until known).
    pub fn partition_count(&self) -> u32 {
        self.partitions.load(Ordering::Acquire)
    }

    pub fn set_partition_count(&self, n: u32) {
        self.partitions.store(n, Ordering::Release);
    }

    pub fn partition_of(&self, key: &str) -> Option<u32> {
        let n = self.partition_count();
        (n > 0).then(|| partition_of(key, n))
    }

    pub fn note_poll(&self, now_ms: u64) {
        self.last_poll_ms.store(now_ms, Ordering::Release);
    }

    /// Where operation `id` is served.
    pub fn placement(&self, id: &str) -> Placement {
        if !self.role.aggregates() {
            return match self.partition_of(id) {
                Some(p) => Placement::Elsewhere(p),
                None => Placement::Unknown,
            };
        }
        let Some(p) = self.partition_of(id) else {
            return Placement::Unknown;
        };
        match self.read().get(&p) {
            Some(part) if part.is_live() => Placement::Here,
            Some(part) => Placement::Restoring(part.percent()),
            None => Placement::Elsewhere(p),
        }
    }

    /// Whether the publisher may publish operation `id` now: its partition is live here, and the
    /// folder polled the group lately.
    pub fn may_publish(&self, id: &str, now_ms: u64) -> bool {
        self.folder_is_current(now_ms) && self.placement(id) == Placement::Here
    }

    pub fn folder_is_current(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_poll_ms.load(Ordering::Acquire)) <= self.poll_grace_ms
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, Partition>> {
        self.owned.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u32, Partition>> {
        self.owned.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Owned partitions: (live, restoring).
    pub fn counts(&self) -> (usize, usize) {
        let owned = self.read();
        let live = owned.values().filter(|p| p.is_live()).count();
        (live, owned.len() - live)
    }

    /// What `/healthz/details` shows.
    pub fn details(&self) -> serde_json::Value {
        let owned = self.read();
        let partitions: BTreeMap<String, serde_json::Value> = owned
            .iter()
            .map(|(p, part)| {
                let mut v = serde_json::to_value(part).unwrap_or_default();
                v["percent"] = serde_json::json!((part.percent() * 10.0).round() / 10.0);
                (p.to_string(), v)
            })
            .collect();
        serde_json::json!({
            "role": self.role.as_str(),
            "events_partitions": self.partition_count(),
            "owned": partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_of_a_key_is_crc32_modulo_the_count_and_never_changes() {
        // CRC-32 (IEEE) of "comms_operation_1", fixed here so that a change of function fails.
        let crc = crc32fast::hash(b"comms_operation_1");
        assert_eq!(partition_of("comms_operation_1", 32), crc % 32);
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the standard check value"
        );
        assert_eq!(partition_of("123456789", 32), 0xCBF4_3926 % 32);
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| partition_of(&format!("comms_operation_{i}"), 32))
            .collect();
        assert_eq!(
            spread.len(),
            32,
            "a thousand operations reach every partition"
        );
    }

    #[test]
    fn an_event_is_routed_by_its_operation_else_its_resource_else_its_sid() {
        use crate::event::{AttemptEvent, AttemptStatus};
        let mut a = AttemptEvent {
            kind: None,
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some("comms_message_1".into()),
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: None,
            status: AttemptStatus::Sent,
            error_code: None,
            to: None,
            tags: vec![],
        };
        let ev = |a: &AttemptEvent| Event {
            time_ms: 1,
            body: EventBody::Attempt(a.clone()),
        };
        assert_eq!(routing_key(&ev(&a)), "comms_operation_1");
        a.operation_id = None;
        assert_eq!(routing_key(&ev(&a)), "comms_message_1");
        a.resource_id = None;
        assert_eq!(routing_key(&ev(&a)), "SM1");
    }

    #[test]
    fn placement_follows_the_owned_partitions_and_publishing_needs_a_recent_poll() {
        let o = Ownership::new(ClusterRole::Aggregate, 1000);
        assert_eq!(o.placement("comms_operation_1"), Placement::Unknown);
        o.set_partition_count(4);
        let p = partition_of("comms_operation_1", 4);
        assert_eq!(o.placement("comms_operation_1"), Placement::Elsewhere(p));
        o.write().insert(
            p,
            Partition {
                state: "restoring",
                position: 5,
                restore_to: Some(10),
                low: 0,
                events: 5,
                assigned_ms: 0,
                live_ms: None,
                end: 10,
            },
        );
        assert_eq!(o.placement("comms_operation_1"), Placement::Restoring(50.0));
        o.write().get_mut(&p).unwrap().state = "live";
        assert_eq!(o.placement("comms_operation_1"), Placement::Here);
        o.note_poll(10_000);
        assert!(o.may_publish("comms_operation_1", 10_500));
        assert!(
            !o.may_publish("comms_operation_1", 11_001),
            "the folder is behind"
        );
    }
}
