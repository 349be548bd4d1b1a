//! The status lattices (docs/contract.md, "Statuses: the lattices").
//!
//! Attempts join by maximum in the attempt order (declaration order of [`AttemptStatus`]).
//! A resource's status is the best of its attempts under the *resource* order, in which anything
//! still in flight or successful beats a failure, so a failed RCS attempt followed by a queued SMS
//! fallback leaves the message queued.

use crate::event::{AttemptStatus, Kind, Phase};
use serde::Serialize;

/// Rank of an attempt status in the attempt lattice; `opened` ranks with `read`.
pub fn attempt_rank(s: AttemptStatus) -> u8 {
    match s {
        AttemptStatus::Scheduled => 0,
        AttemptStatus::Accepted => 1,
        AttemptStatus::Queued => 2,
        AttemptStatus::Canceled => 3,
        AttemptStatus::Sending => 4,
        AttemptStatus::Sent => 5,
        AttemptStatus::Failed => 6,
        AttemptStatus::Undelivered => 7,
        AttemptStatus::Delivered => 8,
        AttemptStatus::Read | AttemptStatus::Opened => 9,
    }
}

/// An attempt status's height in the attempt lattice: its rank, with `opened` one above `read`
/// since the join settles a tie between them on `opened`.
pub fn status_height(s: AttemptStatus) -> u64 {
    u64::from(attempt_rank(s)) + u64::from(s == AttemptStatus::Opened)
}

/// Join of two attempt statuses: the higher rank wins; between `read` and `opened` (same rank)
/// the choice is fixed so that the join stays commutative.
pub fn join_attempt(a: AttemptStatus, b: AttemptStatus) -> AttemptStatus {
    match attempt_rank(a).cmp(&attempt_rank(b)) {
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Equal => {
            if a == AttemptStatus::Opened || b == AttemptStatus::Opened {
                AttemptStatus::Opened
            } else {
                a
            }
        }
    }
}

/// A resource's status, declared in the resource order (worst first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceStatus {
    Failed,
    Undelivered,
    Canceled,
    Scheduled,
    Queued,
    Sent,
    Delivered,
    /// Read (messages) or opened (emails).
    Read,
}

impl ResourceStatus {
    pub const ALL: [ResourceStatus; 8] = [
        ResourceStatus::Failed,
        ResourceStatus::Undelivered,
        ResourceStatus::Canceled,
        ResourceStatus::Scheduled,
        ResourceStatus::Queued,
        ResourceStatus::Sent,
        ResourceStatus::Delivered,
        ResourceStatus::Read,
    ];

    /// What one attempt in this status contributes to its resource.
    pub fn of_attempt(s: AttemptStatus) -> ResourceStatus {
        match s {
            AttemptStatus::Scheduled => ResourceStatus::Scheduled,
            AttemptStatus::Accepted | AttemptStatus::Queued | AttemptStatus::Sending => {
                ResourceStatus::Queued
            }
            AttemptStatus::Canceled => ResourceStatus::Canceled,
            AttemptStatus::Sent => ResourceStatus::Sent,
            AttemptStatus::Failed => ResourceStatus::Failed,
            AttemptStatus::Undelivered => ResourceStatus::Undelivered,
            AttemptStatus::Delivered => ResourceStatus::Delivered,
            AttemptStatus::Read | AttemptStatus::Opened => ResourceStatus::Read,
        }
    }

    /// The stats bucket this status counts in, for an operation of `kind`: `read` for messages,
    /// `opened` for emails, `delivered` for push notifications (which have neither).
    pub fn bucket(self, kind: Kind) -> Bucket {
        match self {
            ResourceStatus::Failed => Bucket::Failed,
            ResourceStatus::Undelivered => Bucket::Undelivered,
            ResourceStatus::Canceled => Bucket::Canceled,
            ResourceStatus::Scheduled => Bucket::Scheduled,
            ResourceStatus::Queued => Bucket::Queued,
            ResourceStatus::Sent => Bucket::Sent,
            ResourceStatus::Delivered => Bucket::Delivered,
            ResourceStatus::Read => match kind {
                Kind::Messages => Bucket::Read,
                Kind::Emails => Bucket::Opened,
                Kind::PushNotifications => Bucket::Delivered,
            },
        }
    }

    /// The uppercase status string of Twilio's resource APIs, for a resource of `kind`.
    pub fn api_str(self, kind: Kind) -> &'static str {
        self.bucket(kind).api_str()
    }
}

/// Where a resource status stands in the attempt order, for comparing it with a status read
/// from Twilio (each resource status at the rank of the attempt status it comes from; queued
/// at `queued`).
fn resource_rank(r: ResourceStatus) -> u8 {
    attempt_rank(match r {
        ResourceStatus::Failed => AttemptStatus::Failed,
        ResourceStatus::Undelivered => AttemptStatus::Undelivered,
        ResourceStatus::Canceled => AttemptStatus::Canceled,
        ResourceStatus::Scheduled => AttemptStatus::Scheduled,
        ResourceStatus::Queued => AttemptStatus::Queued,
        ResourceStatus::Sent => AttemptStatus::Sent,
        ResourceStatus::Delivered => AttemptStatus::Delivered,
        ResourceStatus::Read => AttemptStatus::Read,
    })
}

/// What the reconciler has read of one resource from Twilio, kept as two joins
/// (docs/contract.md, "Reconciliation"): the highest terminal status read, under the attempt
/// order, and the highest in-flight status read, under the resource order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Reads {
    pub terminal: Option<AttemptStatus>,
    pub in_flight: Option<AttemptStatus>,
}

/// The resource order on in-flight statuses, with the attempt order to break ties inside
/// `queued` (accepted < queued < sending), so that the join is a total order.
fn in_flight_key(s: AttemptStatus) -> (ResourceStatus, u8) {
    (ResourceStatus::of_attempt(s), attempt_rank(s))
}

impl Reads {
    /// Join one status read; true when it changed what is kept.
    pub fn join(&mut self, s: AttemptStatus) -> bool {
        if s.is_terminal_read() {
            let joined = self.terminal.map_or(s, |t| join_attempt(t, s));
            let changed = self.terminal != Some(joined);
            self.terminal = Some(joined);
            changed
        } else if self
            .in_flight
            .is_none_or(|old| in_flight_key(s) > in_flight_key(old))
        {
            self.in_flight = Some(s);
            true
        } else {
            false
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terminal.is_none() && self.in_flight.is_none()
    }

    /// The height of these reads in their two lattices: each join that changes either raises it.
    pub fn height(&self) -> u64 {
        let terminal = self.terminal.map_or(0, |t| 1 + status_height(t));
        let in_flight = self.in_flight.map_or(0, |s| {
            let (resource, rank) = in_flight_key(s);
            1 + resource as u64 * 10 + u64::from(rank)
        });
        terminal + in_flight
    }

    /// The status of a resource with these attempt statuses and these reads. Once a terminal
    /// status has been read, the greater (attempt order) of it and what the attempts say;
    /// until then, the in-flight read counts like one more attempt (resource order). With
    /// neither attempts nor reads: queued.
    pub fn status(&self, attempts: impl Iterator<Item = AttemptStatus>) -> ResourceStatus {
        let from_attempts = attempts.map(ResourceStatus::of_attempt).max();
        match self.terminal {
            Some(t) => {
                let derived = from_attempts.unwrap_or(ResourceStatus::Queued);
                if attempt_rank(t) >= resource_rank(derived) {
                    ResourceStatus::of_attempt(t)
                } else {
                    derived
                }
            }
            None => from_attempts
                .max(self.in_flight.map(ResourceStatus::of_attempt))
                .unwrap_or(ResourceStatus::Queued),
        }
    }
}

/// One stats bucket: every resource sits in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Scheduled,
    Queued,
    Sent,
    Delivered,
    Read,
    Opened,
    Undelivered,
    Failed,
    Canceled,
}

impl Bucket {
    pub const ALL: [Bucket; 9] = [
        Bucket::Scheduled,
        Bucket::Queued,
        Bucket::Sent,
        Bucket::Delivered,
        Bucket::Read,
        Bucket::Opened,
        Bucket::Undelivered,
        Bucket::Failed,
        Bucket::Canceled,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Uppercase name as Twilio's API shows it.
    pub fn api_str(self) -> &'static str {
        match self {
            Bucket::Scheduled => "SCHEDULED",
            Bucket::Queued => "QUEUED",
            Bucket::Sent => "SENT",
            Bucket::Delivered => "DELIVERED",
            Bucket::Read => "READ",
            Bucket::Opened => "OPENED",
            Bucket::Undelivered => "UNDELIVERED",
            Bucket::Failed => "FAILED",
            Bucket::Canceled => "CANCELED",
        }
    }

    /// Parse a status filter (`delivered`, `DELIVERED`).
    pub fn parse(s: &str) -> Option<Bucket> {
        Bucket::ALL
            .into_iter()
            .find(|b| b.api_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// An operation's status, `SCHEDULED < PROCESSING < COMPLETED`, plus `CANCELED`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum OperationStatus {
    Scheduled,
    Processing,
    Completed,
    Canceled,
}

impl OperationStatus {
    pub const ALL: [OperationStatus; 4] = [
        OperationStatus::Scheduled,
        OperationStatus::Processing,
        OperationStatus::Completed,
        OperationStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Scheduled => "SCHEDULED",
            OperationStatus::Processing => "PROCESSING",
            OperationStatus::Completed => "COMPLETED",
            OperationStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<OperationStatus> {
        OperationStatus::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn of_phase(p: Phase) -> OperationStatus {
        match p {
            Phase::Scheduled => OperationStatus::Scheduled,
            Phase::Processing => OperationStatus::Processing,
            Phase::Completed => OperationStatus::Completed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(list: &[AttemptStatus]) -> Reads {
        let mut r = Reads::default();
        for s in list {
            r.join(*s);
        }
        r
    }

    #[test]
    fn a_terminal_read_settles_a_resource_whose_fallback_callbacks_were_lost() {
        use AttemptStatus::*;
        // RCS failed, SMS fallback queued, its failure callback lost: Twilio says FAILED.
        let r = reads(&[Failed]);
        assert_eq!(
            r.status([Failed, Queued].into_iter()),
            ResourceStatus::Failed
        );
        // Canceled through the API while queued.
        assert_eq!(
            reads(&[Canceled]).status([Queued].into_iter()),
            ResourceStatus::Canceled
        );
        // A later read callback still moves a delivered read forward.
        assert_eq!(
            reads(&[Delivered]).status([Read].into_iter()),
            ResourceStatus::Read
        );
        // A stale terminal read never undoes what the attempts went past.
        assert_eq!(
            reads(&[Canceled]).status([Sent].into_iter()),
            ResourceStatus::Sent
        );
        // With no attempt at all (an Email), the read is the status.
        assert_eq!(
            reads(&[Opened]).status(std::iter::empty()),
            ResourceStatus::Read
        );
    }

    #[test]
    fn an_in_flight_read_counts_like_one_more_attempt_until_a_terminal_read() {
        use AttemptStatus::*;
        let r = reads(&[Queued]);
        assert_eq!(r.status([Failed].into_iter()), ResourceStatus::Queued);
        assert_eq!(r.status([Delivered].into_iter()), ResourceStatus::Delivered);
        assert_eq!(
            reads(&[Scheduled]).status(std::iter::empty()),
            ResourceStatus::Scheduled
        );
        let r = reads(&[Sent, Failed]);
        assert_eq!(
            r.status([Failed, Queued].into_iter()),
            ResourceStatus::Failed
        );
    }

    #[test]
    fn reads_join_in_any_order_to_the_same_state() {
        let all = AttemptStatus::ALL;
        for a in all {
            for b in all {
                for c in all {
                    let x = reads(&[a, b, c]);
                    assert_eq!(x, reads(&[c, a, b]));
                    assert_eq!(x, reads(&[b, c, a, b]));
                }
            }
        }
    }

    #[test]
    fn attempt_join_is_commutative_associative_and_idempotent() {
        for a in AttemptStatus::ALL {
            assert_eq!(join_attempt(a, a), a);
            for b in AttemptStatus::ALL {
                assert_eq!(join_attempt(a, b), join_attempt(b, a));
                for c in AttemptStatus::ALL {
                    assert_eq!(
                        join_attempt(join_attempt(a, b), c),
                        join_attempt(a, join_attempt(b, c))
                    );
                }
            }
        }
    }

    #[test]
    fn a_late_sent_never_undoes_delivered_and_read_moves_forward() {
        use AttemptStatus::*;
        assert_eq!(join_attempt(Delivered, Sent), Delivered);
        assert_eq!(join_attempt(Delivered, Read), Read);
        assert_eq!(join_attempt(Sent, Failed), Failed);
        assert_eq!(join_attempt(Undelivered, Delivered), Delivered);
    }

    #[test]
    fn in_flight_fallback_beats_a_failed_attempt_in_the_resource_order() {
        let failed = ResourceStatus::of_attempt(AttemptStatus::Failed);
        let queued = ResourceStatus::of_attempt(AttemptStatus::Queued);
        assert!(queued > failed);
        assert!(ResourceStatus::of_attempt(AttemptStatus::Accepted) == ResourceStatus::Queued);
        assert!(ResourceStatus::of_attempt(AttemptStatus::Sending) == ResourceStatus::Queued);
    }

    #[test]
    fn read_lands_in_the_bucket_each_kind_has() {
        assert_eq!(ResourceStatus::Read.bucket(Kind::Messages), Bucket::Read);
        assert_eq!(ResourceStatus::Read.bucket(Kind::Emails), Bucket::Opened);
        assert_eq!(
            ResourceStatus::Read.bucket(Kind::PushNotifications),
            Bucket::Delivered
        );
    }
}
