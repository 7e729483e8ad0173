//! The in-process cluster harness shared by the scenario tests: start real
//! consumers (and producers) on 127.0.0.1 port 0, talk to them over real
//! WebSockets with raw shardq/1 or legacy clients, stop and restart nodes.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod http;
pub mod impostor;
pub mod pki;
pub mod poll;
pub mod proxy;
pub mod raw;
pub mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::auth::{ClientEntry, TokenKeys};
use shardq_protocol::{
    ClientHandshake, ClusterConfig, Credentials, Limits, NodeEntry, Nonce, Psk, QueueConfig,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use http::{http_get, http_request, metric, node_status, wait_metric, wait_ready};
pub use impostor::impostor_link;
pub use poll::{eventually, until};
pub use raw::{LegacyClient, RawClient};

/// Logs to the test's output, filtered by `RUST_LOG` (nothing by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// How long a test waits for anything before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The seeds' queues: `database` {create, read, update, delete, error} and
/// `files` {save, error}.
pub fn seed_queues() -> QueueConfig {
    let mut queues = QueueConfig::new();
    queues
        .declare("database", ["create", "read", "update", "delete", "error"])
        .unwrap()
        .declare("files", ["save", "error"])
        .unwrap();
    queues
}

/// Topics of the seeds' queues, for tests that need one owned by a given
/// consumer ([`Cluster::topic_owned_by`]).
pub const SEED_TOPICS: [&str; 7] = [
    "database/create",
    "database/read",
    "database/update",
    "database/delete",
    "database/error",
    "files/save",
    "files/error",
];

/// Listeners bound when the cluster file was written, by the address its
/// entries name, until the node they are for first starts (held, so that
/// no other test can take the port meanwhile).
#[derive(Default)]
struct HeldListeners(std::sync::Mutex<std::collections::HashMap<String, std::net::TcpListener>>);

impl HeldListeners {
    /// Binds a free port and holds it; its address.
    fn bind(&self) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        self.lock().insert(addr.to_string(), listener);
        addr
    }

    /// The listener for `addr`: the one held since the file was written,
    /// else (a restart) the address bound again.
    fn take(&self, addr: &str) -> TcpListener {
        let listener = self
            .lock()
            .remove(addr)
            .unwrap_or_else(|| std::net::TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        TcpListener::from_std(listener).unwrap()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::net::TcpListener>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A node running in this process.
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its WebSocket address.
    pub addr: SocketAddr,
    /// Whether it serves TLS.
    pub tls: bool,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    updates: watch::Sender<Arc<ClusterConfig>>,
}

impl Node {
    /// Hands the node a new cluster file, as a SIGHUP after editing it would.
    pub fn reload(&self, config: &ClusterConfig) {
        self.updates.send_replace(Arc::new(config.clone()));
    }

    /// `ws://127.0.0.1:port` (`wss://` with TLS) + `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Tells the node to stop (as SIGTERM would) without waiting for it;
    /// `Cluster::stop_*` then waits.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A cluster of in-process nodes.
pub struct Cluster {
    /// The cluster file every node was given.
    pub config: ClusterConfig,
    /// The psk every node was given.
    pub psk: Psk,
    /// The node key every node was given.
    pub node_key: Psk,
    /// The consumers, in config order.
    pub consumers: Vec<Node>,
    /// The producers, in config order.
    pub producers: Vec<Node>,
    /// The admin ports' bearer token, if the builder set one.
    pub admin_token: Option<String>,
    /// The keys client tokens may be signed with.
    pub tokens: TokenKeys,
    /// The certificates, when the nodes serve TLS (`wss://` urls).
    pub pki: Option<pki::TestPki>,
    /// Where consumer `id` keeps its state across graceful restarts
    /// (`<data>/<id>`), when the builder asked for it.
    pub data: Option<std::path::PathBuf>,
    /// The HTTP API ports, held until their nodes start.
    http: HeldListeners,
}

/// A consumer named in a cluster file but not started yet.
pub struct PlannedConsumer {
    id: String,
    addr: SocketAddr,
    admin: SocketAddr,
}

/// How to build a [`Cluster`].
pub struct ClusterBuilder {
    consumers: usize,
    producers: usize,
    queues: QueueConfig,
    limits: Limits,
    data_dirs: bool,
    legacy: bool,
    clients: Vec<ClientEntry>,
    admin_token: Option<String>,
    tokens: TokenKeys,
    tls: bool,
    work: std::collections::BTreeMap<String, shardq_protocol::work::WorkConfig>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            consumers: 1,
            producers: 0,
            queues: seed_queues(),
            limits: Limits::default(),
            data_dirs: false,
            legacy: true,
            clients: Vec::new(),
            admin_token: None,
            tokens: TokenKeys::default(),
            tls: false,
            work: Default::default(),
        }
    }
}

impl ClusterBuilder {
    /// How many consumers.
    pub fn consumers(mut self, n: usize) -> Self {
        self.consumers = n;
        self
    }

    /// How many producers.
    pub fn producers(mut self, n: usize) -> Self {
        self.producers = n;
        self
    }

    /// The queue configuration.
    pub fn queues(mut self, queues: QueueConfig) -> Self {
        self.queues = queues;
        self
    }

    /// Changes the limits.
    pub fn limits(mut self, change: impl FnOnce(&mut Limits)) -> Self {
        change(&mut self.limits);
        self
    }

    /// A `[work.<queue>]` section (queue groups).
    pub fn work(mut self, queue: &str, work: shardq_protocol::work::WorkConfig) -> Self {
        self.work.insert(queue.to_owned(), work);
        self
    }

    /// Serves the legacy dialect or not (default: on, as `local` writes).
    pub fn legacy(mut self, on: bool) -> Self {
        self.legacy = on;
        self
    }

    /// Declares `[[clients]]`.
    pub fn clients(mut self, clients: Vec<ClientEntry>) -> Self {
        self.clients = clients;
        self
    }

    /// Every node serves TLS (`wss://` urls) with a certificate of a CA
    /// made for the test ([`Cluster::pki`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Accepts client tokens signed with these keys.
    pub fn tokens(mut self, keys: TokenKeys) -> Self {
        self.tokens = keys;
        self
    }

    /// Puts the admin ports behind this bearer token.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_owned());
        self
    }

    /// Gives every consumer a data directory (a fresh temporary one), so
    /// graceful restarts keep their topics' state.
    pub fn data_dirs(mut self) -> Self {
        self.data_dirs = true;
        self
    }

    /// Binds every node on port 0, writes the cluster file with the real
    /// ports, and starts them.
    pub async fn start(self) -> Cluster {
        let scheme = if self.tls { "wss" } else { "ws" };
        let pki = self.tls.then(pki::TestPki::new);
        let mut listeners = Vec::new();
        let mut entries = Vec::new();
        let held = HeldListeners::default();
        let http_scheme = if self.tls { "https" } else { "http" };
        for i in 0..self.consumers {
            let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = held.bind();
            entries.push(NodeEntry {
                id: format!("consumer-{i}"),
                url: format!("{scheme}://{}", ws.local_addr().unwrap()),
                admin: Some(format!("http://{}", admin.local_addr().unwrap())),
                listen: None,
                http: Some(format!("{http_scheme}://{http}")),
            });
            listeners.push((ws, admin));
        }
        let mut producer_listeners = Vec::new();
        let mut producer_entries = Vec::new();
        for i in 0..self.producers {
            let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = held.bind();
            producer_entries.push(NodeEntry {
                id: format!("producer-{i}"),
                url: format!("{scheme}://{}", ws.local_addr().unwrap()),
                admin: Some(format!("http://{}", admin.local_addr().unwrap())),
                listen: None,
                http: Some(format!("{http_scheme}://{http}")),
            });
            producer_listeners.push((ws, admin));
        }
        let config = ClusterConfig {
            legacy: self.legacy,
            clients: self.clients,
            work: self.work,
            ..ClusterConfig::new(entries, producer_entries, self.queues, self.limits)
        };
        // The file must survive its own round trip, as nodes would read it.
        let config = ClusterConfig::parse(&config.to_toml()).unwrap();
        let psk = Psk::generate();
        let node_key = Psk::generate();
        let data = self.data_dirs.then(|| {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("shardq-data-{}-{n}", std::process::id()))
        });
        let mut cluster = Cluster {
            config,
            psk,
            node_key,
            admin_token: self.admin_token,
            tokens: self.tokens,
            pki,
            consumers: Vec::new(),
            producers: Vec::new(),
            data,
            http: held,
        };
        for (i, (ws, admin)) in listeners.into_iter().enumerate() {
            let node = cluster.spawn_consumer(i, ws, admin);
            cluster.consumers.push(node);
        }
        for (i, (ws, admin)) in producer_listeners.into_iter().enumerate() {
            let node = cluster.spawn_producer(i, ws, admin);
            cluster.producers.push(node);
        }
        for i in 0..cluster.producers.len() {
            cluster.wait_links(i, cluster.consumers.len()).await;
        }
        cluster
    }
}

impl Cluster {
    /// A builder with one consumer and the seeds' queues.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    fn spawn_consumer(&self, index: usize, ws: TcpListener, admin: TcpListener) -> Node {
        let id = self.config.consumers[index].id.clone();
        self.spawn_consumer_with(id, &self.config.clone(), ws, admin)
    }

    fn spawn_consumer_with(
        &self,
        id: String,
        cluster: &ClusterConfig,
        ws: TcpListener,
        admin: TcpListener,
    ) -> Node {
        let data_dir = self.data.as_ref().map(|data| data.join(&id));
        let config = |updates| shardq_consumer::ConsumerConfig {
            id: id.clone(),
            cluster: cluster.clone(),
            credentials: self.credentials(cluster),
            admin_token: self.admin_token.clone(),
            tls: self.node_tls(),
            updates: Some(updates),
            data_dir: data_dir.clone(),
        };
        let http = cluster
            .consumer(&id)
            .and_then(|entry| entry.http.as_deref())
            .and_then(shardq_protocol::config::host_port)
            .map(|addr| self.http.take(&addr));
        spawn_node(
            id.clone(),
            cluster,
            ws,
            admin,
            |ws, admin, updates, stop| {
                shardq_consumer::run_with_http(ws, Some(admin), http, config(updates), stop)
            },
        )
    }

    /// Starts one more consumer, named after the count, already running
    /// with the grown cluster file; the other nodes still have the old one
    /// (call [`Cluster::reload`]). Returns the grown file.
    pub async fn add_consumer(&mut self) -> ClusterConfig {
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id = format!("consumer-{}", self.consumers.len());
        let grown = self.grown(&id, ws.local_addr().unwrap(), admin.local_addr().unwrap());
        let node = self.spawn_consumer_with(id, &grown, ws, admin);
        self.consumers.push(node);
        grown
    }

    /// Plans one more consumer without starting it: the grown cluster file
    /// names it at a free port that nothing listens on yet. Start it with
    /// [`Cluster::start_planned`].
    pub async fn plan_consumer(&mut self) -> (ClusterConfig, PlannedConsumer) {
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let planned = PlannedConsumer {
            id: format!("consumer-{}", self.consumers.len()),
            addr: ws.local_addr().unwrap(),
            admin: admin.local_addr().unwrap(),
        };
        let grown = self.grown(&planned.id, planned.addr, planned.admin);
        (grown, planned)
    }

    /// The cluster file with one more consumer at these addresses.
    fn grown(&self, id: &str, addr: SocketAddr, admin: SocketAddr) -> ClusterConfig {
        let mut grown = self.config.clone();
        grown.consumers.push(NodeEntry {
            id: id.to_owned(),
            url: format!("{}://{addr}", self.scheme()),
            admin: Some(format!("http://{admin}")),
            listen: None,
            http: None,
        });
        grown
    }

    /// Starts a consumer planned with [`Cluster::plan_consumer`], with the
    /// cluster file `cluster`.
    pub async fn start_planned(&mut self, planned: PlannedConsumer, cluster: &ClusterConfig) {
        let ws = bind_again(planned.addr).await;
        let admin = bind_again(planned.admin).await;
        let node = self.spawn_consumer_with(planned.id, cluster, ws, admin);
        self.consumers.push(node);
    }

    /// Hands every node (consumers first, then producers) a new cluster
    /// file, as an operator editing it and sending SIGHUP would.
    pub fn reload(&mut self, config: ClusterConfig) {
        for node in self.consumers.iter().chain(&self.producers) {
            node.reload(&config);
        }
        self.config = config;
    }

    fn spawn_producer(&self, index: usize, ws: TcpListener, admin: TcpListener) -> Node {
        let id = self.config.producers[index].id.clone();
        let config = |updates| shardq_producer::ProducerConfig {
            id: id.clone(),
            cluster: self.config.clone(),
            credentials: self.credentials(&self.config),
            admin_token: self.admin_token.clone(),
            tls: self.node_tls(),
            updates: Some(updates),
        };
        let http = self.config.producers[index]
            .http
            .as_deref()
            .and_then(shardq_protocol::config::host_port)
            .map(|addr| self.http.take(&addr));
        spawn_node(
            id.clone(),
            &self.config,
            ws,
            admin,
            |ws, admin, updates, stop| {
                shardq_producer::run_with_http(ws, Some(admin), http, config(updates), stop)
            },
        )
    }

    /// Waits until producer `index` has `up` consumer links up (per its `/readyz`).
    pub async fn wait_links(&self, index: usize, up: usize) {
        wait_ready(self.producers[index].admin, |readiness| {
            readiness.links.len() - readiness.links_down.len() == up
        })
        .await;
    }

    /// A shardq/1 client on producer `index`'s `/v1/publish`.
    pub async fn publisher(&self, index: usize) -> RawClient {
        self.psk_client(&self.producers[index].url("/v1/publish"))
            .await
    }

    /// A shardq/1 client proving the psk at `url` (over TLS when the
    /// cluster serves it).
    pub async fn psk_client(&self, url: &str) -> RawClient {
        let handshake =
            ClientHandshake::new(self.psk.clone(), Nonce::random(), Some("test".into()));
        RawClient::connect_tls(url, handshake, self.client_tls().as_ref())
            .await
            .unwrap()
    }

    /// The rustls configuration trusting the test CA, when there is one.
    pub fn client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.pki.as_ref().map(pki::TestPki::client)
    }

    /// Stops producer `index` and waits until it has shut down.
    pub async fn stop_producer(&mut self, index: usize) {
        stop_node(&mut self.producers[index]).await;
    }

    /// Stops consumer `index` and waits until it has shut down.
    pub async fn stop_consumer(&mut self, index: usize) {
        stop_node(&mut self.consumers[index]).await;
    }

    /// Starts producer `index` again on its old ports, with the cluster
    /// file as `config` is now (a test may have changed it meanwhile).
    pub async fn restart_producer(&mut self, index: usize) {
        let (addr, admin) = (self.producers[index].addr, self.producers[index].admin);
        let ws = bind_again(addr).await;
        let admin = bind_again(admin).await;
        self.producers[index] = self.spawn_producer(index, ws, admin);
    }

    /// Starts consumer `index` again on its old ports.
    pub async fn restart_consumer(&mut self, index: usize) {
        let (addr, admin) = (self.consumers[index].addr, self.consumers[index].admin);
        let ws = bind_again(addr).await;
        let admin = bind_again(admin).await;
        self.consumers[index] = self.spawn_consumer(index, ws, admin);
    }

    /// A shardq/1 client on consumer `index`'s `/v1/subscribe`.
    pub async fn subscriber(&self, index: usize) -> RawClient {
        self.psk_client(&self.consumers[index].url("/v1/subscribe"))
            .await
    }

    /// A shardq/1 client on consumer `index`'s `/v1/cluster`, proving the
    /// node key as `producer-test`.
    pub async fn cluster_client(&self, index: usize) -> RawClient {
        let consumer = &self.consumers[index];
        let handshake = ClientHandshake::node(
            self.node_key.clone(),
            Nonce::random(),
            "producer-test",
            consumer.id.clone(),
        );
        RawClient::connect_tls(
            &consumer.url("/v1/cluster"),
            handshake,
            self.client_tls().as_ref(),
        )
        .await
        .unwrap()
    }

    /// `wss` when the nodes serve TLS, else `ws`.
    pub fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "wss" } else { "ws" }
    }

    /// What a node runs with for TLS: the test PKI's, when the builder
    /// asked for TLS.
    fn node_tls(&self) -> shardq_net::tls::NodeTls {
        self.pki
            .as_ref()
            .map(|pki| pki.node_tls())
            .unwrap_or_default()
    }

    /// The credentials the nodes check, for the cluster file `config`.
    pub fn credentials(&self, config: &ClusterConfig) -> Credentials {
        Credentials::new(self.psk.clone(), self.node_key.clone())
            .with_clients(&config.clients)
            .with_tokens(self.tokens.clone())
    }

    /// A seed topic consumer `index` owns; panics if it owns none.
    pub fn topic_owned_by(&self, index: usize) -> &'static str {
        SEED_TOPICS
            .into_iter()
            .find(|topic| self.owner(topic) == index)
            .unwrap_or_else(|| panic!("consumer {index} owns no seed topic"))
    }

    /// Stops every node, producers first (and removes the data directories).
    pub async fn shutdown(mut self) {
        for index in 0..self.producers.len() {
            self.stop_producer(index).await;
        }
        for index in 0..self.consumers.len() {
            self.stop_consumer(index).await;
        }
        if let Some(data) = &self.data {
            let _ = std::fs::remove_dir_all(data);
        }
    }

    /// The index of the consumer that owns `topic`.
    pub fn owner(&self, topic: &str) -> usize {
        let topic = shardq_protocol::Topic::parse(topic).unwrap();
        shardq_protocol::Router::new(&self.config.consumer_ids())
            .owner(&topic)
            .unwrap()
    }
}

async fn stop_node(node: &mut Node) {
    node.begin_stop();
    if let Some(task) = node.task.take() {
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    }
}

/// Starts a node task with `start(ws, admin, updates, stop)`; the node
/// follows `cluster` until [`Node::reload`] hands it another.
fn spawn_node<F, Fut>(
    id: String,
    cluster: &ClusterConfig,
    ws: TcpListener,
    admin: TcpListener,
    start: F,
) -> Node
where
    F: FnOnce(
        TcpListener,
        TcpListener,
        watch::Receiver<Arc<ClusterConfig>>,
        std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (addr, admin_addr) = (ws.local_addr().unwrap(), admin.local_addr().unwrap());
    let tls = cluster
        .consumers
        .iter()
        .chain(&cluster.producers)
        .any(|entry| entry.id == id && entry.url.starts_with("wss://"));
    let (stop, stopped) = oneshot::channel::<()>();
    let (updates, watching) = watch::channel(Arc::new(cluster.clone()));
    let task = tokio::spawn(start(
        ws,
        admin,
        watching,
        Box::pin(async move {
            let _ = stopped.await;
        }),
    ));
    Node {
        id,
        addr,
        tls,
        admin: admin_addr,
        stop: Some(stop),
        task: Some(task),
        updates,
    }
}

/// Binds an address that was just released (retrying while the OS frees it).
async fn bind_again(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot bind {addr} again: {error}"),
        }
    }
}
