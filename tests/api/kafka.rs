//! Kafka publishing through the whole service: signed callbacks in, records out, against
//! librdkafka's in-process mock cluster (`rdkafka::mocking::MockCluster`).
//!
//! The end-to-end tests against a real broker are in `tests/kafka_e2e.rs` (scripts/kafka-e2e).

use crate::support::app::{spawn_app_with, TestApp};
use crate::support::kafka_records::*;
use actix_web::http::StatusCode;
use rand::SeedableRng;
use rdkafka::mocking::MockCluster;
use serde_json::Value;
use std::time::{Duration, Instant};

const TOPIC: &str = "tally.operations";

fn mock_cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 3, 1).expect("topic");
    mock
}

/// Start tally publishing to `bootstrap`, with more settings from `env`.
async fn spawn_publishing(bootstrap: &str, env: &[(&str, &str)]) -> TestApp {
    let mut all = vec![("TALLY_KAFKA__BROKERS", bootstrap)];
    all.extend_from_slice(env);
    spawn_app_with(&all).await
}

async fn post(app: &TestApp, events: &[Value]) -> u16 {
    app.post_batch(events).await.status.as_u16()
}

async fn read(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[Rec]) -> bool + Send + 'static,
) -> Vec<Rec> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, Duration::from_secs(20), done))
        .await
        .expect("reader")
}

/// Every id's newest record on the topic shows what the query API shows for it.
fn assert_each_newest_record_is_its_view(recs: &[Rec], ids: &[String], views: &[Value]) {
    let newest = newest_by_key(recs);
    for (id, view) in ids.iter().zip(views) {
        assert_eq!(as_query_view(&newest[id].value), *view, "{id}");
    }
}

/// Wait until every id's newest record carries the version the query API shows.
async fn read_until_current(
    app: &TestApp,
    bootstrap: &str,
    ids: &[String],
) -> (Vec<Rec>, Vec<Value>) {
    let mut views = Vec::new();
    for id in ids {
        views.push(app.operation_json("Messages", id).await);
    }
    let expected: Vec<(String, Value)> = ids.iter().cloned().zip(views.iter().cloned()).collect();
    let recs = read(bootstrap, TOPIC, move |recs| {
        let newest = newest_by_key(recs);
        expected.iter().all(|(id, view)| {
            newest
                .get(id)
                .is_some_and(|r| as_query_view(&r.value) == *view)
        })
    })
    .await;
    (recs, views)
}

#[actix_web::test]
async fn a_signed_callback_becomes_a_record_keyed_by_operation_with_the_documented_value_and_headers(
) {
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(&bootstrap, &[]).await;
    let op = "comms_operation_one";
    let events = vec![
        operation_event(op, "processing"),
        message_event(op, "comms_message_a", "SMa1", "RCS", "failed", Some(30008)),
        message_event(op, "comms_message_a", "SMa2", "SMS", "delivered", None),
        message_event(op, "comms_message_b", "SMb1", "SMS", "sent", None),
    ];
    assert_eq!(post(&app, &events).await, 200);

    let (recs, views) = read_until_current(&app, &bootstrap, &[op.to_owned()]).await;
    let newest = newest_by_key(&recs);
    let rec = newest.get(op).expect("a record for the operation");
    assert_eq!(as_query_view(&rec.value), views[0]);
    assert_eq!(rec.value["kind"], "messages");
    assert_eq!(rec.value["stats"]["attempts"], 3);
    assert_eq!(rec.value["stats"]["delivered"], 1);
    assert!(rec.value["version"].as_u64().unwrap() >= 1);
    assert_eq!(
        rec.headers,
        vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("tally-kind".to_owned(), "messages".to_owned())
        ]
    );
    validate_against_schema(
        "kafka-record.schema.json",
        &recs.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
    );
    let m = app.metrics().await;
    assert!(
        m.get(
            "tally_kafka_records_delivered_total",
            &[("topic", "operations")]
        ) >= Some(1.0)
    );
    assert_eq!(m.get("tally_kafka_enabled", &[]), Some(1.0));
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn a_burst_of_callbacks_for_one_operation_becomes_a_handful_of_records() {
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(&bootstrap, &[]).await;
    let op = "comms_operation_burst";
    // 2,000 callbacks, each a real change (a new message, then its delivery), 8 at a time.
    let callbacks: Vec<Value> = (0..1000)
        .flat_map(|i| {
            let (msg, sid) = (format!("comms_message_{i:05}"), format!("SM{i:05}"));
            [
                message_event(op, &msg, &sid, "SMS", "queued", None),
                message_event(op, &msg, &sid, "SMS", "delivered", None),
            ]
        })
        .collect();
    let started = std::time::Instant::now();
    for chunk in callbacks.chunks(8) {
        let posts = chunk.iter().map(|ev| post(&app, std::slice::from_ref(ev)));
        for code in futures_util::future::join_all(posts).await {
            assert_eq!(code, 200);
        }
    }
    let elapsed = started.elapsed();
    let (recs, views) = read_until_current(&app, &bootstrap, &[op.to_owned()]).await;
    assert_eq!(views[0]["stats"]["delivered"], 1000);
    let n = recs.iter().filter(|r| r.key == op).count();
    eprintln!(
        "burst: {} callbacks in {elapsed:?} became {n} records ({:.4} records per callback)",
        callbacks.len(),
        n as f64 / callbacks.len() as f64
    );
    // At most one record per flush interval (100 ms) while the burst lasts, plus the last.
    let bound = (elapsed.as_millis() / 100) as usize + 5;
    assert!(
        n <= bound,
        "{n} records for {} callbacks over {elapsed:?}",
        callbacks.len()
    );
    assert!(n < callbacks.len() / 10);
    assert!(version_regressions(&recs).is_empty());
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn shuffled_duplicated_traffic_keeps_versions_in_order_and_ends_at_the_query_view() {
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(&bootstrap, &[("TALLY_KAFKA__FLUSH_INTERVAL", "20ms")]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (events, ids) = random_traffic(&mut rng, "api", 40, 6);
    for chunk in events.chunks(16) {
        let posts = chunk.chunks(2).map(|c| post(&app, c));
        for code in futures_util::future::join_all(posts).await {
            assert_eq!(code, 200);
        }
    }
    let (recs, views) = read_until_current(&app, &bootstrap, &ids).await;
    assert_each_newest_record_is_its_view(&recs, &ids, &views);
    assert_eq!(version_regressions(&recs), Vec::<String>::new());
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn shutdown_publishes_every_changed_operation_before_it_returns() {
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    // A flush interval far beyond the test: only the shutdown publish can deliver these.
    let app = spawn_publishing(&bootstrap, &[("TALLY_KAFKA__FLUSH_INTERVAL", "1h")]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (events, ids) = random_traffic(&mut rng, "stop", 25, 3);
    for chunk in events.chunks(20) {
        assert_eq!(post(&app, chunk).await, 200);
    }
    let mut views = Vec::new();
    for id in &ids {
        views.push(app.operation_json("Messages", id).await);
    }
    // The first tick of the interval fires at once, before the topic is checked; give the
    // topic set-up a moment so the final publish has somewhere to go.
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    app.stop().await.expect("clean shutdown");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let all = ids.len();
    let recs = read(&bootstrap, TOPIC, move |r| newest_by_key(r).len() >= all).await;
    let newest = newest_by_key(&recs);
    for (id, view) in ids.iter().zip(&views) {
        let rec = newest
            .get(id)
            .unwrap_or_else(|| panic!("{id} not published at shutdown"));
        assert_eq!(as_query_view(&rec.value), *view, "{id}");
    }
}

#[actix_web::test]
async fn a_broker_outage_loses_nothing_and_callbacks_keep_succeeding() {
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(&bootstrap, &[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (events, ids) = random_traffic(&mut rng, "out", 30, 4);
    let (before, after) = events.split_at(events.len() / 3);
    for chunk in before.chunks(10) {
        assert_eq!(post(&app, chunk).await, 200);
    }
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    mock.broker_down(1).expect("broker down");
    for chunk in after.chunks(10) {
        assert_eq!(
            post(&app, chunk).await,
            200,
            "callbacks must not wait for Kafka"
        );
    }
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let resp = app.get("/healthz/details").await;
    assert_eq!(resp.status, StatusCode::OK);
    let details = resp.json();
    assert!(
        details["kafka"]["dirtyOperations"].as_u64().unwrap() > 0,
        "{details}"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "Kafka never decides readiness"
    );
    let m = app.metrics().await;
    assert!(m.get("tally_kafka_dirty_operations", &[]) > Some(0.0));
    assert!(m.get("tally_kafka_oldest_unpublished_seconds", &[]) > Some(0.5));
    mock.broker_up(1).expect("broker up");
    let (recs, views) = read_until_current(&app, &bootstrap, &ids).await;
    assert_each_newest_record_is_its_view(&recs, &ids, &views);
    assert_eq!(version_regressions(&recs), Vec::<String>::new());
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn without_a_reachable_broker_tally_takes_callbacks_and_says_why_in_health_details() {
    // Nothing listens on port 1 of loopback.
    let app = spawn_publishing(
        "127.0.0.1:1",
        &[
            ("TALLY_KAFKA__TOPIC_SETUP_RETRY", "1s"),
            ("TALLY_KAFKA__SHUTDOWN_TIMEOUT", "500ms"),
        ],
    )
    .await;
    let op = "comms_operation_nobroker";
    let ev = message_event(op, "comms_message_a", "SM1", "SMS", "sent", None);
    assert_eq!(post(&app, &[ev]).await, 200);
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    let details = app.get("/healthz/details").await.json();
    let kafka = &details["kafka"];
    assert_eq!(kafka["enabled"], true);
    assert_eq!(kafka["brokerUp"], false);
    assert_eq!(kafka["topics"][0]["ready"], false);
    assert!(
        kafka["topics"][0]["problem"].as_str().is_some(),
        "{details}"
    );
    assert_eq!(kafka["dirtyOperations"], 1);
    let m = app.metrics().await;
    assert_eq!(m.get("tally_kafka_broker_up", &[]), Some(0.0));
    assert_eq!(
        m.get("tally_kafka_topic_ready", &[("topic", "operations")]),
        Some(0.0)
    );
    let started = Instant::now();
    app.stop().await.expect("clean shutdown");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[actix_web::test]
async fn with_no_brokers_publishing_is_off_and_health_details_say_so() {
    let app = spawn_app_with(&[]).await;
    let ev = message_event(
        "comms_operation_x",
        "comms_message_a",
        "SM1",
        "SMS",
        "sent",
        None,
    );
    assert_eq!(post(&app, &[ev]).await, 200);
    let details = app.get("/healthz/details").await.json();
    assert_eq!(details["kafka"], serde_json::json!({"enabled": false}));
    assert_eq!(
        app.metrics().await.get("tally_kafka_enabled", &[]),
        Some(0.0)
    );
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn per_resource_changes_go_to_the_resources_topic_keyed_by_operation() {
    let mock = mock_cluster();
    mock.create_topic("tally.resources", 3, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(
        &bootstrap,
        &[("TALLY_KAFKA__RESOURCES_TOPIC", "tally.resources")],
    )
    .await;
    let op = "comms_operation_res";
    let events = vec![
        message_event(op, "comms_message_a", "SMa1", "RCS", "failed", Some(30008)),
        message_event(op, "comms_message_a", "SMa2", "SMS", "delivered", None),
        message_event(
            op,
            "comms_message_b",
            "SMb1",
            "WHATSAPP",
            "undelivered",
            Some(63016),
        ),
    ];
    assert_eq!(post(&app, &events).await, 200);
    let recs = read(&bootstrap, "tally.resources", |r| {
        let ids: std::collections::HashSet<_> = r.iter().map(|x| x.value["id"].clone()).collect();
        ids.len() >= 2
    })
    .await;
    assert!(recs.iter().all(|r| r.key == op));
    let last = |id: &str| {
        recs.iter()
            .rev()
            .find(|r| r.value["id"] == id)
            .unwrap_or_else(|| panic!("no record for {id}"))
            .value
            .clone()
    };
    let a = last("comms_message_a");
    assert_eq!(a["status"], "DELIVERED");
    assert_eq!(a["attempts"].as_array().unwrap().len(), 2);
    let b = last("comms_message_b");
    assert_eq!(b["status"], "UNDELIVERED");
    assert_eq!(b["errorCode"], 63016);
    validate_against_schema(
        "kafka-resource-record.schema.json",
        &recs.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
    );
    // The partition matches the operation record's: same key, same partitioner and count.
    let ops = read(&bootstrap, TOPIC, move |r| r.iter().any(|x| x.key == op)).await;
    let op_partition = ops.iter().find(|r| r.key == op).unwrap().partition;
    assert!(recs.iter().all(|r| r.partition == op_partition));
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn a_bad_librdkafka_property_stops_start_up_with_librdkafka_s_own_message() {
    let env = [
        ("TALLY_HTTP__LISTEN", "127.0.0.1:0"),
        ("TALLY_KAFKA__BROKERS", "127.0.0.1:9092"),
        ("TALLY_KAFKA__LIBRDKAFKA__NO_SUCH_PROPERTY", "1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let settings = tally::config::Settings::load(None, env).expect("settings load");
    let err = match tally::startup::Application::build(&settings) {
        Ok(_) => panic!("tally started with an unknown librdkafka property"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("no.such.property"), "{err}");
}

#[actix_web::test]
async fn after_a_restart_every_operation_recovered_from_the_journal_is_published_again() {
    let dir = std::env::temp_dir().join(format!("tally-kafka-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_str = dir.to_str().expect("utf-8 temp dir").to_owned();
    let op = "comms_operation_recovered";
    {
        // First life: no broker at all; the callback is made durable and applied.
        let app = spawn_app_with(&[("TALLY_STORAGE__DIR", dir_str.as_str())]).await;
        let ev = message_event(op, "comms_message_a", "SM1", "SMS", "delivered", None);
        assert_eq!(post(&app, &[ev]).await, 200);
        app.stop().await.expect("clean shutdown");
    }
    // Second life: publishing on; what the journal holds goes to the topic without new callbacks.
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(&bootstrap, &[("TALLY_STORAGE__DIR", dir_str.as_str())]).await;
    let (recs, views) = read_until_current(&app, &bootstrap, &[op.to_owned()]).await;
    assert_eq!(as_query_view(&newest_by_key(&recs)[op].value), views[0]);
    app.stop().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The restart counter by reason, summed over every reason when `reason` is `None`.
fn restarts(m: &crate::support::scrape::Scrape, reason: Option<&str>) -> f64 {
    match reason {
        Some(r) => m.sum("tally_kafka_producer_restarts_total", &[("reason", r)]),
        None => m.sum("tally_kafka_producer_restarts_total", &[]),
    }
}

#[actix_web::test]
async fn a_producer_the_broker_refuses_is_replaced_and_every_operation_still_reaches_the_topic() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(&bootstrap, &[("TALLY_KAFKA__FLUSH_INTERVAL", "20ms")]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let (events, ids) = random_traffic(&mut rng, "fence", 20, 3);
    // The broker answers the next produce requests as a broker that lost the producer's epoch
    // would: the same producer cannot get past that.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH; 4],
    );
    for chunk in events.chunks(10) {
        assert_eq!(post(&app, chunk).await, 200);
    }
    let (recs, views) = read_until_current(&app, &bootstrap, &ids).await;
    assert_each_newest_record_is_its_view(&recs, &ids, &views);
    assert_eq!(version_regressions(&recs), Vec::<String>::new());
    let m = app.metrics().await;
    assert!(
        m.sum(
            "tally_kafka_records_failed_total",
            &[("reason", "InvalidProducerEpoch")]
        ) > 0.0,
        "the refusals reached tally"
    );
    assert!(restarts(&m, None) >= 1.0, "the producer was replaced");
    let details = app.get("/healthz/details").await.json();
    assert!(
        details["kafka"]["producerReplacements"].as_u64() >= Some(1),
        "{details}"
    );
    assert!(
        details["kafka"]["lastProducerReplacement"]["reason"]
            .as_str()
            .is_some(),
        "{details}"
    );
    app.stop().await.expect("clean shutdown");
}

#[actix_web::test]
async fn a_producer_without_acknowledgements_while_connected_is_replaced_after_the_stall_timeout() {
    let mock = mock_cluster();
    let bootstrap = mock.bootstrap_servers();
    let app = spawn_publishing(
        &bootstrap,
        &[
            ("TALLY_KAFKA__FLUSH_INTERVAL", "20ms"),
            ("TALLY_KAFKA__STALL_TIMEOUT", "1s"),
        ],
    )
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let (events, ids) = random_traffic(&mut rng, "stall", 20, 3);
    let (first, rest) = events.split_at(events.len() / 2);
    for chunk in first.chunks(10) {
        assert_eq!(post(&app, chunk).await, 200);
    }
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    // Connected, but the broker answers nothing for a long while.
    mock.broker_round_trip_time(1, Duration::from_secs(30))
        .expect("rtt");
    for chunk in rest.chunks(10) {
        assert_eq!(post(&app, chunk).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = app.metrics().await;
        if restarts(&m, Some("stalled")) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement for a stall; restarts by reason: {:?}",
            m.samples
                .iter()
                .filter(|s| s.name == "tally_kafka_producer_restarts_total")
                .map(|s| (s.labels.get("reason").cloned(), s.value))
                .collect::<Vec<_>>()
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    mock.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    let (recs, views) = read_until_current(&app, &bootstrap, &ids).await;
    assert_each_newest_record_is_its_view(&recs, &ids, &views);
    app.stop().await.expect("clean shutdown");
}
