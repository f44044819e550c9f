//! Prometheus metrics of the gateway.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `webhook_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub event_type: String,
    pub outcome: &'static str,
}

/// Labels of `webhook_verification_failures`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Labels of `webhook_downstream_latency_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
}

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Webhooks by event type and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Signature/timestamp/header failures by reason.
    pub verification_failures: Family<ReasonLabels, Counter>,
    /// Time of each downstream gRPC command.
    pub downstream_latency: Family<CommandLabels, Histogram>,
    /// Bytes of request bodies taken from `MAX_BODY_BYTES_IN_FLIGHT` now.
    pub body_bytes_in_flight: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            verification_failures: Family::default(),
            downstream_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            body_bytes_in_flight: Gauge::default(),
        };
        // Failed deliveries are counted from 0 for every type applied: an alert on `increase()`
        // sees the first failure of a type, which a series born at 1 would hide.
        for event_type in crate::clerk::HANDLED_EVENT_TYPES {
            let _ = m.requests.get_or_create(&RequestLabels {
                event_type: event_type.to_owned(),
                outcome: "failed",
            });
        }
        // So is every reason a delivery is refused by verification: the alert on a quiet
        // instance counts each pod's first refusals too.
        for reason in crate::verify::Rejection::LABELS {
            let _ = m
                .verification_failures
                .get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "webhook_requests",
            "Clerk webhooks by event type and outcome",
            m.requests.clone(),
        );
        registry.register(
            "webhook_verification_failures",
            "Webhooks refused by verification, by reason",
            m.verification_failures.clone(),
        );
        registry.register(
            "webhook_downstream_latency_seconds",
            "Downstream gRPC command latency",
            m.downstream_latency.clone(),
        );
        registry.register(
            "webhook_body_bytes_in_flight",
            "Bytes of request bodies being read or handled now, out of MAX_BODY_BYTES_IN_FLIGHT",
            m.body_bytes_in_flight.clone(),
        );
        m
    }

    /// Counts one webhook.
    pub fn request(&self, event_type: &str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                event_type: event_type.to_owned(),
                outcome,
            })
            .inc();
    }
}
