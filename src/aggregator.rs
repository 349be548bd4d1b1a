//! The shared book: every operation in a `DashMap`, the links that tie attempts to resources
//! and resources to operations, and the attempts held until something links them.
//!
//! Methods are synchronous and return owned data, so no map guard ever lives across an
//! `.await`. Time is passed in.

use crate::dirty::Dirty;
use crate::event::{AttemptEvent, Event, EventBody, Kind, ResourceRead, SkipReason, Text};
use crate::rollup::hashing::FastHash;
use crate::rollup::links::LinkTable;
use crate::rollup::{
    Bucket, Fallback, Operation, OperationStatus, OperationView, Resource, ResourceStatus,
};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event changed the state of an operation of this kind.
    Applied(Kind),
    /// The attempt is not linked to a resource yet; it is held until a link arrives.
    Held,
    /// A duplicate or stale event: nothing changed.
    Noop,
    Rejected(SkipReason),
}

/// Bounds on what the aggregator keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most attempt events held unlinked at once; the oldest are dropped (and counted) beyond.
    pub max_held: usize,
    /// How long an unlinked attempt is held before it is dropped (and counted).
    pub held_ttl_ms: u64,
    /// Most resources tracked; beyond it the least recently changed operations are evicted.
    pub max_resources: u64,
    /// Keep recipient addresses (`[privacy]`); when false, events are applied without them.
    pub keep_recipient_addresses: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_held: 100_000,
            held_ttl_ms: 4 * 3600 * 1000,
            max_resources: 5_000_000,
            keep_recipient_addresses: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum HeldKey {
    Sid(String),
    Resource(String),
}

/// The link an unlinked attempt waits for: its resource's when it names one (see
/// `Aggregator::resolve`), else its SID's.
fn held_key<S: Text>(a: &AttemptEvent<S>) -> Option<HeldKey> {
    match (&a.resource_id, &a.downstream_id) {
        (Some(res), _) => Some(HeldKey::Resource(res.to_string())),
        (None, Some(sid)) => Some(HeldKey::Sid(sid.to_string())),
        (None, None) => None,
    }
}

#[derive(Default)]
struct HeldBook {
    entries: HashMap<HeldKey, Vec<(AttemptEvent, u64)>>,
    /// Insertion order of keys with the time they were first held, for age and count bounds.
    order: VecDeque<(HeldKey, u64)>,
    events: usize,
}

impl HeldBook {
    fn remove(&mut self, key: &HeldKey) -> Vec<(AttemptEvent, u64)> {
        let taken = self.entries.remove(key).unwrap_or_default();
        self.events -= taken.len();
        taken
    }

    /// Drop the oldest keys while `over` says so; returns how many events were dropped.
    fn drop_oldest_while(&mut self, mut over: impl FnMut(&Self, u64) -> bool) -> usize {
        let mut dropped = 0;
        while let Some((key, since)) = self.order.front().cloned() {
            if !self.entries.contains_key(&key) {
                self.order.pop_front();
                continue;
            }
            if !over(self, since) {
                break;
            }
            self.order.pop_front();
            dropped += self.remove(&key).len();
        }
        dropped
    }
}

/// Counts of what the book holds, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Operations by kind and status.
    pub operations: HashMap<(Kind, OperationStatus), u64>,
    pub resources: u64,
    pub attempts: u64,
    pub held: u64,
}

/// A resource with what a view of it needs from its operation.
#[derive(Debug, Clone)]
pub struct ResourceSnapshot {
    pub operation_id: String,
    pub kind: Kind,
    pub status: ResourceStatus,
    pub resource: Resource,
}

/// Filters of the resource list endpoints.
#[derive(Debug, Clone, Default)]
pub struct ResourceFilter {
    pub status: Option<Bucket>,
    pub channel: Option<crate::event::Channel>,
    pub tags: Vec<(String, String)>,
}

impl ResourceFilter {
    fn matches(&self, kind: Kind, r: &Resource) -> bool {
        if let Some(b) = self.status {
            if r.status().bucket(kind) != b {
                return false;
            }
        }
        if let Some(c) = self.channel {
            if !r.attempts.iter().any(|a| a.channel == Some(c)) {
                return false;
            }
        }
        self.tags
            .iter()
            .all(|(k, v)| r.tags.get(k).is_some_and(|x| x == v))
    }
}

/// Where a link points: an operation's link number and the resource's slot there.
type Link = (u32, u32);

/// The in-memory state of every tracked operation.
pub struct Aggregator {
    ops: DashMap<String, Operation, FastHash>,
    /// Keyed hash of an attempt (downstream) id → its operation and resource slot, 12 bytes a
    /// link ([`LinkTable`]); a link is trusted only once the operation confirms the resource
    /// has that attempt, so ids that share a fingerprint can never misfile an event.
    sid_links: LinkTable<Link>,
    /// Keyed hash of a resource id → its operation's link number, 8 bytes a link (confirmed
    /// the same way: the operation must hold the resource).
    res_links: LinkTable<u32>,
    link_keys: RandomState,
    /// Bits of a link key kept: all of them, but for [`Aggregator::with_colliding_links`].
    link_key_mask: u64,
    /// Link number → operation id: links name an operation by a small number, not its id.
    operations_by_link_number: DashMap<u32, String, FastHash>,
    next_link_number: AtomicU32,
    held: Mutex<HeldBook>,
    /// Events in `held`, raised *before* a holder checks the links (see `hold`).
    held_count: AtomicUsize,
    held_dropped: AtomicU64,
    evicted_ttl: AtomicU64,
    evicted_capacity: AtomicU64,
    resources: AtomicU64,
    /// Channel fallbacks seen and not yet taken by the metrics (see `take_fallbacks`).
    fallbacks: Mutex<BTreeMap<Fallback, u64>>,
    limits: Limits,
    /// Operations changed since last published; unset while publishing is off.
    dirty: OnceLock<Dirty>,
}

/// Held attempts of one key, as a snapshot stores them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldEntry {
    key: HeldKey,
    since_ms: u64,
    events: Vec<(AttemptEvent, u64)>,
}

/// The whole state, as a snapshot stores it. Links are derived from the operations on restore.
#[derive(Debug, Deserialize)]
pub struct SnapshotState {
    pub operations: Vec<Operation>,
    pub held: Vec<HeldEntry>,
}

impl Aggregator {
    pub fn new(limits: Limits) -> Aggregator {
        Aggregator {
            ops: DashMap::default(),
            sid_links: LinkTable::for_this_machine(),
            res_links: LinkTable::for_this_machine(),
            link_keys: RandomState::new(),
            link_key_mask: u64::MAX,
            operations_by_link_number: DashMap::default(),
            next_link_number: AtomicU32::new(1),
            held: Mutex::new(HeldBook::default()),
            held_count: AtomicUsize::new(0),
            held_dropped: AtomicU64::new(0),
            evicted_ttl: AtomicU64::new(0),
            evicted_capacity: AtomicU64::new(0),
            resources: AtomicU64::new(0),
            fallbacks: Mutex::new(BTreeMap::new()),
            limits,
            dirty: OnceLock::new(),
        }
    }

    /// From now on, mark every changed operation in `dirty`, for the Kafka publisher. Set once,
    /// before callbacks flow; false if it was set already.
    pub fn track_changes(&self, dirty: Dirty) -> bool {
        self.dirty.set(dirty).is_ok()
    }

    /// The operations changed since last published, when publishing is on.
    pub fn dirty(&self) -> Option<&Dirty> {
        self.dirty.get()
    }

    /// Mark every operation held now as changed (after recovery, whose state may not have
    /// reached Kafka before the restart); returns how many.
    pub fn mark_all_changed(&self, now_ms: u64) -> usize {
        let Some(d) = self.dirty.get() else { return 0 };
        let ids: Vec<String> = self.ops.iter().map(|op| op.id.clone()).collect();
        for id in &ids {
            d.mark(id, None, now_ms);
        }
        ids.len()
    }

    /// Mark every operation whose id `pick` says as changed; returns how many (cluster mode:
    /// a partition that went live, or whose fence passed).
    pub fn mark_changed_where(&self, pick: impl Fn(&str) -> bool, now_ms: u64) -> usize {
        let Some(d) = self.dirty.get() else { return 0 };
        let ids: Vec<String> = self
            .ops
            .iter()
            .filter(|op| pick(&op.id))
            .map(|op| op.id.clone())
            .collect();
        for id in &ids {
            d.mark(id, None, now_ms);
        }
        ids.len()
    }

    /// Forget every operation whose id `gone` says, with its links and its mark for publishing,
    /// and every held attempt whose routing key `gone` says (its operation id, else the SID or
    /// resource id it waits under): cluster mode, when a partition moves to another process.
    /// Returns how many operations went.
    pub fn forget_where(&self, gone: impl Fn(&str) -> bool) -> usize {
        let ids: Vec<String> = self
            .ops
            .iter()
            .filter(|op| gone(&op.id))
            .map(|op| op.id.clone())
            .collect();
        for id in &ids {
            self.evict(id, u64::MAX);
            if let Some(d) = self.dirty.get() {
                d.forget(id);
            }
        }
        // A held attempt is on the partition it was routed by: its operation's when it names
        // one (it waits under its SID all the same), else that of the key it waits under.
        let mut book = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        book.entries.retain(|k, list| {
            let (HeldKey::Sid(key) | HeldKey::Resource(key)) = k;
            let before = list.len();
            list.retain(|(a, _)| !gone(a.operation_id.as_deref().unwrap_or(key)));
            removed += before - list.len();
            !list.is_empty()
        });
        book.events -= removed;
        self.held_count.store(book.events, Ordering::SeqCst);
        ids.len()
    }

    /// Whether an attempt SID (`sid`) or a resource id (otherwise) is linked to an operation
    /// here that holds it.
    pub fn knows_link(&self, id: &str, sid: bool) -> bool {
        if sid {
            self.sid_link(id).is_some()
        } else {
            self.res_link(id).is_some()
        }
    }

    /// Called after the change is made and its map guard dropped, so a publisher that takes the
    /// mark always reads a state at least this new.
    fn mark_dirty(&self, op_id: &str, res_id: Option<&str>, now_ms: u64) {
        if let Some(d) = self.dirty.get() {
            d.mark(op_id, res_id, now_ms);
        }
    }

    /// The bounds it was built with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether recipient addresses are kept (`[privacy] keep_recipient_addresses`).
    pub fn keeps_recipient_addresses(&self) -> bool {
        self.limits.keep_recipient_addresses
    }

    /// Apply one event at wall-clock time `now_ms`, its ids owned or borrowed.
    pub fn apply<S: Text + Clone>(&self, ev: &Event<S>, now_ms: u64) -> Outcome {
        // Callbacks arrive scrubbed already; this catches journal records written before
        // `keep_recipient_addresses` was switched off.
        let mut scrubbed = None;
        if !self.limits.keep_recipient_addresses {
            let mut copy = ev.clone();
            if copy.forget_recipient() {
                scrubbed = Some(copy);
            }
        }
        let ev = scrubbed.as_ref().unwrap_or(ev);
        match &ev.body {
            EventBody::Operation {
                operation_id,
                kind,
                phase,
            } => {
                let mut op = self
                    .ops
                    .entry(operation_id.to_string())
                    .or_insert_with(|| self.new_operation(operation_id, ev.time_ms, now_ms));
                if op.apply_phase(*kind, *phase, ev.time_ms, now_ms) {
                    let kind = op.kind();
                    drop(op);
                    self.mark_dirty(operation_id, None, now_ms);
                    Outcome::Applied(kind)
                } else {
                    Outcome::Noop
                }
            }
            EventBody::Attempt(a) => self.apply_attempt(a, ev.time_ms, now_ms),
            EventBody::OperationRead(r) => {
                let mut op = self
                    .ops
                    .entry(r.operation_id.clone())
                    .or_insert_with(|| self.new_operation(&r.operation_id, ev.time_ms, now_ms));
                if op.apply_operation_read(r, ev.time_ms, now_ms) {
                    let kind = op.kind();
                    drop(op);
                    self.mark_dirty(&r.operation_id, None, now_ms);
                    Outcome::Applied(kind)
                } else {
                    Outcome::Noop
                }
            }
            EventBody::ResourceRead(r) => self.apply_resource_read(r, ev.time_ms, now_ms),
        }
    }

    /// Fold one resource read from Twilio into its operation, and link the resource there so
    /// that attempts naming only the resource find it (and held ones are released).
    fn apply_resource_read(&self, r: &ResourceRead, time_ms: u64, now_ms: u64) -> Outcome {
        let (changed, kind, link, new_resource) = {
            let mut op = self
                .ops
                .entry(r.operation_id.clone())
                .or_insert_with(|| self.new_operation(&r.operation_id, time_ms, now_ms));
            let before = op.resource_count();
            let applied = op.apply_resource_read(r, time_ms, now_ms);
            let new_resource = op.resource_count() > before;
            if new_resource {
                self.resources.fetch_add(1, Ordering::Relaxed);
            }
            (applied.changed, op.kind(), op.link_number(), new_resource)
        };
        if changed {
            self.mark_dirty(&r.operation_id, Some(&r.resource_id), now_ms);
        }
        // Another resource of this operation may have filed the very same link (one
        // fingerprint, one operation): the resource is linked all the same once it is new here.
        let linked = self.link_resource(&r.resource_id, link);
        if linked || new_resource {
            self.release_held(&r.operation_id, &r.resource_id, None, now_ms);
        }
        if changed {
            Outcome::Applied(kind)
        } else {
            Outcome::Noop
        }
    }

    fn link_key(&self, id: &str) -> u64 {
        self.link_keys.hash_one(id) & self.link_key_mask
    }

    /// For tests: an aggregator whose links all fall in one shard under four fingerprints, so
    /// that nearly every lookup meets other ids' links. Its state must be the same as
    /// [`Aggregator::new`]'s for the same events.
    #[doc(hidden)]
    pub fn with_colliding_links(limits: Limits) -> Aggregator {
        Aggregator {
            link_key_mask: 0b11,
            ..Aggregator::new(limits)
        }
    }

    /// A new operation, with a link number.
    fn new_operation(&self, id: &str, time_ms: u64, now_ms: u64) -> Operation {
        let mut op = Operation::new(id, time_ms, now_ms);
        op.set_link_number(self.assign_link_number(id));
        op
    }

    /// Give `op_id` a link number no live operation has.
    fn assign_link_number(&self, op_id: &str) -> u32 {
        loop {
            let n = self.next_link_number.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.operations_by_link_number.entry(n) {
                v.insert(op_id.to_owned());
                return n;
            }
        }
    }

    /// The operation id behind a link number.
    fn operation_by_link_number(&self, n: u32) -> Option<String> {
        self.operations_by_link_number
            .get(&n)
            .map(|e| e.value().clone())
    }

    /// Link a resource id to operation `n` unless it is linked already (to an operation that
    /// holds it: the first one stays, so where an id resolves never changes while that
    /// operation lives); true when a link was stored.
    fn link_resource(&self, res: &str, n: u32) -> bool {
        let h = self.link_key(res);
        self.res_link_at(res, h).is_none() && self.res_links.insert(h, n)
    }

    /// Link an attempt id to its operation and slot unless it is linked already, as
    /// [`Aggregator::link_resource`] does.
    fn link_sid(&self, sid: &str, link: Link) -> bool {
        let h = self.link_key(sid);
        self.sid_link_at(sid, h).is_none() && self.sid_links.insert(h, link)
    }

    /// Of the links stored under one fingerprint (`candidates`, each naming its operation by
    /// `number`), the one whose operation `holds` the id, with that operation's id and what
    /// `holds` found: an id is linked once, so there is one; should a race of two first links
    /// leave two, the lowest-numbered wins.
    fn confirmed<V: Copy, R>(
        &self,
        candidates: crate::rollup::links::Candidates<V>,
        number: impl Fn(V) -> u32,
        holds: impl Fn(&Operation, V) -> Option<R>,
    ) -> Option<(String, R)> {
        let mut best: Option<(u32, String, R)> = None;
        for v in candidates {
            let n = number(v);
            if best.as_ref().is_some_and(|b| b.0 <= n) {
                continue;
            }
            let Some(op_id) = self.operation_by_link_number(n) else {
                continue;
            };
            let Some(found) = self.ops.get(&*op_id).and_then(|op| holds(&op, v)) else {
                continue;
            };
            best = Some((n, op_id, found));
        }
        best.map(|(_, op, found)| (op, found))
    }

    /// The (operation id, resource id) an attempt id is linked to, confirmed.
    fn sid_link(&self, sid: &str) -> Option<(String, String)> {
        self.sid_link_at(sid, self.link_key(sid))
    }

    /// [`Aggregator::sid_link`], with the id's link key `h` already made.
    fn sid_link_at(&self, sid: &str, h: u64) -> Option<(String, String)> {
        self.confirmed(
            self.sid_links.candidates(h),
            |(n, _)| n,
            |op, (_, slot)| op.resource_with_attempt(slot, sid),
        )
    }

    /// The operation id a resource id is linked to, confirmed, with the id's link key `h`
    /// already made.
    fn res_link_at(&self, res: &str, h: u64) -> Option<String> {
        self.confirmed(
            self.res_links.candidates(h),
            |n| n,
            |op, _| op.slot_of(res).map(|_| ()),
        )
        .map(|(op, ())| op)
    }

    /// The operation id a resource id is linked to.
    fn res_link(&self, res: &str) -> Option<String> {
        self.res_link_at(res, self.link_key(res))
    }

    /// The operation and resource an attempt belongs to, as far as the links tell now.
    ///
    /// An attempt that names its resource is linked through that resource only: the link of
    /// its SID cannot name its operation, since that link may be to another resource. So an
    /// attempt resolves exactly when the link it is held under ([`held_key`]) exists, and is
    /// released when that link is made, whatever the order the events came in.
    fn resolve<'a, S: Text>(
        &self,
        a: &'a AttemptEvent<S>,
    ) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>) {
        if let (Some(op), Some(res)) = (&a.operation_id, &a.resource_id) {
            return (Some(Cow::Borrowed(op)), Some(Cow::Borrowed(res)));
        }
        let by_sid = a
            .downstream_id
            .as_deref()
            .filter(|_| a.resource_id.is_none())
            .and_then(|s| self.sid_link(s));
        let res = a
            .resource_id
            .as_deref()
            .map(Cow::Borrowed)
            .or_else(|| by_sid.as_ref().map(|l| Cow::Owned(l.1.clone())));
        let op = a
            .operation_id
            .as_deref()
            .map(Cow::Borrowed)
            .or_else(|| {
                res.as_deref()
                    .and_then(|r| self.res_link(r))
                    .map(Cow::Owned)
            })
            .or_else(|| by_sid.map(|l| Cow::Owned(l.0)));
        (op, res)
    }

    fn apply_attempt<S: Text>(&self, a: &AttemptEvent<S>, time_ms: u64, now_ms: u64) -> Outcome {
        if let (Some(op), Some(res)) = self.resolve(a) {
            return self.apply_linked(&op, &res, a, time_ms, now_ms);
        }
        let Some(key) = held_key(a) else {
            return Outcome::Rejected(SkipReason::Unlinkable);
        };
        self.hold(key, a, time_ms, now_ms)
    }

    fn apply_linked<S: Text>(
        &self,
        op_id: &str,
        res_id: &str,
        a: &AttemptEvent<S>,
        time_ms: u64,
        now_ms: u64,
    ) -> Outcome {
        let (applied, kind, link) = {
            let mut op = match self.ops.get_mut(op_id) {
                Some(op) => op,
                None => self
                    .ops
                    .entry(op_id.to_owned())
                    .or_insert_with(|| self.new_operation(op_id, time_ms, now_ms)),
            };
            let before = op.resource_count();
            let applied = op.apply_attempt_at(res_id, a, time_ms, now_ms);
            if op.resource_count() > before {
                self.resources.fetch_add(1, Ordering::Relaxed);
            }
            (applied, op.kind(), (op.link_number(), applied.slot))
        };
        let (changed, fallback) = (applied.changed, applied.fallback);
        if let Some(f) = fallback {
            self.note_fallback(f);
        }
        if changed {
            self.mark_dirty(op_id, Some(res_id), now_ms);
        }
        // A resource or attempt id the operation held already was linked when it came, and
        // links go only with their whole operation: the tables, large and cold, are touched
        // only for ids new to the operation. (One id in two operations, which Twilio's unique
        // ids never are, stays linked to the first; once that one is evicted, the second is
        // linked again only by a read of it, and events naming the id alone wait.)
        let mut new_link = false;
        if applied.new_resource {
            self.link_resource(res_id, link.0);
            new_link = true;
        }
        if let Some(sid) = a.downstream_id.as_ref().filter(|_| applied.new_downstream) {
            self.link_sid(sid, link);
            new_link = true;
        }
        if new_link {
            self.release_held(op_id, res_id, a.downstream_id.as_deref(), now_ms);
        }
        if changed {
            Outcome::Applied(kind)
        } else {
            Outcome::Noop
        }
    }

    /// Hold an unlinked attempt. The count is raised before the links are re-checked under the
    /// lock, and a linker inserts its link before reading the count, so either the holder sees
    /// the link or the linker sees the held event: nothing is stranded.
    fn hold<S: Text>(
        &self,
        key: HeldKey,
        a: &AttemptEvent<S>,
        time_ms: u64,
        now_ms: u64,
    ) -> Outcome {
        let mut book = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.held_count.fetch_add(1, Ordering::SeqCst);
        if let (Some(op), Some(res)) = self.resolve(a) {
            self.held_count.fetch_sub(1, Ordering::SeqCst);
            drop(book);
            return self.apply_linked(&op, &res, a, time_ms, now_ms);
        }
        // The same event again is held once, at the earliest time seen: the time feeds only
        // `createdAt` (a minimum), so keeping the minimum loses nothing whatever the order
        // (found by the `ingest` fuzz target: the later copy was kept when it came first).
        let a = a.to_owned_event();
        let same = book
            .entries
            .get_mut(&key)
            .and_then(|l| l.iter_mut().find(|(e, _)| *e == a));
        if let Some((_, held_since)) = same {
            self.held_count.fetch_sub(1, Ordering::SeqCst);
            if time_ms < *held_since {
                *held_since = time_ms;
                return Outcome::Held;
            }
            return Outcome::Noop;
        }
        let list = book.entries.entry(key.clone()).or_default();
        let fresh = list.is_empty();
        list.push((a, time_ms));
        book.events += 1;
        if fresh {
            book.order.push_back((key, now_ms));
        }
        let max = self.limits.max_held;
        let dropped = book.drop_oldest_while(|b, _| b.events > max);
        self.held_count.store(book.events, Ordering::SeqCst);
        self.held_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        Outcome::Held
    }

    fn release_held(&self, op_id: &str, res_id: &str, sid: Option<&str>, now_ms: u64) {
        if self.held_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let released = {
            let mut book = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = book.remove(&HeldKey::Resource(res_id.to_owned()));
            if let Some(s) = sid {
                out.extend(book.remove(&HeldKey::Sid(s.to_owned())));
            }
            self.held_count.store(book.events, Ordering::SeqCst);
            out
        };
        for (ev, time_ms) in released {
            // Where `resolve` puts it now, so that the same event applied again lands in the
            // same place (found by the `ingest` fuzz target: with a resource claimed by two
            // operations, the release used the linking event's operation and a later copy the
            // resource's).
            let (op, res) = self.resolve(&ev);
            let op = op.unwrap_or(Cow::Borrowed(op_id));
            let res = res.unwrap_or(Cow::Borrowed(res_id));
            self.apply_linked(&op, &res, &ev, time_ms, now_ms);
        }
    }

    /// Every operation's id, kind and creation time (what the reconciler keeps in step).
    pub fn operation_ids(&self) -> Vec<(String, Kind, u64)> {
        self.ops
            .iter()
            .map(|op| (op.id.clone(), op.kind(), op.created_ms))
            .collect()
    }

    /// The rolled-up view of one operation.
    pub fn operation(&self, id: &str) -> Option<OperationView> {
        self.ops.get(id).map(|op| op.view())
    }

    /// Operations of `kind`, in id order, after the id `after`, at most `limit`.
    pub fn list_operations(
        &self,
        kind: Kind,
        status: Option<OperationStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<OperationView> {
        let mut ids: Vec<String> = self
            .ops
            .iter()
            .filter(|op| op.kind() == kind)
            .filter(|op| after.is_none_or(|a| op.id.as_str() > a))
            .filter(|op| status.is_none_or(|s| op.status() == s))
            .map(|op| op.id.clone())
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.iter().filter_map(|id| self.operation(id)).collect()
    }

    /// Resources of an operation matching `filter`, in id order after `after`, at most `limit`.
    pub fn resources(
        &self,
        op_id: &str,
        filter: &ResourceFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Option<Vec<ResourceSnapshot>> {
        let op = self.ops.get(op_id)?;
        let kind = op.kind();
        Some(
            op.resources_after(after)
                .filter(|r| filter.matches(kind, r))
                .take(limit)
                .map(|r| ResourceSnapshot {
                    operation_id: op.id.clone(),
                    kind,
                    status: r.status(),
                    resource: r,
                })
                .collect(),
        )
    }

    /// One resource by its id.
    pub fn resource(&self, res_id: &str) -> Option<ResourceSnapshot> {
        let op_id = self.res_link(res_id)?;
        let op = self.ops.get(&op_id)?;
        let r = op.resource(res_id)?;
        Some(ResourceSnapshot {
            operation_id: op.id.clone(),
            kind: op.kind(),
            status: r.status(),
            resource: r,
        })
    }

    /// Counts for the metrics endpoint.
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        for op in self.ops.iter() {
            *c.operations.entry((op.kind(), op.status())).or_default() += 1;
            c.resources += op.resource_count() as u64;
            c.attempts += op.attempt_count();
        }
        c.held = self.held_count.load(Ordering::SeqCst) as u64;
        c
    }

    fn note_fallback(&self, f: Fallback) {
        let mut seen = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        *seen.entry(f).or_default() += 1;
    }

    /// The channel fallbacks seen since the last call, with their counts; the metrics add them
    /// to a counter. Start-up takes (and drops) those seen while replaying the journal, which
    /// the previous process already counted.
    pub fn take_fallbacks(&self) -> Vec<(Fallback, u64)> {
        let mut seen = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *seen).into_iter().collect()
    }

    /// Held attempts dropped so far (over the count bound or the age bound).
    pub fn held_dropped(&self) -> u64 {
        self.held_dropped.load(Ordering::Relaxed)
    }

    /// Operations evicted so far because they were unchanged for the retention ttl.
    pub fn evicted_ttl(&self) -> u64 {
        self.evicted_ttl.load(Ordering::Relaxed)
    }

    /// Operations evicted so far to keep under `max_resources`.
    pub fn evicted_capacity(&self) -> u64 {
        self.evicted_capacity.load(Ordering::Relaxed)
    }

    /// Bytes held by each part of the state, as laid out (docs/performance.md, "Memory").
    pub fn memory_parts(&self) -> crate::rollup::operation::MemoryParts {
        let mut parts = crate::rollup::operation::MemoryParts::default();
        for op in self.ops.iter() {
            op.memory_parts(&mut parts);
        }
        parts.links = self.sid_links.allocated_bytes() + self.res_links.allocated_bytes();
        parts
    }

    pub fn operation_count(&self) -> usize {
        self.ops.len()
    }

    /// Resources tracked now.
    pub fn resource_count(&self) -> u64 {
        self.resources.load(Ordering::Relaxed)
    }

    /// True when more resources are tracked than `max_resources` allows.
    pub fn over_capacity(&self) -> bool {
        self.resource_count() > self.limits.max_resources
    }

    fn evict(&self, id: &str, unless_changed_since: u64) -> bool {
        let Some((_, op)) = self
            .ops
            .remove_if(id, |_, op| op.updated_ms <= unless_changed_since)
        else {
            return false;
        };
        self.operations_by_link_number.remove(&op.link_number());
        let n = op.link_number();
        for (_, res, sids) in op.links() {
            self.res_links.remove(self.link_key(&res), |&m| m == n);
            for sid in sids {
                self.sid_links.remove(self.link_key(&sid), |l| l.0 == n);
            }
        }
        self.resources
            .fetch_sub(op.resource_count() as u64, Ordering::Relaxed);
        true
    }

    /// Evict the least recently changed operations until at most 95% of `max_resources` are
    /// tracked. Returns the number of operations evicted.
    pub fn evict_to_capacity(&self) -> usize {
        if !self.over_capacity() {
            return 0;
        }
        let target = self.limits.max_resources - self.limits.max_resources / 20;
        let mut by_age: Vec<(u64, String)> = self
            .ops
            .iter()
            .map(|op| (op.updated_ms, op.id.clone()))
            .collect();
        by_age.sort_unstable();
        let mut evicted = 0;
        for (updated, id) in by_age {
            if self.resource_count() <= target {
                break;
            }
            if self.evict(&id, updated) {
                evicted += 1;
            }
        }
        self.evicted_capacity
            .fetch_add(evicted as u64, Ordering::Relaxed);
        if evicted > 0 {
            tracing::warn!(
                evicted,
                max_resources = self.limits.max_resources,
                "retention.max_resources reached: evicted the least recently changed operations"
            );
        }
        evicted
    }

    /// Evict operations unchanged since before `cutoff_ms`, and held attempts older than the
    /// held bound. Returns the number of operations evicted.
    pub fn sweep(&self, cutoff_ms: u64, now_ms: u64) -> usize {
        let stale: Vec<(u64, String)> = self
            .ops
            .iter()
            .filter(|op| op.updated_ms < cutoff_ms)
            .map(|op| (op.updated_ms, op.id.clone()))
            .collect();
        let mut evicted = 0;
        for (updated, id) in stale {
            if self.evict(&id, updated) {
                evicted += 1;
            }
        }
        self.evicted_ttl
            .fetch_add(evicted as u64, Ordering::Relaxed);
        let ttl = self.limits.held_ttl_ms;
        let mut book = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = book.drop_oldest_while(|_, since| since.saturating_add(ttl) < now_ms);
        self.held_count.store(book.events, Ordering::SeqCst);
        self.held_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        evicted
    }

    /// Each live operation encoded as JSON, handed to `each` one at a time: an operation is
    /// encoded under its shard's read lock into a buffer of its own, and handed over after the
    /// lock is released, so a snapshot writing to a slow disk never holds a shard (and the
    /// callbacks applying to it) waiting. Returns how many were handed over.
    pub fn snapshot_operations(
        &self,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let ids: Vec<String> = self.ops.iter().map(|op| op.key().clone()).collect();
        let mut count = 0;
        let mut json = Vec::new();
        for id in ids {
            json.clear();
            match self.ops.get(&id) {
                Some(op) => {
                    serde_json::to_writer(&mut json, op.value()).map_err(std::io::Error::other)?
                }
                None => continue, // evicted since the ids were taken
            }
            each(&json)?;
            count += 1;
        }
        Ok(count)
    }

    /// The held attempts, as a snapshot stores them.
    pub fn snapshot_held(&self) -> Vec<HeldEntry> {
        let book = self.held.lock().unwrap_or_else(|e| e.into_inner());
        book.order
            .iter()
            .filter_map(|(key, since)| {
                book.entries.get(key).map(|events| HeldEntry {
                    key: key.clone(),
                    since_ms: *since,
                    events: events.clone(),
                })
            })
            .collect()
    }

    /// Replace the whole state with a snapshot's (format 1, read whole).
    pub fn restore(&self, state: SnapshotState) {
        self.restore_begin();
        for op in state.operations {
            self.restore_operation(op);
        }
        self.restore_held(state.held);
    }

    /// Forget everything, before a snapshot's operations are restored (or after a snapshot
    /// failed to load part way).
    pub fn restore_begin(&self) {
        self.ops.clear();
        self.res_links.clear();
        self.sid_links.clear();
        self.operations_by_link_number.clear();
        self.resources.store(0, Ordering::Relaxed);
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = HeldBook::default();
        self.held_count.store(0, Ordering::SeqCst);
    }

    /// Restore one operation of a snapshot, with its links. Safe to call from several threads
    /// at once.
    pub fn restore_operation(&self, mut op: Operation) {
        if !self.limits.keep_recipient_addresses {
            op.forget_recipients();
        }
        let n = self.assign_link_number(&op.id);
        op.set_link_number(n);
        for (slot, res, sids) in op.links() {
            self.link_resource(&res, n);
            for sid in sids {
                self.link_sid(&sid, (n, slot));
            }
        }
        self.resources
            .fetch_add(op.resource_count() as u64, Ordering::Relaxed);
        self.ops.insert(op.id.clone(), op);
    }

    /// Restore a snapshot's held attempts.
    pub fn restore_held(&self, held: Vec<HeldEntry>) {
        let mut book = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *book = HeldBook::default();
        for h in held {
            // Filed again under the key each event waits for now (older snapshots filed an
            // attempt that names its resource under its SID).
            for (mut e, t) in h.events {
                if !self.limits.keep_recipient_addresses {
                    e.to = None;
                }
                let key = held_key(&e).unwrap_or_else(|| h.key.clone());
                let book = &mut *book;
                let list = book.entries.entry(key.clone()).or_default();
                if list.is_empty() {
                    book.order.push_back((key, h.since_ms));
                }
                list.push((e, t));
                book.events += 1;
            }
        }
        self.held_count.store(book.events, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{decode_form, parse_form};

    /// A classic status callback for `sid`, its URL naming the operation `op` when given.
    fn attempt(op: Option<&str>, sid: &str) -> Event {
        let body = format!("MessageSid={sid}&MessageStatus=delivered");
        let query = op.map(|op| format!("operationId={op}")).unwrap_or_default();
        let params = parse_form(body.as_bytes()).expect("form");
        let query = parse_form(query.as_bytes()).expect("query");
        decode_form(&params, &query, 1).expect("an attempt")
    }

    #[test]
    fn a_held_attempt_is_forgotten_with_the_partition_it_was_routed_by() {
        let agg = Aggregator::new(Limits::default());
        // Names its operation but not its resource: routed by the operation, held by its SID.
        let named = attempt(Some("comms_operation_1"), "SM1");
        let EventBody::Attempt(a) = &named.body else {
            panic!("an attempt: {named:?}")
        };
        assert_eq!(
            (a.operation_id.as_deref(), a.resource_id.as_deref()),
            (Some("comms_operation_1"), None)
        );
        assert_eq!(agg.apply(&named, 10), Outcome::Held);
        // Names neither: routed by the SID it waits under.
        assert_eq!(agg.apply(&attempt(None, "SM2"), 10), Outcome::Held);
        assert_eq!(agg.census().held, 2);
        // The SIDs' partition moves: only the attempt routed by its SID goes.
        agg.forget_where(|k| k.starts_with("SM"));
        assert_eq!(agg.census().held, 1);
        // The operation's partition moves: the attempt routed by it goes.
        agg.forget_where(|k| k == "comms_operation_1");
        assert_eq!(agg.census().held, 0);
    }
}
