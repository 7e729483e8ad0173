//! The producer's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of per-endpoint metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `publish` or `legacy_produce`.
    pub endpoint: &'static str,
}

/// Label of per-link metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    /// The consumer's id.
    pub link: String,
}

/// Label of error counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code.
    pub code: String,
}

/// Every metric a producer exports (all prefixed `shardq_producer_`).
pub struct ProducerMetrics {
    /// Open publisher connections by endpoint.
    pub connections: Family<EndpointLabel, Gauge>,
    /// Publishes received (both dialects).
    pub publishes_in: Counter,
    /// Publishes the owner acked.
    pub acked: Counter,
    /// Publishes answered with an error, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Publishes in flight on each link.
    pub link_in_flight: Family<LinkLabel, Gauge>,
    /// 1 when a link is up, 0 when it is down.
    pub link_up: Family<LinkLabel, Gauge>,
    /// Connections each link opened after the first.
    pub link_reconnects: Family<LinkLabel, Counter>,
    /// Handshakes refused for a wrong proof.
    pub auth_failures: Counter,
    /// Legacy messages that could not be delivered (the dialect has no acks).
    pub legacy_undelivered: Counter,
}

impl ProducerMetrics {
    /// The metrics and the registry that exports them.
    pub fn new() -> (ProducerMetrics, Registry) {
        let metrics = ProducerMetrics {
            connections: Family::default(),
            publishes_in: Counter::default(),
            acked: Counter::default(),
            errors: Family::default(),
            link_in_flight: Family::default(),
            link_up: Family::default(),
            link_reconnects: Family::default(),
            auth_failures: Counter::default(),
            legacy_undelivered: Counter::default(),
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
        registry.register("acked", "Publishes the owner acked", metrics.acked.clone());
        registry.register(
            "errors",
            "Publishes answered with an error, by code",
            metrics.errors.clone(),
        );
        registry.register(
            "link_in_flight",
            "Publishes in flight per consumer link",
            metrics.link_in_flight.clone(),
        );
        registry.register(
            "link_up",
            "1 when the consumer link is up",
            metrics.link_up.clone(),
        );
        registry.register(
            "link_reconnects",
            "Reconnections per consumer link",
            metrics.link_reconnects.clone(),
        );
        registry.register(
            "auth_failures",
            "Handshakes refused for a wrong proof",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "legacy_undelivered",
            "Legacy messages that could not be delivered",
            metrics.legacy_undelivered.clone(),
        );
        (metrics, registry)
    }

    /// Counts one error answer.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }
}
