//! `identity-service [serve [--migrate]] | migrate`.

use clap::{Parser, Subcommand};
use identity_service::{Config, run};
use service_runtime::{DatabaseArgs, LogFormat, init_logging, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "identity-service",
    version,
    about = "VBase users, kept in step with Clerk (gRPC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve(Box<Config>),
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

fn parse() -> Command {
    let argv: Vec<String> = std::env::args().collect();
    let parsed = Cli::try_parse_from(&argv).and_then(|cli| match cli.command {
        Some(c) => Ok(c),
        None => Cli::try_parse_from([argv[0].as_str(), "serve"]).map(|c| c.command.expect("serve")),
    });
    parsed.unwrap_or_else(|e| service_runtime::exit_on_config_error("identity-service", e))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match parse() {
        Command::Migrate { db } => {
            init_logging(LogFormat::Json, "identity-service");
            let applied = identity_service::migrate(&db.database_url).await?;
            tracing::info!(?applied, "migrations applied");
            Ok(())
        }
        Command::Serve(config) => {
            init_logging(config.log_format, "identity-service");
            let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
            run(*config, listener, shutdown_signal()).await
        }
    }
}
