//! The gateway's settings: how it reaches the services (shared by `serve`, `reconcile` and
//! `replay-quarantined`) and what `serve` takes, each checked before anything starts.

use crate::forward::{Downstream, TokenSource};
use crate::metrics;
use service_runtime::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// How the gateway reaches the services: their URLs, its service tokens, the deadline of one
/// command. Shared by `serve` and `reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownstreamArgs {
    /// identity-service gRPC URL.
    #[arg(
        long,
        env = "IDENTITY_SERVICE_URL",
        default_value = "http://identity-service:50051"
    )]
    pub identity_service_url: String,
    /// workspace-service gRPC URL.
    #[arg(
        long,
        env = "WORKSPACE_SERVICE_URL",
        default_value = "http://workspace-service:50052"
    )]
    pub workspace_service_url: String,
    /// Issuer of the service tokens the gateway mints.
    #[arg(long, env = "SERVICE_JWT_ISSUER", default_value = "vbase-internal")]
    pub service_jwt_issuer: String,
    /// PKCS#8 PEM private key (Ed25519 recommended) that signs service tokens.
    #[arg(long, env = "SERVICE_JWT_SIGNING_KEY_FILE")]
    pub service_jwt_signing_key_file: Option<PathBuf>,
    /// Key id (`kid`) the service tokens name: the one the services' JWKS gives the key.
    /// Default: the key's RFC 7638 thumbprint (what `webhook-gateway keygen` writes).
    #[arg(long, env = "SERVICE_JWT_KEY_ID")]
    pub service_jwt_key_id: Option<String>,
    /// A ready-made service token mounted by the platform (instead of a signing key).
    #[arg(
        long,
        env = "SERVICE_TOKEN_FILE",
        conflicts_with = "service_jwt_signing_key_file"
    )]
    pub service_token_file: Option<PathBuf>,
    /// Deadline of one downstream command, seconds (keep under Svix's 15 s).
    #[arg(long, env = "DOWNSTREAM_TIMEOUT_SECS", default_value_t = 8)]
    pub downstream_timeout_secs: u64,
}

/// Configuration of the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// HTTP listen address (`POST /clerk`, `/healthz`, `/readyz`, `/status`, `/metrics`).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// One or more `whsec_...` signing secrets, separated by spaces or commas (rotation).
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub clerk_webhook_secret: service_runtime::Secret,
    #[command(flatten)]
    pub downstream: DownstreamArgs,
    /// `UpsertUsers` calls in flight at once: `user.created`/`user.updated` deliveries that
    /// arrive while all are busy go to identity-service together in the next call. One call
    /// at a time makes the largest batches (fewest commits); more slots let a slow call hold
    /// back fewer deliveries.
    #[arg(long, env = "IDENTITY_BATCH_SLOTS", default_value_t = 1)]
    pub identity_batch_slots: usize,
    /// Seconds a client has to send a request's headers, and again its whole body (1 to 60):
    /// a client sending a byte a minute is cut off.
    #[arg(long, env = "REQUEST_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub request_read_timeout_secs: u64,
    /// Connections served at once (1 to 100000); more wait in the listen queue.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Bytes of request bodies held at once, across all requests (1 MiB to 1 GiB). Each request
    /// takes its Content-Length (1 MiB when it declares none) before its body is read; one
    /// that cannot within a second is answered 503 with Retry-After, unread. Bodies are read
    /// before their signature is checked, so this is what bounds an unsigned flood's memory.
    #[arg(long, env = "MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes_in_flight: usize,
    /// Seconds in-flight webhooks get to finish once the gateway is stopping (1 to 300); with
    /// the pod's preStop it must fit in its termination grace period (deploy/check.py checks
    /// it). A webhook cut off gets no 2xx, so Svix delivers it again.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 20)]
    pub shutdown_drain_secs: u64,
    /// Seconds after its Clerk event (the body's signed `timestamp`) from which a delivery that
    /// a service fails for a reason of its own (INTERNAL, FAILED_PRECONDITION, NOT_FOUND ...)
    /// is quarantined and answered 200 (1 to 72000). Younger, it is answered 503 and Svix
    /// retries it, so a fix released meanwhile applies it. Svix's 7th attempt comes about
    /// 17 h 35 min after the first, its 8th and last about 27 h 35 min, each less up to 20 %
    /// (its jitter). A body without a timestamp is quarantined at its first failure.
    #[arg(long, env = "QUARANTINE_FAILED_AFTER_SECS", default_value_t = crate::failed::DEFAULT_AFTER_SECS)]
    pub quarantine_failed_after_secs: u64,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Lifetime of the service tokens the gateway mints; each is reused for at most half of it.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(60);

impl DownstreamArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=12).contains(&self.downstream_timeout_secs) {
            return Err(format!(
                "DOWNSTREAM_TIMEOUT_SECS ({}) must be from 1 to 12 (Svix gives up after 15 s)",
                self.downstream_timeout_secs
            ));
        }
        Ok(())
    }

    /// Clients of both services (connected lazily), with `batch_slots` for user upserts.
    pub fn connect(
        &self,
        metrics: metrics::Metrics,
        batch_slots: usize,
    ) -> anyhow::Result<Downstream> {
        Downstream::new(
            &self.identity_service_url,
            &self.workspace_service_url,
            self.token_source()?,
            Duration::from_secs(self.downstream_timeout_secs),
            metrics,
            batch_slots,
        )
    }

    fn token_source(&self) -> anyhow::Result<TokenSource> {
        match (&self.service_jwt_signing_key_file, &self.service_token_file) {
            (Some(path), _) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("SERVICE_JWT_SIGNING_KEY_FILE {}: {e}", path.display())
                })?;
                let mut key = token_auth::signing::SigningKey::from_pem(&pem).map_err(|e| {
                    anyhow::anyhow!("SERVICE_JWT_SIGNING_KEY_FILE {}: {e}", path.display())
                })?;
                if let Some(kid) = &self.service_jwt_key_id {
                    let kid = kid.trim();
                    anyhow::ensure!(
                        !kid.is_empty()
                            && kid.len() <= 200
                            && kid.chars().all(|c| c.is_ascii_graphic()),
                        "SERVICE_JWT_KEY_ID must be 1 to 200 printable ASCII characters"
                    );
                    key = key.with_kid(kid);
                }
                tracing::info!(kid = key.kid(), "signing service tokens");
                Ok(TokenSource::Minted(
                    token_auth::signing::ServiceTokenMinter::new(
                        key,
                        &self.service_jwt_issuer,
                        token_auth::GATEWAY_SUBJECT,
                        SERVICE_TOKEN_TTL,
                    ),
                ))
            }
            (None, Some(path)) => Ok(TokenSource::File {
                path: path.clone(),
                cached: Mutex::new(None),
            }),
            (None, None) => {
                anyhow::bail!("SERVICE_JWT_SIGNING_KEY_FILE or SERVICE_TOKEN_FILE must be set")
            }
        }
    }
}

impl Config {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        self.downstream.check()?;
        if !(1..=60).contains(&self.request_read_timeout_secs) {
            return Err(format!(
                "REQUEST_READ_TIMEOUT_SECS ({}) must be from 1 to 60",
                self.request_read_timeout_secs
            ));
        }
        if !(1..=100_000).contains(&self.max_connections) {
            return Err(format!(
                "MAX_CONNECTIONS ({}) must be from 1 to 100000",
                self.max_connections
            ));
        }
        // At least one largest body, or such a delivery could never be read.
        if !(crate::MAX_BODY..=1 << 30).contains(&self.max_body_bytes_in_flight) {
            return Err(format!(
                "MAX_BODY_BYTES_IN_FLIGHT ({}) must be from 1048576 (1 MiB) to 1073741824 (1 GiB)",
                self.max_body_bytes_in_flight
            ));
        }
        if !(1..=300).contains(&self.shutdown_drain_secs) {
            return Err(format!(
                "SHUTDOWN_DRAIN_SECS ({}) must be from 1 to 300",
                self.shutdown_drain_secs
            ));
        }
        // 0 is refused, as it reads as "off" as well as "at once": off would lose the delivery
        // once Svix gives up, and 1 already quarantines any failure a second after the event.
        if !(1..=crate::failed::MAX_AFTER_SECS).contains(&self.quarantine_failed_after_secs) {
            return Err(format!(
                "QUARANTINE_FAILED_AFTER_SECS ({}) must be from 1 to {} (20 h): Svix's last attempt comes 22 h 4 min after the first at the earliest (27 h 35 min less its 20 % jitter), and a delivery still failing then would be lost",
                self.quarantine_failed_after_secs,
                crate::failed::MAX_AFTER_SECS
            ));
        }
        if self.identity_batch_slots == 0 {
            return Err("IDENTITY_BATCH_SLOTS must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Verifier;
    use crate::{clerk_api, reconcile};
    use clap::Parser;

    #[test]
    fn secrets_never_show_in_debug() {
        #[derive(Debug, clap::Parser)]
        struct Serve {
            #[command(flatten)]
            config: Config,
        }
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let parsed =
            Serve::try_parse_from(["webhook-gateway", "--clerk-webhook-secret", secret]).unwrap();
        let shown = format!("{parsed:?}");
        assert!(shown.contains("identity-service:50051"), "{shown}");
        assert!(!shown.contains("MfKQ9r8GKYqr"), "{shown}");
        let verifier = Verifier::new(secret).unwrap();
        assert!(!format!("{verifier:?}").contains("MfKQ9r8GKYqr"));

        // The reconcile command's Clerk secret key, and the HTTP client that holds it.
        #[derive(Debug, clap::Parser)]
        struct Reconcile {
            #[command(flatten)]
            config: reconcile::config::ReconcileConfig,
        }
        let key = "sk_live_0123456789abcdefDoNotShow";
        let parsed = Reconcile::try_parse_from(["reconcile", "--clerk-secret-key", key]).unwrap();
        let shown = format!("{parsed:?}");
        assert!(shown.contains("api.clerk.com"), "{shown}");
        assert!(!shown.contains("DoNotShow"), "{shown}");
        let client = clerk_api::ClerkHttp::new(parsed.config.clerk.http()).unwrap();
        assert!(!format!("{client:?}").contains("DoNotShow"));
    }
}
