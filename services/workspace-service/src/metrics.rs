//! Prometheus metrics of workspace-service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of `workspace_commands`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
    pub outcome: &'static str,
}

/// Labels of `liveblocks_cleanup_deliveries`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Labels of `workspace_watch_ends`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Why a watch stream ends (`workspace_watch_ends`).
pub const WATCH_END_REASONS: &[&str] = &[
    "gone",
    "behind",
    "memory",
    "expired",
    "denied",
    "unchecked",
    "deleted",
    "stopping",
    "too_old",
    "error",
];

/// Outcomes of a room-token call (`liveblocks_room_tokens`): a token issued, refused
/// (PERMISSION_DENIED), no such room, Liveblocks or the database unavailable, Liveblocks
/// rate-limiting the key (429), a malformed room id, a token Liveblocks issued living longer
/// than the sweep allows (or whose `exp` cannot be read: withheld), anything else.
pub const ROOM_TOKEN_OUTCOMES: &[&str] = &[
    "granted",
    "denied",
    "not_found",
    "unavailable",
    "rate_limited",
    "invalid",
    "too_long_lived",
    "error",
];

/// Labels of `workspace_purge_rows`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

/// The service's metrics.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Sync commands by command and outcome.
    pub commands: Family<CommandLabels, Counter>,
    /// The same counts, written to the database for the operators' sync status.
    pub tally: delivery_ledger::Tally,
    /// Liveblocks DELETE calls by outcome.
    pub liveblocks_deliveries: Family<OutcomeLabels, Counter>,
    /// Calls refused for the secret key (401/403).
    pub liveblocks_key_rejections: Counter,
    /// Jobs queued and not dead.
    pub liveblocks_queue_depth: Gauge,
    /// Jobs given up (kept until retried).
    pub liveblocks_dead_jobs: Gauge,
    /// Rooms deleted once, waiting for their second deletion.
    pub liveblocks_sweeps_scheduled: Gauge,
    /// 1 when Liveblocks accepted the key at the last check, 0 when it rejected it, -1 unknown
    /// (or no key set).
    pub liveblocks_key_valid: Gauge,
    /// 1 while the clean-up is paused because Liveblocks is unavailable.
    pub liveblocks_paused: Gauge,
    /// `AuthorizeLiveblocksRoom` calls by outcome.
    pub room_tokens: Family<OutcomeLabels, Counter>,
    /// Purge jobs given up (kept until retried).
    pub purge_dead_jobs: Gauge,
    /// Live watch streams open on this replica.
    pub watch_streams: Gauge,
    /// Watch streams ended, by why.
    pub watch_ends: Family<ReasonLabels, Counter>,
    /// Watch streams cut because their end could not reach a client that stopped reading.
    pub watch_cuts: Counter,
    /// Bytes the replica's live events hold (queued for streams, broadcast, being sent).
    pub watch_buffered_bytes: Gauge,
    /// Age of the oldest queued job.
    pub liveblocks_oldest_job_seconds: Gauge<f64, AtomicU64>,
    /// Rows purged by table (deleted workspaces and rooms).
    pub purge_rows: Family<TableLabels, Counter>,
    /// Purge jobs waiting or running.
    pub purge_jobs_pending: Gauge,
    /// Age of the oldest purge job.
    pub purge_oldest_job_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "workspace_commands",
            "Sync commands by outcome",
            m.commands.clone(),
        );
        registry.register(
            "liveblocks_cleanup_deliveries",
            "Liveblocks room deletions by outcome",
            m.liveblocks_deliveries.clone(),
        );
        registry.register(
            "liveblocks_cleanup_key_rejections",
            "Liveblocks calls refused for the secret key",
            m.liveblocks_key_rejections.clone(),
        );
        registry.register(
            "liveblocks_cleanup_queue_depth",
            "Liveblocks rooms waiting for deletion",
            m.liveblocks_queue_depth.clone(),
        );
        registry.register(
            "liveblocks_cleanup_oldest_job_seconds",
            "Age of the oldest queued Liveblocks room deletion",
            m.liveblocks_oldest_job_seconds.clone(),
        );
        registry.register(
            "liveblocks_cleanup_dead_jobs",
            "Liveblocks room deletions given up (a permanent answer or too many attempts), kept until retried",
            m.liveblocks_dead_jobs.clone(),
        );
        registry.register(
            "liveblocks_cleanup_sweeps_scheduled",
            "Liveblocks rooms deleted once and waiting for their second deletion (LIVEBLOCKS_SWEEP_AFTER_SECS after their rows')",
            m.liveblocks_sweeps_scheduled.clone(),
        );
        registry.register(
            "liveblocks_key_valid",
            "1 when Liveblocks accepted LIVEBLOCKS_SECRET_KEY at the last check, 0 when it rejected it, -1 when unknown or unset",
            m.liveblocks_key_valid.clone(),
        );
        registry.register(
            "liveblocks_cleanup_paused",
            "1 while the Liveblocks clean-up is paused because Liveblocks is unavailable (5xx, timeouts, 429); a probe after each pause resumes it",
            m.liveblocks_paused.clone(),
        );
        for outcome in ROOM_TOKEN_OUTCOMES {
            m.room_tokens
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        registry.register(
            "liveblocks_room_tokens",
            "AuthorizeLiveblocksRoom calls by outcome (granted, denied, not_found, unavailable, rate_limited, invalid, too_long_lived, error)",
            m.room_tokens.clone(),
        );
        registry.register(
            "workspace_purge_dead_jobs",
            "Purge jobs given up after too many failed attempts, kept until retried",
            m.purge_dead_jobs.clone(),
        );
        registry.register(
            "workspace_watch_streams",
            "Live watch streams open on this replica",
            m.watch_streams.clone(),
        );
        // Every reason from the start, at 0, so that a rate over any of them has a series.
        for reason in WATCH_END_REASONS {
            m.watch_ends
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        registry.register(
            "workspace_watch_ends",
            "Watch streams ended, by reason (gone: the client left; behind, memory: it did not read; expired, denied, deleted, stopping, too_old, error)",
            m.watch_ends.clone(),
        );
        registry.register(
            "workspace_watch_cuts",
            "Watch streams ended without their status because the client stopped reading (HTTP/2: stream reset; HTTP/1.1: connection closed)",
            m.watch_cuts.clone(),
        );
        registry.register(
            "workspace_watch_buffered_bytes",
            "Bytes the replica's live events hold: queued for streams, broadcast, or being sent",
            m.watch_buffered_bytes.clone(),
        );
        registry.register(
            "workspace_purge_rows",
            "Rows of deleted workspaces and rooms purged, by table",
            m.purge_rows.clone(),
        );
        registry.register(
            "workspace_purge_jobs_pending",
            "Deleted workspaces and rooms whose rows are still being purged",
            m.purge_jobs_pending.clone(),
        );
        registry.register(
            "workspace_purge_oldest_job_seconds",
            "Age of the oldest purge job",
            m.purge_oldest_job_seconds.clone(),
        );
        m
    }

    /// Counts rows purged from `table`.
    pub fn purged(&self, table: &'static str, rows: i64) {
        self.purge_rows
            .get_or_create(&TableLabels { table })
            .inc_by(rows.max(0) as u64);
    }

    /// Counts one command.
    pub fn command(&self, command: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
        self.tally.record(command, outcome);
    }

    /// Counts a watch stream that ended for `reason`.
    pub fn watch_ended(&self, reason: &'static str) {
        self.watch_ends
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one room-token call by its outcome (`crate::liveblocks::outcome`).
    pub fn room_token(&self, outcome: &'static str) {
        self.room_tokens
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one Liveblocks call.
    pub fn liveblocks_delivery(&self, outcome: &'static str) {
        self.liveblocks_deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}
