//! `--verify`: fetch every operation of the scenario from tally's query API and compare its
//! status and stats with the ground truth (what Twilio's own API shows), once or, with
//! `--verify-within`, again every few seconds until they agree or the time is up. Only
//! `GET /v1/{Kind}/Operations/{id}` is read, through `comms_api::OperationBody`.

use super::client::{client, ClientConfig};
use super::Expected;
use crate::comms_api::{family, OperationBody};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What `--verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub matched: u64,
    pub mismatched: u64,
    /// The first mismatches: operation id and what differs.
    pub details: Vec<(String, Vec<String>)>,
    /// Rounds of reading (more than one with `--verify-within`).
    pub rounds: u32,
}

/// How often `--verify-within` reads again.
const ROUND_EVERY: Duration = Duration::from_secs(3);

/// Compare the query API with `expected`; with `within`, again every few seconds (printing how
/// many operations agree) until every one agrees or the time is up. Must run inside an actix
/// system.
pub async fn until(
    expected: Rc<Vec<Expected>>,
    cfg: &ClientConfig,
    within: Option<Duration>,
) -> VerifyReport {
    let started = Instant::now();
    let deadline = started + within.unwrap_or_default();
    let mut rounds = 0;
    loop {
        let round_started = Instant::now();
        let mut report = verify(expected.clone(), cfg).await;
        rounds += 1;
        report.rounds = rounds;
        let now = Instant::now();
        if report.mismatched == 0 || now >= deadline {
            return report;
        }
        eprintln!(
            "verify: {}/{} operations agree after {:.0}s ({:.0}s left)",
            report.matched,
            expected.len(),
            started.elapsed().as_secs_f64(),
            deadline.duration_since(now).as_secs_f64()
        );
        let next = (round_started + ROUND_EVERY).min(deadline);
        tokio::time::sleep(next.saturating_duration_since(now)).await;
    }
}

/// What one operation's fetch found: the differences, empty when it agrees.
async fn check(
    client: &awc::Client,
    target: &str,
    auth: Option<&str>,
    e: &Expected,
) -> Vec<String> {
    let url = format!("{target}/v1/{}/Operations/{}", family(e.kind), e.id);
    let mut req = client.get(url);
    if let Some((u, p)) = auth.and_then(|a| a.split_once(':')) {
        req = req.basic_auth(u, p);
    }
    match req.send().await {
        Err(err) => vec![format!("request failed: {err}")],
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().limit(1 << 20).await.unwrap_or_default();
            match serde_json::from_slice::<OperationBody>(&body) {
                Ok(v) if status == 200 => e.diff(&v),
                _ => vec![format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )],
            }
        }
    }
}

/// Fetch every expected operation from the query API once and compare; must run inside an
/// actix system.
pub async fn verify(expected: Rc<Vec<Expected>>, cfg: &ClientConfig) -> VerifyReport {
    let client = client(cfg.concurrency);
    let target = cfg.target.trim_end_matches('/').to_owned();
    let report = Rc::new(RefCell::new(VerifyReport {
        rounds: 1,
        ..VerifyReport::default()
    }));
    let next = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..cfg.concurrency.clamp(1, 32) {
        let (client, target, expected, report, next) = (
            client.clone(),
            target.clone(),
            expected.clone(),
            report.clone(),
            next.clone(),
        );
        let auth = cfg.api_user.clone();
        tasks.push(actix_web::rt::spawn(async move {
            loop {
                let i = next.get();
                if i >= expected.len() {
                    break;
                }
                next.set(i + 1);
                let e = &expected[i];
                let diffs = check(&client, &target, auth.as_deref(), e).await;
                let mut r = report.borrow_mut();
                if diffs.is_empty() {
                    r.matched += 1;
                } else {
                    r.mismatched += 1;
                    if r.details.len() < 20 {
                        r.details.push((e.id.clone(), diffs));
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let out = report.borrow().clone();
    out
}
