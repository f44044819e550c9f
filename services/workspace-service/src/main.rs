//! `workspace-service [serve [--migrate]] | migrate`: parses configuration, calls the library.

use service_runtime::cli::{Command, parse};
use service_runtime::{LogFormat, init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match parse::<workspace_service::Config>(
        "workspace-service",
        "VBase workspaces and their content (gRPC)",
    ) {
        Command::Migrate(db) => {
            init_logging(LogFormat::Json, "workspace-service");
            let applied =
                workspace_service::migrate(db.migration_url().expose(), &db.tls()?).await?;
            tracing::info!(?applied, "migrations applied");
            Ok(())
        }
        Command::Serve(config) => {
            init_logging(config.service.log_format, "workspace-service");
            let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
            workspace_service::run(*config, listener, shutdown_signal()).await
        }
    }
}
