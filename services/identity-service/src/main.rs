//! `identity-service [serve [--migrate]] | migrate`: parses configuration, calls the library.

use service_runtime::cli::{Command, parse};
use service_runtime::{LogFormat, init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match parse::<identity_service::Config>(
        "identity-service",
        "VBase users, kept in step with Clerk (gRPC)",
    ) {
        Command::Migrate(db) => {
            init_logging(LogFormat::Json, "identity-service");
            let applied =
                identity_service::migrate(db.migration_url().expose(), &db.tls()?).await?;
            tracing::info!(?applied, "migrations applied");
            Ok(())
        }
        Command::Serve(config) => {
            init_logging(config.service.log_format, "identity-service");
            let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
            identity_service::run(*config, listener, shutdown_signal()).await
        }
    }
}
