//! Loading a cluster file and its secrets, the one way nodes, tools and
//! applications all do it: `SHARDQ_PSK` wins, else the file's `psk_file`
//! (relative to the cluster file, one trailing newline ignored); the node
//! key and the admin token the same way (`SHARDQ_NODE_KEY` /
//! `node_key_file`, `SHARDQ_ADMIN_TOKEN` / `admin_token_file`); the
//! `[[clients]]` of a `credentials_file` join the cluster file's own.
//!
//! Sans-IO: the caller passes the function that reads a file (usually
//! `std::fs::read`), so the rules live here once and every reader of the
//! file — `shardq-net` for nodes, the `shardq` client for applications —
//! applies the same ones.

use std::io;
use std::path::{Path, PathBuf};

use crate::auth::{ClientEntry, validate_clients};
use crate::config::{ClusterConfig, ConfigError};
use crate::handshake::{Psk, PskError};

/// Why a cluster file or its psk could not be used. One line each.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// The cluster file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The cluster file is not UTF-8 text.
    #[error("cluster file {path} is not UTF-8 text")]
    NotText {
        /// The path.
        path: PathBuf,
    },
    /// The cluster file did not parse or validate.
    #[error("cluster file {path}: {source}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// The cause (names the line for syntax errors).
        #[source]
        source: ConfigError,
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
        source: io::Error,
    },
    /// The psk is too short.
    #[error("psk: {0}")]
    WeakPsk(#[from] PskError),
    /// A secret file (node key, admin token) could not be read.
    #[error("cannot read {what} {path}: {source}")]
    ReadSecret {
        /// `node_key_file` or `admin_token_file`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The node key is too short.
    #[error("node key: {0}")]
    WeakNodeKey(PskError),
    /// The credentials file could not be read or is not valid.
    #[error("credentials_file {path}: {message}")]
    Credentials {
        /// The path.
        path: PathBuf,
        /// What is wrong, on one line.
        message: String,
    },
}

/// The `[[clients]]` of a credentials file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    clients: Vec<ClientEntry>,
}

/// The path of a file the cluster file names, relative to the cluster file.
pub fn beside(cluster_path: &Path, file: &str) -> PathBuf {
    cluster_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(file)
}

/// Adds the clients of the credentials file (its bytes read from
/// [`ClusterConfig::credentials_file`], beside the cluster file) to
/// `cluster`'s own, and checks them all together.
pub fn add_credentials(
    cluster: &mut ClusterConfig,
    cluster_path: &Path,
    bytes: io::Result<Vec<u8>>,
) -> Result<(), ClusterFileError> {
    let Some(file) = &cluster.credentials_file else {
        return Ok(());
    };
    let path = beside(cluster_path, file);
    let failed = |message: String| ClusterFileError::Credentials {
        path: path.clone(),
        message,
    };
    let bytes = bytes.map_err(|error| failed(error.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| failed("not UTF-8 text".into()))?;
    let parsed: CredentialsFile = toml::from_str(&text)
        .map_err(|error| failed(error.message().trim().replace('\n', "; ")))?;
    cluster.clients.extend(parsed.clients);
    validate_clients(&cluster.clients).map_err(|error| failed(error.to_string()))
}

/// A secret from the environment if set and not empty, else from `file`
/// (beside the cluster file, one trailing newline ignored); `None` when
/// neither is given.
pub fn load_secret(
    env_value: Option<String>,
    file: Option<&str>,
    what: &'static str,
    cluster_path: &Path,
    read: impl FnOnce(&Path) -> io::Result<Vec<u8>>,
) -> Result<Option<Vec<u8>>, ClusterFileError> {
    if let Some(value) = env_value.filter(|value| !value.is_empty()) {
        return Ok(Some(value.into_bytes()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    read_secret(file, what, cluster_path, read).map(Some)
}

/// A secret `file` the cluster file names (`what`: the key naming it),
/// beside the cluster file, one trailing newline ignored.
pub fn read_secret(
    file: &str,
    what: &'static str,
    cluster_path: &Path,
    read: impl FnOnce(&Path) -> io::Result<Vec<u8>>,
) -> Result<Vec<u8>, ClusterFileError> {
    let path = beside(cluster_path, file);
    let mut bytes = read(&path).map_err(|source| ClusterFileError::ReadSecret {
        what,
        path: path.clone(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(bytes)
}

/// The node key: `env_value` (from `SHARDQ_NODE_KEY`), else the file's
/// `node_key_file`; `None` when neither is set (the node then falls back
/// to the psk, and says so).
pub fn load_node_key(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
    read: impl FnOnce(&Path) -> io::Result<Vec<u8>>,
) -> Result<Option<Psk>, ClusterFileError> {
    let key = load_secret(
        env_value,
        cluster.node_key_file.as_deref(),
        "node_key_file",
        cluster_path,
        read,
    )?;
    key.map(|key| Psk::new(key).map_err(ClusterFileError::WeakNodeKey))
        .transpose()
}

/// Parses the text of the cluster file at `path` (the path names the file
/// in errors).
pub fn parse_cluster(path: &Path, bytes: Vec<u8>) -> Result<ClusterConfig, ClusterFileError> {
    let text = String::from_utf8(bytes).map_err(|_| ClusterFileError::NotText {
        path: path.to_owned(),
    })?;
    ClusterConfig::parse(&text).map_err(|source| ClusterFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Reads (with `read`) and validates the cluster file at `path`, with
/// the clients of its credentials file.
pub fn load_cluster(
    path: &Path,
    read: impl Fn(&Path) -> io::Result<Vec<u8>>,
) -> Result<ClusterConfig, ClusterFileError> {
    let bytes = read(path).map_err(|source| ClusterFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut cluster = parse_cluster(path, bytes)?;
    if let Some(file) = cluster.credentials_file.clone() {
        let bytes = read(&beside(path, &file));
        add_credentials(&mut cluster, path, bytes)?;
    }
    Ok(cluster)
}

/// The psk: `env_value` (from `SHARDQ_PSK`) if set and not empty, else the
/// cluster file's `psk_file`, read with `read` from next to `cluster_path`.
pub fn load_psk(
    env_value: Option<String>,
    cluster: &ClusterConfig,
    cluster_path: &Path,
    read: impl FnOnce(&Path) -> io::Result<Vec<u8>>,
) -> Result<Psk, ClusterFileError> {
    if let Some(value) = env_value.filter(|value| !value.is_empty()) {
        return Ok(Psk::new(value)?);
    }
    let Some(file) = &cluster.psk_file else {
        return Err(ClusterFileError::MissingPsk);
    };
    let path = cluster_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(file);
    let mut bytes = read(&path).map_err(|source| ClusterFileError::ReadPsk {
        path: path.clone(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(Psk::new(bytes)?)
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

    fn no_file(_: &Path) -> io::Result<Vec<u8>> {
        Err(io::ErrorKind::NotFound.into())
    }

    #[test]
    fn psk_rules() {
        let none = cluster(None);
        let here = Path::new("shardq.toml");
        assert!(matches!(
            load_psk(None, &none, here, no_file),
            Err(ClusterFileError::MissingPsk)
        ));
        assert!(matches!(
            load_psk(Some(String::new()), &none, here, no_file),
            Err(ClusterFileError::MissingPsk)
        ));
        let weak = load_psk(Some("short".into()), &none, here, no_file).unwrap_err();
        assert_eq!(
            weak.to_string(),
            "psk: the key is 5 bytes long; it must be at least 16 bytes"
        );
        assert!(load_psk(Some("0123456789abcdef".into()), &none, here, no_file).is_ok());
    }

    #[test]
    fn psk_file_is_relative_to_the_cluster_file() {
        let config = cluster(Some("psk"));
        let mut asked = None;
        let psk = load_psk(
            None,
            &config,
            Path::new("/etc/shardq/shardq.toml"),
            |path| {
                asked = Some(path.to_owned());
                Ok(b"0123456789abcdef0123\n".to_vec())
            },
        )
        .unwrap();
        assert_eq!(psk.as_bytes(), b"0123456789abcdef0123");
        assert_eq!(asked.unwrap(), Path::new("/etc/shardq/psk"));
        let missing = load_psk(None, &config, Path::new("shardq.toml"), no_file).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read psk_file psk:"));
    }

    #[test]
    fn credentials_file_adds_clients() {
        let text =
            "credentials_file = \"clients.toml\"\n[[consumers]]\nid = \"c\"\nurl = \"ws://c:1\"\n";
        let clients =
            "[[clients]]\nname = \"api\"\nsecrets = [\"0123456789abcdef\"]\npublish = [\"a/*\"]\n";
        let read = |path: &Path| -> io::Result<Vec<u8>> {
            if path.ends_with("clients.toml") {
                Ok(clients.as_bytes().to_vec())
            } else {
                Ok(text.as_bytes().to_vec())
            }
        };
        let cluster = load_cluster(Path::new("/etc/shardq/shardq.toml"), read).unwrap();
        assert_eq!(cluster.clients.len(), 1);
        assert_eq!(cluster.clients[0].name, "api");
        let missing = load_cluster(Path::new("shardq.toml"), |path: &Path| {
            if path.ends_with("clients.toml") {
                Err(io::ErrorKind::NotFound.into())
            } else {
                Ok(text.as_bytes().to_vec())
            }
        })
        .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("credentials_file clients.toml:"),
            "{missing}"
        );
        let bad = load_cluster(Path::new("shardq.toml"), |path: &Path| {
            if path.ends_with("clients.toml") {
                Ok(b"[[clients]]\nname = \"api\"\nsecrets = [\"short\"]\n".to_vec())
            } else {
                Ok(text.as_bytes().to_vec())
            }
        })
        .unwrap_err();
        assert!(bad.to_string().contains("secrets"), "{bad}");
    }

    #[test]
    fn node_key_rules() {
        let none = cluster(None);
        let here = Path::new("shardq.toml");
        assert!(load_node_key(None, &none, here, no_file).unwrap().is_none());
        let key = load_node_key(Some("node-key-0123456789".into()), &none, here, no_file);
        assert_eq!(key.unwrap().unwrap().as_bytes(), b"node-key-0123456789");
        assert!(matches!(
            load_node_key(Some("short".into()), &none, here, no_file),
            Err(ClusterFileError::WeakNodeKey(_))
        ));
    }

    #[test]
    fn cluster_errors_name_the_file() {
        let path = Path::new("x/shardq.toml");
        let unread = load_cluster(path, no_file).unwrap_err();
        assert!(
            unread
                .to_string()
                .starts_with("cannot read cluster file x/shardq.toml:")
        );
        let binary = load_cluster(path, |_| Ok(vec![0xff, 0xfe])).unwrap_err();
        assert_eq!(
            binary.to_string(),
            "cluster file x/shardq.toml is not UTF-8 text"
        );
        let invalid = load_cluster(path, |_| Ok(b"[[consumers]]\n".to_vec())).unwrap_err();
        assert!(
            invalid
                .to_string()
                .starts_with("cluster file x/shardq.toml:")
        );
        let good = load_cluster(path, |_| {
            Ok(b"[[consumers]]\nid = \"c\"\nurl = \"ws://c:1\"\n".to_vec())
        });
        assert_eq!(good.unwrap().consumer_ids(), ["c"]);
    }
}
