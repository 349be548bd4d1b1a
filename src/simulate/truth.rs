//! The ground truth: what Twilio's own REST API shows for a scenario, per operation and per
//! resource, every report counted whether or not its callback was sent. The operation status
//! and stats are the model's (`model.rs`), and a resource's status is the model's resource
//! status uppercased, so a tally that received every callback agrees with it exactly.

use super::model::{resource_bucket, Expected};
use super::plan::{OperationPlan, ResourcePlan};
use super::Scenario;
use crate::comms_api::{
    ApiStats, EmailAddress, EmailItem, MessageFrom, MessageItem, MessageTo, OperationBody,
    PushItem, PushTo, Related,
};
use crate::event::Kind;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One resource as Twilio's API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceTruth {
    pub id: String,
    /// `DELIVERED`, `CANCELED`, …: the model's resource status.
    pub status: String,
    /// Phone number, email address or device token.
    pub to: String,
    /// The channel (or push provider) of the last attempt, as the API spells it.
    pub channel: Option<&'static str>,
    pub tags: BTreeMap<String, Value>,
    /// Every attempt planned, whether or not its callbacks were sent.
    pub attempts: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// One operation as Twilio's API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationTruth {
    pub expected: Expected,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub resources: Vec<ResourceTruth>,
}

/// Every operation of a scenario as Twilio's API shows it, in creation order.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub operations: Vec<OperationTruth>,
}

/// The tags every resource carries, in its CloudEvents and in the API: `cohort` `a` or `b`.
pub(super) fn tags(resource: usize) -> Map<String, Value> {
    let mut m = Map::new();
    let cohort = if resource.is_multiple_of(2) { "a" } else { "b" };
    m.insert("cohort".into(), Value::String(cohort.into()));
    m
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

impl Scenario {
    /// What Twilio's API shows for every operation of the scenario.
    pub fn truth(&self) -> Truth {
        Truth {
            operations: self.operations.iter().map(OperationTruth::of).collect(),
        }
    }

    /// Reports and operation events never sent (`--drop`, `--silent-kinds`, `--scheduled`),
    /// and all of them planned. Resources canceled through the API have none.
    pub fn unsent(&self) -> (u64, u64) {
        let (mut unsent, mut planned) = (0u64, 0u64);
        for op in &self.operations {
            let silent = super::deliver::silent(&self.config, op);
            planned += op.phases.len() as u64;
            if silent {
                unsent += op.phases.len() as u64;
            }
            for (ri, r) in op.resources.iter().enumerate() {
                for (ai, a) in r.attempts.iter().enumerate() {
                    for k in 0..a.reports.len() {
                        planned += 1;
                        if silent || super::deliver::lost(&self.config, op, ri, ai, k) {
                            unsent += 1;
                        }
                    }
                }
            }
        }
        (unsent, planned)
    }
}

impl OperationTruth {
    fn of(op: &OperationPlan) -> OperationTruth {
        let resources: Vec<ResourceTruth> = op
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| ResourceTruth::of(op.kind, i, r))
            .collect();
        let created_ms = op.phases.first().map_or(0, |p| p.1);
        let updated_ms = resources
            .iter()
            .map(|r| r.updated_ms)
            .chain(op.phases.iter().map(|p| p.1))
            .max()
            .unwrap_or(created_ms);
        OperationTruth {
            expected: op.expected(),
            created_ms,
            updated_ms,
            resources,
        }
    }

    pub fn id(&self) -> &str {
        &self.expected.id
    }

    pub fn kind(&self) -> Kind {
        self.expected.kind
    }

    pub fn status(&self) -> &'static str {
        self.expected.status
    }

    pub fn stats(&self) -> ApiStats {
        self.expected.api_stats()
    }

    /// `GET /v1/{Kind}/Operations/{id}`.
    pub fn body(&self) -> OperationBody {
        OperationBody {
            id: self.id().to_owned(),
            status: Some(self.status().to_owned()),
            stats: self.stats(),
            created_at: Some(rfc3339(self.created_ms)),
            updated_at: Some(rfc3339(self.updated_ms)),
        }
    }
}

impl ResourceTruth {
    fn of(kind: Kind, index: usize, r: &ResourcePlan) -> ResourceTruth {
        let created_ms = r
            .attempts
            .iter()
            .flat_map(|a| &a.reports)
            .map(|rep| rep.at_ms)
            .min();
        let updated_ms = r
            .attempts
            .iter()
            .flat_map(|a| &a.reports)
            .map(|rep| rep.at_ms)
            .max();
        ResourceTruth {
            id: r.id.clone(),
            status: resource_bucket(r, kind).to_ascii_uppercase(),
            to: r.to.clone(),
            channel: r.attempts.last().map(|a| a.channel.as_api_str()),
            tags: tags(index).into_iter().collect(),
            attempts: r.attempts.len() as u64,
            created_ms: created_ms.unwrap_or(0),
            updated_ms: updated_ms.unwrap_or(0),
        }
    }

    fn times(&self, op: &OperationTruth) -> (Option<String>, Option<String>) {
        let created = if self.created_ms == 0 {
            op.created_ms
        } else {
            self.created_ms
        };
        let updated = self.updated_ms.max(created);
        (Some(rfc3339(created)), Some(rfc3339(updated)))
    }

    fn related(&self, op: &OperationTruth) -> Vec<Related> {
        let family = crate::comms_api::family(op.kind());
        let short = op.id().trim_start_matches("comms_operation_");
        vec![Related {
            name: "operation".into(),
            id: op.id().to_owned(),
            uri: Some(format!("/{family}/Operations/{short}")),
        }]
    }

    /// An item of `GET /v1/Messages`.
    pub fn message(&self, op: &OperationTruth) -> MessageItem {
        let (created_at, updated_at) = self.times(op);
        MessageItem {
            id: self.id.clone(),
            from: Some(MessageFrom {
                address: Some(super::wire::SENDER.to_owned()),
                channel: self.channel.map(str::to_owned),
                sender_id: None,
            }),
            to: vec![MessageTo {
                address: Some(self.to.clone()),
                channel: Some("PHONE".into()),
                contact_id: None,
            }],
            status: self.status.clone(),
            related: self.related(op),
            tags: self.tags.clone(),
            scheduled_for: self.scheduled_for(op),
            created_at,
            updated_at,
            ..MessageItem::default()
        }
    }

    /// An item of `GET /v1/Emails`.
    pub fn email(&self, op: &OperationTruth) -> EmailItem {
        let (created_at, updated_at) = self.times(op);
        EmailItem {
            id: self.id.clone(),
            from: Some(EmailAddress {
                address: Some("noreply@example.com".into()),
                name: Some("Example".into()),
            }),
            to: Some(EmailAddress {
                address: Some(self.to.clone()),
                name: None,
            }),
            status: self.status.clone(),
            tags: self.tags.clone(),
            operation_id: Some(op.id().to_owned()),
            created_at,
            updated_at,
            ..EmailItem::default()
        }
    }

    /// An item of `GET /v1/PushNotifications`.
    pub fn push(&self, op: &OperationTruth) -> PushItem {
        let (created_at, updated_at) = self.times(op);
        PushItem {
            id: self.id.clone(),
            to: vec![PushTo {
                token: Some(self.to.clone()),
                provider: self.channel.map(str::to_owned),
            }],
            status: self.status.clone(),
            related: self.related(op),
            tags: self.tags.clone(),
            created_at,
            updated_at,
            ..PushItem::default()
        }
    }

    /// When a scheduled message goes out: an hour after its operation was created.
    fn scheduled_for(&self, op: &OperationTruth) -> Option<String> {
        (self.status == "SCHEDULED").then(|| rfc3339(op.created_ms + 3_600_000))
    }
}

/// The statuses a resource of `kind` can show, for validating a filter.
pub fn resource_statuses(kind: Kind) -> Vec<&'static str> {
    let mut out = vec!["SCHEDULED", "QUEUED", "SENT", "DELIVERED"];
    match kind {
        Kind::Messages => out.push("READ"),
        Kind::Emails => out.push("OPENED"),
        Kind::PushNotifications => {}
    }
    out.extend(["UNDELIVERED", "FAILED", "CANCELED"]);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Scenario};
    use super::*;

    fn cfg() -> Config {
        Config {
            operations: 40,
            recipients: 25,
            kinds: vec![Kind::Messages, Kind::Emails, Kind::PushNotifications],
            ..Config::default()
        }
    }

    /// Every (operation, resource, attempt, report) a scenario delivers at least once.
    fn delivered(s: &Scenario) -> std::collections::BTreeSet<(u32, u32, u8, u8)> {
        s.deliveries
            .iter()
            .map(|d| (d.op, d.resource, d.attempt, d.item))
            .collect()
    }

    fn get(stats: &[(&'static str, u64)], name: &str) -> u64 {
        stats.iter().find(|(k, _)| *k == name).map_or(0, |x| x.1)
    }

    #[test]
    fn drop_cancel_and_scheduled_decide_the_same_way_for_the_same_seed() {
        let knobs = Config {
            drop: 0.3,
            cancel: 0.2,
            scheduled: 0.2,
            ..cfg()
        };
        let (a, b) = (Scenario::generate(&knobs), Scenario::generate(&knobs));
        assert_eq!(a.truth().operations, b.truth().operations);
        assert_eq!(a.deliveries, b.deliveries);
        let other = Scenario::generate(&Config { seed: 2, ..knobs });
        assert_ne!(a.truth().operations, other.truth().operations);
    }

    #[test]
    fn a_report_lost_at_a_small_share_is_lost_at_a_larger_one_and_the_shares_hold() {
        let at = |drop| Scenario::generate(&Config { drop, ..cfg() });
        let (none, some, more) = (at(0.0), at(0.2), at(0.5));
        let (all, kept_some, kept_more) = (delivered(&none), delivered(&some), delivered(&more));
        assert!(kept_more.is_subset(&kept_some) && kept_some.is_subset(&all));
        let (unsent, planned) = some.unsent();
        let message_reports = all
            .iter()
            .filter(|d| d.1 != u32::MAX)
            .filter(|d| none.operations[d.0 as usize].kind == Kind::Messages)
            .count() as f64;
        let share = unsent as f64 / message_reports;
        assert!(
            (0.15..0.25).contains(&share),
            "{unsent} of {message_reports}"
        );
        assert!(unsent < planned);
        // Only Message reports are lost; the truth does not change.
        assert_eq!(none.truth().operations, some.truth().operations);
    }

    #[test]
    fn truth_stats_sum_to_total_and_count_every_resource_and_attempt() {
        let s = Scenario::generate(&Config {
            drop: 0.3,
            cancel: 0.2,
            scheduled: 0.2,
            ..cfg()
        });
        for op in s.truth().operations {
            let stats = &op.expected.stats;
            let buckets: u64 = stats
                .iter()
                .filter(|(k, _)| !["total", "recipients", "attempts", "unaddressable"].contains(k))
                .map(|x| x.1)
                .sum();
            assert_eq!(buckets, get(stats, "total"), "{op:?}");
            assert_eq!(op.resources.len() as u64, get(stats, "total"));
            let attempts: u64 = op.resources.iter().map(|r| r.attempts).sum();
            assert_eq!(attempts, get(stats, "attempts"));
            for r in &op.resources {
                let n = op.resources.iter().filter(|x| x.status == r.status).count() as u64;
                assert_eq!(
                    n,
                    get(stats, &r.status.to_ascii_lowercase()),
                    "{}",
                    r.status
                );
            }
        }
    }

    #[test]
    fn an_operation_whose_every_resource_is_canceled_is_canceled_and_sends_no_report() {
        let s = Scenario::generate(&Config {
            cancel: 1.0,
            ..cfg()
        });
        for op in s.truth().operations {
            assert_eq!(op.status(), "CANCELED");
            assert_eq!(op.stats().canceled, op.stats().total);
            assert_eq!(op.stats().attempts, Some(0));
        }
        assert!(s.deliveries.iter().all(|d| d.resource == u32::MAX));
    }

    #[test]
    fn scheduled_operations_and_silent_kinds_send_nothing_and_show_in_the_truth() {
        let scheduled = Scenario::generate(&Config {
            scheduled: 1.0,
            ..cfg()
        });
        assert!(scheduled.deliveries.is_empty());
        for op in scheduled.truth().operations {
            assert_eq!(op.status(), "SCHEDULED");
            assert_eq!(op.stats().scheduled, op.stats().total);
            assert!(op.resources.iter().all(|r| r.status == "SCHEDULED"));
        }
        let silent = Scenario::generate(&Config {
            silent_kinds: vec![Kind::Emails, Kind::PushNotifications],
            ..cfg()
        });
        let kinds: std::collections::BTreeSet<&str> = silent
            .deliveries
            .iter()
            .map(|d| silent.operations[d.op as usize].kind.as_str())
            .collect();
        assert_eq!(kinds, ["messages"].into());
        assert_eq!(silent.truth().operations.len(), 40);
    }

    #[test]
    fn the_truth_agrees_with_itself_through_the_api_shapes() {
        let s = Scenario::generate(&Config {
            cancel: 0.3,
            ..cfg()
        });
        for op in s.truth().operations {
            let body: OperationBody =
                serde_json::from_slice(&serde_json::to_vec(&op.body()).unwrap()).unwrap();
            assert_eq!(op.expected.diff(&body), Vec::<String>::new());
            let mut off = body.clone();
            off.stats.total = off.stats.total.map(|t| t + 1);
            off.status = Some("SCHEDULED".into());
            assert_eq!(
                op.expected.diff(&off).len(),
                2,
                "{:?}",
                op.expected.diff(&off)
            );
        }
    }
}
