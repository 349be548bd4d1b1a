//! Cluster mode on the real binary against a real Kafka-compatible broker (tansu, on loopback):
//! two ingest and three aggregate processes take a seeded, shuffled stream with duplicates and
//! classic callbacks that name no operation, through `kill -9` of an aggregate, `kill -9` of the
//! process that took over while it restores, `SIGSTOP` of another past the session timeout, and
//! `kill -9` of an ingest. Every acknowledged callback must be reflected: the query API on every
//! process and the newest record per key on the operations topic equal a fold of every event in
//! one process, and the last record of each key carries its highest version.
//!
//! Needs tansu: `TALLY_TEST_TANSU` names the binary (scripts/kafka-e2e installs it); ignored in
//! the plain test run, run by scripts/kafka-e2e.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::kafka_records::{newest_by_key, read_topic};
use support::process::Tally;
use support::{free_port, http, scratch};
use tally::cluster::joins::{joined, link_of, Link};
use tally::cluster::{partition_of, routing_key};
use tally::event::{Event, EventBody};

const PARTITIONS: u32 = 8;
/// The URL Twilio signs: the same for both ingest processes, whatever their port.
const PUBLIC_URL: &str = "http://callbacks.test";

struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let bin = std::env::var("TALLY_TEST_TANSU").expect(
            "TALLY_TEST_TANSU names the tansu binary (scripts/kafka-e2e installs it and sets it)",
        );
        let port = free_port();
        let log = std::fs::File::create(dir.join("tansu.log")).expect("log");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One cluster process: its role, its scratch directory and the running binary.
struct Member {
    name: String,
    tally: Tally,
}

fn start(dir: &Path, broker: &Broker, name: &str, role: &str) -> Member {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let tally = Tally::launch(&dir)
        .on_port(port)
        .env(&[
            ("TALLY_CLUSTER__ROLE", role),
            ("TALLY_CLUSTER__ADVERTISE_URL", &url),
            ("TALLY_HTTP__PUBLIC_URL", PUBLIC_URL),
            ("TALLY_KAFKA__BROKERS", &broker.bootstrap()),
            ("TALLY_KAFKA__PARTITIONS", &PARTITIONS.to_string()),
            ("TALLY_KAFKA__FLUSH_INTERVAL", "50ms"),
            ("TALLY_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000"),
            ("TALLY_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "1000"),
            ("TALLY_KAFKA__LIBRDKAFKA__MESSAGE_TIMEOUT_MS", "10000"),
            ("TALLY_CLUSTER__FENCE_MARGIN", "2s"),
            ("TALLY_HTTP__WORKERS", "2"),
        ])
        .spawn();
    Member {
        name: name.to_owned(),
        tally,
    }
}

fn details(t: &Tally) -> Option<Value> {
    let r = t.try_request("GET", "/healthz/details", &[], b"").ok()?;
    (r.status == 200).then(|| r.json())
}

/// Partition → state ("restoring" or "live") of what `t` owns.
fn owned(t: &Tally) -> BTreeMap<u32, String> {
    details(t)
        .and_then(|d| d["cluster"]["owned"].as_object().cloned())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v["state"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the live members own every partition exactly once, all live.
fn wait_split(members: &[&Member], within: Duration, why: &str) -> Duration {
    let started = Instant::now();
    loop {
        let mut seen: Vec<u32> = Vec::new();
        let mut all_live = true;
        for m in members {
            for (p, state) in owned(&m.tally) {
                seen.push(p);
                all_live &= state == "live";
            }
        }
        seen.sort_unstable();
        if all_live && seen == (0..PARTITIONS).collect::<Vec<_>>() {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let view: Vec<String> = members
                .iter()
                .map(|m| format!("{}: {:?}", m.name, owned(&m.tally)))
                .collect();
            panic!(
                "broker misbehaved or tally did not settle ({why}): the group did not give every partition to exactly one live member within {within:?}: {view:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What an aggregate process logs when the broker served a record with offsets missing before
/// it (and it reads the partition again), and when those offsets stayed missing.
const HOLE_REREAD: &str = "offsets missing before it";
const HOLE_ACCEPTED: &str = "stayed missing";

/// Lines containing `needle` in the logs of every process started under `dir`.
fn count_in_logs(dir: &Path, needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("tally.stderr.log")).ok())
        .map(|log| log.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

/// The consumer group the aggregate processes join, and the topic they fold.
const GROUP: &str = "tally";
const EVENTS_TOPIC: &str = "tally.events";

/// The aggregate group's members as the broker describes them: member id, client id and the
/// partitions of the events topic in its assignment.
fn group_members(broker: &Broker) -> Result<Vec<String>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .map_err(|e| e.to_string())?;
    let list = client
        .fetch_group_list(Some(GROUP), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(list
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .map(|m| {
            let partitions = m
                .assignment()
                .map(|a| tally::cluster::owners::assigned(a, EVENTS_TOPIC))
                .unwrap_or_default();
            format!("{} ({}): {partitions:?}", m.id(), m.client_id())
        })
        .collect())
}

/// A signed request as the simulator dumped it.
struct Request {
    path: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
}

fn scenario(dir: &Path) -> Vec<Request> {
    let dump = dir.join("requests.tsv");
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "simulate",
            "--target",
            "http://127.0.0.1:9",
            "--public-url",
            PUBLIC_URL,
            "--token",
            support::TOKEN,
            "--operations",
            "24",
            "--recipients",
            "150",
            "--mix",
            "both",
            "--duplicates",
            "0.1",
            "--shuffle",
            "--seed",
            "7",
            "--quiet",
            "--dump",
        ])
        .arg(&dump)
        .output()
        .expect("simulate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&dump)
        .expect("dump")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            Request {
                path: f[0].to_owned(),
                signature: f[1].to_owned(),
                content_type: f[2].to_owned(),
                body: f[3].as_bytes().to_vec(),
            }
        })
        .collect()
}

/// The fold of every event of `requests` in one process: the state every process must show.
fn fold(requests: &[Request]) -> tally::aggregator::Aggregator {
    let agg = tally::aggregator::Aggregator::new(tally::aggregator::Limits::default());
    // A form callback's event time is its receive time: any time after the scenario's
    // CloudEvent times gives the same earliest time (`createdAt`) as the cluster's clocks.
    let now = tally::intake::now_ms();
    for (i, r) in requests.iter().enumerate() {
        for e in events_of(r, now) {
            agg.apply(&e, now + i as u64);
        }
    }
    agg
}

/// The events an ingest process makes of request `r`, received at `now`.
fn events_of(r: &Request, now: u64) -> Vec<Event> {
    let events = if r.path.starts_with("/twilio/events") {
        tally::ingest::decode_events(&r.body, now).expect("decodes")
    } else {
        let query = r.path.split_once('?').map_or("", |(_, q)| q);
        let params = tally::ingest::parse_form(&r.body).expect("form");
        let query = tally::ingest::parse_form(query.as_bytes()).expect("query");
        vec![tally::ingest::decode_form(&params, &query, now)]
    };
    events.into_iter().flatten().collect()
}

/// An event as the events topic must hold it, whatever its receive time: its body, recipient
/// address removed as the ingest processes remove it.
fn body_of(e: &Event) -> String {
    let mut e = e.clone();
    e.forget_recipient();
    format!("{:?}", e.body)
}

/// What the events topic holds against what was acknowledged, read once the stream is over
/// (every acknowledged callback is durable there by then):
///
/// - `lost`: events of acknowledged callbacks that are not on their partition (the broker lost
///   a record it acknowledged);
/// - `unjoined`: attempts naming no operation whose link is in the topic, but whose joined copy
///   is not on the operation's partition, when that is another (tally did not produce it);
/// - `gaps`: partitions whose offsets are not contiguous from the first one read.
struct Audit {
    records: usize,
    events: usize,
    lost: Vec<String>,
    unjoined: Vec<String>,
    gaps: Vec<String>,
}

fn audit_events_topic(broker: &Broker, requests: &[Request]) -> Audit {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("client");
    let high: Vec<i64> = (0..PARTITIONS as i32)
        .map(|p| {
            client
                .fetch_watermarks(EVENTS_TOPIC, p, Duration::from_secs(10))
                .map(|(_, h)| h)
                .unwrap_or_else(|e| panic!("the events topic's partition {p} has no end: {e}"))
        })
        .collect();
    let recs = read_topic(
        &broker.bootstrap(),
        EVENTS_TOPIC,
        Duration::from_secs(60),
        |recs| {
            (0..PARTITIONS as i32).all(|p| {
                high[p as usize] == 0
                    || recs
                        .iter()
                        .any(|r| r.partition == p && r.offset >= high[p as usize] - 1)
            })
        },
    );
    let mut gaps = Vec::new();
    let mut bodies: Vec<BTreeSet<String>> = vec![BTreeSet::new(); PARTITIONS as usize];
    let mut events = Vec::new();
    for p in 0..PARTITIONS as i32 {
        let mut offsets: Vec<i64> = recs
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        offsets.sort_unstable();
        let contiguous = offsets.windows(2).all(|w| w[1] == w[0] + 1);
        // Records still arrive while it is read (restores send link notices again): the end
        // read first is a lower bound.
        if !contiguous || offsets.last().map_or(0, |o| o + 1) < high[p as usize] {
            gaps.push(format!(
                "partition {p}: {} records read, offsets {:?}..={:?}, end {}",
                offsets.len(),
                offsets.first(),
                offsets.last(),
                high[p as usize]
            ));
        }
    }
    for r in &recs {
        match tally::journal::decode_record(&r.payload) {
            Ok(rec) => {
                for e in rec.events {
                    bodies[r.partition as usize].insert(body_of(&e));
                    events.push((e, r.partition as usize));
                }
            }
            Err(e) => gaps.push(format!(
                "partition {} offset {}: does not decode: {e}",
                r.partition, r.offset
            )),
        }
    }
    let at = |e: &Event| partition_of(routing_key(e), PARTITIONS) as usize;
    let mut lost = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        for e in events_of(r, 0) {
            if !bodies[at(&e)].contains(&body_of(&e)) {
                lost.push(format!(
                    "request {i}, partition {}: {}",
                    at(&e),
                    body_of(&e)
                ));
            }
        }
    }
    // Links as the topic tells them (an attempt SID or resource id to operation and resource),
    // and which partitions were told of them (a linking event on the key's own partition).
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut notices: BTreeSet<(usize, String)> = BTreeSet::new();
    for (e, p) in &events {
        if let EventBody::Attempt(a) = &e.body {
            if let Some(link) = link_of(a) {
                for k in [&a.downstream_id, &a.resource_id].into_iter().flatten() {
                    links.insert(k.clone(), link.clone());
                    if partition_of(k, PARTITIONS) as usize == *p {
                        notices.insert((*p, k.clone()));
                    }
                }
            }
        }
    }
    let mut unjoined = Vec::new();
    for (e, _) in &events {
        let EventBody::Attempt(a) = &e.body else {
            continue;
        };
        if a.operation_id.is_some() {
            continue;
        }
        let Some(link) = links.get(routing_key(e)) else {
            continue;
        };
        let j = joined(e, a, link);
        // On its operation's own partition the attempt is applied where it is, not produced.
        if at(&j) != at(e) && !bodies[at(&j)].contains(&body_of(&j)) {
            let noticed = notices.contains(&(at(e), routing_key(e).to_owned()));
            unjoined.push(format!(
                "to partition {} (link notice on partition {}: {noticed}): {}",
                at(&j),
                at(e),
                body_of(&j)
            ));
        }
    }
    unjoined.sort();
    unjoined.dedup();
    Audit {
        records: recs.len(),
        events: events.len(),
        lost,
        unjoined,
        gaps,
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events topic: {} records, {} events; {} acknowledged events not on their partition {:?}; {} joinable attempts without their joined copy {:?}; offsets not contiguous: {:?}",
            self.records,
            self.events,
            self.lost.len(),
            self.lost.iter().take(5).collect::<Vec<_>>(),
            self.unjoined.len(),
            self.unjoined.iter().take(5).collect::<Vec<_>>(),
            self.gaps
        )
    }
}

fn post(port: u16, r: &Request) -> Option<u16> {
    http::try_request(
        port,
        "POST",
        &r.path,
        &[
            ("Content-Type", &r.content_type),
            ("X-Twilio-Signature", &r.signature),
        ],
        &r.body,
    )
    .ok()
    .map(|resp| resp.status)
}

fn signal(t: &Tally, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &t.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
}

/// What the query API shows of an operation, without its time of change.
fn shown(v: &Value) -> Value {
    serde_json::json!({"status": v["status"], "stats": v["stats"], "createdAt": v["createdAt"]})
}

#[test]
#[ignore = "needs tansu (TALLY_TEST_TANSU); run by scripts/kafka-e2e"]
fn a_cluster_loses_no_acknowledged_callback_through_kills_and_a_pause() {
    let dir = scratch("cluster");
    let broker = Broker::start(&dir);
    let requests = scenario(&dir);
    let expected = fold(&requests);
    let ids: Vec<String> = expected
        .operation_ids()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();

    // The broker first: two consumers in one group split the partitions, and one takes them
    // all back when the other leaves cleanly.
    let mut ingest = vec![
        start(&dir, &broker, "ingest-1", "ingest"),
        start(&dir, &broker, "ingest-2", "ingest"),
    ];
    let mut aggs = vec![
        start(&dir, &broker, "aggregate-1", "aggregate"),
        start(&dir, &broker, "aggregate-2", "aggregate"),
    ];
    wait_split(
        &[&aggs[0], &aggs[1]],
        Duration::from_secs(60),
        "two members split",
    );
    let mut leaving = start(&dir, &broker, "aggregate-leaving", "aggregate");
    wait_split(
        &[&aggs[0], &aggs[1], &leaving],
        Duration::from_secs(60),
        "a third member joins",
    );
    leaving.tally.terminate(Duration::from_secs(15));
    wait_split(
        &[&aggs[0], &aggs[1]],
        Duration::from_secs(60),
        "the partitions of a member that left cleanly are taken back",
    );
    aggs.push(start(&dir, &broker, "aggregate-3", "aggregate"));
    wait_split(
        &[&aggs[0], &aggs[1], &aggs[2]],
        Duration::from_secs(60),
        "three members split",
    );
    for m in &ingest {
        m.tally.wait_for("/readyz", Duration::from_secs(30));
    }

    // The stream, with the faults at fixed points of it. A callback that is not acknowledged
    // (connection refused, 503) is sent again to the other ingest process, as Twilio's Event
    // Streams would; one acknowledged is never sent again.
    let n = requests.len();
    let mut refused_by_surviving_ingest = 0;
    let mut timeline = Vec::new();
    let mut restoring_killed = None;
    let mut failover = None;
    let mut stopped: Option<(usize, Instant)> = None;
    let mut ingest_dead = false;
    let started = Instant::now();
    for (i, r) in requests.iter().enumerate() {
        if i == n / 6 {
            aggs[0].tally.kill();
            timeline.push(format!("{:?} kill -9 {}", started.elapsed(), aggs[0].name));
            let killed_at = Instant::now();
            // tansu moves a dead member's partitions only when the group changes: a replacement
            // joins, as an orchestrator would start one.
            aggs[0] = start(&dir, &broker, "aggregate-1b", "aggregate");
            failover = Some(killed_at);
        }
        if restoring_killed.is_none() && failover.is_some() && i > n / 6 {
            // The process that took over while it restores.
            if let Some(k) =
                (0..aggs.len()).find(|&k| owned(&aggs[k].tally).values().any(|s| s == "restoring"))
            {
                aggs[k].tally.kill();
                timeline.push(format!(
                    "{:?} kill -9 {} while it restores",
                    started.elapsed(),
                    aggs[k].name
                ));
                let name = format!("{}-b", aggs[k].name);
                aggs[k] = start(&dir, &broker, &name, "aggregate");
                restoring_killed = Some(k);
            }
        }
        if i == n / 2 {
            let k = (restoring_killed.unwrap_or(0) + 1) % aggs.len();
            signal(&aggs[k].tally, "-STOP");
            timeline.push(format!("{:?} SIGSTOP {}", started.elapsed(), aggs[k].name));
            stopped = Some((k, Instant::now()));
        }
        if let Some((k, at)) = stopped {
            // Past the session timeout (6 s).
            if at.elapsed() > Duration::from_secs(8) {
                signal(&aggs[k].tally, "-CONT");
                timeline.push(format!("{:?} SIGCONT {}", started.elapsed(), aggs[k].name));
                stopped = None;
            }
        }
        if i == 2 * n / 3 {
            ingest[0].tally.kill();
            ingest_dead = true;
            timeline.push(format!(
                "{:?} kill -9 {}",
                started.elapsed(),
                ingest[0].name
            ));
        }
        let mut k = i % 2;
        loop {
            if ingest_dead && k == 0 {
                k = 1;
            }
            match post(ingest[k].tally.port, r) {
                Some(200) => break,
                other => {
                    if !(ingest_dead && k == 0) && k == 1 {
                        refused_by_surviving_ingest += 1;
                        eprintln!("ingest-2 answered {other:?} to request {i}");
                    }
                    k = 1 - k;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some((k, _)) = stopped {
        signal(&aggs[k].tally, "-CONT");
    }
    eprintln!(
        "FIGURE cluster: {n} callbacks sent in {:?}; faults: {timeline:#?}",
        started.elapsed()
    );
    assert!(
        restoring_killed.is_some(),
        "no process was seen restoring after the first kill, so none was killed while restoring: {timeline:?}"
    );
    assert_eq!(
        refused_by_surviving_ingest, 0,
        "the surviving ingest process must take every callback while aggregate processes die"
    );

    // Every process, ingest included (it forwards), answers every operation as the fold does.
    let members: Vec<&Member> = aggs.iter().chain(ingest.iter().skip(1)).collect();
    let settle = Instant::now();
    let mut last = String::new();
    let agree = loop {
        let differing: Vec<String> = members
            .iter()
            .flat_map(|m| disagreements(m, &ids, &expected))
            .collect();
        if differing.is_empty() {
            break settle.elapsed();
        }
        last = format!("{} differ, first: {}", differing.len(), differing[0]);
        if settle.elapsed() >= Duration::from_secs(90) {
            // What each aggregate process owned then, partition by partition, to tell a
            // partition that found no owner (the broker's rebalance) from one stuck restoring.
            let owners: Vec<(&str, BTreeMap<u32, String>)> = aggs
                .iter()
                .map(|m| (m.name.as_str(), owned(&m.tally)))
                .collect();
            let folded: BTreeSet<u32> =
                owners.iter().flat_map(|(_, o)| o.keys().copied()).collect();
            let orphans: Vec<u32> = (0..PARTITIONS).filter(|p| !folded.contains(p)).collect();
            // Partitions no running process folds: each process follows its client's assignment,
            // so the group, which the broker coordinates, gave them to no running member.
            // And what the events topic holds: a record the broker acknowledged and lost is the
            // broker's fault; a joined attempt never produced, or produced and not folded, is
            // tally's.
            let audit = audit_events_topic(&broker, &requests);
            let gaps_accepted = count_in_logs(&dir, HOLE_ACCEPTED);
            let blame = if gaps_accepted > 0 {
                format!("broker misbehaved: it served records with offsets missing before them, and {gaps_accepted} such holes stayed missing when the partition was read again from its start; ")
            } else if !orphans.is_empty() {
                format!(
                    "broker misbehaved: partitions {orphans:?} were given to no running process for 90 s after the last fault (the group as the broker describes it: {:?}); ",
                    group_members(&broker)
                )
            } else if !audit.lost.is_empty() || !audit.gaps.is_empty() {
                "broker misbehaved: the events topic lacks records it acknowledged; ".to_owned()
            } else if !audit.unjoined.is_empty() {
                "tally did not produce every joined attempt; ".to_owned()
            } else {
                "every event and joined attempt is in the events topic, so an owner did not fold one; ".to_owned()
            };
            // Each owner's position against the partition's end, as it reports them.
            let positions: Vec<(&str, Value)> = aggs
                .iter()
                .map(|m| {
                    let d = details(&m.tally).unwrap_or_default();
                    (m.name.as_str(), d["cluster"]["owned"].clone())
                })
                .collect();
            panic!(
                "{blame}the processes never agreed with the fold: {last}; faults: {timeline:?}; owned: {owners:?}; {audit}; positions: {positions:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "FIGURE cluster: every process agreed with the fold {agree:?} after the stream ({last})"
    );
    // Every acknowledged callback is in the events topic, and every attempt that named no
    // operation was joined to its operation's partition.
    let audit = audit_events_topic(&broker, &requests);
    eprintln!("FIGURE cluster: {audit}");
    eprintln!(
        "FIGURE cluster: records served with offsets missing before them, read again: {}",
        count_in_logs(&dir, HOLE_REREAD)
    );
    assert!(
        audit.lost.is_empty() && audit.gaps.is_empty(),
        "broker misbehaved: {audit}"
    );
    assert!(audit.unjoined.is_empty(), "{audit}");
    // Lists across operations gather every owner's share, page by page, on any process. A
    // partition a late rebalance moved may still be restoring on the process asked: the list
    // then answers 503 to be retried (docs/cluster.md), so the listing starts over, within the
    // same bound as the agreement above.
    for m in &members {
        let first = "/v1/Messages/Operations?pageSize=7".to_owned();
        let mut listed = Vec::new();
        let mut path = first.clone();
        loop {
            let (status, page) = m.tally.get_json(&path);
            if status == 503 && settle.elapsed() < Duration::from_secs(90) {
                listed.clear();
                path = first.clone();
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            assert_eq!(status, 200, "{} lists: {page}", m.name);
            for op in page["operations"].as_array().expect("operations") {
                listed.push(op["id"].as_str().expect("id").to_owned());
            }
            match page["pagination"]["next"].as_str() {
                Some(next) => path = next.trim_start_matches(&m.tally.base()).to_owned(),
                None => break,
            }
        }
        let mut want = ids.clone();
        want.sort();
        assert_eq!(
            listed, want,
            "{} lists every operation once, in id order",
            m.name
        );
        // A resource by its own id, from whichever owner has it.
        let res = expected
            .resources(&ids[0], &Default::default(), None, 1)
            .expect("resources");
        let (status, body) = m
            .tally
            .get_json(&format!("/v1/Messages/{}", res[0].resource.id));
        assert_eq!(status, 200, "{} finds a resource by id: {body}", m.name);
    }
    let failed_over = failover.map(|t| t.elapsed());
    eprintln!(
        "FIGURE cluster: first kill to every partition answering again: at most {failed_over:?}"
    );

    // The operations topic: the newest record of each key is the fold's state, and carries the
    // highest version published for that key.
    let want: HashMap<String, Value> = ids
        .iter()
        .map(|id| {
            let view = expected.operation(id).expect("folded");
            let rec = tally::publisher::record(&view);
            let v: Value = serde_json::from_slice(&rec.value).expect("json");
            (id.clone(), without_update(&v))
        })
        .collect();
    let bootstrap = broker.bootstrap();
    let recs = read_topic(
        &bootstrap,
        "tally.operations",
        Duration::from_secs(120),
        |recs| {
            let newest = newest_by_key(recs);
            want.iter().all(|(id, v)| {
                newest
                    .get(id)
                    .is_some_and(|r| &without_update(&r.value) == v)
            })
        },
    );
    let newest = newest_by_key(&recs);
    for (id, v) in &want {
        let got = newest.get(id).map(|r| without_update(&r.value));
        assert_eq!(got.as_ref(), Some(v), "newest record of {id}");
        let highest = recs
            .iter()
            .filter(|r| &r.key == id)
            .filter_map(|r| r.value["version"].as_u64())
            .max();
        assert_eq!(
            newest[id].value["version"].as_u64(),
            highest,
            "the last record of {id} carries its highest version"
        );
    }
    // The joins were exercised: attempts that named no operation waited for their link.
    let held: f64 = aggs
        .iter()
        .map(|m| {
            m.tally
                .metrics()
                .sum("tally_events_applied_total", &[("kind", "unlinked")])
        })
        .sum();
    eprintln!("FIGURE cluster: {held} attempt events waited for their link on the current members");
    let distinct: BTreeSet<u32> = aggs
        .iter()
        .flat_map(|m| owned(&m.tally).into_keys())
        .collect();
    assert_eq!(
        distinct.len() as u32,
        PARTITIONS,
        "every partition has an owner"
    );
}

/// The operations of `ids` that member `m`'s query API shows otherwise than `expected` does.
fn disagreements(
    m: &Member,
    ids: &[String],
    expected: &tally::aggregator::Aggregator,
) -> Vec<String> {
    ids.iter()
        .filter_map(|id| {
            let want = shown(&query_json(expected, id));
            let (status, got) = m.tally.get_json(&format!("/v1/Messages/Operations/{id}"));
            // A refusal says why (restoring, no owner, the owner unreachable).
            let why = got["message"]
                .as_str()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            (status != 200 || shown(&got) != want)
                .then(|| format!("{} {id}: {status}{why} {} want {want}", m.name, shown(&got)))
        })
        .collect()
}

/// The fold's query API shape of operation `id` (what `/v1/Messages/Operations/{id}` shows).
fn query_json(agg: &tally::aggregator::Aggregator, id: &str) -> Value {
    let view = agg.operation(id).expect("folded");
    let rec = tally::publisher::record(&view);
    serde_json::from_slice(&rec.value).expect("json")
}

fn without_update(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("updatedAt");
    }
    v
}

/// A member's partitions are paused in every rebalance and resumed at the offset after the last
/// record handed over, which may lie inside a batch as the broker stored it; tansu then serves
/// only the batches after it. Events produced in large batches while another member joins and
/// leaves again and again must all be folded all the same.
#[test]
#[ignore = "needs tansu (TALLY_TEST_TANSU); run by scripts/kafka-e2e"]
fn records_in_large_batches_are_all_folded_through_repeated_rebalances() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use tally::event::{AttemptEvent, AttemptStatus, Channel, Kind};
    use tally::journal::{encode_record, Record};

    let dir = scratch("cluster-batches");
    let broker = Broker::start(&dir);
    let agg = start(&dir, &broker, "aggregate-1", "aggregate");
    wait_split(
        &[&agg],
        Duration::from_secs(60),
        "one member takes every partition",
    );

    let ops: Vec<String> = (0..6)
        .map(|i| format!("comms_operation_batches{i}"))
        .collect();
    let event = |i: usize| Event {
        time_ms: 1_767_225_600_000 + i as u64,
        body: EventBody::Attempt(AttemptEvent {
            kind: Some(Kind::Messages),
            operation_id: Some(ops[i % ops.len()].clone()),
            resource_id: Some(format!("comms_message_b{i}")),
            downstream_id: Some(format!("SMb{i:032}")),
            attempt: Some("1".to_owned()),
            channel: Some(Channel::Sms),
            status: if i.is_multiple_of(3) {
                AttemptStatus::Delivered
            } else {
                AttemptStatus::Sent
            },
            error_code: None,
            to: None,
            tags: vec![],
        }),
    };
    const RECORDS: usize = 30_000;
    let expected = tally::aggregator::Aggregator::new(tally::aggregator::Limits::default());
    for i in 0..RECORDS {
        expected.apply(&event(i), 1_767_225_600_000);
    }

    // One record per event, lingering so that the producer stores hundreds in one batch.
    let bootstrap = broker.bootstrap();
    let producer = std::thread::spawn({
        let bootstrap = bootstrap.clone();
        let events: Vec<Event> = (0..RECORDS).map(event).collect();
        move || {
            let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("linger.ms", "200")
                .create()
                .expect("producer");
            for (i, e) in events.into_iter().enumerate() {
                let key = routing_key(&e).to_owned();
                let payload = encode_record(&Record {
                    received_ms: 1_767_225_600_000,
                    events: vec![e],
                })
                .expect("encodes");
                let p = partition_of(&key, PARTITIONS) as i32;
                let mut rec = BaseRecord::to(EVENTS_TOPIC)
                    .key(&key)
                    .payload(&payload)
                    .partition(p);
                while let Err((_, r)) = producer.send(rec) {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                if i % 500 == 499 {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            producer.flush(Duration::from_secs(30)).expect("flushed");
        }
    });
    // Meanwhile another member joins and leaves, over and over: each time the aggregate process
    // gives up some partitions, takes them back, and has the rest paused and resumed.
    let mut cycles = 0;
    while !producer.is_finished() {
        let member: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", GROUP)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .expect("member");
        member.subscribe(&[EVENTS_TOPIC]).expect("subscribes");
        let until = Instant::now() + Duration::from_millis(1_000);
        while Instant::now() < until {
            let _ = member.poll(Duration::from_millis(50));
        }
        member.unsubscribe();
        drop(member);
        cycles += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    producer.join().expect("producer thread");

    let started = Instant::now();
    loop {
        let differing = disagreements(&agg, &ops, &expected);
        if differing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after {cycles} joins and leaves of another member, the aggregate process never agreed with the fold: {differing:?}; {}",
            audit_summary(&dir)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "FIGURE cluster: {RECORDS} records through {cycles} joins and leaves of another member all folded; {}",
        audit_summary(&dir)
    );
}

/// What the aggregate processes under `dir` logged of holes in the events topic's offsets.
fn audit_summary(dir: &Path) -> String {
    format!(
        "partitions read again after offsets went missing: {}, holes taken as absent: {}",
        count_in_logs(dir, HOLE_REREAD),
        count_in_logs(dir, HOLE_ACCEPTED)
    )
}
