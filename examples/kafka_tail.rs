//! Print the records of tally's topic as JSON lines: `{"key","partition","offset","headers","value"}`.
//!
//! ```sh
//! cargo run --example kafka_tail -- 127.0.0.1:9092 tally.operations          # from the start
//! cargo run --example kafka_tail -- 127.0.0.1:9092 tally.operations --follow # then keep reading
//! ```
//!
//! It reads every partition from the beginning without a consumer group (nothing is committed),
//! and stops once it has caught up unless `--follow` is given. Works against any Kafka-compatible
//! broker; it is the librdkafka consumer tally's own tests use.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(brokers), Some(topic)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kafka_tail BROKERS TOPIC [--follow]");
        std::process::exit(2);
    };
    let follow = args.iter().any(|a| a == "--follow");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tally-kafka-tail")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or("topic not in metadata")?;
    if let Some(e) = t.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(e);
        return Err(format!("topic {topic}: {code}").into());
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        ends.push((p.id(), high));
    }
    consumer.assign(&tpl)?;
    let mut read: std::collections::HashMap<i32, i64> = ends.iter().map(|(p, _)| (*p, 0)).collect();
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let headers: serde_json::Map<String, serde_json::Value> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                let v = String::from_utf8_lossy(x.value.unwrap_or_default());
                                (x.key.to_owned(), serde_json::Value::String(v.into_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let value: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or(serde_json::Value::Null);
                println!(
                    "{}",
                    serde_json::json!({
                        "key": String::from_utf8_lossy(m.key().unwrap_or_default()),
                        "partition": m.partition(),
                        "offset": m.offset(),
                        "headers": headers,
                        "value": value,
                    })
                );
                read.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => eprintln!("kafka_tail: {e}"),
            None => {}
        }
        let caught_up = ends
            .iter()
            .all(|(p, high)| read.get(p).copied().unwrap_or(0) >= *high);
        if !follow && (caught_up || idle_since.elapsed() > Duration::from_secs(10)) {
            return Ok(());
        }
    }
}
