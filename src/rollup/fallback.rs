//! Channel fallbacks: a Message tried on one channel, then again on another (RCS → SMS,
//! WhatsApp → SMS), seen as a new attempt on a channel the Message had not used yet.
//!
//! Events arrive in any order, so "which channel came first" is not known from arrival order.
//! A fallback goes from a richer channel to a plainer one (Twilio tries RCS or WhatsApp first and
//! falls back towards SMS), so the pair is oriented by [`richness`]: a new channel is paired with
//! the nearest richer channel the Message already used, else with the nearest plainer one. The
//! number of fallbacks of a Message is therefore always its distinct messaging channels minus
//! one, whatever the order; the pairs are exact whenever the channels arrive in fallback order or
//! there are two of them.
//!
//! Only messaging channels take part: an Email has one channel, and a PushNotification's FCM and
//! APNs attempts go to different devices rather than falling back from one to the other.

use super::operation::{AttemptKey, Resource};
use crate::event::{AttemptEvent, Channel, Text};

/// One fallback: a Message that had an attempt on `from` got a new attempt on `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fallback {
    pub from: Channel,
    pub to: Channel,
}

/// Rank of a messaging channel in fallback order, richest first; `None` for channels that never
/// fall back (email, push providers).
pub fn richness(c: Channel) -> Option<u8> {
    match c {
        Channel::Rcs => Some(0),
        Channel::Whatsapp => Some(1),
        Channel::Other => Some(2),
        Channel::Mms => Some(3),
        Channel::Sms => Some(4),
        Channel::Email | Channel::Fcm | Channel::Apns => None,
    }
}

/// Every fallback pair that [`detect`] can report, richer channel first: the set a metric can
/// be pre-declared with.
pub fn all_pairs() -> Vec<Fallback> {
    let mut channels: Vec<Channel> = Channel::ALL
        .into_iter()
        .filter(|c| richness(*c).is_some())
        .collect();
    channels.sort_by_key(|c| richness(*c));
    let mut pairs = Vec::new();
    for (i, from) in channels.iter().enumerate() {
        for to in &channels[i + 1..] {
            pairs.push(Fallback {
                from: *from,
                to: *to,
            });
        }
    }
    pairs
}

/// The fallback that applying `ev` to `resource` (its state *before* the event; `None` when the
/// resource is new) makes, if any: `ev` must start a new attempt, on a messaging channel that
/// none of the resource's attempts used yet, while another messaging channel was used.
pub fn detect<S: Text>(resource: Option<&Resource>, ev: &AttemptEvent<S>) -> Option<Fallback> {
    let resource = resource?;
    let key = AttemptKey::of(ev);
    if resource.attempts.iter().any(|a| a.key == key) {
        return None;
    }
    after_new_attempt(resource.attempts.iter().filter_map(|a| a.channel), ev)
}

/// The fallback that `ev`, known to start a new attempt of a resource whose attempts used
/// the channels `used`, makes, if any (see [`detect`]).
pub(super) fn after_new_attempt<S: Text>(
    used: impl Iterator<Item = Channel>,
    ev: &AttemptEvent<S>,
) -> Option<Fallback> {
    let new = ev.channel?;
    let rank = richness(new)?;
    let used: Vec<(u8, Channel)> = used.filter_map(|c| richness(c).map(|r| (r, c))).collect();
    if used.is_empty() || used.iter().any(|(_, c)| *c == new) {
        return None;
    }
    let nearest_richer = used.iter().filter(|(r, _)| *r < rank).max();
    let nearest_plainer = used.iter().filter(|(r, _)| *r > rank).min();
    match (nearest_richer, nearest_plainer) {
        (Some((_, from)), _) => Some(Fallback {
            from: *from,
            to: new,
        }),
        (None, Some((_, to))) => Some(Fallback { from: new, to: *to }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttemptStatus, Kind};
    use crate::rollup::Operation;

    const RES: &str = "comms_message_a";

    fn ev(sid: &str, ch: Option<Channel>) -> AttemptEvent {
        AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: Some("comms_operation_1".into()),
            resource_id: Some(RES.into()),
            downstream_id: Some(sid.into()),
            attempt: None,
            channel: ch,
            status: AttemptStatus::Queued,
            error_code: None,
            to: None,
            tags: vec![],
        }
    }

    /// Apply `events` in order and return the fallbacks detected along the way.
    fn run(events: &[AttemptEvent]) -> Vec<Fallback> {
        let mut op = Operation::new("comms_operation_1", 0, 0);
        let mut found = Vec::new();
        for e in events {
            let from_view = detect(op.resource(RES).as_ref(), e);
            let applied = op.apply_attempt_at(RES, e, 0, 0);
            assert_eq!(applied.fallback, from_view, "stored and viewed disagree");
            found.extend(from_view);
        }
        found
    }

    fn fb(from: Channel, to: Channel) -> Fallback {
        Fallback { from, to }
    }

    #[test]
    fn an_sms_attempt_after_an_rcs_attempt_is_one_rcs_to_sms_fallback() {
        let found = run(&[ev("SM1", Some(Channel::Rcs)), ev("SM2", Some(Channel::Sms))]);
        assert_eq!(found, vec![fb(Channel::Rcs, Channel::Sms)]);
    }

    #[test]
    fn the_same_pair_is_reported_when_the_sms_attempt_arrives_first() {
        let found = run(&[ev("SM2", Some(Channel::Sms)), ev("SM1", Some(Channel::Rcs))]);
        assert_eq!(found, vec![fb(Channel::Rcs, Channel::Sms)]);
    }

    #[test]
    fn more_events_for_known_attempts_and_a_first_attempt_are_no_fallback() {
        let mut delivered = ev("SM2", Some(Channel::Sms));
        delivered.status = AttemptStatus::Delivered;
        let found = run(&[
            ev("SM1", Some(Channel::Rcs)),
            ev("SM1", Some(Channel::Rcs)),
            ev("SM2", Some(Channel::Sms)),
            delivered.clone(),
            delivered,
        ]);
        assert_eq!(found.len(), 1);
        assert_eq!(run(&[ev("SM1", Some(Channel::Whatsapp))]), vec![]);
    }

    #[test]
    fn a_second_attempt_on_the_same_channel_is_a_retry_not_a_fallback() {
        let found = run(&[ev("SM1", Some(Channel::Sms)), ev("SM2", Some(Channel::Sms))]);
        assert_eq!(found, vec![]);
    }

    #[test]
    fn a_chain_in_order_reports_each_step() {
        let found = run(&[
            ev("SM1", Some(Channel::Rcs)),
            ev("SM2", Some(Channel::Whatsapp)),
            ev("SM3", Some(Channel::Sms)),
        ]);
        assert_eq!(
            found,
            vec![
                fb(Channel::Rcs, Channel::Whatsapp),
                fb(Channel::Whatsapp, Channel::Sms)
            ]
        );
    }

    #[test]
    fn the_count_is_distinct_channels_minus_one_in_every_order() {
        let events = [
            ev("SM1", Some(Channel::Rcs)),
            ev("SM2", Some(Channel::Whatsapp)),
            ev("SM3", Some(Channel::Sms)),
            ev("SM4", Some(Channel::Sms)),
        ];
        let orders: [[usize; 4]; 6] = [
            [0, 1, 2, 3],
            [3, 2, 1, 0],
            [2, 0, 3, 1],
            [1, 3, 0, 2],
            [3, 0, 2, 1],
            [1, 2, 3, 0],
        ];
        for order in orders {
            let shuffled: Vec<AttemptEvent> = order.iter().map(|i| events[*i].clone()).collect();
            let found = run(&shuffled);
            assert_eq!(found.len(), 2, "order {order:?}: {found:?}");
            assert!(
                found
                    .iter()
                    .all(|f| richness(f.from).unwrap() < richness(f.to).unwrap()),
                "order {order:?}: {found:?}"
            );
        }
    }

    #[test]
    fn push_providers_email_and_channel_less_attempts_never_fall_back() {
        assert_eq!(
            run(&[ev("P1", Some(Channel::Fcm)), ev("P2", Some(Channel::Apns))]),
            vec![]
        );
        assert_eq!(
            run(&[ev("SM1", None), ev("SM2", Some(Channel::Sms))]),
            vec![]
        );
        assert_eq!(
            run(&[ev("SM1", Some(Channel::Rcs)), ev("SM2", None)]),
            vec![]
        );
    }

    #[test]
    fn every_detectable_pair_is_declared_richer_first() {
        let pairs = all_pairs();
        assert_eq!(pairs.len(), 10);
        assert!(pairs.contains(&fb(Channel::Rcs, Channel::Sms)));
        assert!(pairs.contains(&fb(Channel::Whatsapp, Channel::Sms)));
        assert!(!pairs.contains(&fb(Channel::Sms, Channel::Rcs)));
    }
}
