//! Micro-benchmarks of the hot functions, so a regression shows at the function where it
//! happens: signature verification (form and JSON), CloudEvent parsing (a batch of 100), form
//! parsing, framing a journal record, and applying an event. `cargo bench --bench micro`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally::aggregator::{Aggregator, Limits};
use tally::event::Kind;
use tally::ingest::{decode_events, decode_form};
use tally::journal::{frame_record, Record};
use tally::signature::Verifier;
use tally::simulate::{Config, Mix, Scenario};

const TOKEN: &str = "bench-auth-token";
const BASE: &str = "http://127.0.0.1:8080";
const NOW: u64 = 1_767_312_000_000;

fn scenario(mix: Mix) -> Scenario {
    Scenario::generate(&Config {
        operations: 20,
        recipients: 100,
        mix,
        kinds: vec![Kind::Messages],
        seed: 3,
        ..Config::default()
    })
}

fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    let q = path_and_query.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn signatures(c: &mut Criterion) {
    let v = Verifier::new(&[TOKEN]);
    let s = scenario(Mix::Both);
    let reqs = s.requests(100);
    let form = reqs.iter().find(|r| !r.params.is_empty()).expect("a form");
    let (pq, sig) = form.sign(BASE, TOKEN);
    let url = format!("{BASE}{pq}");
    let params: Vec<(String, String)> = form_urlencoded::parse(&form.body).into_owned().collect();
    let mut g = c.benchmark_group("signature");
    g.bench_function("verify_form", |b| {
        b.iter(|| v.verify_form(black_box(&url), black_box(&params), Some(sig.as_bytes())))
    });
    let batch = reqs
        .iter()
        .find(|r| r.params.is_empty() && r.events == 100)
        .expect("a full batch");
    let (pq, sig) = batch.sign(BASE, TOKEN);
    let url = format!("{BASE}{pq}");
    g.throughput(Throughput::Bytes(batch.body.len() as u64));
    g.bench_function("verify_json_batch_of_100", |b| {
        b.iter(|| {
            v.verify_json(
                black_box(&url),
                black_box(&batch.body),
                Some(sig.as_bytes()),
            )
        })
    });
    g.finish();
}

/// `n` classic Messaging events (camelCase `data`, linked through the operation-info tag), the
/// other shape Twilio sends to an Event Streams sink.
fn classic_batch(n: usize) -> Vec<u8> {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "specversion": "1.0", "type": "com.twilio.messaging.message.delivered",
                "source": "/2010-04-01/Accounts/AC1/Messages/SM1.json", "id": format!("EZ{i}"),
                "time": "2026-01-02T00:00:00.000Z", "datacontenttype": "application/json",
                "data": {
                    "accountSid": "AC0123456789abcdef0123456789abcdef",
                    "messageSid": format!("SM{i:032}"), "messageStatus": "DELIVERED",
                    "from": "+15017122661", "to": "whatsapp:+15558675310", "errorCode": null,
                    "tags": {"Twilio.operation_info":
                        format!("comms_operation_{i:026},comms_message_{i:026},1")},
                },
            })
        })
        .collect();
    serde_json::to_vec(&events).expect("serialises")
}

fn parsing(c: &mut Criterion) {
    let s = scenario(Mix::Both);
    let reqs = s.requests(100);
    let batch = reqs
        .iter()
        .find(|r| r.params.is_empty() && r.events == 100)
        .expect("a full batch");
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("decode_events_batch_of_100", |b| {
        b.iter(|| decode_events(black_box(&batch.body), NOW))
    });
    let classic = classic_batch(100);
    g.bench_function("decode_events_classic_batch_of_100", |b| {
        b.iter(|| decode_events(black_box(&classic), NOW))
    });
    let form = reqs.iter().find(|r| !r.params.is_empty()).expect("a form");
    let query = query_pairs(&form.path_and_query);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_form_with_body_parse", |b| {
        b.iter(|| {
            let params: Vec<(String, String)> = form_urlencoded::parse(black_box(&form.body))
                .into_owned()
                .collect();
            decode_form(&params, &query, NOW)
        })
    });
    g.finish();
}

fn journalling(c: &mut Criterion) {
    let s = scenario(Mix::Events);
    let reqs = s.requests(100);
    let batch = reqs.iter().find(|r| r.events == 100).expect("a full batch");
    let record = Record {
        received_ms: NOW,
        events: decode_events(&batch.body, NOW)
            .expect("json")
            .into_iter()
            .flatten()
            .collect(),
    };
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(record.events.len() as u64));
    g.bench_function("frame_record_batch_of_100", |b| {
        b.iter(|| frame_record(black_box(&record)))
    });
    g.finish();
}

fn applying(c: &mut Criterion) {
    let s = scenario(Mix::Events);
    let events: Vec<_> = s
        .requests(100)
        .iter()
        .flat_map(|r| decode_events(&r.body, NOW).expect("json"))
        .flatten()
        .collect();
    let mut g = c.benchmark_group("aggregator");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply_fresh_events", |b| {
        b.iter_batched(
            || Aggregator::new(Limits::default()),
            |agg| {
                for e in &events {
                    agg.apply(e, NOW);
                }
                agg
            },
            BatchSize::LargeInput,
        )
    });
    let warm = Aggregator::new(Limits::default());
    for e in &events {
        warm.apply(e, NOW);
    }
    g.bench_function("apply_duplicate_events", |b| {
        b.iter(|| {
            for e in &events {
                warm.apply(black_box(e), NOW);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, signatures, parsing, journalling, applying);
criterion_main!(benches);
