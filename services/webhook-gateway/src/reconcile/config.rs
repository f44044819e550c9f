//! `webhook-gateway reconcile` settings and options.

use crate::DownstreamArgs;
use crate::clerk_api::HttpSettings;
use service_runtime::{LogFormat, Secret};
use std::time::Duration;

/// What a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Users,
    Organizations,
    Memberships,
}

impl Kind {
    /// All kinds, in the order a run takes them.
    pub const ALL: [Kind; 3] = [Kind::Users, Kind::Organizations, Kind::Memberships];

    /// `users`, `organizations`, `memberships`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Organizations => "organizations",
            Kind::Memberships => "memberships",
        }
    }
}

/// Clerk's Backend API settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ClerkApiArgs {
    /// The instance's secret key, `sk_live_...` or `sk_test_...` (needed for reconcile only).
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub clerk_secret_key: Secret,
    /// Clerk's Backend API base URL.
    #[arg(
        long,
        env = "CLERK_API_URL",
        default_value = "https://api.clerk.com/v1"
    )]
    pub clerk_api_url: String,
    /// Requests started per CLERK_API_WINDOW_SECS at most (Clerk allows 100 per 10 s on
    /// development instances, 1000 on production ones).
    #[arg(long, env = "CLERK_API_MAX_REQUESTS", default_value_t = 50)]
    pub clerk_api_max_requests: usize,
    /// The rate window, seconds.
    #[arg(long, env = "CLERK_API_WINDOW_SECS", default_value_t = 10)]
    pub clerk_api_window_secs: u64,
    /// Items per list request (1 to 500, Clerk's maximum).
    #[arg(long, env = "CLERK_API_PAGE_SIZE", default_value_t = 500)]
    pub clerk_api_page_size: usize,
    /// Retries of a request that failed with 5xx or a timeout, before the run stops.
    #[arg(long, env = "CLERK_API_MAX_RETRIES", default_value_t = 5)]
    pub clerk_api_max_retries: u32,
    /// First retry delay, milliseconds (doubled per retry, at most 30 s).
    #[arg(long, env = "CLERK_API_RETRY_BASE_MS", default_value_t = 500)]
    pub clerk_api_retry_base_ms: u64,
    /// Deadline of one request, seconds.
    #[arg(long, env = "CLERK_API_TIMEOUT_SECS", default_value_t = 30)]
    pub clerk_api_timeout_secs: u64,
}

impl ClerkApiArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        let key = self.clerk_secret_key.expose();
        if !key.starts_with("sk_") || key.len() < 8 || key.chars().any(char::is_whitespace) {
            return Err(
                "CLERK_SECRET_KEY must be the instance's secret key (sk_live_... or sk_test_...)"
                    .into(),
            );
        }
        if !token_auth::acceptable_jwks_url(&self.clerk_api_url) {
            return Err(format!(
                "CLERK_API_URL ({}) must be an https URL (http only on localhost)",
                self.clerk_api_url
            ));
        }
        if !(1..=500).contains(&self.clerk_api_page_size) {
            return Err(format!(
                "CLERK_API_PAGE_SIZE ({}) must be from 1 to 500",
                self.clerk_api_page_size
            ));
        }
        if !(1..=10_000).contains(&self.clerk_api_max_requests)
            || !(1..=3600).contains(&self.clerk_api_window_secs)
        {
            return Err(
                "CLERK_API_MAX_REQUESTS must be 1 to 10000 and CLERK_API_WINDOW_SECS 1 to 3600"
                    .into(),
            );
        }
        if !(1..=300).contains(&self.clerk_api_timeout_secs) || self.clerk_api_max_retries > 20 {
            return Err(
                "CLERK_API_TIMEOUT_SECS must be 1 to 300 and CLERK_API_MAX_RETRIES at most 20"
                    .into(),
            );
        }
        Ok(())
    }

    /// The HTTP client's settings.
    pub fn http(&self) -> HttpSettings {
        HttpSettings {
            base_url: self.clerk_api_url.clone(),
            secret_key: self.clerk_secret_key.clone(),
            max_requests: self.clerk_api_max_requests,
            window: Duration::from_secs(self.clerk_api_window_secs),
            max_retries: self.clerk_api_max_retries,
            retry_base: Duration::from_millis(self.clerk_api_retry_base_ms),
            timeout: Duration::from_secs(self.clerk_api_timeout_secs),
        }
    }
}

/// How reconcile repeats a call to identity-service or workspace-service that failed for a
/// moment (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, a lost connection): a service
/// restarting or failing over does not stop the run.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceRetryArgs {
    /// Attempts of one call to a service, the first included (1: never repeated), before the
    /// run stops.
    #[arg(long, env = "RECONCILE_SERVICE_ATTEMPTS", default_value_t = 6)]
    pub reconcile_service_attempts: u32,
    /// Wait before the first repeat, milliseconds; doubled per repeat up to
    /// RECONCILE_SERVICE_RETRY_MAX_MS, each wait drawn between its half and its whole.
    #[arg(long, env = "RECONCILE_SERVICE_RETRY_BASE_MS", default_value_t = 200)]
    pub reconcile_service_retry_base_ms: u64,
    /// Longest wait between two attempts, milliseconds.
    #[arg(long, env = "RECONCILE_SERVICE_RETRY_MAX_MS", default_value_t = 5000)]
    pub reconcile_service_retry_max_ms: u64,
    /// Most time one call may take over all its attempts, seconds: no repeat starts after it.
    #[arg(
        long,
        env = "RECONCILE_SERVICE_RETRY_BUDGET_SECS",
        default_value_t = 30
    )]
    pub reconcile_service_retry_budget_secs: u64,
}

impl Default for ServiceRetryArgs {
    fn default() -> Self {
        Self {
            reconcile_service_attempts: 6,
            reconcile_service_retry_base_ms: 200,
            reconcile_service_retry_max_ms: 5000,
            reconcile_service_retry_budget_secs: 30,
        }
    }
}

impl ServiceRetryArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=20).contains(&self.reconcile_service_attempts) {
            return Err("RECONCILE_SERVICE_ATTEMPTS must be 1 to 20".into());
        }
        if !(1..=60_000).contains(&self.reconcile_service_retry_base_ms)
            || !(self.reconcile_service_retry_base_ms..=300_000)
                .contains(&self.reconcile_service_retry_max_ms)
        {
            return Err("RECONCILE_SERVICE_RETRY_BASE_MS must be 1 to 60000 and \
                        RECONCILE_SERVICE_RETRY_MAX_MS from it to 300000"
                .into());
        }
        if !(1..=3600).contains(&self.reconcile_service_retry_budget_secs) {
            return Err("RECONCILE_SERVICE_RETRY_BUDGET_SECS must be 1 to 3600".into());
        }
        Ok(())
    }
}

/// `webhook-gateway reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileConfig {
    #[command(flatten)]
    pub clerk: ClerkApiArgs,
    #[command(flatten)]
    pub downstream: DownstreamArgs,
    #[command(flatten)]
    pub service_retry: ServiceRetryArgs,
    /// Report the differences; create, change and delete nothing (only the run's bookkeeping is written).
    #[arg(long)]
    pub dry_run: bool,
    /// Only this user (`user_...`) and its memberships.
    #[arg(long, conflicts_with = "org")]
    pub user: Option<String>,
    /// Only this organization (`org_...`) and its memberships.
    #[arg(long)]
    pub org: Option<String>,
    /// Only these kinds (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Kind>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// The Clerk instance (`ins_...`) CLERK_SECRET_KEY must belong to. Needed to delete when
    /// no webhook has been applied yet, or when webhooks of several instances were; recorded
    /// as confirmed for later runs. A key of another instance stops the run at once.
    #[arg(long)]
    pub instance: Option<String>,
    /// Move this deployment to the Clerk instance (`ins_...`) CLERK_SECRET_KEY belongs to
    /// (it must name that instance): recorded as confirmed, and the run deletes what that
    /// instance lacks, within the deletion budget (with --allow-mass-delete when none of its
    /// oldest users are held here, as when it is really another instance).
    #[arg(long, conflicts_with = "instance")]
    pub move_to_instance: Option<String>,
    /// Delete even when more resources of a kind would go than RECONCILE_MAX_DELETES allows.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Most resources of one kind a run deletes (default: the larger of 25 and 1 % of those
    /// held when the run starts); a run that would delete more deletes none of that kind (of
    /// any kind, for memberships) and exits 1.
    #[arg(long, env = "RECONCILE_MAX_DELETES")]
    pub reconcile_max_deletes: Option<u64>,
    /// `json` or `pretty` (logs, on stderr).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

impl ReconcileConfig {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        self.clerk.check()?;
        self.downstream.check()?;
        self.service_retry.check()?;
        if let Some(u) = &self.user {
            input_ok("--user", "user_", u)?;
        }
        if let Some(o) = &self.org {
            input_ok("--org", "org_", o)?;
        }
        for (flag, value) in [
            ("--instance", &self.instance),
            ("--move-to-instance", &self.move_to_instance),
        ] {
            let ok = value.as_ref().is_none_or(|i| {
                i.len() <= 64
                    && i.strip_prefix("ins_").is_some_and(|r| {
                        !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric())
                    })
            });
            if !ok {
                return Err(format!(
                    "{flag} must be a Clerk instance id starting with ins_"
                ));
            }
        }
        if self
            .reconcile_max_deletes
            .is_some_and(|n| n > 1_000_000_000)
        {
            return Err("RECONCILE_MAX_DELETES must be at most 1000000000".into());
        }
        Ok(())
    }

    /// The kinds this run covers.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.only.is_empty() || self.only.contains(k))
            .filter(|k| match k {
                Kind::Users => self.org.is_none(),
                Kind::Organizations => self.user.is_none(),
                Kind::Memberships => true,
            })
            .collect()
    }
}

fn input_ok(flag: &str, prefix: &str, id: &str) -> Result<(), String> {
    let ok = id.len() <= 64
        && id.strip_prefix(prefix).is_some_and(|r| {
            !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{flag} must be a Clerk id starting with {prefix}"))
    }
}
