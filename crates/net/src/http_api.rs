//! The client-facing HTTP API's common ground (a producer's publish, a
//! consumer's Server-Sent Events): serving a router with keep-alive behind
//! the node's connection caps, authenticating a request (bearer token,
//! `access_token` query parameter, or Basic client credentials), CORS, and
//! answering a refusal as the protocol's code with an HTTP status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use shardq_protocol::ErrorCode;
use shardq_protocol::auth::{ClientIdentity, Credentials};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::gate::Gate;
use crate::tls::ServerTls;

/// The OpenAPI 3 document of the HTTP API (producers' publish, consumers'
/// event streams, and the admin routes), as checked in.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// `GET /v1/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// How the HTTP API port serves.
#[derive(Clone)]
pub struct ApiOptions {
    /// Serve HTTPS with this certificate (the node's url is `wss://`).
    pub tls: Option<Arc<ServerTls>>,
    /// The node's connection caps: an HTTP connection holds a place like a
    /// WebSocket connection does.
    pub gate: Arc<Gate>,
    /// Time to receive a request's headers (and a TLS handshake); an idle
    /// keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// At the stop, time for answers in progress to finish (a publish
    /// waits for its owner's ack) before their connections are dropped.
    pub drain: Duration,
    /// A connection whose peer leaves data unacknowledged this long is
    /// dropped by the kernel (`TCP_USER_TIMEOUT`): a vanished browser's
    /// event stream ends within a ping interval plus this.
    pub write_timeout: Duration,
}

impl ApiOptions {
    /// The options `[limits]` gives: headers within the handshake timeout,
    /// unread data dropped after the write timeout; `drain` at the stop.
    pub fn new(
        tls: Option<Arc<ServerTls>>,
        gate: Arc<Gate>,
        limits: &shardq_protocol::Limits,
        drain: Duration,
    ) -> ApiOptions {
        ApiOptions {
            tls,
            gate,
            header_timeout: limits.handshake_timeout(),
            drain,
            write_timeout: limits.write_timeout(),
        }
    }
}

/// A request's connection, in the request's extensions: who it comes
/// from, and a handle a streaming answer (Server-Sent Events) uses to cut
/// the connection when the client stopped reading, which hyper alone would
/// wait out.
#[derive(Clone, Debug)]
pub struct ApiConnection {
    /// The client's address.
    pub remote: SocketAddr,
    /// Cancelling it drops the connection at once.
    pub cut: CancellationToken,
}

/// Serves `router` on `listener` until `stop` is cancelled, with keep-alive
/// (HTTP/1.1): each connection holds a place at the `gate`, and is closed
/// when a request's headers take longer than the header timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ApiOptions,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                crate::log_summary::ACCEPT_FAILURES.note(&format!("http: {error}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(mut admission) = options.gate.admit(addr.ip()) else {
            continue;
        };
        if let Err(error) =
            socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(options.write_timeout))
        {
            tracing::debug!(%error, "TCP_USER_TIMEOUT not set");
        }
        // Requests authenticate one by one; the connection itself is
        // bounded by the header timeout instead.
        admission.authenticated();
        let router = router.clone();
        let options = options.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _admission = admission;
            let cut = CancellationToken::new();
            let handle = ApiConnection {
                remote: addr,
                cut: cut.clone(),
            };
            let service =
                hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(handle.clone());
                    let router = router.clone();
                    async move {
                        let response = router.oneshot(request.map(axum::body::Body::new)).await;
                        Ok::<_, Infallible>(with_cors(
                            response.unwrap_or_else(|never| match never {}),
                        ))
                    }
                });
            let stream = match &options.tls {
                None => tokio_util::either::Either::Left(stream),
                Some(tls) => {
                    match tokio::time::timeout(options.header_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => tokio_util::either::Either::Right(stream),
                        Ok(Err(error)) => {
                            crate::log_summary::HANDSHAKE_FAILURES
                                .note(&format!("http TLS handshake failed: {error}"));
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_timeout)
                // Request heads (a token, a Last-Event-ID) are small.
                .max_buf_size(64 << 10)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = cut.cancelled() => {}
                () = stop.cancelled() => {
                    // Answers in progress finish (a stream ends on the
                    // node's stop by itself); idle connections close.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(options.drain, connection).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(options.drain, connections.wait()).await;
}

/// Any origin may call the API: it authenticates with a token or
/// credentials the caller sends, never with cookies, so a page gains
/// nothing from a visitor's browser.
fn with_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    response
}

/// The answer to a CORS preflight (`OPTIONS`) on any API path.
pub async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, idempotency-key, last-event-id",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// The HTTP status a protocol error code is answered with.
pub fn status_of(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadFrame | ErrorCode::BadTopic => StatusCode::BAD_REQUEST,
        ErrorCode::AuthFailed => StatusCode::UNAUTHORIZED,
        ErrorCode::NotAuthorized => StatusCode::FORBIDDEN,
        ErrorCode::UnknownQueue | ErrorCode::UnknownEvent => StatusCode::NOT_FOUND,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooManySubscriptions | ErrorCode::BacklogFull => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer: the code's HTTP status and `{"code","message"}`.
pub fn refusal(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": code.as_str(), "message": message.into()});
    let mut response = (status_of(&code), axum::Json(body)).into_response();
    if code == ErrorCode::AuthFailed {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The one value of header `name`: `Ok(None)` when absent, `Err` with why
/// it is refused (`bad_frame`) when it is repeated (which one would count
/// is ambiguous) or not text.
pub fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("more than one {name} header"));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| format!("the {name} header is not ASCII"))
}

/// What an API port answers for a path it does not serve: 404 with
/// `{"code","message"}` like every other refusal.
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({
        "code": "not_found",
        "message": format!("no route for {method} {}", uri.path()),
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// A method a path does not take: 405 with `{"code","message"}`.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({
        "code": "method_not_allowed",
        "message": format!("{} does not take {method}", uri.path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// Why a request did not authenticate: the code and the message.
pub type Unauthenticated = (ErrorCode, &'static str);

/// Who the request authenticates as: `Authorization: Bearer <token>`,
/// `Authorization: Basic <name:secret>` (`-` and the psk for the default
/// tenant), or, for clients that cannot set headers (a browser's
/// `EventSource`), the `access_token` query parameter (RFC 6750 §2.3).
/// Over plaintext only when `[tokens] allow_plaintext`.
pub fn authenticate(
    credentials: &Credentials,
    headers: &HeaderMap,
    query_token: Option<&str>,
    tls: bool,
) -> Result<ClientIdentity, Unauthenticated> {
    let failed = || (ErrorCode::AuthFailed, "authentication failed");
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err((ErrorCode::BadFrame, "more than one Authorization header"));
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if header.is_none() && query_token.is_none() {
        return Err(failed());
    }
    if !tls && !credentials.tokens.allow_plaintext {
        return Err((
            ErrorCode::NotAuthorized,
            "credentials are accepted over TLS only",
        ));
    }
    let Some(value) = header else {
        let token = query_token.unwrap_or_default();
        return credentials.tokens.verify(token).map_err(|_| failed());
    };
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
