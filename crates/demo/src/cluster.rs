//! The cluster a command works on: a cluster file and its psk, or an
//! embedded cluster started in this process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shardq_protocol::auth::TokenKeys;
use shardq_protocol::config::TokensConfig;
use shardq_protocol::{ClusterConfig, Credentials, Limits, NodeEntry, Psk, QueueConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `--config FILE` (or `SHARDQ_CONFIG`): the cluster file; the psk comes
/// from `SHARDQ_PSK` or the file's `psk_file`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The cluster file (TOML) the nodes run with.
    #[arg(long, env = "SHARDQ_CONFIG")]
    pub config: PathBuf,
}

impl ClusterArgs {
    /// The cluster file and the psk, or one line saying what is wrong.
    pub fn load(&self) -> Result<(ClusterConfig, Psk), String> {
        shardq::cluster_file::load(&self.config).map_err(|e| e.to_string())
    }

    /// The CA `wss://` nodes are checked against (`[tls] ca_file`), if any.
    pub fn tls(&self, config: &ClusterConfig) -> Result<Option<shardq::Tls>, String> {
        shardq::cluster_file::load_tls(config, &self.config).map_err(|e| e.to_string())
    }

    /// A subscriber connected to the cluster the file names (its psk and
    /// TLS).
    pub async fn subscriber(&self) -> Result<shardq::Subscriber, String> {
        let (cluster, psk) = self.load()?;
        let tls = self.tls(&cluster)?;
        shardq::Subscriber::connect(shardq::SubscriberConfig {
            tls,
            ..shardq::SubscriberConfig::from_cluster(&cluster, psk)
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// The seeds' queues: `database` {create, read, update, delete, error} and
/// `files` {save, error}.
pub fn seed_queues() -> QueueConfig {
    let mut queues = QueueConfig::new();
    // Both lists are valid names; declaring them cannot fail.
    let _ = queues.declare("database", ["create", "read", "update", "delete", "error"]);
    let _ = queues.declare("files", ["save", "error"]);
    queues
}

/// A cluster running inside this process on 127.0.0.1.
pub struct Embedded {
    /// Its cluster file (with the real ports).
    pub config: ClusterConfig,
    /// Its psk (fresh and random).
    pub psk: Psk,
    /// Its node key (fresh and random; only the nodes use it).
    pub node_key: Psk,
    /// The HS256 key client tokens are signed with (fresh and random).
    pub token_key: Psk,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A node's entry and its listeners: WebSocket, admin, and the HTTP API
/// (producers' publish, consumers' Server-Sent Events).
type Listeners = (NodeEntry, TcpListener, TcpListener, Option<TcpListener>);

async fn listeners(kind: &str, count: usize) -> Result<Vec<Listeners>, String> {
    let bind = || async {
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind 127.0.0.1: {e}"))
    };
    let addr = |l: &TcpListener| -> Result<SocketAddr, String> {
        l.local_addr().map_err(|e| e.to_string())
    };
    let mut nodes = Vec::new();
    for i in 0..count {
        let (ws, admin, http) = (bind().await?, bind().await?, Some(bind().await?));
        let entry = NodeEntry {
            id: format!("{kind}-{i}"),
            url: format!("ws://{}", addr(&ws)?),
            admin: Some(format!("http://{}", addr(&admin)?)),
            listen: Some(addr(&ws)?.to_string()),
            http: match &http {
                Some(http) => Some(format!("http://{}", addr(http)?)),
                None => None,
            },
        };
        nodes.push((entry, ws, admin, http));
    }
    Ok(nodes)
}

impl Embedded {
    /// Starts `consumers` consumers and `producers` producers with `queues`
    /// and waits until every producer has its links up.
    pub async fn start(
        consumers: usize,
        producers: usize,
        queues: QueueConfig,
    ) -> Result<Embedded, String> {
        let consumer_nodes = listeners("consumer", consumers).await?;
        let producer_nodes = listeners("producer", producers).await?;
        let entries = |nodes: &[Listeners]| nodes.iter().map(|node| node.0.clone()).collect();
        // The origin's clients keep working on a local cluster; browsers
        // present tokens over ws:// (every node listens on 127.0.0.1 only).
        let config = ClusterConfig {
            legacy: true,
            tokens: TokensConfig {
                allow_plaintext: true,
                ..TokensConfig::default()
            },
            ..ClusterConfig::new(
                entries(&consumer_nodes),
                entries(&producer_nodes),
                queues,
                Limits::default(),
            )
        };
        let psk = Psk::generate();
        let node_key = Psk::generate();
        let token_key = Psk::generate();
        let tokens = TokenKeys::new(&[token_key.as_bytes().to_vec()], &[], true)
            .map_err(|e| e.to_string())?;
        let credentials = Credentials::new(psk.clone(), node_key.clone()).with_tokens(tokens);
        let (stop, stopped) = watch::channel(false);
        let until_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let mut tasks = Vec::new();
        for (entry, ws, admin, http) in consumer_nodes {
            let config = shardq_consumer::ConsumerConfig {
                id: entry.id,
                cluster: config.clone(),
                credentials: credentials.clone(),
                admin_token: None,
                tls: Default::default(),
                updates: None,
                data_dir: None,
            };
            tasks.push(tokio::spawn(shardq_consumer::run_with_http(
                ws,
                Some(admin),
                http,
                config,
                until_stop(stopped.clone()),
            )));
        }
        for (entry, ws, admin, http) in producer_nodes {
            let config = shardq_producer::ProducerConfig {
                id: entry.id,
                cluster: config.clone(),
                credentials: credentials.clone(),
                admin_token: None,
                tls: Default::default(),
                updates: None,
            };
            tasks.push(tokio::spawn(shardq_producer::run_with_http(
                ws,
                Some(admin),
                http,
                config,
                until_stop(stopped.clone()),
            )));
        }
        let embedded = Embedded {
            config,
            psk,
            node_key,
            token_key,
            stop,
            tasks,
        };
        embedded.wait_ready(Duration::from_secs(10)).await?;
        Ok(embedded)
    }

    async fn wait_ready(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        for producer in &self.config.producers {
            let admin = producer
                .admin
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches("http://");
            loop {
                let body = crate::health::get(admin, "/readyz")
                    .await
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                if body.matches(r#""state":"up""#).count() == self.config.consumers.len() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{}'s links did not come up: {body}", producer.id));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Stops every node and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
