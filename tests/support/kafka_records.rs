//! Kafka test support shared by `tests/api/kafka.rs` (mock cluster) and `tests/kafka_e2e.rs`
//! (a real broker): Comms API traffic with fallbacks, a consumer that reads a whole topic, the
//! per-key checks, and the JSON Schema check with Python's `jsonschema`.

use rand::seq::SliceRandom;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A Comms API message event.
pub fn message_event(
    op: &str,
    msg: &str,
    sid: &str,
    channel: &str,
    status: &str,
    error_code: Option<u32>,
) -> Value {
    json!({
        "specversion": "1.0",
        "type": format!("com.twilio.comms-api.message.{status}"),
        "source": "/v1/Messages",
        "id": format!("EV{}", rand::thread_rng().gen::<u64>()),
        "datacontenttype": "application/json",
        "time": "2025-01-01T00:00:00.000Z",
        "data": {
            "operation_id": op, "message_id": msg, "downstream_id": sid,
            "error_code": error_code,
            "to": {"address": "+15558675310", "channel": channel},
            "from": {"address": "+15017122661", "channel": channel},
        }
    })
}

/// An operation event (`scheduled`, `processing`, `completed`).
pub fn operation_event(op: &str, phase: &str) -> Value {
    json!({
        "specversion": "1.0",
        "type": format!("com.twilio.comms-api.operation.{phase}"),
        "source": "/v1/Messages/Operations",
        "id": format!("EV{}", rand::thread_rng().gen::<u64>()),
        "time": "2025-01-01T00:00:00.000Z",
        "data": {"operation_id": op}
    })
}

/// Random operations with fallbacks: each message is tried on RCS and, for some, falls back to
/// SMS; statuses progress to an end (delivered, read, undelivered, failed). Returns the events
/// shuffled, with about a fifth sent twice, and the operation ids.
pub fn random_traffic(
    rng: &mut impl Rng,
    prefix: &str,
    ops: usize,
    max_messages: usize,
) -> (Vec<Value>, Vec<String>) {
    let mut events = Vec::new();
    let mut ids = Vec::new();
    for o in 0..ops {
        let op = format!("comms_operation_{prefix}{o:05}");
        ids.push(op.clone());
        events.push(operation_event(&op, "processing"));
        for m in 0..rng.gen_range(1..=max_messages) {
            let msg = format!("comms_message_{prefix}{o:05}x{m:03}");
            let rcs = format!("SM{prefix}{o:05}{m:03}r");
            let fallback = rng.gen_bool(0.5);
            events.push(message_event(&op, &msg, &rcs, "RCS", "queued", None));
            if fallback {
                events.push(message_event(&op, &msg, &rcs, "RCS", "failed", Some(30008)));
                let sms = format!("SM{prefix}{o:05}{m:03}s");
                events.push(message_event(&op, &msg, &sms, "SMS", "queued", None));
                events.push(message_event(&op, &msg, &sms, "SMS", "sent", None));
                let end = ["delivered", "undelivered", "failed"][rng.gen_range(0..3)];
                let code = (end != "delivered").then_some(30003);
                events.push(message_event(&op, &msg, &sms, "SMS", end, code));
            } else {
                events.push(message_event(&op, &msg, &rcs, "RCS", "sent", None));
                let end = ["delivered", "read"][rng.gen_range(0..2)];
                events.push(message_event(&op, &msg, &rcs, "RCS", end, None));
            }
        }
        if rng.gen_bool(0.5) {
            events.push(operation_event(&op, "completed"));
        }
    }
    let dups: Vec<Value> = events
        .iter()
        .filter(|_| rng.gen_bool(0.2))
        .cloned()
        .collect();
    events.extend(dups);
    events.shuffle(rng);
    (events, ids)
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Value,
    /// The payload as it was read (a record that is not JSON has `value` null).
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Broker timestamp (ms), when given.
    pub timestamp_ms: Option<i64>,
}

/// Read `topic` from the beginning until `done(records)` holds or `timeout` passes; every record
/// read. Blocking: call it from `spawn_blocking`.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Rec]) -> bool,
) -> Vec<Rec> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tally-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md {
            if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && !t.partitions().is_empty() {
                    break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
                }
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: Vec<Rec> = Vec::new();
    let mut checked_at = 0;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_owned(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or(Value::Null),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp_ms: m.timestamp().to_millis(),
                });
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {
                if out.len() != checked_at || out.is_empty() {
                    checked_at = out.len();
                    if done(&out) {
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// The newest record of each key, by partition order.
pub fn newest_by_key(recs: &[Rec]) -> HashMap<String, Rec> {
    let mut sorted: Vec<&Rec> = recs.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut out = HashMap::new();
    for r in sorted {
        out.insert(r.key.clone(), r.clone());
    }
    out
}

/// Per key, the versions in partition order must never decrease; returns the offenders.
pub fn version_regressions(recs: &[Rec]) -> Vec<String> {
    let mut sorted: Vec<&Rec> = recs.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<&str, (i32, u64)> = HashMap::new();
    let mut bad = Vec::new();
    for r in sorted {
        let v = r.value["version"].as_u64().unwrap_or(0);
        if let Some((p, prev)) = last.insert(&r.key, (r.partition, v)) {
            if p != r.partition {
                bad.push(format!("{}: in partitions {p} and {}", r.key, r.partition));
            } else if v < prev {
                bad.push(format!("{}: version {prev} then {v}", r.key));
            }
        }
    }
    bad
}

/// The record's fields that the query API shows too, for comparison.
pub fn as_query_view(record_value: &Value) -> Value {
    json!({
        "id": record_value["id"],
        "status": record_value["status"],
        "stats": record_value["stats"],
        "createdAt": record_value["createdAt"],
        "updatedAt": record_value["updatedAt"],
    })
}

fn python() -> String {
    std::env::var("TALLY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Validate record values against a schema in docs/ with Python's `jsonschema`; panics with
/// every error found.
pub fn validate_against_schema(schema_file: &str, values: &[Value]) {
    let python = python();
    let probe = std::process::Command::new(&python)
        .args(["-c", "import jsonschema"])
        .output();
    let ok = probe.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the record schema is checked with Python's jsonschema, but `{python} -c 'import jsonschema'` failed: {:?}\n\
         Install it (`{python} -m pip install jsonschema`) or point TALLY_TEST_PYTHON at an interpreter that has it \
         (scripts/kafka-e2e makes such a venv).",
        probe.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    let dir = std::env::temp_dir().join(format!(
        "tally-schema-{}-{}",
        std::process::id(),
        rand::thread_rng().gen::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("records.json");
    std::fs::write(&file, serde_json::to_vec(values).expect("json")).expect("write");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(&python)
        .arg(format!("{root}/tests/support/validate_records.py"))
        .arg(format!("{root}/docs/{schema_file}"))
        .arg(&file)
        .output()
        .expect("run validate_records.py");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "records do not match docs/{schema_file}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
