//! Inside a batch every event stands alone; order and duplicates never matter.

use crate::support::{app::spawn_app, cloudevent::CloudEvent};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

const OP: &str = "comms_operation_01hbat000000000000000000001";

fn message_id(n: usize) -> String {
    format!("comms_message_01hbat0000000000000000{n:05}")
}

fn sid(n: usize, attempt: usize) -> String {
    format!("SM5000000000000000000000{n:05}{attempt:05}")
}

#[actix_web::test]
async fn one_bad_event_is_counted_and_skipped_and_the_rest_of_the_batch_applies() {
    // Arrange
    let app = spawn_app().await;
    let good_1 = CloudEvent::message("delivered", OP, &message_id(1), &sid(1, 1)).json();
    let good_2 = CloudEvent::message("sent", OP, &message_id(2), &sid(2, 1)).json();
    let mut unknown_type = CloudEvent::message("sent", OP, &message_id(3), &sid(3, 1)).json();
    unknown_type["type"] = json!("com.twilio.voice.call.completed");
    let unknown_status = CloudEvent::message("receiving", OP, &message_id(4), &sid(4, 1)).json();
    let not_an_object = json!(42);
    let mut no_ids = CloudEvent::message("sent", OP, &message_id(5), &sid(5, 1)).json();
    no_ids["data"] = json!({"to": {"address": "+15558675310"}});
    let batch = vec![
        good_1,
        unknown_type,
        unknown_status,
        not_an_object,
        no_ids,
        good_2,
    ];

    // Act
    let resp = app.post_batch(&batch).await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"received": 6, "applied": 2, "noop": 0, "rejected": 4})
    );
    let stats = &app.operation_json("Messages", OP).await["stats"];
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["delivered"], 1, "{stats}");
    assert_eq!(stats["sent"], 1, "{stats}");
    let scrape = app.metrics().await;
    let rejected = |reason: &str| scrape.sum("tally_events_rejected_total", &[("reason", reason)]);
    assert_eq!(rejected("unknown_type"), 1.0);
    assert_eq!(rejected("unknown_status"), 1.0);
    assert_eq!(rejected("malformed"), 1.0);
    assert_eq!(rejected("missing_id"), 1.0);
    assert_eq!(scrape.sum("tally_events_rejected_total", &[]), 4.0);
}

#[actix_web::test]
async fn a_single_cloudevent_object_is_accepted_as_a_batch_of_one() {
    // Arrange
    let app = spawn_app().await;
    let event = CloudEvent::message("sent", OP, &message_id(1), &sid(1, 1)).json();

    // Act
    let resp = app
        .post_events_body(serde_json::to_vec(&event).expect("serialisable"))
        .await;

    // Assert
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"received": 1, "applied": 1, "noop": 0, "rejected": 0})
    );
    assert_eq!(app.operation_json("Messages", OP).await["stats"]["sent"], 1);
}

/// A realistic history: twelve messages, some with an RCS attempt that fails before SMS, each
/// reported queued → sent → delivered/undelivered/failed/read, plus the operation's phases.
fn history() -> Vec<Value> {
    let mut events = vec![
        CloudEvent::operation("scheduled", OP).json(),
        CloudEvent::operation("processing", OP)
            .time("2024-04-05T06:20:01Z")
            .json(),
        CloudEvent::operation("completed", OP)
            .time("2024-04-05T06:21:00Z")
            .json(),
    ];
    for n in 0..12 {
        let msg = message_id(n);
        let mut attempt = 1;
        if n % 3 == 0 {
            events.push(
                CloudEvent::message("failed", OP, &msg, &sid(n, attempt))
                    .from("rcs:agent", "RCS")
                    .attempt(attempt as u32)
                    .error_code(63016)
                    .json(),
            );
            attempt += 1;
        }
        let last = match n % 4 {
            0 => "delivered",
            1 => "undelivered",
            2 => "read",
            _ => "failed",
        };
        let mut statuses = vec!["queued", "sent"];
        if last == "read" {
            statuses.push("delivered");
        }
        statuses.push(last);
        for status in statuses {
            let mut ev = CloudEvent::message(status, OP, &msg, &sid(n, attempt))
                .attempt(attempt as u32)
                .time(&format!("2024-04-05T06:20:{:02}Z", 2 + n));
            if status == "undelivered" || status == "failed" {
                ev = ev.error_code(30003 + (n % 3) as u32);
            }
            events.push(ev.json());
        }
    }
    events
}

/// The operation without `updatedAt`, which records when it last changed, not what it is.
async fn state(app: &crate::support::app::TestApp) -> Value {
    let mut op = app.operation_json("Messages", OP).await;
    op.as_object_mut()
        .expect("an object")
        .remove("updatedAt")
        .expect("updatedAt present");
    op
}

#[actix_web::test]
async fn posting_the_same_batch_twice_changes_nothing_the_second_time() {
    // Arrange
    let app = spawn_app().await;
    let events = history();
    let first = app.apply_batch(&events).await;
    let before = state(&app).await;

    // Act
    let second = app.apply_batch(&events).await;

    // Assert
    assert_eq!(first["received"], json!(events.len()));
    assert_eq!(first["rejected"], 0);
    assert_eq!(
        second,
        json!({"received": events.len(), "applied": 0, "noop": events.len(), "rejected": 0})
    );
    assert_eq!(state(&app).await, before);
}

#[actix_web::test]
async fn shuffled_split_and_duplicated_deliveries_give_the_same_operation() {
    // Arrange: the reference, in order, in one batch.
    let reference = spawn_app().await;
    let events = history();
    reference.apply_batch(&events).await;
    let expected = state(&reference).await;
    assert_eq!(expected["status"], "COMPLETED");
    assert_eq!(expected["stats"]["total"], 12);
    assert_eq!(expected["stats"]["attempts"], 16);

    for seed in [1u64, 2, 3] {
        // Arrange: each event once or twice, shuffled, in batches of up to five.
        let app = spawn_app().await;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut deliveries: Vec<Value> = events.clone();
        deliveries.extend(events.choose_multiple(&mut rng, events.len() / 2).cloned());
        deliveries.shuffle(&mut rng);

        // Act
        let mut totals = [0u64; 4];
        for batch in deliveries.chunks(5) {
            let summary = app.apply_batch(batch).await;
            for (i, key) in ["received", "applied", "noop", "rejected"]
                .iter()
                .enumerate()
            {
                totals[i] += summary[key].as_u64().expect("a count");
            }
        }

        // Assert
        assert_eq!(state(&app).await, expected, "seed {seed}");
        assert_eq!(totals[0], deliveries.len() as u64, "seed {seed}");
        assert_eq!(totals[0], totals[1] + totals[2] + totals[3], "seed {seed}");
        assert_eq!(totals[3], 0, "seed {seed}");
        assert!(
            totals[2] >= (events.len() / 2) as u64,
            "every duplicate is a noop"
        );
    }
}
