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
    /// completed, 1 when it stopped (one line on stderr says why), 2 for bad settings.
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let os_argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    // Every secret setting X may come from the file named by X_FILE.
    let cli = service_runtime::secret_files::from_environment(Cli::command(), &os_argv)
        .unwrap_or_else(|problem| {
            eprintln!("webhook-gateway: configuration error: {problem}");
            std::process::exit(2);
        });
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
    match parsed
        .unwrap_or_else(|e| service_runtime::cli::exit_on_config_error("webhook-gateway", e))
    {
        Command::Keygen { out_dir } => {
            match token_auth::signing::write_service_key(&out_dir, token_auth::GATEWAY_SUBJECT) {
                Ok(key) => {
                    println!("kid {} written to {}", key.kid(), out_dir.display());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("webhook-gateway keygen: {e}");
                    std::process::exit(2);
                }
            }
        }
        Command::ReplayQuarantined(args) => {
            if let Err(problem) = args.downstream.check() {
                eprintln!("webhook-gateway replay-quarantined: configuration error: {problem}");
                std::process::exit(2);
            }
            init_logging(args.log_format, "webhook-gateway");
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = webhook_gateway::metrics::Metrics::register(&mut registry);
            let downstream = match args.downstream.connect(metrics, 1) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("webhook-gateway replay-quarantined: configuration error: {e:#}");
                    std::process::exit(2);
                }
            };
            let summary =
                webhook_gateway::quarantine::replay(&downstream, args.id.as_deref()).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.table());
            }
            if let Some(why) = &summary.stopped {
                eprintln!("webhook-gateway replay-quarantined: stopped: {why}");
                std::process::exit(1);
            }
            if args.id.is_some() && summary.examined == 0 {
                eprintln!("webhook-gateway replay-quarantined: no open delivery has that id");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reconcile(config) => {
            if let Err(problem) = config.check() {
                eprintln!("webhook-gateway reconcile: configuration error: {problem}");
                std::process::exit(2);
            }
            init_logging(config.log_format, "webhook-gateway");
            let summary = match webhook_gateway::reconcile::execute(&config).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("webhook-gateway reconcile: {e:#}");
                    std::process::exit(1);
                }
            };
            if config.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.table());
            }
            if let Some(why) = &summary.error {
                eprintln!("webhook-gateway reconcile: stopped: {why}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve(config) => {
            if let Err(problem) = config.check() {
                eprintln!("webhook-gateway: configuration error: {problem}");
                std::process::exit(2);
            }
            init_logging(config.log_format, "webhook-gateway");
            let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
            webhook_gateway::run(*config, listener, shutdown_signal()).await
        }
    }
}
