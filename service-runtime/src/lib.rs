//! What each VBase gRPC service runs besides its handlers: structured logging, the Prometheus
//! `/metrics` endpoint, the Postgres pool and migrations, a health watch that reports SERVING only
//! while the database answers, and the tonic server with auth, health, reflection and drain.

pub mod db;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod shutdown;

pub use db::{DatabaseArgs, DbFailure, Pool, classify};
pub use grpc::{serve_grpc, watch_database};
pub use logging::{LogFormat, init_logging};
pub use metrics::serve_metrics;
pub use shutdown::shutdown_signal;

/// Prints a configuration error as one line naming the variable, then exits with status 2
/// (help and version requests print as usual and exit 0).
pub fn exit_on_config_error(binary: &str, e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let detail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    eprintln!("{binary}: configuration error: {}", detail.join(" "));
    std::process::exit(2);
}
