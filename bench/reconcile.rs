//! What reconciliation costs over an operation's life, and how soon a lost callback is made up:
//! the real planner (`tally::reconcile::plan`) and the real fold (the aggregator, the read
//! events of `tally::reconcile`) on a simulated clock, against an in-memory Twilio whose
//! resources move over seven days, with a share of the callbacks lost on the way.
//!
//! `cargo run --release --example reconcile -- [recipients…]` (default 1000 100000) prints, per
//! size: requests by endpoint over the operation's life, requests per recipient, the longest and
//! median time tally disagreed with Twilio after a change, and the busiest second against the
//! budget. Answers are instantaneous here: only the schedule, the budget and the fold are real.

use std::collections::BTreeMap;
use tally::aggregator::{Aggregator, Limits};
use tally::comms_api::{ApiStats, OperationBody, ResourceSummary};
use tally::event::{AttemptEvent, AttemptStatus, Channel, Event, EventBody, Kind};
use tally::reconcile::plan::{Call, OperationCheck, PlanConfig, Planner};
use tally::reconcile::{operation_event, resource_event};
use tally::simulate::Rng;

const OP: &str = "comms_operation_bench";
const DAY: u64 = 86_400_000;
const T0: u64 = 1_800_000_000_000;

/// One resource's life at Twilio: (time, status) steps.
struct Life(Vec<(u64, AttemptStatus)>);

/// Queued at once, sent within a minute, then delivered (90 %) or failed; half of the delivered
/// are read, spread over three days.
fn lives(n: usize, rng: &mut Rng) -> Vec<Life> {
    (0..n)
        .map(|_| {
            let sent = T0 + 1000 + rng.below(60_000);
            let mut steps = vec![(T0, AttemptStatus::Queued), (sent, AttemptStatus::Sent)];
            let done = sent + 1000 + rng.below(120_000);
            if rng.chance(0.9) {
                steps.push((done, AttemptStatus::Delivered));
                if rng.chance(0.5) {
                    steps.push((done + rng.below(3 * DAY), AttemptStatus::Read));
                }
            } else {
                steps.push((done, AttemptStatus::Failed));
            }
            Life(steps)
        })
        .collect()
}

fn res_id(i: usize) -> String {
    format!("comms_message_{i:08}")
}

fn callback(i: usize, status: AttemptStatus, t: u64) -> Event {
    Event {
        time_ms: t,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: Some(OP.into()),
            resource_id: Some(res_id(i)),
            downstream_id: Some(format!("SM{i:032}")),
            attempt: None,
            channel: Some(Channel::Sms),
            status,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    }
}

/// Twilio's side: every resource's status now, moved forward step by step.
struct Twilio {
    now: Vec<Option<AttemptStatus>>,
    steps: Vec<(u64, usize, AttemptStatus)>,
    next: usize,
}

impl Twilio {
    fn new(lives: &[Life]) -> Twilio {
        let mut steps: Vec<(u64, usize, AttemptStatus)> = lives
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.0.iter().map(move |(t, s)| (*t, i, *s)))
            .collect();
        steps.sort_by_key(|s| s.0);
        Twilio {
            now: vec![None; lives.len()],
            steps,
            next: 0,
        }
    }

    fn advance(&mut self, t: u64) {
        while let Some(&(at, i, s)) = self.steps.get(self.next) {
            if at > t {
                break;
            }
            self.now[i] = Some(s);
            self.next += 1;
        }
    }

    fn next_change(&self) -> u64 {
        self.steps.get(self.next).map_or(u64::MAX, |s| s.0)
    }
}

/// Twilio's operation now.
fn twilio_op(tw: &Twilio) -> OperationBody {
    let mut s = ApiStats::default();
    let add = |v: &mut Option<u64>| *v = Some(v.unwrap_or(0) + 1);
    for st in &tw.now {
        match st {
            Some(AttemptStatus::Queued) => add(&mut s.queued),
            Some(AttemptStatus::Sent) => add(&mut s.sent),
            Some(AttemptStatus::Delivered) => add(&mut s.delivered),
            Some(AttemptStatus::Read) => add(&mut s.read),
            Some(AttemptStatus::Failed) => add(&mut s.failed),
            _ => {}
        }
    }
    s.total = Some(tw.now.len() as u64);
    s.recipients = s.total;
    s.attempts = s.total;
    let done = tw.now.iter().all(|st| *st != Some(AttemptStatus::Queued));
    OperationBody {
        id: OP.into(),
        status: Some(if done { "COMPLETED" } else { "PROCESSING" }.into()),
        stats: s,
        created_at: Some(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(T0),
            )
            .to_string(),
        ),
        updated_at: None,
    }
}

struct Run {
    requests: BTreeMap<&'static str, u64>,
    disagreements: Vec<u64>,
    busiest_second: u64,
}

fn run(n: usize, lost: f64, cfg: &PlanConfig, page: usize) -> Run {
    let mut rng = Rng::new(7);
    let lives = lives(n, &mut rng);
    let mut callbacks: Vec<(u64, Event)> = Vec::new();
    for (i, l) in lives.iter().enumerate() {
        for (t, st) in &l.0 {
            if !rng.chance(lost) {
                callbacks.push((*t, callback(i, *st, *t)));
            }
        }
    }
    callbacks.sort_by_key(|c| c.0);
    let agg = Aggregator::new(Limits::default());
    let mut planner = Planner::new(cfg.clone(), T0);
    let mut run = Run {
        requests: BTreeMap::new(),
        disagreements: vec![],
        busiest_second: 0,
    };
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next_cb = 0;
    let mut now = T0;
    let mut disagree_since: Option<u64> = None;
    let end = T0 + 7 * DAY;
    let mut tw = Twilio::new(&lives);
    let mut twilio_stats = stats_as_tally(&twilio_op(&tw));
    while now < end {
        if tw.next_change() <= now {
            tw.advance(now);
            twilio_stats = stats_as_tally(&twilio_op(&tw));
        }
        while next_cb < callbacks.len() && callbacks[next_cb].0 <= now {
            agg.apply(&callbacks[next_cb].1, now);
            next_cb += 1;
        }
        if let Some(v) = agg.operation(OP) {
            planner.track(OP, v.kind, v.created_ms, now);
        }
        let wake = match planner.next_call(now) {
            Ok(call) => {
                *run.requests.entry(call.endpoint()).or_default() += 1;
                *per_second.entry(now / 1000).or_default() += 1;
                answer(&agg, &mut planner, &tw, call, now, page);
                now
            }
            Err(at) => at,
        };
        // Agreement is judged on the whole stats, at every step of the clock.
        let agree = agg
            .operation(OP)
            .is_some_and(|v| serde_json::to_value(v.stats).ok().as_ref() == Some(&twilio_stats));
        match (agree, disagree_since) {
            (false, None) => disagree_since = Some(now),
            (true, Some(since)) => {
                run.disagreements.push(now - since);
                disagree_since = None;
            }
            _ => {}
        }
        let next_change = tw.next_change();
        let next_cb_at = callbacks.get(next_cb).map_or(u64::MAX, |c| c.0);
        now = wake.min(next_change).min(next_cb_at).max(now + 1).min(end);
    }
    run.busiest_second = per_second.values().copied().max().unwrap_or(0);
    run
}

/// Twilio's stats in tally's own field set for Messages, for comparing.
fn stats_as_tally(op: &OperationBody) -> serde_json::Value {
    let s = &op.stats;
    let n = |v: Option<u64>| v.unwrap_or(0);
    serde_json::json!({
        "total": n(s.total), "recipients": n(s.recipients), "attempts": n(s.attempts),
        "unaddressable": 0, "queued": n(s.queued), "sent": n(s.sent), "scheduled": 0,
        "delivered": n(s.delivered), "read": n(s.read), "undelivered": 0,
        "failed": n(s.failed), "canceled": 0,
    })
}

fn answer(agg: &Aggregator, planner: &mut Planner, tw: &Twilio, call: Call, now: u64, page: usize) {
    match call {
        Call::ListOperations {
            kind,
            start_ms,
            end_ms,
            ..
        } => {
            if kind == Kind::Messages && (start_ms..end_ms).contains(&T0) {
                fold_operation(agg, planner, &twilio_op(tw), now);
            }
            planner.operations_listed(kind, None, now);
        }
        Call::FetchOperation { .. } => fold_operation(agg, planner, &twilio_op(tw), now),
        Call::ListResources {
            status,
            page: token,
            ..
        } => {
            let from: usize = match token {
                Some(tally::comms_api::NextPage::Token(t)) => t.parse().unwrap_or(0),
                _ => 0,
            };
            let matching: Vec<usize> = (0..tw.now.len())
                .filter(|i| {
                    tw.now[*i].is_some_and(|s| s.as_str().eq_ignore_ascii_case(status.api_str()))
                })
                .collect();
            let shown = &matching[from.min(matching.len())..(from + page).min(matching.len())];
            let events = shown
                .iter()
                .map(|i| {
                    resource_event(
                        Kind::Messages,
                        OP,
                        ResourceSummary {
                            id: res_id(*i),
                            operation_id: Some(OP.into()),
                            status: status.api_str().into(),
                            to: None,
                            tags: vec![],
                        },
                        Some(T0),
                        now,
                    )
                })
                .collect::<Vec<_>>();
            let mut changed = false;
            for e in events.into_iter().flatten() {
                changed |= matches!(agg.apply(&e, now), tally::aggregator::Outcome::Applied(_));
            }
            let next = (from + page < matching.len())
                .then(|| tally::comms_api::NextPage::Token((from + page).to_string()));
            let v = agg.operation(OP).expect("folded");
            planner.resources_listed(OP, status, next, changed, &v.stats, v.status, now);
        }
    }
}

fn fold_operation(agg: &Aggregator, planner: &mut Planner, body: &OperationBody, now: u64) {
    let ev = operation_event(Kind::Messages, body, now).expect("an id");
    let changed = matches!(agg.apply(&ev, now), tally::aggregator::Outcome::Applied(_));
    planner.track(OP, Kind::Messages, T0, now);
    let v = agg.operation(OP).expect("folded");
    let check = OperationCheck {
        twilio: body.stats,
        twilio_status: body
            .status
            .as_deref()
            .and_then(tally::rollup::OperationStatus::parse),
        tally: &v.stats,
        tally_status: v.status,
        changed,
    };
    planner.operation_read(OP, check, now);
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 100_000]
    } else {
        sizes
    };
    let cfg = PlanConfig {
        interval_ms: 60_000,
        max_interval_ms: 6 * 3_600_000,
        lookback_ms: 7 * DAY,
        overlap_ms: 300_000,
        requests_per_second: 5.0,
        max_backoff_ms: 300_000,
    };
    println!(
        "defaults: interval 1m, max_interval 6h, 5 requests/s, page 1000; 20 % of callbacks lost"
    );
    for n in sizes {
        let started = std::time::Instant::now();
        let r = run(n, 0.2, &cfg, 1000);
        let total: u64 = r.requests.values().sum();
        let mut d = r.disagreements.clone();
        d.sort_unstable();
        println!(
            "{n} recipients: {total} requests over 7 days ({:?}; discovery is shared by every operation), {:.4} per recipient; busiest second {} (5 a second, burst 5); disagreement after a change: median {:.0} s, longest {:.0} s ({} episodes); simulated in {:.1} s",
            r.requests,
            total as f64 / n as f64,
            r.busiest_second,
            d.get(d.len() / 2).copied().unwrap_or(0) as f64 / 1000.0,
            d.last().copied().unwrap_or(0) as f64 / 1000.0,
            d.len(),
            started.elapsed().as_secs_f64(),
        );
    }
}
