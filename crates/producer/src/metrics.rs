//! The producer's Prometheus metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shardq_net::link::LinkMetrics;

/// Label of per-endpoint metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `publish` or `legacy_produce`.
    pub endpoint: &'static str,
}

/// Every metric a producer exports (all prefixed `shardq_producer_`).
pub struct ProducerMetrics {
    /// Open publisher connections by endpoint.
    pub connections: Family<EndpointLabel, Gauge>,
    /// Publishes received (both dialects).
    pub publishes_in: Counter,
    /// Handshakes refused for a wrong proof.
    pub auth_failures: Counter,
    /// The consumer links: acked, errors by code, in flight, up, reconnects,
    /// legacy messages not delivered.
    pub links: Arc<LinkMetrics>,
    /// Node-list reloads applied.
    pub reloads: Counter,
}

impl ProducerMetrics {
    /// The metrics and the registry that exports them.
    pub fn new() -> (ProducerMetrics, Registry) {
        let metrics = ProducerMetrics {
            connections: Family::default(),
            publishes_in: Counter::default(),
            auth_failures: Counter::default(),
            links: Arc::new(LinkMetrics::default()),
            reloads: Counter::default(),
        };
        let mut registry = Registry::with_prefix("shardq_producer");
        registry.register(
            "connections",
            "Open publisher connections by endpoint",
            metrics.connections.clone(),
        );
        registry.register(
            "publishes_in",
            "Publishes received",
            metrics.publishes_in.clone(),
        );
        registry.register(
            "auth_failures",
            "Handshakes refused for a wrong proof",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "reloads",
            "Node-list reloads applied",
            metrics.reloads.clone(),
        );
        metrics.links.register(&mut registry);
        (metrics, registry)
    }

    /// Counts one error answer.
    pub fn error(&self, code: &str) {
        self.links.error(code);
    }
}
