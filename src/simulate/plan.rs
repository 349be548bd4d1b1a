//! What a scenario plans: each operation's shape, its resources, their attempts and the status
//! reports Twilio would send for them, with real error codes.

use super::rng::{base32_id, sms_sid, Rng};
use super::{Config, Expected, Mix};
use crate::event::{AttemptStatus, Channel, Kind, Phase};

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
    /// Set for a resource that never reaches a channel and sends no callback at all: canceled
    /// through Twilio's API (`Canceled`), or in an operation scheduled for later (`Scheduled`).
    /// Only Twilio's REST API shows it; it has no attempts.
    pub held: Option<AttemptStatus>,
}

#[derive(Debug, Clone)]
pub struct OperationPlan {
    pub id: String,
    pub kind: Kind,
    pub shape: Shape,
    /// Operation events and their times.
    pub phases: Vec<(Phase, u64)>,
    pub resources: Vec<ResourcePlan>,
    /// Scheduled for later with no callback at all (`--scheduled`): only Twilio's REST API
    /// shows it.
    pub quiet: bool,
}

/// Real Twilio error codes, by what they mean for the attempt.
const SMS_UNDELIVERED: [u32; 4] = [30003, 30005, 30006, 30007];
const SMS_FAILED: [u32; 3] = [30008, 30034, 21610];
const RCS_FALLBACK: [u32; 2] = [30008, 30003];
const WHATSAPP_FALLBACK: [u32; 3] = [63016, 63003, 63024];

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
        // Drawn from a stream of its own, so that the share changes nothing else.
        let quiet = keyed(cfg.seed, 0x5C4E_D01E, &[index as u64]).chance(cfg.scheduled);
        let shape = match roll {
            _ if quiet => Shape::Scheduled,
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
            .map(|n| {
                let mut r = plan_resource(cfg, &mut rng, kind, shape, start + n as u64);
                let held = if quiet {
                    Some(AttemptStatus::Scheduled)
                } else {
                    keyed(cfg.seed, 0xCA9C_E1ED, &[index as u64, n as u64])
                        .chance(cfg.cancel)
                        .then_some(AttemptStatus::Canceled)
                };
                if held.is_some() {
                    r.attempts.clear();
                    r.held = held;
                }
                r
            })
            .collect();
        OperationPlan {
            id,
            kind,
            shape,
            phases,
            resources,
            quiet,
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
    let mut t = t0;
    let attempts = match (kind, shape) {
        (_, Shape::Scheduled | Shape::Canceled) => {
            vec![waiting_attempt(cfg, rng, kind, shape, &mut t)]
        }
        (Kind::Messages, _) => message_attempts(cfg, rng, shape, &mut t),
        (Kind::Emails, _) => vec![email_attempt(rng, &mut t)],
        (Kind::PushNotifications, _) => vec![push_attempt(rng, &mut t)],
    };
    ResourcePlan {
        id,
        to,
        attempts,
        held: None,
    }
}

/// Through which door a Message attempt's reports come, as `--mix` asks.
fn form_route(cfg: &Config, rng: &mut Rng) -> Route {
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
}

/// The next report, a little after the last (`t`).
fn step(t: &mut u64, rng: &mut Rng, status: AttemptStatus, error_code: Option<u32>) -> Report {
    *t += 100 + rng.below(5_000);
    Report {
        status,
        error_code,
        at_ms: *t,
    }
}

/// The one attempt of a resource in a scheduled (and perhaps canceled) operation.
fn waiting_attempt(
    cfg: &Config,
    rng: &mut Rng,
    kind: Kind,
    shape: Shape,
    t: &mut u64,
) -> AttemptPlan {
    let (channel, sid) = match kind {
        Kind::Messages => (Channel::Sms, Some(sms_sid(rng))),
        Kind::Emails => (Channel::Email, None),
        Kind::PushNotifications => (Channel::Fcm, None),
    };
    let mut reports = vec![step(t, rng, AttemptStatus::Scheduled, None)];
    if shape == Shape::Canceled {
        reports.push(step(t, rng, AttemptStatus::Canceled, None));
    }
    let route = if kind == Kind::Messages {
        form_route(cfg, rng)
    } else {
        Route::Events
    };
    AttemptPlan {
        sid,
        number: 1,
        channel,
        route,
        reports,
    }
}

/// A Message's attempts: perhaps a rich channel that fails over to SMS, then the last one.
fn message_attempts(cfg: &Config, rng: &mut Rng, shape: Shape, t: &mut u64) -> Vec<AttemptPlan> {
    use AttemptStatus as S;
    let mut attempts = Vec::new();
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
            route: form_route(cfg, rng),
            reports: vec![
                step(t, rng, S::Queued, None),
                step(t, rng, S::Failed, Some(code)),
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
    let mut reports = vec![step(t, rng, S::Queued, None)];
    let roll = rng.below(100);
    if roll < 4 {
        let code = *rng.pick(&SMS_FAILED);
        reports.push(step(t, rng, S::Failed, Some(code)));
    } else {
        reports.push(step(t, rng, S::Sent, None));
        if roll < 12 {
            let code = *rng.pick(&SMS_UNDELIVERED);
            reports.push(step(t, rng, S::Undelivered, Some(code)));
        } else if roll < 16 || (shape == Shape::Processing && roll < 30) {
            // Still waiting for a delivery receipt.
        } else {
            reports.push(step(t, rng, S::Delivered, None));
            if first != Channel::Sms && rng.chance(0.6) {
                reports.push(step(t, rng, S::Read, None));
            }
        }
    }
    let number = attempts.len() as u8 + 1;
    attempts.push(AttemptPlan {
        sid: Some(sms_sid(rng)),
        number,
        channel: first,
        route: form_route(cfg, rng),
        reports,
    });
    attempts
}

fn email_attempt(rng: &mut Rng, t: &mut u64) -> AttemptPlan {
    use AttemptStatus as S;
    let mut reports = vec![step(t, rng, S::Queued, None)];
    let roll = rng.below(100);
    if roll < 5 {
        reports.push(step(t, rng, S::Failed, None));
    } else {
        reports.push(step(t, rng, S::Sent, None));
        if roll < 12 {
            reports.push(step(t, rng, S::Undelivered, None));
        } else if roll >= 16 {
            reports.push(step(t, rng, S::Delivered, None));
            if rng.chance(0.4) {
                reports.push(step(t, rng, S::Opened, None));
            }
        }
    }
    AttemptPlan {
        sid: None,
        number: 1,
        channel: Channel::Email,
        route: Route::Events,
        reports,
    }
}

fn push_attempt(rng: &mut Rng, t: &mut u64) -> AttemptPlan {
    use AttemptStatus as S;
    let mut reports = vec![step(t, rng, S::Queued, None)];
    if rng.chance(0.08) {
        reports.push(step(t, rng, S::Failed, None));
    } else {
        reports.push(step(t, rng, S::Sent, None));
    }
    let channel = if rng.chance(0.5) {
        Channel::Fcm
    } else {
        Channel::Apns
    };
    AttemptPlan {
        sid: None,
        number: 1,
        channel,
        route: Route::Events,
        reports,
    }
}

/// A generator of its own for one decision (`salt`) about one thing (`parts`: indices), so that
/// a share such as `--drop` or `--cancel` decides the same way whatever else is configured.
pub(super) fn keyed(seed: u64, salt: u64, parts: &[u64]) -> Rng {
    let mut h = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for p in parts {
        h = Rng::new(h ^ p.wrapping_mul(0xBF58_476D_1CE4_E5B9)).next_u64();
    }
    Rng::new(h)
}
