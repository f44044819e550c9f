//! The replica's read caches on `/metrics`: what each answered, missed and could not answer,
//! what invalidated or emptied it, and what it holds. Read from the caches at each scrape.

use coherent_cache::{Coherent, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::hash::Hash;
use std::sync::Arc;

type Read = Arc<dyn Fn() -> Stats + Send + Sync>;

/// The caches of one service, by name (the `cache` label). Caches turned off (0 bytes) are
/// left out.
#[derive(Default, Clone)]
pub struct CacheMetrics {
    caches: Vec<(&'static str, Read)>,
}

impl std::fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.caches.iter().map(|(n, _)| *n).collect();
        f.debug_struct("CacheMetrics")
            .field("caches", &names)
            .finish()
    }
}

impl CacheMetrics {
    /// Adds `cache` as `name`, unless it is turned off.
    #[must_use]
    pub fn with<K, V>(mut self, name: &'static str, cache: &Coherent<K, V>) -> Self
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        if cache.enabled() {
            let cache = cache.clone();
            self.caches.push((name, Arc::new(move || cache.stats())));
        }
        self
    }

    /// Registers the caches' metrics in `registry`.
    pub fn register(self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(self));
    }
}

/// A counter family: one value per label set.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, &str)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A gauge family: one value per label set.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, &str)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for CacheMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all: Vec<(&str, Stats)> = self.caches.iter().map(|(n, read)| (*n, read())).collect();
        let per = |f: fn(&Stats) -> u64| -> Vec<(Vec<(&str, &str)>, u64)> {
            all.iter()
                .map(|(n, s)| (vec![("cache", *n)], f(s)))
                .collect()
        };
        let gauge = |f: fn(&Stats) -> u64| -> Vec<(Vec<(&str, &str)>, i64)> {
            all.iter()
                .map(|(n, s)| (vec![("cache", *n)], i64::try_from(f(s)).unwrap_or(i64::MAX)))
                .collect()
        };
        let lookups: Vec<_> = all
            .iter()
            .flat_map(|(n, s)| {
                [
                    ("hit", s.hits),
                    ("miss", s.misses),
                    ("read_through", s.read_through),
                ]
                .map(|(result, v)| (vec![("cache", *n), ("result", result)], v))
            })
            .collect();
        counters(
            &mut encoder,
            "cache_lookups",
            "Read-cache lookups: hit, miss, or read_through (the cache could not answer: its notification connection down or its pings late)",
            &lookups,
        )?;
        counters(
            &mut encoder,
            "cache_invalidations",
            "Changes the cache forgot what they name for (a notification, or a write on this replica), one each however many entries",
            &per(|s| s.invalidations),
        )?;
        counters(
            &mut encoder,
            "cache_connection_losses",
            "Losses of the replica's notification connection (shared by its caches, each counts it; each emptied the cache and reads went to the database until it listened again)",
            &per(|s| s.connection_losses),
        )?;
        counters(
            &mut encoder,
            "cache_notifications_dropped",
            "Notifications that came faster than the cache applied them (each emptied the cache)",
            &per(|s| s.dropped),
        )?;
        gauges(
            &mut encoder,
            "cache_answering",
            "1 while the cache may answer (listening, its pings back within 80 ms), else 0",
            &gauge(|s| u64::from(s.answering)),
        )?;
        gauges(
            &mut encoder,
            "cache_entries",
            "Entries the cache holds",
            &gauge(|s| s.entries),
        )?;
        gauges(
            &mut encoder,
            "cache_bytes",
            "Bytes the cache holds",
            &gauge(|s| s.bytes),
        )?;
        gauges(
            &mut encoder,
            "cache_capacity_bytes",
            "The most bytes the cache holds (its _CACHE_BYTES setting)",
            &gauge(|s| s.capacity),
        )?;
        Ok(())
    }
}
