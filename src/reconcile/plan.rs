//! The reconciler's planning, without IO: which request to make next and when, given the
//! clock (`now_ms` is always an argument), the request budget, Twilio's back-off signals and
//! what each answer showed. The edge (`mod.rs`) makes the requests and folds what they read.
//! The schedule is described in docs/reconcile.md.

use crate::comms_api::{ApiStats, NextPage};
use crate::event::Kind;
use crate::rollup::{Bucket, OperationStatus, Stats};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// The planner's knobs (from `[reconcile]` and `retention.ttl`).
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// First check of an operation, and the step the back-off starts from.
    pub interval_ms: u64,
    /// Longest wait between two checks of a live operation.
    pub max_interval_ms: u64,
    /// How far back discovery looks at start (tally's retention), and the age past which an
    /// operation is no longer checked.
    pub lookback_ms: u64,
    /// How much each discovery window overlaps the previous one.
    pub overlap_ms: u64,
    /// Request budget: requests per second, on average over any second.
    pub requests_per_second: f64,
    /// Longest pause after consecutive failures (5xx, timeouts, refused connections).
    pub max_backoff_ms: u64,
}

/// One request to Twilio's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `GET /v1/{Kind}/Operations?startDate&endDate` (or the next page of it).
    ListOperations {
        kind: Kind,
        start_ms: u64,
        end_ms: u64,
        page: Option<NextPage>,
    },
    /// `GET /v1/{Kind}/Operations/{id}`.
    FetchOperation { kind: Kind, id: String },
    /// `GET /v1/{Kind}?operationId=…&status=…` (or the next page of it).
    ListResources {
        kind: Kind,
        operation_id: String,
        status: Bucket,
        page: Option<NextPage>,
    },
}

impl Call {
    /// The metrics label of the endpoint.
    pub fn endpoint(&self) -> &'static str {
        match self {
            Call::ListOperations { .. } => "list_operations",
            Call::FetchOperation { .. } => "fetch_operation",
            Call::ListResources { .. } => "list_resources",
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `max(1, rate)` kept.
#[derive(Debug, Clone)]
pub struct Budget {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at_ms: u64,
}

impl Budget {
    pub fn new(rate: f64, now_ms: u64) -> Budget {
        let capacity = rate.max(1.0);
        Budget {
            rate,
            capacity,
            tokens: capacity,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Take one token, or say when one will be there.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) / self.rate * 1000.0).ceil() as u64;
            Err(now_ms + wait.max(1))
        }
    }
}

/// How an operation compares with Twilio's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Difference {
    /// Resources Twilio counts in some status that tally counts elsewhere (or not at all):
    /// the sum of Twilio's excess over each status.
    pub resources: u64,
    /// Whether the operation statuses differ.
    pub status: bool,
}

impl Difference {
    pub fn agrees(&self) -> bool {
        self.resources == 0 && !self.status
    }
}

/// The statuses of a kind's buckets with their counts, as Twilio reports them and as tally has
/// them; Twilio's missing fields count as 0.
fn bucket_pairs(kind: Kind, twilio: &ApiStats, tally: &Stats) -> Vec<(Bucket, u64, u64)> {
    let t = |v: Option<u64>| v.unwrap_or(0);
    let mut pairs = vec![
        (Bucket::Scheduled, t(twilio.scheduled), tally.scheduled),
        (Bucket::Queued, t(twilio.queued), tally.queued),
        (Bucket::Sent, t(twilio.sent), tally.sent),
        (Bucket::Delivered, t(twilio.delivered), tally.delivered),
        (
            Bucket::Undelivered,
            t(twilio.undelivered),
            tally.undelivered,
        ),
        (Bucket::Failed, t(twilio.failed), tally.failed),
        (Bucket::Canceled, t(twilio.canceled), tally.canceled),
    ];
    match kind {
        Kind::Messages => pairs.push((Bucket::Read, t(twilio.read), tally.read)),
        Kind::Emails => pairs.push((Bucket::Opened, t(twilio.opened), tally.opened)),
        Kind::PushNotifications => {}
    }
    pairs
}

/// Compare Twilio's stats and status with tally's.
pub fn compare(
    kind: Kind,
    twilio: &ApiStats,
    twilio_status: Option<OperationStatus>,
    tally: &Stats,
    tally_status: OperationStatus,
) -> Difference {
    let resources = bucket_pairs(kind, twilio, tally)
        .into_iter()
        .map(|(_, tw, ta)| tw.saturating_sub(ta))
        .sum();
    Difference {
        resources,
        status: twilio_status.is_some_and(|s| s != tally_status),
    }
}

/// The statuses to list from Twilio: those where Twilio counts more resources than tally.
pub fn statuses_to_list(kind: Kind, twilio: &ApiStats, tally: &Stats) -> Vec<Bucket> {
    bucket_pairs(kind, twilio, tally)
        .into_iter()
        .filter(|(_, tw, ta)| tw > ta)
        .map(|(b, _, _)| b)
        .collect()
}

/// Whether an operation, as Twilio reports it, can still move: anything scheduled, queued or
/// sent, or (Messages, Emails) delivered and not yet read or opened, or Twilio not done.
fn can_still_move(kind: Kind, status: Option<OperationStatus>, twilio: &ApiStats) -> bool {
    let n = |v: Option<u64>| v.unwrap_or(0);
    let done = matches!(
        status,
        Some(OperationStatus::Completed | OperationStatus::Canceled)
    );
    let in_flight = n(twilio.scheduled) + n(twilio.queued) + n(twilio.sent);
    let may_be_read = kind != Kind::PushNotifications && n(twilio.delivered) > 0;
    !done || in_flight > 0 || may_be_read
}

/// One operation being kept in step with Twilio.
#[derive(Debug, Clone)]
struct Live {
    kind: Kind,
    created_ms: u64,
    due_ms: u64,
    /// Checks in a row that changed nothing: the back-off exponent.
    unchanged: u32,
    /// It looked final at the last check: one more check, then it is retired.
    confirming: bool,
    /// Resource lists still to come back for the current check.
    pending_lists: u32,
    /// Whether any read of the current check changed tally's state.
    changed: bool,
    /// Twilio's stats and status at the current check.
    twilio: Option<(ApiStats, Option<OperationStatus>)>,
    /// Since when, and by how much, tally and Twilio disagree (after a whole check).
    disagreement: Option<(u64, Difference)>,
}

/// Discovery of one kind's operations.
#[derive(Debug, Clone, Default)]
struct Discovery {
    next_ms: u64,
    /// The end of the last window listed to its last page.
    covered_to_ms: Option<u64>,
    /// The window being listed.
    window: Option<(u64, u64)>,
}

/// What the planner knows and plans.
#[derive(Debug)]
pub struct Planner {
    cfg: PlanConfig,
    live: HashMap<String, Live>,
    due: BTreeSet<(u64, String)>,
    retired: HashSet<String>,
    discovery: [Discovery; 3],
    /// Follow-ups of an answer (next pages, resource lists): made before anything new.
    work: VecDeque<Call>,
    budget: Budget,
    pause_until_ms: u64,
    failures: u32,
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Messages => 0,
        Kind::Emails => 1,
        Kind::PushNotifications => 2,
    }
}

/// The disagreement gauges: operations that disagree, resources by which they do, and the
/// oldest disagreement's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disagreements {
    pub operations: u64,
    pub resources: u64,
    pub oldest_since_ms: Option<u64>,
}

impl Planner {
    pub fn new(cfg: PlanConfig, now_ms: u64) -> Planner {
        let budget = Budget::new(cfg.requests_per_second, now_ms);
        let discovery = std::array::from_fn(|_| Discovery {
            next_ms: now_ms,
            ..Discovery::default()
        });
        Planner {
            cfg,
            live: HashMap::new(),
            due: BTreeSet::new(),
            retired: HashSet::new(),
            discovery,
            work: VecDeque::new(),
            budget,
            pause_until_ms: 0,
            failures: 0,
        }
    }

    /// Operations being checked.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Until when Twilio's signals (429, failures) pause every request.
    pub fn paused_until_ms(&self) -> u64 {
        self.pause_until_ms
    }

    pub fn disagreements(&self) -> Disagreements {
        let mut d = Disagreements::default();
        for (since, diff) in self.live.values().filter_map(|l| l.disagreement) {
            d.operations += 1;
            d.resources += diff.resources;
            d.oldest_since_ms = Some(d.oldest_since_ms.map_or(since, |o| o.min(since)));
        }
        d
    }

    /// The `n` oldest disagreements that started before `before_ms`: id, start, difference.
    pub fn oldest_disagreements(&self, before_ms: u64, n: usize) -> Vec<(String, u64, Difference)> {
        let mut all: Vec<(String, u64, Difference)> = self
            .live
            .iter()
            .filter_map(|(id, l)| l.disagreement.map(|(since, d)| (id.clone(), since, d)))
            .filter(|(_, since, _)| *since < before_ms)
            .collect();
        all.sort_by_key(|(id, since, _)| (*since, id.clone()));
        all.truncate(n);
        all
    }

    /// Keep `id` in step with Twilio from now on (an operation tally learnt of), unless it is
    /// already, was retired, or is past the look-back.
    pub fn track(&mut self, id: &str, kind: Kind, created_ms: u64, now_ms: u64) {
        if self.live.contains_key(id)
            || self.retired.contains(id)
            || now_ms.saturating_sub(created_ms) > self.cfg.lookback_ms
        {
            return;
        }
        let due_ms = now_ms.max(created_ms + self.cfg.interval_ms);
        self.live.insert(
            id.to_owned(),
            Live {
                kind,
                created_ms,
                due_ms,
                unchanged: 0,
                confirming: false,
                pending_lists: 0,
                changed: false,
                twilio: None,
                disagreement: None,
            },
        );
        self.due.insert((due_ms, id.to_owned()));
    }

    /// Forget what is no longer in tally (evicted) or was retired long ago: `keep` says
    /// whether tally still holds an operation.
    pub fn prune(&mut self, keep: impl Fn(&str) -> bool) {
        self.retired.retain(|id| keep(id));
        let gone: Vec<String> = self.live.keys().filter(|id| !keep(id)).cloned().collect();
        for id in gone {
            self.retire(&id);
            self.retired.remove(&id);
        }
    }

    fn retire(&mut self, id: &str) {
        if let Some(l) = self.live.remove(id) {
            self.due.remove(&(l.due_ms, id.to_owned()));
        }
        self.retired.insert(id.to_owned());
    }

    fn schedule(&mut self, id: &str, due_ms: u64) {
        if let Some(l) = self.live.get_mut(id) {
            self.due.remove(&(l.due_ms, id.to_owned()));
            l.due_ms = due_ms;
            self.due.insert((due_ms, id.to_owned()));
        }
    }

    /// The next request to make, or the time to ask again.
    pub fn next_call(&mut self, now_ms: u64) -> Result<Call, u64> {
        if now_ms < self.pause_until_ms {
            return Err(self.pause_until_ms);
        }
        let call = self.pick(now_ms)?;
        if let Err(at) = self.budget.take(now_ms) {
            self.work.push_front(call);
            return Err(at);
        }
        Ok(call)
    }

    fn pick(&mut self, now_ms: u64) -> Result<Call, u64> {
        if let Some(c) = self.work.pop_front() {
            return Ok(c);
        }
        let mut wake = u64::MAX;
        for kind in Kind::ALL {
            let d = &mut self.discovery[kind_index(kind)];
            if d.window.is_none() && d.next_ms <= now_ms {
                let start = match d.covered_to_ms {
                    Some(end) => end.saturating_sub(self.cfg.overlap_ms),
                    None => now_ms.saturating_sub(self.cfg.lookback_ms),
                };
                d.window = Some((start, now_ms));
                return Ok(Call::ListOperations {
                    kind,
                    start_ms: start,
                    end_ms: now_ms,
                    page: None,
                });
            }
            if d.window.is_none() {
                wake = wake.min(d.next_ms);
            }
        }
        while let Some((due, id)) = self.due.first().cloned() {
            if due > now_ms {
                wake = wake.min(due);
                break;
            }
            self.due.pop_first();
            let Some(l) = self.live.get_mut(&id) else {
                continue;
            };
            if now_ms.saturating_sub(l.created_ms) > self.cfg.lookback_ms {
                self.retire(&id);
                continue;
            }
            // Off the schedule until its answer comes back.
            l.due_ms = u64::MAX;
            l.changed = false;
            return Ok(Call::FetchOperation { kind: l.kind, id });
        }
        Err(wake.min(now_ms + 1000))
    }

    /// Take one request from the budget outside [`Planner::next_call`] (the retry of a request
    /// that never reached Twilio), or say when there will be one.
    pub fn take_token(&mut self, now_ms: u64) -> Result<(), u64> {
        self.budget.take(now_ms)
    }

    /// An answer arrived: failures stop counting.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// `429`: wait what Twilio asked (at least a second), then make `call` again.
    pub fn rate_limited(&mut self, call: Call, retry_after_ms: Option<u64>, now_ms: u64) {
        let wait = retry_after_ms.unwrap_or(1000).clamp(1000, 3_600_000);
        self.pause_until_ms = self.pause_until_ms.max(now_ms + wait);
        self.work.push_front(call);
    }

    /// A 5xx, a timeout, a refused connection or an unreadable answer: back off (doubling from
    /// a second up to `max_backoff`), then make `call` again.
    pub fn failed(&mut self, call: Call, now_ms: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        let wait =
            (1000u64 << self.failures.min(20).saturating_sub(1)).min(self.cfg.max_backoff_ms);
        self.pause_until_ms = self.pause_until_ms.max(now_ms + wait);
        self.work.push_front(call);
        wait
    }

    /// Twilio does not know the operation (404): stop checking it.
    pub fn not_found(&mut self, id: &str) {
        self.retire(id);
    }

    /// A page of the operations list came back; the edge folded and tracked each operation
    /// in it. `next` is where the rest is.
    pub fn operations_listed(&mut self, kind: Kind, next: Option<NextPage>, now_ms: u64) {
        let interval = self.cfg.interval_ms;
        let d = &mut self.discovery[kind_index(kind)];
        let Some((start, end)) = d.window else {
            return;
        };
        match next {
            Some(page) => self.work.push_back(Call::ListOperations {
                kind,
                start_ms: start,
                end_ms: end,
                page: Some(page),
            }),
            None => {
                d.window = None;
                d.covered_to_ms = Some(end);
                d.next_ms = now_ms + interval;
            }
        }
    }

    /// Twilio's view of a live operation arrived (from a fetch or a discovery page) and was
    /// folded; `tally` and `tally_status` are tally's state after the fold, `changed` whether
    /// the fold changed it. Queues the resource lists that would close a difference.
    pub fn operation_read(&mut self, id: &str, r: OperationCheck, now_ms: u64) {
        let Some(l) = self.live.get_mut(id) else {
            return;
        };
        if l.pending_lists > 0 {
            // A discovery page crossed a check under way: the check finishes it.
            return;
        }
        l.changed |= r.changed;
        l.twilio = Some((r.twilio, r.twilio_status));
        let lists = statuses_to_list(l.kind, &r.twilio, r.tally);
        if lists.is_empty() {
            self.finish_check(id, r.tally, r.tally_status, now_ms);
            return;
        }
        l.pending_lists = lists.len() as u32;
        let kind = l.kind;
        for status in lists {
            self.work.push_back(Call::ListResources {
                kind,
                operation_id: id.to_owned(),
                status,
                page: None,
            });
        }
    }

    /// A page of an operation's resources came back and was folded. The next page is asked
    /// for unless tally now counts as many resources in that status as Twilio does.
    #[allow(clippy::too_many_arguments)]
    pub fn resources_listed(
        &mut self,
        id: &str,
        status: Bucket,
        next: Option<NextPage>,
        changed: bool,
        tally: &Stats,
        tally_status: OperationStatus,
        now_ms: u64,
    ) {
        let Some(l) = self.live.get_mut(id) else {
            return;
        };
        l.changed |= changed;
        // A status whose count has caught up with Twilio's needs no more pages.
        let caught_up = l.twilio.is_some_and(|(twilio, _)| {
            bucket_pairs(l.kind, &twilio, tally)
                .into_iter()
                .any(|(b, tw, ta)| b == status && ta >= tw)
        });
        if let Some(page) = next.filter(|_| !caught_up) {
            let kind = l.kind;
            self.work.push_back(Call::ListResources {
                kind,
                operation_id: id.to_owned(),
                status,
                page: Some(page),
            });
            return;
        }
        l.pending_lists = l.pending_lists.saturating_sub(1);
        if l.pending_lists == 0 {
            self.finish_check(id, tally, tally_status, now_ms);
        }
    }

    /// A check is whole: note the disagreement, then schedule the next check (backed off while
    /// nothing changes), or retire the operation once it looked final twice.
    fn finish_check(
        &mut self,
        id: &str,
        tally: &Stats,
        tally_status: OperationStatus,
        now_ms: u64,
    ) {
        let (interval, max_interval) = (self.cfg.interval_ms, self.cfg.max_interval_ms);
        let Some(l) = self.live.get_mut(id) else {
            return;
        };
        let Some((twilio, twilio_status)) = l.twilio else {
            return;
        };
        let diff = compare(l.kind, &twilio, twilio_status, tally, tally_status);
        l.disagreement = if diff.agrees() {
            None
        } else {
            Some((l.disagreement.map_or(now_ms, |(since, _)| since), diff))
        };
        l.unchanged = if l.changed {
            0
        } else {
            l.unchanged.saturating_add(1)
        };
        let settled = diff.agrees() && !can_still_move(l.kind, twilio_status, &twilio);
        if settled && l.confirming && !l.changed {
            self.retire(id);
            return;
        }
        l.confirming = settled;
        let delay = if settled {
            interval
        } else {
            (interval << l.unchanged.min(30)).min(max_interval)
        };
        self.schedule(id, now_ms + delay);
    }
}

/// What one read of an operation showed, for [`Planner::operation_read`].
#[derive(Debug, Clone, Copy)]
pub struct OperationCheck<'a> {
    pub twilio: ApiStats,
    pub twilio_status: Option<OperationStatus>,
    pub tally: &'a Stats,
    pub tally_status: OperationStatus,
    pub changed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PlanConfig {
        PlanConfig {
            interval_ms: 60_000,
            max_interval_ms: 3_600_000,
            lookback_ms: 7 * 86_400_000,
            overlap_ms: 300_000,
            requests_per_second: 5.0,
            max_backoff_ms: 300_000,
        }
    }

    fn stats(kind: Kind) -> Stats {
        Stats {
            kind,
            ..crate::rollup::Operation::new("x", 0, 0).stats()
        }
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn the_budget_is_never_exceeded_over_any_window() {
        let mut b = Budget::new(5.0, T0);
        let mut sent = vec![];
        let mut now = T0;
        while now < T0 + 10_000 {
            match b.take(now) {
                Ok(()) => sent.push(now),
                Err(at) => now = at.max(now + 1),
            }
        }
        // 5 a second plus a burst of 5: over any window of w ms, at most 5 + 5 w / 1000.
        for (i, &start) in sent.iter().enumerate() {
            for (j, &end) in sent.iter().enumerate().skip(i) {
                let allowed = 5.0 + 5.0 * (end - start) as f64 / 1000.0;
                assert!(
                    (j - i + 1) as f64 <= allowed + 1e-9,
                    "{} in {} ms",
                    j - i + 1,
                    end - start
                );
            }
        }
        assert!(
            sent.len() >= 50,
            "the budget is spent, not wasted: {}",
            sent.len()
        );
    }

    #[test]
    fn discovery_looks_back_the_retention_at_start_then_overlaps_the_last_window() {
        let mut p = Planner::new(cfg(), T0);
        let first = p.next_call(T0).unwrap();
        assert_eq!(
            first,
            Call::ListOperations {
                kind: Kind::Messages,
                start_ms: T0 - 7 * 86_400_000,
                end_ms: T0,
                page: None
            }
        );
        p.operations_listed(Kind::Messages, Some(NextPage::Token("t".into())), T0);
        let page = p.next_call(T0).unwrap();
        assert!(matches!(
            page,
            Call::ListOperations {
                page: Some(NextPage::Token(_)),
                ..
            }
        ));
        p.operations_listed(Kind::Messages, None, T0);
        // Emails and push next; then nothing until the interval has passed.
        assert!(matches!(
            p.next_call(T0 + 1000),
            Ok(Call::ListOperations {
                kind: Kind::Emails,
                ..
            })
        ));
        p.operations_listed(Kind::Emails, None, T0 + 1000);
        assert!(matches!(
            p.next_call(T0 + 2000),
            Ok(Call::ListOperations {
                kind: Kind::PushNotifications,
                ..
            })
        ));
        p.operations_listed(Kind::PushNotifications, None, T0 + 2000);
        assert!(p.next_call(T0 + 3000).is_err());
        let later = T0 + 61_000;
        assert_eq!(
            p.next_call(later).unwrap(),
            Call::ListOperations {
                kind: Kind::Messages,
                start_ms: T0 - 300_000,
                end_ms: later,
                page: None
            }
        );
    }

    /// The next call that is not discovery (discovery pages are answered empty on the way).
    fn next_check(p: &mut Planner, now: u64) -> Option<Call> {
        loop {
            match p.next_call(now) {
                Ok(Call::ListOperations { kind, .. }) => p.operations_listed(kind, None, now),
                Ok(c) => return Some(c),
                Err(_) => return None,
            }
        }
    }

    fn drain_discovery(p: &mut Planner, now: u64) {
        for kind in Kind::ALL {
            let c = p.next_call(now).unwrap();
            assert!(matches!(c, Call::ListOperations { .. }), "{c:?}");
            p.operations_listed(kind, None, now);
        }
    }

    /// One scenario from the first check to the capped back-off, longer than 80 lines: each
    /// step needs the state the one before left, so split it would repeat the set-up.
    #[test]
    fn a_difference_lists_only_the_statuses_twilio_counts_more_of_and_backs_off_once_agreed() {
        let mut p = Planner::new(cfg(), T0);
        drain_discovery(&mut p, T0);
        p.track("op", Kind::Messages, T0, T0);
        let due = T0 + 60_000;
        assert!(p.next_call(due - 1).is_err());
        assert_eq!(
            next_check(&mut p, due).unwrap(),
            Call::FetchOperation {
                kind: Kind::Messages,
                id: "op".into()
            }
        );
        let mut tally = stats(Kind::Messages);
        tally.total = 3;
        tally.queued = 2;
        tally.delivered = 1;
        let twilio = ApiStats {
            total: Some(3),
            delivered: Some(2),
            failed: Some(1),
            ..ApiStats::default()
        };
        let check = OperationCheck {
            twilio,
            twilio_status: Some(OperationStatus::Completed),
            tally: &tally,
            tally_status: OperationStatus::Processing,
            changed: true,
        };
        p.operation_read("op", check, due);
        let lists: Vec<Call> = (0..2)
            .map(|_| next_check(&mut p, due + 1000).unwrap())
            .collect();
        let statuses: Vec<Bucket> = lists
            .iter()
            .map(|c| match c {
                Call::ListResources { status, .. } => *status,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(statuses, vec![Bucket::Delivered, Bucket::Failed]);
        // Still disagreeing after the first list; agreeing after the second.
        p.resources_listed(
            "op",
            Bucket::Delivered,
            None,
            true,
            &tally,
            OperationStatus::Processing,
            due,
        );
        assert_eq!(
            p.disagreements().operations,
            0,
            "counted only once the check is whole"
        );
        let agreed = Stats {
            queued: 0,
            delivered: 2,
            failed: 1,
            ..tally
        };
        p.resources_listed(
            "op",
            Bucket::Failed,
            None,
            true,
            &agreed,
            OperationStatus::Completed,
            due,
        );
        assert_eq!(p.disagreements(), Disagreements::default());
        // Delivered messages may still be read: checked again, backed off while nothing changes.
        let mut at = due;
        let mut gaps = vec![];
        for _ in 0..8 {
            let next = (at..)
                .step_by(1000)
                .find(|t| next_check(&mut p, *t).is_some())
                .unwrap();
            gaps.push((next - at) / 1000);
            at = next;
            let check = OperationCheck {
                twilio,
                twilio_status: Some(OperationStatus::Completed),
                tally: &agreed,
                tally_status: OperationStatus::Completed,
                changed: false,
            };
            p.operation_read("op", check, at);
        }
        assert_eq!(gaps, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn lasting_disagreements_are_named_oldest_first() {
        let mut p = Planner::new(cfg(), T0);
        drain_discovery(&mut p, T0);
        let tally = stats(Kind::Emails);
        let twilio = ApiStats {
            total: Some(1),
            opened: Some(1),
            ..ApiStats::default()
        };
        for (i, id) in ["b", "a", "c"].into_iter().enumerate() {
            let at = T0 + 60_000 * (i as u64 + 1);
            p.track(id, Kind::Emails, T0, T0);
            let check = OperationCheck {
                twilio,
                twilio_status: None,
                tally: &tally,
                tally_status: OperationStatus::Processing,
                changed: false,
            };
            p.operation_read(id, check, at);
            // The list finds nothing: the check ends still disagreeing.
            while let Some(Call::ListResources { status, .. }) = next_check(&mut p, at) {
                p.resources_listed(
                    id,
                    status,
                    None,
                    false,
                    &tally,
                    OperationStatus::Processing,
                    at,
                );
            }
        }
        let named: Vec<(String, u64)> = p
            .oldest_disagreements(T0 + 180_000, 5)
            .into_iter()
            .map(|(id, since, d)| {
                assert_eq!(d.resources, 1);
                (id, (since - T0) / 60_000)
            })
            .collect();
        assert_eq!(named, vec![("b".to_owned(), 1), ("a".to_owned(), 2)]);
        assert_eq!(p.disagreements().operations, 3);
    }

    #[test]
    fn a_settled_operation_is_checked_once_more_then_retired() {
        let mut p = Planner::new(cfg(), T0);
        drain_discovery(&mut p, T0);
        p.track("op", Kind::PushNotifications, T0, T0);
        let mut tally = stats(Kind::PushNotifications);
        tally.total = 2;
        tally.delivered = 2;
        let twilio = ApiStats {
            total: Some(2),
            delivered: Some(2),
            ..ApiStats::default()
        };
        let mut at = T0 + 60_000;
        for round in 0..2 {
            assert!(next_check(&mut p, at).is_some(), "check {round}");
            let check = OperationCheck {
                twilio,
                twilio_status: Some(OperationStatus::Completed),
                tally: &tally,
                tally_status: OperationStatus::Completed,
                changed: round == 0,
            };
            p.operation_read("op", check, at);
            at += 60_000;
        }
        assert_eq!(p.live_count(), 0);
        p.track("op", Kind::PushNotifications, T0, at);
        assert_eq!(p.live_count(), 0, "a retired operation stays retired");
    }

    #[test]
    fn rate_limits_and_failures_pause_everything_and_the_call_is_made_again() {
        let mut p = Planner::new(cfg(), T0);
        let c = p.next_call(T0).unwrap();
        p.rate_limited(c.clone(), Some(30_000), T0);
        assert_eq!(p.next_call(T0 + 29_999), Err(T0 + 30_000));
        assert_eq!(p.next_call(T0 + 30_000).unwrap(), c);
        let mut waits = vec![];
        let mut now = T0 + 30_000;
        for _ in 0..12 {
            let w = p.failed(c.clone(), now);
            waits.push(w / 1000);
            now += w;
            assert_eq!(p.next_call(now).unwrap(), c);
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        p.succeeded();
        assert_eq!(p.failed(c, now) / 1000, 1);
    }
}
