//! Reconciliation end to end, on the real binaries: `tally simulate` acts as Twilio (signed
//! callbacks, and its REST API over the same ground truth), loses a share of the Message
//! callbacks, sends none at all for Emails and PushNotifications, cancels messages and schedules
//! operations, and answers 429 to a share of reads; tally is killed and restarted on its
//! journal in the middle. tally's query API must come to equal Twilio's truth for every
//! operation, with the reconciler inside its request budget by its own metrics.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::process::Tally;
use support::scrape::Scrape;
use support::{free_port, scratch, TOKEN};

const USER: &str = "SKreconcile";
const PASSWORD: &str = "reconcile-api-secret";
const BUDGET: f64 = 10.0;

/// Requests the reconciler made, and the seconds the process has been up, from its metrics.
fn requests_and_uptime(m: &Scrape) -> (f64, f64) {
    let started = m.sum("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    (m.sum("tally_reconcile_requests_total", &[]), now - started)
}

/// The budget as the reconciler keeps it: `BUDGET` a second, with a burst of `BUDGET`.
fn assert_within_budget(m: &Scrape, which: &str) {
    let (requests, uptime) = requests_and_uptime(m);
    assert!(requests > 0.0, "{which}: no request made");
    assert!(
        requests <= BUDGET * (uptime + 1.0),
        "{which}: {requests} requests in {uptime:.1} s, over {BUDGET} a second"
    );
}

#[test]
fn tally_reaches_twilios_numbers_through_lost_callbacks_silent_kinds_cancellations_429s_and_a_restart(
) {
    // Arrange: a durable tally that reads the simulator's API, on a port kept for its restart.
    let dir = scratch("reconcile-e2e");
    let api_port = free_port();
    let tally_port = free_port();
    let api_base = format!("http://127.0.0.1:{api_port}");
    let budget = BUDGET.to_string();
    let env = [
        ("TALLY_RECONCILE__API_BASE", api_base.as_str()),
        ("TALLY_RECONCILE__USERNAME", USER),
        ("TALLY_RECONCILE__PASSWORD", PASSWORD),
        ("TALLY_RECONCILE__INTERVAL", "1s"),
        ("TALLY_RECONCILE__MAX_INTERVAL", "4s"),
        ("TALLY_RECONCILE__MAX_BACKOFF", "2s"),
        ("TALLY_RECONCILE__REQUESTS_PER_SECOND", budget.as_str()),
    ];
    let launch = || Tally::launch(&dir).journal().env(&env).on_port(tally_port);
    let mut tally = launch().start();
    let started = Instant::now();

    // Act: Twilio sends (about ten seconds of callbacks at the rate) while serving its API,
    // then waits for tally to agree; tally is killed three seconds in and restarted.
    let mut sim = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["simulate", "--serve-api", &format!("127.0.0.1:{api_port}")])
        .args(["--api-username", USER, "--api-password", PASSWORD])
        .args(["--target", &tally.base(), "--token", TOKEN, "--seed", "23"])
        .args(["--operations", "24", "--recipients", "20", "--rate", "40"])
        .args(["--kinds", "messages,emails,push", "--mix", "both"])
        .args(["--silent-kinds", "emails,push", "--drop", "0.2"])
        .args([
            "--cancel",
            "0.1",
            "--scheduled",
            "0.1",
            "--duplicates",
            "0.1",
        ])
        .args(["--api-429", "0.1", "--verify", "--verify-within", "120s"])
        .args(["--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tally simulate starts");
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = tally.metrics();
    tally.kill();
    std::thread::sleep(Duration::from_millis(500));
    let tally = launch().start();
    let status = sim.wait().expect("tally simulate ends");
    let elapsed = started.elapsed().as_secs_f64();
    let mut text = String::new();
    sim.stdout
        .take()
        .expect("piped")
        .read_to_string(&mut text)
        .expect("stdout");
    sim.stderr
        .take()
        .expect("piped")
        .read_to_string(&mut text)
        .expect("stderr");

    // Assert: every operation equals Twilio's truth, reads were applied, and both lives of the
    // reconciler kept the budget; what the simulator served agrees.
    assert!(status.success(), "{text}\n{}", tally.output());
    assert!(
        text.contains("verify: 24 operations match, 0 differ"),
        "{text}"
    );
    assert!(
        text.contains("reports and operation events are never sent"),
        "{text}"
    );
    assert_within_budget(&before_kill, "before the restart");
    let after = tally.metrics();
    assert_within_budget(&after, "after the restart");
    let applied = after.sum("tally_events_received_total", &[("route", "reconcile")])
        - after.sum("tally_events_noop_total", &[("route", "reconcile")]);
    assert!(applied > 0.0, "no read changed anything after the restart");
    let (code, details) = tally.get_json("/healthz/details");
    assert_eq!(code, 200);
    let r = &details["reconcile"];
    assert_eq!(r["enabled"], true, "{details}");
    assert_eq!(r["requestsPerSecond"].as_f64(), Some(BUDGET), "{details}");
    assert!(
        r["liveOperations"].as_u64().is_some_and(|n| n > 0),
        "{details}"
    );
    let served: serde_json::Value = text
        .lines()
        .find_map(|l| l.strip_prefix("api served: "))
        .map(|j| serde_json::from_str(j).expect("JSON counts"))
        .unwrap_or_else(|| panic!("no api served: line in {text}"));
    let total = served["total"].as_f64().expect("a total");
    assert!(
        total <= BUDGET * (elapsed + 2.0),
        "{total} requests served in {elapsed:.1} s: {served}"
    );
    println!(
        "converged in {elapsed:.1} s; served {served}; reads after the restart: {applied} applied"
    );
}
