//! `tally simulate`: act as Twilio. This module is the pure half: a seeded scenario generator
//! (operations, recipients, attempts and the status reports Twilio would send for them), the
//! requests that carry those reports, and the final state every operation must reach, computed by
//! a model of its own of the rules in docs/contract.md rather than by `rollup`. [`client`] sends and verifies.
//!
//! The same seed and configuration always give the same scenario, byte for byte.

pub mod client;
pub mod command;

use crate::event::{AttemptStatus, Channel, Kind, Phase};
use crate::signature;
use serde_json::{json, Map, Value};

/// A small, fast, seeded generator (SplitMix64): enough for test data, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

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
        }
    }
}

/// How an operation's life goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Scheduled for later: nothing sent yet.
    Scheduled,
    /// Scheduled, then canceled before sending.
    Canceled,
    /// Sending; Twilio has not said it finished processing.
    Processing,
    /// Sent, and `operation.completed` arrives.
    Completed,
}

/// How one attempt's reports reach tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// CloudEvents that carry operation and message ids.
    Events,
    /// Form callbacks whose StatusCallback query carries `operationId` and `messageId`.
    Form,
    /// Form callbacks without the query; the first report also comes as a CloudEvent, which is
    /// what links the attempt (until it arrives, tally holds the callbacks).
    FormLinkedByEvent,
    /// Form callbacks of which only the first carries the query.
    FormLinkedOnce,
}

/// One status report Twilio sends for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub status: AttemptStatus,
    pub error_code: Option<u32>,
    /// Event time, Unix ms.
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct AttemptPlan {
    /// The SM… SID (messaging channels); emails and push attempts have none.
    pub sid: Option<String>,
    pub number: u8,
    pub channel: Channel,
    pub route: Route,
    pub reports: Vec<Report>,
}

#[derive(Debug, Clone)]
pub struct ResourcePlan {
    pub id: String,
    pub to: String,
    pub attempts: Vec<AttemptPlan>,
}

#[derive(Debug, Clone)]
pub struct OperationPlan {
    pub id: String,
    pub kind: Kind,
    pub shape: Shape,
    /// Operation events and their times.
    pub phases: Vec<(Phase, u64)>,
    pub resources: Vec<ResourcePlan>,
}

/// Real Twilio error codes, by what they mean for the attempt.
const SMS_UNDELIVERED: [u32; 4] = [30003, 30005, 30006, 30007];
const SMS_FAILED: [u32; 3] = [30008, 30034, 21610];
const RCS_FALLBACK: [u32; 2] = [30008, 30003];
const WHATSAPP_FALLBACK: [u32; 3] = [63016, 63003, 63024];

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// `prefix` + 26 lowercase Crockford base32 characters, the first 0–7 (Twilio's id shape).
pub fn base32_id(rng: &mut Rng, prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 26);
    s.push_str(prefix);
    s.push(CROCKFORD[rng.below(8) as usize] as char);
    for _ in 0..25 {
        s.push(CROCKFORD[rng.below(32) as usize] as char);
    }
    s
}

/// `SM` + 32 lowercase hex digits.
pub fn sms_sid(rng: &mut Rng) -> String {
    format!("SM{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

fn resource_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Messages => "comms_message_",
        Kind::Emails => "comms_email_",
        Kind::PushNotifications => "comms_pushnotification_",
    }
}

impl OperationPlan {
    /// Plan operation number `index` of a scenario; a pure function of the config and index.
    pub fn generate(cfg: &Config, index: usize) -> OperationPlan {
        let mut rng = Rng::new(
            cfg.seed
                .wrapping_mul(0x100_0000_01B3)
                .wrapping_add(index as u64),
        );
        let kind = *rng.pick(&cfg.kinds);
        let roll = rng.below(100);
        let shape = match roll {
            0..=2 => Shape::Scheduled,
            3..=5 => Shape::Canceled,
            6..=19 => Shape::Processing,
            _ => Shape::Completed,
        };
        let start = cfg.start_ms + index as u64 * 1_000;
        let id = base32_id(&mut rng, "comms_operation_");
        let mut phases = Vec::new();
        match shape {
            Shape::Scheduled | Shape::Canceled => phases.push((Phase::Scheduled, start)),
            Shape::Processing => phases.push((Phase::Processing, start)),
            Shape::Completed => {
                phases.push((Phase::Processing, start));
                phases.push((Phase::Completed, start + 2_000));
            }
        }
        let resources = (0..cfg.recipients.max(1))
            .map(|n| plan_resource(cfg, &mut rng, kind, shape, start + n as u64))
            .collect();
        OperationPlan {
            id,
            kind,
            shape,
            phases,
            resources,
        }
    }

    /// The final state tally must show for this operation.
    pub fn expected(&self) -> Expected {
        Expected::of(self)
    }
}

fn plan_resource(cfg: &Config, rng: &mut Rng, kind: Kind, shape: Shape, t0: u64) -> ResourcePlan {
    let id = base32_id(rng, resource_prefix(kind));
    let to = match kind {
        Kind::Messages => format!("+1555{:07}", rng.below(10_000_000)),
        Kind::Emails => format!("user{}@example.com", rng.below(100_000_000)),
        Kind::PushNotifications => format!("device-{:016x}", rng.next_u64()),
    };
    let form_route = |rng: &mut Rng| -> Route {
        let via_form = match cfg.mix {
            Mix::Events => false,
            Mix::Status => true,
            Mix::Both => rng.chance(0.5),
        };
        if !via_form {
            Route::Events
        } else if rng.chance(0.1) {
            if cfg.mix == Mix::Both {
                Route::FormLinkedByEvent
            } else {
                Route::FormLinkedOnce
            }
        } else {
            Route::Form
        }
    };
    let step = |t: &mut u64, rng: &mut Rng, status, error_code| {
        *t += 100 + rng.below(5_000);
        Report {
            status,
            error_code,
            at_ms: *t,
        }
    };
    let mut t = t0;
    let mut attempts = Vec::new();
    use AttemptStatus as S;
    match (kind, shape) {
        (_, Shape::Scheduled | Shape::Canceled) => {
            let (channel, sid) = match kind {
                Kind::Messages => (Channel::Sms, Some(sms_sid(rng))),
                Kind::Emails => (Channel::Email, None),
                Kind::PushNotifications => (Channel::Fcm, None),
            };
            let mut reports = vec![step(&mut t, rng, S::Scheduled, None)];
            if shape == Shape::Canceled {
                reports.push(step(&mut t, rng, S::Canceled, None));
            }
            let route = if kind == Kind::Messages {
                form_route(rng)
            } else {
                Route::Events
            };
            attempts.push(AttemptPlan {
                sid,
                number: 1,
                channel,
                route,
                reports,
            });
        }
        (Kind::Messages, _) => {
            let first = if rng.chance(cfg.fallback) {
                // A rich channel first, which fails, then SMS.
                let (channel, codes) = if rng.chance(0.6) {
                    (Channel::Rcs, &RCS_FALLBACK[..])
                } else {
                    (Channel::Whatsapp, &WHATSAPP_FALLBACK[..])
                };
                let code = *rng.pick(codes);
                attempts.push(AttemptPlan {
                    sid: Some(sms_sid(rng)),
                    number: 1,
                    channel,
                    route: form_route(rng),
                    reports: vec![
                        step(&mut t, rng, S::Queued, None),
                        step(&mut t, rng, S::Failed, Some(code)),
                    ],
                });
                Channel::Sms
            } else {
                *rng.pick(&[
                    Channel::Sms,
                    Channel::Sms,
                    Channel::Sms,
                    Channel::Rcs,
                    Channel::Whatsapp,
                ])
            };
            let mut reports = vec![step(&mut t, rng, S::Queued, None)];
            let roll = rng.below(100);
            if roll < 4 {
                let code = *rng.pick(&SMS_FAILED);
                reports.push(step(&mut t, rng, S::Failed, Some(code)));
            } else {
                reports.push(step(&mut t, rng, S::Sent, None));
                if roll < 12 {
                    let code = *rng.pick(&SMS_UNDELIVERED);
                    reports.push(step(&mut t, rng, S::Undelivered, Some(code)));
                } else if roll < 16 || (shape == Shape::Processing && roll < 30) {
                    // Still waiting for a delivery receipt.
                } else {
                    reports.push(step(&mut t, rng, S::Delivered, None));
                    if first != Channel::Sms && rng.chance(0.6) {
                        reports.push(step(&mut t, rng, S::Read, None));
                    }
                }
            }
            let number = attempts.len() as u8 + 1;
            attempts.push(AttemptPlan {
                sid: Some(sms_sid(rng)),
                number,
                channel: first,
                route: form_route(rng),
                reports,
            });
        }
        (Kind::Emails, _) => {
            let mut reports = vec![step(&mut t, rng, S::Queued, None)];
            let roll = rng.below(100);
            if roll < 5 {
                reports.push(step(&mut t, rng, S::Failed, None));
            } else {
                reports.push(step(&mut t, rng, S::Sent, None));
                if roll < 12 {
                    reports.push(step(&mut t, rng, S::Undelivered, None));
                } else if roll >= 16 {
                    reports.push(step(&mut t, rng, S::Delivered, None));
                    if rng.chance(0.4) {
                        reports.push(step(&mut t, rng, S::Opened, None));
                    }
                }
            }
            attempts.push(AttemptPlan {
                sid: None,
                number: 1,
                channel: Channel::Email,
                route: Route::Events,
                reports,
            });
        }
        (Kind::PushNotifications, _) => {
            let mut reports = vec![step(&mut t, rng, S::Queued, None)];
            if rng.chance(0.08) {
                reports.push(step(&mut t, rng, S::Failed, None));
            } else {
                reports.push(step(&mut t, rng, S::Sent, None));
            }
            let channel = if rng.chance(0.5) {
                Channel::Fcm
            } else {
                Channel::Apns
            };
            attempts.push(AttemptPlan {
                sid: None,
                number: 1,
                channel,
                route: Route::Events,
                reports,
            });
        }
    }
    ResourcePlan { id, to, attempts }
}

// ---------------------------------------------------------------------------------------------
// The expected final state: a model of docs/contract.md ("Statuses: the lattices", "Operation
// status and stats") written apart from `rollup`.

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
    fn of(op: &OperationPlan) -> Expected {
        let mut counts: std::collections::HashMap<&'static str, u64> = Default::default();
        let mut attempts = 0u64;
        let mut all_scheduled = true;
        let mut all_canceled = true;
        for r in &op.resources {
            let mut best: Option<(&'static str, u8)> = None;
            for a in &r.attempts {
                attempts += 1;
                let Some(status) = a
                    .reports
                    .iter()
                    .map(|rep| rep.status)
                    .max_by_key(|s| attempt_rank(*s))
                else {
                    continue;
                };
                let b = bucket_of(status, op.kind);
                if best.is_none_or(|x| b.1 > x.1) {
                    best = Some(b);
                }
            }
            let bucket = best.map_or("queued", |b| b.0);
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

    /// The `stats` object as JSON.
    pub fn stats_json(&self) -> Value {
        Value::Object(
            self.stats
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect(),
        )
    }

    /// Differences between this and an operation as the query API returned it; empty when equal.
    pub fn diff(&self, actual: &Value) -> Vec<String> {
        let mut out = Vec::new();
        if actual["status"] != json!(self.status) {
            out.push(format!(
                "status: expected {}, got {}",
                self.status, actual["status"]
            ));
        }
        let want = self.stats_json();
        if actual["stats"] != want {
            for (k, v) in &self.stats {
                if actual["stats"][*k] != json!(v) {
                    out.push(format!("{k}: expected {v}, got {}", actual["stats"][*k]));
                }
            }
            if let Some(obj) = actual["stats"].as_object() {
                for k in obj.keys() {
                    if !self.stats.iter().any(|(n, _)| n == k) {
                        out.push(format!("unexpected stat {k}"));
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Deliveries: which report goes when, and through which door.

/// How one delivery travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Event,
    Form { linked: bool },
}

/// One report (or operation event) as delivered: indices into the plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub op: u32,
    /// `u32::MAX` for an operation event.
    pub resource: u32,
    pub attempt: u8,
    /// Report index, or phase index for an operation event.
    pub item: u8,
    pub via: Via,
    /// When it is delivered (virtual time, for ordering only).
    pub due_ms: u64,
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
            deliveries.extend(op_deliveries(oi as u32, op));
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
            deliveries: op_deliveries(0, &op)
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

    fn cloud_event(&self, d: &Delivery) -> Value {
        let op = &self.operations[d.op as usize];
        if d.resource == u32::MAX {
            let (phase, at) = op.phases[d.item as usize];
            let name = match phase {
                Phase::Scheduled => "scheduled",
                Phase::Processing => "processing",
                Phase::Completed => "completed",
            };
            return envelope(
                &format!("com.twilio.comms-api.operation.{name}"),
                "/v1/Operations",
                event_id(d),
                at,
                json!({"operation_id": op.id}),
            );
        }
        let r = &op.resources[d.resource as usize];
        let a = &r.attempts[d.attempt as usize];
        let rep = a.reports[d.item as usize];
        let status = rep.status.as_str();
        let mut data = Map::new();
        data.insert("operation_id".into(), json!(op.id));
        let (ty, source) = match op.kind {
            Kind::Messages => {
                data.insert("message_id".into(), json!(r.id));
                if let Some(sid) = &a.sid {
                    data.insert("downstream_id".into(), json!(sid));
                }
                data.insert("attempt".into(), json!(a.number.to_string()));
                data.insert(
                    "from".into(),
                    json!({"address": SENDER, "channel": a.channel.as_api_str()}),
                );
                data.insert("to".into(), json!({"address": r.to, "channel": "phone"}));
                ("com.twilio.comms-api.message", "/v1/Messages")
            }
            Kind::Emails => {
                data.insert("email_id".into(), json!(r.id));
                data.insert(
                    "from".into(),
                    json!({"address": "noreply@example.com", "name": "Example"}),
                );
                data.insert("to".into(), json!({"address": r.to, "name": "Recipient"}));
                ("com.twilio.comms-api.email", "/v1/Emails")
            }
            Kind::PushNotifications => {
                data.insert("push_notification_id".into(), json!(r.id));
                data.insert(
                    "to".into(),
                    json!({"token": r.to, "provider": a.channel.as_api_str()}),
                );
                (
                    "com.twilio.comms-api.push-notification",
                    "/v1/PushNotifications",
                )
            }
        };
        if let Some(code) = rep.error_code {
            data.insert("error_code".into(), json!(code.to_string()));
        }
        data.insert("tags".into(), json!({}));
        envelope(
            &format!("{ty}.{status}"),
            source,
            event_id(d),
            rep.at_ms,
            Value::Object(data),
        )
    }

    fn form(&self, d: &Delivery, linked: bool) -> Request {
        let op = &self.operations[d.op as usize];
        let r = &op.resources[d.resource as usize];
        let a = &r.attempts[d.attempt as usize];
        let rep = a.reports[d.item as usize];
        let sid = a.sid.clone().unwrap_or_default();
        let (from, to) = match a.channel {
            Channel::Whatsapp => (format!("whatsapp:{SENDER}"), format!("whatsapp:{}", r.to)),
            Channel::Rcs => (format!("rcs:{SENDER}"), r.to.clone()),
            _ => (SENDER.to_owned(), r.to.clone()),
        };
        let status = rep.status.as_str().to_owned();
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), ACCOUNT_SID.into()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("From".into(), from),
            ("To".into(), to),
            ("MessageSid".into(), sid.clone()),
            ("SmsSid".into(), sid),
            ("MessageStatus".into(), status.clone()),
            ("SmsStatus".into(), status),
        ];
        match a.channel {
            Channel::Whatsapp => params.push(("ChannelPrefix".into(), "whatsapp".into())),
            Channel::Rcs => params.push(("ChannelPrefix".into(), "rcs".into())),
            _ => {}
        }
        if let Some(code) = rep.error_code {
            params.push(("ErrorCode".into(), code.to_string()));
        }
        if rep.status == AttemptStatus::Read {
            params.push(("EventType".into(), "READ".into()));
        }
        let query = if linked {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("operationId", &op.id);
            q.append_pair("messageId", &r.id);
            Some(q.finish())
        } else {
            None
        };
        Request::form(query, params)
    }
}

const SENDER: &str = "+15017122661";
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

fn event_id(d: &Delivery) -> String {
    format!(
        "EZ{:08x}{:08x}{:04x}{:04x}{:08x}",
        d.op, d.resource, d.attempt, d.item, 0
    )
}

fn envelope(ty: &str, source: &str, id: String, at_ms: u64, data: Value) -> Value {
    let time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
    )
    .to_string();
    json!({
        "specversion": "1.0",
        "type": ty,
        "source": source,
        "id": id,
        "dataschema": "https://events-schemas.twilio.com/CommsApi/1",
        "datacontenttype": "application/json",
        "time": time,
        "data": data,
    })
}

/// Every delivery of one operation, due at its event time.
fn op_deliveries(oi: u32, op: &OperationPlan) -> Vec<Delivery> {
    let mut out = Vec::new();
    for (pi, (_, at)) in op.phases.iter().enumerate() {
        out.push(Delivery {
            op: oi,
            resource: u32::MAX,
            attempt: 0,
            item: pi as u8,
            via: Via::Event,
            due_ms: *at,
        });
    }
    for (ri, r) in op.resources.iter().enumerate() {
        for (ai, a) in r.attempts.iter().enumerate() {
            for (k, rep) in a.reports.iter().enumerate() {
                let mut push = |via| {
                    out.push(Delivery {
                        op: oi,
                        resource: ri as u32,
                        attempt: ai as u8,
                        item: k as u8,
                        via,
                        due_ms: rep.at_ms,
                    })
                };
                match a.route {
                    Route::Events => push(Via::Event),
                    Route::Form => push(Via::Form { linked: true }),
                    Route::FormLinkedByEvent => {
                        push(Via::Form { linked: false });
                        if k == 0 {
                            push(Via::Event);
                        }
                    }
                    Route::FormLinkedOnce => push(Via::Form { linked: k == 0 }),
                }
            }
        }
    }
    out
}

/// One HTTP request of the scenario, not yet signed (the signature depends on the URL).
#[derive(Debug, Clone)]
pub struct Request {
    /// `/twilio/events` or `/twilio/status?…`.
    pub path_and_query: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The form parameters (signed with the URL); empty for Event Streams.
    pub params: Vec<(String, String)>,
    /// Reports carried.
    pub events: usize,
}

impl Request {
    fn events(events: &[Value]) -> Request {
        Request {
            path_and_query: "/twilio/events".into(),
            content_type: "application/json",
            body: serde_json::to_vec(events).unwrap_or_default(),
            params: Vec::new(),
            events: events.len(),
        }
    }

    fn form(query: Option<String>, params: Vec<(String, String)>) -> Request {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &params {
            body.append_pair(k, v);
        }
        Request {
            path_and_query: match query {
                Some(q) => format!("/twilio/status?{q}"),
                None => "/twilio/status".into(),
            },
            content_type: "application/x-www-form-urlencoded",
            body: body.finish().into_bytes(),
            params,
            events: 1,
        }
    }

    /// Sign as Twilio does for a webhook whose public base URL is `base` (no trailing slash).
    /// Returns the path and query to request (with `bodySHA256` for Event Streams) and the
    /// `X-Twilio-Signature` value.
    pub fn sign(&self, base: &str, token: &str) -> (String, String) {
        let base = base.trim_end_matches('/');
        if self.params.is_empty() {
            let url = signature::url_with_body_sha256(
                &format!("{base}{}", self.path_and_query),
                &self.body,
            );
            let sig = signature::sign(token, &url, &[]);
            (url[base.len()..].to_owned(), sig)
        } else {
            let url = format!("{base}{}", self.path_and_query);
            let sig = signature::sign(token, &url, &self.params);
            (self.path_and_query.clone(), sig)
        }
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
            }],
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
