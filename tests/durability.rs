//! Durability of the real binary: SIGKILL mid-stream loses nothing that got a 200, a torn
//! journal tail is truncated at start-up, and a full disk turns callbacks into 503s until the
//! disk recovers.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cloudevent;
use support::process::{Endpoint, Tally};
use support::scratch;

/// `tally serve` with its journal in `dir`.
fn start(dir: &Path, env: &[(&str, &str)]) -> Tally {
    Tally::launch(dir).journal().env(env).start()
}

/// Post one signed form status callback for `msg` of `op`: the status code.
fn post_status(
    tally: Endpoint,
    op: &str,
    msg: &str,
    sid: &str,
    status: &str,
) -> std::io::Result<u16> {
    let path = format!("/twilio/status?operationId={op}&messageId={msg}");
    let params = [
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("To", "+15558675310"),
    ];
    tally.try_post_form(&path, &params).map(|r| r.status)
}

/// Post one signed Event Streams batch of `message.sent` events for `msgs` of `op`.
fn post_batch(tally: Endpoint, op: &str, msgs: &[String]) -> std::io::Result<u16> {
    tally
        .try_post_events(&cloudevent::message_batch("sent", op, msgs))
        .map(|r| r.status)
}

/// A callback that got 200: operation id, message id, the status it must show.
type Acked = (String, String, &'static str);

#[test]
fn every_callback_that_got_200_survives_a_sigkill_mid_stream() {
    let dir = scratch("crash");
    let tally = start(&dir, &[]);
    let endpoint = tally.endpoint();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut posters = Vec::new();
    for t in 0..3 {
        let (stop, acked) = (stop.clone(), acked.clone());
        posters.push(std::thread::spawn(move || {
            let op = format!("comms_operation_crash{t}");
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if t == 0 {
                    let msgs: Vec<String> =
                        (0..10).map(|k| format!("comms_message_b{i}x{k}")).collect();
                    match post_batch(endpoint, &op, &msgs) {
                        Ok(200) => acked
                            .lock()
                            .unwrap()
                            .extend(msgs.into_iter().map(|m| (op.clone(), m, "SENT"))),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                } else {
                    let msg = format!("comms_message_f{t}x{i}");
                    match post_status(endpoint, &op, &msg, &format!("SM{t}x{i}"), "delivered") {
                        Ok(200) => acked.lock().unwrap().push((op.clone(), msg, "DELIVERED")),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut tally = tally;
    tally.kill();
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the stream was running: {} acknowledged",
        acked.len()
    );

    let restarted = start(&dir, &[]);
    let mut missing = Vec::new();
    for (op, msg, status) in &acked {
        let (code, body) = restarted.get_json(&format!("/v1/Messages/{msg}"));
        if code != 200 || body["status"] != *status || body["operationId"] != *op {
            missing.push((msg.clone(), code, body["status"].clone()));
        }
    }
    eprintln!(
        "crash test: {} callbacks acknowledged before SIGKILL, {} missing after restart",
        acked.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost after SIGKILL: {:?}",
        &missing[..missing.len().min(10)]
    );
    restarted.stop();
}

#[test]
fn a_torn_journal_tail_is_truncated_and_reported_and_the_rest_recovered() {
    let dir = scratch("torn");
    let tally = start(&dir, &[]);
    for i in 0..20 {
        let code = post_status(
            tally.endpoint(),
            "comms_operation_torn",
            &format!("comms_message_t{i}"),
            &format!("SMt{i}"),
            "sent",
        )
        .unwrap();
        assert_eq!(code, 200);
    }
    tally.stop();
    let seg_dir = dir.join("journal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    segs.sort();
    let last = segs.last().expect("a journal segment with records");
    let len_before = std::fs::metadata(last).unwrap().len();
    // A torn frame: a header that promises more bytes than follow, then garbage.
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
        .unwrap();
    drop(f);

    let restarted = start(&dir, &[]);
    let (code, op) = restarted.get_json("/v1/Messages/Operations/comms_operation_torn");
    assert_eq!(code, 200);
    assert_eq!(op["stats"]["total"], 20);
    assert_eq!(op["stats"]["sent"], 20);
    assert_eq!(
        restarted
            .metrics()
            .sum("tally_journal_truncated_tails_total", &[]),
        1.0
    );
    assert_eq!(
        std::fs::metadata(last).unwrap().len(),
        len_before,
        "tail cut back"
    );
    restarted.stop();
}

#[test]
fn a_full_disk_gets_503_and_unready_then_recovers_by_itself() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed for the disk-full test");
    }
    let dir = scratch("full");
    // SIGXFSZ ignored, so that writing past the file-size limit fails with EFBIG instead.
    let tally = Tally::launch(&dir)
        .journal()
        .through_shell("trap '' XFSZ;")
        .start();
    let pid = tally.pid().to_string();
    let set_limit = |limit: &str| {
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={limit}")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit --fsize={limit}");
    };
    set_limit("16384:unlimited");
    let mut refused = None;
    for i in 0..2000 {
        let msg = format!("comms_message_d{i}");
        let code = post_status(
            tally.endpoint(),
            "comms_operation_full",
            &msg,
            &format!("SMd{i}"),
            "sent",
        )
        .unwrap();
        if code == 503 {
            refused = Some(msg);
            break;
        }
        assert_eq!(code, 200);
    }
    let refused = refused.expect("writes past the file-size limit fail with 503");
    // The journal makes room ahead of its records 4 MiB at a time; with no room for that, the
    // records that still fit under the limit are taken all the same.
    let accepted: usize = refused
        .trim_start_matches("comms_message_d")
        .parse()
        .unwrap();
    assert!(
        accepted >= 20,
        "only {accepted} callbacks taken under a 16 KiB file-size limit"
    );
    let (code, body) = tally.get_json("/readyz");
    assert_eq!(code, 503);
    assert!(body.to_string().contains("journal"), "{body}");
    assert_eq!(tally.metrics().sum("tally_journal_healthy", &[]), 0.0);
    assert!(tally.metrics().sum("tally_journal_write_errors_total", &[]) >= 1.0);
    let (code, _) = tally.get_json(&format!("/v1/Messages/{refused}"));
    assert_eq!(code, 404, "a 503'd callback is not applied");

    set_limit("unlimited:unlimited");
    tally.wait_ready(Duration::from_secs(10));
    let code = post_status(
        tally.endpoint(),
        "comms_operation_full",
        &refused,
        "SMretry",
        "sent",
    )
    .unwrap();
    assert_eq!(code, 200, "accepted again once the disk recovers");
    let (code, _) = tally.get_json(&format!("/v1/Messages/{refused}"));
    assert_eq!(code, 200);
    assert_eq!(tally.metrics().sum("tally_journal_healthy", &[]), 1.0);
    tally.stop();
}

#[test]
fn an_operation_unchanged_for_the_ttl_is_forgotten_and_stays_forgotten_after_restart() {
    let dir = scratch("ttl");
    let env = [
        ("TALLY_RETENTION__TTL", "2s"),
        ("TALLY_RETENTION__SWEEP_INTERVAL", "1s"),
    ];
    let tally = start(&dir, &env);
    assert_eq!(
        post_status(
            tally.endpoint(),
            "comms_operation_old",
            "comms_message_o1",
            "SMo1",
            "sent"
        )
        .unwrap(),
        200
    );
    assert_eq!(
        tally
            .get_json("/v1/Messages/Operations/comms_operation_old")
            .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tally
        .get_json("/v1/Messages/Operations/comms_operation_old")
        .0
        == 200
    {
        assert!(Instant::now() < deadline, "not evicted after the ttl");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        tally
            .metrics()
            .sum("tally_operations_evicted_total", &[("reason", "ttl")]),
        1.0
    );
    tally.stop();
    let restarted = start(&dir, &env);
    assert_eq!(
        restarted
            .get_json("/v1/Messages/Operations/comms_operation_old")
            .0,
        404
    );
    restarted.stop();
}

#[test]
fn past_max_resources_the_least_recently_changed_operations_are_evicted_and_counted() {
    let dir = scratch("cap");
    let tally = start(&dir, &[("TALLY_RETENTION__MAX_RESOURCES", "20")]);
    for op in 0..5 {
        for m in 0..6 {
            let code = post_status(
                tally.endpoint(),
                &format!("comms_operation_c{op}"),
                &format!("comms_message_c{op}x{m}"),
                &format!("SMc{op}x{m}"),
                "sent",
            )
            .unwrap();
            assert_eq!(code, 200, "callbacks are never refused for capacity");
        }
    }
    assert!(tally.metrics().sum("tally_resources", &[]) <= 20.0);
    assert!(
        tally
            .metrics()
            .sum("tally_operations_evicted_total", &[("reason", "capacity")])
            >= 2.0
    );
    assert_eq!(
        tally
            .get_json("/v1/Messages/Operations/comms_operation_c0")
            .0,
        404,
        "oldest went first"
    );
    assert_eq!(
        tally
            .get_json("/v1/Messages/Operations/comms_operation_c4")
            .0,
        200,
        "newest kept"
    );
    tally.stop();
}

#[test]
fn a_snapshot_bounds_the_journal_and_recovery_from_it_restores_the_same_state() {
    let dir = scratch("snap");
    let env = [
        ("TALLY_STORAGE__SNAPSHOT_BYTES", "1"),
        ("TALLY_STORAGE__SEGMENT_BYTES", "4096"),
    ];
    let tally = start(&dir, &env);
    // A classic callback nothing links yet: it must survive as a held attempt.
    let held_sid = "SMheld1";
    let code = tally
        .try_post_form(
            "/twilio/status",
            &[("MessageSid", held_sid), ("MessageStatus", "delivered")],
        )
        .unwrap()
        .status;
    assert_eq!(code, 200);
    for round in 0..3 {
        for i in 0..30 {
            let code = post_status(
                tally.endpoint(),
                "comms_operation_snap",
                &format!("comms_message_s{round}x{i}"),
                &format!("SMs{round}x{i}"),
                "sent",
            )
            .unwrap();
            assert_eq!(code, 200);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = (round + 1) as f64;
        while tally.metrics().sum("tally_journal_snapshots_total", &[]) < want {
            assert!(Instant::now() < deadline, "snapshot {round} not written");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (_, before) = tally.get_json("/v1/Messages/Operations/comms_operation_snap");
    tally.stop();
    let snapshots = std::fs::read_dir(&*dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snapshot-")
        })
        .count();
    assert!(snapshots <= 2, "older snapshots deleted: {snapshots}");

    let restarted = start(&dir, &env);
    let (_, after) = restarted.get_json("/v1/Messages/Operations/comms_operation_snap");
    assert_eq!(before["stats"], after["stats"]);
    assert_eq!(before["createdAt"], after["createdAt"]);
    assert_eq!(
        restarted.metrics().sum("tally_held_attempts", &[]),
        1.0,
        "held attempt recovered"
    );
    // The held attempt is merged when a Comms event links its SID.
    let body = serde_json::to_vec(&serde_json::json!([{
        "specversion": "1.0", "type": "com.twilio.comms-api.message.sent", "source": "/t", "id": "EVlink",
        "data": {"operation_id": "comms_operation_snap", "message_id": "comms_message_held", "downstream_id": held_sid}
    }])).unwrap();
    let code = restarted.try_post_events(&body).unwrap().status;
    assert_eq!(code, 200);
    let (_, res) = restarted.get_json("/v1/Messages/comms_message_held");
    assert_eq!(res["status"], "DELIVERED");
    restarted.stop();
}
