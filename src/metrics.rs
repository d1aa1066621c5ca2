//! Prometheus metrics, served on the admin port's `/metrics`.
//!
//! One process-wide set: every part of the path records into it without the
//! handles being threaded through each constructor, and tests read it back
//! through `render`. Label values are bounded: namespaces are the opted-in
//! ones, registries the hosts images name, reasons fixed labels.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub namespace: String,
    /// The decision kind (`steered`, `held`, `only_option`, `skipped`, ...).
    pub decision: String,
    /// `patched`, `allowed`, `audited` or `denied`.
    pub outcome: String,
    /// The architectures the pod was placed on, or `none`.
    pub architecture: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryResultLabels {
    pub registry: String,
    /// `ok`, or the error's metric label.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArchitectureLabels {
    pub architecture: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_duration: Histogram,
    pub review_warnings: Counter,
    pub bad_requests: Family<ReasonLabels, Counter>,
    pub registry_requests: Family<RegistryResultLabels, Counter>,
    pub registry_duration: HistogramFamily<RegistryLabels>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub cache_entries: Gauge,
    pub no_nodes: Family<ArchitectureLabels, Counter>,
    pub config_reloads: Family<ReasonLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~4 s: cached reviews sit at the bottom, registry calls
    // and the 2.5 s budget at the top.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("archway");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register("reviews", "Admission reviews answered", reviews.clone());
        let review_duration = latency_histogram();
        registry.register(
            "review_duration_seconds",
            "Time to answer a review, registry lookups included",
            review_duration.clone(),
        );
        let review_warnings = Counter::default();
        registry.register(
            "review_warnings",
            "Warnings returned to users",
            review_warnings.clone(),
        );
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "bad_requests",
            "Bodies refused with HTTP 400, by reason",
            bad_requests.clone(),
        );
        let registry_requests = Family::<RegistryResultLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "Registry HTTP requests by registry and result",
            registry_requests.clone(),
        );
        let registry_duration: HistogramFamily<RegistryLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "registry_request_duration_seconds",
            "Registry HTTP request latency",
            registry_duration.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Image lookups by cache result",
            cache_lookups.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Images held in the cache",
            cache_entries.clone(),
        );
        let no_nodes = Family::<ArchitectureLabels, Counter>::default();
        registry.register(
            "chosen_architecture_without_nodes",
            "Reviews whose chosen architecture had no node in the cluster",
            no_nodes.clone(),
        );
        let config_reloads = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        Metrics {
            registry,
            reviews,
            review_duration,
            review_warnings,
            bad_requests,
            registry_requests,
            registry_duration,
            cache_lookups,
            cache_entries,
            no_nodes,
            config_reloads,
        }
    }

    /// Records one registry HTTP request.
    pub fn registry_request(&self, registry: &str, result: &str, elapsed: Duration) {
        self.registry_requests
            .get_or_create(&RegistryResultLabels {
                registry: registry.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.registry_duration
            .get_or_create(&RegistryLabels {
                registry: registry.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded() {
        let metrics = global();
        metrics.registry_request("ghcr.io", "ok", Duration::from_millis(3));
        metrics.cache_lookup(true);
        let text = metrics.render();
        assert!(
            text.contains(r#"archway_registry_requests_total{registry="ghcr.io",result="ok"}"#),
            "{text}"
        );
        assert!(text.contains(r#"archway_cache_lookups_total{result="hit"}"#));
        assert!(text.contains("archway_review_duration_seconds_bucket"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
