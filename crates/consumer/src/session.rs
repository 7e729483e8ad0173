//! One shardq/1 connection on `/v1/subscribe` or `/v1/cluster`: the
//! handshake, then subscribe / unsubscribe / publish frames, each answered.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use shardq_protocol::frame::encode_publish_ack_into;
use shardq_protocol::{
    Ack, CloseCode, ErrorCode, Frame, Position, Publish, RawValue, Subscribe, Topic, TopicFilter,
    Unsubscribe,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::net::channel::{Channel, Ended};
use crate::net::conn::Connection;
use crate::net::handshake;
use crate::net::outbox::FrameBatch;
use crate::net::ws;
use crate::server::{Endpoint, Shared};
use crate::topics::Subscriber;

/// Most frames read and handled as one burst.
const BURST: usize = 64;
/// How long a closed connection waits for the peer's close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the handshake and, if it succeeds, the connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    id: u64,
    connection: Connection,
    endpoint: Endpoint,
    deadline: Instant,
) {
    let Connection {
        mut reader, outbox, ..
    } = connection;
    // Boxed for the same reason as the upgrade: short-lived, large state.
    let accepted = Box::pin(handshake::accept_shardq(
        &mut reader,
        &outbox,
        &shared.psk,
        &shared.id,
        shared.limits.max_preauth_frame_bytes,
        deadline,
    ))
    .await;
    match accepted {
        Ok(client) => {
            tracing::Span::current().record("client", client.as_deref().unwrap_or("-"));
            tracing::debug!("authenticated");
        }
        Err(refused) => {
            if refused.auth_failed {
                shared.metrics.auth_failures.inc();
            }
            return;
        }
    }
    reader.authenticated();
    let mut channel = Channel::new(
        reader,
        outbox.clone(),
        shared.limits.ping_interval(),
        shared.limits.max_missed_pongs,
        shared.stop.clone(),
    );
    let mut session = Session {
        subscriber: Subscriber {
            conn: id,
            outbox,
            legacy_name: None,
        },
        shared,
        endpoint,
        subscriptions: BTreeSet::new(),
    };
    // Boxed so that only the loop's own state stays allocated while it runs.
    let ended = Box::pin(session.serve(&mut channel)).await;
    if ended == Ended::Stopped {
        channel.close(CloseCode::GoingAway);
    }
    if matches!(ended, Ended::Stopped | Ended::Closed(_)) {
        channel.linger(LINGER).await;
    }
    tracing::debug!(?ended, "connection ended");
    session.unsubscribe_all();
}

struct Session {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    subscriber: Subscriber,
    subscriptions: BTreeSet<Topic>,
}

impl Session {
    async fn serve(&mut self, channel: &mut Channel) -> Ended {
        // Grows to what the connection sends at once; idle subscribers keep it tiny.
        let mut burst = Vec::new();
        loop {
            match channel.next_text().await {
                Ok(text) => burst.push(text),
                Err(ended) => return ended,
            }
            while burst.len() < BURST {
                match channel.try_next_text() {
                    Some(text) => burst.push(text),
                    None => break,
                }
            }
            let mut answers = Vec::with_capacity(burst.len());
            self.handle_burst(burst.drain(..), &mut answers);
            if channel
                .outbox()
                .push_batch(&FrameBatch::new(answers))
                .is_err()
            {
                return Ended::Closed(channel.outbox().close_code().unwrap_or(CloseCode::Normal));
            }
        }
    }

    /// Handles frames that arrived together, in arrival order; each run of
    /// publishes to one topic is sequenced and fanned out as one batch.
    fn handle_burst(&mut self, burst: impl Iterator<Item = Utf8Bytes>, answers: &mut Vec<Bytes>) {
        let mut publishes: Vec<(Topic, Vec<Publish>)> = Vec::new();
        for text in burst {
            let answer = match Frame::decode_str(text.as_str(), self.shared.limits.max_frame_bytes)
            {
                Ok(Frame::Publish(publish)) if self.endpoint == Endpoint::Cluster => {
                    match publishes
                        .iter_mut()
                        .find(|(topic, _)| *topic == publish.topic)
                    {
                        Some((_, group)) => group.push(publish),
                        None => publishes.push((publish.topic.clone(), vec![publish])),
                    }
                    continue;
                }
                Ok(Frame::Subscribe(subscribe)) => {
                    self.publish_groups(&mut publishes, answers);
                    self.subscribe(subscribe)
                }
                Ok(Frame::Unsubscribe(unsubscribe)) => {
                    self.publish_groups(&mut publishes, answers);
                    self.unsubscribe(unsubscribe)
                }
                Ok(Frame::Publish(publish)) => Some(Frame::error(
                    Some(publish.id),
                    ErrorCode::NotAuthorized,
                    "publish goes to a producer's /v1/publish, not /v1/subscribe",
                )),
                Ok(other) => Some(Frame::error(
                    request_id(&other),
                    ErrorCode::BadFrame,
                    format!("a client does not send {} frames", other.kind()),
                )),
                Err(error) => Some(error.to_frame()),
            };
            if let Some(answer) = answer {
                answers.push(ws::text_frame(answer.encode().as_bytes()));
            }
        }
        self.publish_groups(&mut publishes, answers);
    }

    /// Sequences each topic's publishes as one batch and acks each.
    fn publish_groups(
        &mut self,
        groups: &mut Vec<(Topic, Vec<Publish>)>,
        answers: &mut Vec<Bytes>,
    ) {
        for (topic, group) in groups.drain(..) {
            if let Err(error) = self.shared.queues.check(&topic) {
                for publish in group {
                    let refusal = Frame::error(Some(publish.id), error.code(), error.to_string());
                    answers.push(ws::text_frame(refusal.encode().as_bytes()));
                }
                continue;
            }
            let payloads: Vec<&RawValue> = group.iter().map(|p| &*p.payload).collect();
            let first = self.shared.topics.publish_many(&topic, &payloads);
            for (publish, offset) in group.iter().zip(first.offset..) {
                let at = Position { offset, ..first };
                answers.push(ws::text_frame_with(64, |out| {
                    encode_publish_ack_into(out, publish.id, at)
                }));
            }
        }
    }

    fn subscribe(&mut self, subscribe: Subscribe) -> Option<Frame> {
        let id = subscribe.id;
        let topics = match self.shared.queues.expand(&subscribe.topic) {
            Ok(topics) => topics,
            Err(error) => return Some(Frame::error(Some(id), error.code(), error.to_string())),
        };
        let new: Vec<Topic> = topics
            .into_iter()
            .filter(|topic| !self.subscriptions.contains(topic))
            .collect();
        if new.is_empty() {
            return Some(Frame::error(
                Some(id),
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {}", subscribe.topic),
            ));
        }
        let cap = self.shared.limits.max_subscriptions_per_connection;
        if self.subscriptions.len() + new.len() > cap {
            return Some(Frame::error(
                Some(id),
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {cap} subscriptions"),
            ));
        }
        // The table queues the ack itself, ahead of any message.
        match self
            .shared
            .topics
            .subscribe(&new, &self.subscriber, subscribe.since, Some(id))
        {
            Ok(_) => self.subscriptions.extend(new),
            Err(_) => {
                // The outbox overflowed while queueing the replay: the
                // subscription was not made and the connection is closing.
            }
        }
        None
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Option<Frame> {
        let id = unsubscribe.id;
        // An exact topic needs no check: it is either held or not.
        let topics = match &unsubscribe.topic {
            TopicFilter::Exact(topic) => vec![topic.clone()],
            wildcard => match self.shared.queues.expand(wildcard) {
                Ok(topics) => topics,
                Err(error) => {
                    return Some(Frame::error(Some(id), error.code(), error.to_string()));
                }
            },
        };
        let held: Vec<Topic> = topics
            .into_iter()
            .filter(|topic| self.subscriptions.contains(topic))
            .collect();
        if held.is_empty() {
            return Some(Frame::error(
                Some(id),
                ErrorCode::NotSubscribed,
                format!("not subscribed to {}", unsubscribe.topic),
            ));
        }
        for topic in held {
            self.shared.topics.unsubscribe(&topic, self.subscriber.conn);
            self.subscriptions.remove(&topic);
        }
        Some(Frame::Ack(Ack::unsubscribed(id)))
    }

    fn unsubscribe_all(&mut self) {
        for topic in std::mem::take(&mut self.subscriptions) {
            self.shared.topics.unsubscribe(&topic, self.subscriber.conn);
        }
    }
}

fn request_id(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::Ack(ack) => Some(ack.id),
        Frame::Error(error) => error.id,
        _ => None,
    }
}
