//! The sending half of `tally simulate`: sign every request as Twilio does, send them at a
//! target rate with bounded concurrency, show progress, and check the final state through the
//! query API. Runs on one actix system thread (awc is single-threaded); the requests are signed
//! before the clock starts, so the sender spends its time sending.

use super::{Expected, Request};
use crate::event::Kind;
use actix_web::web::Bytes;
use awc::Client;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How to send.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where to connect: `http://127.0.0.1:8080`.
    pub target: String,
    /// The base URL tally signs over (its `http.public_url`); the target when `None`.
    pub public_url: Option<String>,
    pub token: String,
    /// Requests per second; unlimited when `None`.
    pub rate: Option<f64>,
    /// Stop sending after this long, even if requests remain.
    pub duration: Option<Duration>,
    pub concurrency: usize,
    /// Tries per request on a connection error, 429 or 5xx (Event Streams retries too).
    pub max_tries: u32,
    /// `user:password` for the query API.
    pub api_user: Option<String>,
    /// Show the one-line progress display on stderr.
    pub progress: bool,
}

/// A request signed and ready to send.
#[derive(Debug, Clone)]
pub struct Signed {
    pub path_and_query: String,
    pub content_type: &'static str,
    pub signature: String,
    pub body: Bytes,
    pub events: usize,
}

/// Sign every request for the URL tally will rebuild.
pub fn sign_all(requests: Vec<Request>, cfg: &ClientConfig) -> Vec<Signed> {
    let base = cfg
        .public_url
        .as_deref()
        .unwrap_or(&cfg.target)
        .trim_end_matches('/')
        .to_owned();
    requests
        .into_iter()
        .map(|r| {
            let (path_and_query, signature) = r.sign(&base, &cfg.token);
            Signed {
                path_and_query,
                content_type: r.content_type,
                signature,
                body: Bytes::from(r.body),
                events: r.events,
            }
        })
        .collect()
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub requests: u64,
    pub requests_sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub retries: u64,
    pub events_sent: u64,
    /// Sums of tally's per-request summaries.
    pub received: u64,
    pub applied: u64,
    pub noop: u64,
    pub rejected: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    /// Request latency in microseconds, measured from when the request was due (so a stalled
    /// server is charged for the requests it held back, as wrk2 does).
    pub latency_us: Percentiles,
    /// True when every request was sent (no `--duration` cut).
    pub complete: bool,
    /// Status codes other than 200 seen, with their counts.
    pub error_statuses: Vec<(u16, u64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(samples: &mut [u32]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i] as u64
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1] as u64,
        }
    }
}

#[derive(Default)]
struct Shared {
    next: Cell<usize>,
    sent: Cell<u64>,
    acked: Cell<u64>,
    errors: Cell<u64>,
    retries: Cell<u64>,
    events_sent: Cell<u64>,
    received: Cell<u64>,
    applied: Cell<u64>,
    noop: Cell<u64>,
    rejected: Cell<u64>,
    stopped: Cell<bool>,
    latencies: RefCell<Vec<u32>>,
    statuses: RefCell<Vec<(u16, u64)>>,
}

impl Shared {
    fn count_status(&self, code: u16) {
        let mut s = self.statuses.borrow_mut();
        match s.iter_mut().find(|(c, _)| *c == code) {
            Some(e) => e.1 += 1,
            None => s.push((code, 1)),
        }
    }
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

fn client(concurrency: usize) -> Client {
    Client::builder()
        .connector(awc::Connector::new().limit(concurrency.max(1)))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// Send every request; must run inside an actix system.
pub async fn send(requests: Rc<Vec<Signed>>, cfg: &ClientConfig) -> RunReport {
    let shared = Rc::new(Shared::default());
    shared
        .latencies
        .borrow_mut()
        .reserve(requests.len().min(10_000_000));
    let client = client(cfg.concurrency);
    let target = cfg.target.trim_end_matches('/').to_owned();
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let progress = cfg.progress.then(|| {
        let shared = shared.clone();
        let total = requests.len() as u64;
        actix_web::rt::spawn(progress_loop(shared, total, started))
    });
    let mut tasks = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (shared, requests, client, target) = (
            shared.clone(),
            requests.clone(),
            client.clone(),
            target.clone(),
        );
        let (rate, max_tries) = (cfg.rate, cfg.max_tries.max(1));
        tasks.push(actix_web::rt::spawn(async move {
            loop {
                let i = shared.next.get();
                if i >= requests.len() || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                shared.next.set(i + 1);
                let due = match rate {
                    Some(r) if r > 0.0 => {
                        let due = started + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    _ => Instant::now(),
                };
                let req = &requests[i];
                add(&shared.sent, 1);
                add(&shared.events_sent, req.events as u64);
                let ok = send_one(&client, &target, req, max_tries, &shared).await;
                let micros = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                shared.latencies.borrow_mut().push(micros);
                if ok {
                    add(&shared.acked, 1);
                } else {
                    add(&shared.errors, 1);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    shared.stopped.set(true);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *shared.latencies.borrow_mut());
    let sent = shared.sent.get();
    let error_statuses = shared.statuses.borrow().clone();
    RunReport {
        requests: requests.len() as u64,
        requests_sent: sent,
        acked: shared.acked.get(),
        errors: shared.errors.get(),
        retries: shared.retries.get(),
        events_sent: shared.events_sent.get(),
        received: shared.received.get(),
        applied: shared.applied.get(),
        noop: shared.noop.get(),
        rejected: shared.rejected.get(),
        elapsed_s: elapsed,
        requests_per_s: shared.acked.get() as f64 / elapsed.max(1e-9),
        events_per_s: shared.received.get() as f64 / elapsed.max(1e-9),
        latency_us: Percentiles::of(&mut lat),
        complete: sent == requests.len() as u64,
        error_statuses,
    }
}

/// Send one request, retrying as Event Streams would; true once tally answered 200.
async fn send_one(
    client: &Client,
    target: &str,
    req: &Signed,
    max_tries: u32,
    shared: &Shared,
) -> bool {
    for attempt in 0..max_tries {
        if attempt > 0 {
            add(&shared.retries, 1);
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
        }
        let result = client
            .post(format!("{target}{}", req.path_and_query))
            .insert_header(("content-type", req.content_type))
            .insert_header(("x-twilio-signature", req.signature.as_str()))
            .send_body(req.body.clone())
            .await;
        let mut resp = match result {
            Ok(r) => r,
            Err(_) => {
                shared.count_status(0);
                continue;
            }
        };
        let status = resp.status().as_u16();
        let body = resp.body().limit(1 << 20).await.unwrap_or_default();
        if status == 200 {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                add(&shared.received, n("received"));
                add(&shared.applied, n("applied"));
                add(&shared.noop, n("noop"));
                add(&shared.rejected, n("rejected"));
            }
            return true;
        }
        shared.count_status(status);
        if !(status == 429 || status >= 500) {
            return false;
        }
    }
    false
}

async fn progress_loop(shared: Rc<Shared>, total: u64, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        let stopped = shared.stopped.get();
        if !stopped {
            tokio::time::sleep(every).await;
        }
        let now = Instant::now();
        let acked = shared.acked.get();
        let rate = (acked - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, acked);
        let line = format!(
            "sent {}/{} acked {} errors {} | {:.0} req/s now, {:.0} req/s overall | {:.1}s",
            shared.sent.get(),
            total,
            acked,
            shared.errors.get(),
            rate,
            acked as f64 / started.elapsed().as_secs_f64().max(1e-9),
            started.elapsed().as_secs_f64(),
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if stopped {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        if stopped {
            return;
        }
    }
}

/// What `--verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub matched: u64,
    pub mismatched: u64,
    /// The first mismatches: operation id and what differs.
    pub details: Vec<(String, Vec<String>)>,
}

fn family(kind: Kind) -> &'static str {
    match kind {
        Kind::Messages => "Messages",
        Kind::Emails => "Emails",
        Kind::PushNotifications => "PushNotifications",
    }
}

/// Fetch every expected operation from the query API and compare; must run inside an actix
/// system.
pub async fn verify(expected: Rc<Vec<Expected>>, cfg: &ClientConfig) -> VerifyReport {
    let client = client(cfg.concurrency);
    let target = cfg.target.trim_end_matches('/').to_owned();
    let report = Rc::new(RefCell::new(VerifyReport::default()));
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
                let url = format!("{target}/v1/{}/Operations/{}", family(e.kind), e.id);
                let mut req = client.get(url);
                if let Some((u, p)) = auth.as_deref().and_then(|a| a.split_once(':')) {
                    req = req.basic_auth(u, p);
                }
                let diffs = match req.send().await {
                    Err(err) => vec![format!("request failed: {err}")],
                    Ok(mut resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.body().limit(1 << 20).await.unwrap_or_default();
                        match serde_json::from_slice::<serde_json::Value>(&body) {
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
                };
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

/// A whole run: what was sent, and what `--verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub run: RunReport,
    pub verify: Option<VerifyReport>,
}

/// Sign and send the scenario's requests, then verify every operation when asked; must run
/// inside an actix system.
pub async fn run(
    scenario: &super::Scenario,
    batch: usize,
    cfg: &ClientConfig,
    check: bool,
) -> Outcome {
    let requests = Rc::new(sign_all(scenario.requests(batch), cfg));
    let run = send(requests, cfg).await;
    let verify = if check && run.complete {
        Some(verify(Rc::new(scenario.expected()), cfg).await)
    } else {
        None
    };
    Outcome { run, verify }
}
