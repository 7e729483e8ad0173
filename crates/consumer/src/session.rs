//! One shardq/1 connection on `/v1/subscribe` or `/v1/cluster`: the
//! handshake, then subscribe / unsubscribe / publish frames, each answered
//! (queue groups: `groups`).

mod groups;

use std::collections::BTreeSet;
use std::sync::Arc;

use shardq_net::channel::{Channel, Ended, Liveness};
use shardq_net::codec::{FrameBuf, Role, Text};
use shardq_net::conn::Connection;
use shardq_net::handshake;
use shardq_net::link::{self, Batches, Body, InFlight, Reply, Request};
use shardq_net::outbox::FrameBatch;
use shardq_net::presence::{Joining, Present};
use shardq_protocol::auth::DEFAULT_TENANT;
use shardq_protocol::frame::{
    DecodeError, PublishParts, encode_publish_ack_into, parse_publish_parts, request_id_of,
};
use shardq_protocol::status::ClientRole;
use shardq_protocol::{
    Accepts, Ack, CloseCode, ErrorCode, Frame, Peer, Permissions, Publish, RawValue, Subscribe,
    Topic, TopicFilter, Unsubscribe,
};
use tokio::time::Instant;

use crate::server::{Endpoint, Shared};
use crate::topics::{NotSequenced, Publishing, Sequenced, Subscriber};

/// Most frames read and handled as one burst.
const BURST: usize = 64;
/// How long a closed connection waits for the peer's close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the handshake and, if it succeeds, the connection. The connection
/// comes boxed and the handshake runs in a boxed future of its own, so the
/// long-lived state of an idle connection holds only its channel and
/// session (a future keeps every argument and every local live across an
/// await; see docs/PERFORMANCE.md on memory per idle subscriber).
pub(crate) async fn run(
    shared: Arc<Shared>,
    id: u64,
    connection: Box<Connection>,
    endpoint: Endpoint,
    deadline: Instant,
) {
    let Some((mut channel, mut session)) =
        Box::pin(open(shared, id, connection, endpoint, deadline)).await
    else {
        return;
    };
    // Boxed so that only the loop's own state stays allocated while it runs.
    let ended = Box::pin(session.serve(&mut channel)).await;
    if ended == Ended::Stopped {
        // Answer the publishes forwarded for this connection first, and
        // every frame the peer still sends meanwhile (not processed).
        let patience = session.shared.limits.publish_timeout() + LINGER;
        // Boxed, like the ending below: rare, and a timer is not small.
        let in_flight = session.in_flight.clone();
        Box::pin(channel.drain_refusing(in_flight.idle(), patience, |text| {
            Frame::error(
                request_id_of(text),
                ErrorCode::ShuttingDown,
                "the consumer is shutting down: not processed",
            )
        }))
        .await;
        channel.close(CloseCode::GoingAway);
    }
    if matches!(ended, Ended::Stopped | Ended::Closed(_)) {
        Box::pin(channel.linger(LINGER)).await;
    }
    tracing::debug!(?ended, "connection ended");
    session.unsubscribe_all();
}

/// The handshake; then the connection's channel and session.
async fn open(
    shared: Arc<Shared>,
    id: u64,
    connection: Box<Connection>,
    endpoint: Endpoint,
    deadline: Instant,
) -> Option<(Channel, Session)> {
    let Connection {
        mut reader,
        outbox,
        tls: connection_tls,
        peer,
        ..
    } = *connection;
    let accepts = match endpoint {
        Endpoint::Cluster => Accepts::Nodes,
        _ => Accepts::Clients,
    };
    let credentials = shared.credentials.load_full();
    // Boxed for the same reason as the upgrade: short-lived, large state.
    let accepted = Box::pin(handshake::accept_shardq(
        &mut reader,
        &outbox,
        &credentials,
        accepts,
        connection_tls,
        &shared.id,
        shared.limits.max_preauth_frame_bytes,
        deadline,
        &shared.metrics.auth_failures,
    ))
    .await;
    drop(credentials);
    // Nodes may do anything their endpoint allows; clients what their
    // credential allows.
    let (permissions, tenant, tenant_name, role, name) = match accepted {
        Ok((Peer::Client(identity), name)) => (
            identity.permissions.clone(),
            identity.tenant_key(),
            identity.tenant.to_string(),
            ClientRole::Subscriber,
            name,
        ),
        Ok((Peer::Node(id), _)) => (
            Arc::new(Permissions::all()),
            None,
            DEFAULT_TENANT.to_owned(),
            ClientRole::Node,
            id,
        ),
        Err(_) => return None,
    };
    let present = shared.presence.join(Joining {
        name,
        tenant: tenant_name,
        role,
        remote: peer,
        legacy: false,
        outbox: outbox.clone(),
    });
    // Node-to-node connections are watched as closely as links are.
    let liveness = match endpoint {
        Endpoint::Cluster => Liveness::links(&shared.limits),
        _ => Liveness::clients(&shared.limits),
    };
    let channel = Channel::new(reader, outbox.clone(), liveness, shared.stop.clone());
    let session = Session {
        subscriber: Subscriber {
            conn: id,
            outbox,
            legacy_name: None,
            peer: endpoint == Endpoint::Cluster,
        },
        shared,
        endpoint,
        subscriptions: BTreeSet::new(),
        in_flight: Arc::new(InFlight::default()),
        permissions,
        tenant,
        present,
        memberships: Vec::new(),
    };
    Some((channel, session))
}

struct Session {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    subscriber: Subscriber,
    subscriptions: BTreeSet<Topic>,
    /// Publishes forwarded to their owner and not answered yet.
    in_flight: Arc<InFlight>,
    /// What the peer may subscribe to.
    permissions: Arc<Permissions>,
    /// A client's tenant outside the default one: its topics' keys name it.
    tenant: Option<Arc<str>>,
    /// Its place in `GET /v1/clients`.
    present: Present,
    /// Its queue-group memberships: topic and group.
    memberships: Vec<(Topic, String)>,
}

/// One frame of a burst, decoded.
enum Item<'a> {
    /// A publish in the fast form, its fields borrowed from the text.
    Publish(PublishParts<'a>),
    /// A publish in another valid form.
    OwnedPublish(Publish),
    /// Any other frame, or why the text is not one.
    Other(Result<Frame, DecodeError>),
}

/// A publish's fields, however it was decoded.
#[derive(Clone, Copy)]
struct PublishRef<'a> {
    id: u64,
    topic: &'a str,
    key: Option<&'a str>,
    forwarded: bool,
    priority: Option<u8>,
    payload: &'a RawValue,
}

impl Item<'_> {
    /// The publish, as borrowed fields.
    fn publish(&self) -> Option<PublishRef<'_>> {
        match self {
            Item::Publish(parts) => Some(PublishRef {
                id: parts.id,
                topic: parts.topic,
                key: parts.key,
                forwarded: parts.forwarded,
                priority: parts.priority,
                payload: parts.payload,
            }),
            Item::OwnedPublish(publish) => Some(PublishRef {
                id: publish.id,
                topic: publish.topic.as_str(),
                key: publish.key.as_deref(),
                forwarded: publish.forwarded,
                priority: publish.priority,
                payload: &publish.payload,
            }),
            Item::Other(_) => None,
        }
    }
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
            let mut answers = FrameBuf::new(Role::Server, 64 * burst.len());
            let texts: Vec<Text> = std::mem::take(&mut burst);
            // Boxed: a burst's state (a subscribe waiting for its upstream)
            // is large and short-lived, and must not be part of every idle
            // connection's future.
            Box::pin(self.handle_burst(texts, &mut answers)).await;
            if !answers.is_empty()
                && channel
                    .outbox()
                    .push_batch(&FrameBatch::new(vec![answers.into_bytes()]))
                    .is_err()
            {
                return Ended::Closed(channel.outbox().close_code().unwrap_or(CloseCode::Normal));
            }
        }
    }

    /// Handles frames that arrived together, in arrival order; each run of
    /// publishes to one topic is sequenced (or forwarded) as one batch.
    async fn handle_burst(&mut self, burst: Vec<Text>, answers: &mut FrameBuf) {
        let cluster = self.endpoint == Endpoint::Cluster;
        let limit = self.shared.limits.max_frame_bytes;
        let items: Vec<Item<'_>> = burst
            .iter()
            .map(|text| {
                // Nearly every frame on a link is a publish in the fast form.
                if let Some(parts) = parse_publish_parts(text).filter(|_| cluster) {
                    return Item::Publish(parts);
                }
                match Frame::decode_str(text, limit) {
                    Ok(Frame::Publish(publish)) if cluster => Item::OwnedPublish(publish),
                    other => Item::Other(other),
                }
            })
            .collect();
        let mut publishes = Vec::new();
        for (item, text) in items.iter().zip(&burst) {
            let other = match item {
                Item::Other(other) => other,
                publish => {
                    publishes.extend(publish.publish());
                    continue;
                }
            };
            // The publishes before it go first: answers leave in arrival order.
            self.publish_runs(&publishes, answers);
            publishes.clear();
            let answer = match other {
                Ok(Frame::Subscribe(subscribe)) => self.subscribe(subscribe.clone()).await,
                Ok(Frame::Unsubscribe(unsubscribe)) => self.unsubscribe(unsubscribe.clone()),
                Ok(Frame::AckMessage(ack)) if !cluster => {
                    // The ack's answer precedes what it frees for this
                    // member, and follows the answers before it.
                    let before = std::mem::replace(answers, FrameBuf::new(Role::Server, 64));
                    if !before.is_empty() {
                        let _ = self
                            .subscriber
                            .outbox
                            .push_batch(&FrameBatch::new(vec![before.into_bytes()]));
                    }
                    self.ack_message(ack)
                }
                Ok(Frame::Publish(publish)) => Some(Frame::error(
                    Some(publish.id),
                    ErrorCode::NotAuthorized,
                    "publish goes to a producer's /v1/publish, not /v1/subscribe",
                )),
                Ok(Frame::Ack(_) | Frame::Moved(_) | Frame::Message(_)) if cluster => {
                    // A peer's answers come on the link it opened, not here.
                    None
                }
                Ok(other) => Some(Frame::error(
                    request_id_of(text),
                    ErrorCode::NotAuthorized,
                    format!("{} frames are not accepted on this endpoint", other.kind()),
                )),
                Err(error) => Some(error.to_frame()),
            };
            if let Some(answer) = answer {
                answers.push(answer.encode().as_bytes());
            }
        }
        self.publish_runs(&publishes, answers);
    }

    /// Sequences each run of consecutive publishes to a topic this node
    /// owns and acks each publish; forwards the others to their owner
    /// (once), never waiting: a full link refuses them at once.
    fn publish_runs(&mut self, publishes: &[PublishRef<'_>], answers: &mut FrameBuf) {
        if publishes.is_empty() {
            return;
        }
        let mut batches = Batches::default();
        let mut run: Vec<Publishing<'_>> = Vec::new();
        let mut sequenced: Vec<Sequenced> = Vec::new();
        let mut rest = publishes;
        while let Some(first) = rest.first() {
            let topic = first.topic;
            let len = rest.iter().take_while(|p| p.topic == topic).count();
            let (group, after) = rest.split_at(len);
            rest = after;
            if let Err(error) = self.shared.queues.load().check_key(topic) {
                for publish in group {
                    let refusal = Frame::error(Some(publish.id), error.code(), error.to_string());
                    answers.push(refusal.encode().as_bytes());
                }
                continue;
            }
            let limit = self.shared.limits.max_payload_bytes();
            if group.iter().any(|p| p.payload.get().len() > limit) {
                // Refuse the oversize ones alone, then the rest as a run.
                for publish in group {
                    let len = publish.payload.get().len();
                    if len > limit {
                        let refusal = Frame::error(
                            Some(publish.id),
                            ErrorCode::PayloadTooLarge,
                            format!("the payload is {len} bytes; the limit is {limit}"),
                        );
                        answers.push(refusal.encode().as_bytes());
                    } else {
                        self.publish_runs(std::slice::from_ref(publish), answers);
                    }
                }
                continue;
            }
            run.clear();
            run.extend(group.iter().map(|p| Publishing {
                payload: p.payload,
                key: p.key,
                priority: p.priority.unwrap_or(0),
            }));
            sequenced.clear();
            let owner = match self.shared.topics.publish_many(topic, &run, &mut sequenced) {
                Ok(()) => {
                    for (publish, done) in group.iter().zip(&sequenced) {
                        answers.push_with(|out| {
                            encode_publish_ack_into(out, publish.id, done.at, done.duplicate)
                        });
                    }
                    continue;
                }
                Err(NotSequenced::OwnedBy(owner)) => Some(owner),
                Err(NotSequenced::BacklogFull(why)) => {
                    for publish in group {
                        let frame = Frame::error(Some(publish.id), ErrorCode::BacklogFull, &why);
                        answers.push(frame.encode().as_bytes());
                    }
                    continue;
                }
                Err(NotSequenced::NoOwner | NotSequenced::BadTopic) => None,
            };
            let link = owner
                .as_deref()
                .and_then(|owner| self.shared.peers.current().link(owner).cloned());
            for publish in group {
                let refusal = if publish.forwarded {
                    Some(format!(
                        "{} does not own {topic} in its view of the node list, and the publish was already forwarded once (views disagree; retry)",
                        self.shared.id
                    ))
                } else if link.is_none() {
                    Some(format!(
                        "{topic} has no reachable owner in {}'s view",
                        self.shared.id
                    ))
                } else {
                    None
                };
                if let Some(message) = refusal {
                    let frame = Frame::error(Some(publish.id), ErrorCode::Unavailable, message);
                    answers.push(frame.encode().as_bytes());
                    continue;
                }
                // (A missing link was refused above.)
                let Some(link) = &link else { continue };
                let bytes = topic.len() + publish.payload.get().len();
                let permit = match link::permit(link, bytes) {
                    Ok(permit) => permit,
                    Err(why) => {
                        let frame = Frame::error(Some(publish.id), ErrorCode::Unavailable, why);
                        answers.push(frame.encode().as_bytes());
                        continue;
                    }
                };
                self.in_flight.add(1);
                self.shared.metrics.forwarded.inc();
                let reply = Reply::Publisher {
                    outbox: self.subscriber.outbox.clone(),
                    id: publish.id,
                    in_flight: self.in_flight.clone(),
                };
                batches.add(
                    link,
                    Request {
                        body: Body::new(topic, publish.key, publish.payload)
                            .with_priority(publish.priority),
                        forwarded: true,
                        reply,
                        permit,
                    },
                );
            }
        }
        batches.flush();
    }

    /// A filter as the peer named it (`queue/event`) and in its namespace:
    /// a client's tenant (whatever `tenant` it wrote), a node's as sent.
    fn scoped(&self, filter: &TopicFilter) -> (TopicFilter, TopicFilter) {
        let named = filter.in_tenant(None);
        let scoped = match self.endpoint {
            Endpoint::Cluster => filter.clone(),
            _ => filter.in_tenant(self.tenant.as_deref()),
        };
        (named, scoped)
    }

    async fn subscribe(&mut self, subscribe: Subscribe) -> Option<Frame> {
        if let Some(group) = &subscribe.group {
            return self.join_group(&subscribe, group);
        }
        let id = subscribe.id;
        let (named, scoped) = self.scoped(&subscribe.topic);
        if !self.permissions.may_subscribe(&named) {
            return Some(Frame::error(
                Some(id),
                ErrorCode::NotAuthorized,
                format!("this client may not subscribe to {named}"),
            ));
        }
        let topics = match self.shared.queues.load().expand(&scoped) {
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
                format!("already subscribed to {named}"),
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
        let table = &self.shared.topics;
        if self.subscriber.peer {
            // Edges subscribe at the owner only; a stale view on either side
            // is refused rather than chained.
            if let Some(foreign) = new.iter().find(|topic| !table.owns(topic)) {
                return Some(Frame::error(
                    Some(id),
                    ErrorCode::NotOwner,
                    format!(
                        "{} does not own {foreign} in its view of the node list",
                        self.shared.id
                    ),
                ));
            }
        } else if let Err(why) = table
            .ready(&new, self.shared.limits.publish_timeout())
            .await
        {
            for topic in &new {
                table.release(topic);
            }
            return Some(Frame::error(Some(id), ErrorCode::Unavailable, why));
        }
        // The table queues the ack itself, ahead of any message.
        if table
            .subscribe(&new, &self.subscriber, subscribe.since, Some(id))
            .is_ok()
        {
            if !self.subscriber.peer {
                for topic in &new {
                    self.shared.count_subscriber(topic, 1);
                }
            }
            self.subscriptions.extend(new);
            self.present.subscribed(&self.subscriptions);
        }
        None
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Option<Frame> {
        let id = unsubscribe.id;
        let (named, scoped) = self.scoped(&unsubscribe.topic);
        // An exact topic needs no check: it is either held or not.
        let topics = match &scoped {
            TopicFilter::Exact(topic) => vec![topic.clone()],
            wildcard => match self.shared.queues.load().expand(wildcard) {
                Ok(topics) => topics,
                Err(error) => {
                    return Some(Frame::error(Some(id), error.code(), error.to_string()));
                }
            },
        };
        let left_groups = self.leave_groups(Some(&topics));
        let held: Vec<Topic> = topics
            .into_iter()
            .filter(|topic| self.subscriptions.contains(topic))
            .collect();
        if held.is_empty() && left_groups == 0 {
            return Some(Frame::error(
                Some(id),
                ErrorCode::NotSubscribed,
                format!("not subscribed to {named}"),
            ));
        }
        for topic in held {
            self.shared.topics.unsubscribe(&topic, self.subscriber.conn);
            self.subscriptions.remove(&topic);
            if !self.subscriber.peer {
                self.shared.count_subscriber(&topic, -1);
            }
        }
        self.present.subscribed(&self.subscriptions);
        Some(Frame::Ack(Ack::unsubscribed(id)))
    }

    fn unsubscribe_all(&mut self) {
        self.leave_groups(None);
        for topic in std::mem::take(&mut self.subscriptions) {
            self.shared.topics.unsubscribe(&topic, self.subscriber.conn);
            if !self.subscriber.peer {
                self.shared.count_subscriber(&topic, -1);
            }
        }
    }
}
