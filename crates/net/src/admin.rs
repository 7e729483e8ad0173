//! The admin HTTP port (axum): `/healthz`, `/metrics` and `/v1/status`
//! (with its old name `/v1/cluster` kept as an alias for one release), plus
//! whatever routes a node adds; served with a connection cap, a
//! per-connection deadline and an optional bearer token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use shardq_protocol::Limits;
use shardq_protocol::status::NodeStatus;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Content type of the Prometheus/OpenMetrics text exposition.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes every node serves: `GET /healthz` and `GET /metrics`.
pub fn base_routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
                        Err(_) => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "metrics encoding failed\n",
                        )
                            .into_response(),
                    }
                }
            }),
        )
}

/// The path of the status route.
pub const STATUS_PATH: &str = "/v1/status";
/// Its name before 0.2 (when it shared the name of the consumers'
/// node-to-node WebSocket endpoint): an alias, to be removed in the next
/// release.
pub const STATUS_ALIAS: &str = "/v1/cluster";

/// Adds `GET /v1/clients`: the node's connected clients.
pub fn with_clients(
    router: Router,
    presence: Arc<crate::presence::Presence>,
    node: String,
) -> Router {
    router.route(
        "/v1/clients",
        get(move || {
            let report = presence.report(&node);
            async move { Json(report) }
        }),
    )
}

/// Adds `GET /v1/status` (and its alias `/v1/cluster`), answering what
/// `status` reports.
pub fn with_status<F>(router: Router, status: F) -> Router
where
    F: Fn() -> NodeStatus + Clone + Send + Sync + 'static,
{
    let route = get(move || {
        let status = status.clone();
        async move { Json(status()) }
    });
    router
        .route(STATUS_PATH, route.clone())
        .route(STATUS_ALIAS, route)
}

/// How the admin port guards itself.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// When set, every route but `/healthz` and `/readyz` needs
    /// `Authorization: Bearer <token>` (else 401).
    pub token: Option<String>,
    /// Admin connections at once; more are closed at accept.
    pub max_connections: usize,
    /// Time one connection may take, from accept to the end of its answer.
    /// One request per connection.
    pub request_timeout: Duration,
    /// Serve HTTPS with this certificate (`[tls] admin = true`).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

impl AdminOptions {
    /// The options of `[limits]` and a token.
    pub fn new(limits: &Limits, token: Option<String>) -> AdminOptions {
        AdminOptions {
            token,
            max_connections: limits.max_admin_connections,
            request_timeout: limits.admin_request_timeout(),
            tls: None,
        }
    }
}

/// Routes never behind the token: what a load balancer or orchestrator
/// probes, the dashboard page (it holds no data; it asks for the token and
/// sends it on the `/v1/*` routes it polls) and the public API document.
const OPEN_PATHS: [&str; 5] = ["/healthz", "/readyz", "/", "/dashboard", "/v1/openapi.json"];

/// Whether the request may pass the bearer-token check.
fn authorized<B>(request: &axum::http::Request<B>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    if OPEN_PATHS.contains(&request.uri().path()) {
        return true;
    }
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        // The scheme is case-insensitive (RFC 7235).
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .unwrap_or_default();
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Serves `router` on `listener` until `stop` is cancelled: at most
/// `max_connections` at once (more are closed at accept and counted in
/// `refused`), one request per connection, each connection cut after
/// `request_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: AdminOptions,
    refused: Counter,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let token: Option<Arc<str>> = options.token.as_deref().map(Arc::from);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                crate::log_summary::ACCEPT_FAILURES.note(&format!("admin: {error}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            crate::log_summary::REFUSED_CONNECTIONS.note("max_admin_connections");
            continue;
        };
        let router = router.clone();
        let token = token.clone();
        let timeout = options.request_timeout;
        let tls = options.tls.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |request: axum::http::Request<Incoming>| {
                    let router = router.clone();
                    let allowed = authorized(&request, token.as_deref());
                    async move {
                        if !allowed {
                            let denied = (
                                StatusCode::UNAUTHORIZED,
                                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                                "missing or wrong bearer token\n",
                            );
                            return Ok::<_, Infallible>(denied.into_response());
                        }
                        router.oneshot(request.map(axum::body::Body::new)).await
                    }
                });
            // The whole exchange, a TLS handshake included, within the timeout.
            let exchange = async move {
                let stream = match &tls {
                    None => tokio_util::either::Either::Left(stream),
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => tokio_util::either::Either::Right(stream),
                        Err(error) => {
                            crate::log_summary::HANDSHAKE_FAILURES
                                .note(&format!("admin TLS handshake failed: {error}"));
                            return;
                        }
                    },
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            };
            tokio::select! {
                _ = tokio::time::timeout(timeout, exchange) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
}
