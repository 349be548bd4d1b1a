//! One operation's state: its resources, their attempts, and the roll-up Twilio shows.
//!
//! Every field is a join (maximum, minimum or union), so the state after a set of events does
//! not depend on their order or on duplicates. Only `updated_ms` and `version` record *when* and
//! *how often* the state changed.
//!
//! Resources are stored compactly by `stored.rs` (the memory target is in docs/performance.md):
//! 80-byte slots in arrival order in one vector, found by id through a table of slot numbers,
//! with ids packed into 16 bytes where they have Twilio's shapes ([`Id`]), the first attempt
//! inline, and what slots share or rarely need (labels, tag sets, later attempts, odd ids, far
//! times) in the operation's side store.
//! [`Resource`] and [`Attempt`] are the readable forms the query API, filters and snapshots
//! see; they are built on demand.

use super::compact::Id;
use super::fallback::{self, Fallback};
use super::status::{attempt_rank, Bucket, OperationStatus, Reads, ResourceStatus};
use super::stored::{hash_id, Side, Slot, SlotId};
use crate::event::{
    AttemptEvent, AttemptStatus, Channel, Kind, OperationRead, Phase, ResourceRead, Text,
};
use hashbrown::HashTable;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// Format Unix milliseconds as RFC 3339 UTC with milliseconds (`2024-04-05T06:20:00.000Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// How an attempt is told apart from its siblings (docs/contract.md, "Attempt identity").
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum AttemptKey {
    Downstream(String),
    Attempt(String),
    Channel(Channel),
    Implicit,
}

impl AttemptKey {
    pub fn of<S: Text>(ev: &AttemptEvent<S>) -> AttemptKey {
        if let Some(d) = &ev.downstream_id {
            AttemptKey::Downstream(d.to_string())
        } else if let Some(a) = &ev.attempt {
            AttemptKey::Attempt(a.to_string())
        } else if let Some(c) = ev.channel {
            AttemptKey::Channel(c)
        } else {
            AttemptKey::Implicit
        }
    }
}

/// One delivery attempt, as joined from every event seen for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    pub key: AttemptKey,
    pub downstream_id: Option<String>,
    pub attempt: Option<String>,
    pub channel: Option<Channel>,
    pub status: AttemptStatus,
    pub error_code: Option<u32>,
}

/// One Message, Email or PushNotification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resource {
    pub id: String,
    pub to: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub attempts: Vec<Attempt>,
    /// What the reconciler read of it from Twilio.
    #[serde(default, skip_serializing_if = "Reads::is_empty")]
    pub reads: Reads,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Resource {
    /// The resource's status: the best of its attempts under the resource order, joined with
    /// what was read of it from Twilio ([`Reads::status`]).
    pub fn status(&self) -> ResourceStatus {
        self.reads.status(self.attempts.iter().map(|a| a.status))
    }

    /// The attempt that decides the status (the latest channel that got furthest).
    pub fn best_attempt(&self) -> Option<&Attempt> {
        self.attempts.iter().max_by(|a, b| {
            ResourceStatus::of_attempt(a.status)
                .cmp(&ResourceStatus::of_attempt(b.status))
                .then(attempt_rank(a.status).cmp(&attempt_rank(b.status)))
                .then(b.key.cmp(&a.key))
        })
    }

    /// The error code of the best failed attempt, for failed and undelivered resources.
    pub fn error_code(&self) -> Option<u32> {
        self.best_attempt()
            .and_then(|a| a.error_code)
            .or_else(|| self.attempts.iter().filter_map(|a| a.error_code).max())
    }
}

/// What [`Operation::apply_attempt_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptApplied {
    /// Whether the operation's state changed.
    pub changed: bool,
    /// The resource's slot in the operation, which the aggregator's links point at.
    pub slot: u32,
    /// The channel fallback the event made, if it started one.
    pub fallback: Option<Fallback>,
    /// Whether the resource was new to the operation: only then can its link be missing.
    pub new_resource: bool,
    /// Whether the event's attempt id was new to the resource: only then can its link be
    /// missing.
    pub new_downstream: bool,
}

/// One operation: what Twilio's `GET /v1/…/Operations/{id}` shows, and the resources behind it.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    /// The number the aggregator's links know this operation by (0 until it gives one).
    link_number: u32,
    kind: Option<Kind>,
    phase: Option<Phase>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The resources' share of the lattice height ([`Operation::version`]): the sum of
    /// [`Slot::height`] over every slot, kept up to date by each join.
    resources_height: u64,
    slots: Vec<Slot>,
    /// Slot numbers, found by the hash of their resource id.
    index: HashTable<u32>,
    side: Side,
    buckets: [u64; 9],
    attempts: u64,
    /// What the reconciler read of the operation itself from Twilio.
    read: OperationReads,
    /// What it read of each resource, by slot: a side table, since most resources (those
    /// whose callbacks all arrived) are never read and the slots stay small without it.
    reads: std::collections::HashMap<u32, Reads>,
}

/// The joins of every read of an operation from Twilio (docs/contract.md, "Reconciliation"):
/// the highest status, and the largest of each count Twilio reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationReads {
    pub status: Option<OperationStatus>,
    pub total: u64,
    pub recipients: u64,
    pub attempts: u64,
    pub unaddressable: u64,
}

impl OperationReads {
    fn join(&mut self, r: &OperationRead) -> bool {
        let before = *self;
        self.status = self.status.max(r.status);
        self.total = self.total.max(r.total);
        self.recipients = self.recipients.max(r.recipients);
        self.attempts = self.attempts.max(r.attempts);
        self.unaddressable = self.unaddressable.max(r.unaddressable);
        *self != before
    }

    fn is_empty(&self) -> bool {
        *self == OperationReads::default()
    }
}

impl Operation {
    pub fn new(id: &str, time_ms: u64, now_ms: u64) -> Operation {
        Operation {
            id: id.to_owned(),
            link_number: 0,
            kind: None,
            phase: None,
            created_ms: time_ms,
            updated_ms: now_ms,
            resources_height: 0,
            slots: Vec::new(),
            index: HashTable::new(),
            side: Side::default(),
            buckets: [0; 9],
            attempts: 0,
            read: OperationReads::default(),
            reads: std::collections::HashMap::new(),
        }
    }

    fn reads_of(&self, slot: u32) -> Reads {
        self.reads.get(&slot).copied().unwrap_or_default()
    }

    fn slot_status(&self, slot: u32) -> ResourceStatus {
        self.slots[slot as usize].status(self.reads_of(slot), &self.side)
    }

    fn slot_view(&self, slot: u32) -> Resource {
        self.slots[slot as usize].view(&self.side, self.reads_of(slot))
    }

    /// The number the aggregator's links know this operation by.
    pub fn link_number(&self) -> u32 {
        self.link_number
    }

    /// Set by the aggregator when it files the operation.
    pub fn set_link_number(&mut self, link_number: u32) {
        self.link_number = link_number;
    }

    /// The operation's kind: what its events said, else what its resource ids say, else messages.
    pub fn kind(&self) -> Kind {
        // Every attempt applied notes the kind its event or its resource id prefix names, so
        // when none is noted no resource id has a known prefix either: messages, as ever.
        self.kind.unwrap_or(Kind::Messages)
    }

    pub fn resource_count(&self) -> usize {
        self.slots.len()
    }

    pub fn attempt_count(&self) -> u64 {
        self.attempts
    }

    /// Every resource, in arrival order.
    pub fn resources(&self) -> impl Iterator<Item = Resource> + '_ {
        (0..self.slots.len() as u32).map(|i| self.slot_view(i))
    }

    /// Each resource's id and its attempts' downstream ids, with its slot number: what the
    /// aggregator links.
    pub fn links(&self) -> impl Iterator<Item = (u32, String, Vec<String>)> + '_ {
        self.slots.iter().enumerate().map(|(i, s)| {
            let sids = s
                .attempts(&self.side)
                .filter_map(|a| a.downstream_text(&self.side))
                .collect();
            (i as u32, s.id.text(&self.side).unwrap_or_default(), sids)
        })
    }

    /// Resources whose id is strictly after `after`, in id order.
    pub fn resources_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Resource> + 'a {
        let mut order: Vec<(String, u32)> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.text(&self.side).unwrap_or_default(), i as u32))
            .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
            .collect();
        order.sort_unstable();
        order.into_iter().map(move |(_, i)| self.slot_view(i))
    }

    fn slot_index(&self, id: &str) -> Option<u32> {
        self.index_of(&Id::new(id))
    }

    /// The slot number of the resource whose packed id is `key`.
    fn index_of(&self, key: &Id) -> Option<u32> {
        self.index
            .find(hash_id(key), |&i| {
                self.slots[i as usize].id.is(key, &self.side)
            })
            .copied()
    }

    /// The slot number of resource `id`, if this operation has it.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.slot_index(id)
    }

    /// The id of the resource in `slot`, if it has an attempt with downstream id `sid`.
    pub fn resource_with_attempt(&self, slot: u32, sid: &str) -> Option<String> {
        let s = self.slots.get(slot as usize)?;
        s.has_downstream(&Id::new(sid), &self.side)
            .then(|| s.id.text(&self.side).unwrap_or_default())
    }

    /// The fallback that applying `ev` to the resource in `slot` makes ([`fallback::detect`]
    /// on the resource as it stands), read from the stored attempts without building a view.
    fn fallback_in<S: Text>(
        &self,
        slot: u32,
        ev: &AttemptEvent<S>,
        down: Option<&Id>,
    ) -> Option<Fallback> {
        let s = &self.slots[slot as usize];
        if s.attempts(&self.side)
            .any(|a| a.matches(ev, down, &self.side))
        {
            return None;
        }
        fallback::after_new_attempt(s.attempts(&self.side).filter_map(|a| a.channel), ev)
    }

    pub fn resource(&self, id: &str) -> Option<Resource> {
        self.slot_index(id).map(|i| self.slot_view(i))
    }

    fn insert_slot(&mut self, slot: Slot) -> u32 {
        let i = self.slots.len() as u32;
        let h = slot.id.hash(&self.side);
        self.slots.push(slot);
        let (slots, side) = (&self.slots, &self.side);
        self.index
            .insert_unique(h, i, |&j| slots[j as usize].id.hash(side));
        i
    }

    /// Bytes this operation's storage holds, by part (see [`crate::aggregator::Aggregator::memory_parts`]).
    pub fn memory_parts(&self, parts: &mut MemoryParts) {
        parts.slots += (self.slots.capacity() * std::mem::size_of::<Slot>()) as u64;
        parts.slot_index += table_bytes(self.index.capacity(), std::mem::size_of::<u32>());
        let (extra, other) = self.side.heap_bytes();
        parts.extra_attempts += extra;
        parts.other +=
            other + (self.reads.capacity() * 24) as u64 + std::mem::size_of::<Operation>() as u64;
    }

    /// Drop every recipient address (`[privacy] keep_recipient_addresses = false`).
    pub fn forget_recipients(&mut self) {
        for r in &mut self.slots {
            r.to = SlotId::NONE;
        }
    }

    fn note_kind(&mut self, kind: Option<Kind>) -> bool {
        let before = self.kind;
        match (self.kind, kind) {
            (_, None) => {}
            (None, Some(k)) => self.kind = Some(k),
            (Some(old), Some(k)) => self.kind = Some(old.min(k)),
        }
        before != self.kind
    }

    fn note_time(&mut self, time_ms: u64) -> bool {
        if time_ms < self.created_ms {
            self.created_ms = time_ms;
            true
        } else {
            false
        }
    }

    fn touch(&mut self, changed: bool, now_ms: u64) -> bool {
        if changed {
            self.updated_ms = self.updated_ms.max(now_ms);
        }
        changed
    }

    /// The operation's `version`: its height in the lattice, a function of its state alone
    /// (docs/contract.md, "Versions"). Every join that changes the status or a stat moves one of
    /// its terms up and none down, so two processes that folded the same events publish the
    /// same version, in whatever order they folded them, and a newer state never has a lower
    /// one.
    pub fn version(&self) -> u64 {
        let phase = self.phase.map_or(0, |p| p as u64 + 1);
        // The kind only ever moves to an earlier kind (`note_kind` keeps the minimum).
        let kind = self.kind.map_or(0, |k| 3 - k as u64);
        let r = &self.read;
        let read = r.status.map_or(0, |s| s as u64 + 1)
            + r.total
            + r.recipients
            + r.attempts
            + r.unaddressable;
        self.resources_height + phase + kind + read
    }

    fn slot_height(&self, slot: u32) -> u64 {
        self.slots[slot as usize].height(self.reads.get(&slot), &self.side)
    }

    /// Apply an operation event (`…operation.scheduled|processing|completed`).
    pub fn apply_phase(
        &mut self,
        kind: Option<Kind>,
        phase: Phase,
        time_ms: u64,
        now_ms: u64,
    ) -> bool {
        let kind_before = self.kind();
        let mut changed = self.note_kind(kind);
        if self.kind() != kind_before {
            self.recount();
        }
        changed |= self.note_time(time_ms);
        if self.phase.is_none_or(|p| phase > p) {
            self.phase = Some(phase);
            changed = true;
        }
        self.touch(changed, now_ms)
    }

    /// Apply an attempt event already linked to `resource_id` of this operation.
    pub fn apply_attempt(
        &mut self,
        resource_id: &str,
        ev: &AttemptEvent,
        time_ms: u64,
        now_ms: u64,
    ) -> bool {
        self.apply_attempt_at(resource_id, ev, time_ms, now_ms)
            .changed
    }

    /// [`Operation::apply_attempt`], also answering the resource's slot number.
    pub fn apply_attempt_at<S: Text>(
        &mut self,
        resource_id: &str,
        ev: &AttemptEvent<S>,
        time_ms: u64,
        now_ms: u64,
    ) -> AttemptApplied {
        // The kind names the buckets: taken before `note_kind`, so that a kind changed by this
        // event recounts every bucket below (found by the `ingest` fuzz target: a change of kind
        // left the buckets of the old kind in place, and the result depended on event order).
        let kind_before = self.kind();
        let mut changed = self.note_kind(ev.kind.or_else(|| Kind::from_resource_id(resource_id)));
        changed |= self.note_time(time_ms);
        let down = ev.downstream_id.as_deref().map(Id::new);
        let key = Id::new(resource_id);
        let (slot, was_new, fallback) = match self.index_of(&key) {
            Some(i) => (i, false, self.fallback_in(i, ev, down.as_ref())),
            None => {
                let s = Slot::new(&key, time_ms, &mut self.side);
                (self.insert_slot(s), true, None)
            }
        };
        let before = self.slot_status(slot);
        let height_before = if was_new { 0 } else { self.slot_height(slot) };
        let new_downstream = down
            .as_ref()
            .is_some_and(|d| was_new || !self.slots[slot as usize].has_downstream(d, &self.side));
        let side = &mut self.side;
        let resource = &mut self.slots[slot as usize];
        let attempts_before = resource.attempt_count(side);
        changed |= resource.note_created(time_ms, side);
        let res_changed = resource.join(ev, down.as_ref(), side);
        if res_changed {
            resource.note_updated(now_ms, side);
        }
        self.attempts += (resource.attempt_count(side) - attempts_before) as u64;
        let after = self.slot_status(slot);
        changed |= res_changed;
        self.rebucket(kind_before, was_new, before, after);
        self.resources_height += self.slot_height(slot) - height_before;
        AttemptApplied {
            changed: self.touch(changed, now_ms),
            slot,
            fallback,
            new_resource: was_new,
            new_downstream,
        }
    }

    /// Apply what a read of the operation from Twilio says: its kind, status and counts join
    /// the operation's own.
    pub fn apply_operation_read(
        &mut self,
        read: &OperationRead,
        time_ms: u64,
        now_ms: u64,
    ) -> bool {
        let kind_before = self.kind();
        let mut changed = self.note_kind(Some(read.kind));
        if self.kind() != kind_before {
            self.recount();
        }
        changed |= self.note_time(time_ms);
        changed |= self.read.join(read);
        self.touch(changed, now_ms)
    }

    /// Apply one resource as read from Twilio: its status joins the resource's reads (never an
    /// attempt), its address and tags join as an attempt's would.
    pub fn apply_resource_read(
        &mut self,
        read: &ResourceRead,
        time_ms: u64,
        now_ms: u64,
    ) -> AttemptApplied {
        let kind_before = self.kind();
        let mut changed = self.note_kind(Some(read.kind));
        changed |= self.note_time(time_ms);
        let key = Id::new(&read.resource_id);
        let (slot, was_new) = match self.index_of(&key) {
            Some(i) => (i, false),
            None => {
                let s = Slot::new(&key, time_ms, &mut self.side);
                (self.insert_slot(s), true)
            }
        };
        let before = self.slot_status(slot);
        let height_before = if was_new { 0 } else { self.slot_height(slot) };
        let mut reads = self.reads_of(slot);
        let side = &mut self.side;
        let resource = &mut self.slots[slot as usize];
        changed |= resource.note_created(time_ms, side);
        let res_changed = resource.join_read(read, &mut reads, side);
        if res_changed {
            resource.note_updated(now_ms, side);
        }
        if !reads.is_empty() {
            self.reads.insert(slot, reads);
        }
        let after = self.slot_status(slot);
        changed |= res_changed;
        self.rebucket(kind_before, was_new, before, after);
        self.resources_height += self.slot_height(slot) - height_before;
        AttemptApplied {
            changed: self.touch(changed, now_ms),
            slot,
            fallback: None,
            new_resource: was_new,
            new_downstream: false,
        }
    }

    /// Move one resource between buckets after a join (or recount everything when the kind,
    /// which names the buckets, changed).
    fn rebucket(
        &mut self,
        kind_before: Kind,
        was_new: bool,
        before: ResourceStatus,
        after: ResourceStatus,
    ) {
        if self.kind() != kind_before {
            // The bucket names depend on the kind; recount (rare: kinds settle on first event).
            self.recount();
        } else if was_new {
            self.buckets[after.bucket(kind_before).index()] += 1;
        } else if before != after {
            self.buckets[before.bucket(kind_before).index()] -= 1;
            self.buckets[after.bucket(kind_before).index()] += 1;
        }
    }

    fn recount(&mut self) {
        let kind = self.kind();
        self.buckets = [0; 9];
        for i in 0..self.slots.len() as u32 {
            let bucket = self.slot_status(i).bucket(kind);
            self.buckets[bucket.index()] += 1;
        }
    }

    /// The operation's status (docs/contract.md, "Operation status and stats").
    pub fn status(&self) -> OperationStatus {
        let n = self.slots.len() as u64;
        if (n > 0 && self.buckets[Bucket::Canceled.index()] == n)
            || self.read.status == Some(OperationStatus::Canceled)
        {
            return OperationStatus::Canceled;
        }
        let derived = if n == 0 {
            None
        } else if self.buckets[Bucket::Scheduled.index()] == n {
            Some(OperationStatus::Scheduled)
        } else {
            Some(OperationStatus::Processing)
        };
        let phase = self.phase.map(OperationStatus::of_phase);
        phase
            .max(derived)
            .max(self.read.status)
            .unwrap_or(OperationStatus::Processing)
    }

    pub fn stats(&self) -> Stats {
        let n = self.slots.len() as u64;
        let b = |x: Bucket| self.buckets[x.index()];
        Stats {
            kind: self.kind(),
            total: n.max(self.read.total),
            recipients: n.max(self.read.recipients),
            attempts: self.attempts.max(self.read.attempts),
            unaddressable: self.read.unaddressable,
            scheduled: b(Bucket::Scheduled),
            queued: b(Bucket::Queued),
            sent: b(Bucket::Sent),
            delivered: b(Bucket::Delivered),
            read: b(Bucket::Read),
            opened: b(Bucket::Opened),
            undelivered: b(Bucket::Undelivered),
            failed: b(Bucket::Failed),
            canceled: b(Bucket::Canceled),
        }
    }

    /// The operation's published state.
    pub fn view(&self) -> OperationView {
        OperationView {
            id: self.id.clone(),
            kind: self.kind(),
            status: self.status(),
            stats: self.stats(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            version: self.version(),
        }
    }
}

/// Resources serialised as the map from id to [`Resource`] (in id order) that snapshots have
/// always held, built one at a time.
struct ResourcesRef<'a>(&'a Operation);

impl Serialize for ResourcesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.slots.len()))?;
        for r in self.0.resources_after(None) {
            m.serialize_entry(&r.id, &r)?;
        }
        m.end()
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Operation", 9)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("phase", &self.phase)?;
        st.serialize_field("created_ms", &self.created_ms)?;
        st.serialize_field("updated_ms", &self.updated_ms)?;
        st.serialize_field("resources", &ResourcesRef(self))?;
        st.serialize_field("buckets", &self.buckets)?;
        st.serialize_field("attempts", &self.attempts)?;
        if self.read.is_empty() {
            st.skip_field("read")?;
        } else {
            st.serialize_field("read", &self.read)?;
        }
        st.end()
    }
}

/// A snapshot's map of resources, turned into slots one entry at a time as it is read: only one
/// resource's owned view is alive at a time, so restoring leaves no spread of freed temporaries
/// between the slots' own allocations (a restored state is as compact as one built live).
struct RestoredSlots {
    side: Side,
    slots: Vec<(Slot, Reads)>,
}

impl<'de> Deserialize<'de> for RestoredSlots {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RestoredSlots, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RestoredSlots;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of resource ids to resources")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RestoredSlots, A::Error> {
                let mut out = RestoredSlots {
                    side: Side::default(),
                    slots: Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16)),
                };
                while let Some((_, res)) = map.next_entry::<serde::de::IgnoredAny, Resource>()? {
                    let slot = Slot::from_resource(&res, &mut out.side);
                    out.slots.push((slot, res.reads));
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The snapshot form of an operation.
#[derive(Deserialize)]
struct OperationRepr {
    id: String,
    kind: Option<Kind>,
    phase: Option<Phase>,
    created_ms: u64,
    updated_ms: u64,
    resources: RestoredSlots,
    buckets: [u64; 9],
    attempts: u64,
    #[serde(default)]
    read: OperationReads,
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Operation, D::Error> {
        let r = OperationRepr::deserialize(d)?;
        let mut op = Operation::new(&r.id, r.created_ms, r.updated_ms);
        op.kind = r.kind;
        op.phase = r.phase;
        op.buckets = r.buckets;
        op.attempts = r.attempts;
        op.read = r.read;
        op.side = r.resources.side;
        op.slots.reserve_exact(r.resources.slots.len());
        for (slot, reads) in r.resources.slots {
            if let Some(id) = slot.id.id(&op.side).filter(|id| op.index_of(id).is_some()) {
                return Err(serde::de::Error::custom(format!(
                    "resource {:?} appears twice in operation {}",
                    id, r.id
                )));
            }
            let i = op.insert_slot(slot);
            if !reads.is_empty() {
                op.reads.insert(i, reads);
            }
            op.resources_height += op.slot_height(i);
        }
        Ok(op)
    }
}

/// Operation stats; serialised with the field set and order of the kind's Twilio samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub kind: Kind,
    pub total: u64,
    pub recipients: u64,
    pub attempts: u64,
    pub unaddressable: u64,
    pub scheduled: u64,
    pub queued: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub opened: u64,
    pub undelivered: u64,
    pub failed: u64,
    pub canceled: u64,
}

/// The stats fields `kind` shows, in order: Twilio's fields for that kind in the order its own
/// responses list them, then tally's extras (docs/contract.md, "Operation status and stats").
/// The one definition of the order, for the query API and Kafka records alike.
pub fn stat_names(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Messages => &[
            "total",
            "recipients",
            "attempts",
            "unaddressable",
            "queued",
            "sent",
            "scheduled",
            "delivered",
            "read",
            "undelivered",
            "failed",
            "canceled",
        ],
        Kind::Emails => &[
            "total",
            "queued",
            "sent",
            "scheduled",
            "delivered",
            "opened",
            "undelivered",
            "failed",
            "canceled",
            // tally's extras
            "recipients",
            "attempts",
        ],
        Kind::PushNotifications => &[
            "total",
            "recipients",
            "attempts",
            "queued",
            "sent",
            "delivered",
            "undelivered",
            "failed",
            // tally's extras
            "unaddressable",
            "scheduled",
            "canceled",
        ],
    }
}

impl Stats {
    /// One field by its name (0 for a name no kind shows).
    pub fn get(&self, name: &str) -> u64 {
        match name {
            "total" => self.total,
            "recipients" => self.recipients,
            "attempts" => self.attempts,
            "unaddressable" => self.unaddressable,
            "scheduled" => self.scheduled,
            "queued" => self.queued,
            "sent" => self.sent,
            "delivered" => self.delivered,
            "read" => self.read,
            "opened" => self.opened,
            "undelivered" => self.undelivered,
            "failed" => self.failed,
            "canceled" => self.canceled,
            _ => 0,
        }
    }

    /// The fields this kind shows, in order ([`stat_names`]), with their values.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        stat_names(self.kind)
            .iter()
            .map(|&n| (n, self.get(n)))
            .collect()
    }

    /// Sum of every status bucket; always equals `total`.
    pub fn bucket_sum(&self) -> u64 {
        self.scheduled
            + self.queued
            + self.sent
            + self.delivered
            + self.read
            + self.opened
            + self.undelivered
            + self.failed
            + self.canceled
    }
}

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields = self.fields();
        let mut m = s.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            m.serialize_entry(k, &v)?;
        }
        m.end()
    }
}

/// An operation's rolled-up state, as the query API and Kafka show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationView {
    pub id: String,
    pub kind: Kind,
    pub status: OperationStatus,
    pub stats: Stats,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub version: u64,
}

/// Bytes held by each part of the in-memory state, as laid out (not counting the allocator's
/// own overhead or freed memory it keeps).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryParts {
    pub slots: u64,
    pub slot_index: u64,
    pub extra_attempts: u64,
    pub links: u64,
    pub other: u64,
}

/// The bytes of a hash table of `capacity` entries of `entry` bytes: a bucket and a control
/// byte each, with buckets a power of two and at most 7/8 full.
pub fn table_bytes(capacity: usize, entry: usize) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        capacity + 1
    } else {
        capacity * 8 / 7
    }
    .next_power_of_two();
    (buckets * (entry + 1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn attempt(res: &str, sid: &str, ch: Channel, st: AttemptStatus) -> AttemptEvent {
        AttemptEvent {
            kind: Kind::from_resource_id(res),
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some(res.into()),
            downstream_id: Some(sid.into()),
            attempt: None,
            channel: Some(ch),
            status: st,
            error_code: None,
            to: None,
            tags: vec![],
        }
    }

    /// Found by the `ingest` fuzz target: an email read (bucket `opened` for emails, `read` for
    /// messages) counted under one kind, then a message event that changes the kind.
    #[test]
    fn a_change_of_kind_recounts_the_buckets_whatever_the_order() {
        let email = attempt("comms_email_1", "E1", Channel::Email, AttemptStatus::Opened);
        let message = attempt("comms_message_1", "SM1", Channel::Sms, AttemptStatus::Read);
        let mut stats = vec![];
        for order in [[&email, &message], [&message, &email]] {
            let mut op = Operation::new("comms_operation_1", 1, 1);
            for ev in order {
                op.apply_attempt(ev.resource_id.as_deref().unwrap(), ev, 1, 1);
                let s = op.stats();
                assert_eq!(s.bucket_sum(), s.total);
            }
            stats.push(op.stats());
        }
        assert_eq!(stats[0], stats[1]);
        assert_eq!((stats[0].kind, stats[0].read), (Kind::Messages, 2));
    }

    #[test]
    fn a_failed_rcs_attempt_with_a_queued_sms_fallback_leaves_the_message_queued() {
        let mut op = Operation::new("comms_operation_1", 10, 10);
        let mut rcs = attempt(
            "comms_message_a",
            "SM1",
            Channel::Rcs,
            AttemptStatus::Failed,
        );
        rcs.error_code = Some(30008);
        op.apply_attempt("comms_message_a", &rcs, 10, 10);
        let sms = attempt(
            "comms_message_a",
            "SM2",
            Channel::Sms,
            AttemptStatus::Queued,
        );
        op.apply_attempt("comms_message_a", &sms, 11, 11);
        let s = op.stats();
        assert_eq!((s.total, s.attempts, s.queued, s.failed), (1, 2, 1, 0));
        let sms = attempt(
            "comms_message_a",
            "SM2",
            Channel::Sms,
            AttemptStatus::Delivered,
        );
        op.apply_attempt("comms_message_a", &sms, 12, 12);
        let s = op.stats();
        assert_eq!((s.delivered, s.queued, s.failed), (1, 0, 0));
        assert_eq!(op.status(), OperationStatus::Processing);
    }

    #[test]
    fn a_duplicate_changes_nothing_and_keeps_the_version() {
        let mut op = Operation::new("comms_operation_1", 10, 10);
        let ev = attempt("comms_message_a", "SM1", Channel::Sms, AttemptStatus::Sent);
        assert!(op.apply_attempt("comms_message_a", &ev, 10, 10));
        let v = op.version();
        assert!(!op.apply_attempt("comms_message_a", &ev, 10, 20));
        assert_eq!(op.version(), v);
    }

    #[test]
    fn completed_phase_wins_over_derived_processing_and_all_canceled_is_canceled() {
        let mut op = Operation::new("comms_operation_1", 10, 10);
        op.apply_attempt(
            "comms_message_a",
            &attempt("comms_message_a", "SM1", Channel::Sms, AttemptStatus::Sent),
            10,
            10,
        );
        op.apply_phase(None, Phase::Completed, 10, 10);
        assert_eq!(op.status(), OperationStatus::Completed);
        let mut c = Operation::new("comms_operation_2", 10, 10);
        c.apply_attempt(
            "comms_message_b",
            &attempt(
                "comms_message_b",
                "SM2",
                Channel::Sms,
                AttemptStatus::Canceled,
            ),
            10,
            10,
        );
        assert_eq!(c.status(), OperationStatus::Canceled);
    }

    #[test]
    fn stats_follow_each_kinds_field_set_and_order() {
        let mut s = Operation::new("o", 0, 0).stats();
        let names = |s: &Stats| {
            s.fields()
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(",")
        };
        // Messages: exactly Twilio's sample; Emails and push notifications: Twilio's fields in
        // its order, tally's extras after.
        assert_eq!(
            names(&s),
            "total,recipients,attempts,unaddressable,queued,sent,scheduled,delivered,read,undelivered,failed,canceled"
        );
        s.kind = Kind::Emails;
        assert_eq!(
            names(&s),
            "total,queued,sent,scheduled,delivered,opened,undelivered,failed,canceled,recipients,attempts"
        );
        s.kind = Kind::PushNotifications;
        assert_eq!(
            names(&s),
            "total,recipients,attempts,queued,sent,delivered,undelivered,failed,unaddressable,scheduled,canceled"
        );
        s.delivered = 4;
        s.unaddressable = 1;
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"total":0,"recipients":0,"attempts":0,"queued":0,"sent":0,"delivered":4,"undelivered":0,"failed":0,"unaddressable":1,"scheduled":0,"canceled":0}"#
        );
    }

    fn read(res: &str, st: AttemptStatus) -> ResourceRead {
        ResourceRead {
            kind: Kind::from_resource_id(res).unwrap_or(Kind::Messages),
            operation_id: "comms_operation_1".into(),
            resource_id: res.into(),
            status: st,
            to: None,
            tags: vec![],
        }
    }

    /// A read is Twilio's word at the time of the read. One taken before the newest callbacks
    /// (a status the resource has already passed) never moves it backwards in the resource
    /// order, changes nothing at all unless the callbacks said failed, undelivered or canceled
    /// (which rank below anything in flight, so an in-flight read counts there like a fallback
    /// attempt still under way), and the next read,
    /// Twilio's current word, puts it back exactly where the callbacks put it.
    #[test]
    fn a_stale_read_after_newer_callbacks_never_moves_a_resource_backwards() {
        use AttemptStatus::*;
        let lives: [&[AttemptStatus]; 4] = [
            &[Scheduled, Queued, Sent, Delivered, Read],
            &[Queued, Sent, Undelivered],
            &[Queued, Sent, Failed],
            &[Scheduled, Queued, Canceled],
        ];
        let status = |op: &Operation| op.resource("comms_message_a").unwrap().status();
        for life in lives {
            for now in 0..life.len() {
                for stale in 0..=now {
                    let mut op = Operation::new("comms_operation_1", 1, 1);
                    for st in &life[..=now] {
                        let ev = attempt("comms_message_a", "SM1", Channel::Sms, *st);
                        op.apply_attempt("comms_message_a", &ev, 1, 1);
                    }
                    let (before, stats) = (status(&op), op.stats());
                    let what = format!("{:?} read after {:?}", life[stale], life[now]);
                    op.apply_resource_read(&read("comms_message_a", life[stale]), 1, 2);
                    assert!(status(&op) >= before, "{what}");
                    let below_in_flight = matches!(
                        before,
                        ResourceStatus::Failed
                            | ResourceStatus::Undelivered
                            | ResourceStatus::Canceled
                    );
                    if !below_in_flight {
                        assert_eq!(op.stats(), stats, "{what}");
                    }
                    op.apply_resource_read(&read("comms_message_a", life[now]), 1, 3);
                    assert_eq!(
                        status(&op),
                        before,
                        "{what}, then a read of {:?}",
                        life[now]
                    );
                }
            }
        }
    }

    #[test]
    fn reads_bring_in_what_twilio_never_pushes() {
        let mut op = Operation::new("comms_operation_e", 5, 5);
        // An Email operation with no callback at all: reads alone build it.
        for (id, st) in [
            ("comms_email_1", AttemptStatus::Opened),
            ("comms_email_2", AttemptStatus::Delivered),
            ("comms_email_3", AttemptStatus::Queued),
        ] {
            assert!(op.apply_resource_read(&read(id, st), 5, 6).changed);
        }
        let s = op.stats();
        assert_eq!(s.kind, Kind::Emails);
        assert_eq!(
            (s.total, s.opened, s.delivered, s.queued, s.attempts),
            (3, 1, 1, 1, 0)
        );
        let r = OperationRead {
            operation_id: "comms_operation_e".into(),
            kind: Kind::Emails,
            status: Some(OperationStatus::Canceled),
            total: 4,
            recipients: 4,
            attempts: 3,
            unaddressable: 0,
        };
        assert!(op.apply_operation_read(&r, 5, 7));
        assert!(
            !op.apply_operation_read(&r, 5, 8),
            "a second read is a no-op"
        );
        let s = op.stats();
        assert_eq!((s.total, s.recipients, s.attempts), (4, 4, 3));
        assert_eq!(op.status(), OperationStatus::Canceled);
        // Snapshots keep the reads.
        let back: Operation = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
        assert_eq!(back.view(), op.view());
        assert_eq!(
            back.resource("comms_email_3").unwrap().reads,
            op.resource("comms_email_3").unwrap().reads
        );
    }

    #[test]
    fn created_at_is_the_earliest_event_time() {
        let mut op = Operation::new("o", 50, 50);
        let ev = attempt("comms_message_a", "SM1", Channel::Sms, AttemptStatus::Sent);
        op.apply_attempt("comms_message_a", &ev, 20, 60);
        assert_eq!(op.created_ms, 20);
        assert_eq!(op.updated_ms, 60);
    }

    #[test]
    fn a_snapshot_naming_a_resource_twice_is_refused() {
        let mut op = Operation::new("o", 50, 50);
        for id in ["comms_message_a", "comms_message_b"] {
            let ev = attempt(id, "SM1", Channel::Sms, AttemptStatus::Sent);
            op.apply_attempt(id, &ev, 20, 60);
        }
        let json = serde_json::to_string(&op).unwrap();
        let back: Operation = serde_json::from_str(&json).unwrap();
        assert_eq!((back.view(), back.resource_count()), (op.view(), 2));
        // The first entry of the resources map written a second time.
        let start = json.find("\"resources\":{").unwrap() + "\"resources\":{".len();
        let end = json[start..].find("},\"comms_message_b\"").unwrap() + start + 1;
        let twice = format!("{}{},{}", &json[..start], &json[start..end], &json[start..]);
        let err = serde_json::from_str::<Operation>(&twice).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }

    /// The compact store against a plain model of the joins: ids of no packed form, recipient
    /// addresses longer than 16 bytes, times far from the operation's first (stored beside the
    /// slots rather than as offsets), tag sets that change, and resources with up to five
    /// attempts, applied in any order, read back exactly and survive a snapshot.
    mod compact_store {
        use super::*;
        use proptest::prelude::*;

        const DAY: u64 = 86_400_000;

        fn res_id(i: u8) -> String {
            match i % 3 {
                0 => format!("comms_message_01h9krwprkeee8fzqspvwy6n{i:02}"),
                1 => format!("a-resource-id-of-no-known-shape-{i}"),
                _ => format!("r{i}"),
            }
        }

        fn sid(i: u8) -> String {
            match i % 3 {
                0 => format!("SM0123456789abcdef0123456789abcd{i:02}"),
                1 => format!("provider-message-id-without-a-known-shape-{i}"),
                _ => format!("P{i}"),
            }
        }

        fn address(i: u8) -> String {
            if i.is_multiple_of(2) {
                format!("+1555000{i:04}")
            } else {
                format!("someone.with.a.long.address.{i}@example.com")
            }
        }

        #[derive(Debug, Clone)]
        struct Gen {
            res: u8,
            sid: u8,
            status: u8,
            to: Option<u8>,
            tag: Option<(u8, u8)>,
            days: i8,
        }

        fn gen() -> impl Strategy<Value = Gen> {
            (
                0u8..4,
                0u8..5,
                0u8..8,
                prop::option::of(0u8..4),
                prop::option::of((0u8..2, 0u8..3)),
                -30i8..30,
            )
                .prop_map(|(res, sid, status, to, tag, days)| Gen {
                    res,
                    sid,
                    status,
                    to,
                    tag,
                    days,
                })
        }

        const STATUSES: [AttemptStatus; 8] = [
            AttemptStatus::Scheduled,
            AttemptStatus::Queued,
            AttemptStatus::Sent,
            AttemptStatus::Delivered,
            AttemptStatus::Read,
            AttemptStatus::Undelivered,
            AttemptStatus::Failed,
            AttemptStatus::Canceled,
        ];

        fn event(g: &Gen) -> AttemptEvent {
            let mut ev = attempt(
                &res_id(g.res),
                &sid(g.res * 10 + g.sid),
                Channel::Sms,
                STATUSES[g.status as usize],
            );
            ev.kind = Some(Kind::Messages);
            ev.to = g.to.map(address);
            ev.tags = g
                .tag
                .map(|(k, v)| (format!("key{k}"), format!("value{v}")))
                .into_iter()
                .collect();
            ev
        }

        fn time(g: &Gen) -> u64 {
            (100 * DAY).wrapping_add_signed(i64::from(g.days) * DAY as i64)
        }

        /// A resource as the model keeps it: address, tags, attempt statuses by downstream id,
        /// earliest event time, latest arrival.
        type Modelled = (
            Option<String>,
            BTreeMap<String, String>,
            BTreeMap<String, AttemptStatus>,
            u64,
            u64,
        );

        /// The joins written out plainly, on the readable forms.
        fn model(gens: &[Gen]) -> BTreeMap<String, Modelled> {
            let mut m: BTreeMap<String, Modelled> = BTreeMap::new();
            for g in gens {
                let ev = event(g);
                let r = m.entry(res_id(g.res)).or_insert((
                    None,
                    BTreeMap::new(),
                    BTreeMap::new(),
                    u64::MAX,
                    0,
                ));
                r.0 = r.0.clone().max(ev.to.clone());
                for (k, v) in &ev.tags {
                    let e = r.1.entry(k.clone()).or_default();
                    if v > e {
                        *e = v.clone();
                    }
                }
                let st =
                    r.2.entry(ev.downstream_id.clone().unwrap())
                        .or_insert(ev.status);
                *st = crate::rollup::status::join_attempt(*st, ev.status);
                r.3 = r.3.min(time(g));
                // When it last changed depends on the order; the latest arrival bounds it.
                r.4 = r.4.max(time(g) + DAY);
            }
            m
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn reads_back_what_the_joins_say_in_any_order(gens in prop::collection::vec(gen(), 1..40), seed in any::<u64>()) {
                let want = model(&gens);
                let mut shuffled = gens.clone();
                let mut x = seed | 1;
                for i in (1..shuffled.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    shuffled.swap(i, (x % (i as u64 + 1)) as usize);
                }
                for order in [&gens, &shuffled] {
                    let mut op = Operation::new("comms_operation_1", time(&order[0]), time(&order[0]));
                    for g in order.iter() {
                        let ev = event(g);
                        op.apply_attempt(&res_id(g.res), &ev, time(g), time(g) + DAY);
                    }
                    let json = serde_json::to_string(&op).unwrap();
                    let back: Operation = serde_json::from_str(&json).unwrap();
                    for o in [&op, &back] {
                        let got: BTreeMap<_, _> = o
                            .resources()
                            .map(|r| {
                                let attempts = r.attempts.iter().map(|a| (a.downstream_id.clone().unwrap(), a.status)).collect();
                                let latest = want.get(&r.id).map_or(0, |w| w.4);
                                let updated = if r.updated_ms <= latest && r.updated_ms > r.created_ms { latest } else { r.updated_ms };
                                (r.id.clone(), (r.to.clone(), r.tags.clone(), attempts, r.created_ms, updated))
                            })
                            .collect();
                        prop_assert_eq!(&got, &want);
                        prop_assert_eq!(o.version(), op.version());
                        let updated = |x: &Operation| x.resources().map(|r| (r.id, r.updated_ms)).collect::<BTreeMap<_, _>>();
                        prop_assert_eq!(updated(o), updated(&op));
                        let attempts: usize = want.values().map(|r| r.2.len()).sum();
                        prop_assert_eq!(o.attempt_count(), attempts as u64);
                    }
                    for id in want.keys() {
                        prop_assert_eq!(op.resource(id).map(|r| r.id), Some(id.clone()));
                    }
                }
            }
        }
    }
}
