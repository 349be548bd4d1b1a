//! `tally simulate` as a command: its arguments, and the run they ask for: size the scenario,
//! generate it, then either write the signed requests to a file or send them, print the figures
//! and the expected state, write the report and judge the verification.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::api::{self, ApiConfig};
use super::client::{self, ClientConfig, Outcome};
use super::{summarize, verify, Config, Expected, Scenario};
use crate::event::Kind;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// The arguments of `tally simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Where tally listens, e.g. http://127.0.0.1:8080 (plain HTTP). Without it (and with
    /// --serve-api) nothing is sent: the simulator only serves Twilio's REST API.
    #[arg(long, required_unless_present = "serve_api")]
    pub target: Option<String>,
    /// The Twilio auth token tally verifies with (needed with --target).
    #[arg(long, env = "TALLY_SIMULATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The base URL tally signs over (its http.public_url), when it differs from --target.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Operations to generate (default 10, or enough to fill --duration at --rate).
    #[arg(long)]
    pub operations: Option<usize>,
    /// Recipients per operation.
    #[arg(long, default_value_t = 100)]
    pub recipients: usize,
    /// Requests per second (default: as fast as tally answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop sending after this long ("30s", "5m"); with --rate and no --operations, the
    /// scenario is sized to fill it.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Share of reports delivered twice: 0.1 or 10%.
    #[arg(long, default_value = "0", value_parser = super::parse_share)]
    pub duplicates: f64,
    /// Deliver reports in a random order (otherwise roughly in time order, a few late).
    #[arg(long)]
    pub shuffle: bool,
    /// Event Streams CloudEvents, classic form status callbacks, or both.
    #[arg(long, default_value = "both")]
    pub mix: super::Mix,
    /// Kinds of operations: messages,emails,push.
    #[arg(long, default_value = "messages", value_parser = super::parse_kinds)]
    // Spelled out so clap takes one comma list for the whole Vec rather than one value per Kind.
    pub kinds: std::vec::Vec<Kind>,
    /// Share of message recipients whose RCS or WhatsApp attempt fails over to SMS.
    #[arg(long, default_value = "0.5", value_parser = super::parse_share)]
    pub fallback: f64,
    /// Share of Message attempt reports never sent (lost classic callbacks), decided per
    /// report from the seed: 0.1 or 10%.
    #[arg(long, default_value = "0", value_parser = super::parse_share)]
    pub drop: f64,
    /// Kinds for which no callback at all is sent, operation events included, as Twilio sends
    /// none for Emails and PushNotifications: emails,push (only the REST API shows them).
    #[arg(long, value_parser = super::parse_kinds)]
    pub silent_kinds: Option<std::vec::Vec<Kind>>,
    /// Share of resources canceled through Twilio's API: status CANCELED, no attempt, no
    /// callback.
    #[arg(long, default_value = "0", value_parser = super::parse_share)]
    pub cancel: f64,
    /// Share of operations scheduled for later: operation and every resource SCHEDULED, no
    /// callback.
    #[arg(long, default_value = "0", value_parser = super::parse_share)]
    pub scheduled: f64,
    /// Fetch every operation from the query API afterwards and compare with what Twilio's own
    /// API shows (the ground truth, unsent callbacks included); exit 1 on a mismatch.
    #[arg(long, requires = "target")]
    pub verify: bool,
    /// With --verify: read again every 3 seconds until every operation agrees or this long
    /// has passed ("60s"), printing how many agree.
    #[arg(long, value_parser = humantime::parse_duration, requires = "verify")]
    pub verify_within: Option<std::time::Duration>,
    #[command(flatten)]
    pub api: ServeApiArgs,
    /// `user:password` for the query API, when tally has api.credentials.
    #[arg(long, env = "TALLY_SIMULATE_API_USER", hide_env_values = true)]
    pub api_user: Option<String>,
    /// Seed of the scenario: the same seed gives the same requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Sender threads (each with its own connections).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CloudEvents per Event Streams request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Write the run's figures as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the signed requests (path, signature, content type, body; tab-separated, one per
    /// line) to this file and send nothing: input for other load generators.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

/// The arguments of `tally simulate` that serve Twilio's REST API over the ground truth.
#[derive(clap::Args)]
pub struct ServeApiArgs {
    /// Also act as Twilio's Communications REST API on this address ("127.0.0.1:0"): the
    /// operations list, an operation by id and the resources list of each kind, and request
    /// counts at /stats; prints `api: http://HOST:PORT`. Operations are then created near now.
    #[arg(long, id = "serve_api", value_name = "ADDR", requires_all = ["api_username", "api_password"])]
    pub serve_api: Option<String>,
    /// HTTP Basic username the served API demands.
    #[arg(long, env = "TALLY_SIMULATE_API_USERNAME")]
    pub api_username: Option<String>,
    /// HTTP Basic password the served API demands.
    #[arg(long, env = "TALLY_SIMULATE_API_PASSWORD", hide_env_values = true)]
    pub api_password: Option<String>,
    /// Share of the served API's authenticated requests answered 429 with Retry-After: 1,
    /// decided from the seed and the request's number.
    #[arg(long = "api-429", default_value = "0", value_parser = super::parse_share)]
    pub api_429: f64,
    /// Delay added to every answer of the served API ("200ms").
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub api_latency: std::time::Duration,
    /// Page size of the served API's lists when a request gives no pageSize (at most 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub api_page_size: u16,
    /// Stop serving this long after the API started ("5m"); otherwise it serves until the
    /// process is killed, or, with --verify, until the verification ends.
    #[arg(long, value_parser = humantime::parse_duration, requires = "serve_api")]
    pub serve_for: Option<std::time::Duration>,
}

/// Run `tally simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let cfg = scenario_config(&args);
    let ccfg = client_config(&args)?;
    eprintln!(
        "generating {} operations x {} recipients (seed {})",
        cfg.operations, cfg.recipients, cfg.seed
    );
    let scenario = Scenario::generate(&cfg);
    let (unsent, planned) = scenario.unsent();
    if unsent > 0 {
        eprintln!(
            "{unsent} of {planned} reports and operation events are never sent \
             (--drop, --silent-kinds, --scheduled)"
        );
    }
    if let Some(path) = &args.dump {
        let ccfg = ccfg.context("--dump needs --target")?;
        dump(&scenario, args.batch, &ccfg, path)?;
        println!("expected: {}", summarize(&scenario.expected()));
        return Ok(());
    }
    actix_web::rt::System::new().block_on(drive(&args, &cfg, &scenario, ccfg.as_ref()))
}

/// Serve the API when asked, send and verify when there is a target, then keep serving as
/// asked; must run inside an actix system.
async fn drive(
    args: &SimulateArgs,
    cfg: &Config,
    scenario: &Scenario,
    ccfg: Option<&ClientConfig>,
) -> anyhow::Result<()> {
    let served = match &args.api.serve_api {
        Some(listen) => {
            let s = api::start(
                Arc::new(scenario.truth()),
                api_config(&args.api, cfg, listen),
            )?;
            println!("api: {}", s.url);
            let handle = s.server.handle();
            actix_web::rt::spawn(s.server);
            Some((handle, Instant::now(), s.counts))
        }
        None => None,
    };
    let expected = scenario.expected();
    let mut result = Ok(());
    if let Some(ccfg) = ccfg {
        let mut outcome = client::run(scenario, args.batch, ccfg, false).await;
        if args.verify && outcome.run.complete {
            let e = Rc::new(expected.clone());
            outcome.verify = Some(verify::until(e, ccfg, args.verify_within).await);
        }
        print_figures(&outcome, &expected);
        if let Some(path) = &args.report {
            write_report(path, args, cfg, &outcome)?;
        }
        if args.verify {
            result = judge(&outcome);
        }
    } else {
        print_expected(&expected);
    }
    if let Some((handle, started, counts)) = served {
        match args.api.serve_for {
            Some(d) => tokio::time::sleep(d.saturating_sub(started.elapsed())).await,
            None if args.verify => {}
            None => std::future::pending::<()>().await,
        }
        handle.stop(true).await;
        println!("api served: {}", counts.json());
    }
    result
}

/// The scenario the arguments describe; with --rate and --duration but no --operations, as many
/// operations as fill the duration at the rate. Serving the API, operations are created up to
/// a minute ago (one a second), so a reconciler looking back from now finds them.
fn scenario_config(args: &SimulateArgs) -> Config {
    let mut cfg = Config {
        operations: args.operations.unwrap_or(10),
        recipients: args.recipients,
        duplicates: args.duplicates,
        shuffle: args.shuffle,
        mix: args.mix,
        kinds: args.kinds.clone(),
        fallback: args.fallback,
        seed: args.seed,
        drop: args.drop,
        silent_kinds: args.silent_kinds.clone().unwrap_or_default(),
        cancel: args.cancel,
        scheduled: args.scheduled,
        ..Config::default()
    };
    if let (None, Some(rate), Some(d)) = (args.operations, args.rate, args.duration) {
        let probe = Scenario::generate(&Config {
            operations: 20,
            ..cfg.clone()
        });
        let per_op = probe.requests(args.batch).len() as f64 / 20.0;
        if per_op > 0.0 {
            cfg.operations = ((rate * d.as_secs_f64()) / per_op).ceil().max(1.0) as usize;
        }
    }
    if args.api.serve_api.is_some() {
        // A minute more, so that nearly every report's time is past too.
        cfg.start_ms = api::now_ms().saturating_sub(cfg.operations as u64 * 1_000 + 60_000);
    }
    cfg
}

/// How to serve the API.
fn api_config(a: &ServeApiArgs, cfg: &Config, listen: &str) -> ApiConfig {
    ApiConfig {
        listen: listen.to_owned(),
        username: a.api_username.clone().unwrap_or_default(),
        password: a.api_password.clone().unwrap_or_default(),
        share_429: a.api_429,
        latency: a.api_latency,
        page_size: usize::from(a.api_page_size),
        seed: cfg.seed,
    }
}

/// How to send, when there is a target.
fn client_config(args: &SimulateArgs) -> anyhow::Result<Option<ClientConfig>> {
    let Some(target) = &args.target else {
        return Ok(None);
    };
    let token = args
        .token
        .clone()
        .context("--target needs --token (or TALLY_SIMULATE_TOKEN)")?;
    Ok(Some(ClientConfig {
        target: target.clone(),
        public_url: args.public_url.clone(),
        token,
        rate: args.rate,
        duration: args
            .duration
            .filter(|_| args.operations.is_some() || args.rate.is_none()),
        concurrency: args.concurrency.max(1),
        threads: args.threads.max(1),
        max_tries: 4,
        api_user: args.api_user.clone(),
        progress: !args.quiet,
    }))
}

/// Write the signed requests to `path` (path, signature, content type, body; tab-separated, one
/// per line), sending nothing.
fn dump(scenario: &Scenario, batch: usize, ccfg: &ClientConfig, path: &Path) -> anyhow::Result<()> {
    let signed = client::sign_all(scenario.requests(batch), ccfg);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for r in &signed {
        out.write_all(r.path_and_query.as_bytes())?;
        write!(out, "\t{}\t{}\t", r.signature, r.content_type)?;
        out.write_all(&r.body)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!(
        "wrote {} signed requests to {}",
        signed.len(),
        path.display()
    );
    Ok(())
}

/// What was sent, what tally counted, the latency, and the state every operation must reach.
fn print_figures(outcome: &Outcome, expected: &[Expected]) {
    let r = &outcome.run;
    println!(
        "sent {}/{} requests ({} events) in {:.2}s: {} acked, {} errors, {} retries; {:.0} req/s, {:.0} events/s",
        r.requests_sent, r.requests, r.events_sent, r.elapsed_s, r.acked, r.errors, r.retries,
        r.requests_per_s, r.events_per_s
    );
    println!(
        "tally counted: received {}, applied {}, noop {}, rejected {}",
        r.received, r.applied, r.noop, r.rejected
    );
    println!(
        "latency (from due time): p50 {}us, p99 {}us, p99.9 {}us, max {}us",
        r.latency_us.p50, r.latency_us.p99, r.latency_us.p999, r.latency_us.max
    );
    if !r.error_statuses.is_empty() {
        println!(
            "non-200 answers (0 = connection error): {:?}",
            r.error_statuses
        );
    }
    print_expected(expected);
}

/// The state every operation must reach (as Twilio's API shows it).
fn print_expected(expected: &[Expected]) {
    println!("expected: {}", summarize(expected));
    if expected.len() <= 20 {
        for e in expected {
            let stats: Vec<String> = e.stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  {} {} {}", e.id, e.status, stats.join(", "));
        }
    }
}

/// The run's figures as JSON.
fn write_report(
    path: &Path,
    args: &SimulateArgs,
    cfg: &Config,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "operations": cfg.operations,
        "recipients": cfg.recipients,
        "mix": format!("{:?}", cfg.mix).to_lowercase(),
        "batch": args.batch,
        "concurrency": args.concurrency,
        "threads": args.threads,
        "rate": args.rate,
        "drop": cfg.drop,
        "silent_kinds": cfg.silent_kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "cancel": cfg.cancel,
        "scheduled": cfg.scheduled,
        "run": outcome.run,
        "verify": outcome.verify,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Print the verification and fail when it did not hold.
fn judge(outcome: &Outcome) -> anyhow::Result<()> {
    let Some(v) = &outcome.verify else {
        anyhow::bail!("not verified: not every request was sent");
    };
    println!(
        "verify: {} operations match, {} differ ({} rounds)",
        v.matched, v.mismatched, v.rounds
    );
    for (id, diffs) in &v.details {
        println!("  {id}: {}", diffs.join("; "));
    }
    if v.mismatched > 0 {
        anyhow::bail!("{} operations differ from the expected state", v.mismatched);
    }
    Ok(())
}
