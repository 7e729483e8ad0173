//! The producer's accept loop, shared state, admin routes and shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Json;
use axum::http::StatusCode;
use axum::routing::get;
use shardq_net::admin;
use shardq_net::conn::{self, ConnLimits};
use shardq_net::gate::{Admission, Caps, Gate};
use shardq_net::link::{LinkOptions, Links};
use shardq_net::presence::Presence;
use shardq_net::tls::{NodeTls, ServerTls};
use shardq_net::upgrade;
use shardq_protocol::status::{self, NodeKind, NodeStatus, Readiness};
use shardq_protocol::{ClusterConfig, Credentials, Limits, QueueConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::{EndpointLabel, ProducerMetrics};
use crate::session;

/// Everything a producer needs to run.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// This producer's id (a `[[producers]]` entry).
    pub id: String,
    /// The cluster file.
    pub cluster: ClusterConfig,
    /// The psk, the node key and the declared clients.
    pub credentials: Credentials,
    /// The admin port's bearer token, if any.
    pub admin_token: Option<String>,
    /// TLS: the certificate served (when its url is `wss://`) and the
    /// roots links check `wss://` consumers against.
    pub tls: NodeTls,
    /// New cluster files to follow (reloads); `None` to keep this one.
    pub updates: Option<watch::Receiver<Arc<ClusterConfig>>>,
}

/// State shared by the producer's connections and links.
pub(crate) struct Shared {
    pub id: String,
    /// Replaced when the cluster file's clients change.
    pub credentials: ArcSwap<Credentials>,
    pub queues: ArcSwap<QueueConfig>,
    pub cluster: ArcSwap<ClusterConfig>,
    pub limits: Limits,
    pub links: Links,
    pub metrics: Arc<ProducerMetrics>,
    /// The connection caps.
    pub gate: Arc<Gate>,
    /// The certificate served, if any.
    pub tls: Option<Arc<ServerTls>>,
    /// Who is connected.
    pub presence: Arc<Presence>,
    /// Publisher connections stop reading and finish what is in flight.
    pub draining: CancellationToken,
    pub tasks: TaskTracker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Publish,
    LegacyProduce,
}

impl Endpoint {
    fn parse(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/publish" => Some(Endpoint::Publish),
            "/produce" => Some(Endpoint::LegacyProduce),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Endpoint::Publish => "publish",
            Endpoint::LegacyProduce => "legacy_produce",
        }
    }
}

/// Runs a producer on `listener` (WebSocket) and `admin` (HTTP) until
/// `shutdown` completes. Links to the consumers open at once and keep
/// retrying while a consumer is down. On shutdown it stops accepting, stops
/// reading publishers, answers every publish in flight (ack or error),
/// closes publishers with "going away", then closes the links.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: ProducerConfig,
    shutdown: impl Future<Output = ()>,
) {
    run_with_http(listener, admin, None, config, shutdown).await;
}

/// [`run`], also serving the HTTP API (`POST /v1/topics/{queue}/{event}`)
/// on `http`, over TLS when the producer's url is `wss://`.
pub async fn run_with_http(
    listener: TcpListener,
    admin: Option<TcpListener>,
    http: Option<TcpListener>,
    config: ProducerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let (metrics, mut registry) = ProducerMetrics::new();
    let metrics = Arc::new(metrics);
    let links_stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let link_tasks = TaskTracker::new();
    let options = LinkOptions {
        own_id: None,
        node_key: config.credentials.node_key.clone(),
        tls: config.tls.client.clone(),
        node: config.id.clone(),
        metrics: metrics.links.clone(),
        handler: None,
    };
    let links = Links::start(&config.cluster, options, links_stop.clone(), &link_tasks);
    let shared = Arc::new(Shared {
        links,
        id: config.id,
        credentials: ArcSwap::from_pointee(config.credentials.clone()),
        gate: Gate::new(Caps::from(&config.cluster.limits)),
        tls: config.tls.server.clone(),
        presence: Presence::new(),
        queues: ArcSwap::from_pointee(config.cluster.queues.clone()),
        cluster: ArcSwap::from_pointee(config.cluster.clone()),
        limits: config.cluster.limits.clone(),
        metrics,
        draining: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    if let Some(mut updates) = config.updates {
        let shared = shared.clone();
        let stop = links_stop.clone();
        link_tasks.spawn(async move {
            loop {
                tokio::select! {
                    changed = updates.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
                let cluster = updates.borrow_and_update().clone();
                tracing::info!(hash = %cluster.node_list_hash(), nodes = ?cluster.consumer_ids(), "applying node list");
                shared.queues.store(Arc::new(cluster.queues.clone()));
                let credentials = shared.credentials.load().as_ref().clone();
                shared.credentials.store(Arc::new(credentials.with_clients(&cluster.clients)));
                shared.links.update(&cluster);
                shared.cluster.store(cluster);
                shared.metrics.reloads.inc();
            }
        });
    }
    shared.gate.register(&mut registry);
    if let Some(admin_listener) = admin {
        let status = shared.clone();
        let router = admin::with_status(admin::base_routes(Arc::new(registry)), move || {
            node_status(&status)
        });
        let router = admin::with_clients(router, shared.presence.clone(), shared.id.clone()).route(
            "/readyz",
            get({
                let shared = shared.clone();
                move || async move {
                    let readiness = Readiness::from_links(shared.links.statuses());
                    let status = if readiness.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(readiness))
                }
            }),
        );
        let router = router.route("/v1/openapi.json", get(shardq_net::http_api::openapi));
        let router = shardq_net::dashboard::with_dashboard(router);
        let options = admin::AdminOptions {
            tls: config.tls.admin.clone(),
            ..admin::AdminOptions::new(&shared.limits, config.admin_token.clone())
        };
        let refused = shared.gate.admin_refused.clone();
        link_tasks.spawn(admin::serve(
            admin_listener,
            router,
            options,
            refused,
            admin_stop.clone(),
        ));
    }
    if let Some(http) = http {
        let tls = config.tls.server.clone();
        let routes = crate::http::routes(shared.clone(), tls.is_some());
        // A publish in progress gets its owner's answer, as on WebSocket.
        let drain = shared.limits.publish_timeout() + Duration::from_secs(1);
        let options =
            shardq_net::http_api::ApiOptions::new(tls, shared.gate.clone(), &shared.limits, drain);
        // With the sessions: stopped first, waited for before the links go.
        shared.tasks.spawn(shardq_net::http_api::serve(
            http,
            routes,
            options,
            shared.draining.clone(),
        ));
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(node = %shared.id, %addr, "producer listening");
    }
    tokio::select! {
        () = shutdown => {}
        () = conn::accept_loop(&listener, &shared.tasks, &shared.gate, |stream, admission| serve(shared.clone(), stream, admission)) => {}
    }
    tracing::info!(node = %shared.id, in_flight = shared.links.in_flight(), "producer shutting down");
    drop(listener);
    shared.draining.cancel();
    shared.tasks.close();
    let patience = shared.limits.publish_timeout() + Duration::from_secs(2);
    if tokio::time::timeout(patience, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some publisher connections did not close in time");
    }
    links_stop.cancel();
    admin_stop.cancel();
    link_tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), link_tasks.wait()).await;
}

/// What `GET /v1/status` answers.
fn node_status(shared: &Shared) -> NodeStatus {
    let cluster = shared.cluster.load();
    let links = shared.links.statuses();
    NodeStatus {
        node: shared.id.clone(),
        kind: NodeKind::Producer,
        node_list: cluster.consumer_ids(),
        node_list_hash: cluster.node_list_hash(),
        unavailable_share: Some(status::unavailable_share(&links)),
        links,
        owned_topics: None,
        edge_topics: None,
        stalled_topics: None,
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream, admission: Admission) {
    let deadline = Instant::now() + shared.limits.handshake_timeout();
    let mut limits = ConnLimits::from(&shared.limits);
    limits.write.timeouts = shared.gate.write_timeouts.clone();
    let legacy = shared.cluster.load().legacy;
    // Publishers send in bulk: a large read buffer. The legacy path is
    // not found while the dialect is off.
    let route = |path: &str| {
        Endpoint::parse(path)
            .filter(|endpoint| legacy || *endpoint != Endpoint::LegacyProduce)
            .map(|_| 64 << 10)
    };
    let connection = match Box::pin(upgrade::upgrade(
        stream,
        &limits,
        deadline,
        route,
        &shared.tasks,
        Some(admission),
        shared.tls.as_deref(),
    ))
    .await
    {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let Some(endpoint) = Endpoint::parse(&connection.path) else {
        return;
    };
    let span = tracing::info_span!(
        "conn",
        peer = %connection.peer,
        endpoint = endpoint.label(),
        client = tracing::field::Empty,
    );
    let gauge = shared
        .metrics
        .connections
        .get_or_create_owned(&EndpointLabel {
            endpoint: endpoint.label(),
        });
    gauge.inc();
    match endpoint {
        Endpoint::Publish => {
            Box::pin(session::run(shared.clone(), connection, deadline))
                .instrument(span)
                .await
        }
        Endpoint::LegacyProduce => {
            Box::pin(session::run_legacy(shared.clone(), connection, deadline))
                .instrument(span)
                .await
        }
    }
    gauge.dec();
}
