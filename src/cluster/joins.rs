//! Attempts that name no operation, in cluster mode (docs/cluster.md, "Attempts that name no
//! operation"). A classic status callback may carry only its attempt SID: the ingest process
//! routes it by that SID (or by its resource id, when it has one), so it lands on another
//! partition than its operation. The two meet on the SID's partition:
//!
//! - the process that folds a linking event (one that names operation, resource and SID) for the
//!   first time sends a *link notice* (that same event) to the SID's and the resource's
//!   partitions;
//! - the process folding such a partition keeps the links it was told of and the attempts that
//!   wait for one; whichever of the two comes second, the attempt is produced again, now naming
//!   its operation and resource, to the operation's partition, where it is folded like any other.
//!
//! Both halves are in the events topic, so a restore rebuilds the same joins (producing the
//! joined attempts again is harmless: applying an event twice is a no-op). Held attempts and
//! links are bounded in number and age, and what is dropped is counted.

use crate::event::{AttemptEvent, Event, EventBody};
use std::collections::{HashMap, VecDeque};

/// A link: the operation and resource an attempt SID (or a resource id) belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub operation_id: String,
    pub resource_id: String,
}

/// Joins waiting on the partitions this process owns.
#[derive(Debug, Default)]
pub struct Joins {
    held: HashMap<String, Vec<(Event, u64)>>,
    links: HashMap<String, (Link, u64)>,
    /// Keys in the order they were first held or linked, with that time, for the bounds.
    order: VecDeque<(String, u64)>,
    held_events: usize,
    max_held: usize,
    ttl_ms: u64,
    /// Held attempts dropped by the bounds.
    pub dropped: u64,
}

/// The event as its operation's partition gets it: `a` with its link filled in.
pub fn joined(ev: &Event, a: &AttemptEvent, link: &Link) -> Event {
    let mut a = a.clone();
    a.operation_id = Some(link.operation_id.clone());
    a.resource_id = Some(link.resource_id.clone());
    Event {
        time_ms: ev.time_ms,
        body: EventBody::Attempt(a),
    }
}

/// The link a linking attempt event carries, when it names operation and resource.
pub fn link_of(a: &AttemptEvent) -> Option<Link> {
    Some(Link {
        operation_id: a.operation_id.clone()?,
        resource_id: a.resource_id.clone()?,
    })
}

impl Joins {
    pub fn new(max_held: usize, ttl_ms: u64) -> Joins {
        Joins {
            max_held,
            ttl_ms,
            ..Joins::default()
        }
    }

    /// An attempt that names no operation arrived under `key`: its link if one is known (the
    /// caller produces the joined attempt), else it is held.
    pub fn attempt(&mut self, key: &str, ev: &Event, received_ms: u64) -> Option<Link> {
        if let Some((link, _)) = self.links.get(key) {
            return Some(link.clone());
        }
        let list = self.held.entry(key.to_owned()).or_default();
        if list.iter().any(|(e, _)| e == ev) {
            return None;
        }
        if list.is_empty() {
            self.order.push_back((key.to_owned(), received_ms));
        }
        list.push((ev.clone(), received_ms));
        self.held_events += 1;
        self.bound(received_ms);
        None
    }

    /// A link notice for `key`: the attempts that waited for it (the caller produces them
    /// joined). The link is kept for attempts still to come.
    pub fn link(&mut self, key: &str, link: Link, received_ms: u64) -> Vec<(Event, u64)> {
        if !self.links.contains_key(key) && !self.held.contains_key(key) {
            self.order.push_back((key.to_owned(), received_ms));
        }
        self.links.insert(key.to_owned(), (link, received_ms));
        let released = self.held.remove(key).unwrap_or_default();
        self.held_events -= released.len();
        self.bound(received_ms);
        released
    }

    /// Forget every key whose partition `gone` says (the partition moved away).
    pub fn forget_where(&mut self, gone: impl Fn(&str) -> bool) {
        self.held.retain(|k, _| !gone(k));
        self.links.retain(|k, _| !gone(k));
        self.order.retain(|(k, _)| !gone(k));
        self.held_events = self.held.values().map(Vec::len).sum();
    }

    pub fn held_events(&self) -> usize {
        self.held_events
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Drop keys older than the age bound, and the oldest held while over the count bound.
    fn bound(&mut self, now_ms: u64) {
        while let Some((key, since)) = self.order.front() {
            let expired = since.saturating_add(self.ttl_ms) < now_ms;
            let over = self.held_events > self.max_held;
            if !expired && !over {
                break;
            }
            let key = key.clone();
            self.order.pop_front();
            if let Some(list) = self.held.remove(&key) {
                self.held_events -= list.len();
                self.dropped += list.len() as u64;
            }
            if expired {
                self.links.remove(&key);
            } else if let Some((_, at)) = self.links.get(&key) {
                // Over the count only: a link is small; keep it in the age order.
                let at = *at;
                self.order.push_back((key, at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AttemptStatus;

    fn unlinked(sid: &str, status: AttemptStatus) -> Event {
        Event {
            time_ms: 1,
            body: EventBody::Attempt(AttemptEvent {
                kind: None,
                operation_id: None,
                resource_id: None,
                downstream_id: Some(sid.into()),
                attempt: None,
                channel: None,
                status,
                error_code: None,
                to: None,
                tags: vec![],
            }),
        }
    }

    fn link() -> Link {
        Link {
            operation_id: "comms_operation_1".into(),
            resource_id: "comms_message_1".into(),
        }
    }

    #[test]
    fn an_attempt_and_its_link_meet_in_either_order() {
        let sent = unlinked("SM1", AttemptStatus::Sent);
        let delivered = unlinked("SM1", AttemptStatus::Delivered);
        // Attempts first: held, then released by the link.
        let mut j = Joins::new(100, 1_000);
        assert_eq!(j.attempt("SM1", &sent, 10), None);
        assert_eq!(
            j.attempt("SM1", &sent, 11),
            None,
            "a duplicate is held once"
        );
        assert_eq!(j.attempt("SM1", &delivered, 12), None);
        assert_eq!(j.held_events(), 2);
        let released = j.link("SM1", link(), 13);
        assert_eq!(released.len(), 2);
        assert_eq!(j.held_events(), 0);
        // Link first: the attempt is joined at once.
        let mut k = Joins::new(100, 1_000);
        assert!(k.link("SM1", link(), 10).is_empty());
        assert_eq!(k.attempt("SM1", &sent, 11), Some(link()));
        let EventBody::Attempt(a) = &sent.body else {
            unreachable!()
        };
        let j = joined(&sent, a, &link());
        assert_eq!(crate::cluster::routing_key(&j), "comms_operation_1");
    }

    #[test]
    fn held_attempts_and_links_are_bounded_and_the_dropped_counted() {
        let mut j = Joins::new(2, 1_000);
        for (i, sid) in ["SM1", "SM2", "SM3"].iter().enumerate() {
            j.attempt(sid, &unlinked(sid, AttemptStatus::Sent), i as u64);
        }
        assert_eq!((j.held_events(), j.dropped), (2, 1), "the oldest went");
        j.link("SM9", link(), 5);
        // Past the age bound, both the held and the links go.
        j.attempt("SM4", &unlinked("SM4", AttemptStatus::Sent), 2_000);
        assert_eq!(j.held_events(), 1);
        assert_eq!(j.link_count(), 0);
        assert_eq!(j.dropped, 3);
        j.forget_where(|k| k == "SM4");
        assert_eq!(j.held_events(), 0);
    }
}
