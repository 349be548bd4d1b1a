//! Deliveries: which report goes when, through which door, and which are never sent (lost
//! callbacks, silent kinds, resources and operations only Twilio's REST API shows).

use super::plan::{keyed, OperationPlan, Route};
use super::Config;
use crate::event::Kind;

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

/// True when no callback at all is sent for the operation: its kind is silent, or it is
/// scheduled for later with `--scheduled`.
pub fn silent(cfg: &Config, op: &OperationPlan) -> bool {
    op.quiet || cfg.silent_kinds.contains(&op.kind)
}

/// True when report `item` of attempt `attempt` of resource `resource` is lost (`--drop`):
/// decided per report from the seed and the operation id alone, so the same report is lost
/// whatever else is configured, and its duplicates with it.
pub fn lost(
    cfg: &Config,
    op: &OperationPlan,
    resource: usize,
    attempt: usize,
    item: usize,
) -> bool {
    if op.kind != Kind::Messages || cfg.drop <= 0.0 {
        return false;
    }
    let id = op.id.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    keyed(
        cfg.seed,
        0xD209_0057,
        &[id, resource as u64, attempt as u64, item as u64],
    )
    .chance(cfg.drop)
}

/// Every delivery of one operation, due at its event time, less those never sent.
pub fn op_deliveries(cfg: &Config, oi: u32, op: &OperationPlan) -> Vec<Delivery> {
    let mut out = Vec::new();
    if silent(cfg, op) {
        return out;
    }
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
                if lost(cfg, op, ri, ai, k) {
                    continue;
                }
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
