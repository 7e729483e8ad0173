//! Publisher connections: shardq/1 on `/v1/publish` and the legacy dialect
//! on `/produce`. Each publish is checked, routed to its owner's link, and
//! answered by the link when the owner answers.
//!
//! Backpressure: a publish needs a slot in its link's window; when the
//! window is full the connection waits for one, so it stops reading its
//! socket and the publisher is slowed by TCP instead of buffered for.

use std::sync::Arc;

use bytes::Bytes;
use shardq_net::channel::{Channel, Ended, Liveness};
use shardq_net::codec::{Text, encode};
use shardq_net::conn::Connection;
use shardq_net::handshake;
use shardq_net::link::{self, Batches, Body, InFlight, Reply, Request};
use shardq_net::outbox::FrameBatch;
use shardq_net::presence::Joining;
use shardq_protocol::auth::DEFAULT_TENANT;
use shardq_protocol::frame::{parse_publish_parts, request_id_of};
use shardq_protocol::legacy::{self, LegacyFrame};
use shardq_protocol::status::ClientRole;
use shardq_protocol::topic::TENANT_SEPARATOR;
use shardq_protocol::{
    Accepts, CloseCode, ENVELOPE_BYTES, ErrorCode, Frame, Limits, Peer, Permissions, Topic,
};
use tokio::time::Instant;

use crate::server::Shared;

/// Most frames read and handled as one burst.
const BURST: usize = 64;
/// How long a closed connection waits for the publisher's close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A shardq/1 publisher on `/v1/publish`.
pub(crate) async fn run(shared: Arc<Shared>, connection: Connection, deadline: Instant) {
    let Connection {
        mut reader,
        outbox,
        tls: connection_tls,
        peer,
        ..
    } = connection;
    let credentials = shared.credentials.load_full();
    let accepted = Box::pin(handshake::accept_shardq(
        &mut reader,
        &outbox,
        &credentials,
        Accepts::Clients,
        connection_tls,
        &shared.id,
        shared.limits.max_preauth_frame_bytes,
        deadline,
        &shared.metrics.auth_failures,
    ))
    .await;
    drop(credentials);
    let (permissions, tenant, _present) = match accepted {
        Ok((Peer::Client(identity), name)) => {
            let present = shared.presence.join(Joining {
                name,
                tenant: identity.tenant.to_string(),
                role: ClientRole::Publisher,
                remote: peer,
                legacy: false,
                outbox: outbox.clone(),
            });
            (identity.permissions.clone(), identity.tenant_key(), present)
        }
        // Client endpoints accept clients only.
        Ok((Peer::Node(_), _)) | Err(_) => return,
    };
    let mut channel = Channel::new(
        reader,
        outbox.clone(),
        Liveness::clients(&shared.limits),
        shared.draining.clone(),
    );
    let in_flight = Arc::new(InFlight::default());
    let ended = Box::pin(serve(
        &shared,
        &mut channel,
        &in_flight,
        &permissions,
        tenant.as_deref(),
    ))
    .await;
    if ended == Ended::Stopped {
        // Answer everything in flight before saying goodbye, and every
        // frame the publisher still sends meanwhile (not processed).
        let patience = shared.limits.publish_timeout() + std::time::Duration::from_secs(1);
        let answered = channel
            .drain_refusing(in_flight.idle(), patience, |text| {
                count_error(&shared, &ErrorCode::ShuttingDown);
                Frame::error(
                    request_id_of(text),
                    ErrorCode::ShuttingDown,
                    "the producer is shutting down: not processed",
                )
            })
            .await;
        if !answered {
            tracing::warn!(
                unanswered = in_flight.count(),
                "closing with publishes unanswered"
            );
        }
        channel.close(CloseCode::GoingAway);
    }
    if matches!(ended, Ended::Stopped | Ended::Closed(_)) {
        channel.linger(LINGER).await;
    }
}

async fn serve(
    shared: &Shared,
    channel: &mut Channel,
    in_flight: &Arc<InFlight>,
    permissions: &Permissions,
    tenant: Option<&str>,
) -> Ended {
    let mut burst: Vec<Text> = Vec::new();
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
        let mut answers: Vec<Bytes> = Vec::new();
        let mut batches = Batches::default();
        let links = shared.links.current();
        for text in burst.drain(..) {
            // Nearly every frame is a publish in the fast form: its topic and
            // payload are passed on as slices of the text, not copied.
            let (id, body) = match parse_publish_parts(&text) {
                Some(parts) => (parts.id, Body::in_frame(text.clone(), &parts)),
                None => match Frame::decode_str(&text, shared.limits.max_frame_bytes) {
                    // `forwarded` means nothing coming from a publisher; it is not passed on.
                    // A `tenant` field from a publisher means nothing
                    // either: its tenant is the one it authenticated in.
                    Ok(Frame::Publish(publish)) => (
                        publish.id,
                        Body::new(
                            publish.topic.name(),
                            publish.key.as_deref(),
                            &publish.payload,
                        )
                        .with_priority(publish.priority),
                    ),
                    Ok(other) => {
                        let refusal = Frame::error(
                            request_id_of(&text),
                            ErrorCode::NotAuthorized,
                            format!("/v1/publish takes publish frames, not {}", other.kind()),
                        );
                        answers.push(encode::text_frame(refusal.encode().as_bytes()));
                        continue;
                    }
                    Err(error) => {
                        count_error(shared, &error.code());
                        answers.push(encode::text_frame(error.to_frame().encode().as_bytes()));
                        continue;
                    }
                },
            };
            shared.metrics.publishes_in.inc();
            if let Err(why) = check_payload(body.payload().len(), &shared.limits) {
                answers.push(refusal(shared, id, ErrorCode::PayloadTooLarge, &why));
                continue;
            }
            let topic = body.topic();
            // Permission first: a client learns nothing of queues it may
            // not use.
            if !permissions.may_publish_text(topic) {
                let why = format!("this client may not publish to {topic}");
                answers.push(refusal(shared, id, ErrorCode::NotAuthorized, &why));
                continue;
            }
            if let Err(error) = shared.queues.load().check_text(topic) {
                answers.push(refusal(shared, id, error.code(), &error.to_string()));
                continue;
            }
            // Outside the default tenant the topic's key names the tenant.
            let body = match tenant {
                Some(tenant) => body.with_topic(&format!("{tenant}{TENANT_SEPARATOR}{topic}")),
                None => body,
            };
            let topic = body.topic();
            let Some(link) = links.owner(topic) else {
                answers.push(refusal(
                    shared,
                    id,
                    ErrorCode::Unavailable,
                    "the node list names no consumer",
                ));
                continue;
            };
            let permit = match link::permit(link, body.len()) {
                Ok(permit) => permit,
                Err(why) => {
                    answers.push(refusal(shared, id, ErrorCode::Unavailable, &why));
                    continue;
                }
            };
            in_flight.add(1);
            let reply = Reply::Publisher {
                outbox: channel.outbox().clone(),
                id,
                in_flight: in_flight.clone(),
            };
            batches.add(
                link,
                Request {
                    body,
                    forwarded: false,
                    reply,
                    permit,
                },
            );
        }
        batches.flush();
        if !answers.is_empty()
            && channel
                .outbox()
                .push_batch(&FrameBatch::new(answers))
                .is_err()
        {
            return Ended::Closed(channel.outbox().close_code().unwrap_or(CloseCode::Normal));
        }
    }
}

/// A payload within the payload limit, else why not (PROTOCOL.md 8).
pub(crate) fn check_payload(len: usize, limits: &Limits) -> Result<(), String> {
    let limit = limits.max_payload_bytes();
    if len > limit {
        return Err(format!(
            "the payload is {len} bytes; the limit is {limit} (max_frame_bytes minus {ENVELOPE_BYTES} for the envelope)"
        ));
    }
    Ok(())
}

fn count_error(shared: &Shared, code: &ErrorCode) {
    shared.metrics.error(code.as_str());
}

fn refusal(shared: &Shared, id: u64, code: ErrorCode, message: &str) -> Bytes {
    count_error(shared, &code);
    encode::text_frame(Frame::error(Some(id), code, message).encode().as_bytes())
}

/// An origin publisher on `/produce`: no acks in this dialect, so what
/// cannot be delivered is counted and logged.
pub(crate) async fn run_legacy(shared: Arc<Shared>, connection: Connection, deadline: Instant) {
    let Connection {
        mut reader,
        outbox,
        peer,
        ..
    } = connection;
    let psk = shared.credentials.load().psk.clone();
    let verified = Box::pin(handshake::accept_legacy(
        &mut reader,
        &outbox,
        &psk,
        shared.limits.max_preauth_frame_bytes,
        deadline,
        &shared.metrics.auth_failures,
        || async { Ok(()) },
    ))
    .await;
    if verified.is_err() {
        return;
    }
    let _present = shared.presence.join(Joining {
        name: "-".into(),
        tenant: DEFAULT_TENANT.into(),
        role: ClientRole::Publisher,
        remote: peer,
        legacy: true,
        outbox: outbox.clone(),
    });
    let mut channel = Channel::new(
        reader,
        outbox,
        Liveness::clients(&shared.limits),
        shared.draining.clone(),
    );
    let mut batches = Batches::default();
    loop {
        let text = match channel.next_text().await {
            Ok(text) => text,
            Err(Ended::Stopped) => {
                channel.close(CloseCode::GoingAway);
                channel.linger(LINGER).await;
                return;
            }
            Err(_) => return,
        };
        let (name, data) = match LegacyFrame::decode(text.as_bytes(), shared.limits.max_frame_bytes)
        {
            Ok(LegacyFrame::Message { topic, data }) => (topic, data),
            Ok(other) => {
                undelivered(&shared, &format!("{other:?} is not valid on /produce"));
                continue;
            }
            Err(error) => {
                undelivered(&shared, &error.to_string());
                continue;
            }
        };
        shared.metrics.publishes_in.inc();
        if let Err(why) = check_payload(data.get().len(), &shared.limits) {
            undelivered(&shared, &why);
            continue;
        }
        let topic: Topic =
            match legacy::topic(&name).and_then(|t| shared.queues.load().check(&t).map(|()| t)) {
                Ok(topic) => topic,
                Err(error) => {
                    undelivered(&shared, &error.to_string());
                    continue;
                }
            };
        let links = shared.links.current();
        let Some(link) = links.owner(&topic) else {
            undelivered(&shared, "the node list names no consumer");
            continue;
        };
        let permit = match link::permit(link, topic.as_str().len() + data.get().len()) {
            Ok(permit) => permit,
            Err(why) => {
                undelivered(&shared, &why);
                continue;
            }
        };
        batches.add(
            link,
            Request {
                body: Body::new(topic.as_str(), None, &data),
                forwarded: false,
                reply: Reply::Legacy,
                permit,
            },
        );
        batches.flush();
    }
}

fn undelivered(shared: &Shared, why: &str) {
    shared.metrics.links.legacy_undelivered.inc();
    shardq_net::log_summary::LEGACY_DROPPED.note(why);
}
