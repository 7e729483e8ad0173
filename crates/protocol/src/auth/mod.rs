//! Who may connect and what they may do: the node key (nodes only), the
//! clients a cluster file declares (a name, a tenant, one or two secrets for
//! rotation, publish and subscribe permissions), and the [`Credentials`]
//! a node checks handshakes against.
//!
//! ```toml
//! [[clients]]
//! name = "api"
//! tenant = "default"
//! secrets = ["9c1e…", "old-secret-during-rotation"]
//! publish = ["database/*"]
//! subscribe = ["database/create", "files/*"]
//! ```
//!
//! A cluster without `[[clients]]` has one client credential: the psk,
//! with every permission in the default tenant (today's deployments).
//! Clients that cannot hold a secret present a signed token instead
//! ([`token`]).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::handshake::Psk;
use crate::topic::{Topic, TopicFilter};

pub mod token;

pub use token::{TokenClaims, TokenError, TokenKeys};

/// The tenant of the psk and of clients that name none.
pub const DEFAULT_TENANT: &str = "default";

/// Most secrets one client may have at once (the current and the previous,
/// during a rotation).
pub const MAX_SECRETS: usize = 2;

/// One `[[clients]]` entry as written in the cluster or credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The name the client gives in `auth.client`.
    pub name: String,
    /// Its namespace; default [`DEFAULT_TENANT`].
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// One or two secrets (each at least 16 bytes); either one authenticates.
    pub secrets: Vec<String>,
    /// Topics it may publish to: `queue/event`, `queue/*` or `*`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topics it may subscribe to: `queue/event`, `queue/*` or `*`.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

pub(crate) fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

/// Why a `[[clients]]` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientEntryError {
    /// A name or tenant outside `[A-Za-z0-9_.-]{1,64}`.
    #[error("client {0:?}: names and tenants must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    /// Two entries share a name.
    #[error("client {0:?} appears more than once")]
    Duplicate(String),
    /// No secret, more than [`MAX_SECRETS`], or one shorter than 16 bytes.
    #[error("client {0:?}: give 1 or 2 secrets of at least 16 bytes each")]
    BadSecrets(String),
    /// A permission that is not `queue/event`, `queue/*` or `*`.
    #[error("client {name:?}: permission {pattern:?} must be queue/event, queue/* or *")]
    BadPattern {
        /// The client.
        name: String,
        /// The pattern.
        pattern: String,
    },
}

/// One permission: every topic, every event of a queue, or one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`.
    All,
    /// `queue/*`.
    Queue(String),
    /// `queue/event`.
    Topic(Topic),
}

impl Pattern {
    /// Parses `*`, `queue/*` or `queue/event`.
    pub fn parse(text: &str) -> Option<Pattern> {
        if text == "*" || text == "*/*" {
            return Some(Pattern::All);
        }
        match TopicFilter::parse(text).ok()? {
            TopicFilter::AllEvents(queue) => Some(Pattern::Queue(queue)),
            TopicFilter::Exact(topic) => Some(Pattern::Topic(topic)),
        }
    }

    fn covers_topic(&self, topic: &Topic) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Queue(queue) => topic.queue() == queue,
            Pattern::Topic(allowed) => allowed == topic,
        }
    }

    fn covers_text(&self, topic: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Queue(queue) => topic
                .split_once('/')
                .is_some_and(|(topic_queue, _)| topic_queue == queue),
            Pattern::Topic(allowed) => allowed.as_str() == topic,
        }
    }

    fn covers_queue(&self, queue: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Queue(allowed) => allowed == queue,
            Pattern::Topic(_) => false,
        }
    }
}

/// What one client may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Publish patterns.
    pub publish: Vec<Pattern>,
    /// Subscribe patterns.
    pub subscribe: Vec<Pattern>,
}

impl Permissions {
    /// Every permission (the psk's, and nodes').
    pub fn all() -> Permissions {
        Permissions {
            publish: vec![Pattern::All],
            subscribe: vec![Pattern::All],
        }
    }

    /// Whether a publish to `topic` is allowed.
    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.publish
            .iter()
            .any(|pattern| pattern.covers_topic(topic))
    }

    /// Whether a publish to the well-formed topic `topic` (as text) is allowed.
    pub fn may_publish_text(&self, topic: &str) -> bool {
        self.publish
            .iter()
            .any(|pattern| pattern.covers_text(topic))
    }

    /// Whether a subscription to `filter` is allowed: `queue/*` needs a
    /// pattern covering the whole queue.
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        match filter {
            TopicFilter::Exact(topic) => self
                .subscribe
                .iter()
                .any(|pattern| pattern.covers_topic(topic)),
            TopicFilter::AllEvents(queue) => self
                .subscribe
                .iter()
                .any(|pattern| pattern.covers_queue(queue)),
        }
    }
}

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's name (`-` for the psk).
    pub name: Arc<str>,
    /// Its tenant.
    pub tenant: Arc<str>,
    /// What it may do.
    pub permissions: Arc<Permissions>,
}

impl ClientIdentity {
    /// Its tenant, unless it is the default one (the topics' keys name
    /// only other tenants).
    pub fn tenant_key(&self) -> Option<Arc<str>> {
        (&*self.tenant != DEFAULT_TENANT).then(|| self.tenant.clone())
    }

    /// The psk's identity: the default tenant, every permission.
    pub fn psk_holder() -> ClientIdentity {
        ClientIdentity {
            name: "-".into(),
            tenant: DEFAULT_TENANT.into(),
            permissions: Arc::new(Permissions::all()),
        }
    }
}

/// A named client's secrets and identity.
#[derive(Debug, Clone)]
pub struct ClientCredential {
    /// One or two secrets.
    pub secrets: Vec<Psk>,
    /// Who it is once a secret checked out.
    pub identity: ClientIdentity,
}

/// Everything a node checks handshakes against. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The psk: the default tenant's credential with every permission.
    pub psk: Psk,
    /// The key nodes prove to each other; clients never hold it.
    pub node_key: Psk,
    /// Named clients by name.
    pub clients: Arc<HashMap<String, ClientCredential>>,
    /// The keys tokens may be signed with (none: tokens are refused).
    pub tokens: Arc<TokenKeys>,
}

impl Credentials {
    /// Credentials with only the psk and a node key.
    pub fn new(psk: Psk, node_key: Psk) -> Credentials {
        Credentials {
            psk,
            node_key,
            clients: Arc::default(),
            tokens: Arc::default(),
        }
    }

    /// Adds the declared clients (already validated by [`validate_clients`]).
    pub fn with_clients(mut self, entries: &[ClientEntry]) -> Credentials {
        let clients = entries
            .iter()
            .map(|entry| {
                let credential = ClientCredential {
                    secrets: entry
                        .secrets
                        .iter()
                        .filter_map(|secret| Psk::new(secret.as_bytes()).ok())
                        .collect(),
                    identity: ClientIdentity {
                        name: entry.name.as_str().into(),
                        tenant: entry.tenant.as_str().into(),
                        permissions: Arc::new(permissions_of(entry)),
                    },
                };
                (entry.name.clone(), credential)
            })
            .collect();
        self.clients = Arc::new(clients);
        self
    }

    /// Accepts tokens signed with these keys.
    pub fn with_tokens(mut self, tokens: TokenKeys) -> Credentials {
        self.tokens = Arc::new(tokens);
        self
    }

    /// Whether the node key is the psk (no separate node key configured):
    /// then every psk holder can act as a node.
    pub fn node_key_is_psk(&self) -> bool {
        self.node_key == self.psk
    }
}

pub(crate) fn permissions_of(entry: &ClientEntry) -> Permissions {
    let parse = |patterns: &[String]| patterns.iter().filter_map(|p| Pattern::parse(p)).collect();
    Permissions {
        publish: parse(&entry.publish),
        subscribe: parse(&entry.subscribe),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks `[[clients]]` entries: names, secrets, patterns, one tenant.
pub fn validate_clients(entries: &[ClientEntry]) -> Result<(), ClientEntryError> {
    let mut seen = std::collections::HashSet::new();
    for entry in entries {
        if !valid_name(&entry.name) || !valid_name(&entry.tenant) {
            return Err(ClientEntryError::BadName(entry.name.clone()));
        }
        if !seen.insert(entry.name.as_str()) {
            return Err(ClientEntryError::Duplicate(entry.name.clone()));
        }
        let secrets_ok = (1..=MAX_SECRETS).contains(&entry.secrets.len())
            && entry.secrets.iter().all(|s| s.len() >= Psk::MIN_LEN);
        if !secrets_ok {
            return Err(ClientEntryError::BadSecrets(entry.name.clone()));
        }
        for pattern in entry.publish.iter().chain(&entry.subscribe) {
            if Pattern::parse(pattern).is_none() {
                return Err(ClientEntryError::BadPattern {
                    name: entry.name.clone(),
                    pattern: pattern.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(text: &str) -> Topic {
        Topic::parse(text).unwrap()
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::parse(text).unwrap()
    }

    fn entry(publish: &[&str], subscribe: &[&str]) -> ClientEntry {
        ClientEntry {
            name: "api".into(),
            tenant: DEFAULT_TENANT.into(),
            secrets: vec!["0123456789abcdef".into()],
            publish: publish.iter().map(|p| p.to_string()).collect(),
            subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn permissions_match_patterns() {
        let perms = permissions_of(&entry(&["database/*", "files/save"], &["database/create"]));
        let cases = [
            ("database/create", true),
            ("database/delete", true),
            ("files/save", true),
            ("files/error", false),
            ("billing/create", false),
        ];
        for (text, allowed) in cases {
            assert_eq!(perms.may_publish(&topic(text)), allowed, "publish {text}");
            assert_eq!(perms.may_publish_text(text), allowed, "publish {text}");
        }
        let cases = [
            ("database/create", true),
            ("database/delete", false),
            ("database/*", false),
            ("files/*", false),
        ];
        for (text, allowed) in cases {
            assert_eq!(
                perms.may_subscribe(&filter(text)),
                allowed,
                "subscribe {text}"
            );
        }
        let all = Permissions::all();
        assert!(all.may_subscribe(&filter("anything/*")));
        assert!(all.may_publish(&topic("a/b")));
        assert!(!Permissions::default().may_publish(&topic("a/b")));
    }

    #[test]
    fn entries_are_validated() {
        assert_eq!(validate_clients(&[entry(&["*"], &["a/*"])]), Ok(()));
        let mut bad = entry(&["a/b/c"], &[]);
        assert!(matches!(
            validate_clients(&[bad.clone()]),
            Err(ClientEntryError::BadPattern { .. })
        ));
        bad = entry(&[], &[]);
        bad.secrets = vec!["short".into()];
        assert!(matches!(
            validate_clients(&[bad.clone()]),
            Err(ClientEntryError::BadSecrets(_))
        ));
        bad.secrets = vec!["0123456789abcdef".into(); 3];
        assert!(matches!(
            validate_clients(&[bad]),
            Err(ClientEntryError::BadSecrets(_))
        ));
        let twice = entry(&[], &[]);
        assert!(matches!(
            validate_clients(&[twice.clone(), twice]),
            Err(ClientEntryError::Duplicate(_))
        ));
        let mut tenant = entry(&[], &[]);
        tenant.tenant = "acme".into();
        assert_eq!(validate_clients(&[tenant.clone()]), Ok(()));
        tenant.tenant = "ac~me".into();
        assert!(matches!(
            validate_clients(&[tenant]),
            Err(ClientEntryError::BadName(_))
        ));
    }
}
