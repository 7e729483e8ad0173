//! The cluster file: one TOML document shared by every node, parsed from a
//! string (reading the file is the node's job).
//!
//! ```toml
//! open_topics = false
//! legacy = false                    # serve the origin's dialect (default off)
//! node_key_file = "node.key"        # or SHARDQ_NODE_KEY; nodes only
//! credentials_file = "clients.toml" # optional [[clients]], followed like this file
//! admin_token_file = "admin.token"  # or SHARDQ_ADMIN_TOKEN; optional
//!
//! [queues]
//! database = ["create", "read", "update", "delete", "error"]
//! files = ["save", "error"]
//!
//! [[consumers]]
//! id = "consumer-0"
//! url = "ws://consumer-0:7100"      # how others reach it
//! admin = "http://consumer-0:9100"  # optional admin HTTP address
//! http = "http://consumer-0:7180"   # optional HTTP API (Server-Sent Events)
//! listen = "0.0.0.0:7100"           # optional; default: url's host and port
//!
//! [[producers]]
//! id = "producer-0"
//! url = "ws://producer-0:7000"
//!
//! [limits]                          # optional; defaults below
//! max_frame_bytes = 1048576
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::topic::{QueueConfig, TopicError};
use crate::work::WorkConfig;

use crate::auth::{ClientEntry, ClientEntryError, validate_clients};
pub use crate::limits::{ENVELOPE_BYTES, Limits};

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
    /// A `[work.<queue>]` section names no queue, or a setting that
    /// cannot work.
    #[error("[work.{queue}]: {reason}")]
    BadWork {
        /// The section's queue.
        queue: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A queue or event name is not valid.
    #[error("[queues]: {0}")]
    BadQueue(#[from] TopicError),
    /// A limit that must be positive is zero.
    #[error("[limits] {0} must be greater than 0")]
    ZeroLimit(&'static str),
    /// A `[[clients]]` entry is not valid.
    #[error("[[clients]]: {0}")]
    BadClient(#[from] ClientEntryError),
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
    /// Address to bind the WebSocket port; default: the host and port of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The HTTP API's base URL (`http://` or, when `url` is `wss://`,
    /// `https://`), e.g. `http://producer-0:7080`; it listens on its host
    /// and port. Producers serve publishes there, consumers Server-Sent
    /// Events. None: no HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

impl NodeEntry {
    /// The address to bind the WebSocket listener to: `listen`, else the
    /// host and port of `url` (a node reachable as `ws://127.0.0.1:7100`
    /// listens on 127.0.0.1 only).
    pub fn listen_addr(&self) -> String {
        match &self.listen {
            Some(listen) => listen.clone(),
            None => host_port(&self.url).unwrap_or_else(|| "127.0.0.1:80".to_owned()),
        }
    }

    /// The address to bind the admin listener to: the host and port of
    /// `admin`, if given.
    pub fn admin_listen_addr(&self) -> Option<String> {
        host_port(self.admin.as_deref()?)
    }

    /// The URL of one of the node's endpoints, e.g. `endpoint("/v1/subscribe")`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default)]
    open_topics: bool,
    #[serde(default)]
    legacy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    psk_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<String>,
    #[serde(default)]
    queues: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    consumers: Vec<NodeEntry>,
    #[serde(default)]
    producers: Vec<NodeEntry>,
    #[serde(default)]
    limits: Limits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    clients: Vec<ClientEntry>,
    #[serde(default, skip_serializing_if = "TokensConfig::is_unset")]
    tokens: TokensConfig,
    #[serde(default, skip_serializing_if = "TlsConfig::is_unset")]
    tls: TlsConfig,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    work: BTreeMap<String, WorkConfig>,
}

/// The `[tls]` section: files beside the cluster file. A node whose `url`
/// is `wss://` serves TLS with `cert_file` and `key_file` (or
/// `--tls-cert`/`--tls-key`); nodes and tools check `wss://` servers
/// against `ca_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA certificate(s) (PEM) every `wss://` server is checked against.
    pub ca_file: Option<String>,
    /// This node's certificate chain (PEM).
    pub cert_file: Option<String>,
    /// This node's private key (PEM).
    pub key_file: Option<String>,
    /// Serve the admin port over HTTPS too, with the node's certificate
    /// (its `admin` url is then `https://`).
    pub admin: bool,
}

impl TlsConfig {
    fn is_unset(&self) -> bool {
        *self == TlsConfig::default()
    }
}

/// The `[tokens]` section: the keys client tokens may be signed with,
/// as files beside the cluster file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// Files each holding an HS256 secret (at least 32 bytes).
    pub hs256_secret_files: Vec<String>,
    /// Files each holding an Ed25519 public key (PEM).
    pub ed25519_public_key_files: Vec<String>,
    /// Accept tokens on plaintext (`ws://`) connections. Development only.
    pub allow_plaintext: bool,
}

impl TokensConfig {
    fn is_unset(&self) -> bool {
        *self == TokensConfig::default()
    }
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
    /// A file holding the node key, used when `SHARDQ_NODE_KEY` is not set.
    pub node_key_file: Option<String>,
    /// A TOML file of `[[clients]]`, next to the cluster file, followed
    /// like it.
    pub credentials_file: Option<String>,
    /// A file holding the admin port's bearer token, used when
    /// `SHARDQ_ADMIN_TOKEN` is not set.
    pub admin_token_file: Option<String>,
    /// Whether the origin's legacy dialect is served (default off).
    pub legacy: bool,
    /// The clients declared inline (and, once loaded, those of the
    /// credentials file).
    pub clients: Vec<ClientEntry>,
    /// The `[tokens]` section.
    pub tokens: TokensConfig,
    /// The `[tls]` section.
    pub tls: TlsConfig,
    /// The `[work.<queue>]` sections (queue groups), by queue.
    pub work: BTreeMap<String, WorkConfig>,
}

impl ClusterConfig {
    /// The group settings of `queue`'s topics.
    pub fn work_of(&self, queue: &str) -> WorkConfig {
        self.work.get(queue).copied().unwrap_or_default()
    }
}

impl ClusterConfig {
    /// A cluster of these nodes, queues and limits; no secret files, no
    /// clients, the legacy dialect off.
    pub fn new(
        consumers: Vec<NodeEntry>,
        producers: Vec<NodeEntry>,
        queues: QueueConfig,
        limits: Limits,
    ) -> ClusterConfig {
        ClusterConfig {
            consumers,
            producers,
            queues,
            limits,
            psk_file: None,
            node_key_file: None,
            credentials_file: None,
            admin_token_file: None,
            legacy: false,
            clients: Vec::new(),
            tokens: TokensConfig::default(),
            tls: TlsConfig::default(),
            work: BTreeMap::new(),
        }
    }

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
        validate_clients(&file.clients)?;
        for (queue, work) in &file.work {
            if queues.queues().all(|(declared, _)| declared != queue) && !queues.open_topics() {
                return Err(ConfigError::BadWork {
                    queue: queue.clone(),
                    reason: "names no declared queue",
                });
            }
            if let Some(reason) = work.invalid() {
                return Err(ConfigError::BadWork {
                    queue: queue.clone(),
                    reason,
                });
            }
        }
        Ok(ClusterConfig {
            consumers: file.consumers,
            producers: file.producers,
            queues,
            limits: file.limits,
            psk_file: file.psk_file,
            node_key_file: file.node_key_file,
            credentials_file: file.credentials_file,
            admin_token_file: file.admin_token_file,
            legacy: file.legacy,
            clients: file.clients,
            tokens: file.tokens,
            tls: file.tls,
            work: file.work,
        })
    }

    /// The file again, as TOML that [`ClusterConfig::parse`] reads back.
    pub fn to_toml(&self) -> String {
        let file = ClusterFile {
            open_topics: self.queues.open_topics(),
            legacy: self.legacy,
            psk_file: self.psk_file.clone(),
            node_key_file: self.node_key_file.clone(),
            credentials_file: self.credentials_file.clone(),
            admin_token_file: self.admin_token_file.clone(),
            clients: self.clients.clone(),
            tokens: self.tokens.clone(),
            tls: self.tls.clone(),
            work: self.work.clone(),
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
    if !entry.url.starts_with("ws://") && !entry.url.starts_with("wss://") {
        return Err(bad("url", &entry.url, "must start with ws:// or wss://"));
    }
    if url_port(&entry.url).is_none() {
        return Err(bad("url", &entry.url, "needs a host and a valid port"));
    }
    if let Some(admin) = &entry.admin
        && (!(admin.starts_with("http://") || admin.starts_with("https://"))
            || url_port(admin).is_none())
    {
        return Err(bad(
            "admin",
            admin,
            "must be http://host:port or https://host:port",
        ));
    }
    if let Some(http) = &entry.http
        && (!(http.starts_with("http://") || http.starts_with("https://"))
            || url_port(http).is_none())
    {
        return Err(bad(
            "http",
            http,
            "must be http://host:port or https://host:port",
        ));
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
/// `host:port` of a URL (the scheme's default port when it names none).
pub fn host_port(url: &str) -> Option<String> {
    let port = url_port(url)?;
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => authority.split(':').next()?.to_owned(),
    };
    Some(format!("{host}:{port}"))
}

/// The port of a URL (the scheme's default when it names none).
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
        assert_eq!(first.listen_addr(), "consumer-0:7100");
        assert_eq!(first.admin_listen_addr().unwrap(), "consumer-0:9100");
        assert_eq!(host_port("ws://[::1]:7/x").unwrap(), "[::1]:7");
        assert_eq!(host_port("http://h").unwrap(), "h:80");
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
                SAMPLE.replace("ws://10.0.0.2:7100", "https://x:1"),
                "must start with ws:// or wss://",
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
            http: None,
        });
        assert_ne!(config.node_list_hash(), grown.node_list_hash());
    }
}
