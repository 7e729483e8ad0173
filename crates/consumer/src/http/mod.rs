//! The HTTP API of a consumer: `GET /v1/topics/{queue}/{event}/events`
//! streams a topic (or `queue/*`) as Server-Sent Events, resuming after
//! `Last-Event-ID`; `GET /v1/openapi.json` describes the HTTP API.
//!
//! An event stream is a subscriber like a WebSocket one: the same
//! authentication (a bearer token, Basic client credentials, or the
//! `access_token` query parameter a browser's `EventSource` can send), the
//! same permissions, caps and outbox bound (a stream that falls that far
//! behind is ended as a slow consumer). The table queues the frames it
//! encoded once for everyone; the stream's own task turns them into events
//! ([`events::EventStream`]), so WebSocket fan-out costs nothing more.

mod events;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use shardq_net::codec::Role;
use shardq_net::http_api::{
    ApiConnection, authenticate, no_route, openapi, preflight, refusal, single_header, wrong_method,
};
use shardq_net::outbox::{Chunk, Drained, Outbox};
use shardq_net::presence::{Joining, Present};
use shardq_protocol::status::ClientRole;
use shardq_protocol::{CloseCode, ErrorCode, Topic, TopicFilter};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;
use crate::topics::Subscriber;
use events::EventStream;

/// How long a finished stream's connection may take to deliver its last
/// bytes before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The routes of a consumer's HTTP API; `tls` says whether they are served
/// over TLS.
pub(crate) fn routes(shared: Arc<Shared>, tls: bool) -> Router {
    Router::new()
        .route(
            "/v1/topics/{queue}/{event}/events",
            get(events).options(preflight),
        )
        .route("/v1/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state((shared, tls))
}

/// The query string of an event stream request.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// A token, for clients that cannot send `Authorization`.
    access_token: Option<String>,
    /// Where to resume, for clients that cannot send `Last-Event-ID`.
    last_event_id: Option<String>,
}

async fn events(
    State((shared, tls)): State<(Arc<Shared>, bool)>,
    Path((queue, event)): Path<(String, String)>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    connection: Option<axum::Extension<ApiConnection>>,
    headers: HeaderMap,
) -> Response {
    if shared.stop.is_cancelled() {
        return refusal(ErrorCode::ShuttingDown, "the consumer is shutting down");
    }
    let Ok(Query(query)) = query else {
        return refusal(ErrorCode::BadFrame, "the query string is not valid");
    };
    let identity = match authenticate(
        &shared.credentials.load(),
        &headers,
        query.access_token.as_deref(),
        tls,
    ) {
        Ok(identity) => identity,
        Err((code, message)) => return refusal(code, message),
    };
    let filter = match TopicFilter::parse(&format!("{queue}/{event}")) {
        Ok(filter) => filter,
        Err(error) => return refusal(error.code(), error.to_string()),
    };
    let named = filter.in_tenant(None);
    if !identity.permissions.may_subscribe(&named) {
        return refusal(
            ErrorCode::NotAuthorized,
            format!("this client may not subscribe to {named}"),
        );
    }
    let wildcard = !matches!(filter, TopicFilter::Exact(_));
    let scoped = filter.in_tenant(identity.tenant_key().as_deref());
    let topics = match shared.queues.load().expand(&scoped) {
        Ok(topics) => topics,
        Err(error) => return refusal(error.code(), error.to_string()),
    };
    let cap = shared.limits.max_subscriptions_per_connection;
    if topics.len() > cap {
        return refusal(
            ErrorCode::TooManySubscriptions,
            format!("a stream may hold at most {cap} subscriptions"),
        );
    }
    let header_id = match single_header(&headers, "last-event-id") {
        Ok(id) => id,
        Err(why) => return refusal(ErrorCode::BadFrame, why),
    };
    let last_event_id = header_id
        .or(query.last_event_id.as_deref())
        .filter(|id| !id.trim().is_empty());
    let resume = match last_event_id {
        None => vec![None; topics.len()],
        Some(id) => match EventStream::resume_from(id, &topics, wildcard) {
            Ok(resume) => resume,
            Err(error) => return refusal(ErrorCode::BadFrame, error.to_string()),
        },
    };
    if resume
        .iter()
        .flatten()
        .any(|since| since.epoch == 0 && since.offset != 0)
    {
        return refusal(
            ErrorCode::BadFrame,
            "Last-Event-ID with epoch 0 (the start of the current epoch) takes offset 0",
        );
    }
    let table = &shared.topics;
    if let Err(why) = table.ready(&topics, shared.limits.publish_timeout()).await {
        for topic in &topics {
            table.release(topic);
        }
        return refusal(ErrorCode::Unavailable, why);
    }
    let Some(axum::Extension(connection)) = connection else {
        return refusal(ErrorCode::Internal, "not served by the HTTP API server");
    };
    let subscriber = Subscriber {
        conn: shared.next_conn_id(),
        outbox: Arc::new(Outbox::with_role(
            shared.limits.subscriber_buffer_bytes,
            Role::Server,
        )),
        legacy_name: None,
        peer: false,
    };
    let present = shared.presence.join(Joining {
        name: identity.name.to_string(),
        tenant: identity.tenant.to_string(),
        role: ClientRole::Subscriber,
        remote: connection.remote,
        legacy: false,
        outbox: subscriber.outbox.clone(),
    });
    let mut live = Live {
        shared: shared.clone(),
        subscriber,
        topics: Vec::new(),
        stream: EventStream::new(&topics, wildcard, &resume),
        present,
        cut: connection.cut,
        done: false,
    };
    // One subscribe per topic, each with its own resume point; each queues
    // its ack ahead of the topic's messages.
    for (index, (topic, since)) in topics.iter().zip(&resume).enumerate() {
        let subscribed = table.subscribe(
            std::slice::from_ref(topic),
            &live.subscriber,
            *since,
            Some(index as u64),
        );
        if subscribed.is_err() {
            return refusal(
                ErrorCode::Unavailable,
                "the stream closed while subscribing",
            );
        }
        shared.count_subscriber(topic, 1);
        live.topics.push(topic.clone());
    }
    live.present.subscribed(&live.topics);
    // However the stream ends (cut as a slow consumer while hyper waits
    // for a client that reads nothing, the node stopping, the client
    // leaving), its connection goes a moment later.
    let outbox = live.subscriber.outbox.clone();
    let cut = live.cut.clone();
    shared.tasks.spawn(async move {
        outbox.closed().await;
        tokio::time::sleep(CLOSE_GRACE).await;
        cut.cancel();
    });
    shared.metrics.event_streams.inc();
    let ping = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.limits.ping_interval(),
        shared.limits.ping_interval(),
    );
    let body = futures_util::stream::unfold(
        (Box::new(live), ping, VecDeque::new()),
        |(mut live, mut ping, spare)| async move {
            let (bytes, spare) = live.next(&mut ping, spare).await?;
            Some((Ok::<_, Infallible>(bytes), (live, ping, spare)))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// A live event stream: its subscriptions end when it is dropped (the
/// client went away, or the stream ended).
struct Live {
    shared: Arc<Shared>,
    subscriber: Subscriber,
    topics: Vec<Topic>,
    stream: EventStream,
    /// Its place in `GET /v1/clients`.
    present: Present,
    /// Drops the connection.
    cut: CancellationToken,
    done: bool,
}

impl Live {
    /// The next bytes of the stream, or `None` once it ended.
    async fn next(
        &mut self,
        ping: &mut tokio::time::Interval,
        spare: VecDeque<Chunk>,
    ) -> Option<(Bytes, VecDeque<Chunk>)> {
        if self.done {
            return None;
        }
        let outbox = self.subscriber.outbox.clone();
        let limit = self.shared.limits.max_frame_bytes;
        let mut spare = Some(spare);
        let mut out = Vec::new();
        loop {
            tokio::select! {
                drained = outbox.drain(spare.take().unwrap_or_default()) => match drained {
                    Drained::Frames { mut frames, bytes } => {
                        let mut count = 0;
                        for chunk in &frames {
                            for frame in chunk.frames() {
                                count += 1;
                                self.stream.frames(frame, limit, &mut out);
                            }
                        }
                        outbox.written(count, bytes);
                        frames.clear();
                        spare = Some(frames);
                        if !out.is_empty() {
                            return Some((Bytes::from(out), spare.unwrap_or_default()));
                        }
                    }
                    Drained::Close(_) | Drained::Finish => {
                        let (code, message) = match outbox.close_code() {
                            // (The fan-out counted it in `slow_consumers`.)
                            Some(CloseCode::SlowConsumer) => {
                                ("slow_consumer", "the stream fell too far behind: resume with Last-Event-ID")
                            }
                            _ => ("shutting_down", "the consumer is shutting down: resume elsewhere"),
                        };
                        return Some((self.end(code, message), VecDeque::new()));
                    }
                },
                _ = ping.tick() => {
                    out.extend_from_slice(b": ping\n\n");
                    return Some((Bytes::from(out), spare.unwrap_or_default()));
                }
                () = self.shared.stop.cancelled() => {
                    let bytes = self.end("shutting_down", "the consumer is shutting down: resume elsewhere");
                    return Some((bytes, VecDeque::new()));
                }
            }
        }
    }

    /// The stream's last event, `closed` with why (the watchdog spawned
    /// with the stream cuts the connection if the client does not take it
    /// in time).
    fn end(&mut self, code: &str, message: &str) -> Bytes {
        self.done = true;
        self.subscriber.outbox.close(CloseCode::GoingAway);
        let mut out = Vec::new();
        let data = serde_json::json!({"code": code, "message": message}).to_string();
        events::event(&mut out, "closed", None, &data);
        Bytes::from(out)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.subscriber.outbox.close(CloseCode::Normal);
        for topic in &self.topics {
            self.shared.topics.unsubscribe(topic, self.subscriber.conn);
            self.shared.count_subscriber(topic, -1);
        }
        self.shared.metrics.event_streams.dec();
    }
}
