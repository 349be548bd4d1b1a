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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
