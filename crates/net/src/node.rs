//! What both node binaries share at start-up: command-line and environment
//! options, the cluster file and the credentials, binding both ports,
//! logging, and the stop signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardq_protocol::auth::TokenKeys;
use shardq_protocol::cluster_file::{self, ClusterFileError};
use shardq_protocol::status::NodeKind;
use shardq_protocol::{ClusterConfig, Credentials, NodeEntry, Psk};
use tokio::sync::watch;

use crate::cluster_watch::watch_cluster_file;
use crate::tls::{NodeTls, ServerTls};

/// Options every node takes, as flags or `SHARDQ_*` environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The cluster file (TOML) shared by every node.
    #[arg(long, env = "SHARDQ_CONFIG", default_value = "shardq.toml")]
    pub config: PathBuf,
    /// This node's id: an entry of the cluster file.
    #[arg(long, env = "SHARDQ_ID")]
    pub id: String,
    /// Bind the WebSocket port here instead of the entry's address.
    #[arg(long, env = "SHARDQ_LISTEN")]
    pub listen: Option<String>,
    /// Bind the admin HTTP port here (default: the host and port of the
    /// entry's `admin` URL, else 127.0.0.1:9100 on consumers and
    /// 127.0.0.1:9000 on producers).
    #[arg(long, env = "SHARDQ_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Consumers: a directory where the owned topics' state is written on a
    /// graceful stop (SIGTERM) and read back at start, so a rolling restart
    /// loses no history. Without it, a restart starts new epochs.
    #[arg(long, env = "SHARDQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's TLS certificate chain (PEM), served when its url is
    /// `wss://` (default: the cluster file's `[tls] cert_file`).
    #[arg(long, env = "SHARDQ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM) (default: `[tls] key_file`).
    #[arg(long, env = "SHARDQ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// A node refused to start. The message is one line naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cluster file or the psk is unusable.
    #[error(transparent)]
    ClusterFile(#[from] ClusterFileError),
    /// `--id` names no entry of the right kind.
    #[error("--id {id:?} is not a [[{kind}]] entry of {path} (known: {known})")]
    UnknownId {
        /// The id given.
        id: String,
        /// `consumers` or `producers`.
        kind: &'static str,
        /// The cluster file.
        path: PathBuf,
        /// The ids it does declare.
        known: String,
    },
    /// TLS is needed and not configured, or its files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A `[tokens]` key file could not be read or used.
    #[error("[tokens]: {0}")]
    Tokens(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The cluster file's table of this kind: `consumers` or `producers`.
fn table(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Consumer => "consumers",
        NodeKind::Producer => "producers",
    }
}

fn entries(kind: NodeKind, cluster: &ClusterConfig) -> &[NodeEntry] {
    match kind {
        NodeKind::Consumer => &cluster.consumers,
        NodeKind::Producer => &cluster.producers,
    }
}

/// Where the admin port binds when neither a flag nor the file says.
fn default_admin(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Consumer => "127.0.0.1:9100",
        NodeKind::Producer => "127.0.0.1:9000",
    }
}

/// What a node needs to run, read and bound from its options.
pub struct Prepared {
    /// Its id.
    pub id: String,
    /// The cluster file as it was at start.
    pub cluster: ClusterConfig,
    /// The psk, the node key and the declared clients.
    pub credentials: Credentials,
    /// The admin port's bearer token, if one is configured.
    pub admin_token: Option<String>,
    /// The bound WebSocket listener.
    pub listener: tokio::net::TcpListener,
    /// The bound admin listener.
    pub admin: tokio::net::TcpListener,
    /// The bound HTTP API listener (producers whose entry names `http`).
    pub http: Option<tokio::net::TcpListener>,
    /// Later versions of the cluster file (SIGHUP, or a change on disk).
    pub updates: watch::Receiver<Arc<ClusterConfig>>,
    /// The data directory, if any.
    pub data_dir: Option<PathBuf>,
    /// Its TLS, server and client side.
    pub tls: NodeTls,
}

/// Loads the cluster file and the psk, finds this node's entry, binds both
/// ports and starts following the cluster file.
pub async fn prepare(args: NodeArgs, kind: NodeKind) -> Result<Prepared, StartError> {
    let cluster = load_cluster(&args.config)?;
    let entries = entries(kind, &cluster);
    let entry = entries
        .iter()
        .find(|entry| entry.id == args.id)
        .cloned()
        .ok_or_else(|| StartError::UnknownId {
            id: args.id.clone(),
            kind: table(kind),
            path: args.config.clone(),
            known: entries
                .iter()
                .map(|entry| entry.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let psk = load_psk(std::env::var("SHARDQ_PSK").ok(), &cluster, &args.config)?;
    let credentials = credentials(psk, &cluster, &args.config)?;
    let admin_token = cluster_file::load_secret(
        std::env::var("SHARDQ_ADMIN_TOKEN").ok(),
        cluster.admin_token_file.as_deref(),
        "admin_token_file",
        &args.config,
        |path| std::fs::read(path),
    )?
    .map(|token| String::from_utf8_lossy(&token).trim().to_owned());
    let tls = node_tls(&entry, &cluster, &args)?;
    let listen = args.listen.unwrap_or_else(|| entry.listen_addr());
    let admin_listen = args
        .admin_listen
        .or_else(|| entry.admin_listen_addr())
        .unwrap_or_else(|| default_admin(kind).to_owned());
    let listener = bind(&listen).await?;
    let admin = bind(&admin_listen).await?;
    let http = match entry
        .http
        .as_deref()
        .and_then(shardq_protocol::config::host_port)
    {
        Some(addr) => Some(bind(&addr).await?),
        None => None,
    };
    tracing::info!(id = %args.id, %listen, admin = %admin_listen, "starting {}", kind.as_str());
    let updates = watch_cluster_file(args.config.clone(), cluster.clone());
    Ok(Prepared {
        id: args.id,
        cluster,
        credentials,
        admin_token,
        listener,
        http,
        admin,
        updates,
        data_dir: args.data_dir,
        tls,
    })
}

/// Reads and validates the cluster file.
pub fn load_cluster(path: &Path) -> Result<ClusterConfig, StartError> {
    Ok(cluster_file::load_cluster(path, |path| {
        std::fs::read(path)
    })?)
}

/// The psk: `SHARDQ_PSK` if set, else the cluster file's `psk_file`
/// (relative to the cluster file; one trailing newline is ignored).
pub fn load_psk(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
) -> Result<Psk, StartError> {
    Ok(cluster_file::load_psk(
        env_value,
        cluster,
        cluster_path,
        |path| std::fs::read(path),
    )?)
}

/// The credentials a node checks: the psk, the node key (`SHARDQ_NODE_KEY`,
/// else `node_key_file`; without either, the psk, with a warning: then any
/// psk holder can act as a node) and the cluster file's clients.
pub fn credentials(
    psk: Psk,
    cluster: &ClusterConfig,
    cluster_path: &Path,
) -> Result<Credentials, StartError> {
    let node_key = cluster_file::load_node_key(
        std::env::var("SHARDQ_NODE_KEY").ok(),
        cluster,
        cluster_path,
        |path| std::fs::read(path),
    )?;
    let configured = node_key.is_some();
    let node_key = node_key.unwrap_or_else(|| {
        tracing::warn!(
            "no node key (SHARDQ_NODE_KEY or node_key_file): nodes prove the psk to each other, so every psk holder can act as a node; see docs/SECURITY.md"
        );
        psk.clone()
    });
    let tokens = token_keys(cluster, cluster_path)?;
    let credentials = Credentials::new(psk, node_key);
    if configured && credentials.node_key_is_psk() {
        tracing::warn!(
            "the node key is the psk: every psk holder can act as a node; give nodes a key of their own (docs/SECURITY.md)"
        );
    }
    Ok(credentials
        .with_clients(&cluster.clients)
        .with_tokens(tokens))
}

/// The node's TLS: a server certificate when its own url is `wss://`,
/// client roots when the `[tls] ca_file` is set (required when any
/// consumer's url is `wss://`). The server certificate reloads on SIGHUP.
fn node_tls(
    entry: &NodeEntry,
    cluster: &ClusterConfig,
    args: &NodeArgs,
) -> Result<NodeTls, StartError> {
    let beside = |file: &Option<String>| {
        file.as_ref()
            .map(|file| cluster_file::beside(&args.config, file))
    };
    let error = |e: crate::tls::TlsError| StartError::Tls(e.to_string());
    let server = if entry.url.starts_with("wss://") || cluster.tls.admin {
        let cert = args
            .tls_cert
            .clone()
            .or_else(|| beside(&cluster.tls.cert_file));
        let key = args
            .tls_key
            .clone()
            .or_else(|| beside(&cluster.tls.key_file));
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(StartError::Tls(format!(
                "{} is wss:// (or [tls] admin = true): give --tls-cert and --tls-key (or [tls] cert_file and key_file)",
                entry.url
            )));
        };
        let tls = ServerTls::load(cert, key).map_err(error)?;
        tls.reload_on_hangup();
        Some(tls)
    } else {
        None
    };
    let client = match beside(&cluster.tls.ca_file) {
        Some(ca) => Some(crate::tls::client_config(&ca).map_err(error)?),
        None if cluster
            .consumers
            .iter()
            .any(|c| c.url.starts_with("wss://")) =>
        {
            return Err(StartError::Tls(
                "consumers have wss:// urls: give [tls] ca_file to check them against".into(),
            ));
        }
        None => None,
    };
    let admin = server.clone().filter(|_| cluster.tls.admin);
    let server = server.filter(|_| entry.url.starts_with("wss://"));
    Ok(NodeTls {
        server,
        admin,
        client,
    })
}

/// The keys of the `[tokens]` section, read from their files.
fn token_keys(cluster: &ClusterConfig, cluster_path: &Path) -> Result<TokenKeys, StartError> {
    let read = |files: &[String], what| {
        files
            .iter()
            .map(|file| cluster_file::read_secret(file, what, cluster_path, |p| std::fs::read(p)))
            .collect::<Result<Vec<_>, _>>()
    };
    let config = &cluster.tokens;
    let secrets = read(&config.hs256_secret_files, "hs256_secret_files")?;
    let public_keys = read(&config.ed25519_public_key_files, "ed25519_public_key_files")?;
    let keys = TokenKeys::new(&secrets, &public_keys, config.allow_plaintext)
        .map_err(|error| StartError::Tokens(error.to_string()))?;
    if config.allow_plaintext && !keys.is_empty() {
        tracing::warn!(
            "[tokens] allow_plaintext = true: tokens are accepted over plaintext connections, where anyone on the path can read and replay them (development only)"
        );
    }
    Ok(keys)
}

/// Installs the `tracing` subscriber: `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_owned(),
            source,
        })
}
