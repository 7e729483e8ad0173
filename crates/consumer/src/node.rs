//! What both node binaries share: command-line and environment options, the
//! psk and cluster file loading, logging, and the stop signal.

use std::path::{Path, PathBuf};

use shardq_protocol::{ClusterConfig, Psk};

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
    /// Bind the admin HTTP port here (default: the entry's `admin` port, else 0.0.0.0:9100).
    #[arg(long, env = "SHARDQ_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
}

/// A node refused to start. The message is one line naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cluster file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    ReadConfig {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster file did not parse or validate.
    #[error("cluster file {path}: {source}")]
    BadConfig {
        /// The path.
        path: PathBuf,
        /// The cause (names the line for syntax errors).
        #[source]
        source: shardq_protocol::ConfigError,
    },
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
    /// No psk in the environment or a file.
    #[error("no psk: set SHARDQ_PSK (at least 16 bytes) or psk_file in the cluster file")]
    MissingPsk,
    /// The psk file could not be read.
    #[error("cannot read psk_file {path}: {source}")]
    ReadPsk {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The psk is too short.
    #[error("SHARDQ_PSK: {0}")]
    WeakPsk(#[from] shardq_protocol::handshake::PskError),
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

/// Reads and validates the cluster file.
pub fn load_cluster(path: &Path) -> Result<ClusterConfig, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    ClusterConfig::parse(&text).map_err(|source| StartError::BadConfig {
        path: path.to_owned(),
        source,
    })
}

/// The psk: `SHARDQ_PSK` if set, else the cluster file's `psk_file`
/// (relative to the cluster file; one trailing newline is ignored).
pub fn load_psk(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
) -> Result<Psk, StartError> {
    if let Some(value) = env_value.filter(|value| !value.is_empty()) {
        return Ok(Psk::new(value)?);
    }
    let Some(file) = &cluster.psk_file else {
        return Err(StartError::MissingPsk);
    };
    let path = cluster_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(file);
    let mut bytes = std::fs::read(&path).map_err(|source| StartError::ReadPsk {
        path: path.clone(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(Psk::new(bytes)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(psk_file: Option<&str>) -> ClusterConfig {
        let mut text = String::from("[[consumers]]\nid = \"c\"\nurl = \"ws://c:1\"\n");
        if let Some(file) = psk_file {
            text = format!("psk_file = \"{file}\"\n{text}");
        }
        ClusterConfig::parse(&text).unwrap()
    }

    #[test]
    fn psk_rules() {
        let none = cluster(None);
        let here = Path::new("shardq.toml");
        assert!(matches!(
            load_psk(None, &none, here),
            Err(StartError::MissingPsk)
        ));
        assert!(matches!(
            load_psk(Some(String::new()), &none, here),
            Err(StartError::MissingPsk)
        ));
        let weak = load_psk(Some("short".into()), &none, here).unwrap_err();
        assert_eq!(
            weak.to_string(),
            "SHARDQ_PSK: the psk is 5 bytes long; it must be at least 16 bytes"
        );
        assert!(load_psk(Some("0123456789abcdef".into()), &none, here).is_ok());
    }

    #[test]
    fn psk_file_is_relative_to_the_cluster_file() {
        let dir = std::env::temp_dir().join(format!("shardq-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("psk"), "0123456789abcdef0123\n").unwrap();
        let config = cluster(Some("psk"));
        let psk = load_psk(None, &config, &dir.join("shardq.toml")).unwrap();
        assert_eq!(psk.as_bytes(), b"0123456789abcdef0123");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
