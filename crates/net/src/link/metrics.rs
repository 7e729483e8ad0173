//! The metrics of a node's links to consumers.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// The metrics of a node's links.
#[derive(Default)]
pub struct LinkMetrics {
    /// Publishes the owner acked.
    pub acked: Counter,
    /// Publishes answered with an error, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Publishes in flight on each link.
    pub in_flight: Family<LinkLabel, Gauge>,
    /// 1 when a link is up, 0 when it is down.
    pub up: Family<LinkLabel, Gauge>,
    /// Connections each link opened after the first.
    pub reconnects: Family<LinkLabel, Counter>,
    /// Legacy messages that could not be delivered (the dialect has no acks).
    pub legacy_undelivered: Counter,
    /// Publishes refused because a link's window was full.
    pub window_full: Family<LinkLabel, Counter>,
    /// Times each link went down (it broke, or stopped answering).
    pub downs: Family<LinkLabel, Counter>,
    /// How long each link has been down, in seconds (0 while up).
    pub down_seconds: Family<LinkLabel, Gauge<f64, AtomicU64>>,
    /// Link connections cut because the consumer took nothing within the
    /// write timeout.
    pub write_timeouts: Counter,
}

impl LinkMetrics {
    /// Registers the metrics (`acked`, `errors`, `link_in_flight`, `link_up`,
    /// `link_reconnects`, `link_downs`, `link_down_seconds`,
    /// `link_window_full`, `legacy_undelivered`, `link_write_timeouts`)
    /// under the registry's prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "link_write_timeouts",
            "Link connections cut because the consumer took nothing within the write timeout",
            self.write_timeouts.clone(),
        );
        registry.register("acked", "Publishes the owner acked", self.acked.clone());
        registry.register(
            "errors",
            "Publishes answered with an error, by code",
            self.errors.clone(),
        );
        registry.register(
            "link_in_flight",
            "Publishes in flight per consumer link",
            self.in_flight.clone(),
        );
        registry.register("link_up", "1 when the consumer link is up", self.up.clone());
        registry.register(
            "link_reconnects",
            "Reconnections per consumer link",
            self.reconnects.clone(),
        );
        registry.register(
            "link_downs",
            "Times each consumer link went down (broke, or stopped answering)",
            self.downs.clone(),
        );
        registry.register(
            "link_down_seconds",
            "How long each consumer link has been down (0 while up)",
            self.down_seconds.clone(),
        );
        registry.register(
            "link_window_full",
            "Publishes refused at once because the consumer link's window was full",
            self.window_full.clone(),
        );
        registry.register(
            "legacy_undelivered",
            "Legacy messages that could not be delivered",
            self.legacy_undelivered.clone(),
        );
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
