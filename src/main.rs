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
    Simulate(Box<tally::simulate::command::SimulateArgs>),
    /// Print the table of every metric tally exports (name, type, labels, meaning), as the
    /// README shows it.
    MetricsDoc,
    /// Print the OpenAPI 3.1 document of tally's HTTP interface as YAML (docs/openapi.yaml), or
    /// with --json exactly as GET /openapi.json serves it.
    Openapi {
        /// The JSON served at GET /openapi.json instead of YAML.
        #[arg(long)]
        json: bool,
    },
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
        Command::Simulate(args) => tally::simulate::command::run(*args),
        Command::MetricsDoc => {
            print!("{}", tally::metrics::markdown_table());
            Ok(())
        }
        Command::Openapi { json } => {
            if json {
                print!("{}", tally::openapi::DOCUMENT);
            } else {
                print!("{}", tally::openapi::yaml());
            }
            Ok(())
        }
    }
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
    match s.storage.data_dir() {
        Some(dir) => println!(
            "storage: {} (fsync {:?})",
            std::path::absolute(&dir).unwrap_or(dir).display(),
            s.storage.fsync
        ),
        None => println!("storage: memory only (storage.memory_only; a restart forgets the state)"),
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
