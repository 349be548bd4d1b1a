//! How an operation stores its resources and attempts, and joins an event into them: resource
//! slots with ids packed by [`Id`], attempt labels kept once per operation, the first attempt
//! inline. The operation-level state (status, stats buckets, links) is in `operation.rs`; the
//! readable forms ([`Resource`], [`Attempt`]) are built from these on demand.

use super::compact::Id;
use super::operation::{Attempt, AttemptKey, Resource};
use super::status::{join_attempt, status_height, Reads, ResourceStatus};
use crate::event::{AttemptEvent, AttemptStatus, Channel, ResourceRead};
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

/// [`join_opt`] for a stored id and an incoming string, without decoding in the common case
/// where they are equal.
pub(super) fn join_id(a: &mut Option<Id>, b: &Option<String>) -> bool {
    join_packed_id(a, b.as_deref().map(Id::new).as_ref(), b)
}

/// [`join_id`] with the incoming string `b` already packed (`packed` is `Id::new` of it): the
/// packing is done once per event, not once per comparison.
pub(super) fn join_packed_id(a: &mut Option<Id>, packed: Option<&Id>, b: &Option<String>) -> bool {
    let (Some(v), Some(p)) = (b, packed) else {
        return false;
    };
    match a {
        None => {
            *a = Some(p.clone());
            true
        }
        Some(x) if x == p => false,
        Some(x) if v.as_str() > x.as_string().as_str() => {
            *a = Some(Id::new(v));
            true
        }
        Some(_) => false,
    }
}

/// The texts of one operation kept once each: attempt labels ("1", "2", … in practice) and tag
/// keys and values; attempts and tags refer to them by number (0: no text).
#[derive(Debug, Clone, Default)]
pub(super) struct Labels {
    pub(super) texts: Vec<Box<str>>,
    pub(super) index: HashTable<u32>,
}

impl Labels {
    pub(super) fn text(&self, n: u32) -> Option<&str> {
        n.checked_sub(1)
            .and_then(|i| self.texts.get(i as usize))
            .map(|t| &**t)
    }

    pub(super) fn intern(&mut self, s: &str) -> u32 {
        let h = id_hasher().hash_one(s);
        let texts = &self.texts;
        if let Some(&i) = self.index.find(h, |&i| &*texts[i as usize] == s) {
            return i + 1;
        }
        let i = self.texts.len() as u32;
        self.texts.push(s.into());
        let texts = &self.texts;
        self.index
            .insert_unique(h, i, |&j| id_hasher().hash_one(&*texts[j as usize]));
        i + 1
    }
}

/// An attempt as stored. Its key is not stored: it is the downstream id when there is one,
/// else the attempt label, else the channel, else implicit, which is exactly what
/// [`AttemptKey::of`] made it when the attempt was first seen (later joins never change which
/// of these fields are set, since events only ever match an attempt with the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredAttempt {
    pub(super) downstream: Option<Id>,
    /// A number in the operation's [`Labels`].
    pub(super) label: u32,
    pub(super) error_code: Option<NonZeroU32>,
    pub(super) channel: Option<Channel>,
    pub(super) status: AttemptStatus,
}

impl StoredAttempt {
    /// The attempt `ev` reports on, first seen; `down` is its downstream id packed.
    pub(super) fn from_event(
        ev: &AttemptEvent,
        down: Option<&Id>,
        labels: &mut Labels,
    ) -> StoredAttempt {
        StoredAttempt {
            downstream: down.cloned(),
            label: ev.attempt.as_deref().map_or(0, |a| labels.intern(a)),
            channel: ev.channel,
            status: ev.status,
            error_code: ev.error_code.and_then(NonZeroU32::new),
        }
    }

    pub(super) fn from_attempt(a: &Attempt, labels: &mut Labels) -> StoredAttempt {
        StoredAttempt {
            downstream: a.downstream_id.as_deref().map(Id::new),
            label: a.attempt.as_deref().map_or(0, |l| labels.intern(l)),
            channel: a.channel,
            status: a.status,
            error_code: a.error_code.and_then(NonZeroU32::new),
        }
    }

    /// Does `ev` report on this attempt (same [`AttemptKey`])? `down` is `ev`'s downstream id
    /// packed ([`Id::new`] gives one form per text, so packed ids compare as their texts do).
    pub(super) fn matches(&self, ev: &AttemptEvent, down: Option<&Id>, labels: &Labels) -> bool {
        if ev.downstream_id.is_some() {
            self.downstream.as_ref() == down
        } else if let Some(a) = &ev.attempt {
            self.downstream.is_none() && labels.text(self.label) == Some(a.as_str())
        } else if let Some(c) = ev.channel {
            self.downstream.is_none() && self.label == 0 && self.channel == Some(c)
        } else {
            self.downstream.is_none() && self.label == 0 && self.channel.is_none()
        }
    }

    pub(super) fn key(&self, labels: &Labels) -> AttemptKey {
        if let Some(d) = &self.downstream {
            AttemptKey::Downstream(d.as_string())
        } else if let Some(a) = labels.text(self.label) {
            AttemptKey::Attempt(a.to_owned())
        } else if let Some(c) = self.channel {
            AttemptKey::Channel(c)
        } else {
            AttemptKey::Implicit
        }
    }

    pub(super) fn view(&self, labels: &Labels) -> Attempt {
        Attempt {
            key: self.key(labels),
            downstream_id: self.downstream.as_ref().map(Id::as_string),
            attempt: labels.text(self.label).map(str::to_owned),
            channel: self.channel,
            status: self.status,
            error_code: self.error_code.map(NonZeroU32::get),
        }
    }

    /// Join `ev` (whose downstream id packed is `down`) into this attempt; true when anything
    /// changed.
    pub(super) fn join(
        &mut self,
        ev: &AttemptEvent,
        down: Option<&Id>,
        labels: &mut Labels,
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
        changed |= join_packed_id(&mut self.downstream, down, &ev.downstream_id);
        if let Some(a) = &ev.attempt {
            if labels.text(self.label).is_none_or(|old| a.as_str() > old) {
                self.label = labels.intern(a);
                changed = true;
            }
        }
        changed |= join_opt(&mut self.channel, &ev.channel);
        changed
    }
}

/// A resource's attempts: almost always one or two, so the first is kept inline.
#[derive(Debug, Clone)]
pub(super) enum Attempts {
    One(StoredAttempt),
    Many(Box<[StoredAttempt]>),
}

impl Attempts {
    pub(super) fn as_slice(&self) -> &[StoredAttempt] {
        match self {
            Attempts::One(a) => std::slice::from_ref(a),
            Attempts::Many(v) => v,
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [StoredAttempt] {
        match self {
            Attempts::One(a) => std::slice::from_mut(a),
            Attempts::Many(v) => v,
        }
    }

    pub(super) fn push(&mut self, a: StoredAttempt) {
        let mut all: Vec<StoredAttempt> = Vec::with_capacity(self.as_slice().len() + 1);
        all.extend_from_slice(self.as_slice());
        all.push(a);
        *self = Attempts::from_vec(all);
    }

    pub(super) fn from_vec(mut v: Vec<StoredAttempt>) -> Attempts {
        if v.len() == 1 {
            if let Some(a) = v.pop() {
                return Attempts::One(a);
            }
        }
        Attempts::Many(v.into_boxed_slice())
    }
}

/// One resource as stored.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) id: Id,
    pub(super) to: Option<Id>,
    /// Each tag as the numbers of its key and value in the operation's [`Labels`]: the texts
    /// are kept once per operation (a campaign tags every resource alike), each resource keeps
    /// 8 bytes a tag. Boxed on purpose: the box is 8 bytes in every slot, a `Vec` would be 24,
    /// and most resources have no tags.
    #[allow(clippy::box_collection)]
    pub(super) tags: Option<Box<Vec<(u32, u32)>>>,
    pub(super) attempts: Attempts,
    pub(super) created_ms: u64,
    pub(super) updated_ms: u64,
}

impl Slot {
    /// This resource's share of its operation's lattice height: one for being known, and for
    /// each attempt one more than its status's height; with the reads' heights and one for each
    /// error code. Every join that changes a status, an attempt count or a read raises it.
    pub(super) fn height(&self, reads: Option<&Reads>) -> u64 {
        let attempts: u64 = self
            .attempts
            .as_slice()
            .iter()
            .map(|a| 1 + status_height(a.status) + u64::from(a.error_code.is_some()))
            .sum();
        1 + attempts + reads.map_or(0, Reads::height)
    }

    pub(super) fn new(id: &str, time_ms: u64) -> Slot {
        Slot {
            id: Id::new(id),
            to: None,
            tags: None,
            attempts: Attempts::Many(Box::new([])),
            created_ms: time_ms,
            updated_ms: time_ms,
        }
    }

    pub(super) fn from_resource(r: &Resource, labels: &mut Labels) -> Slot {
        let mut attempts: Vec<StoredAttempt> = r
            .attempts
            .iter()
            .map(|a| StoredAttempt::from_attempt(a, labels))
            .collect();
        attempts.shrink_to_fit();
        Slot {
            id: Id::new(&r.id),
            to: r.to.as_deref().map(Id::new),
            tags: (!r.tags.is_empty()).then(|| {
                Box::new(
                    r.tags
                        .iter()
                        .map(|(k, v)| (labels.intern(k), labels.intern(v)))
                        .collect(),
                )
            }),
            attempts: Attempts::from_vec(attempts),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }

    /// Its status, given what was read of it from Twilio (kept by its operation, since few
    /// resources have any).
    pub(super) fn status(&self, reads: Reads) -> ResourceStatus {
        reads.status(self.attempts.as_slice().iter().map(|a| a.status))
    }

    pub(super) fn view(&self, labels: &Labels, reads: Reads) -> Resource {
        let mut attempts: Vec<Attempt> = self
            .attempts
            .as_slice()
            .iter()
            .map(|a| a.view(labels))
            .collect();
        attempts.sort_by(|a, b| a.key.cmp(&b.key));
        Resource {
            id: self.id.as_string(),
            to: self.to.as_ref().map(Id::as_string),
            tags: self
                .tags
                .iter()
                .flat_map(|t| t.iter())
                .map(|&(k, v)| {
                    let text = |n| labels.text(n).unwrap_or_default().to_owned();
                    (text(k), text(v))
                })
                .collect(),
            attempts,
            reads,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }
    }

    /// Join a resource read from Twilio: its status into `reads`, its address and tags as an
    /// attempt's would be.
    pub(super) fn join_read(
        &mut self,
        read: &ResourceRead,
        reads: &mut Reads,
        labels: &mut Labels,
    ) -> bool {
        let mut changed = join_id(&mut self.to, &read.to);
        changed |= self.join_tags(&read.tags, labels);
        changed | reads.join(read.status)
    }

    /// Join tags: per key, the greatest value seen.
    fn join_tags(&mut self, new: &[(String, String)], labels: &mut Labels) -> bool {
        let mut changed = false;
        for (k, v) in new {
            let tags = self.tags.get_or_insert_with(Default::default);
            let at = tags
                .iter()
                .position(|&(key, _)| labels.text(key) == Some(k.as_str()));
            match at {
                Some(i) if labels.text(tags[i].1).is_some_and(|old| old >= v.as_str()) => {}
                Some(i) => {
                    tags[i].1 = labels.intern(v);
                    changed = true;
                }
                None => {
                    tags.push((labels.intern(k), labels.intern(v)));
                    tags.shrink_to_fit();
                    changed = true;
                }
            }
        }
        changed
    }

    /// Join `ev` (whose downstream id packed is `down`) into this resource.
    pub(super) fn join(
        &mut self,
        ev: &AttemptEvent,
        down: Option<&Id>,
        labels: &mut Labels,
    ) -> bool {
        let mut changed = join_id(&mut self.to, &ev.to);
        changed |= self.join_tags(&ev.tags, labels);
        match self
            .attempts
            .as_mut_slice()
            .iter_mut()
            .find(|a| a.matches(ev, down, labels))
        {
            Some(a) => changed |= a.join(ev, down, labels),
            None => {
                self.attempts
                    .push(StoredAttempt::from_event(ev, down, labels));
                changed = true;
            }
        }
        changed
    }
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
        assert_eq!(std::mem::size_of::<StoredAttempt>(), 40);
        assert_eq!(std::mem::size_of::<Slot>(), 112);
    }
}
