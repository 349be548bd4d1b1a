//! The lattice laws, as properties: any permutation of any event set, with any duplicates,
//! gives the same operation views, and stats always sum to the total.

use proptest::prelude::*;
use tally::aggregator::{Aggregator, Limits, ResourceFilter};
use tally::event::{
    AttemptEvent, AttemptStatus, Channel, Event, EventBody, Kind, OperationRead, Phase,
    ResourceRead,
};
use tally::rollup::OperationStatus;

/// One generated attempt: its channel and the statuses reported for it.
#[derive(Debug, Clone)]
struct GenAttempt {
    channel: Channel,
    statuses: Vec<AttemptStatus>,
    error: Option<u32>,
    /// Report through classic callbacks carrying only the SID (linked later by a Comms event).
    classic: bool,
}

#[derive(Debug, Clone)]
struct GenOp {
    kind: Kind,
    resources: Vec<Vec<GenAttempt>>,
    phases: Vec<Phase>,
    /// Statuses read from Twilio by the reconciler, by resource index (an index past the
    /// resources names one known only from reads, as an Email is).
    reads: Vec<(usize, AttemptStatus)>,
    /// Reads of the operation itself: status, total, attempts.
    op_reads: Vec<(Option<OperationStatus>, u64, u64)>,
}

fn status() -> impl Strategy<Value = AttemptStatus> {
    prop::sample::select(AttemptStatus::ALL.to_vec())
}

fn attempt() -> impl Strategy<Value = GenAttempt> {
    (
        prop::sample::select(vec![
            Channel::Rcs,
            Channel::Sms,
            Channel::Whatsapp,
            Channel::Mms,
        ]),
        prop::collection::vec(status(), 1..4),
        prop::option::of(prop::sample::select(vec![30003u32, 30005, 30008, 63016])),
        any::<bool>(),
    )
        .prop_map(|(channel, statuses, error, classic)| GenAttempt {
            channel,
            statuses,
            error,
            classic,
        })
}

fn operation() -> impl Strategy<Value = GenOp> {
    (
        prop::sample::select(Kind::ALL.to_vec()),
        prop::collection::vec(prop::collection::vec(attempt(), 1..4), 1..6),
        prop::collection::vec(
            prop::sample::select(vec![Phase::Scheduled, Phase::Processing, Phase::Completed]),
            0..3,
        ),
        prop::collection::vec((0usize..8, status()), 0..6),
        prop::collection::vec(
            (
                prop::option::of(prop::sample::select(OperationStatus::ALL.to_vec())),
                0u64..10,
                0u64..20,
            ),
            0..3,
        ),
    )
        .prop_map(|(kind, resources, phases, reads, op_reads)| GenOp {
            kind,
            resources,
            phases,
            reads,
            op_reads,
        })
}

fn resource_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Messages => "comms_message_",
        Kind::Emails => "comms_email_",
        Kind::PushNotifications => "comms_pushnotification_",
    }
}

/// Every event the generated operations produce, each with a fixed event time.
fn events(ops: &[GenOp]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut t = 1_700_000_000_000u64;
    for (oi, op) in ops.iter().enumerate() {
        let op_id = format!("comms_operation_{oi:02}");
        for phase in &op.phases {
            t += 7;
            out.push(Event {
                time_ms: t,
                body: EventBody::Operation {
                    operation_id: op_id.clone(),
                    kind: Some(op.kind),
                    phase: *phase,
                },
            });
        }
        for (ri, attempts) in op.resources.iter().enumerate() {
            let res_id = format!("{}{oi:02}{ri:02}", resource_prefix(op.kind));
            for (ai, a) in attempts.iter().enumerate() {
                let sid = format!("SM{oi:02}{ri:02}{ai:02}");
                for (si, st) in a.statuses.iter().enumerate() {
                    t += 13;
                    let linked = !a.classic || si == 0;
                    out.push(Event {
                        time_ms: t,
                        body: EventBody::Attempt(AttemptEvent {
                            kind: linked.then_some(op.kind),
                            operation_id: linked.then(|| op_id.clone()),
                            resource_id: linked.then(|| res_id.clone()),
                            downstream_id: Some(sid.clone()),
                            attempt: None,
                            channel: Some(a.channel),
                            status: *st,
                            error_code: if matches!(
                                st,
                                AttemptStatus::Failed | AttemptStatus::Undelivered
                            ) {
                                a.error
                            } else {
                                None
                            },
                            to: Some(format!("+1555000{oi:02}{ri:02}")),
                            tags: vec![("campaign".into(), format!("c{oi}"))],
                        }),
                    });
                }
            }
        }
        for (ri, st) in &op.reads {
            t += 17;
            out.push(Event {
                time_ms: t,
                body: EventBody::ResourceRead(ResourceRead {
                    kind: op.kind,
                    operation_id: op_id.clone(),
                    resource_id: format!("{}{oi:02}{ri:02}", resource_prefix(op.kind)),
                    status: *st,
                    to: Some(format!("+1555000{oi:02}{ri:02}")),
                    tags: vec![],
                }),
            });
        }
        for (status, total, attempts) in &op.op_reads {
            t += 19;
            out.push(Event {
                time_ms: t,
                body: EventBody::OperationRead(OperationRead {
                    operation_id: op_id.clone(),
                    kind: op.kind,
                    status: *status,
                    total: *total,
                    recipients: *total,
                    attempts: *attempts,
                    unaddressable: 0,
                }),
            });
        }
    }
    out
}

/// Everything observable about the operations, version included (it is a function of the
/// state), minus the times of change (`updatedAt`).
fn observe(agg: &Aggregator, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for oi in 0..n {
        let id = format!("comms_operation_{oi:02}");
        let Some(v) = agg.operation(&id) else {
            seen.push(format!("{id}: absent"));
            continue;
        };
        let listed = agg
            .resources(&id, &ResourceFilter::default(), None, usize::MAX)
            .unwrap()
            .len() as u64;
        // Every resource sits in one bucket; a total read from Twilio may count more.
        assert_eq!(v.stats.bucket_sum(), listed, "buckets sum to the resources");
        assert!(v.stats.total >= listed);
        seen.push(format!(
            "{id} {:?} {:?} created={} version={} stats={}",
            v.kind,
            v.status,
            v.created_ms,
            v.version,
            serde_json::to_string(&v.stats).unwrap()
        ));
        for r in agg
            .resources(&id, &ResourceFilter::default(), None, usize::MAX)
            .unwrap()
        {
            let attempts: Vec<String> = r
                .resource
                .attempts
                .iter()
                .map(|a| {
                    format!(
                        "{:?}/{:?}/{:?}/{:?}",
                        a.key, a.channel, a.status, a.error_code
                    )
                })
                .collect();
            seen.push(format!(
                "  {} {:?} to={:?} created={} err={:?} {:?}",
                r.resource.id,
                r.status,
                r.resource.to,
                r.resource.created_ms,
                r.resource.error_code(),
                attempts
            ));
        }
    }
    seen
}

fn apply_all(events: &[Event]) -> Aggregator {
    apply_all_to(Aggregator::new(Limits::default()), events)
}

fn apply_all_to(agg: Aggregator, events: &[Event]) -> Aggregator {
    for (i, e) in events.iter().enumerate() {
        agg.apply(e, 1_800_000_000_000 + i as u64);
    }
    agg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_any_duplicates_give_the_same_views(
        ops in prop::collection::vec(operation(), 1..4),
        seed in any::<u64>(),
        dup_mask in prop::collection::vec(any::<bool>(), 0..64),
    ) {
        let base = events(&ops);
        let reference = observe(&apply_all(&base), ops.len());

        // Shuffle deterministically from the seed, and repeat some events.
        let mut shuffled = base.clone();
        for (i, dup) in dup_mask.iter().enumerate() {
            if *dup && !base.is_empty() {
                shuffled.push(base[i % base.len()].clone());
            }
        }
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let other = observe(&apply_all(&shuffled), ops.len());
        prop_assert_eq!(&reference, &other);
        // Links that all share four fingerprints: every lookup meets other ids' links, and
        // only the operation's confirmation tells them apart.
        let colliding = apply_all_to(Aggregator::with_colliding_links(Limits::default()), &shuffled);
        prop_assert_eq!(&reference, &observe(&colliding, ops.len()));
    }

    #[test]
    fn every_change_of_status_or_stats_raises_the_version_and_none_lowers_it(
        ops in prop::collection::vec(operation(), 1..4),
        seed in any::<u64>(),
    ) {
        let mut events = events(&ops);
        let mut state = seed | 1;
        for i in (1..events.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            events.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let agg = Aggregator::new(Limits::default());
        let published = |agg: &Aggregator| -> Vec<(String, u64)> {
            (0..ops.len())
                .filter_map(|i| agg.operation(&format!("comms_operation_{i:02}")))
                .map(|v| {
                    let state = format!("{:?} {:?} {}", v.kind, v.status, serde_json::to_string(&v.stats).unwrap());
                    (state, v.version)
                })
                .collect()
        };
        let mut before = published(&agg);
        for (i, e) in events.iter().enumerate() {
            agg.apply(e, 1_800_000_000_000 + i as u64);
            let after = published(&agg);
            for (j, (state, version)) in after.iter().enumerate() {
                // An operation seen for the first time is new at index j only if it was absent.
                let Some((old_state, old_version)) = before.get(j).filter(|_| before.len() == after.len()) else { continue };
                prop_assert!(version >= old_version, "version went down at event {i}: {old_version} -> {version}");
                if state != old_state {
                    prop_assert!(version > old_version, "state changed at event {i} but the version stayed {version}:\n{old_state}\n{state}");
                }
            }
            before = after;
        }
    }

    #[test]
    fn replaying_every_event_again_changes_nothing(ops in prop::collection::vec(operation(), 1..3)) {
        let base = events(&ops);
        let agg = apply_all(&base);
        let before: Vec<_> = (0..ops.len())
            .filter_map(|i| agg.operation(&format!("comms_operation_{i:02}")))
            .collect();
        for e in &base {
            agg.apply(e, 1_900_000_000_000);
        }
        let after: Vec<_> = (0..ops.len())
            .filter_map(|i| agg.operation(&format!("comms_operation_{i:02}")))
            .collect();
        prop_assert_eq!(before, after, "versions and timestamps unchanged too");
    }
}

#[test]
fn a_classic_attempt_seen_before_its_link_is_merged_when_the_link_arrives() {
    let agg = Aggregator::new(Limits::default());
    let classic: Event = Event {
        time_ms: 5,
        body: EventBody::Attempt(AttemptEvent {
            kind: None,
            operation_id: None,
            resource_id: None,
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: Some(Channel::Sms),
            status: AttemptStatus::Delivered,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    assert_eq!(agg.apply(&classic, 10), tally::aggregator::Outcome::Held);
    assert_eq!(agg.census().held, 1);
    let link: Event = Event {
        time_ms: 6,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: Some("comms_operation_x".into()),
            resource_id: Some("comms_message_x".into()),
            downstream_id: Some("SM1".into()),
            attempt: None,
            channel: Some(Channel::Sms),
            status: AttemptStatus::Queued,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    agg.apply(&link, 11);
    let v = agg.operation("comms_operation_x").unwrap();
    assert_eq!(
        (v.stats.delivered, v.stats.queued, v.stats.attempts),
        (1, 0, 1)
    );
    assert_eq!(v.created_ms, 5, "the held event's time counts");
    assert_eq!(agg.census().held, 0);
}

/// Found by the `ingest` fuzz target: an attempt naming its resource but not its operation was
/// held under its SID, so a later event linking the resource through another attempt left it
/// stranded, while the reverse order applied it.
#[test]
fn an_attempt_held_for_its_resource_is_released_when_another_attempt_links_that_resource() {
    let attempt = |op: Option<&str>, sid: &str, status| Event {
        time_ms: 5,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: op.map(str::to_owned),
            resource_id: Some("comms_message_y".into()),
            downstream_id: Some(sid.into()),
            attempt: None,
            channel: None,
            status,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    let unlinked = attempt(None, "SMa", AttemptStatus::Sent);
    let linking = attempt(Some("comms_operation_y"), "SMb", AttemptStatus::Delivered);
    let mut views = vec![];
    for order in [[&unlinked, &linking], [&linking, &unlinked]] {
        let agg = Aggregator::new(Limits::default());
        for e in order {
            agg.apply(e, 10);
        }
        assert_eq!(agg.census().held, 0);
        assert_eq!(agg.apply(&unlinked, 20), tally::aggregator::Outcome::Noop);
        views.push(agg.operation("comms_operation_y").unwrap().stats);
    }
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0].attempts, 2);
}

/// Found by the `ingest` fuzz target: the same unlinked attempt reported twice with different
/// times was held once at the time of whichever came first, so `createdAt` depended on order.
#[test]
fn a_held_attempt_reported_twice_keeps_its_earliest_time() {
    let at = |time_ms| Event::<String> {
        time_ms,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: None,
            resource_id: Some("comms_message_z".into()),
            downstream_id: Some("SMz".into()),
            attempt: None,
            channel: None,
            status: AttemptStatus::Delivered,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    let link: Event = Event {
        time_ms: 900,
        body: EventBody::Operation {
            operation_id: "comms_operation_z".into(),
            kind: None,
            phase: Phase::Processing,
        },
    };
    let mut link_attempt = at(950);
    if let EventBody::Attempt(a) = &mut link_attempt.body {
        a.operation_id = Some("comms_operation_z".into());
        a.downstream_id = Some("SMother".into());
    }
    for (first, second) in [(at(100), at(500)), (at(500), at(100))] {
        let agg = Aggregator::new(Limits::default());
        agg.apply(&first, 1000);
        agg.apply(&second, 1000);
        agg.apply(&link, 1000);
        agg.apply(&link_attempt, 1000);
        let res = agg.resource("comms_message_z").expect("released");
        assert_eq!(res.resource.created_ms, 100, "the earliest report counts");
        assert_eq!(agg.apply(&first, 2000), tally::aggregator::Outcome::Noop);
        assert_eq!(agg.apply(&second, 2000), tally::aggregator::Outcome::Noop);
    }
}

/// Found by the `ingest` fuzz target: a held attempt released by a link naming another
/// operation than the one its resource already belongs to landed elsewhere than the same event
/// applied again, so applying it twice changed the state.
#[test]
fn a_released_attempt_lands_where_the_same_event_would_land_again() {
    let attempt = |op: Option<&str>, res: Option<&str>, sid: &str| Event {
        time_ms: 5,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: op.map(str::to_owned),
            resource_id: res.map(str::to_owned),
            downstream_id: Some(sid.into()),
            attempt: None,
            channel: None,
            status: AttemptStatus::Sent,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    let agg = Aggregator::new(Limits::default());
    let held = attempt(None, None, "SMh");
    assert_eq!(agg.apply(&held, 10), tally::aggregator::Outcome::Held);
    agg.apply(
        &attempt(Some("comms_operation_a"), Some("comms_message_m"), "SMm"),
        10,
    );
    // Hostile: the same message claimed by a second operation, linking the held SID.
    agg.apply(
        &attempt(Some("comms_operation_b"), Some("comms_message_m"), "SMh"),
        10,
    );
    assert_eq!(agg.census().held, 0);
    assert_eq!(agg.apply(&held, 20), tally::aggregator::Outcome::Noop);
}

#[test]
fn held_attempts_are_bounded_and_the_overflow_is_counted() {
    let agg = Aggregator::new(Limits {
        max_held: 3,
        held_ttl_ms: 1000,
        max_resources: 1000,
        ..Limits::default()
    });
    for i in 0..5 {
        let e: Event = Event {
            time_ms: i,
            body: EventBody::Attempt(AttemptEvent {
                kind: None,
                operation_id: None,
                resource_id: None,
                downstream_id: Some(format!("SM{i}")),
                attempt: None,
                channel: None,
                status: AttemptStatus::Sent,
                error_code: None,
                to: None,
                tags: vec![],
            }),
        };
        agg.apply(&e, 100 + i);
    }
    assert_eq!(agg.census().held, 3);
    assert_eq!(agg.held_dropped(), 2);
    agg.sweep(0, 100 + 2000);
    assert_eq!(agg.census().held, 0, "aged out");
    assert_eq!(agg.held_dropped(), 5);
}

/// With every link on four fingerprints, a resource new to an operation finds the very link it
/// would file already there (another resource of the same operation filed it). The attempt
/// held for it is released all the same when a read of the resource puts it in the operation.
#[test]
fn a_resource_read_releases_its_held_attempt_when_its_link_is_shared() {
    let op = "comms_operation_shared";
    let attempt = |op: Option<&str>, res: &str, sid: &str| Event {
        time_ms: 5,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: op.map(str::to_owned),
            resource_id: Some(res.into()),
            downstream_id: Some(sid.into()),
            attempt: None,
            channel: None,
            status: AttemptStatus::Sent,
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    let agg = Aggregator::with_colliding_links(Limits::default());
    // Enough resources in the operation to file a link under each of the four fingerprints.
    for i in 0..32 {
        let e = attempt(Some(op), &format!("comms_message_{i}"), &format!("SM{i}"));
        agg.apply(&e, 10);
    }
    let waiting = attempt(None, "comms_message_new", "SMnew");
    agg.apply(&waiting, 10);
    assert_eq!(agg.census().held, 1, "no operation holds the resource yet");
    let read: Event = Event {
        time_ms: 6,
        body: EventBody::ResourceRead(ResourceRead {
            kind: Kind::Messages,
            operation_id: op.into(),
            resource_id: "comms_message_new".into(),
            status: AttemptStatus::Sent,
            to: None,
            tags: vec![],
        }),
    };
    agg.apply(&read, 20);
    assert_eq!(agg.census().held, 0, "the read released the held attempt");
    assert_eq!(agg.operation(op).unwrap().stats.attempts, 33);
}
