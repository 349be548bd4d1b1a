//! The operations changed since they were last published: what the Kafka publisher owes.
//!
//! The aggregator marks an operation here after every change (only when publishing is on); the
//! publisher takes the marks every flush interval, publishes each operation's *latest* state
//! once, and puts a mark back when the broker did not acknowledge it. Memory is bounded by the
//! number of changed operations, however many changes they had: that is the coalescing.

use dashmap::DashMap;
use std::collections::BTreeSet;

/// What is owed for one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// When its oldest unpublished change happened (Unix ms).
    pub since_ms: u64,
    /// Resources changed since, when per-resource records are published; else empty.
    pub resources: BTreeSet<String>,
}

impl Change {
    /// Fold `other` (an older or newer mark of the same operation) into this one.
    pub fn merge(&mut self, other: Change) {
        self.since_ms = self.since_ms.min(other.since_ms);
        self.resources.extend(other.resources);
    }
}

/// The set of changed operations, keyed by operation id.
#[derive(Debug, Default)]
pub struct Dirty {
    ops: DashMap<String, Change, crate::rollup::hashing::FastHash>,
    track_resources: bool,
}

impl Dirty {
    /// A new, empty set; `track_resources` keeps the changed resource ids too.
    pub fn new(track_resources: bool) -> Dirty {
        Dirty {
            ops: DashMap::default(),
            track_resources,
        }
    }

    /// Note that `op` (and, if known, its resource `res`) changed at `now_ms`. Cheap when the
    /// operation is already marked: no allocation unless a new resource id is kept.
    pub fn mark(&self, op: &str, res: Option<&str>, now_ms: u64) {
        let res = res.filter(|_| self.track_resources);
        if let Some(mut c) = self.ops.get_mut(op) {
            if let Some(r) = res {
                if !c.resources.contains(r) {
                    c.resources.insert(r.to_owned());
                }
            }
            return;
        }
        let mut c = self.ops.entry(op.to_owned()).or_insert_with(|| Change {
            since_ms: now_ms,
            resources: BTreeSet::new(),
        });
        if let Some(r) = res {
            c.resources.insert(r.to_owned());
        }
    }

    /// Take up to `limit` marks, leaving those for which `skip` holds (operations that already
    /// have a record in flight). Oldest changes first, so a backlog drains in order.
    pub fn take(&self, skip: impl Fn(&str) -> bool, limit: usize) -> Vec<(String, Change)> {
        let mut ids: Vec<(u64, String)> = self
            .ops
            .iter()
            .filter(|e| !skip(e.key()))
            .map(|e| (e.value().since_ms, e.key().clone()))
            .collect();
        if ids.len() > limit {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|(_, id)| self.ops.remove(&id))
            .collect()
    }

    /// Put back a mark that was taken but not acknowledged, merged with any newer one.
    pub fn restore(&self, op: String, change: Change) {
        match self.ops.entry(op) {
            dashmap::Entry::Occupied(mut e) => e.get_mut().merge(change),
            dashmap::Entry::Vacant(e) => {
                e.insert(change);
            }
        }
    }

    /// Forget an operation's mark (it no longer exists).
    pub fn forget(&self, op: &str) {
        self.ops.remove(op);
    }

    /// Whether `op` is marked.
    pub fn contains(&self, op: &str) -> bool {
        self.ops.contains_key(op)
    }

    /// Operations marked.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The time of the oldest unpublished change marked here.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.ops.iter().map(|e| e.value().since_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_changes_of_one_operation_are_one_mark_with_its_first_time() {
        let d = Dirty::new(false);
        for t in 0..1000 {
            d.mark("op", Some("res"), 100 + t);
        }
        assert_eq!(d.len(), 1);
        assert_eq!(d.oldest_ms(), Some(100));
        let taken = d.take(|_| false, 10);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.since_ms, 100);
        assert!(taken[0].1.resources.is_empty(), "resources not tracked");
        assert!(d.is_empty());
    }

    #[test]
    fn a_mark_put_back_keeps_the_time_of_its_change_alone_or_merged_with_a_newer_one() {
        let d = Dirty::new(false);
        d.mark("alone", None, 500);
        d.mark("merged", None, 600);
        let taken = d.take(|_| false, 10);
        d.mark("merged", None, 900);
        for (id, change) in taken {
            d.restore(id, change);
        }
        assert_eq!(d.oldest_ms(), Some(500));
        let again = d.take(|_| false, 10);
        let times: Vec<(String, u64)> = again.into_iter().map(|(id, c)| (id, c.since_ms)).collect();
        assert_eq!(times, vec![("alone".into(), 500), ("merged".into(), 600)]);
    }

    #[test]
    fn take_skips_operations_in_flight_and_returns_oldest_first_within_the_limit() {
        let d = Dirty::new(true);
        d.mark("c", Some("r1"), 30);
        d.mark("a", Some("r1"), 10);
        d.mark("b", None, 20);
        d.mark("a", Some("r2"), 40);
        let taken = d.take(|id| id == "b", 1);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, "a");
        assert_eq!(
            taken[0].1.resources.iter().collect::<Vec<_>>(),
            vec!["r1", "r2"]
        );
        let rest = d.take(|_| false, 10);
        assert_eq!(
            rest.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            vec!["b", "c"]
        );
    }

    #[test]
    fn a_restored_mark_keeps_the_oldest_time_and_every_resource() {
        let d = Dirty::new(true);
        d.mark("a", Some("r1"), 10);
        let (id, change) = d.take(|_| false, 10).remove(0);
        d.mark("a", Some("r2"), 50);
        d.restore(id, change);
        let (_, c) = d.take(|_| false, 10).remove(0);
        assert_eq!(c.since_ms, 10);
        assert_eq!(c.resources.len(), 2);
    }
}
