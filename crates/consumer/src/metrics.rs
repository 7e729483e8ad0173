//! The consumer's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of per-endpoint metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `subscribe`, `cluster`, `legacy_producer` or `legacy_subscribe`.
    pub endpoint: &'static str,
}

/// Label of the subscribers-per-topic gauge. Bounded: `topic` is a
/// declared topic (`queue/event` of `[queues]`) or `(undeclared)` for every
/// other (open topics); `tenant` is a tenant of a `[[clients]]` entry (or
/// `default`), or `(other)` for tenants only tokens name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The tenant, or `(other)`.
    pub tenant: String,
    /// The topic's name, or `(undeclared)`.
    pub topic: String,
}

/// Every metric a consumer exports (all prefixed `shardq_consumer_`).
pub struct ConsumerMetrics {
    /// Open connections by endpoint.
    pub connections: Family<EndpointLabel, Gauge>,
    /// Client subscriptions on this node per topic (bounded: see [`TopicLabel`]).
    pub topic_subscribers: Family<TopicLabel, Gauge>,
    /// Live subscriptions (connection × topic).
    pub subscriptions: Gauge,
    /// Topics with state on this node.
    pub topics: Gauge,
    /// Messages sequenced.
    pub messages_in: Counter,
    /// Messages written to subscribers (one per subscriber per message).
    pub messages_out: Counter,
    /// Bytes of message frames queued for subscribers.
    pub bytes_out: Counter,
    /// Subscribers disconnected for falling behind.
    pub slow_consumers: Counter,
    /// Handshakes refused for a wrong proof.
    pub auth_failures: Counter,
    /// Legacy messages dropped (topic malformed or not allowed; the dialect has no acks).
    pub legacy_dropped: Counter,
    /// Bytes of history retained (overhead included).
    pub history_bytes: Gauge,
    /// Messages of history retained.
    pub history_messages: Gauge,
    /// Publishes forwarded to their owner (this node did not own the topic).
    pub forwarded: Counter,
    /// Node-list reloads applied.
    pub reloads: Counter,
    /// Per-topic `gap` notices sent: an edge's upstream could not replay
    /// what it missed (local subscribers of that topic were told).
    pub gaps_reported: Counter,
    /// Resumes (`subscribe` with `since`) answered `recovered: false`.
    pub resumes_not_recovered: Counter,
    /// Publishes answered with an earlier position because their
    /// idempotency key was remembered (retries not sequenced twice).
    pub duplicates_absorbed: Counter,
    /// Idempotency keys remembered.
    pub idempotency_keys: Gauge,
    /// Edge topics whose owner is unreachable (subscribers told `stalled`),
    /// refreshed every second.
    pub stalled_topics: Gauge,
    /// Server-Sent Events streams open (`GET /v1/topics/…/events`).
    pub event_streams: Gauge,
    /// Messages queue groups gave up on, published to dead-letter topics.
    pub dead_letters: Counter,
    /// Dead letters that could not be published (their topic's owner
    /// unreachable or full): lost.
    pub dead_letters_lost: Counter,
    /// Publishes refused because a queue group's backlog was full.
    pub backlog_full: Counter,
}

impl ConsumerMetrics {
    /// The metrics and the registry that exports them.
    pub fn new() -> (ConsumerMetrics, Registry) {
        let metrics = ConsumerMetrics {
            connections: Family::default(),
            topic_subscribers: Family::default(),
            subscriptions: Gauge::default(),
            topics: Gauge::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            slow_consumers: Counter::default(),
            auth_failures: Counter::default(),
            legacy_dropped: Counter::default(),
            history_bytes: Gauge::default(),
            history_messages: Gauge::default(),
            forwarded: Counter::default(),
            reloads: Counter::default(),
            gaps_reported: Counter::default(),
            resumes_not_recovered: Counter::default(),
            duplicates_absorbed: Counter::default(),
            idempotency_keys: Gauge::default(),
            stalled_topics: Gauge::default(),
            event_streams: Gauge::default(),
            dead_letters: Counter::default(),
            dead_letters_lost: Counter::default(),
            backlog_full: Counter::default(),
        };
        let mut registry = Registry::with_prefix("shardq_consumer");
        registry.register(
            "connections",
            "Open connections by endpoint",
            metrics.connections.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages queue groups gave up on (published to event.dead topics)",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "dead_letters_lost",
            "Dead letters that could not be published",
            metrics.dead_letters_lost.clone(),
        );
        registry.register(
            "backlog_full",
            "Publishes refused because a queue group's backlog was full",
            metrics.backlog_full.clone(),
        );
        registry.register(
            "event_streams",
            "Server-Sent Events streams open",
            metrics.event_streams.clone(),
        );
        registry.register(
            "topic_subscribers",
            "Client subscriptions on this node per declared topic and known tenant",
            metrics.topic_subscribers.clone(),
        );
        registry.register(
            "subscriptions",
            "Live subscriptions",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "topics",
            "Topics with state on this node",
            metrics.topics.clone(),
        );
        registry.register(
            "messages_in",
            "Messages sequenced",
            metrics.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages queued to subscribers (one per subscriber per message)",
            metrics.messages_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Bytes of message frames queued to subscribers",
            metrics.bytes_out.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Subscribers disconnected for falling behind",
            metrics.slow_consumers.clone(),
        );
        registry.register(
            "auth_failures",
            "Handshakes refused for a wrong proof",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "legacy_dropped",
            "Legacy messages dropped because their topic was refused",
            metrics.legacy_dropped.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of history retained",
            metrics.history_bytes.clone(),
        );
        registry.register(
            "history_messages",
            "Messages of history retained",
            metrics.history_messages.clone(),
        );
        registry.register(
            "forwarded",
            "Publishes forwarded to their owner",
            metrics.forwarded.clone(),
        );
        registry.register(
            "reloads",
            "Node-list reloads applied",
            metrics.reloads.clone(),
        );
        registry.register(
            "gaps_reported",
            "Per-topic gap notices sent to subscribers (an edge's upstream could not replay what it missed)",
            metrics.gaps_reported.clone(),
        );
        registry.register(
            "resumes_not_recovered",
            "Resumes answered recovered:false",
            metrics.resumes_not_recovered.clone(),
        );
        registry.register(
            "duplicates_absorbed",
            "Publishes answered with an earlier position because their idempotency key was remembered",
            metrics.duplicates_absorbed.clone(),
        );
        registry.register(
            "idempotency_keys",
            "Idempotency keys remembered",
            metrics.idempotency_keys.clone(),
        );
        registry.register(
            "stalled_topics",
            "Edge topics whose owner is unreachable (subscribers told stalled)",
            metrics.stalled_topics.clone(),
        );
        (metrics, registry)
    }
}
