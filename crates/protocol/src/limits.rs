//! The `[limits]` section of the cluster file: every bound a node enforces,
//! with its default. Durations are in milliseconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Limits every node enforces. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame after the handshake (bytes). Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Largest frame before the handshake completes (bytes). Default 4 KiB.
    pub max_preauth_frame_bytes: usize,
    /// Time allowed for the handshake. Default 5,000 ms.
    pub handshake_timeout_ms: u64,
    /// Subscriptions one connection may hold. Default 10,000.
    pub max_subscriptions_per_connection: usize,
    /// Interval between WebSocket pings. Default 20,000 ms.
    pub ping_interval_ms: u64,
    /// Unanswered pings after which the connection closes. Default 2.
    pub max_missed_pongs: u32,
    /// Bytes queued for one subscriber before it is disconnected as slow. Default 8 MiB.
    pub subscriber_buffer_bytes: usize,
    /// Messages kept per topic for resume. Default 1,000.
    pub history_messages_per_topic: usize,
    /// Bytes of history kept per node, oldest dropped first. Default 64 MiB.
    pub history_bytes_per_node: usize,
    /// How long a producer waits for the owner's ack. Default 5,000 ms.
    pub publish_timeout_ms: u64,
    /// Publishes in flight per producer → consumer link. Default 4,096.
    pub link_window: usize,
    /// Interval between liveness probes (WebSocket pings) on node-to-node
    /// links, both ways. Default 1,000 ms.
    pub link_ping_interval_ms: u64,
    /// A node-to-node link that received nothing (not even a pong) for
    /// this long is declared down. Default 3,000 ms.
    pub link_down_after_ms: u64,
    /// How long a topic's owner remembers a publish's idempotency key.
    /// Default 60,000 ms.
    pub idempotency_window_ms: u64,
    /// Most idempotency keys a consumer remembers in all (oldest forgotten
    /// first; about 100 bytes each). Default 250,000.
    pub idempotency_keys_per_node: usize,
    /// Bytes of publishes (topic, key and payload) in flight per link, as
    /// well as [`Limits::link_window`] publishes. Default 64 MiB.
    pub link_window_bytes: usize,
    /// A connection whose peer takes no byte for this long is cut (counted
    /// in `write_timeouts`). Default 10,000 ms.
    pub write_timeout_ms: u64,
    /// Bytes a node queues for a peer that has not authenticated yet
    /// (pongs included); pings beyond go unanswered. Default 8 KiB.
    pub max_preauth_output_bytes: usize,
    /// WebSocket connections one node holds at once. Default 100,000.
    pub max_connections: usize,
    /// WebSocket connections from one IP address at once. Default 1,024.
    pub max_connections_per_address: usize,
    /// Connections that have not completed their handshake, at once.
    /// Default 1,024.
    pub max_unauthenticated_connections: usize,
    /// Connections from one IP address that have not completed their
    /// handshake, at once (so one address cannot take every place of
    /// `max_unauthenticated_connections`). Default 128.
    pub max_unauthenticated_per_address: usize,
    /// Admin HTTP connections at once. Default 64.
    pub max_admin_connections: usize,
    /// Time an admin HTTP request (head to answer) may take. Default 5,000 ms.
    pub admin_request_timeout_ms: u64,
}

/// Bytes every frame a node sends may add around a publish's payload (its
/// envelope: type, ids, topic, key, positions). The payload limit is
/// `max_frame_bytes` minus this, so no payload a publisher may send can make
/// a node send a frame its peer refuses.
pub const ENVELOPE_BYTES: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_preauth_frame_bytes: 4 << 10,
            handshake_timeout_ms: 5_000,
            max_subscriptions_per_connection: 10_000,
            ping_interval_ms: 20_000,
            max_missed_pongs: 2,
            subscriber_buffer_bytes: 8 << 20,
            history_messages_per_topic: 1_000,
            history_bytes_per_node: 64 << 20,
            publish_timeout_ms: 5_000,
            link_window: 4_096,
            link_ping_interval_ms: 1_000,
            link_down_after_ms: 3_000,
            idempotency_window_ms: 60_000,
            idempotency_keys_per_node: 250_000,
            link_window_bytes: 64 << 20,
            write_timeout_ms: 10_000,
            max_preauth_output_bytes: 8 << 10,
            max_connections: 100_000,
            max_connections_per_address: 1_024,
            max_unauthenticated_connections: 1_024,
            max_unauthenticated_per_address: 128,
            max_admin_connections: 64,
            admin_request_timeout_ms: 5_000,
        }
    }
}

impl Limits {
    /// [`Limits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Limits::ping_interval_ms`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// [`Limits::publish_timeout_ms`] as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// [`Limits::link_ping_interval_ms`] as a duration.
    pub fn link_ping_interval(&self) -> Duration {
        Duration::from_millis(self.link_ping_interval_ms)
    }

    /// [`Limits::link_down_after_ms`] as a duration.
    pub fn link_down_after(&self) -> Duration {
        Duration::from_millis(self.link_down_after_ms)
    }

    /// [`Limits::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// [`Limits::admin_request_timeout_ms`] as a duration.
    pub fn admin_request_timeout(&self) -> Duration {
        Duration::from_millis(self.admin_request_timeout_ms)
    }

    /// [`Limits::idempotency_window_ms`] as a duration.
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_millis(self.idempotency_window_ms)
    }

    /// The largest payload a publish may carry: `max_frame_bytes` minus
    /// [`ENVELOPE_BYTES`].
    pub fn max_payload_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_sub(ENVELOPE_BYTES)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            (
                "max_preauth_frame_bytes",
                self.max_preauth_frame_bytes as u64,
            ),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection as u64,
            ),
            ("ping_interval_ms", self.ping_interval_ms),
            ("max_missed_pongs", u64::from(self.max_missed_pongs)),
            (
                "subscriber_buffer_bytes",
                self.subscriber_buffer_bytes as u64,
            ),
            ("publish_timeout_ms", self.publish_timeout_ms),
            ("link_window", self.link_window as u64),
            ("link_ping_interval_ms", self.link_ping_interval_ms),
            ("link_down_after_ms", self.link_down_after_ms),
            ("idempotency_window_ms", self.idempotency_window_ms),
            (
                "idempotency_keys_per_node",
                self.idempotency_keys_per_node as u64,
            ),
            ("link_window_bytes", self.link_window_bytes as u64),
            ("write_timeout_ms", self.write_timeout_ms),
            (
                "max_preauth_output_bytes",
                self.max_preauth_output_bytes as u64,
            ),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_address",
                self.max_connections_per_address as u64,
            ),
            (
                "max_unauthenticated_connections",
                self.max_unauthenticated_connections as u64,
            ),
            (
                "max_unauthenticated_per_address",
                self.max_unauthenticated_per_address as u64,
            ),
            ("max_admin_connections", self.max_admin_connections as u64),
            ("admin_request_timeout_ms", self.admin_request_timeout_ms),
        ];
        if let Some((name, _)) = positive.into_iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::ZeroLimit(name));
        }
        if self.max_frame_bytes < 4 * ENVELOPE_BYTES {
            return Err(ConfigError::TooSmall {
                name: "max_frame_bytes",
                min: 4 * ENVELOPE_BYTES,
            });
        }
        if self.link_down_after_ms < 2 * self.link_ping_interval_ms {
            return Err(ConfigError::TooSmall {
                name: "link_down_after_ms",
                min: 2 * self.link_ping_interval_ms as usize,
            });
        }
        Ok(())
    }
}
