//! The sending half of `tally simulate`: sign every request as Twilio does, send them at a
//! target rate with bounded concurrency, show progress, and check the final state through the
//! query API. awc is single-threaded, so each sender thread runs its own actix system and
//! connections; the requests are signed before the clock starts, so the senders spend their
//! time sending.

pub use super::verify::{verify, VerifyReport};
use super::Request;
use actix_web::web::Bytes;
use awc::Client;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to send. `Debug` leaves out the token and the API credentials.
#[derive(Clone)]
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
    /// Sender threads, each with its own connections (the concurrency is split among them).
    pub threads: usize,
    /// Tries per request on a connection error, 429 or 5xx (Event Streams retries too).
    pub max_tries: u32,
    /// `user:password` for the query API.
    pub api_user: Option<String>,
    /// Show the one-line progress display on stderr.
    pub progress: bool,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("target", &self.target)
            .field("public_url", &self.public_url)
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("concurrency", &self.concurrency)
            .field("threads", &self.threads)
            .field("max_tries", &self.max_tries)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
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
    next: AtomicUsize,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    events_sent: AtomicU64,
    received: AtomicU64,
    applied: AtomicU64,
    noop: AtomicU64,
    rejected: AtomicU64,
    stopped: AtomicBool,
    statuses: Mutex<Vec<(u16, u64)>>,
}

impl Shared {
    fn count_status(&self, code: u16) {
        let mut s = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        match s.iter_mut().find(|(c, _)| *c == code) {
            Some(e) => e.1 += 1,
            None => s.push((code, 1)),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub(super) fn client(concurrency: usize) -> Client {
    Client::builder()
        .connector(awc::Connector::new().limit(concurrency.max(1)))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// Where every sender thread starts from.
struct Plan {
    requests: Arc<Vec<Signed>>,
    shared: Arc<Shared>,
    target: String,
    started: Instant,
    deadline: Option<Instant>,
    rate: Option<f64>,
    max_tries: u32,
    concurrency: usize,
}

/// One sender thread: its own actix system and client, `concurrency` requests in flight,
/// taking the next request from the shared counter. Returns its latency samples.
fn sender_thread(plan: Arc<Plan>) -> Vec<u32> {
    actix_web::rt::System::new().block_on(async move {
        let client = client(plan.concurrency);
        let mut tasks = Vec::new();
        for _ in 0..plan.concurrency.max(1) {
            let (plan, client) = (plan.clone(), client.clone());
            tasks.push(actix_web::rt::spawn(async move {
                let mut latencies = Vec::new();
                let shared = &plan.shared;
                loop {
                    if plan.deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.requests.len() {
                        break;
                    }
                    let due = match plan.rate {
                        Some(r) if r > 0.0 => {
                            let due = plan.started + Duration::from_secs_f64(i as f64 / r);
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        _ => Instant::now(),
                    };
                    let req = &plan.requests[i];
                    add(&shared.sent, 1);
                    add(&shared.events_sent, req.events as u64);
                    let ok = send_one(&client, &plan.target, req, plan.max_tries, shared).await;
                    latencies.push(due.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if ok {
                        add(&shared.acked, 1);
                    } else {
                        add(&shared.errors, 1);
                    }
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    })
}

/// Send every request from `threads` sender threads (each with its own connections); must run
/// inside an actix system, which it does not block.
pub async fn send(requests: Arc<Vec<Signed>>, cfg: &ClientConfig) -> RunReport {
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let threads = cfg.threads.max(1);
    let plan = Arc::new(Plan {
        requests: requests.clone(),
        shared: shared.clone(),
        target: cfg.target.trim_end_matches('/').to_owned(),
        started,
        deadline: cfg.duration.map(|d| started + d),
        rate: cfg.rate,
        max_tries: cfg.max_tries.max(1),
        concurrency: cfg.concurrency.div_ceil(threads).max(1),
    });
    let mut done = Vec::new();
    for n in 0..threads {
        let plan = plan.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("simulate-{n}"))
            .spawn(move || {
                let _ = tx.send(sender_thread(plan));
            });
        if spawned.is_ok() {
            done.push(rx);
        }
    }
    let progress = cfg.progress.then(|| {
        let shared = shared.clone();
        let total = requests.len() as u64;
        actix_web::rt::spawn(progress_loop(shared, total, started))
    });
    let mut lat = Vec::new();
    for rx in done {
        lat.extend(rx.await.unwrap_or_default());
    }
    shared.stopped.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = get(&shared.sent);
    let error_statuses = shared
        .statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    RunReport {
        requests: requests.len() as u64,
        requests_sent: sent,
        acked: get(&shared.acked),
        errors: get(&shared.errors),
        retries: get(&shared.retries),
        events_sent: get(&shared.events_sent),
        received: get(&shared.received),
        applied: get(&shared.applied),
        noop: get(&shared.noop),
        rejected: get(&shared.rejected),
        elapsed_s: elapsed,
        requests_per_s: get(&shared.acked) as f64 / elapsed.max(1e-9),
        events_per_s: get(&shared.received) as f64 / elapsed.max(1e-9),
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

async fn progress_loop(shared: Arc<Shared>, total: u64, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        let stopped = shared.stopped.load(Ordering::Relaxed);
        if !stopped {
            tokio::time::sleep(every).await;
        }
        let now = Instant::now();
        let acked = get(&shared.acked);
        let rate = (acked - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, acked);
        let line = format!(
            "sent {}/{} acked {} errors {} | {:.0} req/s now, {:.0} req/s overall | {:.1}s",
            get(&shared.sent),
            total,
            acked,
            get(&shared.errors),
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
    let requests = Arc::new(sign_all(scenario.requests(batch), cfg));
    let run = send(requests, cfg).await;
    let verify = if check && run.complete {
        Some(verify(Rc::new(scenario.expected()), cfg).await)
    } else {
        None
    };
    Outcome { run, verify }
}
