//! What a publish carries over a link: its topic and payload (slices of the
//! frame it arrived in), its window slot, and where its answer goes.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shardq_protocol::RawValue;
use shardq_protocol::frame::PublishParts;
use tokio::sync::Notify;

use super::WindowPermit;
use crate::codec::Text;
use crate::outbox::Outbox;

/// Publishes a publisher connection has in flight, so it can wait for all
/// of them to be answered before it closes.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts `n` more publishes in flight.
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }

    /// How many are unanswered.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Completes when none is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Where a publish's answer goes.
pub enum Reply {
    /// A shardq/1 publisher (or a forwarding consumer's peer): its outbox
    /// and its request id.
    Publisher {
        /// The connection's outbox.
        outbox: Arc<Outbox>,
        /// The connection's id for the request.
        id: u64,
        /// The connection's in-flight count.
        in_flight: Arc<InFlight>,
    },
    /// A legacy publisher: there is no answer to send; failures are counted.
    Legacy,
    /// An HTTP publish waiting for its answer.
    Http(tokio::sync::oneshot::Sender<super::Answer>),
}

/// A publish's topic and payload as two slices of one shared text, usually
/// the frame the publish arrived in: passed on with no copy until they are
/// framed for the link.
pub struct Body {
    text: Text,
    topic: Range<usize>,
    /// Empty when the publish has no idempotency key.
    key: Range<usize>,
    payload: Range<usize>,
    /// Its priority, if it carries one.
    priority: Option<u8>,
}

impl Body {
    /// The topic and payload of `parts`, read out of `text`.
    pub fn in_frame(text: Text, parts: &PublishParts<'_>) -> Body {
        let payload_len = parts.payload.get().len();
        let key_len = parts.key.map_or(0, str::len);
        Body {
            topic: parts.topic_at..parts.topic_at + parts.topic.len(),
            key: parts.key_at..parts.key_at + key_len,
            payload: parts.payload_at..parts.payload_at + payload_len,
            priority: parts.priority,
            text,
        }
    }

    /// A body of its own (one allocation), for a publish that was not read
    /// by `parse_publish_parts`. `topic` must be valid (see
    /// [`Topic`](shardq_protocol::Topic)), and `key` too
    /// ([`is_valid_key`](shardq_protocol::frame::is_valid_key)).
    pub fn new(topic: &str, key: Option<&str>, payload: &RawValue) -> Body {
        Body::owned(topic, key, payload.get())
    }

    fn owned(topic: &str, key: Option<&str>, payload: &str) -> Body {
        let key = key.unwrap_or_default();
        let key_at = topic.len();
        let payload_at = key_at + key.len();
        Body {
            text: Text::from(format!("{topic}{key}{payload}")),
            topic: 0..topic.len(),
            key: key_at..payload_at,
            payload: payload_at..payload_at + payload.len(),
            priority: None,
        }
    }

    /// The same body with a priority (0–9).
    pub fn with_priority(mut self, priority: Option<u8>) -> Body {
        self.priority = priority;
        self
    }

    /// Its priority, if it carries one.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// The same publish to the topic whose key is `topic` (a tenant's):
    /// one copy.
    pub fn with_topic(&self, topic: &str) -> Body {
        Body::owned(topic, self.key(), self.payload()).with_priority(self.priority)
    }

    /// The topic's key (valid, see [`Topic::as_str`](shardq_protocol::Topic::as_str)).
    pub fn topic(&self) -> &str {
        self.text.get(self.topic.clone()).unwrap_or_default()
    }

    /// The idempotency key, if the publish has one.
    pub fn key(&self) -> Option<&str> {
        if self.key.is_empty() {
            return None;
        }
        self.text.get(self.key.clone())
    }

    /// The payload (valid JSON).
    pub fn payload(&self) -> &str {
        self.text.get(self.payload.clone()).unwrap_or_default()
    }

    /// Bytes of topic, key and payload.
    pub fn len(&self) -> usize {
        self.topic.len() + self.key.len() + self.payload.len()
    }

    /// Whether both are empty (never, for a valid publish).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One publish on its way over a link.
pub struct Request {
    /// The topic and payload, passed through byte for byte.
    pub body: Body,
    /// Set when a consumer forwards it (it is never forwarded twice).
    pub forwarded: bool,
    /// Where the answer goes.
    pub reply: Reply,
    /// The window slot it holds until answered.
    pub permit: WindowPermit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardq_protocol::Topic;
    use shardq_protocol::frame::parse_publish_parts;

    #[test]
    fn a_body_in_a_frame_slices_it() {
        let text =
            Text::from(r#"{"type":"publish","id":3,"topic":"db/create","payload":{"name":"é"}}"#);
        let parts = parse_publish_parts(&text).unwrap();
        let body = Body::in_frame(text.clone(), &parts);
        assert_eq!(
            (body.topic(), body.payload()),
            ("db/create", r#"{"name":"é"}"#)
        );
        let spaced = Text::from(r#"{"type":"publish","id":4,"topic":"a/b","payload":  [ 1 ] }"#);
        let parts = parse_publish_parts(&spaced).unwrap();
        assert_eq!(Body::in_frame(spaced.clone(), &parts).payload(), "[ 1 ]");
        let topic = Topic::parse("db/create").unwrap();
        let payload = RawValue::from_string("[1,2]".into()).unwrap();
        let own = Body::new(topic.as_str(), None, &payload);
        assert_eq!(
            (own.topic(), own.key(), own.payload()),
            ("db/create", None, "[1,2]")
        );
        let keyed = Body::new(topic.as_str(), Some("k-1"), &payload);
        assert_eq!(
            (keyed.topic(), keyed.key(), keyed.payload()),
            ("db/create", Some("k-1"), "[1,2]")
        );
        let text = Text::from(r#"{"type":"publish","id":5,"topic":"a/b","key":"x:9","payload":7}"#);
        let parts = parse_publish_parts(&text).unwrap();
        let body = Body::in_frame(text.clone(), &parts);
        assert_eq!(
            (body.topic(), body.key(), body.payload()),
            ("a/b", Some("x:9"), "7")
        );
    }

    #[tokio::test]
    async fn in_flight_is_idle_once_everything_is_answered() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.add(2);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.idle().await }
        });
        in_flight.done(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        in_flight.done(1);
        waiter.await.unwrap();
        assert_eq!(in_flight.count(), 0);
    }
}
