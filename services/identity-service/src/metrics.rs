//! Prometheus metrics of identity-service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `identity_commands`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
    pub outcome: &'static str,
}

/// The service's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Sync commands by command and outcome (applied, duplicate, stale, error).
    pub commands: Family<CommandLabels, Counter>,
    /// The same counts, written to the database for the operators' sync status.
    pub tally: delivery_ledger::Tally,
    /// Processed event ids pruned after the retention period.
    pub pruned_events: Counter,
    /// Webhook upserts per group-commit statement.
    pub upsert_batch_size: Histogram,
    /// User lookups per database query (coalesced reads).
    pub lookup_batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            commands: Family::default(),
            tally: delivery_ledger::Tally::default(),
            pruned_events: Counter::default(),
            upsert_batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            lookup_batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "identity_commands",
            "Sync commands by outcome",
            m.commands.clone(),
        );
        registry.register(
            "identity_processed_events_pruned",
            "Processed event ids removed after the retention period",
            m.pruned_events.clone(),
        );
        registry.register(
            "identity_upsert_batch_size",
            "Webhook upserts committed per statement (group commit)",
            m.upsert_batch_size.clone(),
        );
        registry.register(
            "identity_lookup_batch_size",
            "User lookups answered per database query (coalesced reads)",
            m.lookup_batch_size.clone(),
        );
        m
    }

    /// Counts one command.
    pub fn command(&self, command: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
        self.tally.record(command, outcome);
    }
}
