//! The cluster file: one TOML document shared by every node, parsed from a
//! string (reading the file is the node's job).
//!
//! ```toml
//! open_topics = false
//!
//! [queues]
//! database = ["create", "read", "update", "delete", "error"]
//! files = ["save", "error"]
//!
//! [[consumers]]
//! id = "consumer-0"
//! url = "ws://consumer-0:7100"      # how others reach it
//! admin = "http://consumer-0:9100"  # optional admin HTTP address
//! listen = "0.0.0.0:7100"           # optional; default 0.0.0.0:<port of url>
//!
//! [[producers]]
//! id = "producer-0"
//! url = "ws://producer-0:7000"
//!
//! [limits]                          # optional; defaults below
//! max_frame_bytes = 1048576
//! ```

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::topic::{QueueConfig, TopicError};

/// Why a cluster file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong, on one line.
        message: String,
    },
    /// No `[[consumers]]` entry.
    #[error("the cluster file declares no [[consumers]]")]
    NoConsumers,
    /// Two entries share an id.
    #[error("node id {0:?} appears more than once")]
    DuplicateId(String),
    /// An id is empty or has characters other than `[A-Za-z0-9_.-]`.
    #[error("node id {0:?} must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadId(String),
    /// A `url`, `admin` or `listen` value that cannot be used.
    #[error("node {id:?}: {field} {value:?} {reason}")]
    BadAddress {
        /// The entry's id.
        id: String,
        /// `url`, `admin` or `listen`.
        field: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A queue or event name is not valid.
    #[error("[queues]: {0}")]
    BadQueue(#[from] TopicError),
    /// A limit that must be positive is zero.
    #[error("[limits] {0} must be greater than 0")]
    ZeroLimit(&'static str),
    /// A limit below its minimum.
    #[error("[limits] {name} must be at least {min}")]
    TooSmall {
        /// The limit.
        name: &'static str,
        /// Its minimum here.
        min: usize,
    },
}

/// One node in the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Stable id; routing hashes ids, not addresses.
    pub id: String,
    /// WebSocket base URL other nodes and clients use, e.g. `ws://consumer-0:7100`.
    pub url: String,
    /// Admin HTTP base URL, e.g. `http://consumer-0:9100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Address to bind the WebSocket port; default `0.0.0.0:<port of url>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl NodeEntry {
    /// The address to bind the WebSocket listener to.
    pub fn listen_addr(&self) -> String {
        match &self.listen {
            Some(listen) => listen.clone(),
            None => format!("0.0.0.0:{}", url_port(&self.url).unwrap_or(80)),
        }
    }

    /// The address to bind the admin listener to: `0.0.0.0:<port of admin>`.
    pub fn admin_listen_addr(&self) -> Option<String> {
        let admin = self.admin.as_deref()?;
        Some(format!("0.0.0.0:{}", url_port(admin)?))
    }

    /// The URL of one of the node's endpoints, e.g. `endpoint("/v1/subscribe")`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

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

    /// [`Limits::idempotency_window_ms`] as a duration.
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_millis(self.idempotency_window_ms)
    }

    /// The largest payload a publish may carry: `max_frame_bytes` minus
    /// [`ENVELOPE_BYTES`].
    pub fn max_payload_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_sub(ENVELOPE_BYTES)
    }

    fn validate(&self) -> Result<(), ConfigError> {
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

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default)]
    open_topics: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    psk_file: Option<String>,
    #[serde(default)]
    queues: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    consumers: Vec<NodeEntry>,
    #[serde(default)]
    producers: Vec<NodeEntry>,
    #[serde(default)]
    limits: Limits,
}

/// A parsed and validated cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The consumers, in file order.
    pub consumers: Vec<NodeEntry>,
    /// The producers, in file order.
    pub producers: Vec<NodeEntry>,
    /// The declared queues and `open_topics`.
    pub queues: QueueConfig,
    /// The limits.
    pub limits: Limits,
    /// A file holding the psk, used when `SHARDQ_PSK` is not set.
    pub psk_file: Option<String>,
}

impl ClusterConfig {
    /// Parses and validates a cluster file.
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let file: ClusterFile = toml::from_str(text).map_err(|error| syntax_error(text, &error))?;
        let mut queues = QueueConfig::new();
        queues.set_open_topics(file.open_topics);
        for (queue, events) in &file.queues {
            queues.declare(queue, events)?;
        }
        if file.consumers.is_empty() {
            return Err(ConfigError::NoConsumers);
        }
        let mut seen = HashSet::new();
        for entry in file.consumers.iter().chain(&file.producers) {
            validate_entry(entry)?;
            if !seen.insert(entry.id.as_str()) {
                return Err(ConfigError::DuplicateId(entry.id.clone()));
            }
        }
        file.limits.validate()?;
        Ok(ClusterConfig {
            consumers: file.consumers,
            producers: file.producers,
            queues,
            limits: file.limits,
            psk_file: file.psk_file,
        })
    }

    /// The file again, as TOML that [`ClusterConfig::parse`] reads back.
    pub fn to_toml(&self) -> String {
        let file = ClusterFile {
            open_topics: self.queues.open_topics(),
            psk_file: self.psk_file.clone(),
            queues: self
                .queues
                .queues()
                .map(|(queue, events)| (queue.to_owned(), events.map(str::to_owned).collect()))
                .collect(),
            consumers: self.consumers.clone(),
            producers: self.producers.clone(),
            limits: self.limits.clone(),
        };
        toml::to_string(&file)
            .unwrap_or_else(|_| unreachable!("the cluster file always serializes"))
    }

    /// The consumer with this id.
    pub fn consumer(&self, id: &str) -> Option<&NodeEntry> {
        self.consumers.iter().find(|entry| entry.id == id)
    }

    /// The producer with this id.
    pub fn producer(&self, id: &str) -> Option<&NodeEntry> {
        self.producers.iter().find(|entry| entry.id == id)
    }

    /// The consumer ids, in file order (the input of routing).
    pub fn consumer_ids(&self) -> Vec<String> {
        self.consumers
            .iter()
            .map(|entry| entry.id.clone())
            .collect()
    }

    /// A short fingerprint of the consumer list (ids and URLs, sorted by id):
    /// nodes that print the same one route every topic the same way.
    pub fn node_list_hash(&self) -> String {
        let mut entries: Vec<_> = self
            .consumers
            .iter()
            .map(|entry| format!("{}={}", entry.id, entry.url))
            .collect();
        entries.sort();
        format!("{:016x}", xxh3_64(entries.join("\n").as_bytes()))
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let at = error.span().map_or(0, |span| span.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    ConfigError::Syntax {
        line,
        column,
        message: error.message().trim().replace('\n', "; "),
    }
}

fn validate_entry(entry: &NodeEntry) -> Result<(), ConfigError> {
    let id_ok = !entry.id.is_empty()
        && entry.id.len() <= 64
        && entry
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !id_ok {
        return Err(ConfigError::BadId(entry.id.clone()));
    }
    let bad = |field, value: &str, reason| ConfigError::BadAddress {
        id: entry.id.clone(),
        field,
        value: value.to_owned(),
        reason,
    };
    if entry.url.starts_with("wss://") {
        return Err(bad(
            "url",
            &entry.url,
            "wss:// needs TLS, which this build of shardq does not have yet: use ws:// behind a TLS-terminating proxy",
        ));
    }
    if !entry.url.starts_with("ws://") {
        return Err(bad("url", &entry.url, "must start with ws://"));
    }
    if url_port(&entry.url).is_none() {
        return Err(bad("url", &entry.url, "needs a host and a valid port"));
    }
    if let Some(admin) = &entry.admin
        && (!admin.starts_with("http://") || url_port(admin).is_none())
    {
        return Err(bad("admin", admin, "must be http://host:port"));
    }
    if let Some(listen) = &entry.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(bad("listen", listen, "must be ip:port"));
    }
    Ok(())
}

/// The port of `scheme://host[:port][/path]`, with the scheme's default
/// when absent; `None` when there is no host or the port is not a number.
pub fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host_end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    if host_end == 0 {
        return None;
    }
    match &authority[host_end..] {
        "" => match scheme {
            "ws" | "http" => Some(80),
            "wss" | "https" => Some(443),
            _ => None,
        },
        port => port.strip_prefix(':')?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
open_topics = false

[queues]
database = ["create", "read", "update", "delete", "error"]
files = ["save", "error"]

[[consumers]]
id = "consumer-0"
url = "ws://consumer-0:7100"
admin = "http://consumer-0:9100"

[[consumers]]
id = "consumer-1"
url = "ws://10.0.0.2:7100"
listen = "127.0.0.1:7101"

[[producers]]
id = "producer-0"
url = "ws://producer-0:7000"

[limits]
max_frame_bytes = 65536
"#;

    #[test]
    fn parses_the_sample() {
        let config = ClusterConfig::parse(SAMPLE).unwrap();
        assert_eq!(config.consumer_ids(), ["consumer-0", "consumer-1"]);
        assert_eq!(config.limits.max_frame_bytes, 65536);
        assert_eq!(config.limits.link_window, Limits::default().link_window);
        let first = config.consumer("consumer-0").unwrap();
        assert_eq!(first.listen_addr(), "0.0.0.0:7100");
        assert_eq!(first.admin_listen_addr().unwrap(), "0.0.0.0:9100");
        assert_eq!(
            first.endpoint("/v1/subscribe"),
            "ws://consumer-0:7100/v1/subscribe"
        );
        assert_eq!(
            config.consumer("consumer-1").unwrap().listen_addr(),
            "127.0.0.1:7101"
        );
        assert_eq!(ClusterConfig::parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let broken = SAMPLE.replace("max_frame_bytes = 65536", "max_frame_bytes = \"big\"");
        let message = ClusterConfig::parse(&broken).unwrap_err().to_string();
        assert!(message.starts_with("line 23, column 19: "), "{message}");
        assert!(!message.contains('\n'), "{message}");
        let typo = SAMPLE.replace("max_frame_bytes", "max_frame_byte");
        let message = ClusterConfig::parse(&typo).unwrap_err().to_string();
        assert!(message.contains("max_frame_byte"), "{message}");
    }

    #[test]
    fn refuses_bad_clusters() {
        let cases = [
            (
                SAMPLE.replace("consumer-1\"", "consumer-0\""),
                "more than once",
            ),
            (SAMPLE.replace("ws://10.0.0.2:7100", "http://x:1"), "ws://"),
            (
                SAMPLE.replace("ws://10.0.0.2:7100", "wss://x:1"),
                "wss:// needs TLS, which this build of shardq does not have yet",
            ),
            (
                SAMPLE.replace("ws://10.0.0.2:7100", "ws://10.0.0.2:port"),
                "valid port",
            ),
            (SAMPLE.replace("\"save\"", "\"sa ve\""), "[queues]"),
            (SAMPLE.replace("65536", "0"), "greater than 0"),
            (SAMPLE.replace("127.0.0.1:7101", "localhost"), "ip:port"),
            ("[queues]\n".to_owned(), "no [[consumers]]"),
        ];
        for (text, expected) in cases {
            let message = ClusterConfig::parse(&text).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(url_port("ws://a:1/x"), Some(1));
        assert_eq!(url_port("ws://a"), Some(80));
        assert_eq!(url_port("wss://a/b"), Some(443));
        assert_eq!(url_port("ws://[::1]:9"), Some(9));
        assert_eq!(url_port("ws://:9"), None);
        assert_eq!(url_port("ws://a:99999"), None);
    }

    #[test]
    fn node_list_hash_ignores_order() {
        let config = ClusterConfig::parse(SAMPLE).unwrap();
        let mut reversed = config.clone();
        reversed.consumers.reverse();
        assert_eq!(config.node_list_hash(), reversed.node_list_hash());
        let mut grown = config.clone();
        grown.consumers.push(NodeEntry {
            id: "consumer-2".into(),
            url: "ws://c2:1".into(),
            admin: None,
            listen: None,
        });
        assert_ne!(config.node_list_hash(), grown.node_list_hash());
    }
}
