//! The admin HTTP port (axum): `/healthz`, `/metrics` and `/v1/status`
//! (with its old name `/v1/cluster` kept as an alias for one release), plus
//! whatever routes a node adds.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use shardq_protocol::status::NodeStatus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "admin server failed");
    }
}
