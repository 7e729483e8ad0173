//! The consumer's accept loop, its shared state, and the dispatch of each
//! connection to its endpoint.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use shardq_net::admin;
use shardq_net::conn::{self, ConnLimits, Connection};
use shardq_net::gate::{Admission, Caps, Gate};
use shardq_net::link::{LinkMetrics, LinkOptions, Links};
use shardq_net::presence::Presence;
use shardq_net::tls::{NodeTls, ServerTls};
use shardq_net::upgrade::{self, UpgradeError};
use shardq_protocol::status::{NodeKind, NodeStatus};
use shardq_protocol::{ClusterConfig, Credentials, Limits, QueueConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::{ConsumerMetrics, EndpointLabel};
use crate::snapshot;
use crate::topics::{PeerHandler, TableLimits, TopicTable, View};
use crate::{legacy_session, session};

/// How long shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often idempotency keys past their window are looked for.
const KEY_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often queue groups' ack timeouts are checked.
const GROUP_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Everything a consumer needs to run.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// This consumer's id (a `[[consumers]]` entry).
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
    /// Where the owned topics' state is kept across a graceful restart
    /// (`None`: nothing is kept; a restart starts new epochs).
    pub data_dir: Option<PathBuf>,
}

/// The endpoints a consumer serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/subscribe`: clients.
    Subscribe,
    /// `/v1/cluster`: producers and peer consumers.
    Cluster,
    /// `/producer`: origin producers.
    LegacyProducer,
    /// `/subscribe/{topic}`: origin subscribers (the raw, still
    /// percent-encoded topic).
    LegacySubscribe(String),
}

impl Endpoint {
    pub(crate) fn parse(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/subscribe" => Some(Endpoint::Subscribe),
            "/v1/cluster" => Some(Endpoint::Cluster),
            "/producer" => Some(Endpoint::LegacyProducer),
            _ => path
                .strip_prefix("/subscribe/")
                .filter(|topic| !topic.is_empty())
                .map(|topic| Endpoint::LegacySubscribe(topic.to_owned())),
        }
    }

    /// Read buffer for the endpoint's connections: publishing links read
    /// bulk; subscribers send little and are many.
    pub(crate) fn read_buffer(&self) -> usize {
        match self {
            Endpoint::Cluster | Endpoint::LegacyProducer => 64 << 10,
            Endpoint::Subscribe | Endpoint::LegacySubscribe(_) => 1 << 10,
        }
    }

    /// Whether the endpoint speaks the legacy dialect.
    pub(crate) fn is_legacy(&self) -> bool {
        matches!(
            self,
            Endpoint::LegacyProducer | Endpoint::LegacySubscribe(_)
        )
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Endpoint::Subscribe => "subscribe",
            Endpoint::Cluster => "cluster",
            Endpoint::LegacyProducer => "legacy_producer",
            Endpoint::LegacySubscribe(_) => "legacy_subscribe",
        }
    }
}

/// State shared by every connection of one consumer.
pub(crate) struct Shared {
    pub id: String,
    /// Replaced when the cluster file's clients change.
    pub credentials: ArcSwap<Credentials>,
    /// The connection caps.
    pub gate: Arc<Gate>,
    /// The certificate served, if any.
    pub tls: Option<Arc<ServerTls>>,
    /// Who is connected.
    pub presence: Arc<Presence>,
    pub queues: ArcSwap<QueueConfig>,
    pub limits: Limits,
    pub topics: Arc<TopicTable>,
    /// Links to the other consumers (forwarding and upstream subscriptions).
    pub peers: Arc<Links>,
    pub cluster: ArcSwap<ClusterConfig>,
    pub metrics: Arc<ConsumerMetrics>,
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
    next_conn: AtomicU64,
}

impl Shared {
    /// Counts a client subscription to `topic` (`delta` +1 or -1) in
    /// `topic_subscribers`, under a bounded label.
    pub(crate) fn count_subscriber(&self, topic: &shardq_protocol::Topic, delta: i64) {
        let queues = self.queues.load();
        let declared = queues.queues().any(|(queue, mut events)| {
            queue == topic.queue() && events.any(|e| e == topic.event())
        });
        let tenant = topic
            .tenant()
            .unwrap_or(shardq_protocol::auth::DEFAULT_TENANT);
        let known = tenant == shardq_protocol::auth::DEFAULT_TENANT
            || self
                .credentials
                .load()
                .clients
                .values()
                .any(|client| &*client.identity.tenant == tenant);
        let label = crate::metrics::TopicLabel {
            tenant: if known {
                tenant.to_owned()
            } else {
                "(other)".to_owned()
            },
            topic: if declared {
                topic.name().to_owned()
            } else {
                "(undeclared)".to_owned()
            },
        };
        self.metrics
            .topic_subscribers
            .get_or_create(&label)
            .inc_by(delta);
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Follows a new cluster file: queues, peer links, topic ownership.
    fn reload(&self, cluster: Arc<ClusterConfig>, generation: u64) {
        if cluster.consumer(&self.id).is_none() {
            tracing::warn!(node = %self.id, "this consumer is not in the new node list: it owns nothing and serves as an edge");
        }
        self.queues.store(Arc::new(cluster.queues.clone()));
        let credentials = self.credentials.load().as_ref().clone();
        self.credentials
            .store(Arc::new(credentials.with_clients(&cluster.clients)));
        self.peers.update(&cluster);
        self.topics
            .apply_view(view_of(&self.id, &cluster, generation));
        self.cluster.store(cluster);
        self.metrics.reloads.inc();
    }
}

/// What `GET /v1/topics` answers: every topic the node holds.
fn topics_report(shared: &Shared) -> shardq_protocol::status::TopicsReport {
    use shardq_protocol::status::{TopicInfo, TopicRole};
    let topics = shared
        .topics
        .listing()
        .into_iter()
        .map(|summary| TopicInfo {
            edges: summary.edges as u64,
            epoch: summary.last.epoch,
            offset: summary.last.offset,
            role: if summary.owned {
                TopicRole::Owner
            } else {
                TopicRole::Edge
            },
            subscribers: summary.subscribers as u64,
            tenant: summary
                .topic
                .tenant()
                .unwrap_or(shardq_protocol::auth::DEFAULT_TENANT)
                .to_owned(),
            topic: summary.topic.name().to_owned(),
        })
        .collect();
    shardq_protocol::status::TopicsReport {
        node: shared.id.clone(),
        topics,
    }
}

/// A node's view of a cluster file.
pub(crate) fn view_of(id: &str, cluster: &ClusterConfig, generation: u64) -> View {
    let ids = cluster.consumer_ids();
    View {
        own_id: id.to_owned(),
        router: shardq_protocol::Router::new(&ids),
        ids,
        hash: cluster.node_list_hash(),
        generation,
    }
}

/// Runs a consumer on `listener` (WebSocket) and `admin` (HTTP) until
/// `shutdown` completes; then closes every connection with "going away" and
/// returns within [`SHUTDOWN_GRACE`]. New cluster files arriving on
/// `config.updates` are applied as they come.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: ConsumerConfig,
    shutdown: impl Future<Output = ()>,
) {
    run_with_http(listener, admin, None, config, shutdown).await;
}

/// [`run`], also serving the HTTP API (Server-Sent Events, the OpenAPI
/// document) on `http`, over TLS when the consumer's url is `wss://`.
pub async fn run_with_http(
    listener: TcpListener,
    admin: Option<TcpListener>,
    http: Option<TcpListener>,
    config: ConsumerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let (metrics, mut registry) = ConsumerMetrics::new();
    let peer_metrics = Arc::new(LinkMetrics::default());
    peer_metrics.register(registry.sub_registry_with_prefix("peer"));
    let metrics = Arc::new(metrics);
    let limits = config.cluster.limits.clone();
    let tasks = TaskTracker::new();
    let link_tasks = TaskTracker::new();
    let links_stop = CancellationToken::new();
    let topics = Arc::new(TopicTable::new(
        TableLimits {
            history_per_topic: limits.history_messages_per_topic,
            history_bytes: limits.history_bytes_per_node,
            key_window: limits.idempotency_window(),
            keys_per_node: limits.idempotency_keys_per_node,
        },
        metrics.clone(),
        view_of(&config.id, &config.cluster, 1),
        link_tasks.clone(),
    ));
    topics.set_self();
    if let Some(dir) = &config.data_dir {
        restore(&topics, dir);
    }
    let peers = Arc::new(Links::start(
        &config.cluster,
        LinkOptions {
            own_id: Some(config.id.clone()),
            node_key: config.credentials.node_key.clone(),
            tls: config.tls.client.clone(),
            node: config.id.clone(),
            metrics: peer_metrics,
            handler: Some(Arc::new(PeerHandler::new(&topics))),
        },
        links_stop.clone(),
        &link_tasks,
    ));
    topics.set_peers(peers.clone());
    let shared = Arc::new(Shared {
        topics,
        peers,
        id: config.id,
        credentials: ArcSwap::from_pointee(config.credentials.clone()),
        gate: Gate::new(Caps::from(&config.cluster.limits)),
        tls: config.tls.server.clone(),
        presence: Presence::new(),
        queues: ArcSwap::from_pointee(config.cluster.queues.clone()),
        cluster: ArcSwap::from_pointee(config.cluster.clone()),
        limits,
        metrics,
        stop: CancellationToken::new(),
        tasks,
        next_conn: AtomicU64::new(1),
    });
    {
        // Idempotency keys past their window are forgotten even when no
        // new keyed publish arrives; the stalled-topics gauge is refreshed.
        let topics = shared.topics.clone();
        let metrics = shared.metrics.clone();
        let stop = links_stop.clone();
        link_tasks.spawn(async move {
            let mut tick = tokio::time::interval(KEY_SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        topics.forget_keys(Instant::now());
                        metrics.stalled_topics.set(topics.counts().stalled as i64);
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    {
        // Queue groups' ack timeouts, to within a tenth of a second.
        let topics = shared.topics.clone();
        let stop = links_stop.clone();
        link_tasks.spawn(async move {
            let mut tick = tokio::time::interval(GROUP_SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => topics.expire_groups(std::time::Instant::now()),
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    if let Some(mut updates) = config.updates {
        let shared = shared.clone();
        let stop = links_stop.clone();
        link_tasks.spawn(async move {
            let mut generation = 1;
            loop {
                tokio::select! {
                    changed = updates.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
                generation += 1;
                let cluster = updates.borrow_and_update().clone();
                shared.reload(cluster, generation);
            }
        });
    }
    let admin_stop = CancellationToken::new();
    shared.gate.register(&mut registry);
    if let Some(admin) = admin {
        let status = shared.clone();
        let router = admin::with_status(admin::base_routes(Arc::new(registry)), move || {
            node_status(&status)
        });
        let router = admin::with_clients(router, shared.presence.clone(), shared.id.clone());
        let topics = shared.clone();
        let router = router
            .route(
                "/v1/topics",
                axum::routing::get(move || {
                    let report = topics_report(&topics);
                    async move { axum::Json(report) }
                }),
            )
            .route(
                "/v1/openapi.json",
                axum::routing::get(shardq_net::http_api::openapi),
            );
        let router = shardq_net::dashboard::with_dashboard(router);
        let options = admin::AdminOptions {
            tls: config.tls.admin.clone(),
            ..admin::AdminOptions::new(&shared.limits, config.admin_token.clone())
        };
        let refused = shared.gate.admin_refused.clone();
        link_tasks.spawn(admin::serve(
            admin,
            router,
            options,
            refused,
            admin_stop.clone(),
        ));
    }
    if let Some(http) = http {
        let tls = config.tls.server.clone();
        let routes = crate::http::routes(shared.clone(), tls.is_some());
        // Event streams end on the node's stop by themselves.
        let drain = Duration::from_secs(2);
        let options =
            shardq_net::http_api::ApiOptions::new(tls, shared.gate.clone(), &shared.limits, drain);
        link_tasks.spawn(shardq_net::http_api::serve(
            http,
            routes,
            options,
            admin_stop.clone(),
        ));
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(node = %shared.id, %addr, "consumer listening");
    }
    tokio::select! {
        () = shutdown => {}
        () = conn::accept_loop(&listener, &shared.tasks, &shared.gate, |stream, admission| serve(shared.clone(), stream, admission)) => {}
    }
    tracing::info!(node = %shared.id, "consumer shutting down");
    drop(listener);
    shared.stop.cancel();
    shared.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within the grace period");
    }
    if let Some(dir) = &config.data_dir {
        save(&shared, dir);
    }
    links_stop.cancel();
    admin_stop.cancel();
    link_tasks.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, link_tasks.wait()).await;
}

/// Reads back the state a graceful stop left in `dir` (and removes it: it
/// is used once). Without one, or if it cannot be read, topics start new
/// epochs, and resumes say so (`recovered: false`).
fn restore(topics: &TopicTable, dir: &Path) {
    match snapshot::take(dir) {
        Ok(Some(snapshot)) => {
            let node = snapshot.node.clone();
            let imported = topics.import(snapshot);
            tracing::info!(
                dir = %dir.display(),
                written_by = %node,
                topics = imported.topics,
                messages = imported.messages,
                skipped = imported.skipped,
                "restored the owned topics' state"
            );
        }
        Ok(None) => {
            tracing::info!(dir = %dir.display(), "no saved state: the owned topics start new epochs");
        }
        Err(error) => {
            tracing::error!(%error, "cannot restore the saved state: the owned topics start new epochs");
        }
    }
}

/// Writes the owned topics' state to `dir` (after every connection closed).
fn save(shared: &Shared, dir: &Path) {
    let snapshot = shared.topics.export(&shared.id);
    let topics = snapshot.topics.len();
    match snapshot::write(dir, &snapshot) {
        Ok(path) => tracing::info!(path = %path.display(), topics, "saved the owned topics' state"),
        Err(error) => {
            tracing::error!(%error, "cannot save the owned topics' state: after the restart they start new epochs")
        }
    }
}

/// What `GET /v1/status` answers.
fn node_status(shared: &Shared) -> NodeStatus {
    let cluster = shared.cluster.load();
    let counts = shared.topics.counts();
    NodeStatus {
        node: shared.id.clone(),
        kind: NodeKind::Consumer,
        node_list: cluster.consumer_ids(),
        node_list_hash: cluster.node_list_hash(),
        links: shared.peers.statuses(),
        owned_topics: Some(counts.owned as u64),
        edge_topics: Some(counts.edges as u64),
        stalled_topics: Some(counts.stalled as u64),
        unavailable_share: None,
    }
}

/// The WebSocket upgrade of an accepted socket, the connection boxed for
/// the session to take apart (a future keeps its arguments whole, so an
/// unboxed one would stay in every idle connection's state twice).
async fn upgrade_boxed(
    shared: &Shared,
    stream: TcpStream,
    admission: Admission,
    deadline: Instant,
) -> Result<Box<Connection>, UpgradeError> {
    let mut limits = ConnLimits::from(&shared.limits);
    limits.write.timeouts = shared.gate.write_timeouts.clone();
    let legacy = shared.cluster.load().legacy;
    upgrade::upgrade(
        stream,
        &limits,
        deadline,
        |path| {
            // The legacy paths are not found while the dialect is off.
            Endpoint::parse(path)
                .filter(|endpoint| legacy || !endpoint.is_legacy())
                .map(|endpoint| endpoint.read_buffer())
        },
        &shared.tasks,
        Some(admission),
        shared.tls.as_deref(),
    )
    .await
    .map(Box::new)
}

async fn serve(shared: Arc<Shared>, stream: TcpStream, admission: Admission) {
    let deadline = Instant::now() + shared.limits.handshake_timeout();
    // Boxed: the upgrade's state is large and only needed for a moment, so
    // it must not stay part of every connection's long-lived future.
    let upgraded = Box::pin(upgrade_boxed(&shared, stream, admission, deadline)).await;
    let connection = match upgraded {
        Ok(connection) => connection,
        Err(UpgradeError::Refused(error)) => {
            tracing::debug!(%error, "upgrade refused");
            return;
        }
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let Some(endpoint) = Endpoint::parse(&connection.path) else {
        return;
    };
    let id = shared.next_conn_id();
    let span = tracing::info_span!(
        "conn",
        id,
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
    // Each dialect's future is boxed, so a connection holds only its own
    // dialect's state, not the largest of the two.
    match endpoint {
        Endpoint::Subscribe | Endpoint::Cluster => {
            Box::pin(session::run(
                shared.clone(),
                id,
                connection,
                endpoint,
                deadline,
            ))
            .instrument(span)
            .await
        }
        Endpoint::LegacyProducer | Endpoint::LegacySubscribe(_) => {
            Box::pin(legacy_session::run(
                shared.clone(),
                id,
                connection,
                endpoint,
                deadline,
            ))
            .instrument(span)
            .await
        }
    }
    gauge.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("/v1/subscribe"), Some(Endpoint::Subscribe));
        assert_eq!(Endpoint::parse("/v1/cluster"), Some(Endpoint::Cluster));
        assert_eq!(Endpoint::parse("/producer"), Some(Endpoint::LegacyProducer));
        assert_eq!(
            Endpoint::parse("/subscribe/database%2Fcreate"),
            Some(Endpoint::LegacySubscribe("database%2Fcreate".into()))
        );
        assert_eq!(Endpoint::parse("/subscribe/"), None);
        assert_eq!(Endpoint::parse("/v1/publish"), None);
        assert_eq!(Endpoint::parse("/"), None);
    }
}
