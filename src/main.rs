//! The `tally` command: parse the command line, load settings, start telemetry, run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tally::config::{LogFormat, Settings};
use tally::startup::Application;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Twilio delivery status callbacks in, live Operation state out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (on the compiled-in defaults unless --config is given).
    Serve {
        /// A TOML file overriding the compiled-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load the settings exactly as `serve` would (defaults, --config file, TALLY_ environment),
    /// report what they say without any secret, and exit 0 when they are valid. Nothing starts.
    CheckConfig {
        /// A TOML file overriding the compiled-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the X-Twilio-Signature Twilio would send for a request.
    Sign {
        /// The auth token to sign with.
        #[arg(long)]
        token: String,
        /// The full URL Twilio calls, with its query string.
        #[arg(long)]
        url: String,
        /// A form parameter `name=value` (repeatable), for classic status callbacks.
        #[arg(long = "form", value_name = "NAME=VALUE")]
        form: Vec<String>,
        /// A JSON body file (Event Streams): prints the URL with bodySHA256 and its signature.
        #[arg(long, conflicts_with = "form")]
        json: Option<PathBuf>,
    },
    /// Act as Twilio: send a seeded scenario of signed callbacks to a tally, then show (and with
    /// --verify, check) the state every operation must reach.
    Simulate(Box<SimulateArgs>),
    /// Print the table of every metric tally exports (name, type, labels, meaning), as the
    /// README shows it.
    MetricsDoc,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Where tally listens, e.g. http://127.0.0.1:8080 (plain HTTP).
    #[arg(long)]
    target: String,
    /// The Twilio auth token tally verifies with.
    #[arg(long, env = "TALLY_SIMULATE_TOKEN", hide_env_values = true)]
    token: String,
    /// The base URL tally signs over (its http.public_url), when it differs from --target.
    #[arg(long)]
    public_url: Option<String>,
    /// Operations to generate (default 10, or enough to fill --duration at --rate).
    #[arg(long)]
    operations: Option<usize>,
    /// Recipients per operation.
    #[arg(long, default_value_t = 100)]
    recipients: usize,
    /// Requests per second (default: as fast as tally answers).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop sending after this long ("30s", "5m"); with --rate and no --operations, the
    /// scenario is sized to fill it.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Share of reports delivered twice: 0.1 or 10%.
    #[arg(long, default_value = "0", value_parser = tally::simulate::parse_share)]
    duplicates: f64,
    /// Deliver reports in a random order (otherwise roughly in time order, a few late).
    #[arg(long)]
    shuffle: bool,
    /// Event Streams CloudEvents, classic form status callbacks, or both.
    #[arg(long, default_value = "both")]
    mix: tally::simulate::Mix,
    /// Kinds of operations: messages,emails,push.
    #[arg(long, default_value = "messages", value_parser = tally::simulate::parse_kinds)]
    kinds: std::vec::Vec<tally::event::Kind>,
    /// Share of message recipients whose RCS or WhatsApp attempt fails over to SMS.
    #[arg(long, default_value = "0.5", value_parser = tally::simulate::parse_share)]
    fallback: f64,
    /// Fetch every operation from the query API afterwards and compare; exit 1 on a mismatch.
    #[arg(long)]
    verify: bool,
    /// `user:password` for the query API, when tally has api.credentials.
    #[arg(long, env = "TALLY_SIMULATE_API_USER", hide_env_values = true)]
    api_user: Option<String>,
    /// Seed of the scenario: the same seed gives the same requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Sender threads (each with its own connections).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CloudEvents per Event Streams request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Write the run's figures as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the signed requests (path, signature, content type, body; tab-separated, one per
    /// line) to this file and send nothing: input for other load generators.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Sign {
            token,
            url,
            form,
            json,
        } => sign(&token, &url, &form, json),
        Command::Simulate(args) => simulate(*args),
        Command::MetricsDoc => {
            print!("{}", tally::metrics::markdown_table());
            Ok(())
        }
    }
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use tally::simulate::{client, summarize, Config, Scenario};
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
    let ccfg = client::ClientConfig {
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
    };
    eprintln!(
        "generating {} operations x {} recipients (seed {})",
        cfg.operations, cfg.recipients, cfg.seed
    );
    let scenario = Scenario::generate(&cfg);
    let expected = scenario.expected();
    if let Some(path) = &args.dump {
        let signed = client::sign_all(scenario.requests(args.batch), &ccfg);
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        use std::io::Write;
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
        println!("expected: {}", summarize(&expected));
        return Ok(());
    }
    let outcome = actix_web::rt::System::new()
        .block_on(async { client::run(&scenario, args.batch, &ccfg, args.verify).await });
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
    println!("expected: {}", summarize(&expected));
    if expected.len() <= 20 {
        for e in &expected {
            let stats: Vec<String> = e.stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  {} {} {}", e.id, e.status, stats.join(", "));
        }
    }
    if let Some(path) = &args.report {
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
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.verify {
        match &outcome.verify {
            None => anyhow::bail!("not verified: not every request was sent"),
            Some(v) => {
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
            }
        }
    }
    Ok(())
}

fn sign(token: &str, url: &str, form: &[String], json: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = json {
        let body =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let signed_url = tally::signature::url_with_body_sha256(url, &body);
        println!("url: {signed_url}");
        println!(
            "X-Twilio-Signature: {}",
            tally::signature::sign(token, &signed_url, &[])
        );
        return Ok(());
    }
    let params = form
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--form expects NAME=VALUE, got {kv:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "X-Twilio-Signature: {}",
        tally::signature::sign(token, url, &params)
    );
    Ok(())
}

fn check_config(config: Option<PathBuf>) -> anyhow::Result<()> {
    let s = Settings::load_from_env(config.as_deref()).context("cannot load settings")?;
    println!("configuration OK");
    println!("listen: {}", s.http.listen);
    let base = match &s.http.public_url {
        Some(url) => without_userinfo(url),
        None if s.http.trust_forwarded_headers => {
            "from the request (X-Forwarded-Proto and -Host trusted)".to_owned()
        }
        None => "from the request (Host header, scheme http)".to_owned(),
    };
    println!("signed URL base: {base}");
    println!("twilio auth tokens: {}", s.twilio.auth_tokens.len());
    println!("api credentials: {}", s.api.credentials.len());
    match &s.storage.dir {
        Some(dir) => println!("storage: {dir} (fsync {:?})", s.storage.fsync),
        None => println!("storage: none (state in memory only)"),
    }
    println!("log: {} {:?}", s.log.level, s.log.format);
    Ok(())
}

/// A URL with any `user:password@` replaced, for printing.
fn without_userinfo(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

fn init_telemetry(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load_from_env(config.as_deref()).context("cannot load settings")?;
    init_telemetry(&settings);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&settings)?;
        app.run_until_stopped(shutdown_signal()).await
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
