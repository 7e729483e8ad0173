//! Tenants: each is its own namespace. Inside a node a topic of tenant
//! `acme` is the key `acme~database/create` (`~` is never part of a name),
//! so routing, history, maps and snapshots keep tenants apart with no
//! other change. On the wire the key never appears: frames carry the
//! topic's name and, outside the default tenant, a `tenant` field right
//! after it (`"topic":"database/create","tenant":"acme"`).

use std::sync::Arc;

use serde::Serializer;
use serde::ser::SerializeMap;

use super::{Topic, TopicError, TopicFilter, check_name};
use crate::auth::DEFAULT_TENANT;

/// Separates the tenant from the name in a topic's key.
pub const TENANT_SEPARATOR: char = '~';

impl Topic {
    /// This topic's name in `tenant` (`None` or the default tenant: the
    /// name itself).
    pub fn in_tenant(&self, tenant: Option<&str>) -> Topic {
        let name = self.name();
        match tenant.filter(|tenant| *tenant != DEFAULT_TENANT) {
            None if self.name_at == 0 => self.clone(),
            None => Topic {
                text: Arc::from(name),
                slash: self.slash - self.name_at,
                name_at: 0,
            },
            Some(tenant) => {
                let name_at = tenant.len() as u8 + 1;
                Topic {
                    text: Arc::from(format!("{tenant}{TENANT_SEPARATOR}{name}")),
                    slash: self.slash - self.name_at + name_at,
                    name_at,
                }
            }
        }
    }

    /// Parses a key: `queue/event` or `tenant~queue/event` (snapshots,
    /// keys written by nodes; never what a client sends).
    pub fn parse_key(text: &str) -> Result<Topic, TopicError> {
        match text.split_once(TENANT_SEPARATOR) {
            None => Topic::parse(text),
            Some((tenant, name)) => {
                check_name("tenant", tenant)?;
                Ok(Topic::parse(name)?.in_tenant(Some(tenant)))
            }
        }
    }

    /// The topic named `name` (`queue/event`) in `tenant`, as a frame
    /// carries them.
    pub fn from_wire(name: &str, tenant: Option<&str>) -> Result<Topic, TopicError> {
        if let Some(tenant) = tenant {
            check_name("tenant", tenant)?;
        }
        Ok(Topic::parse(name)?.in_tenant(tenant))
    }
}

impl TopicFilter {
    /// This filter in `tenant` (`None` or the default tenant: without one).
    pub fn in_tenant(&self, tenant: Option<&str>) -> TopicFilter {
        match self {
            TopicFilter::Exact(topic) => TopicFilter::Exact(topic.in_tenant(tenant)),
            TopicFilter::AllEvents(key) => {
                let queue = key
                    .split_once(TENANT_SEPARATOR)
                    .map_or(key.as_str(), |(_, q)| q);
                match tenant.filter(|tenant| *tenant != DEFAULT_TENANT) {
                    None => TopicFilter::AllEvents(queue.to_owned()),
                    Some(tenant) => {
                        TopicFilter::AllEvents(format!("{tenant}{TENANT_SEPARATOR}{queue}"))
                    }
                }
            }
        }
    }

    /// The filter as its clients write it (`queue/event` or `queue/*`)
    /// and its tenant, outside the default one.
    pub fn wire(&self) -> (String, Option<&str>) {
        match self {
            TopicFilter::Exact(topic) => (topic.name().to_owned(), topic.tenant()),
            TopicFilter::AllEvents(key) => match key.split_once(TENANT_SEPARATOR) {
                Some((tenant, queue)) => (format!("{queue}/*"), Some(tenant)),
                None => (format!("{key}/*"), None),
            },
        }
    }

    /// Parses `queue/event` or `queue/*` in `tenant`, as a frame carries them.
    pub fn from_wire(text: &str, tenant: Option<&str>) -> Result<TopicFilter, TopicError> {
        if let Some(tenant) = tenant {
            check_name("tenant", tenant)?;
        }
        Ok(TopicFilter::parse(text)?.in_tenant(tenant))
    }
}

/// Writes a topic into a frame: `"topic": name` and, outside the default
/// tenant, `"tenant": tenant` (for `#[serde(flatten, serialize_with)]`).
pub fn topic_fields<S: Serializer>(topic: &Topic, serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(None)?;
    map.serialize_entry("topic", topic.name())?;
    if let Some(tenant) = topic.tenant() {
        map.serialize_entry("tenant", tenant)?;
    }
    map.end()
}

/// [`topic_fields`] for a filter.
pub fn filter_fields<S: Serializer>(
    filter: &TopicFilter,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let (name, tenant) = filter.wire();
    let mut map = serializer.serialize_map(None)?;
    map.serialize_entry("topic", &name)?;
    if let Some(tenant) = tenant {
        map.serialize_entry("tenant", tenant)?;
    }
    map.end()
}

/// Writes `"topic":"<name>"` (and `,"tenant":"<tenant>"`) for a topic's key,
/// for the hand-written encoders (names never need escaping).
pub fn write_topic_key(out: &mut Vec<u8>, key: &str) {
    let (tenant, name) = match key.split_once(TENANT_SEPARATOR) {
        Some((tenant, name)) => (Some(tenant), name),
        None => (None, key),
    };
    out.extend_from_slice(b"\"topic\":\"");
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
    if let Some(tenant) = tenant {
        out.extend_from_slice(b",\"tenant\":\"");
        out.extend_from_slice(tenant.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_namespaces() {
        let name = Topic::parse("database/create").unwrap();
        let acme = name.in_tenant(Some("acme"));
        let other = name.in_tenant(Some("other"));
        assert_eq!(acme.as_str(), "acme~database/create");
        assert_eq!(acme.name(), "database/create");
        assert_eq!(acme.tenant(), Some("acme"));
        assert_eq!((acme.queue(), acme.event()), ("database", "create"));
        assert_ne!(acme, other);
        assert_ne!(acme, name);
        assert_eq!(name.in_tenant(Some(DEFAULT_TENANT)), name);
        assert_eq!(acme.in_tenant(None), name);
        assert_eq!(acme.in_tenant(Some("other")), other);
        assert_eq!(Topic::parse_key("acme~database/create").unwrap(), acme);
        assert_eq!(
            Topic::from_wire("database/create", Some("acme")).unwrap(),
            acme
        );
        // A client cannot name a key: `~` is no name character.
        assert!(Topic::parse("acme~database/create").is_err());
        assert!(Topic::from_wire("database/create", Some("ac~me")).is_err());
        let mut out = Vec::new();
        write_topic_key(&mut out, acme.as_str());
        assert_eq!(out, br#""topic":"database/create","tenant":"acme""#);
    }

    #[test]
    fn filters_follow_their_tenant() {
        let all = TopicFilter::parse("database/*")
            .unwrap()
            .in_tenant(Some("acme"));
        assert_eq!(all, TopicFilter::AllEvents("acme~database".into()));
        assert_eq!(all.wire(), ("database/*".to_owned(), Some("acme")));
        let mut queues = super::super::QueueConfig::new();
        queues.declare("database", ["create", "read"]).unwrap();
        let topics = queues.expand(&all).unwrap();
        assert_eq!(topics[0].as_str(), "acme~database/create");
        assert_eq!(
            all.in_tenant(None),
            TopicFilter::AllEvents("database".into())
        );
    }
}
