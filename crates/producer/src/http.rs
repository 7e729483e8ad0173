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
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use shardq_net::link::{self, Answer, Batches, Body, Reply, Request};
use shardq_protocol::auth::ClientIdentity;
use shardq_protocol::frame::is_valid_key;
use shardq_protocol::topic::TENANT_SEPARATOR;
use shardq_protocol::{ErrorCode, RawValue, Topic};
use subtle::ConstantTimeEq;

use crate::server::Shared;
use crate::session::check_payload;

/// The routes of the HTTP API; `tls` says whether they are served over TLS.
pub(crate) fn routes(shared: Arc<Shared>, tls: bool) -> Router {
    Router::new()
        .route("/v1/topics/{queue}/{event}", post(publish))
        .with_state((shared, tls))
}

/// An error answer: the code's HTTP status and `{"code","message"}`.
fn refusal(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = match code {
        ErrorCode::BadFrame | ErrorCode::BadTopic => StatusCode::BAD_REQUEST,
        ErrorCode::AuthFailed => StatusCode::UNAUTHORIZED,
        ErrorCode::NotAuthorized => StatusCode::FORBIDDEN,
        ErrorCode::UnknownQueue | ErrorCode::UnknownEvent => StatusCode::NOT_FOUND,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unavailable | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({"code": code.as_str(), "message": message.into()});
    let mut response = (status, axum::Json(body)).into_response();
    if code == ErrorCode::AuthFailed {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Why a request did not authenticate: the code and the message.
type Unauthenticated = (ErrorCode, &'static str);

/// Who the request authenticates as.
fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    tls: bool,
) -> Result<ClientIdentity, Unauthenticated> {
    let credentials = shared.credentials.load();
    let failed = || (ErrorCode::AuthFailed, "authentication failed");
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(failed)?;
    if !tls && !credentials.tokens.allow_plaintext {
        return Err((
            ErrorCode::NotAuthorized,
            "credentials are accepted over TLS only",
        ));
    }
    let (scheme, rest) = value.split_once(' ').ok_or_else(failed)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return credentials.tokens.verify(rest.trim()).map_err(|_| failed());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(failed());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| failed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| failed())?;
    let (name, secret) = decoded.split_once(':').ok_or_else(failed)?;
    let matches = |key: &[u8]| bool::from(key.ct_eq(secret.as_bytes()));
    if name == "-" {
        return if matches(credentials.psk.as_bytes()) {
            Ok(ClientIdentity::psk_holder())
        } else {
            Err(failed())
        };
    }
    let client = credentials.clients.get(name).ok_or_else(failed)?;
    // Every secret is compared, so the time does not say which matched.
    let verified = client
        .secrets
        .iter()
        .fold(false, |found, key| matches(key.as_bytes()) | found);
    if verified {
        Ok(client.identity.clone())
    } else {
        Err(failed())
    }
}

async fn publish(
    State((shared, tls)): State<(Arc<Shared>, bool)>,
    Path((queue, event)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = match authenticate(&shared, &headers, tls) {
        Ok(identity) => identity,
        Err((code, message)) => return refusal(code, message),
    };
    let topic = match Topic::new(&queue, &event) {
        Ok(topic) => topic,
        Err(error) => return refusal(error.code(), error.to_string()),
    };
    if let Err(error) = shared.queues.load().check(&topic) {
        return refusal(error.code(), error.to_string());
    }
    if !identity.permissions.may_publish(&topic) {
        return refusal(
            ErrorCode::NotAuthorized,
            format!("this client may not publish to {topic}"),
        );
    }
    if let Err(why) = check_payload(body.len(), &shared.limits) {
        return refusal(ErrorCode::PayloadTooLarge, why);
    }
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
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str().ok().filter(|key| is_valid_key(key)) {
            Some(key) => Some(key.to_owned()),
            None => {
                return refusal(
                    ErrorCode::BadFrame,
                    "Idempotency-Key must be 1-64 characters of A-Z a-z 0-9 . _ : -",
                );
            }
        },
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
    let body = Body::new(&key_text, key.as_deref(), &payload);
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
