//! Legacy-dialect connections: origin producers on `/producer` and origin
//! subscribers on `/subscribe/{topic}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardq_net::channel::{Channel, Ended, Liveness};
use shardq_net::conn::Connection;
use shardq_net::handshake;
use shardq_net::link::{self, Batches, Body, Reply, Request};
use shardq_net::log_summary::LEGACY_DROPPED;
use shardq_net::presence::Joining;
use shardq_protocol::auth::DEFAULT_TENANT;
use shardq_protocol::legacy::{self, LegacyFrame};
use shardq_protocol::status::ClientRole;
use shardq_protocol::{CloseCode, RawValue, Topic, TopicError};
use tokio::time::Instant;

use crate::server::{Endpoint, Shared};
use crate::topics::{NotSequenced, Subscriber};

/// Runs the legacy handshake and then the connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    id: u64,
    connection: Box<Connection>,
    endpoint: Endpoint,
    deadline: Instant,
) {
    let mut subscriptions = BTreeMap::new();
    serve(
        &shared,
        id,
        *connection,
        &endpoint,
        deadline,
        &mut subscriptions,
    )
    .await;
    for topic in subscriptions.keys() {
        shared.topics.unsubscribe(topic, id);
        shared.count_subscriber(topic, -1);
    }
}

async fn serve(
    shared: &Arc<Shared>,
    id: u64,
    connection: Connection,
    endpoint: &Endpoint,
    deadline: Instant,
    subscriptions: &mut BTreeMap<Topic, Arc<str>>,
) {
    let Connection {
        mut reader,
        outbox,
        peer,
        ..
    } = connection;
    let subscriber = Subscriber {
        conn: id,
        outbox: outbox.clone(),
        legacy_name: None,
        peer: false,
    };
    // The path's topic, checked now and subscribed the moment the peer
    // proves the psk, before our answer tells it the connection is open.
    let path_topic: Option<Result<(String, Topic), TopicError>> = match endpoint {
        Endpoint::LegacySubscribe(raw) => {
            Some(legacy::topic_from_path(raw).and_then(|(name, topic)| {
                shared.queues.load().check(&topic).map(|()| (name, topic))
            }))
        }
        _ => None,
    };

    let verified = Box::pin(handshake::accept_legacy(
        &mut reader,
        &outbox,
        &shared.credentials.load().psk,
        shared.limits.max_preauth_frame_bytes,
        deadline,
        &shared.metrics.auth_failures,
        || async {
            let Some(Ok((name, topic))) = &path_topic else {
                return Ok(());
            };
            subscribe(shared, &subscriber, name, topic, subscriptions).await
        },
    ))
    .await;
    if verified.is_err() {
        return;
    }
    if let Some(Err(error)) = &path_topic {
        LEGACY_DROPPED.note(&format!("legacy subscriber's topic refused: {error}"));
        outbox.close(CloseCode::TopicRefused);
        return;
    }
    let role = match endpoint {
        Endpoint::LegacyProducer => ClientRole::Publisher,
        _ => ClientRole::Subscriber,
    };
    let present = shared.presence.join(Joining {
        name: "-".into(),
        tenant: DEFAULT_TENANT.into(),
        role,
        remote: peer,
        legacy: true,
        outbox: outbox.clone(),
    });
    present.subscribed(subscriptions.keys());
    let mut channel = Channel::new(
        reader,
        outbox,
        Liveness::clients(&shared.limits),
        shared.stop.clone(),
    );
    loop {
        let text = match channel.next_text().await {
            Ok(text) => text,
            Err(Ended::Stopped) => {
                channel.close(CloseCode::GoingAway);
                break;
            }
            Err(_) => break,
        };
        let frame = match LegacyFrame::decode(text.as_bytes(), shared.limits.max_frame_bytes) {
            Ok(frame) => frame,
            Err(error) => {
                // The dialect has no error frame: count, log, carry on.
                shared.metrics.legacy_dropped.inc();
                LEGACY_DROPPED.note(&format!("undecodable legacy frame: {error}"));
                continue;
            }
        };
        match (frame, endpoint) {
            (LegacyFrame::Message { topic, data }, Endpoint::LegacyProducer) => {
                match legacy::topic(&topic).and_then(|t| shared.queues.load().check(&t).map(|()| t))
                {
                    Ok(topic) => publish(shared, &topic, data),
                    Err(error) => {
                        shared.metrics.legacy_dropped.inc();
                        LEGACY_DROPPED.note(&format!("legacy message dropped: {error}"));
                    }
                }
            }
            (LegacyFrame::Subscribe(name), Endpoint::LegacySubscribe(_)) => {
                let checked =
                    legacy::topic(&name).and_then(|t| shared.queues.load().check(&t).map(|()| t));
                match checked {
                    Ok(topic)
                        if subscriptions.len()
                            >= shared.limits.max_subscriptions_per_connection =>
                    {
                        shared.metrics.legacy_dropped.inc();
                        LEGACY_DROPPED.note(&format!(
                            "legacy subscribe to {topic} refused: the connection holds {} subscriptions (max_subscriptions_per_connection)",
                            subscriptions.len()
                        ));
                    }
                    Ok(topic) if !subscriptions.contains_key(&topic) => {
                        if subscribe(shared, &subscriber, &name, &topic, subscriptions)
                            .await
                            .is_err()
                        {
                            LEGACY_DROPPED.note(&format!("legacy subscribe to {topic} failed"));
                        }
                        present.subscribed(subscriptions.keys());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        shared.metrics.legacy_dropped.inc();
                        LEGACY_DROPPED.note(&format!("legacy subscribe refused: {error}"));
                    }
                }
            }
            (LegacyFrame::Unsubscribe(name), Endpoint::LegacySubscribe(_)) => {
                if let Ok(topic) = legacy::topic(&name)
                    && subscriptions.remove(&topic).is_some()
                {
                    shared.topics.unsubscribe(&topic, id);
                    shared.count_subscriber(&topic, -1);
                    present.subscribed(subscriptions.keys());
                }
            }
            (frame, _) => {
                shared.metrics.legacy_dropped.inc();
                LEGACY_DROPPED.note(&format!(
                    "{} frame not valid on this endpoint",
                    frame.kind()
                ));
            }
        }
    }
}

/// Subscribes a legacy connection to `topic` under the name it used,
/// waiting for the upstream when this node is an edge for it.
async fn subscribe(
    shared: &Shared,
    subscriber: &Subscriber,
    name: &str,
    topic: &Topic,
    subscriptions: &mut BTreeMap<Topic, Arc<str>>,
) -> Result<(), ()> {
    let topics = std::slice::from_ref(topic);
    if let Err(why) = shared
        .topics
        .ready(topics, shared.limits.publish_timeout())
        .await
    {
        LEGACY_DROPPED.note(&format!(
            "legacy subscriber's topic has no reachable owner: {why}"
        ));
        shared.topics.release(topic);
        return Err(());
    }
    let subscriber = Subscriber {
        legacy_name: Some(Arc::from(name)),
        ..subscriber.clone()
    };
    shared
        .topics
        .subscribe(topics, &subscriber, None, None)
        .map_err(|_| ())?;
    subscriptions.insert(topic.clone(), Arc::from(name));
    shared.count_subscriber(topic, 1);
    Ok(())
}

/// Sequences a legacy message here, or forwards it to its owner (no ack
/// in this dialect: failures are counted).
fn publish(shared: &Shared, topic: &Topic, data: Box<RawValue>) {
    let limit = shared.limits.max_payload_bytes();
    if data.get().len() > limit {
        shared.metrics.legacy_dropped.inc();
        LEGACY_DROPPED.note(&format!(
            "legacy message to {topic} dropped: payload of {} bytes over the limit of {limit}",
            data.get().len()
        ));
        return;
    }
    let owner = match shared.topics.publish(topic, &data) {
        Ok(_) => return,
        Err(NotSequenced::OwnedBy(owner)) => Some(owner),
        Err(NotSequenced::BacklogFull(why)) => {
            shared.metrics.legacy_dropped.inc();
            LEGACY_DROPPED.note(&format!("legacy message dropped: {why}"));
            return;
        }
        Err(NotSequenced::NoOwner | NotSequenced::BadTopic) => None,
    };
    let Some(link) = owner.and_then(|owner| shared.peers.current().link(&owner).cloned()) else {
        shared.metrics.legacy_dropped.inc();
        LEGACY_DROPPED.note(&format!(
            "legacy message to {topic} dropped: no reachable owner"
        ));
        return;
    };
    let mut batches = Batches::default();
    let permit = match link::permit(&link, topic.as_str().len() + data.get().len()) {
        Ok(permit) => permit,
        Err(why) => {
            shared.metrics.legacy_dropped.inc();
            LEGACY_DROPPED.note(&format!("legacy message to {topic} dropped: {why}"));
            return;
        }
    };
    shared.metrics.forwarded.inc();
    batches.add(
        &link,
        Request {
            body: Body::new(topic.as_str(), None, &data),
            forwarded: true,
            reply: Reply::Legacy,
            permit,
        },
    );
    batches.flush();
}
