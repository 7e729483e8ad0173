//! The HTTP API of a producer: `POST /v1/topics/{queue}/{event}` with a
//! JSON body publishes it and answers once its owner acked
//! (`200 {"epoch":…,"offset":…}`), or with the protocol's error code as an
//! HTTP status and `{"code":…,"message":…}`. Authentication is a bearer
//! token, or HTTP Basic with a `[[clients]]` name and secret (`-` and the
//! psk for the default tenant); over TLS only, unless `[tokens]
//! allow_plaintext`. An `Idempotency-Key` header is the publish's key.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use shardq_net::http_api::{
    authenticate, no_route, openapi, preflight, refusal, single_header, wrong_method,
};
use shardq_net::link::{self, Answer, Batches, Body, Reply, Request};
use shardq_protocol::frame::is_valid_key;
use shardq_protocol::topic::TENANT_SEPARATOR;
use shardq_protocol::{ErrorCode, Limits, RawValue, Topic};

use crate::server::Shared;
use crate::session::check_payload;

/// The routes of the HTTP API; `tls` says whether they are served over TLS.
pub(crate) fn routes(shared: Arc<Shared>, tls: bool) -> Router {
    Router::new()
        .route(
            "/v1/topics/{queue}/{event}",
            post(publish).options(preflight),
        )
        .route("/v1/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state((shared, tls))
}

/// The request's body: at most the payload limit, arriving within the
/// handshake timeout (a client sending a body slowly, or never, holds a
/// connection no longer than one sending its headers slowly).
async fn read_body(body: axum::body::Body, limits: &Limits) -> Result<Bytes, Response> {
    let limit = limits.max_payload_bytes();
    let timeout = limits.handshake_timeout();
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => {
            let mut response = refusal(
                ErrorCode::BadFrame,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            );
            *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
            Err(response)
        }
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(refusal(
            ErrorCode::PayloadTooLarge,
            format!("the body is over the payload limit of {limit} bytes"),
        )),
        Ok(Err(error)) => Err(refusal(
            ErrorCode::BadFrame,
            format!("the request body could not be read: {error}"),
        )),
        Ok(Ok(collected)) => {
            let body = collected.to_bytes();
            check_payload(body.len(), limits)
                .map(|()| body)
                .map_err(|why| refusal(ErrorCode::PayloadTooLarge, why))
        }
    }
}

/// The query string of a publish.
#[derive(Debug, serde::Deserialize)]
struct PublishQuery {
    /// 0–9, for the topic's queue groups (PROTOCOL.md section 15).
    priority: Option<u8>,
}

async fn publish(
    State((shared, tls)): State<(Arc<Shared>, bool)>,
    Path((queue, event)): Path<(String, String)>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let priority = match query {
        Ok(Query(PublishQuery { priority })) if priority.is_none_or(|p| p <= 9) => priority,
        _ => return refusal(ErrorCode::BadFrame, "priority must be 0-9"),
    };
    let identity = match authenticate(&shared.credentials.load(), &headers, None, tls) {
        Ok(identity) => identity,
        Err((code, message)) => return refusal(code, message),
    };
    let topic = match Topic::new(&queue, &event) {
        Ok(topic) => topic,
        Err(error) => return refusal(error.code(), error.to_string()),
    };
    // Permission first: a client learns nothing of queues it may not use.
    if !identity.permissions.may_publish(&topic) {
        return refusal(
            ErrorCode::NotAuthorized,
            format!("this client may not publish to {topic}"),
        );
    }
    if let Err(error) = shared.queues.load().check(&topic) {
        return refusal(error.code(), error.to_string());
    }
    let body = match read_body(body, &shared.limits).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return refusal(ErrorCode::BadFrame, "the body is not UTF-8 JSON");
    };
    let payload = match RawValue::from_string(text.trim().to_owned()) {
        Ok(payload) => payload,
        Err(error) => {
            return refusal(
                ErrorCode::BadFrame,
                format!("the body is not JSON: {error}"),
            );
        }
    };
    let key = match single_header(&headers, "idempotency-key") {
        Err(why) => return refusal(ErrorCode::BadFrame, why),
        Ok(None) => None,
        Ok(Some(key)) if is_valid_key(key) => Some(key.to_owned()),
        Ok(Some(_)) => {
            return refusal(
                ErrorCode::BadFrame,
                "Idempotency-Key must be 1-64 characters of A-Z a-z 0-9 . _ : -",
            );
        }
    };
    let key_text = match identity.tenant_key() {
        Some(tenant) => format!("{tenant}{TENANT_SEPARATOR}{}", topic.name()),
        None => topic.name().to_owned(),
    };
    shared.metrics.publishes_in.inc();
    let links = shared.links.current();
    let Some(link) = links.owner(&key_text) else {
        return refusal(ErrorCode::Unavailable, "the node list names no consumer");
    };
    let body = Body::new(&key_text, key.as_deref(), &payload).with_priority(priority);
    let permit = match link::permit(link, body.len()) {
        Ok(permit) => permit,
        Err(why) => return refusal(ErrorCode::Unavailable, why),
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let mut batches = Batches::default();
    batches.add(
        link,
        Request {
            body,
            forwarded: false,
            reply: Reply::Http(answer),
            permit,
        },
    );
    batches.flush();
    match answered.await {
        Ok(Answer::Acked { at, duplicate }) => {
            let mut body = serde_json::json!({"epoch": at.epoch, "offset": at.offset});
            if duplicate {
                body["duplicate"] = serde_json::Value::Bool(true);
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Ok(Answer::Failed(code, message)) => refusal(code, message),
        // The link answers everything it takes; a dropped answer means the
        // node is going away.
        Err(_) => refusal(ErrorCode::ShuttingDown, "the producer is shutting down"),
    }
}
