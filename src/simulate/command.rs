//! `tally simulate` as a command: its arguments, and the run they ask for: size the scenario,
//! generate it, then either write the signed requests to a file or send them, print the figures
//! and the expected state, write the report and judge the verification.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::client::{self, ClientConfig, Outcome};
use super::{summarize, Config, Expected, Scenario};
use crate::event::Kind;

/// The arguments of `tally simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Where tally listens, e.g. http://127.0.0.1:8080 (plain HTTP).
    #[arg(long)]
    pub target: String,
    /// The Twilio auth token tally verifies with.
    #[arg(long, env = "TALLY_SIMULATE_TOKEN", hide_env_values = true)]
    pub token: String,
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
    /// Fetch every operation from the query API afterwards and compare; exit 1 on a mismatch.
    #[arg(long)]
    pub verify: bool,
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

/// Run `tally simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let cfg = scenario_config(&args);
    let ccfg = client_config(&args);
    eprintln!(
        "generating {} operations x {} recipients (seed {})",
        cfg.operations, cfg.recipients, cfg.seed
    );
    let scenario = Scenario::generate(&cfg);
    let expected = scenario.expected();
    if let Some(path) = &args.dump {
        dump(&scenario, args.batch, &ccfg, path)?;
        println!("expected: {}", summarize(&expected));
        return Ok(());
    }
    let outcome = actix_web::rt::System::new()
        .block_on(async { client::run(&scenario, args.batch, &ccfg, args.verify).await });
    print_figures(&outcome, &expected);
    if let Some(path) = &args.report {
        write_report(path, &args, &cfg, &outcome)?;
    }
    if args.verify {
        judge(&outcome)?;
    }
    Ok(())
}

/// The scenario the arguments describe; with --rate and --duration but no --operations, as many
/// operations as fill the duration at the rate.
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
        ..Config::default()
    };
    if let (None, Some(rate), Some(d)) = (args.operations, args.rate, args.duration) {
        let probe = Scenario::generate(&Config {
            operations: 20,
            ..cfg.clone()
        });
        let per_op = probe.requests(args.batch).len() as f64 / 20.0;
        cfg.operations = ((rate * d.as_secs_f64()) / per_op.max(1e-9))
            .ceil()
            .max(1.0) as usize;
    }
    cfg
}

/// How to send.
fn client_config(args: &SimulateArgs) -> ClientConfig {
    ClientConfig {
        target: args.target.clone(),
        public_url: args.public_url.clone(),
        token: args.token.clone(),
        rate: args.rate,
        duration: args
            .duration
            .filter(|_| args.operations.is_some() || args.rate.is_none()),
        concurrency: args.concurrency.max(1),
        threads: args.threads.max(1),
        max_tries: 4,
        api_user: args.api_user.clone(),
        progress: !args.quiet,
    }
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
        "verify: {} operations match, {} differ",
        v.matched, v.mismatched
    );
    for (id, diffs) in &v.details {
        println!("  {id}: {}", diffs.join("; "));
    }
    if v.mismatched > 0 {
        anyhow::bail!("{} operations differ from the expected state", v.mismatched);
    }
    Ok(())
}
