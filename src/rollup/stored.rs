//! How an operation stores its resources and attempts, and joins an event into them: resource
//! slots with ids packed by [`Id`], attempt labels kept once per operation, the first attempt
//! inline. The operation-level state (status, stats buckets, links) is in `operation.rs`; the
//! readable forms ([`Resource`], [`Attempt`]) are built from these on demand.

use super::compact::Id;
use super::operation::{Attempt, AttemptKey, Resource};
use super::status::{join_attempt, status_height, Reads, ResourceStatus};
use crate::event::{AttemptEvent, AttemptStatus, Channel, ResourceRead, Text};
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::OnceLock;

/// Join two optional values by maximum, so that the result does not depend on order.
pub(super) fn join_opt<T: Ord + Clone>(a: &mut Option<T>, b: &Option<T>) -> bool {
    match (a.as_ref(), b) {
        (_, None) => false,
        (None, Some(v)) => {
            *a = Some(v.clone());
            true
        }
        (Some(x), Some(v)) if v > x => {
            *a = Some(v.clone());
            true
        }
        _ => false,
    }
}

/// Where an operation keeps what its slots share or rarely need, so that each slot stays small:
/// attempt labels and tag texts, tag sets, the second and later attempts of each resource, ids
/// of no known shape, and timestamps too far from the operation's base time to be stored as an
/// offset (the layout and what each byte pays for are in docs/performance.md, "Memory").
#[derive(Debug, Clone, Default)]
pub(super) struct Side {
    pub(super) labels: Labels,
    /// Tag sets, each a list of (key, value) text numbers sorted by key text; a slot names its
    /// set by number (0: no tags).
    tag_sets: Interned<[(u32, u32)]>,
    /// Second and later attempts, each resource's chained from its first by `next`.
    pub(super) extra: Vec<StoredAttempt>,
    /// Ids of no packed form, by number.
    others: Vec<Box<str>>,
    /// Creation times are offsets from this time; set by the first one stored.
    time_base_ms: Option<u64>,
    /// Update times are offsets from this one, set by the first update time stored. Creation
    /// times come from events and update times from tally's clock: a stream replayed months
    /// late puts the two far apart, and each still fits an offset from its own base.
    updated_base_ms: Option<u64>,
    /// Times that did not fit an offset.
    far_times: Vec<u64>,
    /// Entries of `far_times` no longer used, taken again before the vector grows: a time that
    /// is raised again and again stays in one entry.
    far_free: Vec<u32>,
}

/// Which base a time is an offset from.
#[derive(Clone, Copy)]
enum Base {
    Created,
    Updated,
}

/// A time offset's top bit: set, the rest numbers an entry of [`Side::far_times`].
const FAR: u32 = 1 << 31;
/// The base time lies this far before the first time stored, so that earlier event times still
/// fit (times from about 12 days before to about 12 days after the first).
const BASE_BEFORE_MS: u64 = 1 << 30;
/// A slot's update time while it is still its creation time as first stored.
const SAME_AS_CREATED: u32 = u32::MAX;

impl Side {
    fn tag_set(&self, n: u32) -> &[(u32, u32)] {
        self.tag_sets.get(n).unwrap_or(&[])
    }

    fn intern_tag_set(&mut self, set: &[(u32, u32)]) -> u32 {
        if set.is_empty() {
            return 0;
        }
        self.tag_sets.intern(set)
    }

    fn base_of(&self, which: Base) -> Option<u64> {
        match which {
            Base::Created => self.time_base_ms,
            Base::Updated => self.updated_base_ms,
        }
    }

    fn base(&mut self, which: Base) -> &mut Option<u64> {
        match which {
            Base::Created => &mut self.time_base_ms,
            Base::Updated => &mut self.updated_base_ms,
        }
    }

    fn time(&self, t: u32, which: Base) -> u64 {
        if t & FAR != 0 {
            return self.far_times[(t & !FAR) as usize];
        }
        self.base_of(which).unwrap_or(0) + u64::from(t)
    }

    fn store_time(&mut self, ms: u64, which: Base) -> u32 {
        let base = *self
            .base(which)
            .get_or_insert(ms.saturating_sub(BASE_BEFORE_MS));
        match ms.checked_sub(base).and_then(|d| u32::try_from(d).ok()) {
            Some(d) if d & FAR == 0 => d,
            _ => match self.far_free.pop() {
                Some(n) => {
                    self.far_times[n as usize] = ms;
                    n | FAR
                }
                None => {
                    // Entry 2^31 - 1 would read as SAME_AS_CREATED. Reaching it takes 2^31 far
                    // times (16 GiB of them), and a slot holds at most two.
                    debug_assert!(self.far_times.len() < (FAR - 1) as usize);
                    self.far_times.push(ms);
                    (self.far_times.len() - 1) as u32 | FAR
                }
            },
        }
    }

    /// Store `ms` in place of `old`, freeing `old`'s far entry if it had one.
    fn replace_time(&mut self, old: u32, ms: u64, which: Base) -> u32 {
        if old & FAR != 0 && old != SAME_AS_CREATED {
            self.far_free.push(old & !FAR);
        }
        self.store_time(ms, which)
    }

    /// Bytes held beyond the slots themselves, for the memory accounting.
    pub(super) fn heap_bytes(&self) -> (u64, u64) {
        let extra = (self.extra.capacity() * std::mem::size_of::<StoredAttempt>()) as u64;
        let other = self.labels.heap_bytes(str::len)
            + self.tag_sets.heap_bytes(|s| s.len() * 8)
            + self.others.iter().map(|o| 16 + o.len()).sum::<usize>()
            + self.far_times.capacity() * 8
            + self.far_free.capacity() * 4;
        (extra, other as u64)
    }
}

/// Form byte of a [`SlotId`] holding no id.
const FORM_NONE: u8 = 255;
/// Form byte of a [`SlotId`] whose bytes 1–4 number an entry of [`Side::others`].
const FORM_OTHER: u8 = 254;

/// An id as a slot stores it, in 17 bytes: the packed form of [`Id`] (its form byte and 16
/// bytes), or the number of an id of no packed form kept in the operation's [`Side`], or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotId([u8; 17]);

impl SlotId {
    pub(super) const NONE: SlotId = SlotId([FORM_NONE; 17]);

    pub(super) fn store(id: &Id, side: &mut Side) -> SlotId {
        let mut b = [0u8; 17];
        match id {
            Id::Packed { form, bytes } => {
                b[0] = *form;
                b[1..].copy_from_slice(bytes);
            }
            Id::Other(s) => {
                b[0] = FORM_OTHER;
                b[1..5].copy_from_slice(&(side.others.len() as u32).to_le_bytes());
                side.others.push(s.clone());
            }
        }
        SlotId(b)
    }

    pub(super) fn is_none(&self) -> bool {
        self.0[0] == FORM_NONE
    }

    fn other<'a>(&self, side: &'a Side) -> &'a str {
        let n = u32::from_le_bytes([self.0[1], self.0[2], self.0[3], self.0[4]]);
        &side.others[n as usize]
    }

    /// True when this holds `id` ([`Id::new`] gives one form per text, so forms compare as
    /// texts do).
    pub(super) fn is(&self, id: &Id, side: &Side) -> bool {
        match id {
            Id::Packed { form, bytes } => self.0[0] == *form && self.0[1..] == bytes[..],
            Id::Other(s) => self.0[0] == FORM_OTHER && self.other(side) == &**s,
        }
    }

    pub(super) fn id(&self, side: &Side) -> Option<Id> {
        match self.0[0] {
            FORM_NONE => None,
            FORM_OTHER => Some(Id::Other(self.other(side).into())),
            form => {
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&self.0[1..]);
                Some(Id::Packed { form, bytes })
            }
        }
    }

    pub(super) fn text(&self, side: &Side) -> Option<String> {
        match self.0[0] {
            FORM_NONE => None,
            FORM_OTHER => Some(self.other(side).to_owned()),
            _ => self.id(side).map(|i| i.as_string()),
        }
    }

    /// The key the slot index hashes, the same as [`hash_id`] of the id it holds.
    pub(super) fn hash(&self, side: &Side) -> u64 {
        self.id(side).map_or(0, |i| hash_id(&i))
    }
}

/// Join an incoming id (`text`, packed as `packed`) into a stored one: the greatest text wins,
/// so the result does not depend on order; true when it changed.
fn join_slot_id(a: &mut SlotId, packed: Option<&Id>, text: Option<&str>, side: &mut Side) -> bool {
    let (Some(v), Some(p)) = (text, packed) else {
        return false;
    };
    if a.is_none() {
        *a = SlotId::store(p, side);
        return true;
    }
    if a.is(p, side) {
        return false;
    }
    if a.text(side).is_some_and(|old| v > old.as_str()) {
        *a = SlotId::store(p, side);
        return true;
    }
    false
}

/// Values of one operation kept once each and referred to by number, from 1 in the order first
/// seen (0: none): attempt labels and tag texts, tag sets.
#[derive(Debug)]
pub(super) struct Interned<T: ?Sized> {
    values: Vec<Box<T>>,
    index: HashTable<u32>,
}

impl<T: ?Sized> Clone for Interned<T>
where
    Box<T>: Clone,
{
    fn clone(&self) -> Self {
        Interned {
            values: self.values.clone(),
            index: self.index.clone(),
        }
    }
}

impl<T: ?Sized> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            values: Vec::new(),
            index: HashTable::new(),
        }
    }
}

impl<T: ?Sized + std::hash::Hash + Eq> Interned<T>
where
    for<'a> Box<T>: From<&'a T>,
{
    pub(super) fn get(&self, n: u32) -> Option<&T> {
        n.checked_sub(1)
            .and_then(|i| self.values.get(i as usize))
            .map(|v| &**v)
    }

    pub(super) fn intern(&mut self, v: &T) -> u32 {
        let h = id_hasher().hash_one(v);
        let values = &self.values;
        if let Some(&i) = self.index.find(h, |&i| &*values[i as usize] == v) {
            return i + 1;
        }
        let i = self.values.len() as u32;
        self.values.push(v.into());
        let values = &self.values;
        self.index
            .insert_unique(h, i, |&j| id_hasher().hash_one(&*values[j as usize]));
        i + 1
    }

    /// Bytes held, with `size` the bytes of one value.
    fn heap_bytes(&self, size: impl Fn(&T) -> usize) -> usize {
        self.values.capacity() * 16
            + self.values.iter().map(|v| size(v)).sum::<usize>()
            + super::operation::table_bytes(self.index.capacity(), std::mem::size_of::<u32>())
                as usize
    }
}

/// The texts of one operation: attempt labels ("1", "2", … in practice) and tag keys and values.
pub(super) type Labels = Interned<str>;

impl Labels {
    pub(super) fn text(&self, n: u32) -> Option<&str> {
        self.get(n)
    }
}

/// An attempt as stored, in 32 bytes. Its key is not stored: it is the downstream id when there
/// is one, else the attempt label, else the channel, else implicit, which is exactly what
/// [`AttemptKey::of`] made it when the attempt was first seen (later joins never change which
/// of these fields are set, since events only ever match an attempt with the same key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredAttempt {
    pub(super) downstream: SlotId,
    pub(super) channel: Option<Channel>,
    pub(super) status: AttemptStatus,
    /// A number in the operation's [`Labels`].
    pub(super) label: u32,
    pub(super) error_code: Option<NonZeroU32>,
    /// The next attempt of the same resource: its index in [`Side::extra`] plus one (0: none).
    next: u32,
}

impl StoredAttempt {
    /// The attempt `ev` reports on, first seen; `down` is its downstream id packed.
    pub(super) fn from_event<S: Text>(
        ev: &AttemptEvent<S>,
        down: Option<&Id>,
        side: &mut Side,
    ) -> StoredAttempt {
        StoredAttempt {
            downstream: down.map_or(SlotId::NONE, |d| SlotId::store(d, side)),
            label: ev.attempt.as_deref().map_or(0, |a| side.labels.intern(a)),
            channel: ev.channel,
            status: ev.status,
            error_code: ev.error_code.and_then(NonZeroU32::new),
            next: 0,
        }
    }

    pub(super) fn from_attempt(a: &Attempt, side: &mut Side) -> StoredAttempt {
        StoredAttempt {
            downstream: a
                .downstream_id
                .as_deref()
                .map_or(SlotId::NONE, |d| SlotId::store(&Id::new(d), side)),
            label: a.attempt.as_deref().map_or(0, |l| side.labels.intern(l)),
            channel: a.channel,
            status: a.status,
            error_code: a.error_code.and_then(NonZeroU32::new),
            next: 0,
        }
    }

    /// Does `ev` report on this attempt (same [`AttemptKey`])? `down` is `ev`'s downstream id
    /// packed.
    pub(super) fn matches<S: Text>(
        &self,
        ev: &AttemptEvent<S>,
        down: Option<&Id>,
        side: &Side,
    ) -> bool {
        if ev.downstream_id.is_some() {
            match down {
                Some(d) => self.downstream.is(d, side),
                None => self.downstream.is_none(),
            }
        } else if let Some(a) = &ev.attempt {
            self.downstream.is_none() && side.labels.text(self.label) == Some(&**a)
        } else if let Some(c) = ev.channel {
            self.downstream.is_none() && self.label == 0 && self.channel == Some(c)
        } else {
            self.downstream.is_none() && self.label == 0 && self.channel.is_none()
        }
    }

    pub(super) fn downstream_text(&self, side: &Side) -> Option<String> {
        self.downstream.text(side)
    }

    pub(super) fn key(&self, side: &Side) -> AttemptKey {
        if let Some(d) = self.downstream.text(side) {
            AttemptKey::Downstream(d)
        } else if let Some(a) = side.labels.text(self.label) {
            AttemptKey::Attempt(a.to_owned())
        } else if let Some(c) = self.channel {
            AttemptKey::Channel(c)
        } else {
            AttemptKey::Implicit
        }
    }

    pub(super) fn view(&self, side: &Side) -> Attempt {
        Attempt {
            key: self.key(side),
            downstream_id: self.downstream.text(side),
            attempt: side.labels.text(self.label).map(str::to_owned),
            channel: self.channel,
            status: self.status,
            error_code: self.error_code.map(NonZeroU32::get),
        }
    }

    /// Join `ev` (whose downstream id packed is `down`) into this attempt; true when anything
    /// changed.
    pub(super) fn join<S: Text>(
        &mut self,
        ev: &AttemptEvent<S>,
        down: Option<&Id>,
        side: &mut Side,
    ) -> bool {
        let mut changed = false;
        let status = join_attempt(self.status, ev.status);
        if status != self.status {
            self.status = status;
            changed = true;
        }
        let mut code = self.error_code.map(NonZeroU32::get);
        if join_opt(&mut code, &ev.error_code) {
            self.error_code = code.and_then(NonZeroU32::new);
            changed = true;
        }
        changed |= join_slot_id(
            &mut self.downstream,
            down,
            ev.downstream_id.as_deref(),
            side,
        );
        if let Some(a) = &ev.attempt {
            if side.labels.text(self.label).is_none_or(|old| &**a > old) {
                self.label = side.labels.intern(a);
                changed = true;
            }
        }
        changed |= join_opt(&mut self.channel, &ev.channel);
        changed
    }
}

/// Where one of a slot's attempts is.
#[derive(Clone, Copy)]
enum AttemptAt {
    First,
    Extra(usize),
}

/// One resource as stored, in 80 bytes: its id and recipient address, its tag set's number, its
/// first attempt (the rest are in the operation's [`Side`]) and its two times as offsets.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) id: SlotId,
    pub(super) to: SlotId,
    /// A number in the operation's tag sets (0: no tags).
    tags: u32,
    first: Option<StoredAttempt>,
    created: u32,
    updated: u32,
}

impl Slot {
    /// This resource's share of its operation's lattice height: one for being known, and for
    /// each attempt one more than its status's height; with the reads' heights and one for each
    /// error code. Every join that changes a status, an attempt count or a read raises it.
    pub(super) fn height(&self, reads: Option<&Reads>, side: &Side) -> u64 {
        let attempts: u64 = self
            .attempts(side)
            .map(|a| 1 + status_height(a.status) + u64::from(a.error_code.is_some()))
            .sum();
        1 + attempts + reads.map_or(0, Reads::height)
    }

    pub(super) fn new(id: &Id, time_ms: u64, side: &mut Side) -> Slot {
        Slot {
            id: SlotId::store(id, side),
            to: SlotId::NONE,
            tags: 0,
            first: None,
            created: side.store_time(time_ms, Base::Created),
            updated: SAME_AS_CREATED,
        }
    }

    pub(super) fn created_ms(&self, side: &Side) -> u64 {
        side.time(self.created, Base::Created)
    }

    pub(super) fn updated_ms(&self, side: &Side) -> u64 {
        if self.updated == SAME_AS_CREATED {
            return self.created_ms(side);
        }
        side.time(self.updated, Base::Updated)
    }

    /// Lower the creation time to `ms` if it is earlier; true when it was.
    pub(super) fn note_created(&mut self, ms: u64, side: &mut Side) -> bool {
        let was = self.created_ms(side);
        if ms < was {
            if self.updated == SAME_AS_CREATED {
                self.updated = side.store_time(was, Base::Updated);
            }
            self.created = side.replace_time(self.created, ms, Base::Created);
            return true;
        }
        false
    }

    /// Raise the update time to `ms` if it is later.
    pub(super) fn note_updated(&mut self, ms: u64, side: &mut Side) {
        if ms > self.updated_ms(side) {
            self.updated = side.replace_time(self.updated, ms, Base::Updated);
        }
    }

    /// Every attempt, in the order first seen.
    pub(super) fn attempts<'a>(
        &'a self,
        side: &'a Side,
    ) -> impl Iterator<Item = &'a StoredAttempt> + 'a {
        let mut cur = self.first.as_ref();
        std::iter::from_fn(move || {
            let a = cur?;
            cur = a.next.checked_sub(1).map(|i| &side.extra[i as usize]);
            Some(a)
        })
    }

    pub(super) fn attempt_count(&self, side: &Side) -> usize {
        self.attempts(side).count()
    }

    /// Whether one of the attempts has the downstream id `d`.
    pub(super) fn has_downstream(&self, d: &Id, side: &Side) -> bool {
        self.attempts(side).any(|a| a.downstream.is(d, side))
    }

    fn find_attempt<S: Text>(
        &self,
        ev: &AttemptEvent<S>,
        down: Option<&Id>,
        side: &Side,
    ) -> Option<AttemptAt> {
        let first = self.first.as_ref()?;
        if first.matches(ev, down, side) {
            return Some(AttemptAt::First);
        }
        let mut next = first.next;
        while let Some(i) = next.checked_sub(1) {
            let a = &side.extra[i as usize];
            if a.matches(ev, down, side) {
                return Some(AttemptAt::Extra(i as usize));
            }
            next = a.next;
        }
        None
    }

    fn push_attempt(&mut self, a: StoredAttempt, side: &mut Side) {
        let Some(first) = self.first.as_mut() else {
            self.first = Some(a);
            return;
        };
        let n = side.extra.len() as u32 + 1;
        if first.next == 0 {
            first.next = n;
        } else {
            let mut i = first.next - 1;
            while side.extra[i as usize].next != 0 {
                i = side.extra[i as usize].next - 1;
            }
            side.extra[i as usize].next = n;
        }
        side.extra.push(a);
    }

    pub(super) fn from_resource(r: &Resource, side: &mut Side) -> Slot {
        let mut slot = Slot::new(&Id::new(&r.id), r.created_ms, side);
        if r.updated_ms != r.created_ms {
            slot.updated = side.store_time(r.updated_ms, Base::Updated);
        }
        slot.to =
            r.to.as_deref()
                .map_or(SlotId::NONE, |t| SlotId::store(&Id::new(t), side));
        let mut set: Vec<(u32, u32)> = r
            .tags
            .iter()
            .map(|(k, v)| (side.labels.intern(k), side.labels.intern(v)))
            .collect();
        sort_tags(&mut set, &side.labels);
        slot.tags = side.intern_tag_set(&set);
        for a in &r.attempts {
            let a = StoredAttempt::from_attempt(a, side);
            slot.push_attempt(a, side);
        }
        slot
    }

    /// Its status, given what was read of it from Twilio (kept by its operation, since few
    /// resources have any).
    pub(super) fn status(&self, reads: Reads, side: &Side) -> ResourceStatus {
        reads.status(self.attempts(side).map(|a| a.status))
    }

    pub(super) fn view(&self, side: &Side, reads: Reads) -> Resource {
        let mut attempts: Vec<Attempt> = self.attempts(side).map(|a| a.view(side)).collect();
        attempts.sort_by(|a, b| a.key.cmp(&b.key));
        Resource {
            id: self.id.text(side).unwrap_or_default(),
            to: self.to.text(side),
            tags: side
                .tag_set(self.tags)
                .iter()
                .map(|&(k, v)| {
                    let text = |n| side.labels.text(n).unwrap_or_default().to_owned();
                    (text(k), text(v))
                })
                .collect(),
            attempts,
            reads,
            created_ms: self.created_ms(side),
            updated_ms: self.updated_ms(side),
        }
    }

    /// Join a resource read from Twilio: its status into `reads`, its address and tags as an
    /// attempt's would be.
    pub(super) fn join_read(
        &mut self,
        read: &ResourceRead,
        reads: &mut Reads,
        side: &mut Side,
    ) -> bool {
        let to = read.to.as_deref().map(Id::new);
        let mut changed = join_slot_id(&mut self.to, to.as_ref(), read.to.as_deref(), side);
        changed |= self.join_tags(&read.tags, side);
        changed | reads.join(read.status)
    }

    /// Join tags: per key, the greatest value seen.
    fn join_tags<S: Text>(&mut self, new: &[(S, S)], side: &mut Side) -> bool {
        let labels = &side.labels;
        let set = side.tag_set(self.tags);
        let unchanged = new.iter().all(|(k, v)| {
            set.iter()
                .find(|&&(key, _)| labels.text(key) == Some(&**k))
                .is_some_and(|&(_, old)| labels.text(old).is_some_and(|old| old >= &**v))
        });
        if unchanged {
            return false;
        }
        let mut set = set.to_vec();
        for (k, v) in new {
            let at = set
                .iter()
                .position(|&(key, _)| side.labels.text(key) == Some(&**k));
            match at {
                Some(i) if side.labels.text(set[i].1).is_some_and(|old| old >= &**v) => {}
                Some(i) => set[i].1 = side.labels.intern(v),
                None => set.push((side.labels.intern(k), side.labels.intern(v))),
            }
        }
        sort_tags(&mut set, &side.labels);
        self.tags = side.intern_tag_set(&set);
        true
    }

    /// Join `ev` (whose downstream id packed is `down`) into this resource.
    pub(super) fn join<S: Text>(
        &mut self,
        ev: &AttemptEvent<S>,
        down: Option<&Id>,
        side: &mut Side,
    ) -> bool {
        let to = ev.to.as_deref().map(Id::new);
        let mut changed = join_slot_id(&mut self.to, to.as_ref(), ev.to.as_deref(), side);
        if !ev.tags.is_empty() {
            changed |= self.join_tags(&ev.tags, side);
        }
        match self.find_attempt(ev, down, side) {
            Some(at) => {
                let mut a = match at {
                    AttemptAt::First => self.first.expect("found"),
                    AttemptAt::Extra(i) => side.extra[i],
                };
                changed |= a.join(ev, down, side);
                match at {
                    AttemptAt::First => self.first = Some(a),
                    AttemptAt::Extra(i) => side.extra[i] = a,
                }
            }
            None => {
                let a = StoredAttempt::from_event(ev, down, side);
                self.push_attempt(a, side);
                changed = true;
            }
        }
        changed
    }
}

/// Tag sets are kept sorted by key text, so that one set of tags has one number however its
/// tags arrived.
fn sort_tags(set: &mut [(u32, u32)], labels: &Labels) {
    set.sort_by(|a, b| labels.text(a.0).cmp(&labels.text(b.0)));
}

/// The hash of resource ids in every operation's slot table: keyed once per process, so ids
/// chosen by a caller cannot be made to collide.
pub(super) fn id_hasher() -> &'static super::hashing::FastHash {
    static KEYS: OnceLock<super::hashing::FastHash> = OnceLock::new();
    KEYS.get_or_init(super::hashing::FastHash::default)
}

pub(super) fn hash_id(id: &Id) -> u64 {
    id_hasher().hash_one(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_resources_and_attempts_stay_small() {
        // The memory target of docs/performance.md: a resource with 1.5 attempts in about 200
        // bytes.
        assert_eq!(std::mem::size_of::<StoredAttempt>(), 32);
        assert_eq!(std::mem::size_of::<Slot>(), 80);
    }

    const DAY: u64 = 86_400_000;

    fn slot_at(ms: u64, side: &mut Side) -> Slot {
        Slot::new(
            &Id::new("comms_message_01h9krwprkeee8fzqspvwy6n00"),
            ms,
            side,
        )
    }

    #[test]
    fn event_times_and_clock_times_months_apart_both_fit_offsets() {
        // A stream replayed long after it was sent: creation times from the events, update
        // times from the clock, 300 days later.
        let mut side = Side::default();
        for i in 0..100 {
            let mut slot = slot_at(10 * DAY + i, &mut side);
            assert_eq!(slot.updated_ms(&side), 10 * DAY + i);
            for k in 1..5 {
                slot.note_updated(310 * DAY + i * 10 + k, &mut side);
            }
            assert_eq!(slot.created_ms(&side), 10 * DAY + i);
            assert_eq!(slot.updated_ms(&side), 310 * DAY + i * 10 + 4);
        }
        assert_eq!(side.far_times.len(), 0);
    }

    #[test]
    fn a_time_raised_again_and_again_keeps_one_far_entry() {
        let mut side = Side::default();
        let mut slot = slot_at(1000 * DAY, &mut side);
        slot.note_updated(1000 * DAY + 1, &mut side);
        // Every step lands 20 days past the one before: never an offset from the first.
        for step in 1..=50 {
            slot.note_updated(1000 * DAY + step * 20 * DAY, &mut side);
            assert_eq!(slot.updated_ms(&side), 1000 * DAY + step * 20 * DAY);
        }
        assert_eq!(side.far_times.len(), 1, "{:?}", side.far_times);
        // Creation times lowered far and further: their entries are shared out again too.
        for step in 1..=10 {
            assert!(slot.note_created(1000 * DAY - step * 20 * DAY, &mut side));
            assert_eq!(slot.created_ms(&side), 1000 * DAY - step * 20 * DAY);
        }
        assert_eq!(side.far_times.len(), 2, "{:?}", side.far_times);
        assert_eq!(slot.updated_ms(&side), 2000 * DAY);
    }

    #[test]
    fn lowering_the_creation_time_keeps_the_first_as_the_update_time() {
        let mut side = Side::default();
        let mut slot = slot_at(100 * DAY, &mut side);
        assert!(slot.note_created(99 * DAY, &mut side));
        assert!(!slot.note_created(99 * DAY, &mut side));
        assert_eq!(slot.created_ms(&side), 99 * DAY);
        assert_eq!(slot.updated_ms(&side), 100 * DAY);
        // An update time that is not later changes nothing.
        slot.note_updated(100 * DAY - 1, &mut side);
        assert_eq!(slot.updated_ms(&side), 100 * DAY);
    }
}
