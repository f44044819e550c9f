//! Configuration of `workspace-service serve`, from flags or the environment. Values out of
//! range are refused with a message naming the setting, never silently adjusted.

use crate::workers::purge::PurgeSettings;
use service_runtime::ServiceArgs;
use std::net::SocketAddr;
use std::time::Duration;

mod roles;
pub use roles::RoleArgs;

/// Liveblocks clean-up settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveblocksArgs {
    /// Liveblocks REST API origin (scheme, host and port only: the calls add `/v2/...`).
    #[arg(
        long,
        env = "LIVEBLOCKS_API_URL",
        default_value = "https://api.liveblocks.io"
    )]
    pub liveblocks_api_url: String,
    /// Liveblocks secret key (`sk_...`). Without it rooms stay queued and nothing is sent.
    #[arg(long, env = "LIVEBLOCKS_SECRET_KEY", hide_env_values = true)]
    pub liveblocks_secret_key: Option<service_runtime::Secret>,
    /// Deletions in flight at once, per replica (1 to 256).
    #[arg(long, env = "LIVEBLOCKS_CONCURRENCY", default_value_t = 8)]
    pub liveblocks_concurrency: usize,
    /// Timeout of one Liveblocks call, seconds (at least 1).
    #[arg(long, env = "LIVEBLOCKS_TIMEOUT_SECS", default_value_t = 10)]
    pub liveblocks_timeout_secs: u64,
    /// Lease of a job, seconds: after a crash the job is retried once it expires. At least
    /// LIVEBLOCKS_TIMEOUT_SECS + 5, so a lease never ends while its call may still run.
    #[arg(long, env = "LIVEBLOCKS_LEASE_SECS", default_value_t = 60)]
    pub liveblocks_lease_secs: u64,
    /// First retry delay, milliseconds (at least 1; doubles per attempt, with jitter).
    #[arg(long, env = "LIVEBLOCKS_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub liveblocks_backoff_base_ms: u64,
    /// Longest retry delay, seconds (at least 1).
    #[arg(long, env = "LIVEBLOCKS_BACKOFF_MAX_SECS", default_value_t = 300)]
    pub liveblocks_backoff_max_secs: u64,
    /// Idle poll period of the worker, milliseconds (at least 10).
    #[arg(long, env = "LIVEBLOCKS_POLL_MS", default_value_t = 1000)]
    pub liveblocks_poll_ms: u64,
    /// A room deletion that failed this many attempts (1 to 1000) is given up: the job becomes
    /// dead, kept until an operator retries it. A wrong key or a refusal (422) is given up at once.
    #[arg(long, env = "LIVEBLOCKS_MAX_ATTEMPTS", default_value_t = 50)]
    pub liveblocks_max_attempts: i32,
    /// Seconds between checks of the key against the Liveblocks API (10 to 86400).
    #[arg(long, env = "LIVEBLOCKS_KEY_CHECK_SECS", default_value_t = 300)]
    pub liveblocks_key_check_secs: u64,
    /// Seconds after a room's rows were deleted when its Liveblocks room is deleted a second
    /// time (0: never, or 3660 to 86400). Liveblocks creates a room when a client connects to it,
    /// and a client keeps its access token until it expires (about an hour): one issued just
    /// before the deletion can bring the room back. The default outlives such a token by
    /// 5 minutes. A room token Liveblocks issues living longer than this less 60 s (an hour
    /// without a sweep) is not handed out.
    #[arg(long, env = "LIVEBLOCKS_SWEEP_AFTER_SECS", default_value_t = 3900)]
    pub liveblocks_sweep_after_secs: u64,
}

/// The Liveblocks clean-up worker's settings, from [`LiveblocksArgs::settings`].
#[derive(Debug, Clone, Copy)]
pub struct CleanupSettings {
    /// Calls in flight at most (per replica).
    pub concurrency: usize,
    /// How long a leased job belongs to this worker before others may retry it.
    pub lease: Duration,
    /// The longest one attempt may take: its call's timeout and a margin.
    pub attempt_max: Duration,
    /// Idle poll period (a local enqueue wakes the worker at once).
    pub poll: Duration,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// A job that failed this many attempts becomes dead.
    pub max_attempts: i32,
    /// How often the key is checked.
    pub key_check: Duration,
    /// When after its rows' deletion a room is deleted again (`None`: never).
    pub sweep_after: Option<Duration>,
}

impl CleanupSettings {
    /// The longest-lived room token the service may hand out: one the sweep outlives by
    /// [`TOKEN_MARGIN_SECS`]. Without a sweep, the hour the earliest sweep assumes: a removed
    /// member's token still lives no longer than that (docs/security.md).
    pub fn longest_token(&self) -> Duration {
        self.sweep_after
            .unwrap_or(Duration::from_secs(MIN_SWEEP_AFTER_SECS))
            .saturating_sub(Duration::from_secs(TOKEN_MARGIN_SECS))
    }
}

impl Default for CleanupSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease: Duration::from_secs(60),
            attempt_max: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_attempts: 50,
            key_check: Duration::from_secs(300),
            sweep_after: Some(Duration::from_secs(3900)),
        }
    }
}

/// What the sweep keeps beyond the longest token it must outlive: the call that issued the
/// token (3 s at most) and clock differences between Liveblocks, the pods and the database.
pub const TOKEN_MARGIN_SECS: u64 = 60;

/// The earliest sweep: a Liveblocks access token lives an hour (a maintainer's word; each
/// token's own `exp` is checked against the sweep, see [`CleanupSettings::longest_token`]), plus
/// [`TOKEN_MARGIN_SECS`].
pub const MIN_SWEEP_AFTER_SECS: u64 = 3600 + TOKEN_MARGIN_SECS;

/// Refuses a `LIVEBLOCKS_API_URL` that is not a bare `http(s)` origin: with a path (`/v2`) every
/// call would reach a wrong path, and a 404 there must never pass for a room already gone.
fn check_origin(url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "LIVEBLOCKS_API_URL ({url}) {why}: give the origin only, e.g. https://api.liveblocks.io"
        ))
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return bad("is not a URL");
    };
    if !matches!(parsed.scheme(), "https" | "http") || !parsed.has_host() {
        return bad("is not an http(s) URL with a host");
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return bad("has a path or query");
    }
    Ok(())
}

/// Refuses a `LIVEBLOCKS_SECRET_KEY` that Liveblocks' own SDK would refuse (`assertSecretKey`:
/// an `sk_` prefix, then only `[A-Za-z0-9_-]`): a public key, or one copied with a newline or a
/// space, would otherwise pass for a Liveblocks outage or a rejected key. Never shows the key.
fn check_secret_key(key: &str) -> Result<(), String> {
    if key.starts_with("pk_") {
        return Err("LIVEBLOCKS_SECRET_KEY is a public key (pk_...): give the project's secret key (sk_...) from the Liveblocks dashboard".into());
    }
    if !key.starts_with("sk_") {
        return Err(
            "LIVEBLOCKS_SECRET_KEY must be a Liveblocks secret key starting with sk_".into(),
        );
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("LIVEBLOCKS_SECRET_KEY holds characters a Liveblocks key never has (a space, a newline, a quote?): copy it again from the Liveblocks dashboard".into());
    }
    Ok(())
}

/// What a Liveblocks job's lease leaves beyond its call's timeout.
const LEASE_MARGIN_SECS: u64 = 5;

impl LiveblocksArgs {
    /// The worker settings, or what is out of range.
    pub fn settings(&self) -> Result<CleanupSettings, String> {
        let out_of_range = |what: &str| Err(format!("{what} is out of range"));
        check_origin(&self.liveblocks_api_url)?;
        if let Some(key) = self
            .liveblocks_secret_key
            .as_ref()
            .filter(|k| !k.is_empty())
        {
            check_secret_key(key.expose())?;
        }
        if !(1..=256).contains(&self.liveblocks_concurrency) {
            return out_of_range("LIVEBLOCKS_CONCURRENCY (1 to 256)");
        }
        if self.liveblocks_timeout_secs == 0 {
            return out_of_range("LIVEBLOCKS_TIMEOUT_SECS (at least 1)");
        }
        if self.liveblocks_lease_secs < self.liveblocks_timeout_secs + LEASE_MARGIN_SECS {
            return Err(format!(
                "LIVEBLOCKS_LEASE_SECS ({}) must be at least LIVEBLOCKS_TIMEOUT_SECS + {LEASE_MARGIN_SECS} ({}), so a lease never ends while its call may still run",
                self.liveblocks_lease_secs,
                self.liveblocks_timeout_secs + LEASE_MARGIN_SECS
            ));
        }
        if !(1..=1000).contains(&self.liveblocks_max_attempts) {
            return out_of_range("LIVEBLOCKS_MAX_ATTEMPTS (1 to 1000)");
        }
        if !(10..=86_400).contains(&self.liveblocks_key_check_secs) {
            return out_of_range("LIVEBLOCKS_KEY_CHECK_SECS (10 to 86400)");
        }
        if self.liveblocks_sweep_after_secs != 0
            && !(MIN_SWEEP_AFTER_SECS..=86_400).contains(&self.liveblocks_sweep_after_secs)
        {
            return Err(format!(
                "LIVEBLOCKS_SWEEP_AFTER_SECS ({}) must be 0 (no sweep) or from {MIN_SWEEP_AFTER_SECS} to 86400: an earlier sweep runs while tokens issued before the deletion still open the room",
                self.liveblocks_sweep_after_secs
            ));
        }
        if self.liveblocks_poll_ms < 10 {
            return out_of_range("LIVEBLOCKS_POLL_MS (at least 10)");
        }
        if self.liveblocks_backoff_base_ms == 0 || self.liveblocks_backoff_max_secs == 0 {
            return out_of_range(
                "LIVEBLOCKS_BACKOFF_BASE_MS / LIVEBLOCKS_BACKOFF_MAX_SECS (at least 1)",
            );
        }
        Ok(CleanupSettings {
            concurrency: self.liveblocks_concurrency,
            lease: Duration::from_secs(self.liveblocks_lease_secs),
            attempt_max: Duration::from_secs(self.liveblocks_timeout_secs + LEASE_MARGIN_SECS),
            poll: Duration::from_millis(self.liveblocks_poll_ms),
            backoff_base: Duration::from_millis(self.liveblocks_backoff_base_ms),
            backoff_max: Duration::from_secs(self.liveblocks_backoff_max_secs),
            max_attempts: self.liveblocks_max_attempts,
            key_check: Duration::from_secs(self.liveblocks_key_check_secs),
            sweep_after: (self.liveblocks_sweep_after_secs > 0)
                .then(|| Duration::from_secs(self.liveblocks_sweep_after_secs)),
        })
    }

    /// The timeout of one call.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.liveblocks_timeout_secs)
    }
}

/// Settings of the purge of deleted workspaces and rooms.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// Rows deleted per chunk, each chunk one short transaction (100 to 100000).
    #[arg(long, env = "PURGE_CHUNK_ROWS", default_value_t = 10_000)]
    pub purge_chunk_rows: i64,
    /// Workspaces or rooms purged at once, per replica (1 to 16).
    #[arg(long, env = "PURGE_CONCURRENCY", default_value_t = 2)]
    pub purge_concurrency: usize,
    /// Connections one purge uses at once (1 to 8): its big tables are shared between them.
    #[arg(long, env = "PURGE_LANES", default_value_t = 2)]
    pub purge_lanes: usize,
    /// Idle poll period of the purge worker, milliseconds (at least 10).
    #[arg(long, env = "PURGE_POLL_MS", default_value_t = 1000)]
    pub purge_poll_ms: u64,
    /// Lease of a purge job, seconds (5 to 3600): every chunk extends it; a crashed worker's
    /// job is taken over once it expires.
    #[arg(long, env = "PURGE_LEASE_SECS", default_value_t = 60)]
    pub purge_lease_secs: u64,
}

impl PurgeArgs {
    /// The worker settings, or what is out of range.
    pub fn settings(&self) -> Result<PurgeSettings, String> {
        if !(100..=100_000).contains(&self.purge_chunk_rows) {
            return Err(format!(
                "PURGE_CHUNK_ROWS ({}) must be from 100 to 100000",
                self.purge_chunk_rows
            ));
        }
        if !(1..=16).contains(&self.purge_concurrency) {
            return Err(format!(
                "PURGE_CONCURRENCY ({}) must be from 1 to 16",
                self.purge_concurrency
            ));
        }
        if !(1..=8).contains(&self.purge_lanes) {
            return Err(format!(
                "PURGE_LANES ({}) must be from 1 to 8",
                self.purge_lanes
            ));
        }
        if self.purge_poll_ms < 10 {
            return Err(format!(
                "PURGE_POLL_MS ({}) must be at least 10",
                self.purge_poll_ms
            ));
        }
        if !(5..=3600).contains(&self.purge_lease_secs) {
            return Err(format!(
                "PURGE_LEASE_SECS ({}) must be from 5 to 3600",
                self.purge_lease_secs
            ));
        }
        Ok(PurgeSettings {
            chunk_rows: self.purge_chunk_rows,
            concurrency: self.purge_concurrency,
            lanes: self.purge_lanes,
            poll: Duration::from_millis(self.purge_poll_ms),
            lease: Duration::from_secs(self.purge_lease_secs),
            ..PurgeSettings::default()
        })
    }
}

/// Settings of the live watches, and the per-user bounds of calls ([`CallLimitArgs`]).
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Watch streams one replica serves at most (1 to 100000, at most GRPC_MAX_CONNECTIONS:
    /// a gRPC-Web watch takes a connection of its own); more are refused with UNAVAILABLE.
    #[arg(long, env = "WATCH_MAX_STREAMS", default_value_t = 2048)]
    pub watch_max_streams: usize,
    /// Watch streams one user may have open on one replica (at least 1, below
    /// GRPC_MAX_CONNECTIONS); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WATCH_MAX_PER_USER", default_value_t = 32)]
    pub watch_max_per_user: usize,
    /// Bytes of events queued per stream for a client that reads slowly (64 KiB to 16 MiB);
    /// beyond, the stream ends with RESOURCE_EXHAUSTED and the client resumes with its last
    /// token.
    #[arg(long, env = "WATCH_BUFFER_BYTES", default_value_t = 256 * 1024)]
    pub watch_buffer_bytes: usize,
    /// Bytes the replica's live events may hold (1 MiB to 4 GiB, at least WATCH_BUFFER_BYTES);
    /// beyond, every stream whose client is behind ends with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WATCH_MEMORY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub watch_memory_bytes: usize,
    /// Hours the change log keeps changes (1 to 720): how old a resume token may be.
    #[arg(long, env = "CHANGE_LOG_RETENTION_HOURS", default_value_t = 24)]
    pub change_log_retention_hours: u64,
    /// Seconds between a stream's re-checks of its caller's access (1 to 3600).
    #[arg(long, env = "WATCH_ACCESS_RECHECK_SECS", default_value_t = 30)]
    pub watch_access_recheck_secs: u64,
    #[command(flatten)]
    pub calls: CallLimitArgs,
}

impl WatchArgs {
    /// The settings, or what is out of range.
    pub fn settings(&self) -> Result<crate::live::LiveSettings, String> {
        if !(1..=100_000).contains(&self.watch_max_streams) {
            return Err(format!(
                "WATCH_MAX_STREAMS ({}) must be from 1 to 100000",
                self.watch_max_streams
            ));
        }
        if !(1..=100_000).contains(&self.watch_max_per_user) {
            return Err(format!(
                "WATCH_MAX_PER_USER ({}) must be from 1 to 100000",
                self.watch_max_per_user
            ));
        }
        if !(64 * 1024..=16 * 1024 * 1024).contains(&self.watch_buffer_bytes) {
            return Err(format!(
                "WATCH_BUFFER_BYTES ({}) must be from 65536 (64 KiB) to 16777216 (16 MiB)",
                self.watch_buffer_bytes
            ));
        }
        if !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.watch_memory_bytes)
            || self.watch_memory_bytes < self.watch_buffer_bytes
        {
            return Err(format!(
                "WATCH_MEMORY_BYTES ({}) must be from 1048576 (1 MiB) to 4 GiB and at least WATCH_BUFFER_BYTES ({})",
                self.watch_memory_bytes, self.watch_buffer_bytes
            ));
        }
        if !(1..=720).contains(&self.change_log_retention_hours) {
            return Err(format!(
                "CHANGE_LOG_RETENTION_HOURS ({}) must be from 1 to 720",
                self.change_log_retention_hours
            ));
        }
        if !(1..=3600).contains(&self.watch_access_recheck_secs) {
            return Err(format!(
                "WATCH_ACCESS_RECHECK_SECS ({}) must be from 1 to 3600",
                self.watch_access_recheck_secs
            ));
        }
        Ok(crate::live::LiveSettings {
            stream_bytes: self.watch_buffer_bytes,
            total_bytes: self.watch_memory_bytes,
            max_streams: self.watch_max_streams,
            per_user: self.watch_max_per_user,
            retention: Duration::from_secs(self.change_log_retention_hours * 3600),
            recheck: Duration::from_secs(self.watch_access_recheck_secs),
        })
    }

    /// What the watch settings may not exceed of the server's: a replica never serves more
    /// watches than connections, and one user never holds every connection.
    fn check_against(&self, grpc: &service_runtime::GrpcLimits) -> Result<(), String> {
        if self.watch_max_streams > grpc.max_connections {
            return Err(format!(
                "WATCH_MAX_STREAMS ({}) must not exceed GRPC_MAX_CONNECTIONS ({}): a gRPC-Web watch holds a connection of its own",
                self.watch_max_streams, grpc.max_connections
            ));
        }
        if self.watch_max_per_user >= grpc.max_connections {
            return Err(format!(
                "WATCH_MAX_PER_USER ({}) must be below GRPC_MAX_CONNECTIONS ({}), so one user cannot hold every connection",
                self.watch_max_per_user, grpc.max_connections
            ));
        }
        Ok(())
    }
}

impl Default for WatchArgs {
    fn default() -> Self {
        Self {
            watch_max_streams: 2048,
            watch_max_per_user: 32,
            watch_buffer_bytes: 256 * 1024,
            watch_memory_bytes: 16 * 1024 * 1024,
            change_log_retention_hours: 24,
            watch_access_recheck_secs: 30,
            calls: CallLimitArgs::default(),
        }
    }
}

/// What one user's calls may take of a replica, and how large an answer may be.
#[derive(Debug, Clone, clap::Args)]
pub struct CallLimitArgs {
    /// Reads per minute and calls in flight, as identity-service has them.
    #[command(flatten)]
    pub quotas: service_runtime::UserQuotaArgs,
    /// Watches a user may open per minute, as a burst of as many (1 to 100000); beyond,
    /// RESOURCE_EXHAUSTED with when to retry.
    #[arg(long, env = "USER_WATCH_OPENS_PER_MINUTE", default_value_t = 60)]
    pub user_watch_opens_per_minute: u32,
    /// Liveblocks room tokens (`AuthorizeLiveblocksRoom`) a user may ask for per minute, as a
    /// burst of as many (1 to 100000); beyond, RESOURCE_EXHAUSTED with when to retry. Each
    /// token is one call to Liveblocks under the project's one key.
    #[arg(long, env = "USER_ROOM_TOKENS_PER_MINUTE", default_value_t = 120)]
    pub user_room_tokens_per_minute: u32,
    /// Bytes one answer carries at most (64 KiB to 16 MiB): a page that would be larger ends
    /// early and its next_page_token continues it.
    #[arg(long, env = "RESPONSE_MAX_BYTES", default_value_t = 256 * 1024)]
    pub response_max_bytes: usize,
}

impl Default for CallLimitArgs {
    fn default() -> Self {
        Self {
            quotas: service_runtime::UserQuotaArgs::default(),
            user_watch_opens_per_minute: 60,
            user_room_tokens_per_minute: 120,
            response_max_bytes: 256 * 1024,
        }
    }
}

impl CallLimitArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        self.quotas.check()?;
        if !(1..=100_000).contains(&self.user_watch_opens_per_minute) {
            return Err(format!(
                "USER_WATCH_OPENS_PER_MINUTE ({}) must be from 1 to 100000",
                self.user_watch_opens_per_minute
            ));
        }
        if !(1..=100_000).contains(&self.user_room_tokens_per_minute) {
            return Err(format!(
                "USER_ROOM_TOKENS_PER_MINUTE ({}) must be from 1 to 100000",
                self.user_room_tokens_per_minute
            ));
        }
        if !(64 * 1024..=16 * 1024 * 1024).contains(&self.response_max_bytes) {
            return Err(format!(
                "RESPONSE_MAX_BYTES ({}) must be from 65536 (64 KiB) to 16777216 (16 MiB)",
                self.response_max_bytes
            ));
        }
        Ok(())
    }
}

/// Configuration of `workspace-service serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub liveblocks: LiveblocksArgs,
    #[command(flatten)]
    pub purge: PurgeArgs,
    #[command(flatten)]
    pub ledger: delivery_ledger::LedgerArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
    #[command(flatten)]
    pub roles: RoleArgs,
    /// Bytes this replica's cache of users' access (workspace, membership, removal) may hold;
    /// 0 turns it off and every check reads the database. Entries follow every change within
    /// 80 ms (PostgreSQL notifications; docs/security.md).
    #[arg(long, env = "ACCESS_CACHE_BYTES", default_value_t = 8 << 20)]
    pub access_cache_bytes: u64,
    /// Bytes this replica's cache of each workspace's channels (`ListChannels` pages) may hold;
    /// 0 turns it off and every page reads the database. Kept coherent as the access cache is;
    /// it never decides access, and is read only after an access-cache hit.
    #[arg(long, env = "CHANNEL_CACHE_BYTES", default_value_t = 4 << 20)]
    pub channel_cache_bytes: u64,
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9092")]
    pub metrics_addr: SocketAddr,
}

impl service_runtime::cli::CheckConfig for Config {
    fn check(&self) -> Result<(), String> {
        self.service.check()?;
        self.ledger.check()?;
        self.watch.settings()?;
        self.watch.check_against(&self.service.grpc)?;
        self.watch.calls.check()?;
        self.roles.roles()?;
        let purge = self.purge.settings()?;
        let pool = self.service.db.db_pool_size;
        if purge.concurrency * purge.lanes > pool / 2 {
            return Err(format!(
                "PURGE_CONCURRENCY ({}) x PURGE_LANES ({}) must be at most half of DB_POOL_SIZE ({pool}): each lane holds a connection, and calls keep the other half",
                purge.concurrency, purge.lanes
            ));
        }
        self.liveblocks.settings().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        liveblocks: LiveblocksArgs,
    }

    #[test]
    fn secrets_never_show_in_debug() {
        #[derive(Debug, clap::Parser)]
        struct Serve {
            #[command(flatten)]
            config: Config,
        }
        let parsed = Serve::try_parse_from([
            "workspace-service",
            "--database-url",
            "postgres://app:db-password-1@db/vbase",
            "--clerk-jwt-issuer-domain",
            "https://clerk.example.com",
            "--service-jwks-file",
            "/etc/jwks.json",
            "--liveblocks-secret-key",
            "sk_live_secret_2",
        ])
        .unwrap();
        let shown = format!("{parsed:?}");
        assert!(shown.contains("clerk.example.com"), "{shown}");
        for secret in ["db-password-1", "sk_live_secret_2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let api = crate::workers::liveblocks::HttpLiveblocks::new(
            "https://api.liveblocks.io",
            "sk_live_secret_2",
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{api:?}").contains("sk_live_secret_2"));
    }

    fn settings(args: &[&str]) -> Result<CleanupSettings, String> {
        let argv = std::iter::once("x").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().liveblocks.settings()
    }

    #[test]
    fn out_of_range_settings_are_refused_not_clamped() {
        for bad in [
            &["--liveblocks-concurrency", "0"][..],
            &["--liveblocks-concurrency", "257"],
            &["--liveblocks-poll-ms", "5"],
            &["--liveblocks-timeout-secs", "0"],
            &["--liveblocks-backoff-base-ms", "0"],
            &["--liveblocks-sweep-after-secs", "600"],
            &["--liveblocks-sweep-after-secs", "3659"],
            &["--liveblocks-sweep-after-secs", "86401"],
            &["--liveblocks-api-url", "https://api.liveblocks.io/v2"],
            &["--liveblocks-api-url", "https://api.liveblocks.io/v2/"],
            &["--liveblocks-api-url", "https://api.liveblocks.io?x=1"],
            &["--liveblocks-api-url", "api.liveblocks.io"],
            &["--liveblocks-api-url", "ftp://api.liveblocks.io"],
        ] {
            assert!(settings(bad).is_err(), "{bad:?} was accepted");
        }
        let short_lease = Cli::try_parse_from([
            "x",
            "--liveblocks-timeout-secs",
            "10",
            "--liveblocks-lease-secs",
            "12",
        ])
        .unwrap();
        let err = short_lease.liveblocks.settings().unwrap_err();
        assert!(err.contains("LIVEBLOCKS_LEASE_SECS"), "{err}");
        let defaults = Cli::try_parse_from(["x"])
            .unwrap()
            .liveblocks
            .settings()
            .unwrap();
        assert_eq!(defaults.concurrency, 8);
        for good in [
            &["--liveblocks-sweep-after-secs", "0"][..],
            &["--liveblocks-sweep-after-secs", "3660"],
            &["--liveblocks-api-url", "https://api.liveblocks.io/"],
            &["--liveblocks-api-url", "http://127.0.0.1:4000"],
        ] {
            assert!(settings(good).is_ok(), "{good:?} was refused");
        }
        assert_eq!(defaults.lease, Duration::from_secs(60));
    }

    #[test]
    fn a_key_liveblocks_sdk_would_refuse_is_refused_without_showing_it() {
        for (key, says) in [
            ("pk_live_abc123", "public key"),
            ("sk_live_abc123\n", "characters"),
            (" sk_live_abc123", "sk_"),
            ("sk_live abc123", "characters"),
            ("sk_live_abc123é", "characters"),
            ("live_abc123", "sk_"),
        ] {
            let err = settings(&["--liveblocks-secret-key", key]).unwrap_err();
            assert!(
                err.contains("LIVEBLOCKS_SECRET_KEY") && err.contains(says),
                "{key:?}: {err}"
            );
            assert!(!err.contains("abc123"), "the key shows in {err}");
        }
        for good in [
            "sk_live_AZaz09_-x",
            "sk_test_standin",
            "sk_dev_local_stand_in",
        ] {
            assert!(
                settings(&["--liveblocks-secret-key", good]).is_ok(),
                "{good}"
            );
        }
        // Unset or empty: no key (rooms stay queued), as before.
        assert!(settings(&["--liveblocks-secret-key", ""]).is_ok());
    }
}
