//! The token verification keys on `/metrics`: how many are loaded and when they were last
//! loaded, per key set. A refresh that fails keeps the keys loaded before (tokens keep being
//! verified while Clerk or the mounted file is unreachable), so a key an operator removed from
//! `service-jwks` stays trusted until a load succeeds: the age shows it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use token_auth::KeyStore;

/// The key sets of one service, by what they verify (the `keys` label).
#[derive(Debug)]
pub struct KeyMetrics {
    stores: Vec<(&'static str, Arc<KeyStore>)>,
}

impl KeyMetrics {
    /// Reads `stores` at each scrape.
    pub fn new(stores: Vec<(&'static str, Arc<KeyStore>)>) -> Self {
        Self { stores }
    }

    /// Registers the metrics in `registry`.
    pub fn register(self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(self));
    }

    fn gauge(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&KeyStore) -> Option<i64>,
    ) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
        for (keys, store) in &self.stores {
            if let Some(v) = value(store) {
                ConstGauge::new(v).encode(family.encode_family(&[("keys", *keys)])?)?;
            }
        }
        Ok(())
    }
}

impl Collector for KeyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.gauge(
            &mut encoder,
            "verification_keys",
            "Token verification keys loaded, by key set (clerk, service)",
            |s| i64::try_from(s.key_count()).ok(),
        )?;
        self.gauge(
            &mut encoder,
            "verification_keys_loaded_timestamp_seconds",
            "When the key set was last loaded (Unix seconds; absent before the first load): a failed refresh keeps the keys loaded before",
            |s| s.loaded_at().and_then(|t| i64::try_from(t).ok()),
        )
    }
}
