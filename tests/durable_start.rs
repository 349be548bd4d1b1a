//! Start-up of the real binary on durable defaults: the default run keeps its state in `data/`
//! under the working directory and a restart finds it; memory-only state is asked for
//! explicitly; one process owns a data directory, and a stale lock left by `kill -9` never
//! blocks a restart.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::cloudevent;
use support::http::RawResp;
use support::process::{Endpoint, Tally};
use support::scrape::Scrape;
use support::{scratch, TOKEN};

/// Post one signed form status callback for `msg` of `op`; the response.
fn post_status(t: &Endpoint, op: &str, msg: &str, sid: &str, status: &str) -> RawResp {
    t.try_post_form(
        &format!("/twilio/status?operationId={op}&messageId={msg}"),
        &[("MessageSid", sid), ("MessageStatus", status)],
    )
    .expect("answered")
}

/// Non-empty journal segments under `data`.
fn segments_with_records(data: &Path) -> usize {
    std::fs::read_dir(data.join("journal"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_default_run_keeps_its_state_in_data_under_the_working_directory_and_a_restart_finds_it() {
    // Arrange: no storage setting at all, as a new user runs it.
    let cwd = scratch("default");
    let first = Tally::launch(&cwd).durable_defaults().start();
    let data = cwd.join("data").canonicalize().expect("data/ created");

    // Act
    for i in 0..5 {
        let code = post_status(
            &first,
            "comms_operation_default",
            &format!("comms_message_d{i}"),
            &format!("SMd{i}"),
            "delivered",
        )
        .status;
        assert_eq!(code, 200);
    }
    let log = first.output();
    first.stop();
    let restarted = Tally::launch(&cwd).durable_defaults().start();

    // Assert
    assert!(
        log.contains(&data.display().to_string()),
        "start-up names the absolute data directory {}:\n{log}",
        data.display()
    );
    assert!(segments_with_records(&data) >= 1, "the journal is on disk");
    let (code, op) = restarted.get_json("/v1/Messages/Operations/comms_operation_default");
    assert_eq!(code, 200, "{op}");
    assert_eq!(op["stats"]["total"], 5, "{op}");
    assert_eq!(op["stats"]["delivered"], 5, "{op}");
    restarted.stop();
}

#[test]
fn memory_only_must_be_asked_for_and_then_writes_nothing() {
    // Arrange
    let cwd = scratch("memory");

    // Act: an empty storage.dir on its own, then memory-only asked for.
    let refused = Tally::launch(&cwd)
        .durable_defaults()
        .env(&[("TALLY_STORAGE__DIR", "")])
        .run_to_exit(Duration::from_secs(30));
    let memory = Tally::launch(&cwd)
        .durable_defaults()
        .env(&[("TALLY_STORAGE__MEMORY_ONLY", "true")])
        .start();
    let code = post_status(
        &memory,
        "comms_operation_m",
        "comms_message_m",
        "SMm",
        "sent",
    )
    .status;

    // Assert
    assert!(!refused.status.success(), "{:?}", refused.status);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("storage.memory_only"), "{said}");
    assert_eq!(code, 200);
    assert!(
        memory.output().contains("memory only"),
        "{}",
        memory.output()
    );
    memory.stop();
    assert!(!cwd.join("data").exists(), "memory-only writes no data/");
}

#[test]
fn a_second_process_on_the_same_data_directory_exits_non_zero_naming_the_owner_pid() {
    // Arrange
    let cwd = scratch("owner");
    let first = Tally::launch(&cwd).durable_defaults().start();
    assert_eq!(
        post_status(
            &first,
            "comms_operation_o",
            "comms_message_o1",
            "SMo1",
            "sent"
        )
        .status,
        200
    );

    // Act: the same directory, named differently (absolute, through the parent).
    let same = cwd.join("data/../data");
    let same = same.to_str().unwrap();
    let second = Tally::launch(&cwd)
        .durable_defaults()
        .env(&[("TALLY_STORAGE__DIR", same)])
        .run_to_exit(Duration::from_secs(30));

    // Assert
    assert!(!second.status.success(), "{:?}", second.status);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("in use by another tally process"), "{said}");
    assert!(said.contains(&format!("pid {}", first.pid())), "{said}");
    let lock = std::fs::read_to_string(cwd.join("data/tally.lock")).unwrap();
    assert_eq!(lock.trim(), first.pid().to_string(), "the owner's pid kept");
    assert_eq!(
        post_status(
            &first,
            "comms_operation_o",
            "comms_message_o2",
            "SMo2",
            "sent"
        )
        .status,
        200,
        "the owner is untouched"
    );
    first.stop();
}

#[test]
fn after_kill_9_a_restart_takes_the_stale_lock_and_keeps_the_state() {
    // Arrange
    let cwd = scratch("stale");
    let mut first = Tally::launch(&cwd).durable_defaults().start();
    let killed_pid = first.pid();
    for i in 0..3 {
        let code = post_status(
            &first,
            "comms_operation_k",
            &format!("comms_message_k{i}"),
            &format!("SMk{i}"),
            "delivered",
        )
        .status;
        assert_eq!(code, 200);
    }

    // Act
    first.kill();
    let stale = std::fs::read_to_string(cwd.join("data/tally.lock")).unwrap();
    let restarted = Tally::launch(&cwd).durable_defaults().start();

    // Assert
    assert_eq!(
        stale.trim(),
        killed_pid.to_string(),
        "the lock file was left behind"
    );
    let lock = std::fs::read_to_string(cwd.join("data/tally.lock")).unwrap();
    assert_eq!(lock.trim(), restarted.pid().to_string());
    let (code, op) = restarted.get_json("/v1/Messages/Operations/comms_operation_k");
    assert_eq!(code, 200, "{op}");
    assert_eq!(op["stats"]["delivered"], 3, "{op}");
    restarted.stop();
}

/// Operations generated into the first run's journal: enough that a debug build replays them
/// for several seconds on this 2-core machine (a release build replays about ten times faster).
const FILL_OPERATIONS: usize = if cfg!(debug_assertions) { 50 } else { 600 };

/// Fill the journal of the tally on `port` with `tally simulate` (Event Streams batches).
fn fill_with_simulate(port: u16) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "simulate",
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            TOKEN,
            "--operations",
            &FILL_OPERATIONS.to_string(),
            "--recipients",
            "1000",
            "--mix",
            "events",
            "--batch",
            "1000",
            "--concurrency",
            "4",
            "--quiet",
        ])
        .output()
        .expect("tally simulate runs");
    assert!(
        out.status.success(),
        "simulate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every Messages operation, as the query API lists them.
fn all_operations(t: &Tally) -> serde_json::Value {
    let (code, body) = t.get_json("/v1/Messages/Operations?pageSize=1000");
    assert_eq!(code, 200, "{body}");
    body["operations"].clone()
}

/// `operations` without the one whose id is `op`.
fn without(mut operations: serde_json::Value, op: &str) -> serde_json::Value {
    if let Some(list) = operations.as_array_mut() {
        list.retain(|o| o["id"] != op);
    }
    operations
}

/// Post one signed Event Streams batch of `message.delivered` events for `msgs` of `op`:
/// status code and body.
fn post_delivered_batch(t: &Endpoint, op: &str, msgs: &[String]) -> (u16, serde_json::Value) {
    let resp = t
        .try_post_events(&cloudevent::message_batch("delivered", op, msgs))
        .expect("answered");
    (
        resp.status,
        serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null),
    )
}

/// The sum of every sample of the metric `name`.
fn metric(t: &Endpoint, name: &str) -> f64 {
    t.metrics().sum(name, &[])
}

#[test]
fn callbacks_sent_during_a_long_recovery_get_200_and_are_applied_after_it_while_queries_wait() {
    // Arrange: a first run whose journal takes seconds to replay.
    let cwd = scratch("long-recovery");
    let first = Tally::launch(&cwd).durable_defaults().start();
    fill_with_simulate(first.port);
    let before = all_operations(&first);
    assert_eq!(before.as_array().map(Vec::len), Some(FILL_OPERATIONS));
    first.stop();

    // Act: restart, and send callbacks from the moment the listener answers (room for 60
    // events while recovery runs; one replay thread, so that the replay lasts).
    let mut second = Tally::launch(&cwd)
        .durable_defaults()
        .env(&[
            ("TALLY_STORAGE__MAX_RECOVERY_BACKLOG_EVENTS", "60"),
            ("TALLY_STORAGE__RECOVERY_THREADS", "1"),
        ])
        .spawn();
    second.wait_for("/readyz", Duration::from_secs(30));
    let probe_op = before[0]["id"].as_str().unwrap().to_owned();
    let RawResp {
        status: query_code,
        head: query_head,
        ..
    } = second.request(
        "GET",
        &format!("/v1/Messages/Operations/{probe_op}"),
        &[],
        b"",
    );
    let (_, ready) = second.get_json("/readyz");
    let op = "comms_operation_during_recovery";
    let mut deferred = 0;
    for i in 0..30 {
        let code = post_status(
            &second,
            op,
            &format!("comms_message_r{i}"),
            &format!("SMr{i}"),
            "delivered",
        )
        .status;
        assert_eq!(code, 200, "form callback {i} during recovery");
    }
    for b in 0..3 {
        let msgs: Vec<String> = (0..10).map(|k| format!("comms_message_e{b}x{k}")).collect();
        let (code, summary) = post_delivered_batch(&second, op, &msgs);
        assert_eq!(code, 200, "batch {b} during recovery: {summary}");
        deferred += summary["deferred"].as_u64().unwrap_or(0);
    }
    let RawResp {
        status: over_code,
        head: over_head,
        ..
    } = post_status(&second, op, "comms_message_over", "SMover", "delivered");
    let (still_code, _) = second.get_json(&format!("/v1/Messages/Operations/{probe_op}"));
    let backlog = metric(&second, "tally_recovery_backlog_events");
    let in_progress = metric(&second, "tally_recovery_in_progress");
    second.wait_for("/readyz/queries", Duration::from_secs(300));

    // Assert: the query API waited, the callbacks were taken, and all of it is in the state.
    assert_eq!(query_code, 503, "queries wait for the replay");
    assert!(
        query_head.to_ascii_lowercase().contains("retry-after:"),
        "{query_head}"
    );
    assert_eq!(ready["callbacks"], true, "{ready}");
    assert_eq!(ready["queries"], false, "{ready}");
    assert_eq!(ready["recovery"]["state"], "replaying", "{ready}");
    assert_eq!(
        still_code, 503,
        "the replay outlasted the callbacks (else this test proves nothing: fill more)"
    );
    assert_eq!(deferred, 30, "the batches' events waited for the replay");
    assert_eq!(over_code, 503, "past the backlog bound: {over_head}");
    assert!(
        over_head.to_ascii_lowercase().contains("retry-after:"),
        "{over_head}"
    );
    assert_eq!(in_progress, 1.0);
    assert_eq!(
        backlog, 60.0,
        "30 form callbacks and 3 batches of 10 waiting"
    );
    let (code, during) = second.get_json(&format!("/v1/Messages/Operations/{op}"));
    assert_eq!(code, 200, "{during}");
    assert_eq!(during["stats"]["total"], 60, "{during}");
    assert_eq!(during["stats"]["delivered"], 60, "{during}");
    assert!(
        without(all_operations(&second), op) == before,
        "the replay restored the first run's operations exactly"
    );
    assert_eq!(metric(&second, "tally_recovery_in_progress"), 0.0);
    assert_eq!(metric(&second, "tally_recovery_backlog_events"), 0.0);
    assert!(metric(&second, "tally_recovery_replayed_bytes") > 0.0);
    assert_eq!(
        metric(&second, "tally_events_received_total"),
        60.0,
        "deferred events are counted once, when applied"
    );
    let (_, done) = second.get_json("/readyz");
    eprintln!(
        "recovery of {} journal bytes took {}s",
        done["recovery"]["total_bytes"], done["recovery"]["elapsed_seconds"]
    );
    let log = second.output();
    assert!(log.contains("recovery: replaying journal"), "{log}");
    assert!(log.contains("percent="), "{log}");

    // And a crash right after: the callbacks were journalled after the replayed segments, so
    // the next start replays both once and ends in the same state.
    second.kill();
    let third = Tally::launch(&cwd).durable_defaults().spawn();
    third.wait_ready(Duration::from_secs(180));
    let (_, again) = third.get_json(&format!("/v1/Messages/Operations/{op}"));
    assert_eq!(again["stats"], during["stats"]);
    assert_eq!(
        third.get_json("/v1/Messages/comms_message_over").0,
        404,
        "the refused callback was not journalled"
    );
    assert!(without(all_operations(&third), op) == before);
    third.stop();
}

#[test]
fn the_standard_process_metrics_are_exported_beside_tallys_own() {
    // Arrange
    let cwd = scratch("process-metrics");
    let t = Tally::launch(&cwd).durable_defaults().start();

    // Act
    let exposition = t.request("GET", "/metrics", &[], b"").text();
    let scrape = Scrape::parse(&exposition);
    let value = |name: &str| -> f64 {
        scrape
            .get(name, &[])
            .unwrap_or_else(|| panic!("{name} not exported:\n{exposition}"))
    };

    // Assert: read from /proc for this very process.
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let rss = value("process_resident_memory_bytes");
    assert!(
        (rss - rss_kb * 1024.0).abs() < 0.5 * rss_kb * 1024.0,
        "resident {rss} vs /proc {rss_kb} kB"
    );
    assert!(
        value("process_open_fds") >= 4.0,
        "listener, lock file, segment, …"
    );
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_threads") >= 2.0);
    let started = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - started < 600.0 && now >= started - 5.0,
        "{started} vs {now}"
    );
    assert!(
        exposition.contains("\ntally_build_info{"),
        "tally's own registry, same page"
    );
    t.stop();
}

#[test]
fn a_journal_of_json_records_from_an_older_tally_is_replayed_and_new_records_are_binary() {
    use tally::event::{AttemptEvent, AttemptStatus, Channel, Event, EventBody, Kind};
    // Arrange: a data directory as a tally that wrote JSON records left it.
    let cwd = scratch("json-journal");
    let journal = cwd.join("data/journal");
    std::fs::create_dir_all(&journal).unwrap();
    // An hour ago: well inside retention.ttl.
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3_600_000;
    let old: tally::journal::Record = tally::journal::Record {
        received_ms: then,
        events: vec![Event {
            time_ms: then,
            body: EventBody::Attempt(AttemptEvent {
                kind: Some(Kind::Messages),
                operation_id: Some("comms_operation_json".into()),
                resource_id: Some("comms_message_json".into()),
                downstream_id: Some("SMjson".into()),
                attempt: None,
                channel: Some(Channel::Sms),
                status: AttemptStatus::Delivered,
                error_code: None,
                to: None,
                tags: vec![],
            }),
        }],
    };
    let json = serde_json::to_vec(&old).unwrap();
    assert_eq!(json[0], b'{');
    std::fs::write(
        journal.join("00000000000000000001.log"),
        tally::journal::frame(&json),
    )
    .unwrap();

    // Act
    let t = Tally::launch(&cwd).durable_defaults().start();
    let (code, msg) = t.get_json("/v1/Messages/comms_message_json");
    let posted = post_status(
        &t,
        "comms_operation_new",
        "comms_message_new",
        "SMnew",
        "sent",
    )
    .status;
    t.stop();

    // Assert: the old record was applied; the new one went to a new segment, in binary.
    assert_eq!(code, 200, "{msg}");
    assert_eq!(msg["status"], "DELIVERED", "{msg}");
    assert_eq!(posted, 200);
    let newer = std::fs::read(journal.join("00000000000000000002.log")).unwrap();
    let (frames, _) = tally::journal::read_frames(&newer);
    assert_eq!(frames.len(), 1, "one record in the new segment");
    assert_eq!(frames[0][0], tally::journal::RECORD_BINARY_V1);
    let record = tally::journal::decode_record(frames[0]).unwrap();
    assert_eq!(record.events.len(), 1);
}
