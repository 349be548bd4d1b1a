//! `tally simulate`: act as Twilio. The pure half: a seeded scenario generator (`rng.rs`, the
//! plans of `plan.rs`: operations, recipients, attempts and the status reports Twilio would send
//! for them), the order and door of each delivery (here) and which are never sent
//! (`deliver.rs`: lost callbacks, silent kinds, canceled and scheduled resources), the requests
//! that carry them (`wire.rs`), the final state every operation must reach (`model.rs`, a model
//! of its own of the rules in docs/contract.md rather than `rollup`) and the ground truth, what
//! Twilio's REST API shows (`truth.rs`). [`client`] sends, [`verify`] compares tally with the
//! truth, [`api`] serves Twilio's REST API over it; [`command`] is the `tally simulate` command.
//!
//! The same seed and configuration always give the same scenario, byte for byte.

pub mod api;
pub mod client;
pub mod command;
mod deliver;
mod listing;
mod model;
mod plan;
mod rng;
mod truth;
pub mod verify;
mod wire;

pub use model::{stat_names, Expected};
pub use plan::{AttemptPlan, OperationPlan, Report, ResourcePlan, Route, Shape};
pub use rng::{base32_id, sms_sid, Rng};
pub use truth::{OperationTruth, ResourceTruth, Truth};
pub use wire::Request;

use crate::event::Kind;
use deliver::op_deliveries;
pub use deliver::{Delivery, Via};
use serde_json::Value;

/// Which door the attempt reports come through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every report as an Event Streams CloudEvent.
    Events,
    /// Message attempts as classic form status callbacks; emails, push notifications and
    /// operation events still come as CloudEvents (Twilio has no classic callback for them).
    Status,
    /// Message attempts split between the two.
    Both,
}

impl std::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        match s {
            "events" => Ok(Mix::Events),
            "status" => Ok(Mix::Status),
            "both" => Ok(Mix::Both),
            other => Err(format!("--mix is events, status or both, not {other:?}")),
        }
    }
}

/// Parse `messages,emails,push` into kinds.
pub fn parse_kinds(s: &str) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let kind = match word {
            "messages" => Kind::Messages,
            "emails" => Kind::Emails,
            "push" | "push_notifications" => Kind::PushNotifications,
            other => {
                return Err(format!(
                    "unknown kind {other:?}: use messages, emails, push"
                ))
            }
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err("--kinds names no kind".into());
    }
    Ok(kinds)
}

/// Parse a share: `0.1` or `10%`.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share (0.1 or 10%)"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0 and 1"))
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    pub operations: usize,
    pub recipients: usize,
    /// Share of reports delivered twice (Twilio delivers at least once).
    pub duplicates: f64,
    /// Deliver reports in a random order rather than roughly in time order.
    pub shuffle: bool,
    /// Share of reports delivered late (after later reports) when not shuffled.
    pub late: f64,
    pub mix: Mix,
    pub kinds: Vec<Kind>,
    /// Share of message recipients whose first channel (RCS or WhatsApp) fails over to SMS.
    pub fallback: f64,
    pub seed: u64,
    /// Event time of the first operation, Unix ms.
    pub start_ms: u64,
    /// Share of Message attempt reports never sent (lost callbacks), decided per report.
    pub drop: f64,
    /// Kinds for which no callback at all is sent, operation events included (as Twilio sends
    /// none for Emails and PushNotifications); only its REST API shows them.
    pub silent_kinds: Vec<Kind>,
    /// Share of resources canceled through Twilio's API: no attempt, no callback.
    pub cancel: f64,
    /// Share of operations scheduled for later: every resource scheduled, no callback.
    pub scheduled: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            operations: 10,
            recipients: 100,
            duplicates: 0.0,
            shuffle: false,
            late: 0.05,
            mix: Mix::Both,
            kinds: vec![Kind::Messages],
            fallback: 0.5,
            seed: 1,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            drop: 0.0,
            silent_kinds: Vec::new(),
            cancel: 0.0,
            scheduled: 0.0,
        }
    }
}

/// A whole scenario: the plans and the order in which their reports are delivered.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub config: Config,
    pub operations: Vec<OperationPlan>,
    pub deliveries: Vec<Delivery>,
}

impl Scenario {
    pub fn generate(config: &Config) -> Scenario {
        let operations: Vec<OperationPlan> = (0..config.operations)
            .map(|i| OperationPlan::generate(config, i))
            .collect();
        let mut rng = Rng::new(config.seed ^ 0xD15C_0DE5);
        let mut deliveries = Vec::new();
        for (oi, op) in operations.iter().enumerate() {
            deliveries.extend(op_deliveries(config, oi as u32, op));
        }
        if !config.shuffle {
            for d in &mut deliveries {
                if rng.chance(config.late) {
                    d.due_ms += 30_000 + rng.below(60_000);
                }
            }
        }
        let originals = deliveries.len();
        for i in 0..originals {
            if config.duplicates > 0.0 && rng.chance(config.duplicates) {
                let mut d = deliveries[i];
                d.due_ms += rng.below(20_000);
                deliveries.push(d);
            }
        }
        if config.shuffle {
            rng.shuffle(&mut deliveries);
        } else {
            deliveries.sort_by_key(|d| d.due_ms);
        }
        Scenario {
            config: config.clone(),
            operations,
            deliveries,
        }
    }

    pub fn expected(&self) -> Vec<Expected> {
        self.operations
            .iter()
            .map(OperationPlan::expected)
            .collect()
    }

    /// The requests that carry the deliveries, in order: CloudEvents packed `batch` to an Event
    /// Streams request, each form callback its own request.
    pub fn requests(&self, batch: usize) -> Vec<Request> {
        let batch = batch.max(1);
        let mut out = Vec::new();
        let mut pending: Vec<Value> = Vec::with_capacity(batch);
        for d in &self.deliveries {
            match d.via {
                Via::Event => {
                    pending.push(self.cloud_event(d));
                    if pending.len() == batch {
                        out.push(Request::events(&pending));
                        pending.clear();
                    }
                }
                Via::Form { linked } => out.push(self.form(d, linked)),
            }
        }
        if !pending.is_empty() {
            out.push(Request::events(&pending));
        }
        out
    }

    /// Every operation's deliveries as Event Streams requests of `batch` CloudEvents, one
    /// operation after another, without building the whole scenario (for in-process benchmarks).
    pub fn event_batches_of(config: &Config, index: usize, batch: usize) -> Vec<Vec<u8>> {
        let op = OperationPlan::generate(config, index);
        let scenario = Scenario {
            config: config.clone(),
            deliveries: op_deliveries(config, 0, &op)
                .into_iter()
                .map(|mut d| {
                    d.via = Via::Event;
                    d
                })
                .collect(),
            operations: vec![op],
        };
        scenario
            .requests(batch)
            .into_iter()
            .map(|r| r.body)
            .collect()
    }
}

/// Totals over every expected operation, for the summary line.
pub fn summarize(expected: &[Expected]) -> String {
    let mut by_status: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut totals: Vec<(&'static str, u64)> = Vec::new();
    for e in expected {
        *by_status.entry(e.status).or_default() += 1;
        for (k, v) in &e.stats {
            match totals.iter_mut().find(|(n, _)| n == k) {
                Some(t) => t.1 += v,
                None => totals.push((k, *v)),
            }
        }
    }
    let statuses: Vec<String> = by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let stats: Vec<String> = totals
        .iter()
        .filter(|(k, v)| *v > 0 || *k == "total")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "{} operations ({}); {}",
        expected.len(),
        statuses.join(", "),
        stats.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttemptStatus, Channel, Phase};

    fn cfg() -> Config {
        Config {
            operations: 20,
            recipients: 30,
            duplicates: 0.2,
            shuffle: true,
            kinds: vec![Kind::Messages, Kind::Emails, Kind::PushNotifications],
            ..Config::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_requests() {
        let a = Scenario::generate(&cfg()).requests(10);
        let b = Scenario::generate(&cfg()).requests(10);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.body == y.body));
    }

    #[test]
    fn expected_buckets_sum_to_total_and_attempts_count_fallbacks() {
        let s = Scenario::generate(&cfg());
        for e in s.expected() {
            let get = |n: &str| e.stats.iter().find(|(k, _)| *k == n).map_or(0, |x| x.1);
            let buckets: u64 = e
                .stats
                .iter()
                .filter(|(k, _)| !["total", "recipients", "attempts", "unaddressable"].contains(k))
                .map(|x| x.1)
                .sum();
            assert_eq!(buckets, get("total"), "{e:?}");
            assert!(get("attempts") >= get("total"));
        }
    }

    #[test]
    fn a_failed_rich_channel_with_a_delivered_sms_counts_as_delivered() {
        let r = |status, at_ms| Report {
            status,
            error_code: None,
            at_ms,
        };
        let op = OperationPlan {
            id: "comms_operation_x".into(),
            kind: Kind::Messages,
            shape: Shape::Completed,
            phases: vec![(Phase::Processing, 1), (Phase::Completed, 2)],
            resources: vec![ResourcePlan {
                id: "comms_message_x".into(),
                to: "+1".into(),
                attempts: vec![
                    AttemptPlan {
                        sid: Some("SM1".into()),
                        number: 1,
                        channel: Channel::Rcs,
                        route: Route::Events,
                        reports: vec![r(AttemptStatus::Failed, 1)],
                    },
                    AttemptPlan {
                        sid: Some("SM2".into()),
                        number: 2,
                        channel: Channel::Sms,
                        route: Route::Events,
                        reports: vec![r(AttemptStatus::Delivered, 3), r(AttemptStatus::Sent, 4)],
                    },
                ],
                held: None,
            }],
            quiet: false,
        };
        let e = op.expected();
        assert_eq!(e.status, "COMPLETED");
        let get = |n: &str| e.stats.iter().find(|(k, _)| *k == n).map_or(0, |x| x.1);
        assert_eq!(
            (get("delivered"), get("failed"), get("attempts")),
            (1, 0, 2)
        );
    }

    #[test]
    fn form_requests_are_signed_over_url_and_params_and_events_over_body_hash() {
        let s = Scenario::generate(&Config {
            mix: Mix::Both,
            ..cfg()
        });
        let reqs = s.requests(5);
        let v = crate::signature::Verifier::new(&["tok"]);
        let base = "http://127.0.0.1:9";
        assert!(reqs.iter().any(|r| !r.params.is_empty()));
        for r in reqs.iter().take(200) {
            let (pq, sig) = r.sign(base, "tok");
            let url = format!("{base}{pq}");
            let ok = if r.params.is_empty() {
                v.verify_json(&url, &r.body, Some(sig.as_bytes()))
            } else {
                v.verify_form(&url, &r.params, Some(sig.as_bytes()))
            };
            assert_eq!(ok, Ok(()), "{pq}");
        }
    }
}
