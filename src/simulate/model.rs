//! The expected final state: a model of docs/contract.md ("Statuses: the lattices", "Operation
//! status and stats") written apart from `rollup`, so the simulator checks tally against an
//! independent reading of the rules.

use super::plan::{OperationPlan, ResourcePlan};
use crate::comms_api::{ApiStats, OperationBody};
use crate::event::{AttemptStatus, Kind, Phase};

/// Rank in the attempt lattice (docs/contract.md, "Statuses: the lattices"): the join keeps the
/// highest.
fn attempt_rank(s: AttemptStatus) -> u8 {
    use AttemptStatus::*;
    let order = [
        Scheduled,
        Accepted,
        Queued,
        Canceled,
        Sending,
        Sent,
        Failed,
        Undelivered,
        Delivered,
        Read,
    ];
    let s = if s == Opened { Read } else { s };
    order.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// The stats bucket of a resource whose best attempt is in `s`, and its rank in the resource
/// order (anything in flight or successful beats a failure).
fn bucket_of(s: AttemptStatus, kind: Kind) -> (&'static str, u8) {
    use AttemptStatus::*;
    match s {
        Failed => ("failed", 0),
        Undelivered => ("undelivered", 1),
        Canceled => ("canceled", 2),
        Scheduled => ("scheduled", 3),
        Accepted | Queued | Sending => ("queued", 4),
        Sent => ("sent", 5),
        Delivered => ("delivered", 6),
        Read | Opened => (
            match kind {
                Kind::Messages => "read",
                Kind::Emails => "opened",
                Kind::PushNotifications => "delivered",
            },
            7,
        ),
    }
}

/// The stats bucket of a resource: that of its best attempt under the resource order, or the
/// status Twilio holds it in when it never reached a channel (canceled, scheduled). Twilio's API
/// shows the same status, uppercased.
pub(super) fn resource_bucket(r: &ResourcePlan, kind: Kind) -> &'static str {
    if let Some(held) = r.held {
        return bucket_of(held, kind).0;
    }
    let mut best: Option<(&'static str, u8)> = None;
    for a in &r.attempts {
        let Some(status) = a
            .reports
            .iter()
            .map(|rep| rep.status)
            .max_by_key(|s| attempt_rank(*s))
        else {
            continue;
        };
        let b = bucket_of(status, kind);
        if best.is_none_or(|x| b.1 > x.1) {
            best = Some(b);
        }
    }
    best.map_or("queued", |b| b.0)
}

/// The stats fields each kind shows, in Twilio's order.
pub fn stat_names(kind: Kind) -> Vec<&'static str> {
    let mut names = vec!["total", "recipients", "attempts"];
    if kind != Kind::Emails {
        names.push("unaddressable");
    }
    names.extend(["queued", "sent", "scheduled", "delivered"]);
    match kind {
        Kind::Messages => names.push("read"),
        Kind::Emails => names.push("opened"),
        Kind::PushNotifications => {}
    }
    names.extend(["undelivered", "failed", "canceled"]);
    names
}

/// What `GET /v1/{family}/Operations/{id}` must answer once every report has been delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub id: String,
    pub kind: Kind,
    pub status: &'static str,
    /// Every stats field of the kind, in order.
    pub stats: Vec<(&'static str, u64)>,
}

impl Expected {
    pub(super) fn of(op: &OperationPlan) -> Expected {
        let mut counts: std::collections::HashMap<&'static str, u64> = Default::default();
        let mut attempts = 0u64;
        let mut all_scheduled = true;
        let mut all_canceled = true;
        for r in &op.resources {
            attempts += r.attempts.len() as u64;
            let bucket = resource_bucket(r, op.kind);
            all_scheduled &= bucket == "scheduled";
            all_canceled &= bucket == "canceled";
            *counts.entry(bucket).or_default() += 1;
        }
        let n = op.resources.len() as u64;
        let phase_rank = |p: Phase| match p {
            Phase::Scheduled => 0,
            Phase::Processing => 1,
            Phase::Completed => 2,
        };
        let phase = op.phases.iter().map(|(p, _)| phase_rank(*p)).max();
        let derived = if n == 0 {
            None
        } else if all_scheduled {
            Some(0)
        } else {
            Some(1)
        };
        let status = if n > 0 && all_canceled {
            "CANCELED"
        } else {
            match phase.max(derived).unwrap_or(1) {
                0 => "SCHEDULED",
                1 => "PROCESSING",
                _ => "COMPLETED",
            }
        };
        let stats = stat_names(op.kind)
            .into_iter()
            .map(|name| {
                let v = match name {
                    "total" | "recipients" => n,
                    "attempts" => attempts,
                    "unaddressable" => 0,
                    bucket => counts.get(bucket).copied().unwrap_or(0),
                };
                (name, v)
            })
            .collect();
        Expected {
            id: op.id.clone(),
            kind: op.kind,
            status,
            stats,
        }
    }

    /// The stats as Twilio's API shows them: the kind's fields, the others absent.
    pub fn api_stats(&self) -> ApiStats {
        let mut out = ApiStats::default();
        for (name, v) in &self.stats {
            if let Some(slot) = stat_slot(&mut out, name) {
                *slot = Some(*v);
            }
        }
        out
    }

    /// Differences between this and an operation as an API returned it; empty when equal. Every
    /// stats field counts, a field the kind does not show included (it must be absent).
    pub fn diff(&self, actual: &OperationBody) -> Vec<String> {
        let mut out = Vec::new();
        if actual.status.as_deref() != Some(self.status) {
            out.push(format!(
                "status: expected {}, got {}",
                self.status,
                actual.status.as_deref().unwrap_or("none")
            ));
        }
        let (mut want, mut got) = (self.api_stats(), actual.stats);
        for name in ALL_STATS {
            let (w, g) = (stat_slot(&mut want, name), stat_slot(&mut got, name));
            if let (Some(w), Some(g)) = (w, g) {
                if w != g {
                    let show = |v: &Option<u64>| v.map_or("absent".to_owned(), |v| v.to_string());
                    out.push(format!("{name}: expected {}, got {}", show(w), show(g)));
                }
            }
        }
        out
    }
}

/// Every stats field any kind shows.
const ALL_STATS: [&str; 13] = [
    "total",
    "recipients",
    "attempts",
    "unaddressable",
    "queued",
    "sent",
    "scheduled",
    "delivered",
    "read",
    "opened",
    "undelivered",
    "failed",
    "canceled",
];

/// The field of `stats` called `name`.
fn stat_slot<'a>(stats: &'a mut ApiStats, name: &str) -> Option<&'a mut Option<u64>> {
    Some(match name {
        "total" => &mut stats.total,
        "recipients" => &mut stats.recipients,
        "attempts" => &mut stats.attempts,
        "unaddressable" => &mut stats.unaddressable,
        "queued" => &mut stats.queued,
        "sent" => &mut stats.sent,
        "scheduled" => &mut stats.scheduled,
        "delivered" => &mut stats.delivered,
        "read" => &mut stats.read,
        "opened" => &mut stats.opened,
        "undelivered" => &mut stats.undelivered,
        "failed" => &mut stats.failed,
        "canceled" => &mut stats.canceled,
        _ => return None,
    })
}
