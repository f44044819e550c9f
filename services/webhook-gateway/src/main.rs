//! `webhook-gateway [serve] | reconcile [--dry-run ...] | replay-quarantined [--id ID | --all]
//! | keygen --out-dir DIR`.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use service_runtime::{init_logging, shutdown_signal};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "webhook-gateway",
    version,
    about = "Clerk webhooks in, verified and typed; gRPC commands out"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `POST /clerk` (the default).
    Serve(Box<webhook_gateway::Config>),
    /// Make our data equal to Clerk's: page Clerk's Backend API, apply what differs through
    /// the services' sync commands, delete what Clerk no longer has. Exit 0 when the run
    /// completed, 1 when it stopped, refused to delete or found resources deleted here that
    /// Clerk still has (one line on stderr says why), 2 for bad settings.
    Reconcile(Box<webhook_gateway::reconcile::config::ReconcileConfig>),
    /// Apply the deliveries kept in the services' quarantine with the current code, through the
    /// ordinary commands under their own delivery ids (nothing is applied twice). Exit 0 when
    /// every one was looked at, 1 when a service was unavailable, 2 for bad settings.
    ReplayQuarantined(Box<ReplayArgs>),
    /// Write a new Ed25519 service signing key (`signing-key.pem`) and its public `jwks.json`,
    /// bound to the gateway's subject (the services accept its tokens for that subject only).
    Keygen {
        /// Directory to write into.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Only this delivery (its svix-id).
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    id: Option<String>,
    /// Every open delivery.
    #[arg(long)]
    all: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    downstream: webhook_gateway::DownstreamArgs,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = service_runtime::LogFormat::Json)]
    log_format: service_runtime::LogFormat,
}

/// How a subcommand ends when it does not succeed. Every kind prints one line on stderr, after
/// the command's name.
enum Failure {
    /// Bad settings: "configuration error: ...", status 2.
    Config(String),
    /// The run stopped or could not be done: this line, this status.
    Exit(i32, String),
    /// Anything else: returned from `main` (status 1).
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Error(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Error(e.into())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Error(e.into())
    }
}

type Outcome = Result<(), Failure>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (name, outcome) = match command() {
        Ok(Command::Keygen { out_dir }) => ("webhook-gateway keygen", keygen(&out_dir)),
        Ok(Command::ReplayQuarantined(args)) => {
            ("webhook-gateway replay-quarantined", replay(*args).await)
        }
        Ok(Command::Reconcile(config)) => ("webhook-gateway reconcile", reconcile(*config).await),
        Ok(Command::Serve(config)) => ("webhook-gateway", serve(*config).await),
        Err(problem) => ("webhook-gateway", Err(Failure::Config(problem))),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(Failure::Config(problem)) => {
            eprintln!("{name}: configuration error: {problem}");
            std::process::exit(2);
        }
        Err(Failure::Exit(status, line)) => {
            eprintln!("{name}: {line}");
            std::process::exit(status);
        }
        Err(Failure::Error(e)) => Err(e),
    }
}

/// The command line, with secrets from `X_FILE` and `serve` when no command is named. A clap
/// error (an unknown flag, a malformed value) prints and exits 2 itself, as in both services;
/// a secret file that cannot be used is returned.
fn command() -> Result<Command, String> {
    let argv: Vec<String> = std::env::args().collect();
    let os_argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    // Every secret setting X may come from the file named by X_FILE.
    let cli = service_runtime::secret_files::from_environment(Cli::command(), &os_argv)?;
    let parse = |args: &[&str]| {
        cli.clone()
            .try_get_matches_from(args)
            .and_then(|m| Cli::from_arg_matches(&m))
    };
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let parsed = parse(&args).and_then(|c| match c.command {
        Some(c) => Ok(c),
        None => parse(&[args[0], "serve"]).map(|c| c.command.expect("serve")),
    });
    Ok(parsed.unwrap_or_else(|e| service_runtime::cli::exit_on_config_error("webhook-gateway", e)))
}

fn keygen(out_dir: &std::path::Path) -> Outcome {
    let key = token_auth::signing::write_service_key(out_dir, token_auth::GATEWAY_SUBJECT)
        .map_err(|e| Failure::Exit(2, e.to_string()))?;
    println!("kid {} written to {}", key.kid(), out_dir.display());
    Ok(())
}

async fn replay(args: ReplayArgs) -> Outcome {
    args.downstream.check().map_err(Failure::Config)?;
    init_logging(args.log_format, "webhook-gateway");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = webhook_gateway::metrics::Metrics::register(&mut registry);
    let downstream = args
        .downstream
        .connect(metrics, 1)
        .map_err(|e| Failure::Config(format!("{e:#}")))?;
    let summary = webhook_gateway::quarantine::replay(&downstream, args.id.as_deref()).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    if let Some(why) = &summary.stopped {
        return Err(Failure::Exit(1, format!("stopped: {why}")));
    }
    if args.id.is_some() && summary.examined == 0 {
        return Err(Failure::Exit(1, "no open delivery has that id".into()));
    }
    Ok(())
}

async fn reconcile(config: webhook_gateway::reconcile::config::ReconcileConfig) -> Outcome {
    config.check().map_err(Failure::Config)?;
    init_logging(config.log_format, "webhook-gateway");
    let summary = webhook_gateway::reconcile::execute(&config)
        .await
        .map_err(|e| Failure::Exit(1, format!("{e:#}")))?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    if let Some(why) = &summary.error {
        return Err(Failure::Exit(1, format!("stopped: {why}")));
    }
    Ok(())
}

async fn serve(config: webhook_gateway::Config) -> Outcome {
    config.check().map_err(Failure::Config)?;
    init_logging(config.log_format, "webhook-gateway");
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    Ok(webhook_gateway::run(config, listener, shutdown_signal()).await?)
}
