//! Topics (`queue/event`), subscription filters (`queue/*`) and the queue
//! configuration that says which topics a cluster accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::frame::ErrorCode;

mod tenant;

pub use tenant::{TENANT_SEPARATOR, filter_fields, topic_fields, write_topic_key};

/// Longest queue or event name, in bytes (all allowed characters are ASCII).
pub const MAX_PART_LEN: usize = 64;

/// Why a string is not a topic, a filter, or not allowed by the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string has no `/`, or more than one.
    #[error("topic {0:?} is not of the form queue/event")]
    NotQueueEvent(String),
    /// A queue or event name is empty, too long, or has a character outside `[A-Za-z0-9_.-]`.
    #[error("{part} {name:?} must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadName {
        /// `"queue"` or `"event"`.
        part: &'static str,
        /// The offending name (truncated to 80 characters).
        name: String,
    },
    /// The queue is not declared and `open_topics` is off.
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    /// The queue is declared but this event is not among its events.
    #[error("queue {queue:?} has no event {event:?}")]
    UnknownEvent {
        /// The declared queue.
        queue: String,
        /// The undeclared event.
        event: String,
    },
    /// `queue/*` for a queue that is not declared: there is nothing to expand it to.
    #[error("queue/* needs a declared queue; {0:?} is not declared")]
    WildcardUndeclared(String),
}

impl TopicError {
    /// The wire error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            TopicError::NotQueueEvent(_) | TopicError::BadName { .. } => ErrorCode::BadTopic,
            TopicError::UnknownQueue(_) | TopicError::WildcardUndeclared(_) => {
                ErrorCode::UnknownQueue
            }
            TopicError::UnknownEvent { .. } => ErrorCode::UnknownEvent,
        }
    }
}

fn check_name(part: &'static str, name: &str) -> Result<(), TopicError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PART_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadName {
            part,
            name: name.chars().take(80).collect(),
        })
    }
}

/// A validated `queue/event` topic. Cheap to clone (a shared string).
///
/// Parsing ([`Topic::parse`] or [`Topic::new`]) is the only way to make one, so
/// every `Topic` is well formed: both parts are 1-64 characters of
/// `[A-Za-z0-9_.-]`, which also means a topic never needs JSON escaping.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Topic {
    /// `queue/event`, or `tenant~queue/event` outside the default tenant.
    text: Arc<str>,
    /// Index of the `/` in `text`.
    slash: u8,
    /// Index right after the `~` (0 in the default tenant).
    name_at: u8,
}

impl Topic {
    /// Parses `queue/event`.
    pub fn parse(text: &str) -> Result<Topic, TopicError> {
        let slash = Topic::validate(text)?;
        Ok(Topic {
            text: Arc::from(text),
            slash,
            name_at: 0,
        })
    }

    /// Checks `queue/event` as [`parse`](Topic::parse) does, without
    /// building a topic; the position of the slash.
    pub fn validate(text: &str) -> Result<u8, TopicError> {
        let Some((queue, event)) = text.split_once('/') else {
            return Err(TopicError::NotQueueEvent(text.chars().take(80).collect()));
        };
        if event.contains('/') {
            return Err(TopicError::NotQueueEvent(text.chars().take(80).collect()));
        }
        check_name("queue", queue)?;
        check_name("event", event)?;
        Ok(queue.len() as u8)
    }

    /// Builds a topic from its two parts, validating both.
    pub fn new(queue: &str, event: &str) -> Result<Topic, TopicError> {
        check_name("queue", queue)?;
        check_name("event", event)?;
        Ok(Topic {
            text: Arc::from(format!("{queue}/{event}")),
            slash: queue.len() as u8,
            name_at: 0,
        })
    }

    /// The queue part.
    pub fn queue(&self) -> &str {
        &self.text[self.name_at as usize..self.slash as usize]
    }

    /// The event part.
    pub fn event(&self) -> &str {
        &self.text[self.slash as usize + 1..]
    }

    /// The whole key: `queue/event`, or `tenant~queue/event` outside the
    /// default tenant (what routing hashes and every map is keyed by).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `queue/event`, without the tenant (what the topic's clients see).
    pub fn name(&self) -> &str {
        &self.text[self.name_at as usize..]
    }

    /// The tenant, outside the default one.
    pub fn tenant(&self) -> Option<&str> {
        (self.name_at > 0).then(|| &self.text[..self.name_at as usize - 1])
    }
}

/// Hashes as its text does, so maps keyed by topics can be searched with a `&str`.
impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.text)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Topic::parse_key(&text).map_err(serde::de::Error::custom)
    }
}

/// What a `subscribe` names: one topic, or every declared event of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicFilter {
    /// One `queue/event` topic.
    Exact(Topic),
    /// `queue/*`: every event the configuration declares for the queue
    /// (`tenant~queue` outside the default tenant).
    AllEvents(String),
}

impl TopicFilter {
    /// Parses `queue/event` or `queue/*`.
    pub fn parse(text: &str) -> Result<TopicFilter, TopicError> {
        match text.split_once('/') {
            Some((queue, "*")) => {
                check_name("queue", queue)?;
                Ok(TopicFilter::AllEvents(queue.to_owned()))
            }
            _ => Topic::parse(text).map(TopicFilter::Exact),
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicFilter::Exact(topic) => topic.fmt(f),
            TopicFilter::AllEvents(queue) => write!(f, "{queue}/*"),
        }
    }
}

impl Serialize for TopicFilter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What a dead-letter topic's event adds to its event's name.
pub const DEAD_LETTER_SUFFIX: &str = ".dead";

/// Which topics a cluster accepts: the declared queues with their events, and
/// whether any other well-formed topic is accepted too (`open_topics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueConfig {
    queues: BTreeMap<String, BTreeSet<String>>,
    open_topics: bool,
}

impl QueueConfig {
    /// An empty configuration: no queues, `open_topics` off (accepts nothing).
    pub fn new() -> QueueConfig {
        QueueConfig::default()
    }

    /// Declares a queue and its events (adds to the events already declared).
    pub fn declare<I, S>(&mut self, queue: &str, events: I) -> Result<&mut Self, TopicError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        check_name("queue", queue)?;
        let declared = self.queues.entry(queue.to_owned()).or_default();
        for event in events {
            let event = event.as_ref();
            check_name("event", event)?;
            declared.insert(event.to_owned());
        }
        Ok(self)
    }

    /// Switches `open_topics`: when on, every well-formed topic is accepted,
    /// declared or not.
    pub fn set_open_topics(&mut self, open: bool) -> &mut Self {
        self.open_topics = open;
        self
    }

    /// Whether `open_topics` is on.
    pub fn open_topics(&self) -> bool {
        self.open_topics
    }

    /// The declared queues and their events, sorted.
    pub fn queues(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        self.queues
            .iter()
            .map(|(queue, events)| (queue.as_str(), events.iter().map(String::as_str)))
    }

    /// Whether a topic may be published to or subscribed to: a declared
    /// event, or a declared event's dead-letter topic (`event.dead`).
    pub fn check(&self, topic: &Topic) -> Result<(), TopicError> {
        self.check_text(topic.name())
    }

    /// [`check`](Self::check) for a topic's key ([`Topic::as_str`]: its
    /// tenant, if any, is not part of what is declared).
    pub fn check_key(&self, key: &str) -> Result<(), TopicError> {
        let name = key
            .split_once(TENANT_SEPARATOR)
            .map_or(key, |(_, name)| name);
        self.check_text(name)
    }

    /// [`check`](Self::check) for a topic's text, valid as
    /// [`Topic::validate`] requires.
    pub fn check_text(&self, topic: &str) -> Result<(), TopicError> {
        let (queue, event) = topic.split_once('/').unwrap_or((topic, ""));
        // Every declared event has a dead-letter topic, `event.dead`, where
        // its queue groups put the messages they gave up on.
        let declared = |events: &std::collections::BTreeSet<String>| {
            events.contains(event)
                || event
                    .strip_suffix(DEAD_LETTER_SUFFIX)
                    .is_some_and(|base| events.contains(base))
        };
        match self.queues.get(queue) {
            Some(events) if declared(events) => Ok(()),
            _ if self.open_topics => Ok(()),
            Some(_) => Err(TopicError::UnknownEvent {
                queue: queue.to_owned(),
                event: event.to_owned(),
            }),
            None => Err(TopicError::UnknownQueue(queue.to_owned())),
        }
    }

    /// The topics a filter names, each checked: an exact topic gives itself,
    /// `queue/*` every declared event of the queue in sorted order (in the
    /// filter's tenant). Queues are declared once for every tenant.
    pub fn expand(&self, filter: &TopicFilter) -> Result<Vec<Topic>, TopicError> {
        match filter {
            TopicFilter::Exact(topic) => {
                self.check(topic)?;
                Ok(vec![topic.clone()])
            }
            TopicFilter::AllEvents(key) => {
                let (tenant, queue) = match key.split_once(TENANT_SEPARATOR) {
                    Some((tenant, queue)) => (Some(tenant), queue),
                    None => (None, key.as_str()),
                };
                match self.queues.get(queue) {
                    Some(events) => events
                        .iter()
                        .map(|event| Topic::new(queue, event).map(|t| t.in_tenant(tenant)))
                        .collect(),
                    None => Err(TopicError::WildcardUndeclared(queue.to_owned())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> QueueConfig {
        let mut config = QueueConfig::new();
        config
            .declare("database", ["create", "read", "update", "delete", "error"])
            .unwrap()
            .declare("files", ["save", "error"])
            .unwrap();
        config
    }

    #[test]
    fn parses_valid_topics() {
        let topic = Topic::parse("database/create").unwrap();
        assert_eq!(topic.queue(), "database");
        assert_eq!(topic.event(), "create");
        assert_eq!(topic.as_str(), "database/create");
        assert_eq!(Topic::new("a.b-c_D9", "x").unwrap().as_str(), "a.b-c_D9/x");
        let longest = "q".repeat(64);
        assert!(Topic::new(&longest, &longest).is_ok());
    }

    #[test]
    fn rejects_malformed_topics() {
        for bad in [
            "",
            "/",
            "database",
            "database/",
            "/create",
            "a/b/c",
            "data base/create",
            "database/cre*ate",
            "datábase/create",
            "database/create\n",
        ] {
            let err = Topic::parse(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadTopic, "{bad:?}");
        }
        let too_long = format!("{}/x", "q".repeat(65));
        assert!(Topic::parse(&too_long).is_err());
    }

    #[test]
    fn filters() {
        assert_eq!(
            TopicFilter::parse("files/*").unwrap(),
            TopicFilter::AllEvents("files".into())
        );
        assert!(matches!(
            TopicFilter::parse("files/save").unwrap(),
            TopicFilter::Exact(_)
        ));
        assert!(TopicFilter::parse("*/save").is_err());
        assert!(TopicFilter::parse("files/**").is_err());
    }

    #[test]
    fn checks_declared_topics() {
        let config = seeds();
        assert!(config.check(&Topic::parse("files/save").unwrap()).is_ok());
        assert_eq!(
            config.check(&Topic::parse("files/delete").unwrap()),
            Err(TopicError::UnknownEvent {
                queue: "files".into(),
                event: "delete".into()
            })
        );
        assert_eq!(
            config
                .check(&Topic::parse("network/attack").unwrap())
                .unwrap_err()
                .code(),
            ErrorCode::UnknownQueue
        );
    }

    #[test]
    fn open_topics_accepts_any_well_formed_topic() {
        let mut config = seeds();
        config.set_open_topics(true);
        assert!(
            config
                .check(&Topic::parse("network/attack").unwrap())
                .is_ok()
        );
        assert!(config.check(&Topic::parse("files/delete").unwrap()).is_ok());
    }

    #[test]
    fn expands_wildcards_to_declared_events() {
        let config = seeds();
        let topics = config
            .expand(&TopicFilter::parse("files/*").unwrap())
            .unwrap();
        let names: Vec<_> = topics.iter().map(Topic::as_str).collect();
        assert_eq!(names, ["files/error", "files/save"]);
        assert_eq!(
            config
                .expand(&TopicFilter::parse("network/*").unwrap())
                .unwrap_err()
                .code(),
            ErrorCode::UnknownQueue
        );
    }
}
