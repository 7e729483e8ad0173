//! The browser side of shardq, served over HTTP: the dependency-free
//! client `clients/js/shardq.js` (with its transport, `connection.js`) and
//! the app dashboard of `examples/dashboard/` (a live counter of one topic,
//! its last records, the connection's state, a test-publish button),
//! embedded in the binary, and `/config.json`, which tells the page where
//! the cluster is and carries a token minted for it at each request.
//!
//! `shardq-demo dashboard` serves it for a cluster file;
//! `tests/tests/browser.rs` serves it for an in-process cluster and drives
//! it in a real browser.
//!
//! Whoever reaches the page gets a token with the permissions it is minted
//! with: serve it on 127.0.0.1 (the default of `shardq-demo dashboard`) or
//! behind an authenticating proxy.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use shardq_protocol::ClusterConfig;

/// `clients/js/shardq.js`, the client the page imports as `/shardq.js`.
pub const SHARDQ_JS: &str = include_str!("../../../clients/js/shardq.js");
/// `clients/js/connection.js`, its transport, which it imports as
/// `./connection.js`.
pub const CONNECTION_JS: &str = include_str!("../../../clients/js/connection.js");
/// `examples/dashboard/index.html`, served as `/`.
pub const INDEX_HTML: &str = include_str!("../../../examples/dashboard/index.html");
/// `examples/dashboard/app.js`, served as `/app.js`.
pub const APP_JS: &str = include_str!("../../../examples/dashboard/app.js");

/// Where the page finds the cluster, and the topic it shows: `/config.json`
/// without its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageConfig {
    /// Consumer endpoints (`ws://…/v1/subscribe`), tried in order.
    pub consumers: Vec<String>,
    /// Producer endpoints (`ws://…/v1/publish`); empty: no publish button.
    pub producers: Vec<String>,
    /// The producers' HTTP API base URLs (may be empty); shown as an example.
    pub http: Vec<String>,
    /// The queue of the topic shown.
    pub queue: String,
    /// The event of the topic shown.
    pub event: String,
}

impl PageConfig {
    /// Every consumer and producer of a cluster file, for `queue/event`.
    pub fn from_cluster(cluster: &ClusterConfig, queue: &str, event: &str) -> PageConfig {
        PageConfig {
            consumers: cluster
                .consumers
                .iter()
                .map(|entry| entry.endpoint("/v1/subscribe"))
                .collect(),
            producers: cluster
                .producers
                .iter()
                .map(|entry| entry.endpoint("/v1/publish"))
                .collect(),
            http: cluster
                .producers
                .iter()
                .filter_map(|entry| entry.http.clone())
                .collect(),
            queue: queue.to_owned(),
            event: event.to_owned(),
        }
    }
}

/// Mints the page's token at each `/config.json` request (the page asks
/// again at every reconnection, so tokens may be short-lived), or says why
/// it cannot.
pub type TokenSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// `/config.json`: the page's configuration and a fresh token.
#[derive(Serialize)]
struct ConfigJson<'a> {
    #[serde(flatten)]
    page: &'a PageConfig,
    token: String,
}

type Shared = Arc<(PageConfig, TokenSource)>;

/// The routes: `/` (and `/index.html`), `/app.js`, `/shardq.js`,
/// `/connection.js`, `/config.json`; anything else is 404.
pub fn router(page: PageConfig, token: TokenSource) -> Router {
    let index = || async { asset(INDEX_HTML, "text/html; charset=utf-8") };
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/shardq.js",
            get(|| async { asset(SHARDQ_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/connection.js",
            get(|| async { asset(CONNECTION_JS, "text/javascript; charset=utf-8") }),
        )
        .route("/config.json", get(config_json))
        .with_state(Arc::new((page, token)))
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// An embedded file, with its type; never sniffed.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page's configuration with a token minted now; not cached (it holds
/// the token). A token that cannot be minted is a 500 saying why.
async fn config_json(State(shared): State<Shared>) -> Response {
    let (page, mint) = &*shared;
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    match mint() {
        Ok(token) => (headers, axum::Json(ConfigJson { page, token })).into_response(),
        Err(message) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            headers,
            axum::Json(
                serde_json::json!({ "error": format!("cannot mint the page's token: {message}") }),
            ),
        )
            .into_response(),
    }
}
