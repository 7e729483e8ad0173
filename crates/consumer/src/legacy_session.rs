//! Legacy-dialect connections: origin producers on `/producer` and origin
//! subscribers on `/subscribe/{topic}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardq_protocol::legacy::{self, LegacyFrame};
use shardq_protocol::{CloseCode, Topic, TopicError};
use tokio::time::Instant;

use crate::net::channel::{Channel, Ended};
use crate::net::conn::Connection;
use crate::net::handshake;
use crate::server::{Endpoint, Shared};
use crate::topics::Subscriber;

/// Runs the legacy handshake and then the connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    id: u64,
    connection: Connection,
    endpoint: Endpoint,
    deadline: Instant,
) {
    let mut subscriptions = BTreeMap::new();
    serve(
        &shared,
        id,
        connection,
        &endpoint,
        deadline,
        &mut subscriptions,
    )
    .await;
    for topic in subscriptions.keys() {
        shared.topics.unsubscribe(topic, id);
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
        mut reader, outbox, ..
    } = connection;
    let subscriber = Subscriber {
        conn: id,
        outbox: outbox.clone(),
        legacy_name: None,
    };
    // The path's topic, checked now and subscribed the moment the peer
    // proves the psk, before our answer tells it the connection is open.
    let path_topic: Option<Result<(String, Topic), TopicError>> = match endpoint {
        Endpoint::LegacySubscribe(raw) => Some(
            legacy::topic_from_path(raw)
                .and_then(|(name, topic)| shared.queues.check(&topic).map(|()| (name, topic))),
        ),
        _ => None,
    };

    let verified = Box::pin(handshake::accept_legacy(
        &mut reader,
        &outbox,
        &shared.psk,
        shared.limits.max_preauth_frame_bytes,
        deadline,
        || {
            let Some(Ok((name, topic))) = &path_topic else {
                return Ok(());
            };
            let subscriber = Subscriber {
                legacy_name: Some(Arc::from(name.as_str())),
                ..subscriber.clone()
            };
            shared
                .topics
                .subscribe(std::slice::from_ref(topic), &subscriber, None, None)
                .map_err(|_| ())?;
            subscriptions.insert(topic.clone(), Arc::from(name.as_str()));
            Ok(())
        },
    ))
    .await;
    if let Err(refused) = verified {
        if refused.auth_failed {
            shared.metrics.auth_failures.inc();
        }
        return;
    }
    if let Some(Err(error)) = &path_topic {
        tracing::info!(%error, "legacy subscriber's topic refused");
        outbox.close(CloseCode::TopicRefused);
        return;
    }
    reader.authenticated();
    let mut channel = Channel::new(
        reader,
        outbox,
        shared.limits.ping_interval(),
        shared.limits.max_missed_pongs,
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
                tracing::info!(%error, "undecodable legacy frame dropped");
                continue;
            }
        };
        match (frame, endpoint) {
            (LegacyFrame::Message { topic, data }, Endpoint::LegacyProducer) => {
                match legacy::topic(&topic).and_then(|t| shared.queues.check(&t).map(|()| t)) {
                    Ok(topic) => {
                        shared.topics.publish(&topic, &data);
                    }
                    Err(error) => {
                        shared.metrics.legacy_dropped.inc();
                        tracing::info!(%error, "legacy message dropped");
                    }
                }
            }
            (LegacyFrame::Subscribe(name), Endpoint::LegacySubscribe(_)) => {
                let checked =
                    legacy::topic(&name).and_then(|t| shared.queues.check(&t).map(|()| t));
                match checked {
                    Ok(topic) if !subscriptions.contains_key(&topic) => {
                        let subscriber = Subscriber {
                            legacy_name: Some(Arc::from(name.as_str())),
                            ..subscriber.clone()
                        };
                        if shared
                            .topics
                            .subscribe(std::slice::from_ref(&topic), &subscriber, None, None)
                            .is_ok()
                        {
                            subscriptions.insert(topic, Arc::from(name.as_str()));
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::info!(%error, "legacy subscribe refused"),
                }
            }
            (LegacyFrame::Unsubscribe(name), Endpoint::LegacySubscribe(_)) => {
                if let Ok(topic) = legacy::topic(&name) {
                    if subscriptions.remove(&topic).is_some() {
                        shared.topics.unsubscribe(&topic, id);
                    }
                }
            }
            (frame, _) => {
                shared.metrics.legacy_dropped.inc();
                tracing::info!(?frame, "legacy frame not valid on this endpoint; dropped");
            }
        }
    }
}
